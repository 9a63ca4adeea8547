"""Property tests over every example spec of the registry: round trips, error bounds, sizes, corruption.

Each family's error bound is stated from its definition:

* casts: round-to-nearest into the target format and back into the input dtype, elementwise
  ``|y - x| <= (u_target + u_input) |x| + the formats' subnormal spacing`` (fp8: after saturating ``x``);
* blockwise ``int<b>`` (midrise, ``c = (2^b - 1) / 2`` levels each side): elementwise ``|y - x| <= A / (2c)``
  with round-to-nearest and ``A / c`` with stochastic rounding, ``A`` the block's absmax; with ``rht`` the same
  holds in the rotated domain, which gives ``||y - x||_2 <= sqrt(B) ||x||_2 / c`` (the rotation is orthonormal
  and a rotated block's absmax is at most its L2 norm);
* sparsifiers: zero off the kept positions; kept values exact (raw) or within the value codec's bound;
* ``klt:B``: its fallback payload within ``int<b>/rht``'s bound; its transform payload with squared error at most
  ``FALLBACK_REL_ERROR[b] ||x||^2`` before the cast back to the input dtype (which adds its rounding);
* ``raw``: bit-exact.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layeredge_dist.codecs.base import Codec, CodecError, Encoded
from layeredge_dist.codecs.cast import CastCodec
from layeredge_dist.codecs.klt import FALLBACK_REL_ERROR, KLTCodec
from layeredge_dist.codecs.quant import IntQuantCodec
from layeredge_dist.codecs.raw import RawCodec
from layeredge_dist.codecs.registry import EXAMPLES, parse_any, parse_codec
from layeredge_dist.codecs.sparse import SparseCodec
from layeredge_dist.codecs.spec import Wrapped, parse_spec
from layeredge_dist.codecs.stateful import DeltaCodec, ErrorFeedback

STATELESS = tuple(s for s in EXAMPLES if not isinstance(parse_spec(s), Wrapped))
WRAPPED = tuple(s for s in EXAMPLES if isinstance(parse_spec(s), Wrapped))
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: Unit roundoff of each float format (half its machine epsilon).
UNIT_ROUNDOFF = {"fp32": 2.0**-24, "fp16": 2.0**-11, "bf16": 2.0**-8, "fp8e4m3": 2.0**-4, "fp8e5m2": 2.0**-3}
#: Half the smallest subnormal: the absolute error floor of round-to-nearest near zero.
SUBNORMAL_FLOOR = {"fp32": 2.0**-150, "fp16": 2.0**-25, "bf16": 2.0**-134, "fp8e4m3": 2.0**-10, "fp8e5m2": 2.0**-17}
FORMAT_OF = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---- inputs -------------------------------------------------------------------------------------------


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    """Finite tensors of every supported dtype: 0-d, empty, odd sizes, non-contiguous views, outliers."""
    shape = draw(st.one_of(st.just(()), st.lists(st.integers(0, 40), min_size=1, max_size=3).map(tuple)))
    layout = draw(st.sampled_from(["contiguous", "transpose", "slice"]))
    dtype = draw(st.sampled_from(DTYPES))
    scale = draw(st.sampled_from([1e-3, 1.0, 50.0]))
    kind = draw(st.sampled_from(["normal", "normal", "zeros", "constant", "outlier"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if layout == "transpose" and len(shape) >= 2:
        x = _fill((*shape[:-2], shape[-1], shape[-2]), kind, g).transpose(-1, -2)
    elif layout == "slice" and len(shape) >= 1:
        x = _fill((2 * shape[0], *shape[1:]), kind, g)[::2]
    else:
        x = _fill(shape, kind, g)
    return (x * scale).to(dtype)


def _fill(shape: tuple[int, ...], kind: str, g: torch.Generator) -> torch.Tensor:
    if kind == "zeros":
        return torch.zeros(shape)
    if kind == "constant":
        return torch.full(shape, -0.75)
    x = torch.randn(shape, generator=g)
    if kind == "outlier" and x.numel():
        x.view(-1)[int(torch.randint(0, x.numel(), (1,), generator=g))] = 40.0
    return x


# ---- bounds -------------------------------------------------------------------------------------------


def _assert_cast_bound(codec: CastCodec, x: torch.Tensor, y: torch.Tensor) -> None:
    fmt_in = FORMAT_OF[x.dtype]
    u = UNIT_ROUNDOFF[codec.spec] + UNIT_ROUNDOFF[fmt_in] * (1 + UNIT_ROUNDOFF[codec.spec])
    floor = SUBNORMAL_FLOOR[codec.spec] + SUBNORMAL_FLOOR[fmt_in]
    xf, yf = x.float(), y.float()
    if codec.spec.startswith("fp8"):  # fp8 saturates to its largest finite value instead of overflowing
        limit = torch.finfo(codec.target).max
        xf = xf.clamp(-limit, limit)
    err = (yf - xf).abs()
    bound = u * xf.abs() + floor
    assert bool((err <= bound * (1 + 1e-6)).all()), f"{codec.spec}: max excess {float((err - bound).max())}"


def _assert_quant_bound(codec: IntQuantCodec, x: torch.Tensor, y: torch.Tensor) -> None:
    xf, yf = x.reshape(-1).float(), y.reshape(-1).float()
    n = xf.numel()
    if n == 0:
        return
    c = (2**codec.bits - 1) / 2
    steps = 1.0 if codec.stochastic else 0.5  # error in units of the level spacing A / c
    u_in = UNIT_ROUNDOFF[FORMAT_OF[x.dtype]]
    nblocks = -(-n // codec.block)
    padded = torch.zeros(nblocks * codec.block)
    padded[:n] = xf
    blocks = padded.view(nblocks, codec.block)  # (nblocks, B)
    if codec.rht:
        bound = (steps * math.sqrt(codec.block) / c + 2 * u_in + 1e-5) * float(xf.norm()) + 1e-30
        assert float((yf - xf).norm()) <= bound, f"{codec.spec}: L2 error over the rotated-domain bound"
        return
    absmax = blocks.abs().amax(dim=1).repeat_interleave(codec.block)[:n]  # (n,) each element's block absmax
    bound = absmax * (steps / c * (1 + 1e-5) + u_in * (1 + 1 / c)) + 1e-30
    err = (yf - xf).abs()
    assert bool((err <= bound).all()), f"{codec.spec}: max excess {float((err - bound).max())}"


def _assert_klt_bound(codec: KLTCodec, x: torch.Tensor, enc: Encoded, y: torch.Tensor) -> None:
    mode, width = int(enc.payload[0]), int(enc.payload[1])
    if mode == 2:
        _assert_quant_bound(IntQuantCodec(width, rht=True), x, y)
        return
    assert mode == 1, f"{codec.spec}: mode byte {mode}"
    xf, yf = x.reshape(-1).double(), y.reshape(-1).double()
    u_in = UNIT_ROUNDOFF[FORMAT_OF[x.dtype]]
    rel = math.sqrt(FALLBACK_REL_ERROR[codec._fallback_bits(xf.numel())])
    bound = (rel * (1 + 1e-5) + u_in * (1 + rel) + 1e-6) * float(xf.norm()) + 1e-30
    assert float((yf - xf).norm()) <= bound, f"{codec.spec}: transform-mode error over its guarantee"


def _assert_value_bound(codec: Codec, x: torch.Tensor, y: torch.Tensor, enc: Encoded | None = None) -> None:
    if isinstance(codec, KLTCodec):
        assert enc is not None, "klt is bounded per payload mode"
        _assert_klt_bound(codec, x, enc, y)
    elif isinstance(codec, RawCodec):
        same_bits = torch.equal(y.reshape(-1).view(torch.uint8), x.reshape(-1).contiguous().view(torch.uint8))
        assert same_bits, "raw: not bit-exact"
    elif isinstance(codec, CastCodec):
        _assert_cast_bound(codec, x, y)
    elif isinstance(codec, IntQuantCodec):
        _assert_quant_bound(codec, x, y)
    else:
        raise AssertionError(f"no error bound known for {codec!r}; add one to test_properties")


def _assert_within_bound(codec: Codec, x: torch.Tensor, enc: Encoded, y: torch.Tensor) -> None:
    if not isinstance(codec, SparseCodec):
        _assert_value_bound(codec, x, y, enc)
        return
    idx, vals = codec.decode_sparse(enc)
    xf, yf = x.reshape(-1), y.reshape(-1)
    assert torch.equal(yf[idx], vals)
    off = torch.ones(xf.numel(), dtype=torch.bool)
    off[idx] = False
    assert bool((yf[off] == 0).all()), f"{codec.spec}: nonzero off the kept positions"
    if codec.method != "atopk":
        assert idx.numel() == codec.nominal_k(xf.numel())
    if codec.values is None:
        assert torch.equal(vals, xf[idx]), f"{codec.spec}: raw kept values must be exact"
    else:
        _assert_value_bound(codec.values, xf[idx], vals)


# ---- properties ---------------------------------------------------------------------------------------


def test_every_stateless_family_has_a_bound() -> None:
    for spec in STATELESS:
        codec = parse_codec(spec)
        inner = codec.values if isinstance(codec, SparseCodec) else codec
        assert inner is None or isinstance(inner, (CastCodec, IntQuantCodec, KLTCodec, RawCodec)), spec


@pytest.mark.parametrize("spec", STATELESS)
@SETTINGS
@given(x=tensors(), seed=st.integers(0, 2**31 - 1))
def test_round_trip_shape_dtype_bound_and_size(spec: str, x: torch.Tensor, seed: int) -> None:
    codec = parse_codec(spec)
    enc = codec.encode(x, generator=torch.Generator().manual_seed(seed))
    assert enc.spec == spec and enc.shape == tuple(x.shape) and enc.payload.dtype == torch.uint8
    y = codec.decode(enc)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert bool(torch.isfinite(y).all())
    _assert_within_bound(codec, x, enc, y)
    if isinstance(codec, RawCodec):  # its size depends on the dtype
        assert enc.nbytes == codec.payload_nbytes(x.numel(), x.dtype)
    elif isinstance(codec, KLTCodec):  # data-dependent: a transform payload within the budget, else the fallback
        if int(enc.payload[0]) == 1:
            assert enc.nbytes <= codec.payload_nbytes(x.numel())
        else:
            inner = IntQuantCodec(int(enc.payload[1]), rht=True)
            assert enc.nbytes == 4 + inner.payload_nbytes(x.numel())
    elif not codec.data_dependent:  # atopk's nominal size is at its nominal k, which the data may exceed
        assert enc.nbytes == codec.payload_nbytes(x.numel())
    out = torch.empty(tuple(x.shape), dtype=x.dtype)
    assert torch.equal(codec.decode(enc, out=out), y)


@st.composite
def mutations(draw: st.DrawFn, nbytes: int) -> tuple[str, list[tuple[int, int]], int]:
    kind = draw(st.sampled_from(["flip", "flip", "truncate", "extend"]))
    if kind == "flip" and nbytes:
        edits = draw(st.lists(st.tuples(st.integers(0, nbytes - 1), st.integers(1, 255)), min_size=1, max_size=4))
        return kind, edits, nbytes
    if kind == "truncate" and nbytes:
        return kind, [], draw(st.integers(0, nbytes - 1))
    return "extend", [], nbytes + draw(st.integers(1, 16))


def _mutate(payload: torch.Tensor, mutation: tuple[str, list[tuple[int, int]], int]) -> torch.Tensor:
    kind, edits, length = mutation
    if kind == "flip":
        bad = payload.clone()
        for pos, xor in edits:
            bad[pos] ^= xor
        return bad
    if kind == "truncate":
        return payload[:length].clone()
    return torch.cat([payload, torch.full((length - payload.numel(),), 0xA5, dtype=torch.uint8)])


@pytest.mark.parametrize("spec", STATELESS)
@SETTINGS
@given(data=st.data(), x=tensors())
def test_corrupted_payloads_raise_codec_error_or_decode_finite(spec: str, data: st.DataObject,
                                                              x: torch.Tensor) -> None:
    codec = parse_codec(spec)
    enc = codec.encode(x, generator=torch.Generator().manual_seed(0))
    bad = _mutate(enc.payload, data.draw(mutations(enc.nbytes)))
    try:
        y = codec.decode(Encoded(enc.spec, enc.shape, enc.dtype, bad))
    except CodecError:
        return
    assert y.shape == x.shape and y.dtype == x.dtype
    if not isinstance(codec, (CastCodec, RawCodec)):
        # Plain casts and raw carry NaN/Inf through by design (see cast.py: fp16 overflows to Inf, NaN stays NaN), so a
        # flipped exponent byte may legitimately decode to NaN there; the wire checksum guards those payloads.
        assert bool(torch.isfinite(y).all()), f"{spec}: a corrupted payload decoded to NaN/Inf"


@pytest.mark.parametrize("spec", WRAPPED)
@settings(max_examples=10, deadline=None, derandomize=True)
@given(x=tensors())
def test_wrappers_round_trip_shape_and_dtype(spec: str, x: torch.Tensor) -> None:
    w = parse_any(spec)
    g = torch.Generator().manual_seed(0)
    if isinstance(w, ErrorFeedback):
        state = w.new_state()
        for _ in range(2):
            y = w.decode(w.encode(x, state, generator=g))
    else:
        assert isinstance(w, DeltaCodec)
        tx, rx = w.new_state(), w.new_state()
        for _ in range(2):
            y = w.decode(w.encode(x, tx, "k", generator=g), rx, "k")
        ref_tx, ref_rx = tx.reference("k"), rx.reference("k")
        assert ref_tx is not None and ref_rx is not None and torch.equal(ref_tx, ref_rx)
    assert y.shape == x.shape and y.dtype == x.dtype and bool(torch.isfinite(y).all())
