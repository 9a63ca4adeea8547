"""The driver: stage actors on a Ray cluster, wired over the edge transport, and the calls that run them.

:class:`Pipeline` places one :class:`~layeredge_dist.pipeline.actor.StageActor` per stage with a placement group
(STRICT_SPREAD when there are enough nodes, else PACK), collects each actor's edge-server address, wires
neighbours, and runs calls: model inputs go to stage 0 and losses / outputs come back from the last stage over
the edge transport (the driver is pseudo-stage ``P`` there). A stage that dies or hangs is detected while the
driver waits and reported as :class:`StageFailure` naming the stage; :meth:`Pipeline.recover` waits for Ray to
restart it (``max_restarts``), rewires everyone and lets the caller reload a checkpoint.

Weights can be pushed from the driver to the stages over the same edge transport (:meth:`Pipeline.push_weights`:
int8 / int4 blockwise, bf16, sparse encodings of :mod:`layeredge_dist.prune.transfer`, every tensor's checksum
verified by the receiving stage, all stages or none loading): at deployment (``Placement.weight_codec``: the
driver reads ``model.weights`` once and ships every stage its share instead of every stage reading the file), to
put fine-tuned weights on an inference pipeline, and again to a stage Ray restarted (:meth:`Pipeline.recover`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from layeredge_dist.model import Batch, partition_specs, split_batch
from layeredge_dist.model.weights import read_partition_state
from layeredge_dist.prune.transfer import EncodedState, TransferPolicy, encode_state
from layeredge_dist.stage import EdgeCodecs, Host, Mode, StageSpec, StepReport, write_manifest
from layeredge_dist.transport import ProbeResult, TransportError
from layeredge_dist.types import EdgeStats

from .actor import StageActor
from .cluster import alive_nodes, choose_placement

_POLL_S = 0.25
#: After one stage's call fails, how long to wait for a dead stage to show before blaming the failed one (s).
DEATH_GRACE_S = 3.0


class StageFailure(RuntimeError):
    """A stage died, raised, or did not finish a call in time. ``stage`` is its index (None: unknown)."""

    def __init__(self, stage: int | None, message: str) -> None:
        super().__init__(message)
        self.stage = stage


class WeightTransferError(RuntimeError):
    """A weight push failed: a stage rejected what it decoded (checksum mismatch naming the tensor, a state that
    does not fit its partition), a frame did not arrive, or the transport failed. No stage loaded anything; the
    pipeline keeps its previous weights and stays usable. ``stage`` is the first stage that failed (None:
    unknown)."""

    def __init__(self, stage: int | None, message: str) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass(frozen=True)
class Placement:
    """Ray resources and supervision of the stage actors. Seconds for timeouts."""

    cpus_per_stage: float = 1.0
    gpus_per_stage: float = 0.0
    placement: str = "auto"
    max_restarts: int = 1
    start_timeout_s: float = 120.0
    step_timeout_s: float = 300.0
    #: Deployment of ``model.weights``: None = every stage reads its share of the file itself; a codec spec
    #: (``fp32``, ``bf16``, ``int8``, ``int4`` ...) = the driver reads the file once and pushes every stage its
    #: share in that codec over the edge transport (:meth:`Pipeline.push_weights`; lossy for int8 / int4).
    weight_codec: str | None = None


@dataclass(frozen=True)
class WeightPush:
    """What one weight push moved. ``stages``: per receiving stage, ``{stage, chunks, tensors, raw_bytes,
    wire_bytes, seconds, verify_s}`` as the stage measured it (wire bytes include headers and framing; seconds from
    waiting for the first frame to the last checksum verified). Bytes; seconds."""

    codec: str
    stages: list[dict[str, Any]]
    raw_bytes: int
    payload_bytes: int
    wire_bytes: int
    seconds: float

    @property
    def ratio(self) -> float:
        """Raw bytes over wire bytes (inf for an empty push)."""
        return self.raw_bytes / self.wire_bytes if self.wire_bytes else float("inf")


@dataclass(frozen=True)
class CallResult:
    """One call's results (per micro-batch, from the last stage) and every stage's report."""

    outputs: list[torch.Tensor]
    reports: list[StepReport]
    seconds: float


class Pipeline:
    """Stage actors plus the driver's host endpoint. Use as a context manager or call :meth:`close`.

    ``base`` is the spec every stage gets (its ``index`` is replaced per stage; ``device="auto"`` picks CUDA on
    GPU nodes). The driver's endpoint binds ``driver_ip`` (default: this node's Ray IP, so stages on other
    hosts reach it). Raises StageFailure when actors do not start within ``start_timeout_s`` and ClusterError when
    the placement is impossible (e.g. strict_spread on too few nodes).
    """

    def __init__(self, base: StageSpec, placement: Placement = Placement(), driver_ip: str | None = None) -> None:
        self.base = base
        #: Where the driver's host endpoint (and exporter) listen: this node's Ray IP unless given.
        self.driver_ip = driver_ip or ray.util.get_node_ip_address()
        self.placement = placement
        self.num_stages = base.num_stages
        nodes = alive_nodes()
        self.strategy = choose_placement(self.num_stages, placement.placement, len(nodes))
        bundle: dict[str, float] = {"CPU": placement.cpus_per_stage}
        if placement.gpus_per_stage > 0:
            bundle["GPU"] = placement.gpus_per_stage
        self.pg = placement_group([dict(bundle) for _ in range(self.num_stages)], strategy=self.strategy)
        self.actors: list[Any] = []
        self.host: Host | None = None
        self.seq = 0
        self._serve_refs: list[Any] = []
        self._serve_session = 0
        #: The last weights pushed to each virtual stage (encoded), re-shipped to a stage Ray restarts.
        self._pushed: list[EncodedState | None] = [None] * (self.num_stages * base.chunks)
        #: The deployment push (``placement.weight_codec`` with ``model.weights`` set), else None.
        self.deployment: WeightPush | None = None
        deploy = placement.weight_codec is not None and base.model.weights is not None
        stage_base = replace(base, model=replace(base.model, weights=None)) if deploy else base
        try:
            try:
                ray.get(self.pg.ready(), timeout=placement.start_timeout_s)
            except ray.exceptions.GetTimeoutError:
                raise StageFailure(None, f"placement group {self.strategy} of {self.num_stages} x {bundle} not "
                                         f"ready after {placement.start_timeout_s:.0f} s; alive nodes: "
                                         f"{[(n['ip'], n['resources'].get('CPU')) for n in nodes]}") from None
            for s in range(self.num_stages):
                self.actors.append(StageActor.options(
                    num_cpus=placement.cpus_per_stage, num_gpus=placement.gpus_per_stage,
                    max_restarts=placement.max_restarts, max_task_retries=0,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=s),
                ).remote(replace(stage_base, index=s)))
            self.host = Host(self.num_stages, base.transport, bind=self.driver_ip, timeout_s=base.recv_timeout_s)
            self.infos = self._wait_alive(range(self.num_stages))
            self._wire()
            if deploy:
                assert placement.weight_codec is not None
                self.deployment = self.push_weights(None, placement.weight_codec)
        except BaseException:
            self.close()
            raise

    # ---- wiring and health ----------------------------------------------------------------------------------

    def _wait_alive(self, stages: Sequence[int]) -> list[dict[str, Any]]:
        """``info()`` of every stage in ``stages``, retrying while Ray (re)starts them."""
        deadline = time.monotonic() + self.placement.start_timeout_s
        infos: dict[int, dict[str, Any]] = {}
        last_error: BaseException | None = None
        while len(infos) < len(stages):
            for s in stages:
                if s in infos:
                    continue
                try:
                    infos[s] = ray.get(self.actors[s].info.remote(), timeout=max(1.0, deadline - time.monotonic()))
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as err:
                    last_error = err
                    if isinstance(err, ray.exceptions.ActorDiedError) and "restart" not in str(err).lower() and \
                            time.monotonic() > deadline:
                        break
            if time.monotonic() > deadline and len(infos) < len(stages):
                missing = sorted(set(stages) - set(infos))
                raise StageFailure(missing[0], f"stages {missing} not alive after "
                                               f"{self.placement.start_timeout_s:.0f} s: {last_error}")
            if len(infos) < len(stages):
                time.sleep(_POLL_S)
        old = getattr(self, "infos", [{} for _ in range(self.num_stages)])
        return [infos.get(s, old[s]) for s in range(self.num_stages)]

    def peers(self) -> dict[int, str]:
        """Edge-server address of every stage and of the host."""
        assert self.host is not None
        return {i["stage"]: i["address"] for i in self.infos} | {self.num_stages: self.host.address}

    def _wire(self) -> None:
        assert self.host is not None
        peers = self.peers()
        self._gather("reset", peers)
        self.host.reset()
        self.host.connect(peers[0], peers[self.num_stages - 1], {s: peers[s] for s in range(self.num_stages)})

    # ---- calls ----------------------------------------------------------------------------------------------

    def call(self, batch: Batch, mode: Mode = "train") -> CallResult:
        """Run one pipeline call on ``batch`` (split into the spec's micro-batches).

        Raises StageFailure (after aborting the other stages) when a stage raises, dies or exceeds
        ``step_timeout_s``; the pipeline must then be :meth:`recover` ed before the next call.
        """
        assert self.host is not None
        if self._serve_refs:
            if mode != "infer":
                raise RuntimeError(f"a {mode} call while serving; leave serving() first")
            return self._call_served(batch)
        self.seq += 1
        seq = self.seq
        inputs, sides = split_batch(batch, self.base.microbatches)
        t0 = time.perf_counter()
        try:
            self.host.send_inputs(seq, inputs)  # first: stage 0 finds them queued when its call starts
        except BaseException as err:
            raise StageFailure(0, f"call {seq}: model inputs could not be sent to stage 0: {err}") from err
        refs = [a.run_step.remote(seq, sides, mode) for a in self.actors]
        deadline = time.monotonic() + self.placement.step_timeout_s

        def check() -> None:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                try:
                    ray.get(ref, timeout=0)
                except BaseException:  # noqa: BLE001 - the culprit is chosen among all failures below
                    culprit = self._first_failed(refs)
                    assert culprit is not None
                    raise culprit from None
            if time.monotonic() > deadline:
                pending = [i for i, r in enumerate(refs) if r not in ready]
                # In a training step every stage waits for its neighbours, so ``pending`` starts with stage 0
                # whichever stage hangs; blame one that does not even answer a control call (frozen, cut off).
                silent = [i for i in self._unresponsive() if i in pending] if len(pending) > 1 else []
                raise StageFailure((silent or pending or [None])[0],
                                   f"call {seq} not finished after {self.placement.step_timeout_s:.0f} s; "
                                   f"stuck stages: {pending}" + (f"; not answering: {silent}" if silent else ""))

        try:
            outputs = self.host.collect(seq, self.base.microbatches, check)
            reports = []
            for i, ref in enumerate(refs):
                try:
                    reports.append(ray.get(ref, timeout=max(1.0, deadline - time.monotonic())))
                except BaseException as err:  # noqa: BLE001 - the culprit is chosen among all failures
                    raise (self._first_failed(refs) or self._failure(i, err)) from err
        except BaseException as err:
            self._abort_all(seq)
            if isinstance(err, StageFailure):
                raise
            culprit = self._first_failed(refs)
            if culprit is not None:
                raise culprit from err
            raise StageFailure(None, f"call {seq} failed on the driver: {err}") from err
        return CallResult(outputs, reports, time.perf_counter() - t0)

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Inside the block, ``call(batch, "infer")`` bypasses Ray: every stage runs a forward-only serving loop
        fed by the edge transport (:meth:`Stage.serve`), so a request costs no Ray task dispatch. For models whose
        inference needs no side inputs. A stage that fails ends its loop; the next call reports it."""
        if self._serve_refs:
            raise RuntimeError("already serving")
        self._serve_session += 1
        session = self._serve_session  # stops of this session cannot end a later one's loops
        self._serve_refs = [a.serve.remote(session) for a in self.actors]
        try:
            yield
        finally:
            refs, self._serve_refs = self._serve_refs, []
            for a in self.actors:
                try:
                    a.stop_serving.remote(session)
                except Exception:  # noqa: BLE001 - a dead actor has stopped serving already
                    pass
            ray.wait(refs, num_returns=len(refs), timeout=self.placement.step_timeout_s)

    def _call_served(self, batch: Batch) -> CallResult:
        assert self.host is not None
        self.seq += 1
        seq = self.seq
        inputs, _ = split_batch(batch, self.base.microbatches)
        t0 = time.perf_counter()
        refs = self._serve_refs
        deadline = time.monotonic() + self.placement.step_timeout_s

        def check() -> None:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            if ready:
                culprit = self._first_failed(refs)  # a dead stage wins over a neighbour whose send broke
                if culprit is not None:
                    raise culprit
                i = refs.index(ready[0])
                raise StageFailure(i, f"stage {i} stopped serving")
            if time.monotonic() > deadline:
                stuck = self._unresponsive()
                raise StageFailure(stuck[0] if stuck else None, f"served call {seq} not finished after "
                                   f"{self.placement.step_timeout_s:.0f} s; stuck stages: {stuck}")

        try:
            self.host.send_inputs(seq, inputs)
            outputs = self.host.collect(seq, self.base.microbatches, check)
        except StageFailure:
            raise
        except BaseException as err:
            stuck = self._unresponsive()
            raise StageFailure(stuck[0] if stuck else None, f"served call {seq} failed: {err}"
                               + (f"; stuck stages: {stuck}" if stuck else "")) from err
        return CallResult(outputs, [], time.perf_counter() - t0)

    def _unresponsive(self, timeout_s: float = 2.0) -> list[int]:
        """Stages whose process does not answer a control call within ``timeout_s`` (frozen, or restarting):
        while serving, no per-call task tells a stuck stage from one waiting for its upstream."""
        refs = [a.memory.remote() for a in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        return [i for i, r in enumerate(refs) if r not in ready]

    def _failure(self, stage: int, err: BaseException) -> StageFailure:
        if isinstance(err, ray.exceptions.RayActorError):
            return StageFailure(stage, f"stage {stage} died ({type(err).__name__}); node "
                                       f"{self.infos[stage].get('node_ip')} pid {self.infos[stage].get('pid')}")
        cause = err.cause if isinstance(err, ray.exceptions.RayTaskError) else err
        return StageFailure(stage, f"stage {stage} failed: {type(cause).__name__}: {cause}")

    def _first_failed(self, refs: list[Any], grace_s: float = DEATH_GRACE_S) -> StageFailure | None:
        """The stage to blame among the calls ``refs``: a stage whose process died wins over stages that merely
        failed because a neighbour vanished (their errors often arrive first), so this waits up to ``grace_s``
        for a death to surface once any call has failed. None when no call failed."""
        deadline = time.monotonic() + grace_s
        first: StageFailure | None = None
        while True:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                try:
                    ray.get(ref, timeout=0)
                except ray.exceptions.RayActorError as err:
                    return self._failure(refs.index(ref), err)
                except BaseException as err:  # noqa: BLE001 - a stage's own error; a death may still show
                    first = first or self._failure(refs.index(ref), err)
            if first is None or len(ready) == len(refs) or time.monotonic() > deadline:
                return first
            time.sleep(0.05)

    def _abort_all(self, seq: int) -> None:
        """Make every stage's blocked receive of call ``seq`` give up; ignore stages that are dead."""
        assert self.host is not None
        self.host.abort(seq)
        for a in self.actors:
            try:
                a.abort.remote(seq)
            except Exception:  # noqa: BLE001 - a dead actor cannot be aborted
                pass

    def recover(self) -> None:
        """After a StageFailure: wait until every stage answers again (Ray restarts dead ones), let the running
        calls end, then rewire. A restarted stage built its partition from its spec, so when weights were pushed
        before (at deployment or by :meth:`push_weights`) the last push is re-shipped to every restarted stage
        (a training loop then reloads its checkpoint on top). Raises StageFailure when a stage stays dead past
        ``start_timeout_s``, WeightTransferError when the re-shipped weights are rejected."""
        before = [(i.get("node_id"), i.get("pid")) for i in self.infos]
        self.infos = self._wait_alive(range(self.num_stages))
        self._wire()
        restarted = [s for s, i in enumerate(self.infos) if (i.get("node_id"), i.get("pid")) != before[s]]
        if restarted and any(b is not None for b in self._pushed):
            self.push_encoded(self._pushed, restarted)

    # ---- weights --------------------------------------------------------------------------------------------

    def file_states(self) -> list[dict[str, torch.Tensor]]:
        """Per virtual stage (chunk-major ``v = c * P + s``): its share of ``model.weights``, read here on the
        driver (safetensors reads only the tensors asked for). Raises ValueError when the model has no weights
        file, FileNotFoundError when it is missing."""
        return [read_partition_state(ps) for ps in partition_specs(self.base.model, self.base.cuts)]

    def push_weights(self, states: Sequence[Mapping[str, torch.Tensor]] | None = None,
                     codec: str | TransferPolicy = "int8",
                     masks: Sequence[Mapping[str, torch.Tensor] | None] | None = None) -> WeightPush:
        """Load ``states`` into the stages, shipped compressed over the edge transport.

        ``states``: one partition state dict per virtual stage in chunk-major order (what :meth:`parameters`
        returns, e.g. of a training pipeline whose fine-tuned weights go to this inference pipeline); None = the
        shares of ``model.weights`` read on the driver (:meth:`file_states`). ``codec``: the codec of float
        tensors (``fp32`` and ``bf16`` casts, blockwise ``int8`` / ``int4``: every element within ``absmax(block)
        / 255`` resp. ``/ 15`` of the original), or a full :class:`~layeredge_dist.prune.transfer.TransferPolicy`;
        ``masks`` (per virtual stage, True = kept) send pruned tensors as sparse indices + values (mostly-zero
        matrices are detected anyway). Encoding is :func:`~layeredge_dist.prune.transfer.encode_state`; see
        :meth:`push_encoded` for the transfer, its guarantees and errors. Raises CodecError for a bad codec,
        ValueError for a wrong number of states.
        """
        n = self.num_stages * self.base.chunks
        if states is None:
            states = self.file_states()
        if len(states) != n or (masks is not None and len(masks) != n):
            raise ValueError(f"push_weights needs one state (and mask set) per virtual stage ({n}), got "
                             f"{len(states)}{'' if masks is None else f' and {len(masks)}'}")
        policy = codec if isinstance(codec, TransferPolicy) else TransferPolicy(codec)
        bundles: list[EncodedState | None] = [
            encode_state(st, policy, masks[v] if masks is not None else None) for v, st in enumerate(states)]
        return self.push_encoded(bundles)

    def push_encoded(self, bundles: Sequence[EncodedState | None], stages: Sequence[int] | None = None
                     ) -> WeightPush:
        """Ship already encoded weights (one bundle per virtual stage, chunk-major) to ``stages`` (default all).

        Two phases, so that all stages load or none does: every target stage receives its bundles from the
        driver's host endpoint (``TensorRole.WEIGHT`` frames, call number ``seq``), decodes them with the codec
        each frame names, verifies every tensor's checksum and checks the state fits its partition; only when
        every stage succeeded do they all load (strictly) and restart their optimizers. Receiving stages export
        ``layeredge_weight_{raw,wire}_bytes_total`` and ``layeredge_weight_transfer_seconds``.

        Raises WeightTransferError (the pipeline keeps its previous weights and stays usable) when a stage
        rejects its weights, e.g. ``weight 'blocks.0.attn.qkv.weight' [96, 32]: checksum of the decoded tensor
        is ..., the sender's is ...``, or a frame cannot be sent or does not arrive; StageFailure when a stage
        dies; RuntimeError while serving.
        """
        assert self.host is not None
        if self._serve_refs:
            raise RuntimeError("cannot push weights while serving; leave serving() first")
        targets = sorted(set(range(self.num_stages) if stages is None else stages))
        chunks = self.base.chunks
        per_stage = {s: [bundles[c * self.num_stages + s] for c in range(chunks)] for s in targets}
        missing = [s for s, b in per_stage.items() if any(x is None for x in b)]
        if missing:
            raise ValueError(f"no weights to push to stages {missing}")
        self.seq += 1
        seq = self.seq
        t0 = time.perf_counter()
        refs = {s: self.actors[s].receive_weights.remote(seq) for s in targets}
        failure: WeightTransferError | None = None
        for s in targets:
            try:
                self.host.send_weights(s, seq, per_stage[s])  # type: ignore[arg-type]
            except Exception as err:  # noqa: BLE001 - any send failure aborts the whole push
                failure = WeightTransferError(s, f"weight push {seq}: sending to stage {s} failed: "
                                                 f"{type(err).__name__}: {err}")
                self._abort_all(seq)
                break
        results: dict[int, dict[str, Any]] = {}
        for s, ref in refs.items():
            try:
                results[s] = ray.get(ref, timeout=self.placement.step_timeout_s)
            except ray.exceptions.GetTimeoutError:
                self._abort_all(seq)
                failure = failure or WeightTransferError(s, f"weight push {seq}: stage {s} did not verify its "
                                                            f"weights in {self.placement.step_timeout_s:.0f} s")
            except ray.exceptions.RayActorError as err:
                self._abort_all(seq)
                self._discard(targets)
                raise self._failure(s, err) from err
            except ray.exceptions.RayError as err:
                cause = err.cause if isinstance(err, ray.exceptions.RayTaskError) else err
                if failure is None:
                    self._abort_all(seq)  # the others stop waiting for frames that may never come
                    failure = WeightTransferError(s, f"weight push {seq} rejected by stage {s}, nothing loaded: "
                                                     f"{type(cause).__name__}: {cause}")
        if failure is not None:
            self._discard(targets)
            raise failure
        for s in targets:
            try:
                ray.get(self.actors[s].commit_weights.remote(seq), timeout=self.placement.step_timeout_s)
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as err:
                raise self._failure(s, err) from err
        for s in targets:
            for c in range(chunks):
                self._pushed[c * self.num_stages + s] = per_stage[s][c]
        try:
            self.host.endpoint.flush(5.0)
        except TransportError:
            pass
        rows = [results[s] for s in targets]
        pushed = [b for s in targets for b in per_stage[s] if b is not None]
        specs = sorted({p.spec for b in pushed for p in b.parts if p.spec != "raw"})
        return WeightPush(codec="+".join(specs) or "raw", stages=rows,
                          raw_bytes=sum(r["raw_bytes"] for r in rows), payload_bytes=sum(b.nbytes for b in pushed),
                          wire_bytes=sum(r["wire_bytes"] for r in rows), seconds=time.perf_counter() - t0)

    def _discard(self, stages: Sequence[int]) -> None:
        """Make ``stages`` drop weights they received but did not load; ignore stages that are dead."""
        refs = []
        for s in stages:
            try:
                refs.append(self.actors[s].discard_weights.remote())
            except Exception:  # noqa: BLE001 - a dead actor holds nothing
                pass
        ray.wait(refs, num_returns=len(refs), timeout=self.placement.step_timeout_s)

    # ---- state ----------------------------------------------------------------------------------------------

    def _gather(self, method: str, *args: Any) -> list[Any]:
        """Call ``method`` on every stage and wait; a stage that dies or raises becomes a StageFailure."""
        refs = [getattr(a, method).remote(*args) for a in self.actors]
        out = []
        for i, ref in enumerate(refs):
            try:
                out.append(ray.get(ref, timeout=self.placement.step_timeout_s))
            except ray.exceptions.GetTimeoutError:
                raise StageFailure(i, f"stage {i}: {method} did not answer in "
                                      f"{self.placement.step_timeout_s:.0f} s") from None
            except (ray.exceptions.RayError, OSError, ValueError) as err:
                raise self._failure(i, err) from err
        return out

    def set_codecs(self, codecs: EdgeCodecs) -> dict[str, tuple[str, str]]:
        """Switch every stage to ``codecs`` between calls (a step boundary); returns the switches
        ``{"s0->s1/forward": (old, new)}``. A stage that rejects a spec (CodecError) fails the switch as a
        StageFailure; stages that already switched keep the new codecs (frames name their codec, so mixed
        assignments still decode correctly)."""
        switches: dict[str, tuple[str, str]] = {}
        for result in self._gather("set_codecs", codecs):
            switches.update(result)
        self.base = replace(self.base, codecs=codecs)
        return switches

    def save_checkpoint(self, directory: str, step: int, info: dict[str, Any]) -> None:
        """Every stage saves its state after ``step`` optimizer steps; then the manifest marks it complete."""
        self._gather("save_checkpoint", directory, step)
        write_manifest(directory, step, dict(info, num_stages=self.num_stages))

    def load_checkpoint(self, directory: str, step: int) -> None:
        """Every stage loads the state saved after ``step``; StageFailure when their step counts disagree."""
        done = self._gather("load_checkpoint", directory, step)
        if set(done) != {step}:
            raise StageFailure(None, f"checkpoint {step}: stages report steps {done}")

    def _per_virtual(self, per_stage: list[list[dict[str, torch.Tensor]]]) -> list[dict[str, torch.Tensor]]:
        return [per_stage[v % self.num_stages][v // self.num_stages]
                for v in range(self.num_stages * self.base.chunks)]

    def parameters(self) -> list[dict[str, torch.Tensor]]:
        """Per virtual stage (chunk-major order ``v = c * P + s``): partition state dicts."""
        return self._per_virtual(self._gather("parameters"))

    def gradients(self) -> list[dict[str, torch.Tensor]]:
        """Per virtual stage: current parameter gradients (after a ``grad`` call)."""
        return self._per_virtual(self._gather("gradients"))

    def zero_grad(self) -> None:
        """Drop every stage's gradients."""
        self._gather("zero_grad")

    def proxy_values(self) -> dict[str, dict[str, dict[str, float]]]:
        """Online importance proxies of every activation edge: ``{edge: {codec: ProxyValue fields}}``."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for values in self._gather("proxy_values"):
            out.update(values)
        return out

    def memory(self) -> list[dict[str, int]]:
        """Per stage: parameter, optimizer, saved-activation and RSS bytes."""
        return self._gather("memory")

    def stats(self) -> list[EdgeStats]:
        """Edge traffic of every stage and of the host."""
        assert self.host is not None
        try:
            self.host.endpoint.flush(5.0)  # wire bytes count on acknowledgement (see Stage.stats)
        except TransportError:
            pass
        return [s for stats in self._gather("stats") for s in stats] + self.host.endpoint.meter.snapshot()

    def probe_links(self, probe_bytes: int = 4 << 20) -> dict[tuple[int, int], ProbeResult]:
        """RTT and bandwidth of every link the pipeline uses (stage ``s`` to ``s + 1``, measured by the sender;
        the wrap-around link when interleaved), keyed ``(src, dst)``. Runs in the stages' control group, so it
        may overlap a running call (and then measures a loaded link)."""
        links = [(s, s + 1) for s in range(self.num_stages - 1)]
        if self.base.chunks > 1:
            links.append((self.num_stages - 1, 0))
        refs = {link: self.actors[link[0]].probe.remote(link[1], probe_bytes) for link in links}
        out = {}
        for link, ref in refs.items():
            try:
                out[link] = ray.get(ref, timeout=self.placement.step_timeout_s)
            except (ray.exceptions.RayError, OSError) as err:
                raise self._failure(link[0], err) from err
        return out

    def kill_stage(self, stage: int) -> None:
        """Kill stage ``stage``'s process as a crash would (Ray may restart it); for failure drills and tests."""
        ray.kill(self.actors[stage], no_restart=False)

    def close(self) -> None:
        """Stop the actors, release the placement group and the host endpoint. Idempotent."""
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = []
        if self.pg is not None:
            try:
                remove_placement_group(self.pg)
            except Exception:  # noqa: BLE001
                pass
            self.pg = None
        if self.host is not None:
            self.host.close()
            self.host = None

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
