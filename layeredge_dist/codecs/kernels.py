"""Core blockwise absmax quantize/dequantize kernels, eager and ``torch.compile``d.

Quantization (midrise, all ``2**bits`` levels) of a block ``v`` of ``B`` values:
``A = max|v|`` (fp32), ``c = (2**bits - 1) / 2``, ``step = A / c``;
code ``j = clamp(floor(v * (c / A)) + 2**(bits-1), 0, 2**bits - 1)``, which is ``v / step + c`` rounded
half up (``c`` is a half-integer, so ``round_half_up(y + c) == floor(y) + c + 1/2``); stochastic rounding
uses ``j = clamp(floor(v * (c / A) + c + u), ...)`` with ``u ~ U[0, 1)``, which is unbiased. Decoding gives
``(j - c) * step``; a block with ``A == 0`` decodes to zeros, and so does a block with
``A < FLUSH_BELOW`` (2**-120), whose ``c / A`` would overflow: its scale is stored as 0. ``A`` is NaN/Inf
exactly when the block holds a NaN/Inf, which is how callers detect bad input without a separate pass.

The block kernels work on 2-D block views ``(nblocks, B)`` whose block size ``B`` is a multiple of the
packing unit (see :mod:`.packing`) and write each block's packed codes, in the lane-interleaved layout, into
the caller's buffer. Internally they see 4-D *group views* ``(nblocks, groups, rows, lanes)`` whose last two
sizes are compile-time constants, so the compiled loops need no integer division for indexing.

Fast path: for ``numel >= COMPILE_MIN_NUMEL`` the bodies run under ``torch.compile(dynamic=True)`` (the
number of blocks and groups stay symbolic: one compile serves every tensor size and block size), which
fuses absmax, scaling, rounding and bit-packing into one pass per block (no intermediates in memory).
Whether to compile is decided at every call: never when the environment variable
``LAYEREDGE_NO_COMPILE=1`` is set (read at call time). If compiling or running the compiled kernel fails,
a warning is issued once and the eager path is used from then on. Compiled code is persisted: before the
first compile the inductor cache directory defaults to ``$XDG_CACHE_HOME/layeredge/inductor``
(``~/.cache/layeredge/inductor``) unless ``TORCHINDUCTOR_CACHE_DIR`` is set, and the FX graph cache is
switched on, so a new process reuses the compiled kernels. The eager path works on chunks of about
:data:`EAGER_CHUNK_NUMEL` elements to keep its scratch buffers in cache. Compiled and eager paths produce
bit-identical payloads for deterministic rounding.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable

import torch

from .packing import block_lanes, bytes_per_unit, codes_per_unit, pack_units, unpack_units

#: Tensors with at least this many elements use the compiled kernels (unless disabled).
COMPILE_MIN_NUMEL = 1 << 20
#: Set to "1" to force the eager kernels (read at every call).
ENV_NO_COMPILE = "LAYEREDGE_NO_COMPILE"
#: The eager kernels process about this many elements at a time (keeps scratch buffers in cache).
EAGER_CHUNK_NUMEL = 1 << 18

_compile_state: dict[str, bool] = {"cache_configured": False, "broken": False}

#: Blocks whose absmax is below this (2**-120 ~ 7.5e-37) are flushed to zero (scale 0): for them c / A
#: would overflow fp32. The absolute error this adds is below the threshold.
FLUSH_BELOW = 2.0**-120

# Adding 2**23 to an integer-valued float v in [0, 2**23) puts v in the low mantissa bits, so the code is
# the float's least significant byte: a cheap float -> uint8 conversion (eager torch's own cast runs at a
# fraction of memory speed, and the bitcast form also compiles to faster code than a clamp and a cast).
_MAGIC = float(2**23)
_LOW_BYTE = 0 if sys.byteorder == "little" else 3


def half_range(bits: int) -> float:
    """``c = (2**bits - 1) / 2``: codes span ``[-c, c]`` steps around zero (127.5 for int8)."""
    return (2**bits - 1) / 2.0


# ---- unpacked codes (ragged tails, unaligned block sizes) ----------------------------------------------


def _scales_and_inv(xf: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block absmax ``A`` (raw, not yet flushed) and code scale ``c / A`` (0 where ``A`` is below
    FLUSH_BELOW or NaN), reduced over all dims but the first and kept broadcastable: (nblocks, 1, ...)."""
    dims = tuple(range(1, xf.dim()))
    amax = xf.abs().amax(dim=dims, keepdim=True)  # (nblocks, 1, ...)
    return amax, _inv_scale(amax, bits)


