"""Per-edge traffic of one process: elements, raw and wire bytes, encode / decode / transfer seconds.

Fed by the endpoint (encode and decode timings) and by the transport's accounting hook (wire bytes and transfer
times); read as :class:`~layeredge_dist.types.EdgeStats`, one per (edge, role, direction, codec).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from layeredge_dist.metrics import Metrics
from layeredge_dist.transport import TransferRecord
from layeredge_dist.types import Direction, EdgeId, EdgeStats, TensorRole

_Key = tuple[EdgeId, TensorRole, Direction, str]


@dataclass
class _Totals:
    frames: int = 0
    elements: int = 0
    raw_bytes: int = 0
    wire_bytes: int = 0
    encode_s: float = 0.0
    decode_s: float = 0.0
    transfer_s: float = 0.0


class EdgeMeter:
    """Thread-safe running totals per (edge, role, direction, codec); with ``metrics`` every record is also
    exported (encode / decode seconds here, frames, bytes and transfer seconds from the transport hook)."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._lock = threading.Lock()
        self._totals: dict[_Key, _Totals] = {}
        self.metrics = metrics

    def _get(self, key: _Key) -> _Totals:
        t = self._totals.get(key)
        if t is None:
            t = self._totals[key] = _Totals()
        return t

    def coded(self, edge: EdgeId, role: TensorRole, direction: Direction, codec: str, elements: int,
              raw_bytes: int, seconds: float) -> None:
        """Record one tensor encoded (SEND) or decoded (RECV) in ``seconds``."""
        with self._lock:
            t = self._get((edge, role, direction, codec))
            t.frames += 1
            t.elements += elements
            t.raw_bytes += raw_bytes
            if direction is Direction.SEND:
                t.encode_s += seconds
            else:
                t.decode_s += seconds
        if self.metrics is not None:
            key = "edge_encode_seconds" if direction is Direction.SEND else "edge_decode_seconds"
            self.metrics.labelled(key, edge, direction, role, codec).observe(seconds)

    def transport_hook(self, record: TransferRecord) -> None:
        """Accounting hook for senders and servers: adds wire bytes and transfer seconds."""
        with self._lock:
            t = self._get((record.edge, record.role, record.direction, record.codec))
            t.wire_bytes += record.wire_bytes
            t.transfer_s += record.transfer_s
        if self.metrics is not None:
            self.metrics.transfer_record(record)

    def snapshot(self) -> list[EdgeStats]:
        """Totals so far, sorted by edge, role and direction."""
        with self._lock:
            items = sorted(self._totals.items(), key=lambda kv: (kv[0][0], kv[0][1].value, kv[0][2].value, kv[0][3]))
            return [EdgeStats(edge, role, direction, codec, t.elements, t.raw_bytes, t.wire_bytes, t.encode_s,
                              t.decode_s, t.transfer_s) for (edge, role, direction, codec), t in items]

    def frames(self) -> int:
        """Tensors encoded plus decoded so far."""
        with self._lock:
            return sum(t.frames for t in self._totals.values())
