"""Sending end of the raw TCP data path: the transport's fast path for trusted networks (no TLS).

The connection is granted by the authenticated gRPC call ``OpenDataPath`` (token, deadline) and then carries
frames as header + raw payload, written with one scatter-gather ``sendmsg`` straight from the payload tensor;
the receiver answers every frame with an ack record. Acks are read by the caller's thread when it needs credit
(``send`` with a full window, ``flush``), so a small frame's round trip involves no thread hand-off. Same contract
and window as :class:`~layeredge_dist.transport.sender.GrpcEdgeSender`; a timeout while bytes of a frame or a
record were half transferred drops the connection (frames not yet acknowledged are lost, the error says how
many) and the next send opens a new one.
"""

from __future__ import annotations

import collections
import socket
import threading
import time

import grpc

from layeredge_dist.types import Direction, EdgeId, TensorRole
from layeredge_dist.wire import Frame, FrameError, datapath, service, validate_header

from .accounting import AccountingHook, TransferRecord, emit, raw_bytes
from .channel import EdgeSender
from .config import TransportConfig
from .datapath_server import set_keepalive
from .errors import (
    ChannelClosed,
    DeadlineExceeded,
    FrameRejected,
    PeerUnavailable,
    TransportError,
    Unauthenticated,
)
from .security import auth_metadata, host_of
from .sender import Pending, RemoteSender, translate

_ERRORS: dict[str, type[TransportError]] = {"INVALID_ARGUMENT": FrameRejected, "UNAUTHENTICATED": Unauthenticated}


class _Partial(Exception):
    """A timeout hit in the middle of a record or frame: the connection is out of step and must be dropped."""


