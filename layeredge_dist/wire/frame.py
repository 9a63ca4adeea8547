"""A frame: one encoded tensor on one edge, with everything a receiver checks before decoding.

Build one with :func:`frame_from_encoded`, turn a received one back into an
:class:`~layeredge_dist.codecs.base.Encoded` with :func:`encoded_from_frame` (after :func:`validate_frame`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from layeredge_dist.codecs.base import Encoded
from layeredge_dist.types import EdgeId, TensorRole

from . import checksum as _checksum
from .checksum import ChecksumKind
from .errors import FrameError
from .header import FrameHeader, header_from_bytes, header_to_bytes, validate_header
from .limits import Limits

__all__ = [
    "Frame", "FrameHeader", "encoded_from_frame", "frame_from_encoded", "header_from_bytes", "header_to_bytes",
    "payload_view", "validate_frame", "validate_header",
]


def payload_view(payload: torch.Tensor) -> memoryview:
    """Read-only byte view of a 1-D uint8 CPU tensor, without copying."""
    return memoryview(payload.numpy()).toreadonly()


@dataclass(frozen=True)
class Frame:
    """A header plus its payload, a contiguous 1-D ``torch.uint8`` CPU tensor of ``header.payload_length`` bytes.

    Construction checks the payload's type and length (cheap); :func:`validate_frame` checks everything,
    checksum included. Raises :class:`FrameError` on a mismatch.
    """

    header: FrameHeader
    payload: torch.Tensor

    def __post_init__(self) -> None:
        p = self.payload
        if not isinstance(p, torch.Tensor) or p.dtype != torch.uint8 or p.dim() != 1:
            raise FrameError("payload", f"expected a 1-D torch.uint8 tensor, found "
                                        f"{getattr(p, 'dtype', type(p).__name__)} with shape "
                                        f"{tuple(getattr(p, 'shape', ()))}")
        if p.device.type != "cpu" or not p.is_contiguous():
            raise FrameError("payload", f"expected a contiguous CPU tensor, found device {p.device}, "
                                        f"contiguous={p.is_contiguous()}")
        if p.numel() != self.header.payload_length:
            raise FrameError("payload_length", f"expected {self.header.payload_length} bytes of payload, "
                                               f"found {p.numel()}")

    @property
    def edge(self) -> EdgeId:
        return self.header.edge

    @property
    def role(self) -> TensorRole:
        return self.header.role

    @property
    def step(self) -> int:
        return self.header.step

    @property
    def micro_batch(self) -> int:
        return self.header.micro_batch

    @property
    def codec(self) -> str:
        return self.header.codec

    @property
    def nbytes(self) -> int:
        """Payload bytes (the wire cost of the tensor's content)."""
        return self.header.payload_length

    def payload_bytes(self) -> memoryview:
        """The payload as a read-only bytes view (no copy)."""
        return payload_view(self.payload)


def frame_from_encoded(encoded: Encoded, edge: EdgeId, role: TensorRole, step: int, micro_batch: int,
                       checksum_kind: ChecksumKind | None = None) -> Frame:
    """Wrap ``encoded`` for the wire: moves the payload to CPU (and makes it contiguous) if needed and
    checksums it (XXH3-64 when available, else CRC-32, unless ``checksum_kind`` says otherwise).

    Raises :class:`FrameError` when the payload is not a 1-D uint8 tensor; ValueError when ``checksum_kind``
    cannot be computed here. Does not validate the codec spec (see :func:`validate_frame`).
    """
    p = encoded.payload
    if not isinstance(p, torch.Tensor) or p.dtype != torch.uint8 or p.dim() != 1:
        raise FrameError("payload", f"expected a 1-D torch.uint8 tensor, found "
                                    f"{getattr(p, 'dtype', type(p).__name__)}")
    if p.device.type != "cpu":
        p = p.cpu()
    if not p.is_contiguous():
        p = p.contiguous()
    kind = checksum_kind if checksum_kind is not None else _checksum.default_kind()
    header = FrameHeader(
        edge=edge, role=role, step=step, micro_batch=micro_batch, codec=encoded.spec,
        shape=tuple(int(d) for d in encoded.shape), dtype=encoded.dtype, payload_length=int(p.numel()),
        checksum_kind=kind, checksum=_checksum.compute(kind, payload_view(p)),
    )
    return Frame(header, p)


def validate_frame(frame: Frame, limits: Limits) -> None:
    """Full check of a complete frame (header fields, payload length, checksum); raises :class:`FrameError`."""
    validate_header(frame.header, limits, payload_view(frame.payload))


def encoded_from_frame(frame: Frame) -> Encoded:
    """The :class:`Encoded` a codec decodes; shares the payload tensor (no copy)."""
    h = frame.header
    return Encoded(spec=h.codec, shape=h.shape, dtype=h.dtype, payload=frame.payload)
