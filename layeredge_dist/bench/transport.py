"""Transport benchmark: our edge channels vs. a raw TCP socket, sender and receiver in separate processes.

For each payload size the sender sends one frame and waits for the receiver's acknowledgement, many times
(stop-and-wait), on every transport in the same run, interleaved in rounds because the machines are shared and
noisy:

- tcp: the baseline, an 8-byte length prefix + payload with ``sendall`` into a preallocated receive buffer and
  a 1-byte ack;
- ours: ``GrpcEdgeSender.send`` + ``flush`` (the gRPC Frames stream) to a ``StageServer`` whose receiver
  drains and releases frames;
- fast: ``TcpEdgeSender`` (``TransportConfig.tcp_data_path``: a raw TCP connection granted by the authenticated
  gRPC call OpenDataPath) to the same server;
- floor: a bare raw-bytes gRPC stream (same options and chunk size; no framing, validation, checksum, copy or
  queue), the best any gRPC-based channel can do here.

Reported per size: throughput from the p50 latency (GB/s, 1e9 bytes/s), p50/p99 latency (us), ``ratio`` =
ours / tcp throughput, ``hop_vs_tcp_rtt`` = ours p50 / tcp p50, the same with the ``fast_`` prefix, and
``*_pipelined_gbps`` for back-to-back sends within the in-flight window. A final pass streams ``--stream-mib``
MiB in 16 MiB frames over each of ours and fast and reports the growth of the receiver's peak resident memory
during that pass against the in-flight window.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from layeredge_dist.bench import output
from layeredge_dist.codecs.base import Encoded
from layeredge_dist.transport import (
    ChannelClosed,
    DeadlineExceeded,
    EdgeSender,
    GrpcEdgeSender,
    StageServer,
    TcpEdgeSender,
    TransportConfig,
)
from layeredge_dist.transport.allocator import tune_malloc
from layeredge_dist.types import EdgeId, TensorRole
from layeredge_dist.wire import Frame, frame_from_encoded

EDGE = EdgeId.parse("s0->s1")
ROLE = TensorRole.ACTIVATION
DEFAULT_SIZES = (64 << 10, 1 << 20, 16 << 20, 64 << 20)
_ACK = b"k"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``layeredge bench transport``."""
    parser.add_argument("--sizes", type=lambda s: tuple(int(x) for x in s.split(",")), default=DEFAULT_SIZES,
                        help="payload sizes in bytes, comma-separated (default: 64 KiB, 1, 16, 64 MiB)")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="approximate measuring time per size and transport (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per size (default: %(default)s)")
    parser.add_argument("--chunk-mib", type=float, default=1.0, help="our chunk size in MiB (default: 1)")
    parser.add_argument("--stream-mib", type=int, default=1024,
                        help="MiB streamed for the memory-growth check; 0 skips it (default: %(default)s)")


# ---- receivers (child processes) ----------------------------------------------------------------------------


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _serve_control(conn: mpc.Connection) -> None:
    while True:
        cmd = conn.recv()
        if cmd == "reset_peak":
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
            conn.send(_rss_kib("VmRSS") * 1024)
        elif cmd == "peak":
            conn.send(_rss_kib("VmHWM") * 1024)
        else:
            return


def _ours_receiver(conn: mpc.Connection, config: TransportConfig) -> None:
    server = StageServer("127.0.0.1:0", config)
    port = server.start()
    rx = server.receiver(EDGE, ROLE)
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            try:
                rx.release(rx.receive(timeout_s=0.2))
            except DeadlineExceeded:
                continue
            except ChannelClosed:
                return

    threading.Thread(target=drain, daemon=True).start()
    conn.send(port)
    _serve_control(conn)
    stop.set()
    server.stop(0.5)


def _tcp_receiver(conn: mpc.Connection, max_size: int) -> None:
    tune_malloc()
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    conn.send(lsock.getsockname()[1])
    buf = bytearray(max_size)  # preallocated and touched
    view = memoryview(buf)
    c, _ = lsock.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        head = c.recv(8, socket.MSG_WAITALL)
        if len(head) < 8:
            break
        (n,) = struct.unpack("<Q", head)
        got = 0
        while got < n:
            r = c.recv_into(view[got:n])
            if not r:
                return
            got += r
        c.sendall(_ACK)
    c.close()


