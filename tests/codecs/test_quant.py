"""IntQuantCodec: spec grammar, exact payload sizes, error bounds from the quantizer's definition, stochastic
rounding, the Hadamard rotation, payload validation and buffer reuse.

Error bounds. A block with absmax ``A`` is quantized with level spacing ``step = A / c``, ``c = (2^b - 1) / 2``
(midrise). Round-to-nearest errs by at most ``step / 2`` per element; stochastic rounding by less than
``step``. For data filling the levels evenly the error is ~uniform, so its RMS is ``step / sqrt(12)``: for
N(0, 1) and B = 128 (``E[A] ~ 2.6``) int8 gives ~0.6 % relative L2 error and int4 ~10 %.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layeredge_dist.codecs.base import CodecError, Encoded
from layeredge_dist.codecs.quant import IntQuantCodec
from layeredge_dist.codecs.spec import parse_spec

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
BITS = (8, 4, 3, 2)
SHAPES = ((), (0,), (1,), (7,), (3, 50), (2, 3, 129), (1000,), (4096,))


def codec(spec: str) -> IntQuantCodec:
    """Build through the spec grammar, as the registry does."""
    return IntQuantCodec.from_term(parse_spec(spec).terms[0])


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def block_steps(c: IntQuantCodec, x: torch.Tensor) -> torch.Tensor:
    """Each element's level spacing A / c from its block's absmax (flattened, fp32)."""
    xf = x.reshape(-1).float()
    n = xf.numel()
    nblocks = -(-n // c.block)
    padded = torch.zeros(nblocks * c.block)
    padded[:n] = xf
    absmax = padded.view(nblocks, c.block).abs().amax(dim=1)  # (nblocks,)
    return (absmax / ((2**c.bits - 1) / 2)).repeat_interleave(c.block)[:n]


def rel_err(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((y.float() - x.float()).norm() / x.float().norm())


# ---- spec -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("int8", "int8"), ("int4", "int4"), ("int3", "int3"), ("int2", "int2"),
        ("int4/b128", "int4"), ("int4/b64", "int4/b64"), ("int2/b64/rht/sr", "int2/b64/rht/sr"),
        ("int4/sr/rht/b64", "int4/b64/rht/sr"), ("int8/rht", "int8/rht"), ("int8/sr", "int8/sr"),
        ("int4/b0064", "int4/b64"), ("int3/b5", "int3/b5"), ("int8/b4096", "int8/b4096"),
    ],
)
def test_spec_parses_and_prints_canonically(text: str, canonical: str) -> None:
    c = codec(text)
    assert c.spec == canonical
    assert codec(c.spec) == c
    assert hash(codec(c.spec)) == hash(c)


def test_spec_fields() -> None:
    c = codec("int2/b64/rht/sr")
    assert (c.bits, c.block, c.rht, c.stochastic) == (2, 64, True, True)
    d = codec("int4")
    assert (d.bits, d.block, d.rht, d.stochastic) == (4, 128, False, False)
    assert IntQuantCodec(4, 128) == d and IntQuantCodec(4, 64) != d


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("int4/zz", "unknown option 'zz'"),
        ("int4/b1", "block size must be >= 2, got 1"),
        ("int4/b0", "block size must be >= 2, got 0"),
        ("int4/b", "unknown option 'b'"),
        ("int4/b96/rht", "power of two with rht, got 96"),
        ("int4/b64/b32", "block size given twice"),
        ("int4/rht/rht", "'rht' given twice"),
        ("int4/sr/sr", "'sr' given twice"),
        ("int4:3", "takes no ':' argument"),
        ("int4/bx", "unknown option 'bx'"),
    ],
)
def test_bad_specs_raise_precise_codec_errors(text: str, message: str) -> None:
    with pytest.raises(CodecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        codec(text)


def test_constructor_validates() -> None:
    with pytest.raises(CodecError, match="unsupported bit width 5"):
        IntQuantCodec(5)
    with pytest.raises(CodecError, match="block size must be an integer >= 2"):
        IntQuantCodec(8, 1)
    with pytest.raises(CodecError, match="power of two"):
        IntQuantCodec(8, 24, rht=True)


# ---- sizes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["int8", "int4", "int3", "int2", "int4/b64", "int3/b5", "int4/b3", "int2/rht",
                                  "int3/b32/rht/sr", "int8/b4096", "int8/b2/rht"])
def test_payload_nbytes_matches_actual_payload(spec: str) -> None:
    c = codec(spec)
    g = gen(1)
    sizes = list(range(0, 70)) + [127, 128, 129, 255, 256, 257, 1000, 4095, 4096, 4097, 10_001]
    for n in sizes:
        enc = c.encode(torch.randn(n, generator=g), generator=g)
        assert enc.nbytes == c.payload_nbytes(n), (spec, n)


@pytest.mark.parametrize(("spec", "bits_per_element"),
                         [("int8", 8.25), ("int4", 4.25), ("int3", 3.25), ("int2", 2.25), ("int4/b64", 4.5),
                          ("int8/b4096", 8 + 32 / 4096)])
def test_bits_per_element_at_whole_blocks(spec: str, bits_per_element: float) -> None:
    c = codec(spec)
    n = 128 * 4096
    assert c.bits_per_element(n) == pytest.approx(bits_per_element, abs=1e-12)
    assert c.encode(torch.randn(n)).bits_per_element == pytest.approx(bits_per_element, abs=1e-12)


def test_payload_nbytes_formula() -> None:
    # seed (rht) + fp32 scale per block + packed codes (int3: 8 codes per 3 bytes, padded to a whole unit)
    assert codec("int8").payload_nbytes(0) == 0
    assert codec("int8").payload_nbytes(1) == 4 + 1
    assert codec("int4").payload_nbytes(3) == 4 + 2
    assert codec("int2").payload_nbytes(5) == 4 + 2
    assert codec("int3").payload_nbytes(9) == 4 + 6
    assert codec("int3").payload_nbytes(129) == 8 + 3 * 17
    # rht stores every code of the zero-padded last block: the rotation spreads it over the whole block
    assert codec("int4/rht").payload_nbytes(0) == 4
    assert codec("int4/rht").payload_nbytes(1) == 4 + 4 + 64
    assert codec("int4/b64/rht").payload_nbytes(130) == 4 + 12 + 96
    with pytest.raises(CodecError):
        codec("int4").payload_nbytes(-1)


# ---- round trips and error bounds ----------------------------------------------------------------------------


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_elementwise_bound(bits: int, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    c = IntQuantCodec(bits)
    x = (torch.randn(shape, generator=gen(bits)) * 3).to(dtype)
    enc = c.encode(x)
    assert (enc.spec, enc.shape, enc.dtype) == (c.spec, tuple(shape), {torch.float32: "float32",
                                                                      torch.float16: "float16",
                                                                      torch.bfloat16: "bfloat16"}[dtype])
    y = c.decode(enc)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    err = (y.float() - x.float()).reshape(-1).abs()
    bound = block_steps(c, x) * (0.5 + 1e-5) + y.float().reshape(-1).abs() * UNIT_ROUNDOFF[dtype]
    assert bool((err <= bound).all()), float((err - bound).max()) if err.numel() else None


@pytest.mark.parametrize(("bits", "low", "high"), [(8, 0.005, 0.0075), (4, 0.085, 0.125), (3, 0.19, 0.27),
                                                   (2, 0.45, 0.62)])
def test_gaussian_relative_error_matches_theory(bits: int, low: float, high: float) -> None:
    # step / sqrt(12) per element: int8 ~0.64 %, int4 ~11 %; both far from what a lossless or a broken
    # (e.g. off-by-one level) quantizer would give.
    c = IntQuantCodec(bits)
    x = torch.randn(1 << 16, generator=gen(7))
    y = c.decode(c.encode(x))
    e = rel_err(x, y)
    assert low < e < high, e
    theory = float((block_steps(c, x) ** 2 / 12).sum().sqrt() / x.norm())
    assert 0.9 < e / theory < 1.1, (e, theory)


def test_int8_gaussian_error_below_one_percent() -> None:
    x = torch.randn(1 << 18, generator=gen(3))
    assert rel_err(x, codec("int8").decode(codec("int8").encode(x))) < 0.01


def test_zero_blocks_decode_to_exact_zeros() -> None:
    x = torch.zeros(300)
    x[200:] = torch.randn(100, generator=gen())
    for spec in ("int8", "int4", "int3", "int2", "int4/rht"):
        y = codec(spec).decode(codec(spec).encode(x))
        assert bool((y[:128] == 0).all()), spec


def test_block_absmax_is_reproduced_exactly() -> None:
    # midrise: the extreme codes decode to exactly +-A
    x = torch.randn(1024, generator=gen(5))
    x[3], x[200] = 7.25, -9.5
    for bits in BITS:
        y = IntQuantCodec(bits).decode(IntQuantCodec(bits).encode(x))
        assert float(y[3]) == pytest.approx(7.25, rel=1e-6) and float(y[200]) == pytest.approx(-9.5, rel=1e-6)


def test_constant_and_tiny_values() -> None:
    for x in (torch.full((257,), -0.75), torch.full((100,), 1e-30), torch.tensor([1e-36, -3e-37, 0.0])):
        for bits in BITS:
            y = IntQuantCodec(bits).decode(IntQuantCodec(bits).encode(x))
            err = (y - x).abs()
            assert bool((err <= block_steps(IntQuantCodec(bits), x) * 0.5 * (1 + 1e-5) + 1e-44).all()), (bits, x)


def test_blocks_below_the_flush_threshold_decode_to_zero() -> None:
    # c / A would overflow fp32 for A < ~2**-121, so such blocks are stored with scale 0
    x = torch.tensor([1e-38, -3e-39, 0.0, 5e-45] + [0.0] * 124 + [1.0] * 128)
    for bits in BITS:
        c = IntQuantCodec(bits)
        enc = c.encode(x)
        assert float(enc.payload[:4].view(torch.float32)) == 0.0
        y = c.decode(enc)
        assert bool((y[:128] == 0).all()) and bool((y[128:] == 1.0).all()), bits


@pytest.mark.parametrize("layout", ["transpose", "stride", "expand"])
def test_non_contiguous_input_equals_contiguous(layout: str) -> None:
    base = torch.randn(40, 70, generator=gen(2))
    x = {"transpose": base.t(), "stride": base[::2, 1::3], "expand": base[:1].expand(5, 70)}[layout]
    assert not x.is_contiguous()
    for spec in ("int8", "int4/b64", "int3", "int2/rht"):
        c = codec(spec)
        a, b = c.encode(x, generator=gen(9)), c.encode(x.contiguous(), generator=gen(9))
        assert torch.equal(a.payload, b.payload), spec
        assert torch.equal(c.decode(a), c.decode(b))


def test_unaligned_block_sizes_round_trip() -> None:
    # block sizes that are not a multiple of the packing unit take the generic (sequential) path
    for spec in ("int3/b5", "int4/b3", "int2/b6", "int3/b12", "int8/b7"):
        c = codec(spec)
        x = torch.randn(1001, generator=gen(4))
        y = c.decode(c.encode(x))
        assert bool(((y - x).abs() <= block_steps(c, x) * (0.5 + 1e-5)).all()), spec


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    bits=st.sampled_from(BITS),
    log_block=st.integers(1, 9),
    odd_block=st.integers(2, 300),
    pow2=st.booleans(),
    shape=st.lists(st.integers(0, 33), min_size=0, max_size=3).map(tuple),
    rht=st.booleans(),
    sr=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_sizes_and_bounds(bits: int, log_block: int, odd_block: int, pow2: bool,
                                   shape: tuple[int, ...], rht: bool, sr: bool, seed: int) -> None:
    block = 2**log_block if (pow2 or rht) else odd_block
    c = IntQuantCodec(bits, block, rht, sr)
    assert codec(c.spec) == c
    x = torch.randn(shape, generator=gen(seed)) * 10
    enc = c.encode(x, generator=gen(seed + 1))
    assert enc.nbytes == c.payload_nbytes(x.numel())
    y = c.decode(enc)
    assert y.shape == x.shape and y.dtype == x.dtype
    if x.numel() == 0:
        return
    levels = 1.0 if sr else 0.5
    if rht:  # bound in the rotated domain; the rotation is orthonormal and |rotated| <= ||block||_2
        bound = levels * math.sqrt(block) / ((2**bits - 1) / 2) * float(x.norm()) * (1 + 1e-4) + 1e-6
        assert float((y - x).norm()) <= bound
    else:
        assert bool(((y - x).abs().reshape(-1) <= block_steps(c, x) * levels * (1 + 1e-5)).all())


# ---- stochastic rounding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["int4/sr", "int2/b64/sr", "int3/sr", "int8/sr", "int4/rht/sr"])
def test_stochastic_rounding_is_unbiased(spec: str) -> None:
    # Per element, deterministic rounding has a bias of up to step/2 (mean |bias| ~ step/4 over uniform
    # offsets); the mean of K stochastic draws has standard deviation <= step / (2 sqrt(K)).
    c = codec(spec)
    x = torch.rand(1024, generator=gen(11)) * 2 - 1
    x[::128] = 1.0  # every block's absmax is 1, so step = 1 / c everywhere
    step = 1 / ((2**c.bits - 1) / 2)
    draws = 400
    g = gen(12)
    total = torch.zeros_like(x)
    for _ in range(draws):
        total += c.decode(c.encode(x, generator=g))
    bias = (total / draws - x) / step
    assert float(bias.abs().mean()) < 0.05, float(bias.abs().mean())  # deterministic rounding: ~0.25
    assert abs(float(bias.mean())) < 0.01
    det = IntQuantCodec(c.bits, c.block, c.rht, False)
    det_bias = (det.decode(det.encode(x, generator=gen(1))) - x) / step
    if not c.rht:  # the control: the same statistic flags a deterministic rounder
        assert float(det_bias.abs().mean()) > 0.15


def test_stochastic_rounding_uses_the_generator() -> None:
    c = codec("int4/sr")
    x = torch.randn(5000, generator=gen())
    a, b = c.encode(x, generator=gen(1)), c.encode(x, generator=gen(1))
    assert torch.equal(a.payload, b.payload)
    assert not torch.equal(a.payload, c.encode(x, generator=gen(2)).payload)
    assert c.encode(x).nbytes == a.nbytes  # global RNG when no generator is given


def test_deterministic_rounding_ignores_the_generator() -> None:
    c = codec("int4")
    x = torch.randn(5000, generator=gen())
    assert torch.equal(c.encode(x, generator=gen(1)).payload, c.encode(x, generator=gen(2)).payload)


# ---- Hadamard rotation ---------------------------------------------------------------------------------------


def heavy_tailed(n: int, seed: int) -> torch.Tensor:
    """Gaussian bulk with ~1 % outliers 50x larger: the activation shape that motivates rotations."""
    g = gen(seed)
    x = torch.randn(n, generator=g)
    idx = torch.randint(0, n, (n // 100,), generator=g)
    x[idx] = torch.randn(idx.numel(), generator=g) * 50
    return x


@pytest.mark.parametrize("spec", ["int4", "int3", "int2", "int8", "int4/b64", "int4/b1024"])
def test_rht_reduces_error_on_heavy_tailed_data(spec: str) -> None:
    x = heavy_tailed(1 << 16, 21)
    plain, rotated = codec(spec), codec(spec + "/rht")
    e_plain = rel_err(x, plain.decode(plain.encode(x)))
    e_rot = rel_err(x, rotated.decode(rotated.encode(x, generator=gen(3))))
    assert e_rot < 0.8 * e_plain, (e_rot, e_plain)


def test_rht_on_a_ragged_tail_block() -> None:
    # the zero-padded last block is rotated whole, so its error matches the full blocks' error
    c = codec("int4/b256/rht")
    x = torch.randn(256 * 8 + 37, generator=gen(8))
    y = c.decode(c.encode(x, generator=gen(9)))
    assert rel_err(x[-37:], y[-37:]) < 3 * rel_err(x[:-37], y[:-37])
    assert rel_err(x, y) < 0.15


def test_rht_seed_is_stored_and_decode_needs_no_generator() -> None:
    c = codec("int4/rht")
    x = torch.randn(1000, generator=gen())
    a, b = c.encode(x, generator=gen(5)), c.encode(x, generator=gen(6))
    assert not torch.equal(a.payload[:4], b.payload[:4])
    assert torch.equal(a.payload, c.encode(x, generator=gen(5)).payload)
    ya, yb = c.decode(a), c.decode(b)
    assert rel_err(x, ya) < 0.15 and rel_err(x, yb) < 0.15
    bad = a.payload.clone()
    bad[0] ^= 1  # another seed rotates back with the wrong signs
    assert rel_err(x, c.decode(Encoded(a.spec, a.shape, a.dtype, bad))) > 0.5


# ---- NaN / Inf input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["int8", "int4", "int3/b5", "int2/rht", "int4/b64/sr"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_inf_input_names_the_first_bad_block(spec: str, bad: float) -> None:
    c = codec(spec)
    x = torch.randn(1000, generator=gen())
    x[3 * c.block + 1] = bad
    x[-1] = bad
    with pytest.raises(CodecError, match=rf"NaN or Inf in block 3 \(flattened elements {3 * c.block}\.\."):
        c.encode(x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nan_in_half_precision_and_in_the_tail(dtype: torch.dtype) -> None:
    x = torch.randn(300).to(dtype)
    x[299] = float("nan")
    with pytest.raises(CodecError, match=r"block 2 \(flattened elements 256\.\.299"):
        codec("int4").encode(x)


def test_unsupported_input_dtype() -> None:
    with pytest.raises(CodecError, match="unsupported input dtype torch.float64"):
        codec("int8").encode(torch.randn(10, dtype=torch.float64))
    with pytest.raises(CodecError, match="unsupported input dtype torch.int32"):
        codec("int8").encode(torch.ones(10, dtype=torch.int32))
    with pytest.raises(CodecError, match="expected a torch.Tensor"):
        codec("int8").encode([1.0, 2.0])  # type: ignore[arg-type]


# ---- payload validation ---------------------------------------------------------------------------------------


def encoded(spec: str = "int4", n: int = 1000, dtype: torch.dtype = torch.float32) -> tuple[IntQuantCodec, Encoded]:
    c = codec(spec)
    return c, c.encode(torch.randn(n, generator=gen()).to(dtype), generator=gen(1))


@pytest.mark.parametrize("spec", ["int8", "int4", "int3", "int2/rht"])
def test_truncated_and_extended_payloads(spec: str) -> None:
    c, enc = encoded(spec)
    expected = c.payload_nbytes(1000)
    with pytest.raises(CodecError, match=rf"payload length {expected - 1} B .* \(expected {expected} B\)"):
        c.decode(Encoded(enc.spec, enc.shape, enc.dtype, enc.payload[:-1]))
    longer = torch.cat([enc.payload, torch.zeros(1, dtype=torch.uint8)])
    with pytest.raises(CodecError, match=rf"payload length {expected + 1} B .* \(expected {expected} B\)"):
        c.decode(Encoded(enc.spec, enc.shape, enc.dtype, longer))


def test_wrong_spec_dtype_shape() -> None:
    c, enc = encoded("int4")
    with pytest.raises(CodecError, match="codec mismatch: payload was encoded with 'int4', decoder is 'int8'"):
        codec("int8").decode(enc)
    with pytest.raises(CodecError, match="codec mismatch: payload was encoded with 'int4', decoder is 'int4/b64'"):
        codec("int4/b64").decode(enc)
    with pytest.raises(CodecError, match="unknown dtype 'float64'"):
        c.decode(Encoded(enc.spec, enc.shape, "float64", enc.payload))
    with pytest.raises(CodecError, match=r"payload length 532 B does not match shape \(900,\) \(expected 482 B\)"):
        c.decode(Encoded(enc.spec, (900,), enc.dtype, enc.payload))
    with pytest.raises(CodecError, match="invalid shape"):
        c.decode(Encoded(enc.spec, (-1000,), enc.dtype, enc.payload))
    with pytest.raises(CodecError, match="1-D uint8"):
        c.decode(Encoded(enc.spec, enc.shape, enc.dtype, enc.payload.to(torch.int16)))
    # the same byte count under another shape is fine: only the element count matters
    assert c.decode(Encoded(enc.spec, (10, 100), enc.dtype, enc.payload)).shape == (10, 100)


@pytest.mark.parametrize(("value", "spec", "dtype"), [
    (float("nan"), "int4", torch.float32), (float("inf"), "int8", torch.float32),
    (-1.0, "int2", torch.float32), (float("nan"), "int4/rht", torch.float32),
    (1e30, "int4", torch.float16),  # no fp16 tensor has an absmax above 65504
    (1e30, "int8/rht", torch.float16),
])
def test_bad_scale_in_payload(value: float, spec: str, dtype: torch.dtype) -> None:
    c, enc = encoded(spec, dtype=dtype)
    bad = enc.payload.clone()
    off = 4 if c.rht else 0
    bad[off + 4 * 5: off + 4 * 6] = torch.tensor([value], dtype=torch.float32).view(torch.uint8)
    with pytest.raises(CodecError, match=r"corrupt payload: scale of block 5 is .* \(expected a finite value in"):
        c.decode(Encoded(enc.spec, enc.shape, enc.dtype, bad))


def test_rht_overflowing_decode_is_rejected() -> None:
    c, enc = encoded("int8/rht", n=256, dtype=torch.float16)
    bad = enc.payload.clone()
    bad[4:8] = torch.tensor([60000.0 * 11], dtype=torch.float32).view(torch.uint8)  # < sqrt(128) * 65504
    bad[12:12 + 128] = 255  # every code extreme: the inverse rotation concentrates them beyond fp16 range
    with pytest.raises(CodecError, match="decoded values overflow torch.float16"):
        c.decode(Encoded(enc.spec, enc.shape, enc.dtype, bad))


def test_misaligned_payload_slice_decodes() -> None:
    c, enc = encoded("int4", n=777)
    big = torch.zeros(enc.nbytes + 3, dtype=torch.uint8)
    big[1:1 + enc.nbytes] = enc.payload
    view = big[1:1 + enc.nbytes]
    assert torch.equal(c.decode(Encoded(enc.spec, enc.shape, enc.dtype, view)), c.decode(enc))


# ---- buffers ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["int8", "int4/rht", "int3/b5/sr"])
def test_out_buffers_are_used(spec: str) -> None:
    c = codec(spec)
    x = torch.randn(3, 333, generator=gen())
    buf = torch.full((c.payload_nbytes(x.numel()),), 0xAB, dtype=torch.uint8)
    enc = c.encode(x, generator=gen(1), out=buf)
    assert enc.payload is buf
    assert torch.equal(buf, c.encode(x, generator=gen(1)).payload)
    y = torch.empty(3, 333)
    assert c.decode(enc, out=y) is y
    assert torch.equal(y, c.decode(enc))
    first = y.clone()
    enc2 = c.encode(x * 2, generator=gen(1), out=buf)  # reuse: scaling by 2 is exact all the way through
    assert enc2.payload is buf
    assert c.decode(enc2, out=y) is y and torch.equal(y, 2 * first)


def test_bad_out_buffers() -> None:
    c = codec("int4")
    x = torch.randn(100)
    n = c.payload_nbytes(100)
    with pytest.raises(CodecError, match=rf"exactly {n} B .* got {n + 1} B"):
        c.encode(x, out=torch.empty(n + 1, dtype=torch.uint8))
    with pytest.raises(CodecError, match="contiguous 1-D uint8"):
        c.encode(x, out=torch.empty(n, dtype=torch.int8))
    with pytest.raises(CodecError, match="contiguous 1-D uint8"):
        c.encode(x, out=torch.empty(2 * n, dtype=torch.uint8)[::2])
    enc = c.encode(x)
    with pytest.raises(CodecError, match="out tensor must be contiguous"):
        c.decode(enc, out=torch.empty(101))
    with pytest.raises(CodecError, match="out tensor must be contiguous"):
        c.decode(enc, out=torch.empty(100, dtype=torch.float16))


def test_encode_does_not_track_gradients() -> None:
    x = torch.randn(300, requires_grad=True)
    c = codec("int4/rht")
    y = c.decode(c.encode(x))
    assert not y.requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("spec", ["int8", "int4", "int3", "int2/b64/rht/sr"])
def test_cuda_round_trip(spec: str) -> None:
    c = codec(spec)
    x = torch.randn(4, 1000, device="cuda")
    enc = c.encode(x)
    assert enc.payload.device == x.device and enc.nbytes == c.payload_nbytes(x.numel())
    y = c.decode(enc)
    assert y.device == x.device and y.shape == x.shape
    cpu = c.decode(Encoded(enc.spec, enc.shape, enc.dtype, enc.payload.cpu()))
    assert torch.allclose(cpu, y.cpu(), rtol=1e-5, atol=1e-6)
    assert rel_err(x, y) < {8: 0.01, 4: 0.13, 3: 0.3, 2: 0.9}[c.bits]
