"""Measured bandwidth between two testbed hosts: one TCP stream of plain socket writes, timed by the receiver.

A receiver process in the destination host accepts one connection and counts bytes; a sender in the source host
writes 1 MiB blocks for ``seconds``. The receiver times from its first to its last byte, so connection setup and
the sender's start-up do not count; the first ``skip_s`` seconds are left out too, so the tbf bucket's initial
burst does not inflate the figure. TCP payload only: on a link shaped to 100 Mbit/s (tbf counts Ethernet, IP and
TCP headers) this reads ~95 Mbit/s. Both processes are plain Python (no LayerEdge import), started with
:meth:`Testbed.spawn`, so a failure never leaves them behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass

from .netns import Testbed, TestbedError

__all__ = ["BandwidthResult", "measure_bandwidth"]

_PORT = 5201

_RECEIVER = r"""
import json, socket, sys, time
host, port, skip, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((host, port)); s.listen(1)
s.settimeout(limit)
print("ready", flush=True)
c, _ = s.accept(); c.settimeout(limit)
buf = bytearray(1 << 20); n = 0; first = None; t_skip = None; n_skip = 0; last = None
while True:
    k = c.recv_into(buf)
    if not k:
        break
    now = time.perf_counter()
    if first is None:
        first = now
    n += k; last = now
    if t_skip is None and now - first >= skip:
        t_skip, n_skip = now, n
if t_skip is None or last <= t_skip:
    t_skip, n_skip = first, 0
print(json.dumps({"bytes": n, "seconds": last - first if first else 0.0, "timed_bytes": n - n_skip,
                  "timed_seconds": (last - t_skip) if first else 0.0}), flush=True)
"""

_SENDER = r"""
import socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + 10.0
while True:
    try:
        c = socket.create_connection((host, port), timeout=5.0)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
block = bytes(1 << 20); end = time.perf_counter() + seconds
while time.perf_counter() < end:
    c.sendall(block)
c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
"""


@dataclass(frozen=True)
class BandwidthResult:
    """``bits_per_s`` of TCP payload from host ``src`` to ``dst`` over ``seconds`` (after the skipped start)."""

    src: int
    dst: int
    bits_per_s: float
    bytes: int
    seconds: float

    @property
    def mbit_per_s(self) -> float:
        return self.bits_per_s / 1e6

    def to_dict(self) -> dict[str, float | int]:
        return {"src": self.src, "dst": self.dst, "bits_per_s": self.bits_per_s, "mbit_per_s": self.mbit_per_s,
                "bytes": self.bytes, "seconds": self.seconds}


def measure_bandwidth(testbed: Testbed, src: int = 0, dst: int = 1, seconds: float = 2.0, skip_s: float = 0.3,
                      port: int = _PORT, python: str | None = None) -> BandwidthResult:
    """TCP payload bandwidth from host ``src`` to host ``dst`` of ``testbed`` (see the module docstring).
    Raises TestbedError when a side fails or does not finish within ``seconds + 30`` s."""
    if src == dst:
        raise ValueError("src and dst must be different hosts")
    py = python or sys.executable
    limit = seconds + 30.0
    d = testbed.hosts[dst]
    recv = testbed.spawn(dst, [py, "-c", _RECEIVER, d.ip, str(port), str(skip_s), str(limit)], what="bw-receiver",
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    send = None
    try:
        assert recv.stdout is not None
        line = recv.stdout.readline().decode().strip()
        if line != "ready":
            err = recv.stderr.read().decode(errors="replace") if recv.stderr else ""
            raise TestbedError(f"bandwidth receiver in host {dst} did not start: {line!r} {err.strip()}")
        send = testbed.spawn(src, [py, "-c", _SENDER, d.ip, str(port), str(seconds)], what="bw-sender",
                             stderr=subprocess.PIPE)
        t0 = time.monotonic()
        try:
            out, err = recv.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            raise TestbedError(f"bandwidth measurement {src}->{dst} did not finish in {limit:g} s") from None
        try:
            send.wait(timeout=max(1.0, limit - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            pass
        if recv.returncode != 0:
            raise TestbedError(f"bandwidth receiver failed (exit {recv.returncode}): "
                               f"{err.decode(errors='replace').strip()}")
        data = json.loads(out.decode().strip().splitlines()[-1])
        t = float(data["timed_seconds"])
        n = int(data["timed_bytes"])
        if t <= 0 or n <= 0:
            raise TestbedError(f"bandwidth measurement {src}->{dst} received nothing: {data}")
        return BandwidthResult(src, dst, n * 8.0 / t, n, t)
    finally:
        for p in (send, recv):
            if p is not None:
                testbed.stop(p, grace_s=1.0)