def _floor_receiver(conn: mpc.Connection, config: TransportConfig) -> None:
    """Bare gRPC: a raw-bytes bidi stream whose handler only counts bytes and answers 1 byte per payload. No
    framing, validation, checksum, copy or queue: the floor any gRPC-based channel stands on."""
    import grpc
    from concurrent import futures

    from layeredge_dist.transport.options import server_options

    tune_malloc()

    def handler(requests: object, context: object) -> object:
        need = -1
        got = 0
        for m in requests:  # type: ignore[attr-defined]
            if need < 0:
                need = int.from_bytes(m[:8], "little")
                got = len(m) - 8
            else:
                got += len(m)
            if got >= need:
                need = -1
                yield _ACK

    h = grpc.method_handlers_generic_handler("floor.Floor", {"Frames": grpc.stream_stream_rpc_method_handler(handler)})
    server = grpc.server(futures.ThreadPoolExecutor(4), handlers=[h], options=server_options(config))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    conn.send(port)
    _serve_control(conn)
    server.stop(0)


class _FloorSender:
    """Client of :func:`_floor_receiver`: chunks from a queue-fed generator, ack read on the calling thread."""

    def __init__(self, port: int, config: TransportConfig) -> None:
        import queue

        import grpc

        from layeredge_dist.transport.options import channel_options

        self._grpc = grpc
        self._chunk = config.chunk_bytes
        self._q: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options(config))

        def gen() -> object:
            while True:
                m = self._q.get()
                if m is None:
                    return
                yield m

        self._call = self._channel.stream_stream("/floor.Floor/Frames", request_serializer=None,
                                                 response_deserializer=None)(gen(), timeout=3600)

    def measure(self, payload: memoryview, reps: int) -> list[float]:
        n = payload.nbytes
        head = n.to_bytes(8, "little")
        out = []
        for _ in range(reps):
            t0 = time.perf_counter()
            self._q.put(b"".join((head, payload[:self._chunk])))
            for off in range(self._chunk, n, self._chunk):
                self._q.put(bytes(payload[off:off + self._chunk]))
            next(self._call)  # type: ignore[call-overload]
            out.append(time.perf_counter() - t0)
        return out

    def close(self) -> None:
        self._q.put(None)
        self._call.cancel()  # type: ignore[attr-defined]
        self._channel.close()


@dataclass
class _Child:
    proc: mp.process.BaseProcess
    conn: mpc.Connection
    port: int

    def ask_stop(self) -> None:
        try:
            self.conn.send("stop")
        except OSError:
            pass

    def stop(self) -> None:
        """Ask the child to stop; kill it if it has not exited within 10 s."""
        self.ask_stop()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


def _spawn(target: object, arg: object) -> tuple[mp.process.BaseProcess, mpc.Connection]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child, arg), daemon=True)
    proc.start()
    return proc, parent


def _ready(proc: mp.process.BaseProcess, conn: mpc.Connection) -> _Child:
    try:
        if not conn.poll(120):
            raise RuntimeError("benchmark receiver did not start within 120 s")
        return _Child(proc, conn, conn.recv())
    except (EOFError, OSError):
        raise RuntimeError(f"benchmark receiver exited during start (exit code {proc.exitcode})") from None
    except BaseException:
        proc.kill()
        raise


def _start(target: object, arg: object) -> _Child:
    """Start one receiver process and wait for its port."""
    return _ready(*_spawn(target, arg))


# ---- measurements -------------------------------------------------------------------------------------------


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


def _reps(size: int, seconds: float, rounds: int) -> int:
    est_s = 200e-6 + size / 1.5e9
    return max(5, min(3000, int(seconds / rounds / est_s)))


