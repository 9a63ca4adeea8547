"""Blockwise absmax integer quantization: ``int8``, ``int4``, ``int3``, ``int2`` with options.

Spec: ``int<bits>[/b<N>][/rht][/sr]`` -- ``b<N>``: block size (default 128, N >= 2, a power of two with
``rht``); ``rht``: randomized Hadamard rotation of each block before quantizing (spreads outliers);
``sr``: stochastic rounding (unbiased, randomness from the ``generator`` given to ``encode``).
The canonical spec lists options in the order b, rht, sr and omits the default block size.

Payload layout (little-endian), exactly ``payload_nbytes(n)`` bytes for ``n`` elements::

    [u32 rotation seed, only with rht][fp32 scale per block, ceil(n / B)][packed codes, see .packing]

Codes: when ``B`` is a multiple of the packing unit (1, 2, 8, 4 codes for int8/4/3/2), each whole block is
packed on its own in the lane-interleaved layout of :mod:`.packing` with ``block_lanes(B, bits)`` lanes
(16 when ``B`` is a multiple of 16 units, e.g. B = 128), and the codes after the last whole block follow
in the sequential layout; otherwise the whole stream is sequential.

Each scale is the block's absmax ``A``; a code ``j`` decodes to ``(j - c) * A / c`` with
``c = (2**bits - 1) / 2`` (midrise: all ``2**bits`` levels used, no exact zero); a block whose absmax is
below 2**-120 is stored with scale 0 and decodes to zeros (see .kernels). The last block is padded
with zeros internally; only ``n`` codes are stored (with rht: all ``ceil(n / B) * B``, because the rotation
spreads the padded block over all its positions). Bits per element at the default block size:
int8 8.25, int4 4.25, int3 3.25, int2 2.25 (+ 32 bits per tensor for the rht seed).
"""

from __future__ import annotations

import math
import re

import torch

from . import kernels
from .base import Codec, CodecError, Encoded
from .hadamard import is_power_of_two, random_signs, rotate_blocks, unrotate_blocks
from .packing import bytes_per_unit, codes_per_unit, pack_flat, packed_nbytes, unpack_flat
from .spec import Term

DEFAULT_BLOCK = 128
_BITS_BY_NAME: dict[str, int] = {"int8": 8, "int4": 4, "int3": 3, "int2": 2}
_BLOCK_OPT_RE = re.compile(r"^b([0-9]+)$")
_SEED_NBYTES = 4
_F32_MAX = torch.finfo(torch.float32).max


