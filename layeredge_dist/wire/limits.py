"""Bounds a receiver enforces on every frame header before it allocates or decodes anything."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Upper bounds checked by :func:`layeredge_dist.wire.validate_header`.

    Units: bytes for ``*_bytes``, characters for ``*_chars``, elements for ``max_elements``.
    """

    #: Largest payload of one frame (1 GiB default).
    max_frame_bytes: int = 1 << 30
    #: Most dimensions a tensor may have.
    max_ndim: int = 16
    #: Most elements the original tensor may have (product of the shape); 2**28 = 1 GiB of fp32. A sparse
    #: payload of a few bytes can validly claim any shape, so this bound is what keeps a decode from
    #: allocating without limit.
    max_elements: int = 1 << 28
    #: Longest codec spec string.
    max_codec_chars: int = 256
    #: Longest edge id string.
    max_edge_chars: int = 64

    def __post_init__(self) -> None:
        for name in ("max_frame_bytes", "max_ndim", "max_elements", "max_codec_chars", "max_edge_chars"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"Limits.{name} must be a positive int, got {value!r}")
