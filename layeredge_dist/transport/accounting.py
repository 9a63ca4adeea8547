"""Accounting hooks and plain counters: what the metrics layer (and tests) observe of the transport.

No metrics library here: a hook is any callable taking a :class:`TransferRecord`; counters are plain ints.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from layeredge_dist.codecs.base import WIRE_DTYPES
from layeredge_dist.types import Direction, EdgeId, TensorRole


@dataclass(frozen=True)
class TransferRecord:
    """One frame sent or received on one edge.

    ``raw_bytes``: the original tensor's size (elements x dtype size); ``wire_bytes``: bytes of stream messages
    for the frame (payload + header + framing); ``transfer_s``: sender: from send() to the receiver's ack;
    receiver: from the header's arrival to the last chunk's.
    """

    edge: EdgeId
    role: TensorRole
    direction: Direction
    codec: str
    elements: int
    raw_bytes: int
    wire_bytes: int
    transfer_s: float


AccountingHook = Callable[[TransferRecord], None]
#: Called with (edge or None when unknown, reason) for every frame a receiver refuses.
RejectHook = Callable[[EdgeId | None, str], None]

#: FrameError fields -> the bounded reasons metrics use (anything else is "header"; no error means "auth").
_REASONS = {"checksum": "checksum", "checksum_kind": "checksum", "payload_length": "length", "codec": "codec",
            "dtype": "dtype", "shape": "shape"}


def reject_reason(err: Exception | None) -> str:
    """The bounded reason of a refused frame: checksum, length, codec, dtype, shape, header; auth for None."""
    if err is None:
        return "auth"
    return _REASONS.get(getattr(err, "field", ""), "header")

#: Names of the counters every endpoint keeps.
COUNTER_NAMES = (
    "frames_sent", "bytes_sent", "frames_received", "bytes_received", "invalid_frames", "unauthenticated",
    "stream_errors", "streams_opened", "hook_errors", "pings", "sink_bytes",
)


class Counters:
    """Thread-safe monotonically increasing counters named in :data:`COUNTER_NAMES`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTER_NAMES, 0)

    def add(self, name: str, amount: int = 1) -> None:
        """Increase ``name`` by ``amount``; raises KeyError for an unknown name."""
        with self._lock:
            self._values[name] += amount

    def get(self, name: str) -> int:
        """Current value of ``name``; raises KeyError for an unknown name."""
        with self._lock:
            return self._values[name]

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter."""
        with self._lock:
            return dict(self._values)


def emit(hooks: tuple[AccountingHook, ...], record: TransferRecord, counters: Counters) -> None:
    """Call every hook with ``record``; a hook that raises is counted in ``hook_errors`` and otherwise ignored,
    so accounting can never break a stream."""
    for hook in hooks:
        try:
            hook(record)
        except Exception:  # noqa: BLE001 - a broken sink must not kill the transport
            counters.add("hook_errors")


def raw_bytes(dtype: str, elements: int) -> int:
    """Size of the original tensor in bytes: ``elements`` x the itemsize of ``dtype``, a wire dtype name from
    ``WIRE_DTYPES`` (8 B for int64, 1 B for bool); 0 for an unknown dtype."""
    t = WIRE_DTYPES.get(dtype)
    return 0 if t is None else t.itemsize * elements
