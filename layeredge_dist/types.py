"""Shared nouns of LayerEdge: stages, edges, tensor roles and per-edge statistics.

This module imports nothing from the rest of the package; every layer may import it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class TensorRole(enum.Enum):
    """What a tensor crossing an edge is."""

    ACTIVATION = "activation"
    GRADIENT = "gradient"
    WEIGHT = "weight"


class Direction(enum.Enum):
    """Which way a frame travels relative to the process that records it."""

    SEND = "send"
    RECV = "recv"


@dataclass(frozen=True, order=True)
class StageId:
    """Index of a pipeline stage, 0-based from the input side."""

    index: int

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"stage index must be >= 0, got {self.index}")

    def __str__(self) -> str:
        return f"s{self.index}"


@dataclass(frozen=True, order=True)
class EdgeId:
    """The cut between stage ``src`` and stage ``dst``; printed as ``"s0->s1"``."""

    src: StageId
    dst: StageId

    def __str__(self) -> str:
        return f"{self.src}->{self.dst}"

    @classmethod
    def parse(cls, text: str) -> EdgeId:
        """Parse ``"s0->s1"``; raises ValueError with the offending text otherwise."""
        try:
            a, b = text.split("->")
            if not (a.startswith("s") and b.startswith("s")):
                raise ValueError
            return cls(StageId(int(a[1:])), StageId(int(b[1:])))
        except ValueError:
            raise ValueError(f"edge id must look like 's0->s1', got {text!r}") from None


@dataclass(frozen=True)
class EdgeStats:
    """Traffic of one edge, role and direction over some interval.

    Units: bytes, seconds; ``elements`` counts tensor elements before compression.
    """

    edge: EdgeId
    role: TensorRole
    direction: Direction
    codec: str
    elements: int
    raw_bytes: int
    wire_bytes: int
    encode_s: float
    decode_s: float
    transfer_s: float

    @property
    def compression_ratio(self) -> float:
        """raw_bytes / wire_bytes (inf when nothing went on the wire)."""
        return self.raw_bytes / self.wire_bytes if self.wire_bytes else float("inf")

    @property
    def bits_per_element(self) -> float:
        """Wire bits per original element, metadata included."""
        return 8.0 * self.wire_bytes / self.elements if self.elements else 0.0
