"""Plain float casts: ``fp32``, ``fp16``, ``bf16``, ``fp8e4m3``, ``fp8e5m2``.

The payload is the cast tensor's bytes (native little-endian layout), exactly ``numel * itemsize`` bytes,
so ``bits_per_element`` is 32, 16, 16, 8 and 8. fp8 casts saturate to the format's finite range first
(e4m3fn: +-448, e5m2: +-57344), so large values and +-Inf become +-max instead of NaN; NaN stays NaN.
fp16/bf16 follow IEEE rounding (fp16 overflows to +-Inf). Decoding casts back to the original dtype.
Encoding always writes a fresh buffer (or ``out``) and decoding always copies, so neither result aliases
its input.
"""

from __future__ import annotations

import torch

from .base import Codec, CodecError, Encoded
from .spec import Term

_TARGET_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8e4m3": torch.float8_e4m3fn,
    "fp8e5m2": torch.float8_e5m2,
}
#: Largest finite magnitude of the formats that saturate on encode.
SATURATION: dict[str, float] = {
    "fp8e4m3": float(torch.finfo(torch.float8_e4m3fn).max),  # 448
    "fp8e5m2": float(torch.finfo(torch.float8_e5m2).max),  # 57344
}


def _view_as(buf: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """``buf`` (1-D uint8) reinterpreted as ``dtype`` without a copy, or None when it is misaligned."""
    size = torch.empty((), dtype=dtype).element_size()
    if buf.storage_offset() % size or buf.numel() % size:
        return None
    return buf.view(dtype)


class CastCodec(Codec):
    """Cast to a narrower (or the same) float format; see the module docstring."""

    NAMES: tuple[str, ...] = tuple(_TARGET_DTYPES)

    def __init__(self, name: str) -> None:
        """Raises CodecError for a name outside :attr:`NAMES`."""
        if name not in _TARGET_DTYPES:
            raise CodecError(f"unknown cast codec {name!r}; expected one of {', '.join(self.NAMES)}")
        self._name = name
        self._target = _TARGET_DTYPES[name]
        self._itemsize = torch.empty((), dtype=self._target).element_size()

    @property
    def name(self) -> str:
        """The target format's spec name."""
        return self._name

    @property
    def target(self) -> torch.dtype:
        """The torch dtype of the payload's elements."""
        return self._target

    @property
    def itemsize(self) -> int:
        """Payload bytes per element."""
        return self._itemsize

    @classmethod
    def from_term(cls, term: Term) -> CastCodec:
        """Build from a spec term; casts take no ':' argument and no '/' options (CodecError otherwise)."""
        if term.arg is not None or term.options:
            raise CodecError(f"{term.name} takes no argument or options, got {str(term)!r}")
        return cls(term.name)

    @property
    def spec(self) -> str:
        """The target format's name, e.g. ``fp8e4m3``."""
        return self.name

    def payload_nbytes(self, numel: int) -> int:
        """Exactly ``numel * itemsize`` bytes (4 for fp32, 2 for fp16/bf16, 1 for fp8)."""
        if numel < 0:
            raise CodecError(f"{self.spec}: numel must be >= 0, got {numel}")
        return numel * self.itemsize

    def encode(self, x: torch.Tensor, *, generator: torch.Generator | None = None,
               out: torch.Tensor | None = None) -> Encoded:
        """Cast ``x`` into a new payload (or ``out``: contiguous 1-D uint8 of ``payload_nbytes`` bytes on x's
        device). ``generator`` is unused. CodecError for an unsupported dtype or a bad ``out``."""
        dtype_name = self._check_input(x)
        nbytes = self.payload_nbytes(x.numel())
        payload = self._payload_buffer(out, nbytes, x.device)
        with torch.no_grad():
            src = x.detach().reshape(-1)  # (n,); copies only when x is not contiguous
            limit = SATURATION.get(self.name)
            if limit is not None:
                src = src.clamp(-limit, limit)  # NaN passes through clamp unchanged
            view = _view_as(payload, self.target)
            if view is not None:
                view.copy_(src)
            else:
                payload.copy_(src.to(self.target).view(torch.uint8))
        return Encoded(self.spec, tuple(x.shape), dtype_name, payload)

    def _payload_buffer(self, out: torch.Tensor | None, nbytes: int, device: torch.device) -> torch.Tensor:
        if out is None:
            return torch.empty(nbytes, dtype=torch.uint8, device=device)
        if not isinstance(out, torch.Tensor) or out.dtype != torch.uint8 or out.dim() != 1 or not out.is_contiguous():
            found = f"{out.dtype} {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise CodecError(f"{self.spec}: out must be a contiguous 1-D uint8 tensor, got {found}")
        if out.numel() != nbytes or out.device != device:
            raise CodecError(
                f"{self.spec}: out must hold exactly {nbytes} B on {device}, got {out.numel()} B on {out.device}"
            )
        return out

    def decode(self, enc: Encoded, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """Cast the payload back to the original dtype and shape (into ``out`` when given).

        CodecError for a wrong spec, dtype, shape/payload-length mismatch or a bad ``out``.
        """
        self._check_encoded(enc)  # types, spec, dtype and shape first: enc.numel needs a valid shape
        dtype = self._check_encoded(enc, self.payload_nbytes(enc.numel))
        p = enc.payload
        if out is not None and out.device != p.device:
            raise CodecError(f"{self.spec}: out is on {out.device}, payload on {p.device}")
        result = self._prepare_out(out, tuple(enc.shape), dtype, p.device)
        view = _view_as(p, self.target)
        if view is None:
            view = p.clone().view(self.target)  # misaligned slice of a larger buffer
        with torch.no_grad():
            result.view(-1).copy_(view)
        return result
