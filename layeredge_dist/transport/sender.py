"""The sending end of an edge over gRPC: one long-lived Frames stream, chunked payloads, a credit window.

Frames go out on a bidirectional stream that stays open across frames (no call per tensor). ``send`` cuts the
frame into chunk messages (one copy per chunk, straight from the payload tensor) and queues them for gRPC's
sending thread; the receiver answers every frame with an ack on the same stream, which returns its credit.
At most ``window_frames`` frames / ``window_bytes`` payload bytes are unacknowledged at any time.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from layeredge_dist.types import Direction, EdgeId, TensorRole
from layeredge_dist.wire import Frame, FrameError, FrameHeader, validate_header
from layeredge_dist.wire import envelope, service

from .accounting import AccountingHook, Counters, TransferRecord, emit, raw_bytes
from .allocator import tune_malloc
from .channel import EdgeSender
from .config import TransportConfig
from .errors import (
    ChannelClosed,
    DeadlineExceeded,
    FrameRejected,
    PeerUnavailable,
    TransportError,
    Unauthenticated,
)
from .options import channel_options
from .security import auth_metadata, channel_credentials, check_client_policy

#: Reopen a stream (when idle) once it has used this fraction of its deadline.
_ROTATE_AT = 0.9


def make_channel(address: str, config: TransportConfig) -> grpc.Channel:
    """A channel to ``address`` with our options and, when configured, TLS. Raises ValueError per the policy."""
    check_client_policy(address, config)
    if config.tls is not None:
        return grpc.secure_channel(address, channel_credentials(config.tls), options=channel_options(config))
    return grpc.insecure_channel(address, options=channel_options(config))


def wait_ready(channel: grpc.Channel, address: str, config: TransportConfig, timeout_s: float) -> None:
    """Connect and check that the server answers and accepts our credentials: one Ping that waits for the
    connection. Raises PeerUnavailable after ``timeout_s`` seconds without an answer, Unauthenticated when the
    server refuses our token."""
    ping = channel.unary_unary(service.method_path(service.PING_METHOD), request_serializer=None,
                               response_deserializer=None)
    try:
        ping(service.ping_request_to_bytes(service.PingRequest(b"")), timeout=max(timeout_s, 0.001),
             metadata=auth_metadata(config), wait_for_ready=True)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
            raise PeerUnavailable(f"could not connect to {address} within {timeout_s:.3g} s (is the server up, and "
                                  "do TLS settings match?)", "UNAVAILABLE") from None
        raise translate(e, f"connecting to {address}") from None


def translate(err: grpc.RpcError, what: str) -> TransportError:
    """Map a gRPC error to our exception types, keeping the peer's message."""
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    name = code.name if code is not None else "UNKNOWN"
    msg = f"{what}: {name}: {details}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return FrameRejected(msg, name)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(msg, name)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"{msg} (the call's deadline passed)", name)
    return PeerUnavailable(msg, name)


@dataclass
class Pending:
    """A sent, not yet acknowledged frame: its header, when send() was called (perf_counter s) and the bytes it
    took on the wire (stream messages or data-path record: header, framing and payload)."""

    header: FrameHeader
    t0: float
    wire_bytes: int = 0


class _Stream:
    """One Frames call and its bookkeeping (guarded by the sender's condition)."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.pending: collections.deque[Pending] = collections.deque()
        self.sent = 0
        self.acked = 0
        self.inflight_bytes = 0
        self.opened = time.monotonic()
        self.call: grpc.Call | None = None
        self.error: TransportError | None = None
        self.ended = False

    def requests(self) -> Iterator[bytes]:
        """Runs in gRPC's request thread: the messages queued by send(), until None."""
        get = self.queue.get
        while True:
            message = get()
            if message is None:
                return
            yield message


class RemoteSender(EdgeSender):
    """What every sender to a remote StageServer sets up: malloc tuning (when configured), the gRPC channel to
    ``address`` (TLS and auth per ``config``; ValueError when the policy refuses), counters and hooks."""

    def __init__(self, address: str, edge: EdgeId, role: TensorRole, config: TransportConfig,
                 hooks: tuple[AccountingHook, ...]) -> None:
        if config.tune_malloc:
            tune_malloc()
        super().__init__(edge, role)
        self._address = address
        self._config = config
        self._hooks = hooks
        self.counters = Counters()
        self._channel = make_channel(address, config)


class GrpcEdgeSender(RemoteSender):
    """Sends frames of one (edge, role) to the StageServer at ``address``.

    Connection is lazy (on first send, bounded by ``connect_timeout_s`` and the send's timeout). After an error
    is raised to the caller the broken stream is dropped and the next send opens a new one; frames that were
    unacknowledged on the broken stream are lost (the error says how many).
    """

    def __init__(self, address: str, edge: EdgeId, role: TensorRole, config: TransportConfig = TransportConfig(),
                 hooks: tuple[AccountingHook, ...] = ()) -> None:
        super().__init__(address, edge, role, config, hooks)
        self._stub = self._channel.stream_stream(service.method_path(service.FRAMES_METHOD),
                                                 request_serializer=None, response_deserializer=None)
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()  # one send at a time: a frame's messages must stay together
        self._stream: _Stream | None = None
        self._closed = False
        self._what = f"{edge} {role.value} -> {address}"

    @property
    def unacknowledged(self) -> tuple[int, int]:
        """(frames, payload bytes) sent but not yet acknowledged."""
        with self._cond:
            s = self._stream
            return (0, 0) if s is None else (s.sent - s.acked, s.inflight_bytes)

    # ---- stream management (call with the condition held) ---------------------------------------------------

    def _open(self, deadline: float) -> _Stream:
        wait_ready(self._channel, self._address, self._config,
                   min(self._config.connect_timeout_s, deadline - time.monotonic()))
        s = _Stream()
        s.call = self._stub(s.requests(), timeout=self._config.stream_deadline_s, metadata=auth_metadata(self._config))
        threading.Thread(target=self._read_acks, args=(s,), name=f"acks {self._edge}", daemon=True).start()
        self.counters.add("streams_opened")
        return s

    def _drop(self, s: _Stream) -> None:
        s.queue.put(None)
        if s.call is not None:
            s.call.cancel()
        if self._stream is s:
            self._stream = None

    def _check(self, s: _Stream | None) -> None:
        if self._closed:
            raise ChannelClosed(f"{self._what}: sender closed")
        if s is not None and s.error is not None:
            err = s.error
            self._drop(s)
            raise err

    def _read_acks(self, s: _Stream) -> None:
        """Ack reader thread: returns credits, records transfers, turns a broken stream into an error."""
        err: TransportError | None = None
        assert s.call is not None
        try:
            for raw in s.call:  # type: ignore[attr-defined]
                msg = envelope.parse_message(raw)
                if msg.ack is None:
                    raise FrameError("message", "expected an ack from the receiver, found none")
                n = envelope.parse_ack_body(msg.ack)
                done: list[Pending] = []
                now = time.perf_counter()
                with self._cond:
                    if n > s.sent:
                        raise FrameError("message", f"expected an ack for at most {s.sent} frames, found {n}")
                    while s.acked < n:
                        p = s.pending.popleft()
                        s.acked += 1
                        s.inflight_bytes -= p.header.payload_length
                        done.append(p)
                    self._cond.notify_all()
                for p in done:
                    h = p.header
                    self.counters.add("frames_sent")
                    self.counters.add("bytes_sent", h.payload_length)
                    if self._hooks:
                        emit(self._hooks, TransferRecord(h.edge, h.role, Direction.SEND, h.codec, h.numel,
                                                         raw_bytes(h.dtype, h.numel), p.wire_bytes,
                                                         now - p.t0), self.counters)
            with self._cond:
                if s.sent > s.acked:
                    err = PeerUnavailable(f"{self._what}: stream ended by the receiver with {s.sent - s.acked} "
                                          "frames unacknowledged", "UNAVAILABLE")
        except grpc.RpcError as e:
            err = translate(e, self._what)
        except FrameError as e:
            err = PeerUnavailable(f"{self._what}: bad message from the receiver: {e}", "INTERNAL")
        with self._cond:
            s.ended = True
            if err is not None and not self._closed:
                lost = s.sent - s.acked
                if lost:
                    err = type(err)(f"{err} ({lost} frames unacknowledged, lost)", err.code)
                s.error = err
                self.counters.add("stream_errors")
            self._cond.notify_all()

    # ---- the contract ---------------------------------------------------------------------------------------

    def send(self, frame: Frame, *, timeout_s: float) -> None:
        if frame.edge != self._edge or frame.role != self._role:
            raise FrameError("edge", f"expected a frame for {self._edge} {self._role.value}, found "
                                     f"{frame.edge} {frame.role.value}")
        validate_header(frame.header, self._config.limits)
        with self._send_lock:
            self._send_locked(frame, timeout_s)

    def _send_locked(self, frame: Frame, timeout_s: float) -> None:
        n = frame.nbytes
        cfg = self._config
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        with self._cond:
            s = self._stream
            self._check(s)
            s = self._stream
            if s is not None and s.sent == s.acked and time.monotonic() - s.opened > _ROTATE_AT * cfg.stream_deadline_s:
                self._drop(s)
                s = None
            if s is None:
                s = self._stream = self._open(deadline)
            while s.error is None and s.sent > s.acked and (
                    s.sent - s.acked >= cfg.window_frames or s.inflight_bytes + n > cfg.window_bytes):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeadlineExceeded(
                        f"{self._what}: in-flight window full for {timeout_s:.3g} s ({s.sent - s.acked} frames, "
                        f"{s.inflight_bytes} B unacknowledged; window {cfg.window_frames} frames / "
                        f"{cfg.window_bytes} B)", "DEADLINE_EXCEEDED")
                self._cond.wait(left)
            self._check(s)
            pending = Pending(frame.header, t0)
            s.pending.append(pending)
            s.sent += 1
            s.inflight_bytes += n
        # Cut and copy the chunks here, on the caller's thread, so gRPC's sending thread only sends: copying
        # the next chunk overlaps with sending the previous one. Bounded by the window.
        put = s.queue.put
        for message in envelope.frame_messages(frame.header, frame.payload_bytes(), cfg.chunk_bytes):
            pending.wire_bytes += len(message)  # before the put: the ack cannot come before the last message
            put(message)

    def flush(self, *, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            s = self._stream
            self._check(s)
            if s is None:
                return
            while s.error is None and s.acked < s.sent:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeadlineExceeded(f"{self._what}: {s.sent - s.acked} frames not acknowledged within "
                                           f"{timeout_s:.3g} s", "DEADLINE_EXCEEDED")
                self._cond.wait(left)
            self._check(s)

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            s = self._stream
            self._stream = None
            self._cond.notify_all()
        if s is not None:
            s.queue.put(None)  # half-close: the server finishes the stream
            with self._cond:
                self._cond.wait_for(lambda: s.ended, timeout=1.0)
            if s.call is not None:
                s.call.cancel()
        self._channel.close()

    def __enter__(self) -> GrpcEdgeSender:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()