def _frame(size: int) -> Frame:
    g = torch.Generator().manual_seed(size)
    payload = torch.randint(0, 256, (size,), dtype=torch.uint8, generator=g)
    return frame_from_encoded(Encoded("fp32", (size // 4,), "float32", payload), EDGE, ROLE, 0, 0)


def _measure_tcp(sock: socket.socket, payload: memoryview, reps: int) -> list[float]:
    head = struct.pack("<Q", payload.nbytes)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sock.sendall(head)
        sock.sendall(payload)
        if sock.recv(1) != _ACK:
            raise RuntimeError("TCP baseline receiver went away")
        out.append(time.perf_counter() - t0)
    return out


def _measure_ours(tx: EdgeSender, frame: Frame, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        tx.send(frame, timeout_s=60)
        tx.flush(timeout_s=60)
        out.append(time.perf_counter() - t0)
    return out


def _pipelined(tx: EdgeSender, frame: Frame, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        tx.send(frame, timeout_s=60)
    tx.flush(timeout_s=60)
    return reps * frame.nbytes / (time.perf_counter() - t0)


def _memory_check(child: _Child, tx: EdgeSender, config: TransportConfig, stream_mib: int,
                  frame_mib: int = 16) -> dict[str, float]:
    """Stream ``stream_mib`` MiB through ``tx`` to ``child`` and measure the growth of the child's peak RSS."""
    frame = _frame(frame_mib << 20)
    tx.send(frame, timeout_s=60)
    tx.flush(timeout_s=60)
    child.conn.send("reset_peak")
    base = child.conn.recv()
    n = max(1, stream_mib // frame_mib)
    t0 = time.perf_counter()
    for _ in range(n):
        tx.send(frame, timeout_s=120)
    tx.flush(timeout_s=120)
    elapsed = time.perf_counter() - t0
    child.conn.send("peak")
    peak = child.conn.recv()
    growth = max(0, peak - base)
    return {"streamed_bytes": n * frame.nbytes, "frame_bytes": frame.nbytes, "window_bytes": config.window_bytes,
            "receiver_rss_growth_bytes": growth, "growth_vs_window": growth / config.window_bytes,
            "gbps": n * frame.nbytes / elapsed / 1e9}


def run_benchmark(sizes: tuple[int, ...], seconds: float, rounds: int, config: TransportConfig,
                  stream_mib: int) -> dict[str, object]:
    """Run every measurement; returns the JSON document (see the module docstring)."""
    tune_malloc()
    # receivers start in parallel (each spends seconds importing torch); fast gets its own process, as each
    # path would in production; the memory pass uses two more, fresh receivers
    spawned = [_spawn(_ours_receiver, config), _spawn(_ours_receiver, config), _spawn(_tcp_receiver, max(sizes)),
               _spawn(_floor_receiver, config)]
    if stream_mib > 0:
        spawned += [_spawn(_ours_receiver, config), _spawn(_ours_receiver, config)]
    try:
        children = [_ready(p, c) for p, c in spawned]
    except BaseException:
        for p, _ in spawned:
            p.kill()
        raise
    ours, fast, tcp, floor = children[:4]
    results = []
    memory: dict[str, dict[str, float]] = {}
    closers: list[Callable[[], None]] = []
    try:
        sock = socket.create_connection(("127.0.0.1", tcp.port))
        closers.append(sock.close)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tx = GrpcEdgeSender(f"127.0.0.1:{ours.port}", EDGE, ROLE, config)
        closers.append(tx.close)
        fast_tx = TcpEdgeSender(f"127.0.0.1:{fast.port}", EDGE, ROLE, config)
        closers.append(fast_tx.close)
        floor_tx = _FloorSender(floor.port, config)
        closers.append(floor_tx.close)
        for size in sizes:
            frame = _frame(size)
            payload = frame.payload_bytes()
            reps = _reps(size, seconds, rounds)
            _measure_tcp(sock, payload, 3)
            _measure_ours(tx, frame, 3)
            floor_tx.measure(payload, 3)
            _measure_ours(fast_tx, frame, 3)
            lat_tcp: list[float] = []
            lat_ours: list[float] = []
            lat_floor: list[float] = []
            lat_fast: list[float] = []
            for _ in range(rounds):
                lat_tcp += _measure_tcp(sock, payload, reps)
                lat_ours += _measure_ours(tx, frame, reps)
                lat_fast += _measure_ours(fast_tx, frame, reps)
                lat_floor += floor_tx.measure(payload, reps)
            pipe = _pipelined(tx, frame, max(4, reps))
            fast_pipe = _pipelined(fast_tx, frame, max(4, reps))
            fast_p50 = _pct(lat_fast, 0.5)
            tcp_p50 = _pct(lat_tcp, 0.5)
            ours_p50 = _pct(lat_ours, 0.5)
            floor_p50 = _pct(lat_floor, 0.5)
            results.append({
                "size_bytes": size,
                "ours_gbps": size / ours_p50 / 1e9,
                "tcp_gbps": size / tcp_p50 / 1e9,
                "ratio": tcp_p50 / ours_p50,
                "ours_p50_us": ours_p50 * 1e6,
                "ours_p99_us": _pct(lat_ours, 0.99) * 1e6,
                "tcp_rtt_p50_us": tcp_p50 * 1e6,
                "tcp_rtt_p99_us": _pct(lat_tcp, 0.99) * 1e6,
                "hop_vs_tcp_rtt": ours_p50 / tcp_p50,
                "ours_mean_gbps": size * len(lat_ours) / sum(lat_ours) / 1e9,
                "tcp_mean_gbps": size * len(lat_tcp) / sum(lat_tcp) / 1e9,
                "ours_pipelined_gbps": pipe / 1e9,
                "grpc_floor_gbps": size / floor_p50 / 1e9,
                "grpc_floor_p50_us": floor_p50 * 1e6,
                "grpc_floor_vs_tcp": tcp_p50 / floor_p50,
                "fast_gbps": size / fast_p50 / 1e9,
                "fast_ratio": tcp_p50 / fast_p50,
                "fast_p50_us": fast_p50 * 1e6,
                "fast_p99_us": _pct(lat_fast, 0.99) * 1e6,
                "fast_hop_vs_tcp_rtt": fast_p50 / tcp_p50,
                "fast_pipelined_gbps": fast_pipe / 1e9,
                "samples": len(lat_ours),
            })
        if stream_mib > 0:
            mem_ours, mem_fast = children[4:]
            for key, child, cls in (("memory", mem_ours, GrpcEdgeSender), ("memory_fast", mem_fast, TcpEdgeSender)):
                with cls(f"127.0.0.1:{child.port}", EDGE, ROLE, config) as mem_tx:
                    memory[key] = _memory_check(child, mem_tx, config, stream_mib)
    finally:
        for close in reversed(closers):
            close()
        for child in children:
            child.ask_stop()
        for child in children:
            child.stop()
    doc: dict[str, object] = {
        "results": results,
        "config": {"chunk_bytes": config.chunk_bytes, "window_frames": config.window_frames,
                   "window_bytes": config.window_bytes, "rounds": rounds, "cpus": _cpus(),
                   "gbps_unit": "1e9 bytes/s, from p50 stop-and-wait latency"},
    }
    doc.update(memory)
    return doc


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def _table(doc: dict[str, object]) -> str:
    head = (f"{'size':>8} | {'tcp GB/s':>8} {'tcp p50':>8} | {'ours GB/s':>9} {'ratio':>5} {'p50 us':>7} "
            f"{'p99 us':>7} {'hop/tcp':>7} {'pipe':>5} | {'fast GB/s':>9} {'ratio':>5} {'p50 us':>7} {'p99 us':>7} "
            f"{'hop/tcp':>7} | {'floor GB/s':>10} {'p50 us':>7}")
    lines = ["ours = gRPC Frames stream; fast = TCP data path (tcp_data_path=True); floor = bare gRPC stream", head]
    for r in doc["results"]:  # type: ignore[union-attr]
        size = r["size_bytes"]
        label = f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"
        lines.append(
            f"{label:>8} | {r['tcp_gbps']:>8.2f} {r['tcp_rtt_p50_us']:>8.0f} | {r['ours_gbps']:>9.2f} "
            f"{r['ratio']:>5.2f} {r['ours_p50_us']:>7.0f} {r['ours_p99_us']:>7.0f} {r['hop_vs_tcp_rtt']:>7.2f} "
            f"{r['ours_pipelined_gbps']:>5.2f} | {r['fast_gbps']:>9.2f} {r['fast_ratio']:>5.2f} "
            f"{r['fast_p50_us']:>7.0f} {r['fast_p99_us']:>7.0f} {r['fast_hop_vs_tcp_rtt']:>7.2f} | "
            f"{r['grpc_floor_gbps']:>10.2f} {r['grpc_floor_p50_us']:>7.0f}")
    for key, label in (("memory", "gRPC stream"), ("memory_fast", "TCP data path")):
        mem = doc.get(key)
        if isinstance(mem, dict):
            lines.append(f"{label}: streamed {mem['streamed_bytes'] / 2**30:.2f} GiB in {mem['frame_bytes'] >> 20} MiB "
                         f"frames at {mem['gbps']:.2f} GB/s: receiver RSS grew "
                         f"{mem['receiver_rss_growth_bytes'] / 2**20:.0f} MiB = {mem['growth_vs_window']:.2f} x window "
                         f"({mem['window_bytes'] >> 20} MiB)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Entry of ``layeredge bench transport``; prints a table or, with --json, one JSON document."""
    config = TransportConfig(chunk_bytes=int(args.chunk_mib * (1 << 20)), tcp_data_path=True, tune_malloc=True)
    doc = run_benchmark(tuple(args.sizes), args.seconds, args.rounds, config, args.stream_mib)
    if not output.emit(doc, args, indent=2):
        print(_table(doc))
    return 0


def main() -> int:
    """``python -m layeredge_dist.bench.transport`` (same options as the CLI)."""
    parser = argparse.ArgumentParser(prog="layeredge bench transport", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    output.add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
