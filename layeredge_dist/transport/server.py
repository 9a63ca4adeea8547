"""The gRPC server of one stage process: receives frames on long-lived streams, answers probes.

One :class:`StageServer` per process serves ``layeredge.v1.StageService`` (Frames, Ping, Sink, OpenDataPath)
plus the standard health service and server reflection. Frames arrive on a long-lived bidirectional stream per
sender; each is validated (header before allocating, length and checksum before delivery) and queued for the
matching :meth:`StageServer.receiver`; the server then answers it with an ack on the same stream (an
acknowledged frame is always delivered). A bad frame ends that stream with INVALID_ARGUMENT and the precise
message, counts in ``invalid_frames``, and the server goes on serving every other stream. With
``TransportConfig.tcp_data_path`` the server also runs the raw TCP data path
(:mod:`~layeredge_dist.transport.datapath_server`), whose connections are granted by OpenDataPath and feed the
same receivers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import TypeVar

import grpc
import numpy as np
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from layeredge_dist.types import Direction, EdgeId, TensorRole
from layeredge_dist.wire import Frame, FrameError, FrameHeader
from layeredge_dist.wire import checksum as wire_checksum
from layeredge_dist.wire import envelope, service
from layeredge_dist.wire.header import verify_checksum

from .accounting import AccountingHook, Counters, RejectHook, TransferRecord, emit, raw_bytes, reject_reason
from .allocator import tune_malloc
from .bufferpool import BufferPool
from .channel import EdgeReceiver
from .config import TransportConfig
from .datapath_server import DataPathListener
from .errors import ChannelClosed, DeadlineExceeded
from .inbox import Inbox
from .options import server_options
from .security import TokenAuthInterceptor, check_server_policy, host_of, server_credentials

_Req = TypeVar("_Req")

_PUT_POLL_S = 0.25  # how often a blocked stream checks that its call is still alive


class _Assembly:
    """A frame whose chunks are still arriving."""

    def __init__(self, header: FrameHeader, buf: torch.Tensor, wire_bytes: int) -> None:
        self.header = header
        self.buf = buf
        self.arr = buf.numpy()
        self.filled = 0
        self.sum = wire_checksum.running(header.checksum_kind)
        self.wire_bytes = wire_bytes
        self.t0 = time.perf_counter()

    def add(self, chunk: memoryview) -> None:
        n = chunk.nbytes
        if self.filled + n > self.header.payload_length:
            raise FrameError("payload_length", f"expected {self.header.payload_length} bytes of payload, found "
                                               f"at least {self.filled + n} (chunk overruns the frame)")
        self.arr[self.filled:self.filled + n] = np.frombuffer(chunk, dtype=np.uint8)
        self.sum.update(chunk)
        self.filled += n

    @property
    def complete(self) -> bool:
        return self.filled == self.header.payload_length

    def finish(self) -> Frame:
        verify_checksum(self.header, self.sum.value())
        return Frame(self.header, self.buf)


class GrpcEdgeReceiver(EdgeReceiver):
    """Frames of one (edge, role) that arrived at a :class:`StageServer`."""

    def __init__(self, edge: EdgeId, role: TensorRole, inbox: Inbox, pool: BufferPool) -> None:
        super().__init__(edge, role)
        self._inbox = inbox
        self._pool = pool

    def receive(self, *, timeout_s: float) -> Frame:
        return self._inbox.get(timeout_s)

    def release(self, frame: Frame) -> None:
        self._pool.give(frame.payload)

    def close(self) -> None:
        self._inbox.close()

    @property
    def queued_bytes(self) -> int:
        """Payload bytes waiting to be received."""
        return self._inbox.queued_bytes


class StageServer:
    """gRPC server of one stage process.

    ``address`` is ``host:port``; port 0 picks a free port, reported by :attr:`port` after :meth:`start`. Raises
    ValueError at construction when the security policy forbids the address (see
    :func:`~layeredge_dist.transport.security.check_server_policy`), OSError from :meth:`start` when the
    address cannot be bound (SO_REUSEPORT is off, so a taken port fails instead of being shared).
    """

    def __init__(self, address: str = "127.0.0.1:0", config: TransportConfig = TransportConfig(),
                 hooks: tuple[AccountingHook, ...] = (), on_reject: RejectHook | None = None) -> None:
        check_server_policy(address, config)
        self._address = address
        self._config = config
        self._hooks = hooks
        self._on_reject = on_reject
        self.counters = Counters()
        self._pool = BufferPool(config.buffer_pool_bytes)
        self._inboxes: dict[tuple[EdgeId, TensorRole], Inbox] = {}
        self._last_inbox: tuple[object, object, Inbox | None] = (None, None, None)
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None
        self._health = health.HealthServicer()
        self._port = 0
        self._stopped = False
        self._data_path: DataPathListener | None = None

    # ---- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> int:
        """Bind and start serving; returns the bound port."""
        cfg = self._config
        if cfg.tune_malloc:
            tune_malloc()
        handlers = grpc.method_handlers_generic_handler(service.SERVICE_NAME, {
            service.FRAMES_METHOD: grpc.stream_stream_rpc_method_handler(self._frames),
            service.PING_METHOD: grpc.unary_unary_rpc_method_handler(self._ping),
            service.SINK_METHOD: grpc.stream_unary_rpc_method_handler(self._sink),
            service.OPEN_DATA_PATH_METHOD: grpc.unary_unary_rpc_method_handler(self._open_data_path),
        })
        interceptors = ([TokenAuthInterceptor(cfg.token, self.counters, lambda: self._rejected(None, None))]
                        if cfg.token is not None else [])
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=cfg.max_concurrent_calls + 2, thread_name_prefix="layeredge-rpc"),
            handlers=[handlers], interceptors=interceptors, options=server_options(cfg),
            maximum_concurrent_rpcs=cfg.max_concurrent_calls,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (service.SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), server)
        try:
            if cfg.tls is not None:
                port = server.add_secure_port(self._address, server_credentials(cfg.tls))
            else:
                port = server.add_insecure_port(self._address)
        except RuntimeError as e:
            raise OSError(f"cannot bind {self._address}: {e}") from None
        if not port:
            raise OSError(f"cannot bind {self._address}")
        if cfg.tcp_data_path:
            self._data_path = DataPathListener(
                host_of(self._address) or "127.0.0.1", cfg.limits, self._pool, self.counters,
                self._deliver, self._notify, self._account, cfg.keepalive_time_ms / 1000, self._rejected)
        server.start()
        self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._health.set(service.SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        self._port = port
        return port

    def stop(self, grace_s: float = 1.0) -> None:
        """Stop serving (in-flight calls get ``grace_s`` seconds) and close every receiver. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._health.enter_graceful_shutdown()
        with self._lock:
            inboxes = list(self._inboxes.values())
        for inbox in inboxes:
            inbox.close()
        if self._data_path is not None:
            self._data_path.stop()
        if self._server is not None:
            self._server.stop(grace_s).wait(grace_s + 5.0)

    def __enter__(self) -> StageServer:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (0 before start)."""
        return self._port

    @property
    def data_path_port(self) -> int:
        """Port of the TCP data path (0 when not offered)."""
        return 0 if self._data_path is None else self._data_path.port

    @property
    def address(self) -> str:
        """``host:port`` with the real port."""
        return f"{self._address.rsplit(':', 1)[0]}:{self._port}"

    # ---- receivers ------------------------------------------------------------------------------------------

    def _inbox(self, edge: EdgeId, role: TensorRole) -> Inbox:
        last = self._last_inbox  # fast path for a stream's next frame: same (parsed, cached) EdgeId object
        if last[0] is edge and last[1] is role:
            return last[2]
        key = (edge, role)
        with self._lock:
            inbox = self._inboxes.get(key)
            if inbox is None:
                inbox = Inbox(self._config.inbox_bytes, f"{edge} {role.value}")
                if self._stopped:
                    inbox.close()
                self._inboxes[key] = inbox
            self._last_inbox = (edge, role, inbox)  # inboxes are never replaced, so this stays valid
            return inbox

    def receiver(self, edge: EdgeId, role: TensorRole) -> GrpcEdgeReceiver:
        """The receiver for frames of ``edge`` with ``role`` (created on first use, by a call or a frame)."""
        return GrpcEdgeReceiver(edge, role, self._inbox(edge, role), self._pool)

    # ---- handlers -------------------------------------------------------------------------------------------

    def _deliver(self, frame: Frame, alive: Callable[[], bool], notify: bool = True) -> bool:
        """Queue ``frame`` for its receiver, waiting for room while ``alive()``; False when it gave up.
        With ``notify=False`` the receiver is woken by a later :meth:`_notify`. Raises ChannelClosed when that
        receiver was closed."""
        inbox = self._inbox(frame.edge, frame.role)
        while True:
            try:
                inbox.put(frame, _PUT_POLL_S, notify)
                return True
            except DeadlineExceeded:
                if not alive():
                    return False

    def _notify(self, frame: Frame) -> None:
        self._inbox(frame.edge, frame.role).notify()

    def _account(self, frame: Frame, wire_bytes: int, seconds: float) -> None:
        h = frame.header
        self.counters.add("frames_received")
        self.counters.add("bytes_received", h.payload_length)
        if self._hooks:
            emit(self._hooks, TransferRecord(h.edge, h.role, Direction.RECV, h.codec, h.numel,
                                             raw_bytes(h.dtype, h.numel), wire_bytes, seconds), self.counters)

    def _frames(self, request_iterator: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        """Frames handler: validate, assemble, deliver, ack (one ack per frame, on the same stream)."""
        self.counters.add("streams_opened")
        limits = self._config.limits
        frames = 0
        cur: _Assembly | None = None
        try:
            for raw in request_iterator:
                msg = envelope.parse_message(raw)
                if msg.ack is not None:
                    raise FrameError("message", "expected header or chunk from a sender, found an ack")
                if msg.header is not None:
                    if cur is not None:
                        raise FrameError("header", f"expected {cur.header.payload_length - cur.filled} more payload "
                                                   "bytes of the previous frame, found a new header")
                    header = envelope.parse_header_body(msg.header, limits)
                    cur = _Assembly(header, self._pool.take(header.payload_length), len(raw))
                elif cur is None:
                    raise FrameError("message", "expected a header before payload chunks, found a chunk")
                else:
                    cur.wire_bytes += len(raw)
                if msg.chunk is not None:
                    cur.add(msg.chunk)
                if not cur.complete:
                    continue
                frame = cur.finish()
                done, cur = cur, None
                # Queue, then ack: an acknowledged frame is always delivered (a frame still waiting for room
                # when the sender goes away is dropped unacknowledged), and a receiver never holds more than
                # its inbox plus the sender's window.
                try:
                    if not self._deliver(frame, context.is_active):
                        self._pool.give(frame.payload)
                        return
                except ChannelClosed:
                    context.abort(grpc.StatusCode.UNAVAILABLE, f"receiver for {frame.edge} {frame.role.value} closed")
                frames += 1
                self._account(frame, done.wire_bytes, time.perf_counter() - done.t0)
                yield envelope.ack_message(frames)
            if cur is not None and not self._client_alive(context):  # the client went away mid-frame
                self.counters.add("stream_errors")
                self._pool.give(cur.buf)
                return
            if cur is not None:
                raise FrameError("payload_length", f"expected {cur.header.payload_length} bytes of payload, found "
                                                   f"{cur.filled} before the stream ended (truncated frame)")
        except FrameError as e:
            self.counters.add("invalid_frames")
            self._rejected(cur.header.edge if cur is not None else None, e)
            if cur is not None:
                self._pool.give(cur.buf)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except grpc.RpcError:
            # the client went away mid-stream (cancelled, killed, deadline): drop the partial frame
            self.counters.add("stream_errors")
            if cur is not None:
                self._pool.give(cur.buf)

    def _rejected(self, edge: EdgeId | None, err: FrameError | None) -> None:
        """Tell ``on_reject`` (edge or None, reason) about a refused frame; a failing hook is counted, not raised."""
        if self._on_reject is None:
            return
        try:
            self._on_reject(edge, reject_reason(err))
        except Exception:  # noqa: BLE001 - observability must not break serving
            self.counters.add("hook_errors")

    def _parse_request(self, parse: Callable[[bytes], _Req], request: bytes,
                       context: grpc.ServicerContext) -> _Req:
        """Parse a unary request; a malformed one is counted and answered with INVALID_ARGUMENT (aborts)."""
        try:
            return parse(request)
        except FrameError as e:
            self.counters.add("invalid_frames")
            self._rejected(None, e)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            raise  # unreachable: abort raises

    def _ping(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        req = self._parse_request(service.ping_request_from_bytes, request, context)
        self.counters.add("pings")
        if req.reply_bytes > self._config.max_message_bytes - 1024:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"reply_bytes: expected at most {self._config.max_message_bytes - 1024}, "
                          f"found {req.reply_bytes}")
        payload = bytes(req.reply_bytes) if req.reply_bytes else req.payload
        return service.ping_reply_to_bytes(service.PingReply(payload, time.monotonic_ns()))

    @staticmethod
    def _client_alive(context: grpc.ServicerContext, settle_s: float = 0.2) -> bool:
        """After a stream ended inside a frame: did the client half-close it (alive) or vanish? A vanished
        client's cancellation can trail the end of the request stream by a moment, so wait up to ``settle_s``."""
        deadline = time.monotonic() + settle_s
        while context.is_active():
            if time.monotonic() >= deadline:
                return True
            time.sleep(0.01)
        return False

    def _open_data_path(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        req = self._parse_request(service.data_path_request_from_bytes, request, context)
        if self._data_path is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this server offers no TCP data path "
                                                               "(TransportConfig.tcp_data_path is off)")
        ticket = self._data_path.grant(req.edge, req.role)
        return service.data_path_grant_to_bytes(service.DataPathGrant(self._data_path.port, ticket))

    def _sink(self, request_iterator: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        total = 0
        count = 0
        t0 = t1 = 0
        try:
            for raw in request_iterator:
                msg = envelope.parse_message(raw)
                t1 = time.monotonic_ns()
                if count == 0:
                    t0 = t1
                count += 1
                if msg.chunk is not None:
                    total += msg.chunk.nbytes
        except FrameError as e:
            self.counters.add("invalid_frames")
            self._rejected(None, e)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        self.counters.add("sink_bytes", total)
        return service.sink_reply_to_bytes(service.SinkReply(total, count, t1 - t0))