class IntQuantCodec(Codec):
    """Blockwise absmax ``bits``-bit quantizer with real bit-packing (see the module docstring)."""

    NAMES: tuple[str, ...] = tuple(_BITS_BY_NAME)

    def __init__(self, bits: int, block: int = DEFAULT_BLOCK, rht: bool = False, stochastic: bool = False) -> None:
        """Raises CodecError for unsupported ``bits`` (8, 4, 3, 2), ``block < 2``, or a non-power-of-two
        block with ``rht``."""
        if bits not in _BITS_BY_NAME.values():
            raise CodecError(f"unsupported bit width {bits}; expected one of {sorted(_BITS_BY_NAME.values())}")
        if isinstance(block, bool) or not isinstance(block, int) or block < 2:
            raise CodecError(f"int{bits}: block size must be an integer >= 2, got {block!r}")
        if rht and not is_power_of_two(block):
            raise CodecError(f"int{bits}: block size must be a power of two with rht, got {block}")
        self._bits = bits
        self._block = block
        self._rht = bool(rht)
        self._stochastic = bool(stochastic)

    @property
    def bits(self) -> int:
        """Code width in bits (8, 4, 3 or 2)."""
        return self._bits

    @property
    def block(self) -> int:
        """Elements per block (one fp32 scale each)."""
        return self._block

    @property
    def rht(self) -> bool:
        """Whether blocks are rotated by a randomized Hadamard transform before quantizing."""
        return self._rht

    @property
    def stochastic(self) -> bool:
        """Whether rounding is stochastic (unbiased) instead of to the nearest level."""
        return self._stochastic

    # ---- spec ---------------------------------------------------------------------------------------------

    @classmethod
    def from_term(cls, term: Term) -> IntQuantCodec:
        """Build from a parsed spec term such as ``int4/b64/rht/sr``; CodecError names the bad part."""
        bits = _BITS_BY_NAME.get(term.name)
        if bits is None:
            raise CodecError(f"unknown quantizer {term.name!r}; expected one of {', '.join(cls.NAMES)}")
        if term.arg is not None:
            raise CodecError(f"{term.name} takes no ':' argument, got {str(term)!r}; use e.g. '{term.name}/b64'")
        block: int | None = None
        rht = stochastic = False
        for opt in term.options:
            m = _BLOCK_OPT_RE.match(opt)
            if m is not None:
                if block is not None:
                    raise CodecError(f"codec spec {str(term)!r}: block size given twice")
                block = int(m.group(1))
                if block < 2:
                    raise CodecError(f"codec spec {str(term)!r}: block size must be >= 2, got {block}")
            elif opt == "rht":
                if rht:
                    raise CodecError(f"codec spec {str(term)!r}: option 'rht' given twice")
                rht = True
            elif opt == "sr":
                if stochastic:
                    raise CodecError(f"codec spec {str(term)!r}: option 'sr' given twice")
                stochastic = True
            else:
                raise CodecError(
                    f"codec spec {str(term)!r}: unknown option {opt!r}; expected b<N> (block size), 'rht' or 'sr'"
                )
        return cls(bits, DEFAULT_BLOCK if block is None else block, rht, stochastic)

    @property
    def spec(self) -> str:
        """Canonical spec: ``int<bits>[/b<N>][/rht][/sr]``, default block omitted."""
        s = f"int{self.bits}"
        if self.block != DEFAULT_BLOCK:
            s += f"/b{self.block}"
        if self.rht:
            s += "/rht"
        if self.stochastic:
            s += "/sr"
        return s

    # ---- sizes --------------------------------------------------------------------------------------------

    def _nblocks(self, numel: int) -> int:
        return -(-numel // self.block)

    def _header_nbytes(self, numel: int) -> int:
        """Bytes before the packed codes: the rht seed and the fp32 scales."""
        return (_SEED_NBYTES if self.rht else 0) + 4 * self._nblocks(numel)

    def _stored_codes(self, numel: int) -> int:
        """Codes kept in the payload: ``numel``, or every padded position with rht (the rotation of the
        zero-padded last block spreads it over the whole block)."""
        return self._nblocks(numel) * self.block if self.rht else numel

    def payload_nbytes(self, numel: int) -> int:
        """Exact payload bytes for ``numel`` elements: seed (rht only) + 4 per block + packed codes."""
        if numel < 0:
            raise CodecError(f"{self.spec}: numel must be >= 0, got {numel}")
        return self._header_nbytes(numel) + packed_nbytes(self._stored_codes(numel), self.bits)

    def _aligned_blocks(self, numel: int) -> int:
        """Number of leading full blocks handled by the fused kernel (blocks must align with packing units)."""
        return numel // self.block if self.block % codes_per_unit(self.bits) == 0 else 0

    # ---- encode -------------------------------------------------------------------------------------------

    def encode(self, x: torch.Tensor, *, generator: torch.Generator | None = None,
               out: torch.Tensor | None = None) -> Encoded:
        """Quantize ``x``; the payload is ``out`` when given (1-D uint8 of ``payload_nbytes`` bytes on x's device).

        Raises CodecError for an unsupported dtype, a bad ``out``, or NaN/Inf in ``x`` (naming the first bad
        block; ``out`` then holds garbage).
        """
        dtype_name = self._check_input(x)
        n = x.numel()
        payload = self._payload_buffer(out, n, x.device)
        with torch.no_grad():
            flat = x.detach().reshape(-1)  # (n,); copies only when x is not contiguous
            signs = self._write_seed(payload, generator, x.device) if self.rht else None
            scales = self._encode_into(flat, payload, signs, generator)
        self._check_scales_finite(scales, n)
        off = _SEED_NBYTES if self.rht else 0
        payload[off:off + 4 * scales.numel()].copy_(scales.view(torch.uint8))
        return Encoded(self.spec, tuple(x.shape), dtype_name, payload)

    def _payload_buffer(self, out: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
        nbytes = self.payload_nbytes(n)
        if out is None:
            return torch.empty(nbytes, dtype=torch.uint8, device=device)
        if not isinstance(out, torch.Tensor) or out.dtype != torch.uint8 or out.dim() != 1 or not out.is_contiguous():
            found = f"{out.dtype} {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise CodecError(f"{self.spec}: out must be a contiguous 1-D uint8 tensor, got {found}")
        if out.numel() != nbytes or out.device != device:
            raise CodecError(
                f"{self.spec}: out must hold exactly {nbytes} B on {device} for {n} elements, "
                f"got {out.numel()} B on {out.device}"
            )
        return out

    def _write_seed(self, payload: torch.Tensor, generator: torch.Generator | None,
                    device: torch.device) -> torch.Tensor:
        """Draw the rotation seed, store it in payload[0:4] (u32 LE) and return the block's random signs."""
        gdev = generator.device if generator is not None else device
        seed = int(torch.randint(0, 2**32, (1,), generator=generator, device=gdev, dtype=torch.int64).item())
        payload[:_SEED_NBYTES].copy_(torch.tensor(list(seed.to_bytes(4, "little")), dtype=torch.uint8))
        return random_signs(seed, self.block, device)

    def _noise(self, shape: tuple[int, int], generator: torch.Generator | None,
               device: torch.device) -> torch.Tensor | None:
        """U[0, 1) fp32 noise for stochastic rounding (None for deterministic rounding)."""
        if not self.stochastic:
            return None
        gdev = generator.device if generator is not None else device
        return torch.rand(shape, generator=generator, device=gdev, dtype=torch.float32).to(device)

    def _encode_into(self, flat: torch.Tensor, payload: torch.Tensor, signs: torch.Tensor | None,
                     generator: torch.Generator | None) -> torch.Tensor:
        """Write all packed codes into ``payload`` and return the scales (nblocks,) fp32 (not yet stored)."""
        n, bsz, bits = flat.numel(), self.block, self.bits
        codes_region = payload[self._header_nbytes(n):]  # (packed_nbytes(stored codes, bits),)
        nfull = self._aligned_blocks(n)
        parts: list[torch.Tensor] = []
        main_nbytes = nfull * bsz // codes_per_unit(bits) * bytes_per_unit(bits)
        if nfull:
            xm = flat[:nfull * bsz].view(nfull, bsz)  # (nfull, B)
            if signs is not None:
                xm = rotate_blocks(xm, signs)
            packed = codes_region[:main_nbytes].view(nfull, -1)  # (nfull, B * bits / 8)
            noise = self._noise((nfull, bsz), generator, flat.device)
            parts.append(kernels.quantize_pack(xm, bits, packed, noise))
        rest = n - nfull * bsz
        if rest:
            nrest = -(-rest // bsz)
            xr = torch.zeros(nrest * bsz, dtype=torch.float32, device=flat.device)
            xr[:rest] = flat[nfull * bsz:]
            xr2 = xr.view(nrest, bsz)  # (nrest, B), zero-padded
            if signs is not None:
                xr2 = rotate_blocks(xr2, signs)
            scales_r, codes = kernels.quantize_codes(xr2, bits, self._noise((nrest, bsz), generator, flat.device))
            kept = self._stored_codes(n) - nfull * bsz
            pack_flat(codes.view(-1)[:kept], bits, out=codes_region[main_nbytes:])
            parts.append(scales_r)
        if not parts:
            return torch.empty(0, dtype=torch.float32, device=flat.device)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _check_scales_finite(self, scales: torch.Tensor, numel: int) -> None:
        """CodecError naming the first block whose absmax is NaN/Inf (i.e. that holds a NaN/Inf)."""
        if scales.numel() == 0:
            return
        bad = ~torch.isfinite(scales)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            lo, hi = i * self.block, min((i + 1) * self.block, numel) - 1
            raise CodecError(
                f"{self.spec}: input contains NaN or Inf in block {i} (flattened elements {lo}..{hi}, "
                f"block size {self.block}); {int(bad.sum())} of {scales.numel()} blocks affected"
            )

    # ---- decode -------------------------------------------------------------------------------------------

    def decode(self, enc: Encoded, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """Dequantize to the original shape/dtype on the payload's device (into ``out`` when given).

        Raises CodecError for a wrong spec, dtype, shape/payload-length mismatch, a scale that is NaN,
        Inf, negative or too large for the original dtype (a valid payload never has one), decoded values
        that overflow the original dtype (rht only), or a bad ``out``.
        """
        self._check_encoded(enc)  # types, spec, dtype and shape first: enc.numel needs a valid shape
        n = enc.numel
        dtype = self._check_encoded(enc, self.payload_nbytes(n))
        p = enc.payload
        if out is not None and out.device != p.device:
            raise CodecError(f"{self.spec}: out is on {out.device}, payload on {p.device}")
        result = self._prepare_out(out, tuple(enc.shape), dtype, p.device)
        if n == 0:
            return result
        off = _SEED_NBYTES if self.rht else 0
        scales = self._read_scales(p[off:off + 4 * self._nblocks(n)], dtype)
        signs = None
        if self.rht:
            signs = random_signs(int.from_bytes(bytes(p[:off].cpu().tolist()), "little"), self.block, p.device)
        with torch.no_grad():
            self._decode_into(p[self._header_nbytes(n):], scales, signs, result.view(-1))
            if self.rht and self._may_overflow(scales, dtype) and not bool(torch.isfinite(result).all()):
                raise CodecError(f"{self.spec}: corrupt payload: decoded values overflow {dtype}")
        return result

    def _may_overflow(self, scales: torch.Tensor, dtype: torch.dtype) -> bool:
        """Whether the inverse rotation could exceed ``dtype``'s range: it maps a block whose values are at
        most ``A`` to values at most ``sqrt(B) * A``. (Without rht ``|decoded| <= A``, which _read_scales
        bounds.) Only then is the decoded tensor scanned for Inf."""
        return float(scales.max()) * math.sqrt(self.block) > torch.finfo(dtype).max

    def _read_scales(self, raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The fp32 scales from their payload bytes, validated (CodecError otherwise): each must be >= 0 and
        at most the largest value an encoded ``dtype`` tensor can produce (its finfo max, times sqrt(B)
        with rht, since a rotated block's absmax is at most its L2 norm)."""
        if raw.storage_offset() % 4:
            raw = raw.clone()  # unaligned slice of a larger buffer: view(float32) needs 4-byte alignment
        scales = raw.view(torch.float32)  # (nblocks,)
        limit = min(_F32_MAX, torch.finfo(dtype).max * (math.sqrt(self.block) if self.rht else 1.0))
        ok = (scales >= 0) & (scales <= limit)  # false for NaN, Inf, negatives and impossible magnitudes
        if not bool(ok.all()):
            i = int((~ok).nonzero()[0, 0])
            raise CodecError(
                f"{self.spec}: corrupt payload: scale of block {i} is {float(scales[i])!r} "
                f"(expected a finite value in [0, {limit:.6g}] for {dtype})"
            )
        return scales

    def _decode_into(self, codes_region: torch.Tensor, scales: torch.Tensor, signs: torch.Tensor | None,
                     flat_out: torch.Tensor) -> None:
        """Dequantize every block into ``flat_out`` (n,) of the original dtype."""
        n, bsz, bits = flat_out.numel(), self.block, self.bits
        nfull = self._aligned_blocks(n)
        main_nbytes = nfull * bsz // codes_per_unit(bits) * bytes_per_unit(bits)
        if nfull:
            packed = codes_region[:main_nbytes].view(nfull, -1)  # (nfull, B * bits / 8)
            om = flat_out[:nfull * bsz].view(nfull, bsz)  # (nfull, B)
            if signs is None:
                kernels.unpack_dequantize(packed, scales[:nfull], bits, om)
            else:
                tmp = torch.empty(nfull, bsz, dtype=torch.float32, device=flat_out.device)
                kernels.unpack_dequantize(packed, scales[:nfull], bits, tmp)
                unrotate_blocks(tmp, signs, out=om)
        rest = n - nfull * bsz
        if rest:
            nrest = -(-rest // bsz)
            kept = self._stored_codes(n) - nfull * bsz
            codes = torch.zeros(nrest * bsz, dtype=torch.uint8, device=flat_out.device)
            codes[:kept] = unpack_flat(codes_region[main_nbytes:], kept, bits)
            vals = kernels.dequantize_codes(codes.view(nrest, bsz), scales[nfull:], bits)  # (nrest, B)
            if signs is not None:
                vals = unrotate_blocks(vals, signs)
            flat_out[nfull * bsz:].copy_(vals.view(-1)[:rest])
