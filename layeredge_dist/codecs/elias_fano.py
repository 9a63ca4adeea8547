"""Elias-Fano coding of a strictly increasing set of indices, vectorized in torch.

``k`` sorted distinct indices in ``[0, n)`` are split into ``L = max(0, floor(log2(n / k)))`` low bits, packed
back to back (``k * L`` bits), and a high part ``idx >> L`` written in unary as a bitmap of
``k + (n >> L) + 1`` bits in which index ``i``'s one sits at position ``(idx_i >> L) + i``. That costs about
``2 + log2(n / k)`` bits per index, within ~0.56 bits of the information-theoretic minimum.

Layout of the encoded bytes (all bit orders LSB-first within a byte)::

    [low bits: ceil(k*L / 8) bytes][high bitmap: ceil((k + (n >> L) + 1) / 8) bytes]

``k == 0`` encodes to zero bytes. Padding bits must be zero; :func:`decode` rejects anything that is not the
canonical encoding of a valid index set with :class:`~layeredge_dist.codecs.base.CodecError`.

All work is done with tensor ops on the indices' device: no Python loop runs over elements (only over the
``L <= 63`` bit planes or the 8 bits of a byte).
"""

from __future__ import annotations

import torch

from .base import CodecError

#: Multiplier that gathers the low bit of each byte of an int64 word into bits 56..63 (LSB-first).
_GATHER_MAGIC = 0x0102040810204080


