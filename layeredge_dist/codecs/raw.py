"""``raw``: the lossless codec. The payload is the tensor's own bytes, for every dtype in ``WIRE_DTYPES``.

It is the only codec that carries integer and bool tensors (token ids, masks), and for float tensors it is
bit-exact, NaN payloads and signed zeros included. The payload is the input's elements in C order, native
little-endian layout, exactly ``numel * itemsize`` bytes, so ``bits_per_element`` is ``8 * itemsize``
(64 for int64, 32 for float32, 8 for bool). Because that size depends on the dtype, :meth:`RawCodec.payload_nbytes`
needs the dtype. Bytes are moved through a same-size integer view, never through float arithmetic.

``raw`` stands alone: it is not a sparsifier's value codec (``topk:0.1`` already sends kept values losslessly)
and not wrapped by ``ef(...)`` / ``delta(...)`` (their fp32 arithmetic cannot carry int64 exactly and adds
nothing to a lossless codec); both raise :class:`~layeredge_dist.codecs.base.CodecError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from .base import WIRE_DTYPES, Codec, CodecError, Encoded
from .cast import _view_as
from .spec import Term

#: Same-size integer dtype whose view moves a dtype's bits without any float conversion.
_BITS_DTYPE: dict[torch.dtype, torch.dtype] = {
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.bool: torch.uint8,
}


def _as_bits(t: torch.Tensor) -> torch.Tensor:
    """``t`` viewed (no copy, any strides) as an integer dtype of the same element size."""
    bits = _BITS_DTYPE.get(t.dtype)
    return t if bits is None else t.view(bits)


class RawCodec(Codec):
    """Lossless: send the tensor's bytes as they are (see the module docstring)."""

    NAMES: tuple[str, ...] = ("raw",)
    INPUT_DTYPES: ClassVar[Mapping[str, torch.dtype]] = WIRE_DTYPES

    @classmethod
    def from_term(cls, term: Term) -> RawCodec:
        """Build from a spec term; ``raw`` takes no ':' argument and no '/' options (CodecError otherwise)."""
        if term.name not in cls.NAMES:
            raise CodecError(f"unknown codec {term.name!r}; expected 'raw'")
        if term.arg is not None or term.options:
            raise CodecError(f"raw takes no argument or options, got {str(term)!r}")
        return cls()

    @property
    def spec(self) -> str:
        """Always ``raw``."""
        return "raw"

    def itemsize(self, dtype: torch.dtype | str) -> int:
        """Payload bytes per element of ``dtype`` (a torch dtype or its wire name); CodecError if unsupported."""
        t = WIRE_DTYPES.get(dtype) if isinstance(dtype, str) else dtype
        if t not in WIRE_DTYPES.values():
            raise CodecError(f"raw: unsupported dtype {dtype!r}; expected one of {sorted(WIRE_DTYPES)}")
        return t.itemsize

    def payload_nbytes(self, numel: int, dtype: torch.dtype | str | None = None) -> int:
        """Exactly ``numel * itemsize(dtype)`` bytes (8 per element for int64, 1 for bool).

        The size depends on the dtype, so ``dtype`` is required: CodecError when it is None, unsupported, or
        ``numel`` is negative.
        """
        if numel < 0:
            raise CodecError(f"raw: numel must be >= 0, got {numel}")
        if dtype is None:
            raise CodecError("raw: payload size depends on the dtype; call payload_nbytes(numel, dtype)")
        return numel * self.itemsize(dtype)

    def bits_per_element(self, numel: int, dtype: torch.dtype | str | None = None) -> float:
        """``8 * itemsize(dtype)`` bits per element (0.0 for an empty tensor); CodecError as payload_nbytes."""
        return 8.0 * self.payload_nbytes(numel, dtype) / numel if numel else 0.0

    def encode(self, x: torch.Tensor, *, generator: torch.Generator | None = None,
               out: torch.Tensor | None = None) -> Encoded:
        """Copy ``x``'s bytes (C order) into a new payload, or into ``out``: a contiguous 1-D uint8 tensor of
        exactly ``payload_nbytes(x.numel(), x.dtype)`` bytes on x's device. ``generator`` is unused.

        CodecError for a dtype outside WIRE_DTYPES or a bad ``out``. The payload never aliases ``x``.
        """
        dtype_name = self._check_input(x)
        nbytes = self.payload_nbytes(x.numel(), x.dtype)
        payload = self._payload_buffer(out, nbytes, x.device)
        src = _as_bits(x.detach()).reshape(-1)  # (n,) integer view; copies only when x is not contiguous
        with torch.no_grad():
            view = _view_as(payload, src.dtype)
            if view is not None:
                view.copy_(src)
            else:  # out is a misaligned slice of a larger buffer
                payload.copy_(src.contiguous().view(torch.uint8))
        return Encoded(self.spec, tuple(x.shape), dtype_name, payload)

    def _payload_buffer(self, out: torch.Tensor | None, nbytes: int, device: torch.device) -> torch.Tensor:
        if out is None:
            return torch.empty(nbytes, dtype=torch.uint8, device=device)
        if not isinstance(out, torch.Tensor) or out.dtype != torch.uint8 or out.dim() != 1 or not out.is_contiguous():
            found = f"{out.dtype} {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise CodecError(f"raw: out must be a contiguous 1-D uint8 tensor, got {found}")
        if out.numel() != nbytes or out.device != device:
            raise CodecError(f"raw: out must hold exactly {nbytes} B on {device}, got {out.numel()} B on {out.device}")
        return out

    def decode(self, enc: Encoded, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rebuild the tensor bit-exactly with the original dtype and shape (into ``out`` when given).

        CodecError for a wrong spec, a dtype outside WIRE_DTYPES, a bad shape, a payload length other than
        ``numel * itemsize`` or a bad ``out``. The result never aliases the payload.
        """
        dtype = self._check_encoded(enc)  # types, spec, dtype and shape first: enc.numel needs a valid shape
        self._check_encoded(enc, self.payload_nbytes(enc.numel, dtype))
        p = enc.payload
        if out is not None and out.device != p.device:
            raise CodecError(f"raw: out is on {out.device}, payload on {p.device}")
        result = self._prepare_out(out, tuple(enc.shape), dtype, p.device)
        dst = _as_bits(result).view(-1)  # (n,)
        src = _view_as(p, dst.dtype)
        if src is None:
            src = p.clone().view(dst.dtype)  # misaligned slice of a larger buffer
        with torch.no_grad():
            dst.copy_(src)
        return result
