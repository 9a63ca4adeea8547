"""The stage runtime: hosts one stage's partition(s) and executes its schedule over the edge transport.

A :class:`Stage` is plain Python (no Ray): the pipeline layer wraps it in an actor, tests run several in
threads. Per call (:meth:`Stage.run_step`) it walks its action list: receives activations (stage 0 gets the
model input from the host), runs forwards, sends activations onward (the last virtual stage sends the loss or
the output to the host), receives gradients, runs backwards, sends gradients back and steps its own optimizer.
Each edge and direction is encoded with the codec the plan gives it (:class:`~.spec.EdgeCodecs`).
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from layeredge_dist.measure import ProxyAccumulator
from layeredge_dist.metrics import Metrics, start_exporter
from layeredge_dist.model import Partition, SavedForward, build_partition, stage_backward, stage_forward
from layeredge_dist.model.family import Side
from layeredge_dist.prune.transfer import WeightChecksumError, assemble, load_manifest
from layeredge_dist.schedule import (
    Backward,
    Forward,
    OptimizerStep,
    RecvAct,
    RecvGrad,
    Schedule,
    SendAct,
    SendGrad,
)
from layeredge_dist.transport import ProbeResult, TransportError, probe
from layeredge_dist.types import Direction, EdgeId, EdgeStats, TensorRole

from . import checkpoint
from .endpoint import Endpoint
from .errors import StageError
from .spec import HOST_CODEC, TRAINING, EdgeCodecs, Mode, StageSpec, edge, wire_microbatch


@dataclass(frozen=True)
class StepReport:
    """What one stage did in one call. Seconds; bytes."""

    stage: int
    seq: int
    mode: str
    total_s: float
    compute_s: float  # everything but waiting: forward + backward + optimizer + encode/decode/send overhead
    wait_s: float  # blocked in receives: the bubble as this stage sees it
    saved_bytes_peak: int  # tensors saved for backward, live at once (upper bound: shared storage counted twice)
    forward_s: float = 0.0
    backward_s: float = 0.0
    optimizer_s: float = 0.0

    @property
    def idle_fraction(self) -> float:
        """Share of the call spent waiting for tensors (0 when the call took no time)."""
        return self.wait_s / self.total_s if self.total_s > 0 else 0.0


class _SavedBytes:
    """Counts bytes of tensors autograd saves for backward (per forward), via saved-tensor hooks."""

    def __init__(self) -> None:
        self.total = 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        self.total += t.numel() * t.element_size()
        return t

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t


def rss_bytes() -> int:
    """Resident set size of this process (bytes; 0 where /proc is unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class _NoOptimizer(torch.optim.SGD):
    """Stands in for the optimizer of a stage without parameters (e.g. only reshapes): steps do nothing."""

    def __init__(self) -> None:
        super().__init__([torch.zeros(0, requires_grad=True)], lr=0.0)


class Stage:
    """Stage ``spec.index`` of a pipeline: its partitions, optimizer and edge endpoint.

    ``bind`` is the host its server listens on. Construction builds the partitions from ``spec.model`` (never a
    pickled model), which raises ValueError for cuts that do not fit and KeyError for an unknown family. Parameters
    tied across the first and last stage get their gradients summed over the edge transport before each optimizer
    step (StageError when interleaved: not supported there).
    """

    def __init__(self, spec: StageSpec, bind: str = "127.0.0.1") -> None:
        self.spec = spec
        self.device = torch.device(spec.device)
        self.parts: list[Partition] = [build_partition(ps, device=self.device) for ps in spec.partition_specs()]
        # Parameters tied across stages (an LM head tied to the embedding): both copies get the summed gradient
        # before every optimizer step, so identical updates keep them equal. (local key, partner stage) pairs.
        self._ties: list[tuple[str, int]] = []
        ties = self.parts[0].family.tied_partition_keys()
        if ties and spec.num_stages > 1:
            if spec.chunks != 1:
                raise StageError(f"{self.parts[0].family.name} ties {ties[0][0]} to {ties[0][1]} across stages; "
                                 "tied parameters are supported with chunks == 1 only")
            if spec.index == 0:
                self._ties = [(pre_key, spec.num_stages - 1) for _, pre_key in ties]
            elif spec.index == spec.num_stages - 1:
                self._ties = [(post_key, 0) for post_key, _ in ties]
        self.steps_done = 0  # optimizer steps taken (restored from checkpoints)
        self.optimizer = self._build_optimizer()
        self.metrics = Metrics() if spec.metrics else None
        self.exporter = start_exporter(self.metrics, bind, 0) if self.metrics is not None else None
        self.endpoint = Endpoint(spec.index, spec.transport, bind, self.metrics, codec_seed=spec.codec_seed)
        if self.metrics is not None and spec.error_budget is not None:
            for dst, direction in ((spec.index + 1, "forward"), (spec.index - 1, "backward")):
                if 0 <= dst < spec.num_stages:
                    cut = edge(min(spec.index, dst), max(spec.index, dst))
                    self.metrics.error_budget(cut, direction, spec.error_budget)
        self._schedules: dict[str, Schedule] = {}
        self._last_virtual = spec.num_stages * spec.chunks - 1
        self.saved_bytes_peak = 0
        self._proxies: dict[EdgeId, ProxyAccumulator] = {}
        self.wired = False  # set by connect(): a restarted stage refuses calls until the driver rewires it
        self._pending_weights: tuple[int, list[dict[str, torch.Tensor]]] | None = None  # (push seq, per chunk)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        """A fresh optimizer over every parameter of this stage's partitions."""
        params = [p for part in self.parts for p in part.parameters()]
        return self.spec.optimizer.build(params, start_step=self.steps_done) if params else _NoOptimizer()

    # ---- wiring ---------------------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` of this stage's edge server."""
        return self.endpoint.address

    def connect(self, peers: Mapping[int, str]) -> None:
        """Addresses of the other stages and of the host (index ``num_stages``)."""
        self.endpoint.connect(peers)
        self.wired = True

    def schedule(self, mode: Mode) -> Schedule:
        """The (cached) schedule of a call in ``mode``."""
        sched = self._schedules.get(mode)
        if sched is None:
            sched = self._schedules[mode] = self.spec.build_schedule(mode)
        return sched

    # ---- one call -------------------------------------------------------------------------------------------

    def run_step(self, seq: int, sides: Sequence[Side], mode: Mode = "train") -> StepReport:
        """Execute this stage's actions for call ``seq`` with per-micro-batch side inputs ``sides``.

        ``mode``: ``train`` (forwards, backwards, optimizer step; the last stage sends each micro-batch's loss to
        the host), ``grad`` (like train but without the optimizer step: gradients stay for inspection), ``eval`` (forwards; losses to the host) or ``infer`` (forwards; model outputs to the host).
        Raises PeerTimeout when a tensor does not arrive in ``spec.recv_timeout_s``, StepAborted after
        :meth:`abort`, and the transport's or codecs' errors; per-call state is then discarded (gradients zeroed,
        the optimizer not stepped).
        """
        spec = self.spec
        if not self.wired:
            raise StageError(f"stage {spec.index} is not wired to its neighbours (a restarted stage waits for the "
                             f"driver's reset); refusing call {seq}")
        if len(sides) != spec.microbatches:
            raise ValueError(f"stage {spec.index}: {len(sides)} side inputs for {spec.microbatches} micro-batches")
        sched = self.schedule(mode)
        p, m = spec.num_stages, spec.microbatches
        timeout = spec.recv_timeout_s
        t_start = time.perf_counter()
        wait = fwd = bwd = opt = 0.0
        inputs: dict[tuple[int, int], torch.Tensor] = {}
        outputs: dict[tuple[int, int], torch.Tensor] = {}
        grads: dict[tuple[int, int], torch.Tensor | None] = {}
        saved: dict[tuple[int, int], tuple[SavedForward, int]] = {}
        live_saved = 0
        kept: dict[tuple[int, int], torch.Tensor] = {}  # activations sent, kept for the online proxy
        proxy_on = mode == "train" and spec.proxy_every > 0 and self.steps_done % spec.proxy_every == 0
        # codec draws of a training step follow its step number (restored from checkpoints), not the call number:
        # evaluation calls in between, or a retry after a failure, leave the training run's draws as they were
        draw_step = self.steps_done if mode == "train" else None
        self.endpoint.stream = mode  # ... and its error-feedback / delta state is its own
        for part in self.parts:
            part.train(mode in TRAINING)
        try:
            for action in sched.stages[spec.index]:
                if isinstance(action, (RecvAct, RecvGrad)):
                    msg = sched.message(spec.index, action)
                    assert msg is not None
                    role = TensorRole.ACTIVATION if isinstance(action, RecvAct) else TensorRole.GRADIENT
                    t0 = time.perf_counter()
                    x = self.endpoint.receive(action.peer, role, seq, wire_microbatch(msg.src, action.mb, p, m),
                                              timeout, f"{role.value} of micro-batch {action.mb} from stage "
                                              f"{action.peer}")
                    wait += time.perf_counter() - t0
                    sent = kept.pop((action.chunk, action.mb), None)
                    if sent is not None:
                        self._proxy(edge(spec.index, action.peer)).add(sent, x)
                    (inputs if role is TensorRole.ACTIVATION else grads)[(action.chunk, action.mb)] = (
                        x.to(self.device))
                elif isinstance(action, Forward):
                    key = (action.chunk, action.mb)
                    v = sched.virtual_stage(spec.index, action.chunk)
                    if v == 0:
                        t0 = time.perf_counter()
                        x = self.endpoint.receive(spec.host, TensorRole.ACTIVATION, seq, action.mb, timeout,
                                                  f"model input of micro-batch {action.mb} from the host")
                        wait += time.perf_counter() - t0
                        x = x.to(self.device)
                    else:
                        x = inputs.pop(key)
                    side = {k: t.to(self.device) for k, t in sides[action.mb].items()}
                    t0 = time.perf_counter()
                    y = self._forward(self.parts[action.chunk], x, side, mode, key, saved)
                    fwd += time.perf_counter() - t0
                    if mode in TRAINING:
                        live_saved += saved[key][1]
                        self.saved_bytes_peak = max(self.saved_bytes_peak, live_saved)
                    if v == self._last_virtual:
                        self.endpoint.send(spec.host, TensorRole.ACTIVATION, seq, action.mb, y.cpu(), HOST_CODEC,
                                           timeout)
                    else:
                        outputs[key] = y
                elif isinstance(action, SendAct):
                    e = edge(spec.index, action.peer)
                    msg = sched.message(spec.index, action)
                    assert msg is not None
                    y = outputs.pop((action.chunk, action.mb)).cpu()
                    self.endpoint.send(action.peer, TensorRole.ACTIVATION, seq,
                                       wire_microbatch(msg.src, action.mb, p, m), y,
                                       spec.codecs.spec_for(e, TensorRole.ACTIVATION), timeout, draw_step)
                    if proxy_on:
                        kept[(action.chunk, action.mb)] = y
                elif isinstance(action, Backward):
                    key = (action.chunk, action.mb)
                    state, nbytes = saved.pop(key)
                    t0 = time.perf_counter()
                    g_in = stage_backward(state, grads.pop(key, None))
                    bwd += time.perf_counter() - t0
                    live_saved -= nbytes
                    outputs[key] = g_in  # type: ignore[assignment]
                elif isinstance(action, SendGrad):
                    e = edge(spec.index, action.peer)
                    msg = sched.message(spec.index, action)
                    assert msg is not None
                    g = outputs.pop((action.chunk, action.mb))
                    if g is None:
                        raise StageError(f"stage {spec.index}: micro-batch {action.mb} has no input gradient to "
                                         "send (integer input?)")
                    self.endpoint.send(action.peer, TensorRole.GRADIENT, seq,
                                       wire_microbatch(msg.src, action.mb, p, m), g.cpu(),
                                       spec.codecs.spec_for(e, TensorRole.GRADIENT), timeout, draw_step)
                elif isinstance(action, OptimizerStep):
                    if mode == "grad":
                        continue  # gradients stay for inspection (verify)
                    t0 = time.perf_counter()
                    if self._ties:
                        wait += self._sync_tied(seq, timeout)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    opt += time.perf_counter() - t0
                    self.steps_done += 1
        except BaseException:
            self.optimizer.zero_grad(set_to_none=True)  # a failed call leaves no half-accumulated gradients
            raise
        total = time.perf_counter() - t_start
        report = StepReport(spec.index, seq, mode, total, total - wait, wait, self.saved_bytes_peak, fwd, bwd, opt)
        if self.metrics is not None:
            self._export(report)
        return report

    def _proxy(self, e: EdgeId) -> ProxyAccumulator:
        acc = self._proxies.get(e)
        if acc is None:
            active = self.spec.codecs.spec_for(e, TensorRole.ACTIVATION)
            specs = tuple(dict.fromkeys((active, *self.spec.proxy_codecs)))
            acc = self._proxies[e] = ProxyAccumulator(specs, backward=False)
        return acc

    def proxy_values(self) -> dict[str, dict[str, dict[str, float]]]:
        """Online proxies so far: ``{edge: {codec spec: ProxyValue fields}}`` for each activation edge this stage
        sends on (empty unless ``spec.proxy_every`` > 0). Taylor values carry the pipeline's 1/micro-batches
        loss scale."""
        return {str(e): {spec: dict(vars(v)) for spec, v in acc.result().items()}
                for e, acc in self._proxies.items()}

    def _export(self, report: StepReport) -> None:
        assert self.metrics is not None
        for e, acc in self._proxies.items():
            active = self.spec.codecs.spec_for(e, TensorRole.ACTIVATION)
            values = acc.result()
            if active in values and values[active].micro_batches:
                self.metrics.importance(e, "forward", "proxy", values[active].taylor_sq_mean)
        stage = f"s{self.spec.index}"
        for phase, seconds in (("forward", report.forward_s), ("backward", report.backward_s),
                               ("optimizer", report.optimizer_s)):
            if seconds:
                self.metrics.stage_time(stage, phase, seconds)
        self.metrics.stage_idle(stage, report.wait_s)
        self.metrics.bubble(stage, min(1.0, report.idle_fraction))

    def _sync_tied(self, seq: int, timeout: float) -> float:
        """Add the partner stage's gradient of every tied parameter to ours (lossless ``raw`` frames on
        the gradient role, micro-batch numbers past the schedule's); returns the seconds spent waiting."""
        base = self.spec.microbatches * self.spec.chunks
        params = dict(self.parts[0].named_parameters(remove_duplicate=False))
        params.update(dict(self.parts[-1].named_parameters(remove_duplicate=False)))
        for i, (key, partner) in enumerate(self._ties):
            p = params[key]
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            self.endpoint.send(partner, TensorRole.GRADIENT, seq, base + i, g.detach().cpu(), HOST_CODEC, timeout)
        t0 = time.perf_counter()
        for i, (key, partner) in enumerate(self._ties):
            other = self.endpoint.receive(partner, TensorRole.GRADIENT, seq, base + i, timeout,
                                          f"gradient of the tied parameter {key} from stage {partner}")
            p = params[key]
            p.grad = other.to(p.device) if p.grad is None else p.grad + other.to(p.device)
        return time.perf_counter() - t0

    def _forward(self, part: Partition, x: torch.Tensor, side: Side, mode: Mode, key: tuple[int, int],
                 saved: dict[tuple[int, int], tuple[SavedForward, int]]) -> torch.Tensor:
        if mode in TRAINING:
            counter = _SavedBytes()
            with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
                y, state = stage_forward(part, x, side, train=True, loss_scale=1.0 / self.spec.microbatches)
            assert state is not None
            saved[key] = (state, counter.total)
            return y
        with torch.no_grad():
            out = part(x, side)
            if mode == "eval" and part.spec.is_last:
                return part.loss(out, side).detach()
            return out

    # ---- serving --------------------------------------------------------------------------------------------

    def serve(self, stop: threading.Event, poll_s: float = 0.25) -> int:
        """Forward-only serving loop without per-call control: forward every activation that arrives (any call
        number, in arrival order) and send the result on with the same call and micro-batch number, until
        ``stop`` is set. Side inputs are empty, so only models whose inference needs none can be served this
        way; needs ``chunks == 1``. Returns the number of micro-batches served; raises what forward, codecs or the
        transport raise (the driver sees it as a failed stage)."""
        spec = self.spec
        if spec.chunks != 1:
            raise StageError("serve() needs chunks == 1 (interleaved stages wait on two upstreams)")
        if not self.wired:
            raise StageError(f"stage {spec.index} is not wired to its neighbours; refusing to serve")
        upstream = spec.host if spec.index == 0 else spec.index - 1
        downstream = spec.host if spec.index == spec.num_stages - 1 else spec.index + 1
        part = self.parts[0]
        part.eval()
        self.endpoint.stream = "infer"  # stateful codec state apart from training's (the next call sets its own)
        codec = HOST_CODEC if downstream == spec.host else spec.codecs.spec_for(edge(spec.index, downstream),
                                                                                 TensorRole.ACTIVATION)
        served = 0
        while not stop.is_set():
            got = self.endpoint.receive_next(upstream, TensorRole.ACTIVATION, poll_s)
            if got is None:
                continue
            seq, wire_mb, x = got
            with torch.no_grad():
                y = part(x.to(self.device), {})
            self.endpoint.send(downstream, TensorRole.ACTIVATION, seq, wire_mb, y.cpu(), codec,
                               spec.recv_timeout_s)
            served += 1
        return served

    # ---- codecs ---------------------------------------------------------------------------------------------

    def set_codecs(self, codecs: EdgeCodecs) -> dict[str, tuple[str, str]]:
        """Use ``codecs`` from the next call on (call between calls: a step boundary). Every frame names its own
        codec and receivers decode what the header says, so both ends agree by construction; stateful codec
        state of replaced specs is dropped. Raises CodecError (and changes nothing) for an unknown spec.

        Returns the switches of this stage's outgoing edges: ``{"s0->s1/forward": (old, new)}``.
        """
        from layeredge_dist.codecs import parse_any

        spec = self.spec
        outgoing = [(edge(spec.index, (spec.index + 1) % spec.num_stages), TensorRole.ACTIVATION, "forward"),
                    (edge(spec.index, (spec.index - 1) % spec.num_stages), TensorRole.GRADIENT, "backward")]
        switches: dict[str, tuple[str, str]] = {}
        for e, role, direction in outgoing:
            if e.src == e.dst:
                continue
            old, new = spec.codecs.spec_for(e, role), codecs.spec_for(e, role)
            parse_any(new)  # validate before changing anything
            if old != new:
                cut = e if role is TensorRole.ACTIVATION else EdgeId(e.dst, e.src)
                switches[f"{cut}/{direction}"] = (old, new)
        self.spec = replace(spec, codecs=codecs)
        self._proxies.clear()
        if self.metrics is not None:
            for key, (old, new) in switches.items():
                cut, direction = key.split("/")
                self.metrics.codec_switch(cut, direction, new, old)
        return switches

    # ---- control --------------------------------------------------------------------------------------------

    def abort(self, seq: int) -> None:
        """Make a running :meth:`run_step` of call ``<= seq`` stop at its next receive (StepAborted). Thread-safe."""
        self.endpoint.abort(seq)

    def reset(self, peers: Mapping[int, str] | None = None) -> None:
        """Discard per-call state after a failure: stashed frames, senders, gradients; optionally rewire."""
        self.endpoint.reset()
        self.optimizer.zero_grad(set_to_none=True)
        if peers is not None:
            self.connect(peers)

    # ---- state ----------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Partition weights, optimizer state, codec state and the step count (what a checkpoint holds)."""
        return {"stage": self.spec.index, "steps_done": self.steps_done,
                "model": [part.state_dict() for part in self.parts], "optimizer": self.optimizer.state_dict(),
                "codec_state": self.endpoint.codec_state()}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state`; raises StageError when it belongs to another stage."""
        if state["stage"] != self.spec.index or len(state["model"]) != len(self.parts):
            raise StageError(f"checkpoint of stage {state['stage']} ({len(state['model'])} chunks) cannot load into "
                             f"stage {self.spec.index} ({len(self.parts)} chunks)")
        for part, sd in zip(self.parts, state["model"]):
            part.load_state_dict(sd)
        self.optimizer.load_state_dict(state["optimizer"])
        self.endpoint.load_codec_state(state["codec_state"])
        self.steps_done = int(state["steps_done"])
        if not isinstance(self.optimizer, _NoOptimizer):
            self.spec.optimizer.seek(self.optimizer, self.steps_done)  # the lr schedule follows the step count

    # ---- weights pushed by the driver -----------------------------------------------------------------------

    def _weight_wire_bytes(self) -> int:
        """Wire bytes of WEIGHT frames received from the host so far (payload, header and framing)."""
        host_edge = edge(self.spec.host, self.spec.index)
        return sum(s.wire_bytes for s in self.endpoint.meter.snapshot()
                   if s.role is TensorRole.WEIGHT and s.direction is Direction.RECV and s.edge == host_edge)

    def receive_weights(self, seq: int, timeout_s: float | None = None) -> dict[str, Any]:
        """First half of a weight push: receive, decode and verify this stage's weights, and hold them.

        The driver sends, on the host edge with ``TensorRole.WEIGHT`` and call number ``seq``, one
        :func:`~layeredge_dist.prune.transfer.encode_state` bundle per local chunk: the manifest, then its parts,
        wire micro-batches numbered on across chunks. Every tensor's checksum is verified and the state must fit
        the partition exactly (same keys and shapes); only then is it kept until :meth:`commit_weights`. Nothing
        is loaded here, so a failure leaves the current weights untouched.

        Returns ``{stage, chunks, tensors, raw_bytes, wire_bytes, seconds, verify_s}`` (bytes; seconds from the
        first frame wanted to the last checksum verified). Raises
        :class:`~layeredge_dist.prune.transfer.WeightChecksumError` naming the tensor (a corrupted or
        mis-decoded weight, a malformed manifest), StageError when the state does not fit the partition,
        PeerTimeout after ``timeout_s`` (default ``spec.recv_timeout_s``) seconds without a frame and
        StepAborted after :meth:`abort`; each failure is counted in ``layeredge_weight_rejected_total``.
        """
        timeout = timeout_s if timeout_s is not None else self.spec.recv_timeout_s
        host, index = self.spec.host, self.spec.index
        self._pending_weights = None
        wire_before = self._weight_wire_bytes()
        t0 = time.perf_counter()
        states: list[dict[str, torch.Tensor]] = []
        raw = tensors_total = 0
        verify_s = 0.0
        mb = 0
        try:
            for c, part in enumerate(self.parts):
                manifest = load_manifest(self.endpoint.receive(
                    host, TensorRole.WEIGHT, seq, mb, timeout, f"weight manifest of chunk {c} from the host"))
                count = int(manifest["parts"])
                tensors = [self.endpoint.receive(host, TensorRole.WEIGHT, seq, mb + 1 + i, timeout,
                                                 f"weight part {i} of chunk {c} from the host")
                           for i in range(count)]
                mb += 1 + count
                t1 = time.perf_counter()
                state = assemble(manifest, tensors)  # WeightChecksumError naming the tensor
                _check_fits(part, state, index, c)
                verify_s += time.perf_counter() - t1
                states.append(state)
                raw += int(manifest["raw_bytes"])
                tensors_total += len(state)
        except BaseException as err:
            if self.metrics is not None:
                reason = "checksum" if isinstance(err, WeightChecksumError) else (
                    "shape" if isinstance(err, StageError) else "other")
                self.metrics.labelled("weight_rejected", f"s{index}", reason).inc()
            if isinstance(err, WeightChecksumError):
                raise WeightChecksumError(f"stage {index}: {err}") from None
            raise
        seconds = time.perf_counter() - t0
        wire = self._weight_wire_bytes() - wire_before
        if self.metrics is not None:
            stage = f"s{index}"
            self.metrics.labelled("weight_raw_bytes", stage).inc(raw)
            self.metrics.labelled("weight_wire_bytes", stage).inc(wire)
            self.metrics.labelled("weight_transfer_seconds", stage).observe(seconds)
        self._pending_weights = (seq, states)
        return {"stage": index, "chunks": len(states), "tensors": tensors_total, "raw_bytes": raw,
                "wire_bytes": wire, "seconds": seconds, "verify_s": verify_s}

    def commit_weights(self, seq: int) -> None:
        """Second half of a weight push: load the weights :meth:`receive_weights` verified for push ``seq``
        (strictly: every key, no extra) and start a fresh optimizer (its moments belonged to the old weights).
        Raises StageError, loading nothing, when no verified weights of push ``seq`` are held."""
        pending = self._pending_weights
        if pending is None or pending[0] != seq:
            raise StageError(f"stage {self.spec.index}: no verified weights of push {seq} to load "
                             f"(held: {None if pending is None else pending[0]})")
        with torch.no_grad():
            for part, state in zip(self.parts, pending[1]):
                part.load_state_dict(state, strict=True)
        self.optimizer = self._build_optimizer()
        self._pending_weights = None

    def discard_weights(self) -> None:
        """Drop weights received but not committed (another stage rejected the same push)."""
        self._pending_weights = None

    def save_checkpoint(self, directory: str, step: int) -> str:
        """Atomically write this stage's state after optimizer step ``step``; returns the file path."""
        return str(checkpoint.save_stage(directory, step, self.spec.index, self.state()))

    def load_checkpoint(self, directory: str, step: int) -> None:
        """Load the state this stage saved after step ``step``; FileNotFoundError when it is missing."""
        self.load_state(checkpoint.load_stage(directory, step, self.spec.index))

    def parameters(self) -> list[dict[str, torch.Tensor]]:
        """Per local chunk: parameters and buffers under partition keys (detached CPU copies)."""
        return [{k: v.detach().cpu().clone() for k, v in part.state_dict().items()} for part in self.parts]

    def gradients(self) -> list[dict[str, torch.Tensor]]:
        """Per local chunk: current parameter gradients under partition keys (parameters without one left out)."""
        return [{k: p.grad.detach().cpu().clone() for k, p in part.named_parameters(remove_duplicate=False)
                 if p.grad is not None} for part in self.parts]

    def memory(self) -> dict[str, int]:
        """Bytes: parameters, optimizer state, peak live saved activations, current and peak process RSS."""
        params = sum(p.numel() * p.element_size() for part in self.parts for p in part.parameters())
        opt = sum(t.numel() * t.element_size() for st in self.optimizer.state.values() for t in st.values()
                  if isinstance(t, torch.Tensor))
        rss = rss_bytes()
        # the kernel updates ru_maxrss lazily, so it can lag the current RSS: a peak is never below the present
        peak = max(rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        return {"param_bytes": params, "optimizer_bytes": opt, "saved_activation_bytes_peak": self.saved_bytes_peak,
                "rss_bytes": rss, "peak_rss_bytes": peak}

    def probe(self, peer: int, probe_bytes: int = 4 << 20, pings: int = 10) -> ProbeResult:
        """RTT and bandwidth from this stage to stage ``peer``'s edge server (PeerUnavailable etc. on failure)."""
        return probe(self.endpoint.peer_address(peer), self.spec.transport, pings=pings, probe_bytes=probe_bytes)

    def stats(self, flush_s: float = 5.0) -> list[EdgeStats]:
        """Per-edge traffic of this stage so far. Waits up to ``flush_s`` for outstanding acknowledgements first:
        a frame's wire bytes are counted when its receiver acknowledges it (the TCP data path reads acks lazily),
        so the last frames of a call would otherwise be missing. A peer that is gone leaves them uncounted."""
        try:
            self.endpoint.flush(flush_s)
        except TransportError:
            pass
        return self.endpoint.meter.snapshot()

    @property
    def metrics_target(self) -> str | None:
        """``host:port`` of this stage's Prometheus exporter (None when metrics are off)."""
        return self.exporter.target if self.exporter is not None else None

    def close(self) -> None:
        """Stop the server, the exporter and close senders. Idempotent."""
        self.endpoint.close()
        if self.exporter is not None:
            self.exporter.close()


def _check_fits(part: Partition, state: Mapping[str, torch.Tensor], stage: int, chunk: int) -> None:
    """StageError unless ``state`` has exactly the keys and shapes of ``part``'s state dict."""
    own = part.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    shapes = [f"{k}: {list(state[k].shape)} for {list(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        raise StageError(f"stage {stage} chunk {chunk}: pushed weights do not fit the partition: missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {shapes[:5]}; nothing loaded")
