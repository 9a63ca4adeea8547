"""The codec contract: a pure map tensor -> :class:`Encoded` -> tensor.

A codec never sends, never reads globals and keeps no state between calls; stateful schemes wrap a codec
and keep their state in an object the caller owns (see :mod:`layeredge_dist.codecs.stateful`).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

#: Float dtypes the lossy codecs accept as input and restore on decode, by their wire name.
SUPPORTED_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in SUPPORTED_DTYPES.items()}
#: Integer (and bool) dtypes that only lossless codecs (``raw``) carry, by their wire name.
INTEGER_DTYPES: dict[str, torch.dtype] = {
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
INTEGER_DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in INTEGER_DTYPES.items()}
#: Every dtype a frame may carry: :data:`SUPPORTED_DTYPES` and :data:`INTEGER_DTYPES` together.
WIRE_DTYPES: dict[str, torch.dtype] = {**SUPPORTED_DTYPES, **INTEGER_DTYPES}
WIRE_DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in WIRE_DTYPES.items()}


class CodecError(ValueError):
    """The one exception every codec raises for bad input or a malformed payload.

    The message names what was wrong (which field, expected vs. found) so an operator can act on it.
    """


@dataclass(frozen=True)
class Encoded:
    """A compressed tensor.

    ``payload`` is a contiguous 1-D ``torch.uint8`` tensor holding everything needed to decode except what
    is spelled out here (spec, shape, dtype): scales, packed codes, indices, seeds. Its length in bytes is
    therefore the exact wire cost of the tensor's content, metadata included.
    """

    spec: str
    shape: tuple[int, ...]
    dtype: str
    payload: torch.Tensor

    @property
    def numel(self) -> int:
        """Number of elements of the original tensor."""
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        """Payload size in bytes."""
        return int(self.payload.numel())

    @property
    def bits_per_element(self) -> float:
        """Exact payload bits per original element, metadata included (0 for an empty tensor)."""
        n = self.numel
        return 8.0 * self.nbytes / n if n else 0.0

    def payload_bytes(self) -> memoryview:
        """The payload as a read-only bytes view (no copy for a CPU payload)."""
        p = self.payload if self.payload.device.type == "cpu" else self.payload.cpu()
        return memoryview(p.numpy()).toreadonly()


class Codec(abc.ABC):
    """A pure tensor codec. Subclasses are immutable and configured only by their spec string.

    :attr:`INPUT_DTYPES` declares the dtypes (by wire name) a codec accepts on encode and restores on decode;
    the float codecs keep the default, :data:`SUPPORTED_DTYPES`.
    """

    INPUT_DTYPES: ClassVar[Mapping[str, torch.dtype]] = SUPPORTED_DTYPES

    @property
    def input_dtypes(self) -> Mapping[str, torch.dtype]:
        """The dtypes this codec accepts and restores, by wire name (its class's :attr:`INPUT_DTYPES`)."""
        return self.INPUT_DTYPES

    @property
    @abc.abstractmethod
    def spec(self) -> str:
        """Canonical spec string; ``parse_codec(c.spec) == c`` holds for every codec."""

    @abc.abstractmethod
    def encode(self, x: torch.Tensor, *, generator: torch.Generator | None = None,
               out: torch.Tensor | None = None) -> Encoded:
        """Compress ``x`` (any shape, a dtype in :attr:`INPUT_DTYPES`, any device, contiguous or not).

        ``generator`` supplies randomness for stochastic codecs (stochastic rounding, random-k, random
        rotations); the global RNG of ``x``'s device is used when it is None. ``out``, for codecs whose
        payload size depends only on ``x.numel()``, is a preallocated 1-D uint8 buffer of exactly
        ``payload_nbytes(x.numel())`` bytes on ``x``'s device that becomes the payload (reuse it across calls
        to avoid allocation); data-dependent codecs raise CodecError when given one. Raises
        :class:`CodecError` for an unsupported dtype or for NaN/Inf where the codec cannot represent them.
        """

    @abc.abstractmethod
    def decode(self, enc: Encoded, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rebuild the tensor on the payload's device with the original shape and dtype.

        Validates spec, dtype, shape and payload length before touching the payload and raises
        :class:`CodecError` with a precise message on any mismatch. When ``out`` is given (right shape and
        dtype, contiguous) the result is written into it and returned.
        """

    @property
    def data_dependent(self) -> bool:
        """True when the payload size depends on the data, not only on ``numel`` (then :meth:`payload_nbytes` is
        the nominal size and ``encode(..., out=...)`` raises CodecError)."""
        return False

    @abc.abstractmethod
    def payload_nbytes(self, numel: int) -> int:
        """Exact payload size in bytes for a tensor of ``numel`` elements.

        For data-dependent codecs (approximate top-k) this is the size at the nominal keep ratio. ``raw``, whose
        size depends on the dtype, takes it as a second argument and raises CodecError without it.
        """

    def bits_per_element(self, numel: int) -> float:
        """Exact payload bits per element for a tensor of ``numel`` elements, metadata included."""
        return 8.0 * self.payload_nbytes(numel) / numel if numel else 0.0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Codec) and type(other) is type(self) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.spec))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    # ---- helpers shared by all codecs -------------------------------------------------------------

    def _check_input(self, x: torch.Tensor) -> str:
        """Validate an input tensor and return its dtype's wire name.

        Raises CodecError for a non-tensor or a dtype outside :attr:`INPUT_DTYPES`.
        """
        if not isinstance(x, torch.Tensor):
            raise CodecError(f"{self.spec}: expected a torch.Tensor, got {type(x).__name__}")
        name = WIRE_DTYPE_NAMES.get(x.dtype)
        if name is None or name not in self.INPUT_DTYPES:
            raise CodecError(
                f"{self.spec}: unsupported input dtype {x.dtype}; expected one of {sorted(self.INPUT_DTYPES)}"
            )
        return name

    def _check_encoded(self, enc: Encoded, expected_nbytes: int | None = None) -> torch.dtype:
        """Validate an Encoded's spec, dtype, shape and (optionally) payload length; return the dtype."""
        if not isinstance(enc, Encoded):
            raise CodecError(f"{self.spec}: expected Encoded, got {type(enc).__name__}")
        if enc.spec != self.spec:
            raise CodecError(f"codec mismatch: payload was encoded with {enc.spec!r}, decoder is {self.spec!r}")
        dtype = self.INPUT_DTYPES.get(enc.dtype)
        if dtype is None:
            what = "unsupported" if enc.dtype in WIRE_DTYPES else "unknown"
            raise CodecError(
                f"{self.spec}: {what} dtype {enc.dtype!r}; expected one of {sorted(self.INPUT_DTYPES)}"
            )
        if not isinstance(enc.shape, tuple) or any((not isinstance(d, int)) or d < 0 for d in enc.shape):
            raise CodecError(f"{self.spec}: invalid shape {enc.shape!r}; expected a tuple of non-negative ints")
        p = enc.payload
        if not isinstance(p, torch.Tensor) or p.dtype != torch.uint8 or p.dim() != 1:
            raise CodecError(f"{self.spec}: payload must be a 1-D uint8 tensor")
        if expected_nbytes is not None and p.numel() != expected_nbytes:
            raise CodecError(
                f"{self.spec}: payload length {p.numel()} B does not match shape {enc.shape} "
                f"(expected {expected_nbytes} B)"
            )
        return dtype

    @staticmethod
    def _prepare_out(out: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype,
                     device: torch.device) -> torch.Tensor:
        """Return ``out`` after checking it, or a new empty tensor."""
        if out is None:
            return torch.empty(shape, dtype=dtype, device=device)
        if tuple(out.shape) != shape or out.dtype != dtype or not out.is_contiguous():
            raise CodecError(
                f"out tensor must be contiguous {dtype} of shape {shape}, got {out.dtype} {tuple(out.shape)}"
            )
        return out
