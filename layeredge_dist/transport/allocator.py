"""Opt-in glibc malloc tuning for processes that stream large gRPC messages.

gRPC and Python allocate a fresh buffer per message; above glibc's mmap threshold every one is mmap'ed,
page-faulted in and unmapped again, which on the development machines cost ~40 % of streaming throughput.
Raising the mmap threshold to 32 MiB and the trim threshold to 512 MiB keeps those buffers in the heap for
reuse. This is process-wide, so it runs only when a transport endpoint is created with
``TransportConfig.tune_malloc`` (off by default; stage processes and benchmarks turn it on); it is a no-op on
non-glibc systems.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_lock = threading.Lock()
_done = False


def tune_malloc(mmap_threshold_bytes: int = 32 << 20, trim_threshold_bytes: int = 512 << 20) -> bool:
    """Apply the tuning once per process; returns True when glibc accepted it (False elsewhere, never raises)."""
    global _done
    with _lock:
        if _done:
            return True
        try:
            name = ctypes.util.find_library("c")
            libc = ctypes.CDLL(name) if name else None
            mallopt = getattr(libc, "mallopt", None)
            if mallopt is None:
                return False
            ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold_bytes)) and bool(
                mallopt(_M_TRIM_THRESHOLD, trim_threshold_bytes))
        except OSError:
            return False
        _done = ok
        return ok
