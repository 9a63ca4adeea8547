"""Randomized Hadamard rotation (RHT) of fixed-size blocks.

The rotation of a block ``v`` of length ``B`` (a power of two) is ``R v = H_B (s * v)`` where ``s`` is a
vector of random signs drawn from a seed and ``H_B`` the orthonormal Sylvester Hadamard matrix
(``H_B @ H_B == I``). It spreads an outlier over the whole block, so a blockwise absmax quantizer of the
rotated block loses much less precision on heavy-tailed data. The inverse is ``s * (H_B u)``.

``H_B`` is one dense matmul for ``B <= MAX_DENSE`` (256) and otherwise a product of dense Kronecker factors
(``H_{ab} = H_a (x) H_b``) of at most :data:`FACTOR` (64) rows, so the cost per element stays ``O(B)`` for
small blocks and ``O(FACTOR log B)`` for large ones. All arithmetic is fp32. Measured (16M fp32 elements,
2 AVX-512 cores): a dense matmul beats an eager radix-2 fast Walsh-Hadamard transform (7 full passes over
memory for B = 128) by >10x, so no FWHT is used.
"""

from __future__ import annotations

import math

import torch

from .base import CodecError

#: Blocks up to this size are rotated by one dense matmul (signs folded into the matrix).
MAX_DENSE = 256
#: Larger blocks are split into Kronecker factors of at most this order (measured fastest on AVX-512:
#: 1024 = 64 x 16 runs ~2x faster than 128 x 8 or one dense 1024 x 1024 matmul).
FACTOR = 64


def is_power_of_two(n: int) -> bool:
    """True for 1, 2, 4, 8, ..."""
    return n > 0 and n & (n - 1) == 0


def hadamard_matrix(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The orthonormal Sylvester Hadamard matrix of order ``n`` (a power of two), fp32 (n, n).

    Entries are ``+-1/sqrt(n)``; the matrix is symmetric and its own inverse. CodecError for other ``n``.
    """
    if not is_power_of_two(n):
        raise CodecError(f"Hadamard order must be a power of two, got {n}")
    h = torch.ones(1, 1, dtype=torch.float32)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), dim=1), torch.cat((h, -h), dim=1)), dim=0)  # (2m, 2m)
    return (h * (1.0 / math.sqrt(n))).to(device)


def random_signs(seed: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` random +-1.0 values (fp32) determined by ``seed`` alone, identical on every device."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    bits = torch.randint(0, 2, (n,), generator=gen, dtype=torch.int64)
    return (bits * 2 - 1).to(dtype=torch.float32, device=device)


def _factor_orders(n: int) -> list[int]:
    """Orders of the dense factors for a power of two: [n] up to MAX_DENSE, else FACTOR-wide factors
    with the remainder last (e.g. 4096 -> [64, 64], 2048 -> [64, 32])."""
    if n <= MAX_DENSE:
        return [n]
    orders = []
    while n > FACTOR:
        orders.append(FACTOR)
        n //= FACTOR
    orders.append(n)
    return orders


def hadamard_lastdim(x: torch.Tensor) -> torch.Tensor:
    """Apply the orthonormal Hadamard transform along the last dimension (a power of two) of fp32 ``x``.

    ``x``: (..., B) -> (..., B) fp32, a new tensor. Uses ``H_{ab} = H_a (x) H_b`` on a (..., a, b) view:
    a matmul by ``H_b`` on the last axis, then ``H_a`` applied to the second-to-last axis.
    """
    n = x.shape[-1]
    orders = _factor_orders(n)
    if len(orders) == 1:
        return x @ hadamard_matrix(n, x.device)
    b = orders[-1]
    a = n // b
    lead = x.shape[:-1]
    y = x.reshape(*lead, a, b) @ hadamard_matrix(b, x.device)  # (..., a, b): H_b on the last axis
    y = hadamard_lastdim(y.transpose(-1, -2))  # (..., b, a): H_a on the former second-to-last axis
    return y.transpose(-1, -2).reshape(*lead, n)  # (..., a, b) -> (..., B)


def rotate_blocks(x2d: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Forward RHT of each row: (nblocks, B) any float -> (nblocks, B) fp32, ``H (signs * row)``.

    For ``B <= MAX_DENSE`` the signs are folded into the matrix (``x @ (diag(s) H)``): one matmul, one pass.
    """
    n = x2d.shape[-1]
    if n <= MAX_DENSE:
        return x2d.float() @ (signs.unsqueeze(1) * hadamard_matrix(n, x2d.device))
    return hadamard_lastdim(x2d.float() * signs)


def unrotate_blocks(y2d: torch.Tensor, signs: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse RHT of each row: (nblocks, B) fp32 -> (nblocks, B), ``signs * (H row)``.

    Returns a new fp32 tensor, or writes into ``out`` (contiguous (nblocks, B), any float dtype) and returns
    it; an fp32 ``out`` receives the matmul result directly, without a temporary.
    """
    n = y2d.shape[-1]
    if n <= MAX_DENSE:
        m = hadamard_matrix(n, y2d.device) * signs  # (B, B): H diag(s)
        if out is not None and out.dtype == torch.float32:
            return torch.matmul(y2d.float(), m, out=out)
        res = y2d.float() @ m
    else:
        res = hadamard_lastdim(y2d.float())
        res.mul_(signs)
    return res if out is None else out.copy_(res)