def _flush_tiny(amax: torch.Tensor) -> torch.Tensor:
    """Scales as stored: absmax values below FLUSH_BELOW become 0 (NaN and Inf pass through)."""
    return torch.where(amax < FLUSH_BELOW, 0.0, amax)


def _inv_scale(amax: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes per unit of x, ``c / A``; 0 where ``A < FLUSH_BELOW`` or NaN (every code is then the midpoint,
    which decodes to exactly 0 with the flushed scale 0)."""
    # The literal, not the global: dynamo would turn a global float into a runtime input of the kernel.
    return torch.where(amax >= 2.0**-120, amax.reciprocal() * half_range(bits), 0.0)


def _codes(xf: torch.Tensor, inv: torch.Tensor, noise: torch.Tensor | None, bits: int) -> torch.Tensor:
    """int32 codes, same shape as ``xf``: ``floor(x * c/A) + 2**(bits-1)`` (deterministic) or
    ``clamp(floor(x * c/A + c + u), 0, 2**bits - 1)`` (stochastic, ``noise`` is ``u``).

    The deterministic code needs no clamp: ``|x| <= A`` gives ``|x * c/A| <= c (1 + 2**-21)``, and ``c`` is
    a half-integer, so the floor stays in ``[-2**(bits-1), 2**(bits-1) - 1]``. The float -> uint8
    conversion goes through the low byte of ``code + 2**23`` (a bitcast), which vectorizes well; the
    codes stay int32 because the packers shift them in int32 anyway (uint8 round trips cost time).
    """
    # 2.0**23 is _MAGIC written as a literal: dynamo would turn a global float into a runtime kernel input.
    if noise is None:
        y = torch.floor(xf * inv) + (float(2 ** (bits - 1)) + 2.0**23)
    else:
        y = torch.floor(xf * inv + (noise + half_range(bits))).clamp(0.0, float(2**bits - 1)) + 2.0**23
    return y.view(torch.int32) & 255


@torch.no_grad()
def quantize_codes(x2d: torch.Tensor, bits: int, noise: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize rows of ``x2d`` (nblocks, B) -> (scales (nblocks,) fp32, codes (nblocks, B) uint8), unpacked.

    Eager, any ``B``; used for ragged tails and block sizes that do not align with the packing unit.
    ``noise``: (nblocks, B) U[0, 1) fp32 for stochastic rounding or None.
    """
    xf = x2d.float()
    amax, inv = _scales_and_inv(xf, bits)
    return _flush_tiny(amax.view(-1)), _codes(xf, inv, noise, bits).to(torch.uint8)


@torch.no_grad()
def dequantize_codes(codes2d: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`quantize_codes`: codes (nblocks, B) uint8, scales (nblocks,) -> (nblocks, B) fp32."""
    c = half_range(bits)
    step = (scales / c).unsqueeze(1)  # (nblocks, 1)
    return (codes2d.float() - c) * step


# ---- fused bodies on group views (compiled as they are, or run eagerly as a fallback) -------------------


def _quant_pack_body(x4: torch.Tensor, noise4: torch.Tensor | None, packed4: torch.Tensor,
                     bits: int) -> torch.Tensor:
    """Quantize blocks x4 (nblocks, groups, cpu, L) into packed4 (nblocks, groups, bpu, L); return the raw
    absmax A (nblocks,) (the caller flushes tiny values)."""
    xf = x4.float()
    amax, inv = _scales_and_inv(xf, bits)  # (nblocks, 1, 1, 1)
    pack_units(_codes(xf, inv, noise4, bits), bits, out=packed4)
    return amax.view(-1)


def _dequant_body(packed4: torch.Tensor, scales: torch.Tensor, out4: torch.Tensor, bits: int) -> None:
    """Decode packed4 (nblocks, groups, bpu, L) with scales (nblocks,) into out4 (nblocks, groups, cpu, L)."""
    codes = unpack_units(packed4, bits)  # (nblocks, groups, cpu, L)
    c = half_range(bits)
    step = (scales / c).view(-1, 1, 1, 1)  # (nblocks, 1, 1, 1)
    out4.copy_((codes.float() - c) * step)


# One top-level function per (direction, bits, rounding): dynamo keys its cache on the code object and
# limits recompiles per code object, so sharing one function across bit widths would exhaust it.
def _enc8(x4: torch.Tensor, packed4: torch.Tensor) -> torch.Tensor:
    return _quant_pack_body(x4, None, packed4, 8)


def _enc4(x4: torch.Tensor, packed4: torch.Tensor) -> torch.Tensor:
    return _quant_pack_body(x4, None, packed4, 4)


def _enc3(x4: torch.Tensor, packed4: torch.Tensor) -> torch.Tensor:
    return _quant_pack_body(x4, None, packed4, 3)


def _enc2(x4: torch.Tensor, packed4: torch.Tensor) -> torch.Tensor:
    return _quant_pack_body(x4, None, packed4, 2)


def _enc8_sr(x4: torch.Tensor, noise4: torch.Tensor, packed4: torch.Tensor) -> torch.Tensor:
    return _quant_pack_body(x4, noise4, packed4, 8)


def _enc4_sr(x4: torch.Tensor, noise4: torch.Tensor, packed4: torch.Tensor) -> torch.Tensor:
    return _quant_pack_body(x4, noise4, packed4, 4)


def _enc3_sr(x4: torch.Tensor, noise4: torch.Tensor, packed4: torch.Tensor) -> torch.Tensor:
    return _quant_pack_body(x4, noise4, packed4, 3)


def _enc2_sr(x4: torch.Tensor, noise4: torch.Tensor, packed4: torch.Tensor) -> torch.Tensor:
    return _quant_pack_body(x4, noise4, packed4, 2)


def _dec8(packed4: torch.Tensor, scales: torch.Tensor, out4: torch.Tensor) -> None:
    _dequant_body(packed4, scales, out4, 8)


def _dec4(packed4: torch.Tensor, scales: torch.Tensor, out4: torch.Tensor) -> None:
    _dequant_body(packed4, scales, out4, 4)


def _dec3(packed4: torch.Tensor, scales: torch.Tensor, out4: torch.Tensor) -> None:
    _dequant_body(packed4, scales, out4, 3)


def _dec2(packed4: torch.Tensor, scales: torch.Tensor, out4: torch.Tensor) -> None:
    _dequant_body(packed4, scales, out4, 2)


_ENC: dict[int, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {8: _enc8, 4: _enc4, 3: _enc3, 2: _enc2}
_ENC_SR: dict[int, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    8: _enc8_sr, 4: _enc4_sr, 3: _enc3_sr, 2: _enc2_sr,
}
_DEC: dict[int, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]] = {8: _dec8, 4: _dec4, 3: _dec3, 2: _dec2}


# ---- eager kernels (fewer passes, bounded scratch) --------------------------------------------------------


def _absmax_rows(xf: torch.Tensor) -> torch.Tensor:
    """max|x| per row of (nblocks, B) -> (nblocks, 1) fp32; NaN if the row has a NaN, +0.0 for zero rows.

    max(max(x), -min(x)) is several times faster in eager torch than abs().amax() over short rows.
    """
    hi = xf.amax(dim=1, keepdim=True)  # (nblocks, 1)
    lo = xf.amin(dim=1, keepdim=True)  # (nblocks, 1)
    return torch.maximum(hi, lo.neg_()).abs_()  # abs_ turns -0.0 into +0.0, as abs().amax() gives


def _quant_pack_eager(x2d: torch.Tensor, noise: torch.Tensor | None, packed4: torch.Tensor,
                      bits: int) -> torch.Tensor:
    """Eager twin of :func:`_quant_pack_body` on (nblocks, B) rows; bit-identical for deterministic rounding."""
    nblocks, bsz = x2d.shape
    xf = x2d.float()
    amax = _absmax_rows(xf)  # (nblocks, 1), raw
    inv = _inv_scale(amax, bits)  # (nblocks, 1)
    y = torch.mul(xf, inv)  # (nblocks, B) fp32 scratch
    if noise is None:
        y.floor_().add_(float(2 ** (bits - 1)) + _MAGIC)  # code + 2**23, exactly (see _codes)
    else:
        y.add_(noise + half_range(bits)).floor_().clamp_(0.0, float(2**bits - 1)).add_(_MAGIC)
    codes = y.view(torch.uint8).view(nblocks, bsz, 4)[..., _LOW_BYTE]  # (nblocks, B) uint8, strided view
    if bits == 8:
        packed4.view(nblocks, bsz).copy_(codes)
    else:
        groups = codes.reshape(nblocks, -1, codes_per_unit(bits), packed4.shape[-1])  # (nblocks, g, cpu, L) view
        pack_units(groups, bits, out=packed4)
    return amax.view(nblocks)


def _dequant_eager(packed4: torch.Tensor, scales: torch.Tensor, out4: torch.Tensor, bits: int) -> None:
    """Eager twin of :func:`_dequant_body`; works in place in ``out4`` when it is fp32."""
    codes = unpack_units(packed4, bits)  # (nblocks, groups, cpu, L) uint8
    step = (scales / half_range(bits)).view(-1, 1, 1, 1)  # (nblocks, 1, 1, 1)
    work = out4 if out4.dtype == torch.float32 else torch.empty(out4.shape, device=out4.device)
    work.copy_(codes)
    work.sub_(half_range(bits)).mul_(step)
    if work is not out4:
        out4.copy_(work)


def _row_chunks(nrows: int, bsz: int) -> list[tuple[int, int]]:
    """Row ranges [start, stop) of about EAGER_CHUNK_NUMEL elements each."""
    step = max(1, EAGER_CHUNK_NUMEL // max(bsz, 1))
    return [(i, min(i + step, nrows)) for i in range(0, nrows, step)]


# ---- compile management -----------------------------------------------------------------------------------


def compile_enabled(numel: int) -> bool:
    """Whether a tensor of ``numel`` elements takes the compiled path now (reads the environment each call)."""
    if os.environ.get(ENV_NO_COMPILE, "").strip().lower() in ("1", "true", "yes"):
        return False
    return numel >= COMPILE_MIN_NUMEL and not _compile_state["broken"]


def default_cache_dir() -> str:
    """Per-user directory for persisted compiled kernels: ``$XDG_CACHE_HOME/layeredge/inductor``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "layeredge", "inductor")


def _configure_compile_cache() -> None:
    """Point inductor at a persistent per-user cache (unless the user chose one) and enable the FX cache."""
    if _compile_state["cache_configured"]:
        return
    _compile_state["cache_configured"] = True
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = default_cache_dir()
    try:
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
    except Exception:  # pragma: no cover - inductor missing: compiling fails and falls back anyway
        pass


@functools.cache
def _compiled(fn: Callable[..., object]) -> Callable[..., object]:
    """The ``torch.compile(dynamic=True)`` wrapper of ``fn`` (compiles lazily, at its first call)."""
    _configure_compile_cache()
    return torch.compile(fn, dynamic=True)


def _run_compiled(fn: Callable[..., object], tensors: tuple[torch.Tensor, ...]) -> tuple[bool, object]:
    """Run ``fn(*tensors)`` compiled; on any failure warn once, disable compiling, return ``(False, None)``."""
    for t in tensors:
        if t.dim() == 4:  # rows and lanes of the group views are compile-time constants
            torch._dynamo.mark_static(t, 2)
            torch._dynamo.mark_static(t, 3)
    try:
        return True, _compiled(fn)(*tensors)
    except Exception as exc:  # noqa: BLE001 - any compiler/toolchain failure means: use eager
        if not _compile_state["broken"]:
            _compile_state["broken"] = True
            warnings.warn(
                f"layeredge: torch.compile of the quantization kernels failed ({type(exc).__name__}: {exc}); "
                f"using the slower eager kernels. Set {ENV_NO_COMPILE}=1 to skip compiling.",
                RuntimeWarning,
                stacklevel=3,
            )
        return False, None


def _group_view(t2d: torch.Tensor, rows: int, lanes: int) -> torch.Tensor:
    """View (nblocks, W) as (nblocks, W / (rows * lanes), rows, lanes)."""
    return t2d.view(t2d.shape[0], -1, rows, lanes)


# ---- public entry points ----------------------------------------------------------------------------------


@torch.no_grad()
def quantize_pack(x2d: torch.Tensor, bits: int, packed_out: torch.Tensor,
                  noise: torch.Tensor | None = None, use_compile: bool | None = None) -> torch.Tensor:
    """Quantize the rows of ``x2d`` (nblocks, B) and pack the codes into ``packed_out``.

    ``x2d``: contiguous fp32/fp16/bf16; ``B`` a multiple of ``packing.codes_per_unit(bits)``.
    ``packed_out``: contiguous (nblocks, B * bits / 8) uint8, overwritten; row ``i`` holds block ``i``'s
    codes in the lane-interleaved layout with ``packing.block_lanes(B, bits)`` lanes. ``noise``:
    (nblocks, B) fp32 in [0, 1) for stochastic rounding, or None for round-half-up. ``use_compile``: force
    (True/False) or decide by size and environment (None).
    Returns the scales A (nblocks,) fp32; a NaN/Inf scale marks a block that held NaN/Inf (its codes are
    then meaningless). Never raises for bad values; the caller checks the scales.
    """
    nblocks, bsz = x2d.shape
    cpu, bpu, lanes = codes_per_unit(bits), bytes_per_unit(bits), block_lanes(bsz, bits)
    use_compiled = compile_enabled(x2d.numel()) if use_compile is None else use_compile
    if use_compiled and nblocks:
        x4 = _group_view(x2d, cpu, lanes)  # (nblocks, groups, cpu, L)
        p4 = _group_view(packed_out, bpu, lanes)  # (nblocks, groups, bpu, L)
        if noise is None:
            ok, amax = _run_compiled(_ENC[bits], (x4, p4))
        else:
            ok, amax = _run_compiled(_ENC_SR[bits], (x4, _group_view(noise, cpu, lanes), p4))
        if ok:
            assert isinstance(amax, torch.Tensor)
            return _flush_tiny(amax)
    parts = [
        _quant_pack_eager(x2d[a:b], None if noise is None else noise[a:b],
                          _group_view(packed_out[a:b], bpu, lanes), bits)
        for a, b in _row_chunks(nblocks, bsz)
    ]
    if not parts:
        return torch.empty(0, dtype=torch.float32, device=x2d.device)
    return _flush_tiny(parts[0] if len(parts) == 1 else torch.cat(parts))


@torch.no_grad()
def unpack_dequantize(packed2d: torch.Tensor, scales: torch.Tensor, bits: int, out2d: torch.Tensor,
                      use_compile: bool | None = None) -> torch.Tensor:
    """Dequantize packed rows into ``out2d`` (nblocks, B) of any float dtype, contiguous; returns ``out2d``.

    ``packed2d``: (nblocks, B * bits / 8) uint8 as written by :func:`quantize_pack`; ``scales``: (nblocks,)
    fp32, finite and >= 0 (the caller validates). ``use_compile`` as in :func:`quantize_pack`.
    """
    nblocks, bsz = out2d.shape
    cpu, bpu, lanes = codes_per_unit(bits), bytes_per_unit(bits), block_lanes(bsz, bits)
    use_compiled = compile_enabled(out2d.numel()) if use_compile is None else use_compile
    if use_compiled and nblocks:
        args = (_group_view(packed2d, bpu, lanes), scales, _group_view(out2d, cpu, lanes))
        ok, _ = _run_compiled(_DEC[bits], args)
        if ok:
            return out2d
    for a, b in _row_chunks(nblocks, bsz):
        _dequant_eager(_group_view(packed2d[a:b], bpu, lanes), scales[a:b],
                       _group_view(out2d[a:b], cpu, lanes), bits)
    return out2d
