"""Receiving end of the raw TCP data path: a listener next to the gRPC server, one thread per connection.

Only connections that present a fresh ticket from the (authenticated) ``OpenDataPath`` call are served. Each
frame's header is validated before its payload is read; the payload is received straight into a pooled buffer
(``recv_into``), checksummed, acknowledged and queued for the matching receiver. A bad frame gets an error
record with the precise message (status INVALID_ARGUMENT), counts in ``invalid_frames`` and closes that
connection only.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Callable

from layeredge_dist.types import EdgeId, TensorRole
from layeredge_dist.wire import Frame, FrameError, FrameHeader, Limits, datapath, header_from_bytes
from layeredge_dist.wire import checksum as wire_checksum
from layeredge_dist.wire.header import verify_checksum

from .accounting import Counters
from .bufferpool import BufferPool
from .errors import ChannelClosed

#: Seconds a ticket stays valid, and a new connection has to present it.
TICKET_TTL_S = 10.0
_RECV_CHUNK = 64 << 20  # most bytes one recv may return (the checksum runs on each piece)


class _Closed(Exception):
    """The peer closed the connection (cleanly at a frame boundary, or not)."""


def recv_exact_into(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from ``sock``; raises _Closed when the peer closes first."""
    got = 0
    n = view.nbytes
    while got < n:
        r = sock.recv_into(view[got:], min(n - got, _RECV_CHUNK))
        if not r:
            raise _Closed(f"connection closed after {got} of {n} bytes")
        got += r


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from ``sock``; raises _Closed when the peer closes first."""
    buf = bytearray(n)
    recv_exact_into(sock, memoryview(buf))
    return bytes(buf)


def set_keepalive(sock: socket.socket, idle_s: int, interval_s: int, count: int = 3) -> None:
    """TCP keepalive so a silently dead peer is noticed; TCP_NODELAY for latency."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", idle_s), ("TCP_KEEPINTVL", interval_s), ("TCP_KEEPCNT", count)):
        opt = getattr(socket, name, None)
        if opt is not None:
            sock.setsockopt(socket.IPPROTO_TCP, opt, max(1, value))


