"""Bit-packing, the Hadamard rotation and the quantization kernels (eager, chunked, compiled, fallback)."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layeredge_dist.codecs import kernels
from layeredge_dist.codecs.base import CodecError
from layeredge_dist.codecs.hadamard import (
    hadamard_lastdim,
    hadamard_matrix,
    is_power_of_two,
    random_signs,
    rotate_blocks,
    unrotate_blocks,
)
from layeredge_dist.codecs.packing import (
    LANES,
    block_lanes,
    bytes_per_unit,
    codes_per_unit,
    pack_flat,
    pack_units,
    packed_nbytes,
    unpack_flat,
    unpack_units,
)
from layeredge_dist.codecs.quant import IntQuantCodec
from layeredge_dist.codecs.spec import parse_spec

BITS = (8, 4, 3, 2)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_codes(n: int, bits: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 2**bits, (n,), generator=gen(seed), dtype=torch.uint8)


# ---- packing ----------------------------------------------------------------------------------------------


def test_units_and_sizes() -> None:
    assert [(codes_per_unit(b), bytes_per_unit(b)) for b in BITS] == [(1, 1), (2, 1), (8, 3), (4, 1)]
    assert [packed_nbytes(10, b) for b in BITS] == [10, 5, 6, 3]
    assert [packed_nbytes(0, b) for b in BITS] == [0, 0, 0, 0]
    assert packed_nbytes(9, 3) == 6 and packed_nbytes(8, 3) == 3
    with pytest.raises(CodecError, match="unsupported code width 5"):
        packed_nbytes(3, 5)


def test_sequential_bit_layout() -> None:
    # code i of a unit sits at bits [b*i, b*(i+1)) of the unit's little-endian integer
    assert pack_flat(torch.tensor([1, 2], dtype=torch.uint8), 4).tolist() == [0x21]
    assert pack_flat(torch.tensor([1, 2, 3, 0, 3], dtype=torch.uint8), 2).tolist() == [0b00111001, 0b11]
    codes = torch.tensor([1, 2, 3, 4, 5, 6, 7, 0], dtype=torch.uint8)
    word = sum(int(c) << (3 * i) for i, c in enumerate(codes))
    assert pack_flat(codes, 3).tolist() == list(word.to_bytes(3, "little"))
    assert pack_flat(torch.tensor([7], dtype=torch.uint8), 3).tolist() == [7, 0, 0]
    assert pack_flat(torch.tensor([200, 3], dtype=torch.uint8), 8).tolist() == [200, 3]


def test_lane_interleaved_layout() -> None:
    # 16 lanes: codes viewed as (cpu, 16); unit j is column j; its bytes are stored as rows of 16
    codes = random_codes(2 * LANES, 4, 1)
    packed = pack_units(codes.view(2, LANES), 4).view(-1)
    assert packed.tolist() == [int(codes[j]) | int(codes[LANES + j]) << 4 for j in range(LANES)]
    codes3 = random_codes(8 * LANES, 3, 2)
    p3 = pack_units(codes3.view(8, LANES), 3)  # (3, 16)
    for j in (0, 5, 15):
        word = sum(int(codes3[i * LANES + j]) << (3 * i) for i in range(8))
        assert [int(p3[p, j]) for p in range(3)] == list(word.to_bytes(3, "little"))


@pytest.mark.parametrize("bits", BITS)
def test_flat_round_trip_every_length(bits: int) -> None:
    for n in list(range(0, 40)) + [127, 128, 129, 1001]:
        codes = random_codes(n, bits, n)
        packed = pack_flat(codes, bits)
        assert packed.numel() == packed_nbytes(n, bits)
        assert torch.equal(unpack_flat(packed, n, bits), codes), n


@pytest.mark.parametrize("bits", BITS)
def test_unit_round_trip_with_lanes(bits: int) -> None:
    for lanes in (1, LANES):
        codes = random_codes(3 * 5 * codes_per_unit(bits) * lanes, bits).view(3, 5, codes_per_unit(bits), lanes)
        packed = pack_units(codes, bits)
        assert packed.shape == (3, 5, bytes_per_unit(bits), lanes)
        assert torch.equal(unpack_units(packed, bits), codes)


def test_block_lanes() -> None:
    assert [block_lanes(128, b) for b in BITS] == [16, 16, 16, 16]
    assert [block_lanes(64, b) for b in BITS] == [16, 16, 1, 16]
    assert block_lanes(24, 8) == 1 and block_lanes(32, 2) == 1


def test_flat_errors() -> None:
    with pytest.raises(CodecError, match="1-D uint8"):
        pack_flat(torch.zeros(4, dtype=torch.int32), 4)
    with pytest.raises(CodecError, match="out must be 1-D uint8 of 2 B"):
        pack_flat(torch.zeros(4, dtype=torch.uint8), 4, out=torch.empty(3, dtype=torch.uint8))
    with pytest.raises(CodecError, match="expected 1-D uint8 of 2 B for 4 4-bit codes"):
        unpack_flat(torch.zeros(3, dtype=torch.uint8), 4, 4)


def test_pack_flat_into_out() -> None:
    codes = random_codes(9, 3)
    out = torch.empty(6, dtype=torch.uint8)
    assert pack_flat(codes, 3, out=out) is out and torch.equal(out, pack_flat(codes, 3))
    raw = random_codes(5, 8)
    assert pack_flat(raw, 8).data_ptr() != raw.data_ptr()  # never aliases its input


# ---- Hadamard -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 4, 64, 128, 256])
def test_hadamard_matrix_is_orthonormal_and_symmetric(n: int) -> None:
    h = hadamard_matrix(n)
    assert torch.allclose(h @ h, torch.eye(n), atol=1e-6) and torch.equal(h, h.t())
    assert torch.allclose(h.abs(), torch.full((n, n), 1 / math.sqrt(n)))
    assert float(h[0].sum()) == pytest.approx(math.sqrt(n), rel=1e-6)  # first row all positive


def test_hadamard_rejects_non_powers_of_two() -> None:
    assert [is_power_of_two(n) for n in (0, 1, 2, 3, 96, 4096)] == [False, True, True, False, False, True]
    with pytest.raises(CodecError, match="power of two, got 96"):
        hadamard_matrix(96)


@pytest.mark.parametrize("n", [256, 1024, 4096, 32768])
def test_factored_transform_equals_dense(n: int) -> None:
    x = torch.randn(3, n, generator=gen(n))
    y = hadamard_lastdim(x)
    if n <= 4096:
        assert torch.allclose(y, x @ hadamard_matrix(n), atol=1e-4)
    assert torch.allclose(y.norm(dim=1), x.norm(dim=1), rtol=1e-5)
    assert torch.allclose(hadamard_lastdim(y), x, atol=1e-4)


@pytest.mark.parametrize("n", [2, 8, 128, 512, 4096])
def test_rotation_round_trip(n: int) -> None:
    x = torch.randn(5, n, generator=gen(1)).to(torch.bfloat16)
    s = random_signs(123, n)
    y = rotate_blocks(x, s)
    assert y.dtype == torch.float32
    assert torch.allclose(unrotate_blocks(y, s), x.float(), atol=1e-5)


def test_rotation_spreads_an_outlier() -> None:
    x = torch.zeros(1, 128)
    x[0, 17] = 100.0
    y = rotate_blocks(x, random_signs(7, 128))
    assert torch.allclose(y.abs(), torch.full((1, 128), 100 / math.sqrt(128)), rtol=1e-6)


def test_random_signs_depend_on_the_seed_only() -> None:
    a = random_signs(5, 64)
    assert torch.equal(a, random_signs(5, 64)) and not torch.equal(a, random_signs(6, 64))
    assert set(a.tolist()) == {-1.0, 1.0}
    assert torch.equal(random_signs(2**32 - 1, 8), random_signs(2**32 - 1, 8))


# ---- quantization kernels -----------------------------------------------------------------------------------


def reference_quantize(x2d: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight from the definition: A = max|x|, c = (2^b-1)/2, j = clamp(round_half_up(x c / A + c))."""
    a = x2d.float().abs().amax(dim=1, keepdim=True)
    c = (2**bits - 1) / 2
    inv = torch.where(a > 0, c / a, torch.zeros_like(a))
    j = torch.floor(x2d.float() * inv + c + 0.5).clamp(0, 2**bits - 1).to(torch.uint8)
    return a.view(-1), j


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("bsz", [32, 64, 128, 256])
def test_eager_block_kernel_matches_reference_and_layout(bits: int, bsz: int) -> None:
    if bsz % codes_per_unit(bits):
        pytest.skip("block not a multiple of the packing unit")
    x = torch.randn(37, bsz, generator=gen(bits)) * 4
    packed = torch.empty(37, bsz * bits // 8, dtype=torch.uint8)
    scales = kernels.quantize_pack(x, bits, packed, use_compile=False)
    ref_a, ref_j = reference_quantize(x, bits)
    assert torch.equal(scales, ref_a)
    lanes = block_lanes(bsz, bits)
    codes = unpack_units(packed.view(37, -1, bytes_per_unit(bits), lanes), bits).reshape(37, bsz)
    # x * (c / A) vs the reference's rounding may differ by one ulp at a level boundary
    assert int((codes.int() - ref_j.int()).abs().max()) <= 1
    assert float((codes != ref_j).float().mean()) < 1e-3
    s2, c2 = kernels.quantize_codes(x, bits)
    assert torch.equal(s2, scales) and torch.equal(c2, codes)
    out = torch.empty(37, bsz)
    kernels.unpack_dequantize(packed, scales, bits, out, use_compile=False)
    assert torch.equal(out, kernels.dequantize_codes(codes, scales, bits))
    for dtype in (torch.float16, torch.bfloat16):
        half = torch.empty(37, bsz, dtype=dtype)
        kernels.unpack_dequantize(packed, scales, bits, half, use_compile=False)
        assert torch.equal(half, out.to(dtype))


@pytest.mark.parametrize("bits", BITS)
def test_eager_stochastic_kernel_matches_unpacked_path(bits: int) -> None:
    x = torch.randn(20, 128, generator=gen(1))
    noise = torch.rand(20, 128, generator=gen(2))
    packed = torch.empty(20, 16 * bits, dtype=torch.uint8)
    scales = kernels.quantize_pack(x, bits, packed, noise, use_compile=False)
    s2, codes = kernels.quantize_codes(x, bits, noise)
    got = unpack_units(packed.view(20, -1, bytes_per_unit(bits), 16), bits).reshape(20, 128)
    assert torch.equal(scales, s2)
    assert int((got.int() - codes.int()).abs().max()) <= 1  # fused vs separate add: one rounding apart
    assert float((got != codes).float().mean()) < 1e-3


@pytest.mark.parametrize("bits", BITS)
def test_eager_chunking_is_invisible(bits: int, monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(300, 64, generator=gen(3)).to(torch.bfloat16)
    whole = torch.empty(300, 8 * bits, dtype=torch.uint8)
    s_whole = kernels.quantize_pack(x, bits, whole, use_compile=False)
    out_whole = torch.empty(300, 64, dtype=torch.bfloat16)
    kernels.unpack_dequantize(whole, s_whole, bits, out_whole, use_compile=False)
    monkeypatch.setattr(kernels, "EAGER_CHUNK_NUMEL", 64 * 7)  # 7 rows per chunk, ragged last chunk
    assert len(kernels._row_chunks(300, 64)) == 43
    chunked = torch.empty_like(whole)
    s_chunked = kernels.quantize_pack(x, bits, chunked, use_compile=False)
    out_chunked = torch.empty_like(out_whole)
    kernels.unpack_dequantize(chunked, s_chunked, bits, out_chunked, use_compile=False)
    assert torch.equal(chunked, whole) and torch.equal(s_chunked, s_whole) and torch.equal(out_chunked, out_whole)


def test_kernels_report_nan_and_inf_through_the_scales() -> None:
    x = torch.randn(4, 128)
    x[1, 5], x[3, 0] = float("nan"), float("-inf")
    packed = torch.empty(4, 64, dtype=torch.uint8)
    s = kernels.quantize_pack(x, 4, packed, use_compile=False)
    assert bool(torch.isfinite(s[[0, 2]]).all()) and bool(torch.isnan(s[1])) and s[3] == float("inf")


def test_zero_rows_are_positive_zero_scales() -> None:
    x = torch.zeros(3, 128)
    x[1] = -0.0
    s = kernels.quantize_pack(x, 8, torch.empty(3, 128, dtype=torch.uint8), use_compile=False)
    assert not bool(torch.signbit(s).any())


# ---- compile management ---------------------------------------------------------------------------------------


def test_compile_decision_reads_the_environment_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(kernels._compile_state, "broken", False)
    monkeypatch.setenv("LAYEREDGE_NO_COMPILE", "1")
    assert not kernels.compile_enabled(1 << 24)
    monkeypatch.delenv("LAYEREDGE_NO_COMPILE")
    assert kernels.compile_enabled(1 << 20) and not kernels.compile_enabled((1 << 20) - 1)
    monkeypatch.setenv("LAYEREDGE_NO_COMPILE", "0")
    assert kernels.compile_enabled(1 << 20)
    monkeypatch.setitem(kernels._compile_state, "broken", True)
    assert not kernels.compile_enabled(1 << 24)


def test_cache_dir_defaults_per_user_and_respects_the_user(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert kernels.default_cache_dir() == os.path.join(str(tmp_path), "layeredge", "inductor")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert kernels.default_cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "layeredge", "inductor")
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    monkeypatch.setitem(kernels._compile_state, "cache_configured", False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/else")
    kernels._configure_compile_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/else" and inductor_config.fx_graph_cache
    monkeypatch.setitem(kernels._compile_state, "cache_configured", False)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    kernels._configure_compile_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == kernels.default_cache_dir()


def test_compile_failure_warns_once_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def broken_compile(fn: Callable[..., object]) -> Callable[..., object]:
        def run(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> object:
            calls.append(1)
            raise RuntimeError("no C++ compiler")
        return run

    monkeypatch.setattr(kernels, "_compiled", broken_compile)
    monkeypatch.setitem(kernels._compile_state, "broken", False)
    monkeypatch.delenv("LAYEREDGE_NO_COMPILE", raising=False)
    monkeypatch.setattr(kernels, "COMPILE_MIN_NUMEL", 1)
    c = IntQuantCodec(4)
    x = torch.randn(1000, generator=gen())
    with pytest.warns(RuntimeWarning, match="torch.compile of the quantization kernels failed.*no C\\+\\+ compiler"):
        enc = c.encode(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = c.decode(enc)  # compiling is off now: no second attempt, no second warning
        c.encode(x)
    assert len(calls) == 1
    monkeypatch.setenv("LAYEREDGE_NO_COMPILE", "1")
    assert torch.equal(enc.payload, c.encode(x).payload) and torch.equal(y, c.decode(enc))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(bits=st.sampled_from(BITS), rows=st.integers(1, 9), log_block=st.integers(3, 9), seed=st.integers(0, 99))
def test_kernel_round_trip_bound(bits: int, rows: int, log_block: int, seed: int) -> None:
    bsz = 2**log_block
    if bsz % codes_per_unit(bits):
        return
    x = torch.randn(rows, bsz, generator=gen(seed)) * 3
    packed = torch.empty(rows, bsz * bits // 8, dtype=torch.uint8)
    s = kernels.quantize_pack(x, bits, packed, use_compile=False)
    out = kernels.unpack_dequantize(packed, s, bits, torch.empty(rows, bsz), use_compile=False)
    step = (s / ((2**bits - 1) / 2)).unsqueeze(1)
    assert bool(((out - x).abs() <= step * (0.5 + 1e-5)).all())


def _has_compiled_code(fn: Callable[..., object]) -> bool:
    """Whether dynamo holds compiled code for ``fn`` (a silent fallback to eager would leave none)."""
    try:
        from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list
    except ImportError:  # pragma: no cover - private API moved; the bit-identity checks still run
        return True
    return len(_debug_get_cache_entry_list(fn.__code__)) > 0


@pytest.mark.slow
@pytest.mark.compile
def test_compiled_kernels_are_bit_identical_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled fast path (>= 1M elements) must write exactly the eager payload and decode alike."""
    monkeypatch.delenv("LAYEREDGE_NO_COMPILE", raising=False)
    monkeypatch.setitem(kernels._compile_state, "broken", False)
    n = (1 << 20) + 300  # full blocks through the kernel plus a ragged tail
    x = torch.randn(n, generator=gen(42)) * 5
    x[7] = 0.0
    x[1000:1128] = 0.0  # a zero block
    for spec, dtype in (("int8", torch.float32), ("int4", torch.bfloat16), ("int2/b64", torch.float32),
                        ("int3", torch.float16)):
        c = IntQuantCodec.from_term(parse_spec(spec).terms[0])
        xi = x.to(dtype)
        assert kernels.compile_enabled(xi.numel())
        compiled = c.encode(xi)
        y_compiled = c.decode(compiled)
        assert not kernels._compile_state["broken"], "compiled path failed and fell back to eager"
        monkeypatch.setenv("LAYEREDGE_NO_COMPILE", "1")
        eager = c.encode(xi)
        y_eager = c.decode(eager)
        monkeypatch.delenv("LAYEREDGE_NO_COMPILE")
        assert torch.equal(compiled.payload, eager.payload), spec
        assert torch.equal(y_compiled, y_eager), spec
        assert _has_compiled_code(kernels._ENC[c.bits]) and _has_compiled_code(kernels._DEC[c.bits]), spec
        bound = float(x.abs().max()) / ((2**c.bits - 1) / 2)
        assert float((y_compiled.float() - xi.float()).abs().max()) <= bound
    # stochastic rounding compiles too (its payload may differ from eager by a fused multiply-add): check
    # the elementwise bound |error| < step against each element's own block absmax
    sr = IntQuantCodec(4, 64, stochastic=True)
    y = sr.decode(sr.encode(x, generator=gen(1)))
    assert _has_compiled_code(kernels._ENC_SR[4])
    step = x.view(-1)[: n // 64 * 64].view(-1, 64).abs().amax(dim=1, keepdim=True) / 7.5
    assert bool(((y[: n // 64 * 64].view(-1, 64) - x[: n // 64 * 64].view(-1, 64)).abs() <= step * 1.00001).all())
