"""Bit-packing of small unsigned integer codes into bytes (vectorized torch; CPU and CUDA).

A *unit* is the smallest group of codes that fills whole bytes:

=====  ==============  ==============
bits   codes per unit  bytes per unit
=====  ==============  ==============
8      1               1  (raw bytes)
4      2               1
3      8               3
2      4               1
=====  ==============  ==============

Within a unit, code ``i`` occupies bits ``[bits*i, bits*(i+1))`` of the unit's little-endian integer (so for
int4 the first code is the low nibble; for int3 the 8 codes form a 24-bit word stored low byte first).

*Lanes.* Units can be interleaved across ``L`` lanes: a group of ``L * cpu`` codes, viewed as (cpu, L),
forms ``L`` units whose code ``i`` is row ``i``; their ``bpu`` bytes are stored as (bpu, L), row ``p``
holding byte ``p`` of every unit. With ``L = 1`` this is the plain sequential layout; with ``L = 16``
(:data:`LANES`, used for whole quantization blocks) every load and store is a contiguous 16-wide vector,
which is what lets the compiled kernels run at memory speed. Both layouts have the same size.

Codes are ``torch.uint8`` (or, for :func:`pack_units`, ``torch.int32``) tensors whose values are below
``2**bits`` (not checked: larger values corrupt their neighbours).
"""

from __future__ import annotations

import torch

from .base import CodecError

#: Supported code widths in bits.
SUPPORTED_BITS: tuple[int, ...] = (8, 4, 3, 2)
#: Lane count of the interleaved layout used for whole blocks.
LANES = 16
_CODES_PER_UNIT: dict[int, int] = {8: 1, 4: 2, 3: 8, 2: 4}
_BYTES_PER_UNIT: dict[int, int] = {8: 1, 4: 1, 3: 3, 2: 1}


def _check_bits(bits: int) -> None:
    if bits not in _CODES_PER_UNIT:
        raise CodecError(f"unsupported code width {bits} bits; expected one of {SUPPORTED_BITS}")


def codes_per_unit(bits: int) -> int:
    """Number of codes in one packing unit for ``bits``-bit codes (CodecError for other widths)."""
    _check_bits(bits)
    return _CODES_PER_UNIT[bits]


def bytes_per_unit(bits: int) -> int:
    """Number of bytes in one packing unit for ``bits``-bit codes (CodecError for other widths)."""
    _check_bits(bits)
    return _BYTES_PER_UNIT[bits]