class _Reader:
    """Buffered reads from a socket: small items (length, header, a small payload) usually arrive with one
    ``recv``; large payloads go straight from the socket into their buffer."""

    def __init__(self, sock: socket.socket, size: int = 256 << 10) -> None:
        self._sock = sock
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0

    def _fill(self, n: int) -> None:
        """Make at least ``n`` (<= buffer size) bytes available; raises _Closed at EOF."""
        if self._end - self._start >= n:
            return
        if self._start:
            left = self._end - self._start
            self._buf[:left] = self._buf[self._start:self._end]
            self._start, self._end = 0, left
        while self._end < n:
            r = self._sock.recv_into(self._view[self._end:])
            if not r:
                raise _Closed(f"connection closed after {self._end} of {n} bytes")
            self._end += r

    def at_boundary(self) -> bool:
        """True when nothing is buffered (a clean EOF here ends the connection without error)."""
        return self._start == self._end

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes (n <= buffer size)."""
        self._fill(n)
        out = bytes(self._view[self._start:self._start + n])
        self._start += n
        return out

    def read_into(self, view: memoryview, on_data: Callable[[memoryview], None]) -> None:
        """Fill ``view``: first from the buffer, the rest straight from the socket; ``on_data`` sees every
        piece as it lands (so the checksum overlaps with the sender still sending)."""
        have = min(self._end - self._start, view.nbytes)
        if have:
            view[:have] = self._view[self._start:self._start + have]
            self._start += have
            on_data(view[:have])
        got = have
        n = view.nbytes
        while got < n:
            r = self._sock.recv_into(view[got:], min(n - got, _RECV_CHUNK))
            if not r:
                raise _Closed(f"connection closed after {got} of {n} payload bytes")
            on_data(view[got:got + r])
            got += r


Deliver = Callable[[Frame, Callable[[], bool], bool], bool]
Notify = Callable[[Frame], None]
Record = Callable[[Frame, int, float], None]


class DataPathListener:
    """TCP listener of the data path. ``deliver(frame, alive, notify)`` queues a frame (False when it gave up
    because ``alive()`` turned false), ``notify(frame)`` wakes its receiver, ``record(frame, wire_bytes,
    seconds)`` does the accounting."""

    def __init__(self, host: str, limits: Limits, pool: BufferPool, counters: Counters, deliver: Deliver,
                 notify: Notify, record: Record, keepalive_s: float,
                 rejected: Callable[[EdgeId | None, FrameError | None], None] | None = None) -> None:
        self._rejected = rejected or (lambda edge, err: None)
        self._limits = limits
        self._pool = pool
        self._counters = counters
        self._deliver = deliver
        self._notify = notify
        self._record = record
        self._keepalive_s = keepalive_s
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.bind((host, 0))  # no SO_REUSEPORT: a port is never shared
        self._sock.listen(64)
        self.port: int = self._sock.getsockname()[1]
        self._tickets: dict[bytes, tuple[float, EdgeId, TensorRole]] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._conns: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept_loop, name="layeredge-datapath", daemon=True)
        self._thread.start()

    def grant(self, edge: EdgeId, role: TensorRole) -> bytes:
        """A single-use ticket for one connection, valid for :data:`TICKET_TTL_S` seconds."""
        ticket = secrets.token_bytes(datapath.TICKET_BYTES)
        now = time.monotonic()
        with self._lock:
            for t in [t for t, (exp, _, _) in self._tickets.items() if exp < now]:
                del self._tickets[t]
            self._tickets[ticket] = (now + TICKET_TTL_S, edge, role)
        return ticket

    def stop(self) -> None:
        """Stop accepting, end every connection; returns within a few seconds."""
        self._stopped.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept() (close alone does not)
        except OSError:
            pass
        try:
            self._sock.close()
        except OSError:
            pass
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name="layeredge-datapath-conn", daemon=True).start()

    def _check_ticket(self, conn: socket.socket) -> bool:
        conn.settimeout(TICKET_TTL_S)
        try:
            ticket = datapath.parse_hello(recv_exact(conn, datapath.HELLO_BYTES))
        except (FrameError, _Closed, OSError):
            ticket = b""
        with self._lock:
            entry = self._tickets.pop(ticket, None)
        if entry is None or entry[0] < time.monotonic():
            self._counters.add("unauthenticated")
            self._rejected(None, None)
            try:
                conn.sendall(datapath.error_record("UNAUTHENTICATED", "data path: missing, unknown or expired ticket"))
            except OSError:
                pass
            return False
        conn.settimeout(None)
        return True

    def _serve(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.add(conn)
        buf = None
        header: FrameHeader | None = None
        try:
            if not self._check_ticket(conn):
                return
            set_keepalive(conn, int(self._keepalive_s), max(1, int(self._keepalive_s / 2)))
            self._counters.add("streams_opened")
            alive = self._alive_check(conn)
            frames = 0
            reader = _Reader(conn)
            while not self._stopped.is_set():
                header = None
                try:
                    prefix = reader.read(4)
                except _Closed:
                    if reader.at_boundary():
                        return  # clean end at a frame boundary
                    raise
                t0 = time.perf_counter()
                n = datapath.header_length(prefix)
                header = header_from_bytes(reader.read(n), self._limits)
                buf = self._pool.take(header.payload_length)
                running = wire_checksum.running(header.checksum_kind)
                reader.read_into(memoryview(buf.numpy()), running.update)
                verify_checksum(header, running.value())
                frame = Frame(header, buf)
                # queue, ack, then wake the receiver: an acknowledged frame is always delivered, and the ack
                # leaves before a consumer thread competes for the CPU
                if not self._deliver(frame, alive, False):
                    return  # the sender went away; buf goes back to the pool below
                buf = None
                frames += 1
                try:
                    conn.sendall(datapath.ack_record(frames))
                finally:
                    self._notify(frame)
                self._record(frame, 4 + n + header.payload_length, time.perf_counter() - t0)
        except FrameError as e:
            self._counters.add("invalid_frames")
            self._rejected(header.edge if header is not None else None, e)
            try:
                conn.sendall(datapath.error_record("INVALID_ARGUMENT", str(e)))
            except OSError:
                pass
        except _Closed:
            self._counters.add("stream_errors")  # peer went away mid-frame
        except ChannelClosed:
            try:
                conn.sendall(datapath.error_record("UNAVAILABLE", "receiver closed"))
            except OSError:
                pass
        except OSError:
            self._counters.add("stream_errors")
        finally:
            if buf is not None:
                self._pool.give(buf)
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _alive_check(self, conn: socket.socket) -> Callable[[], bool]:
        def alive() -> bool:
            if self._stopped.is_set():
                return False
            try:
                return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
            except BlockingIOError:
                return True
            except OSError:
                return False

        return alive