class TcpEdgeSender(RemoteSender):
    """Sends frames of one (edge, role) over the TCP data path of the StageServer at ``address``.

    Raises ValueError when ``config.tls`` is set (the data path is plain TCP; use GrpcEdgeSender for TLS).
    """

    def __init__(self, address: str, edge: EdgeId, role: TensorRole, config: TransportConfig = TransportConfig(),
                 hooks: tuple[AccountingHook, ...] = ()) -> None:
        if config.tls is not None:
            raise ValueError("the TCP data path carries no TLS; use GrpcEdgeSender (tcp_data_path=False) with TLS")
        super().__init__(address, edge, role, config, hooks)
        self._open_rpc = self._channel.unary_unary(service.method_path(service.OPEN_DATA_PATH_METHOD),
                                                   request_serializer=None, response_deserializer=None)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._pending: collections.deque[Pending] = collections.deque()
        self._sent = 0
        self._acked = 0
        self._inflight = 0
        self._closed = False
        self._what = f"{edge} {role.value} -> {address} (tcp data path)"

    @property
    def unacknowledged(self) -> tuple[int, int]:
        """(frames, payload bytes) sent but not yet acknowledged (as far as acks have been read)."""
        with self._lock:
            return self._sent - self._acked, self._inflight

    # ---- connection (lock held) -----------------------------------------------------------------------------

    def _open(self, deadline: float) -> socket.socket:
        cfg = self._config
        wait = max(0.001, min(cfg.connect_timeout_s, deadline - time.monotonic()))
        req = service.data_path_request_to_bytes(service.DataPathRequest(self._edge, self._role))
        try:
            grant = service.data_path_grant_from_bytes(
                self._open_rpc(req, timeout=wait, metadata=auth_metadata(cfg), wait_for_ready=True))
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
                raise PeerUnavailable(f"could not connect to {self._address} within {wait:.3g} s (is the server "
                                      "up?)", "UNAVAILABLE") from None
            raise translate(e, f"{self._what}: OpenDataPath") from None
        host = host_of(self._address)
        try:
            sock = socket.create_connection((host, grant.port), timeout=max(0.001, deadline - time.monotonic()))
            set_keepalive(sock, max(1, cfg.keepalive_time_ms // 1000), max(1, cfg.keepalive_timeout_ms // 1000))
            sock.sendall(datapath.hello(grant.ticket))
        except OSError as e:
            raise PeerUnavailable(f"{self._what}: cannot connect to data port {grant.port}: {e}", "UNAVAILABLE") \
                from None
        self.counters.add("streams_opened")
        self._sent = self._acked = self._inflight = 0
        self._pending.clear()
        return sock

    def _drop(self, err: TransportError) -> TransportError:
        """Close the connection; returns ``err`` with the number of frames it lost appended."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        lost = self._sent - self._acked
        self._pending.clear()
        self._sent = self._acked = self._inflight = 0
        self.counters.add("stream_errors")
        if lost:
            return type(err)(f"{err} ({lost} frames unacknowledged, lost)", err.code)
        return err

    def _recv(self, sock: socket.socket, n: int, deadline: float, started: bool) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                if buf or started:
                    raise _Partial()
                raise TimeoutError
            sock.settimeout(left)
            try:
                chunk = sock.recv(n - len(buf))
            except socket.timeout:
                if buf or started:
                    raise _Partial() from None
                raise TimeoutError from None
            if not chunk:
                raise ConnectionResetError("connection closed by the receiver")
            buf += chunk
        return bytes(buf)

    def _read_acks(self, sock: socket.socket, deadline: float, what: str) -> None:
        """Read one record (blocking until ``deadline``) and apply it; raises our errors."""
        head = b""
        left = deadline - time.monotonic()
        if left > 0:  # fast path: one recv of a whole ack record (the usual case)
            sock.settimeout(left)
            try:
                head = sock.recv(datapath.ACK_BYTES)
            except socket.timeout:
                raise DeadlineExceeded(f"{self._what}: {what}", "DEADLINE_EXCEEDED") from None
            except OSError as e:
                raise self._drop(PeerUnavailable(f"{self._what}: UNAVAILABLE: {e}", "UNAVAILABLE")) from None
            if not head:
                raise self._drop(PeerUnavailable(f"{self._what}: UNAVAILABLE: connection closed by the receiver",
                                                 "UNAVAILABLE"))
            if len(head) == datapath.ACK_BYTES and head[0] == 0x41:  # b"A"
                self._apply_ack(datapath.parse_ack(head))
                return
        first = [not head]

        def recv_exact(n: int) -> bytes:
            nonlocal head
            if head:  # bytes of this record already read by the fast path
                out = head[:n]
                head = head[n:]
                if len(out) < n:
                    out += self._recv(sock, n - len(out), deadline, True)
                return out
            started = not first[0]
            first[0] = False
            return self._recv(sock, n, deadline, started)

        try:
            rec = datapath.read_record(recv_exact)
        except TimeoutError:
            raise DeadlineExceeded(f"{self._what}: {what}", "DEADLINE_EXCEEDED") from None
        except _Partial:
            raise self._drop(DeadlineExceeded(f"{self._what}: {what} (connection dropped mid-record)",
                                              "DEADLINE_EXCEEDED")) from None
        except FrameError as e:
            raise self._drop(PeerUnavailable(f"{self._what}: bad record from the receiver: {e}", "INTERNAL")) from None
        except OSError as e:
            raise self._drop(PeerUnavailable(f"{self._what}: UNAVAILABLE: {e}", "UNAVAILABLE")) from None
        if rec.frames is None:
            cls = _ERRORS.get(rec.code or "", PeerUnavailable)
            raise self._drop(cls(f"{self._what}: {rec.code}: {rec.message}", rec.code)) from None
        self._apply_ack(rec.frames)

    def _apply_ack(self, n: int) -> None:
        if n > self._sent:
            raise self._drop(PeerUnavailable(f"{self._what}: ack for {n} frames, only {self._sent} sent", "INTERNAL"))
        now = time.perf_counter()
        done = []
        while self._acked < n:
            p = self._pending.popleft()
            self._acked += 1
            self._inflight -= p.header.payload_length
            done.append(p)
        for p in done:
            h = p.header
            self.counters.add("frames_sent")
            self.counters.add("bytes_sent", h.payload_length)
            if self._hooks:
                emit(self._hooks, TransferRecord(h.edge, h.role, Direction.SEND, h.codec, h.numel,
                                                 raw_bytes(h.dtype, h.numel), p.wire_bytes, now - p.t0),
                     self.counters)

    def _poll_acks(self, sock: socket.socket) -> None:
        """Apply the acks that already arrived, without blocking."""
        while self._acked < self._sent:
            sock.settimeout(0.0)
            try:
                head = sock.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                return
            except OSError as e:
                raise self._drop(PeerUnavailable(f"{self._what}: UNAVAILABLE: {e}", "UNAVAILABLE")) from None
            if not head:
                raise self._drop(PeerUnavailable(f"{self._what}: UNAVAILABLE: connection closed by the receiver",
                                                 "UNAVAILABLE"))
            self._read_acks(sock, time.monotonic() + self._config.call_timeout_s, "reading an ack")

    # ---- the contract ---------------------------------------------------------------------------------------

    def send(self, frame: Frame, *, timeout_s: float) -> None:
        header = frame.header
        if frame.edge != self._edge or frame.role != self._role:
            raise FrameError("edge", f"expected a frame for {self._edge} {self._role.value}, found "
                                     f"{frame.edge} {frame.role.value}")
        validate_header(header, self._config.limits)
        cfg = self._config
        n = frame.nbytes
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        with self._lock:
            if self._closed:
                raise ChannelClosed(f"{self._what}: sender closed")
            if self._sock is None:
                self._sock = self._open(deadline)
            sock = self._sock
            self._poll_acks(sock)
            while self._sent > self._acked and (
                    self._sent - self._acked >= cfg.window_frames or self._inflight + n > cfg.window_bytes):
                self._read_acks(sock, deadline, f"in-flight window full for {timeout_s:.3g} s "
                                                f"({self._sent - self._acked} frames, {self._inflight} B "
                                                f"unacknowledged; window {cfg.window_frames} frames / "
                                                f"{cfg.window_bytes} B)")
            parts = [memoryview(datapath.frame_prefix(header)), frame.payload_bytes()]
            self._pending.append(Pending(header, t0, parts[0].nbytes + n))
            self._sent += 1
            self._inflight += n
            try:
                self._sendmsg_all(sock, parts, deadline)
            except _Partial:
                raise self._drop(DeadlineExceeded(f"{self._what}: frame not written within {timeout_s:.3g} s "
                                                  "(connection dropped mid-frame)", "DEADLINE_EXCEEDED")) from None
            except OSError as e:
                raise self._drop(PeerUnavailable(f"{self._what}: UNAVAILABLE: {e}", "UNAVAILABLE")) from None

    @staticmethod
    def _sendmsg_all(sock: socket.socket, parts: list[memoryview], deadline: float) -> None:
        parts = [p for p in parts if p.nbytes]
        first = True
        while parts:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Partial()
            if first:
                # first try without waiting: with a timeout set, Python polls the socket before every send,
                # an extra system call (and GIL round trip) per frame that is useless while the send buffer
                # has room, which is the usual case
                first = False
                sock.settimeout(0.0)
                try:
                    sent = sock.sendmsg(parts)
                except BlockingIOError:
                    sent = 0
            else:
                sock.settimeout(left)
                try:
                    sent = sock.sendmsg(parts)
                except socket.timeout:
                    raise _Partial() from None
            while sent:
                if sent >= parts[0].nbytes:
                    sent -= parts[0].nbytes
                    parts.pop(0)
                else:
                    parts[0] = parts[0][sent:]
                    sent = 0

    def flush(self, *, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            if self._closed:
                raise ChannelClosed(f"{self._what}: sender closed")
            while self._sock is not None and self._acked < self._sent:
                self._read_acks(self._sock, deadline, f"{self._sent - self._acked} frames not acknowledged "
                                                      f"within {timeout_s:.3g} s")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            sock.close()
        self._channel.close()

    def __enter__(self) -> TcpEdgeSender:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()


def open_sender(address: str, edge: EdgeId, role: TensorRole, config: TransportConfig = TransportConfig(),
                hooks: tuple[AccountingHook, ...] = ()) -> EdgeSender:
    """The sender ``config`` asks for: the TCP data path when ``config.tcp_data_path``, else the gRPC stream."""
    if config.tcp_data_path:
        return TcpEdgeSender(address, edge, role, config, hooks)
    from .sender import GrpcEdgeSender

    return GrpcEdgeSender(address, edge, role, config, hooks)