def packed_nbytes(n: int, bits: int) -> int:
    """Exact size in bytes of ``n`` packed ``bits``-bit codes (the stream is padded to whole units)."""
    cpu = codes_per_unit(bits)
    return -(-n // cpu) * _BYTES_PER_UNIT[bits]


def block_lanes(block: int, bits: int) -> int:
    """Lanes used for a whole block of ``block`` codes: :data:`LANES` when it divides evenly, else 1."""
    return LANES if block % (LANES * codes_per_unit(bits)) == 0 else 1


# ---- unit packing (compile-friendly: elementwise ops on slices, no data-dependent control flow) ----------


def pack_units(codes: torch.Tensor, bits: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Pack codes (..., cpu, L) into bytes (..., bpu, L) uint8 (see the module docstring).

    ``codes`` may be uint8 or int32 (the compiled quantizer produces int32 codes, which saves conversions).
    With ``out`` (uint8, (..., bpu, L)) the bytes are written there and ``out`` is returned; without it,
    8-bit uint8 codes are returned unchanged (no copy).
    """
    if bits == 8:
        return codes.to(torch.uint8) if out is None else out.copy_(codes)
    cpu = codes_per_unit(bits)
    if _BYTES_PER_UNIT[bits] == 1:
        w = codes[..., 0, :]  # (..., L); bits * cpu == 8, so no field spills out of the byte
        for i in range(1, cpu):
            w = w | (codes[..., i, :] << (bits * i))
        packed = w.to(torch.uint8).unsqueeze(-2)  # (..., 1, L)
        return packed if out is None else out.copy_(packed)
    # bits == 3: bytes of the 24-bit word sum(c_i << 3i), each built straight from the codes it covers
    # (a materialized word would cost the compiled kernel an extra pass over memory)
    c = [codes[..., i, :].to(torch.int32) for i in range(cpu)]  # 8 x (..., L)
    b0 = c[0] | (c[1] << 3) | (c[2] << 6)
    b1 = (c[2] >> 2) | (c[3] << 1) | (c[4] << 4) | (c[5] << 7)
    b2 = (c[5] >> 1) | (c[6] << 2) | (c[7] << 5)
    # (one stacked result copied once measures ~6x faster compiled than three per-plane copies into out)
    packed = (torch.stack((b0, b1, b2), dim=-2) & 255).to(torch.uint8)  # (..., 3, L)
    return packed if out is None else out.copy_(packed)


def unpack_units(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_units`: bytes (..., bpu, L) uint8 -> codes (..., cpu, L) uint8.

    8-bit codes are returned unchanged (no copy).
    """
    if bits == 8:
        return packed
    cpu = codes_per_unit(bits)
    if _BYTES_PER_UNIT[bits] == 1:
        w = packed  # (..., 1, L) uint8
        shifts = (torch.arange(cpu, dtype=torch.uint8, device=packed.device) * bits).unsqueeze(-1)  # (cpu, 1)
    else:
        w = packed[..., 0, :].to(torch.int32)  # (..., L)
        for p in range(1, _BYTES_PER_UNIT[bits]):
            w = w | (packed[..., p, :].to(torch.int32) << (8 * p))
        w = w.unsqueeze(-2)  # (..., 1, L)
        shifts = (torch.arange(cpu, dtype=torch.int32, device=packed.device) * bits).unsqueeze(-1)  # (cpu, 1)
    return ((w >> shifts) & (2**bits - 1)).to(torch.uint8)  # (..., cpu, L)


# ---- flat code streams (sequential layout, L = 1) ------------------------------------------------------


def pack_flat(codes: torch.Tensor, bits: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Pack a 1-D uint8 code stream of any length sequentially, padding with zero codes to whole units.

    Returns (``packed_nbytes(len(codes), bits)``,) uint8, written into ``out`` when given (``out`` must be
    a 1-D uint8 tensor of exactly that length on the same device; CodecError otherwise).
    """
    if codes.dim() != 1 or codes.dtype != torch.uint8:
        raise CodecError(f"pack_flat expects a 1-D uint8 code stream, got {codes.dtype} {tuple(codes.shape)}")
    n = codes.numel()
    cpu = codes_per_unit(bits)
    nbytes = packed_nbytes(n, bits)
    if out is not None and (out.dim() != 1 or out.dtype != torch.uint8 or out.numel() != nbytes):
        raise CodecError(f"pack_flat: out must be 1-D uint8 of {nbytes} B, got {out.dtype} {tuple(out.shape)}")
    padded_len = nbytes // _BYTES_PER_UNIT[bits] * cpu
    if padded_len != n:
        padded = torch.zeros(padded_len, dtype=torch.uint8, device=codes.device)
        padded[:n] = codes
        codes = padded
    packed = pack_units(codes.view(-1, cpu, 1), bits).reshape(-1)  # (units, cpu, 1) -> (units * bpu,)
    if out is None:
        return packed.clone() if packed.data_ptr() == codes.data_ptr() else packed
    out.copy_(packed)
    return out


def _check_stream(packed: torch.Tensor, expected: int, caller: str, n: int, bits: int) -> None:
    """CodecError unless ``packed`` is a 1-D uint8 tensor of exactly ``expected`` bytes."""
    if packed.dim() != 1 or packed.dtype != torch.uint8 or packed.numel() != expected:
        raise CodecError(
            f"{caller}: expected 1-D uint8 of {expected} B for {n} {bits}-bit codes, "
            f"got {packed.dtype} {tuple(packed.shape)}"
        )


def unpack_flat(packed: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    """Unpack the first ``n`` codes of a sequentially packed 1-D stream; CodecError unless its length is exact."""
    _check_stream(packed, packed_nbytes(n, bits), "unpack_flat", n, bits)
    bpu = _BYTES_PER_UNIT[bits]
    return unpack_units(packed.view(-1, bpu, 1), bits).reshape(-1)[:n]  # (units, cpu, 1) -> (n,)


# ---- any width (1..8 bits): bit-serial layout ------------------------------------------------------------


def bitstream_nbytes(n: int, bits: int) -> int:
    """Size in bytes of ``n`` codes of ``bits`` (1..8) bits in the bit-serial layout of :func:`pack_bitstream`."""
    if not 1 <= bits <= 8:
        raise CodecError(f"unsupported code width {bits} bits; expected 1..8")
    return -(-n * bits // 8)


def pack_bitstream(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack a 1-D uint8 stream of ``bits``-bit codes (any width 1..8) bit-serially: bit ``j`` of code ``i`` is
    bit ``(i * bits + j) % 8`` of byte ``(i * bits + j) // 8``; the last byte is zero-padded.

    Every 8 codes fill exactly ``bits`` bytes: they are summed into one int64 word (``sum c_i << bits * i``, at most
    64 bits; the top bit may wrap into the sign, which the byte extraction ignores) whose little-endian bytes are
    the output. Used where widths vary per column, as in :mod:`.klt`. Returns (``bitstream_nbytes(n, bits)``,) uint8.
    """
    nbytes = bitstream_nbytes(codes.numel(), bits)
    if codes.dim() != 1 or codes.dtype != torch.uint8:
        raise CodecError(f"pack_bitstream expects a 1-D uint8 code stream, got {codes.dtype} {tuple(codes.shape)}")
    n = codes.numel()
    units = -(-n // 8)
    padded = torch.zeros(units * 8, dtype=torch.int64, device=codes.device)
    padded[:n] = codes
    shifts = torch.arange(8, dtype=torch.int64, device=codes.device) * bits
    words = (padded.view(units, 8) << shifts).sum(dim=1)  # (units,): no two codes share a bit
    byte_shifts = torch.arange(bits, dtype=torch.int64, device=codes.device) * 8
    out = ((words.unsqueeze(1) >> byte_shifts) & 255).to(torch.uint8)  # (units, bits)
    return out.reshape(-1)[:nbytes]


def unpack_bitstream(packed: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_bitstream`: the first ``n`` codes as 1-D uint8; CodecError unless the length is exact."""
    expected = bitstream_nbytes(n, bits)
    _check_stream(packed, expected, "unpack_bitstream", n, bits)
    units = -(-n // 8)
    full = torch.zeros(units * bits, dtype=torch.int64, device=packed.device)
    full[:expected] = packed
    byte_shifts = torch.arange(bits, dtype=torch.int64, device=packed.device) * 8
    words = (full.view(units, bits) << byte_shifts).sum(dim=1)  # (units,)
    shifts = torch.arange(8, dtype=torch.int64, device=packed.device) * bits
    codes = (words.unsqueeze(1) >> shifts) & (2**bits - 1)  # (units, 8)
    return codes.to(torch.uint8).reshape(-1)[:n]