def low_bits(n: int, k: int) -> int:
    """Number of low bits ``L = max(0, floor(log2(n / k)))`` for ``k`` of ``n`` indices (0 when ``k == 0``)."""
    if k <= 0 or n <= 0:
        return 0
    return max(0, (n // k).bit_length() - 1)


def high_nbits(n: int, k: int) -> int:
    """Length in bits of the unary high-part bitmap: ``k + (n >> L) + 1`` (0 when ``k == 0``)."""
    if k <= 0:
        return 0
    return k + (n >> low_bits(n, k)) + 1


def section_nbytes(n: int, k: int) -> tuple[int, int]:
    """Bytes of the (low bits, high bitmap) sections for ``k`` of ``n`` indices."""
    if k <= 0:
        return 0, 0
    return (k * low_bits(n, k) + 7) // 8, (high_nbits(n, k) + 7) // 8


def encoded_nbytes(n: int, k: int) -> int:
    """Exact size in bytes of the Elias-Fano code of ``k`` of ``n`` indices."""
    lo, hi = section_nbytes(n, k)
    return lo + hi


def bits_per_index(n: int, k: int) -> float:
    """Exact bits per kept index, byte padding included (0 when ``k == 0``)."""
    return 8.0 * encoded_nbytes(n, k) / k if k > 0 else 0.0


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a 1-D tensor of 0/1 values (any integer or bool dtype) into bytes, LSB-first.

    Returns ``ceil(len / 8)`` uint8 bytes on the same device; the tail of the last byte is zero.
    """
    m = bits.numel()
    nbytes = (m + 7) // 8
    padded = torch.zeros(nbytes * 8, dtype=torch.uint8, device=bits.device)
    padded[:m] = bits
    words = padded.view(torch.int64)  # (nbytes,) one word holds the 8 bits of one output byte
    return ((words * _GATHER_MAGIC) >> 56).bitwise_and_(0xFF).to(torch.uint8)


def unpack_bits(data: torch.Tensor) -> torch.Tensor:
    """Unpack uint8 bytes into a 1-D uint8 tensor of ``8 * len(data)`` 0/1 values, LSB-first."""
    shifts = torch.arange(8, dtype=torch.uint8, device=data.device)
    return ((data.unsqueeze(1) >> shifts) & 1).reshape(-1)  # (len*8,)


def _pack_low(low: torch.Tensor, nbits: int) -> torch.Tensor:
    """Pack the ``nbits`` low bits of every value of ``low`` back to back (value-major, LSB-first)."""
    k = low.numel()
    if nbits == 0 or k == 0:
        return torch.empty(0, dtype=torch.uint8, device=low.device)
    work = low.to(torch.int32) if nbits <= 31 else low
    shifts = torch.arange(nbits, dtype=work.dtype, device=low.device)
    planes = ((work.unsqueeze(1) >> shifts) & 1).to(torch.uint8)  # (k, nbits): bit j of value i
    return pack_bits(planes.reshape(-1))


def _unpack_low(data: torch.Tensor, k: int, nbits: int) -> torch.Tensor:
    """Inverse of :func:`_pack_low` (int64 values); raises CodecError when a padding bit is set."""
    if nbits == 0 or k == 0:
        return torch.zeros(k, dtype=torch.int64, device=data.device)
    bits = unpack_bits(data)
    if bool(bits[k * nbits :].any()):
        raise CodecError("elias-fano: nonzero padding bits after the low-bit section")
    planes = bits[: k * nbits].view(k, nbits)  # (k, nbits): bit j of value i
    if nbits <= 24:  # one matrix-vector product, exact in fp32 below 2^24
        weights = torch.pow(2.0, torch.arange(nbits, dtype=torch.float32, device=data.device))  # (nbits,)
        return (planes.to(torch.float32) @ weights).to(torch.int64)
    low = torch.zeros(k, dtype=torch.int64, device=data.device)
    for j in range(nbits):  # very sparse sets only (n/k >= 2^25): loop over bit planes, not elements
        low |= planes[:, j].to(torch.int64) << j
    return low


def encode(indices: torch.Tensor, n: int) -> torch.Tensor:
    """Elias-Fano code of ``indices`` (1-D, integer, strictly increasing, all in ``[0, n)``).

    Returns a 1-D uint8 tensor of :func:`encoded_nbytes` ``(n, len(indices))`` bytes on the indices' device.
    Raises CodecError when the indices are not a strictly increasing subset of ``[0, n)``.
    """
    if indices.dim() != 1:
        raise CodecError(f"elias-fano: indices must be 1-D, got shape {tuple(indices.shape)}")
    k = indices.numel()
    if k == 0:
        return torch.empty(0, dtype=torch.uint8, device=indices.device)
    if k > n:
        raise CodecError(f"elias-fano: {k} indices do not fit in a universe of {n}")
    idx = indices.to(torch.int64)
    _check_index_set(idx, n)
    L = low_bits(n, k)
    lo = _pack_low(idx & ((1 << L) - 1), L)
    positions = (idx >> L) + torch.arange(k, dtype=torch.int64, device=idx.device)  # (k,)
    bitmap = torch.zeros(high_nbits(n, k), dtype=torch.uint8, device=idx.device)
    bitmap[positions] = 1
    return torch.cat([lo, pack_bits(bitmap)])


def decode(data: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Decode ``k`` indices of a universe of ``n`` from ``data`` (1-D uint8, exactly :func:`encoded_nbytes`).

    Returns a strictly increasing int64 tensor on ``data``'s device. Raises CodecError naming the first
    problem found: wrong length, set padding bits, a bitmap population count other than ``k``, indices
    that do not increase or fall outside ``[0, n)``.
    """
    if k < 0 or k > n:
        raise CodecError(f"elias-fano: k={k} is outside [0, n={n}]")
    lo_nb, hi_nb = section_nbytes(n, k)
    if data.dtype != torch.uint8 or data.dim() != 1 or data.numel() != lo_nb + hi_nb:
        raise CodecError(
            f"elias-fano: expected {lo_nb + hi_nb} bytes for k={k} of n={n}, got {data.numel()} "
            f"({data.dtype}, {data.dim()}-D)"
        )
    if k == 0:
        return torch.empty(0, dtype=torch.int64, device=data.device)
    L = low_bits(n, k)
    low = _unpack_low(data[:lo_nb], k, L)
    bits = unpack_bits(data[lo_nb:])
    nbits = high_nbits(n, k)
    ones = int(bits.sum())
    if ones != k:
        raise CodecError(f"elias-fano: high bitmap has {ones} set bits, expected k={k}")
    if bool(bits[nbits:].any()):
        raise CodecError(f"elias-fano: set padding bits after the {nbits}-bit high bitmap")
    positions = bits.nonzero().squeeze(1)  # (k,) increasing
    high = positions - torch.arange(k, dtype=torch.int64, device=data.device)
    idx = (high << L) | low
    _check_index_set(idx, n)
    return idx


def _check_index_set(idx: torch.Tensor, n: int) -> None:
    """Raise CodecError unless ``idx`` (int64, non-empty) is strictly increasing within ``[0, n)``."""
    if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
        raise CodecError("elias-fano: indices are not strictly increasing")
    first, last = int(idx[0]), int(idx[-1])
    if first < 0 or last >= n:
        raise CodecError(f"elias-fano: index range [{first}, {last}] falls outside [0, {n})")
