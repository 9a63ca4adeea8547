"""One process's end of the edge transport: a server for incoming edges, senders to peers, codecs per edge.

Both stages and the driver ("host") use an :class:`Endpoint`. A tensor is sent as one frame identified by
``(edge, role, seq, wire micro-batch)``; ``seq`` numbers every pipeline call (training step, evaluation or
inference batch) and only grows, so frames left over from an aborted call are recognised as stale and dropped.
Frames that arrive before they are wanted are stashed until asked for.

Randomized codecs (``/rht`` rotations, ``/sr`` rounding noise, ``randk``) draw from a generator seeded per frame
(:func:`frame_seed`: a pure function of the endpoint's ``codec_seed``, the edge, the role, the wire micro-batch and
the training step -- or ``seq`` for calls that are not training steps), so a run repeated with the same seed and
batches sends the same bits, however often it evaluates and whether or not a step had to be retried.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import torch

from layeredge_dist.codecs import parse_any
from layeredge_dist.metrics import Metrics
from layeredge_dist.metrics.labels import UNKNOWN_EDGE
from layeredge_dist.model.partition import derived_seed
from layeredge_dist.codecs.stateful import DeltaCodec, DeltaState, EFState, ErrorFeedback
from layeredge_dist.transport import (
    DeadlineExceeded,
    EdgeSender,
    StageServer,
    TransportConfig,
    open_sender,
)
from layeredge_dist.types import Direction, EdgeId, TensorRole
from layeredge_dist.wire import Frame, encoded_from_frame, frame_from_encoded

from .errors import PeerTimeout, StepAborted
from .meter import EdgeMeter
from .spec import edge

_POLL_S = 0.25  # how often a blocked receive checks for an abort or a dead peer
#: With metrics on, every this-many-th frame of an edge and role has its codec error measured and exported.
ERROR_SAMPLE_EVERY = 16


def frame_seed(codec_seed: int, e: EdgeId, role: TensorRole, draw: str, wire_mb: int) -> int:
    """The 63-bit seed of the generator a randomized codec draws from for micro-batch ``wire_mb``'s ``role``
    tensor on edge ``e``, in the call named ``draw`` (:meth:`Endpoint.send`: ``"step<n>"`` for training step
    ``n``, else ``"call<seq>"``)."""
    return derived_seed(codec_seed, f"frame/{e}/{role.value}/{draw}/{wire_mb}")


def _storage_ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class Endpoint:
    """Edge transport of stage ``index`` (the host uses index ``num_stages``).

    ``bind`` is the ``host`` part of the server address (port chosen freely). ``codec_seed`` seeds the draws of
    randomized codecs per frame (:func:`frame_seed`; a generator on the tensor's device, so a CPU and a GPU run
    of one seed draw differently); None draws from torch's global RNG. Raises OSError when the server cannot
    bind. Not thread-safe except :meth:`abort`, which may be called from any thread.
    """

    def __init__(self, index: int, transport: TransportConfig, bind: str = "127.0.0.1",
                 metrics: Metrics | None = None, codec_seed: int | None = None) -> None:
        self.index = index
        self.codec_seed = codec_seed
        self._generators: dict[torch.device, torch.Generator] = {}  # one per device, re-seeded for every frame
        self.meter = EdgeMeter(metrics)
        self.metrics = metrics
        self._sent_frames: dict[tuple[EdgeId, TensorRole], int] = {}
        self._transport = transport
        self._server = StageServer(f"{bind}:0", transport, hooks=(self.meter.transport_hook,),
                                   on_reject=self._rejected if metrics is not None else None)
        self._server.start()
        self._peers: dict[int, str] = {}
        self._senders: dict[tuple[int, TensorRole], EdgeSender] = {}
        self._stash: dict[tuple[EdgeId, TensorRole], dict[tuple[int, int], Frame]] = {}
        self._codecs: dict[str, object] = {}
        self._ef: dict[Hashable, EFState] = {}
        self._delta: dict[Hashable, DeltaState] = {}
        #: Which calls the stateful codecs' state (error-feedback residuals, delta references) belongs to: the
        #: stage sets its call's mode before each call. Training keeps its own state, so an evaluation or
        #: inference call never feeds its residual into a training step or overwrites a training reference; the
        #: two ends of an edge are always in the same call, so they agree.
        self.stream = "train"
        self._abort_lock = threading.Lock()
        self._aborted_upto = -1  # calls with seq <= this give up
        self.stale_frames = 0

    def _rejected(self, e: EdgeId | None, reason: str) -> None:
        assert self.metrics is not None
        self.metrics.rejected(e if e is not None else UNKNOWN_EDGE, reason)

    @property
    def address(self) -> str:
        """``host:port`` of this endpoint's server."""
        return self._server.address

    # ---- wiring ---------------------------------------------------------------------------------------------

    def connect(self, peers: Mapping[int, str]) -> None:
        """Use ``peers`` (stage index -> ``host:port``) from now on; senders to changed addresses are reopened."""
        for (dst, role), sender in list(self._senders.items()):
            if peers.get(dst) != self._peers.get(dst):
                sender.close()
                del self._senders[(dst, role)]
        self._peers = dict(peers)

    def peer_address(self, index: int) -> str:
        """The address of stage ``index`` (KeyError naming it when not connected)."""
        try:
            return self._peers[index]
        except KeyError:
            raise KeyError(f"stage {self.index} has no address for stage {index}; connect() it first") from None

    def _sender(self, dst: int, role: TensorRole) -> EdgeSender:
        sender = self._senders.get((dst, role))
        if sender is None:
            address = self._peers.get(dst)
            if address is None:
                raise RuntimeError(f"stage {self.index} has no address for stage {dst}; connect() it first")
            sender = open_sender(address, edge(self.index, dst), role, self._transport,
                                 hooks=(self.meter.transport_hook,))
            self._senders[(dst, role)] = sender
        return sender

    # ---- codecs ---------------------------------------------------------------------------------------------

    def _codec(self, spec: str) -> object:
        codec = self._codecs.get(spec)
        if codec is None:
            codec = self._codecs[spec] = parse_any(spec)
        return codec

    def _generator(self, e: EdgeId, role: TensorRole, seq: int, step: int | None, wire_mb: int,
                   device: torch.device) -> torch.Generator | None:
        if self.codec_seed is None:
            return None
        gen = self._generators.get(device)
        if gen is None:  # on the tensor's device: no host-side noise to copy over
            gen = self._generators[device] = torch.Generator(device=device)
        draw = f"step{step}" if step is not None else f"call{seq}"
        gen.manual_seed(frame_seed(self.codec_seed, e, role, draw, wire_mb))
        return gen

    def _state_key(self, e: EdgeId, role: TensorRole, wire_mb: int) -> Hashable:
        """The key of a stateful codec's state for this frame: per edge, role and micro-batch slot, and per
        :attr:`stream` other than training (training's keys are the plain triple, as in older checkpoints)."""
        return (e, role, wire_mb) if self.stream == "train" else (e, role, wire_mb, self.stream)

    def _encode(self, spec: str, x: torch.Tensor, key: Hashable,  # type: ignore[no-untyped-def]
                generator: torch.Generator | None):
        codec = self._codec(spec)
        if isinstance(codec, ErrorFeedback):
            state = self._ef.get(key)
            if state is None or state.spec != codec.spec:  # a codec switch: the new wrapper starts afresh
                state = self._ef[key] = codec.new_state()
            return codec.encode(x, state, generator=generator)
        if isinstance(codec, DeltaCodec):
            dstate = self._delta.get(("send", spec, key))
            if dstate is None:
                dstate = self._delta[("send", spec, key)] = codec.new_state()
            return codec.encode(x, dstate, key, generator=generator)
        return codec.encode(x, generator=generator)  # type: ignore[attr-defined]

    def _decode(self, frame: Frame, key: Hashable) -> torch.Tensor:
        spec = frame.header.codec
        codec = self._codec(spec)
        enc = encoded_from_frame(frame)
        if isinstance(codec, DeltaCodec):
            dstate = self._delta.get(("recv", spec, key))
            if dstate is None:
                dstate = self._delta[("recv", spec, key)] = codec.new_state()
            return codec.decode(enc, dstate, key)
        return codec.decode(enc)  # type: ignore[attr-defined]

    # ---- data -----------------------------------------------------------------------------------------------

    def send(self, dst: int, role: TensorRole, seq: int, wire_mb: int, x: torch.Tensor, spec: str,
             timeout_s: float, step: int | None = None) -> None:
        """Encode ``x`` with codec ``spec`` and queue it for stage ``dst`` (returns before delivery).

        A randomized codec draws from :func:`frame_seed`: keyed by ``step``, the training step the frame belongs
        to, when given, so a step's draws do not depend on how many evaluation calls, weight pushes or failed
        attempts came before it; else by the call number ``seq``.

        Raises CodecError for a bad spec or input, and the transport's errors (PeerUnavailable,
        DeadlineExceeded, FrameRejected, ...) when the peer cannot take it.
        """
        e = edge(self.index, dst)
        t0 = time.perf_counter()
        enc = self._encode(spec, x, self._state_key(e, role, wire_mb),
                           self._generator(e, role, seq, step, wire_mb, x.device))
        frame = frame_from_encoded(enc, e, role, seq, wire_mb)
        self.meter.coded(e, role, Direction.SEND, spec, x.numel(), x.numel() * x.element_size(),
                         time.perf_counter() - t0)
        if self.metrics is not None:
            self._sample_error(e, role, spec, x, enc)
        self._sender(dst, role).send(frame, timeout_s=timeout_s)

    def _sample_error(self, e: EdgeId, role: TensorRole, spec: str, x: torch.Tensor, enc: Any) -> None:
        """Every ``ERROR_SAMPLE_EVERY``-th frame of an edge and role: export the codec's relative error
        ||x - x_hat|| / ||x|| (one extra decode of our own payload) and exact bits per element."""
        n = self._sent_frames.get((e, role), 0)
        self._sent_frames[(e, role)] = n + 1
        if n % ERROR_SAMPLE_EVERY or not x.is_floating_point():
            return
        codec = self._codec(spec)
        if isinstance(codec, DeltaCodec):
            return  # decoding would advance no state here, but needs the receiver's reference
        x_hat = codec.decode(enc)  # type: ignore[attr-defined]
        ref = x.detach().float()
        norm = float(ref.norm())
        err = float((x_hat.float() - ref).norm()) / norm if norm > 0 else 0.0
        assert self.metrics is not None
        self.metrics.relative_error(e, Direction.SEND, role, spec, err)
        self.metrics.bits(e, Direction.SEND, role, spec, enc.bits_per_element)

    def flush(self, timeout_s: float) -> None:
        """Wait until every frame sent so far is acknowledged by its receiver."""
        for sender in self._senders.values():
            sender.flush(timeout_s=timeout_s)

    def receive(self, src: int, role: TensorRole, seq: int, wire_mb: int, timeout_s: float,
                what: str, check: Callable[[], None] | None = None) -> torch.Tensor:
        """The decoded tensor ``(seq, wire_mb)`` from stage ``src`` with ``role``.

        Polls every 0.25 s: raises StepAborted once :meth:`abort` covered ``seq``, whatever ``check()`` raises (a
        dead-peer probe), and PeerTimeout after ``timeout_s`` seconds naming ``what`` was awaited.
        Stale frames (older ``seq``) are dropped and counted in ``stale_frames``.
        """
        e = edge(src, self.index)
        stash = self._stash.setdefault((e, role), {})
        frame = stash.pop((seq, wire_mb), None)
        if frame is None:
            rx = self._server.receiver(e, role)
            deadline = time.monotonic() + timeout_s
            while frame is None:
                if seq <= self._aborted_upto:
                    raise StepAborted(f"stage {self.index}: step {seq} aborted while waiting for {what}")
                if check is not None:
                    check()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PeerTimeout(f"stage {self.index} waited {timeout_s:.0f} s for {what} (call {seq}) on "
                                      f"{e}: stage {src} is dead, stuck or unreachable")
                try:
                    got = rx.receive(timeout_s=min(remaining, _POLL_S))
                except DeadlineExceeded:
                    continue
                h = got.header
                if (h.step, h.micro_batch) == (seq, wire_mb):
                    frame = got
                elif h.step < seq:
                    self.stale_frames += 1
                else:
                    stash[(h.step, h.micro_batch)] = got
        return self._finish(frame, e, role)

    def receive_next(self, src: int, role: TensorRole, timeout_s: float) -> tuple[int, int, torch.Tensor] | None:
        """The next frame from stage ``src`` in arrival order (stashed ones first, oldest call first), decoded:
        ``(seq, wire micro-batch, tensor)``; None when nothing arrives within ``timeout_s``."""
        e = edge(src, self.index)
        stash = self._stash.setdefault((e, role), {})
        if stash:
            key = min(stash)
            frame = stash.pop(key)
        else:
            try:
                frame = self._server.receiver(e, role).receive(timeout_s=timeout_s)
            except DeadlineExceeded:
                return None
        return frame.header.step, frame.header.micro_batch, self._finish(frame, e, role)

    def _finish(self, frame: Frame, e: EdgeId, role: TensorRole) -> torch.Tensor:
        """Decode ``frame``, record it in the meter and hand its buffer back when the tensor does not share it."""
        t0 = time.perf_counter()
        out = self._decode(frame, self._state_key(e, role, frame.header.micro_batch))
        n = out.numel()
        self.meter.coded(e, role, Direction.RECV, frame.header.codec, n, n * out.element_size(),
                         time.perf_counter() - t0)
        if _storage_ptr(out) != _storage_ptr(frame.payload):
            self._server.receiver(e, role).release(frame)
        return out

    # ---- control --------------------------------------------------------------------------------------------

    def abort(self, seq: int) -> None:
        """Make receives of every call numbered ``<= seq`` raise StepAborted (later calls are unaffected, so a
        late abort cannot hit the next call). Thread-safe."""
        with self._abort_lock:
            self._aborted_upto = max(self._aborted_upto, seq)

    def reset(self) -> None:
        """Forget stashed frames and close senders (reopened on next use)."""
        for sender in self._senders.values():
            sender.close()
        self._senders.clear()
        self._stash.clear()

    def codec_state(self) -> dict[str, dict[Hashable, object]]:
        """Error-feedback residuals and delta references (for checkpoints)."""
        return {"ef": dict(self._ef), "delta": dict(self._delta)}

    def load_codec_state(self, state: Mapping[str, Mapping[Hashable, object]]) -> None:
        """Restore what :meth:`codec_state` returned."""
        self._ef = dict(state.get("ef", {}))  # type: ignore[arg-type]
        self._delta = dict(state.get("delta", {}))  # type: ignore[arg-type]

    def close(self) -> None:
        """Close senders and stop the server. Idempotent."""
        for sender in self._senders.values():
            sender.close()
        self._senders.clear()
        self._server.stop(grace_s=0.5)
