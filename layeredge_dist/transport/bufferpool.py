"""Reusable payload buffers, so a receiver does not page-fault fresh memory for every large frame."""

from __future__ import annotations

import collections
import threading

import torch


class BufferPool:
    """Free 1-D uint8 CPU tensors keyed by exact size, holding at most ``capacity_bytes`` in total.

    ``take(n)`` returns a pooled buffer of n bytes or a new ``torch.empty``; ``give(t)`` returns one (dropped
    when the pool is full). Thread-safe.
    """

    def __init__(self, capacity_bytes: int) -> None:
        self._capacity = capacity_bytes
        self._free: dict[int, collections.deque[torch.Tensor]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> torch.Tensor:
        with self._lock:
            q = self._free.get(nbytes)
            if q:
                self._bytes -= nbytes
                return q.pop()
        return torch.empty(nbytes, dtype=torch.uint8)

    def give(self, buf: torch.Tensor) -> None:
        n = int(buf.numel())
        if n == 0 or buf.dtype != torch.uint8 or buf.dim() != 1 or not buf.is_contiguous() or buf.storage_offset():
            return
        with self._lock:
            if self._bytes + n > self._capacity:
                return
            self._free.setdefault(n, collections.deque()).append(buf)
            self._bytes += n

    @property
    def pooled_bytes(self) -> int:
        """Bytes held for reuse now."""
        with self._lock:
            return self._bytes
