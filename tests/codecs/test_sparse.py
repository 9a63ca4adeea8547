"""Sparsifiers (topk / atopk / randk, alone and composed) and their Elias-Fano index coding."""

from __future__ import annotations

import math

import pytest
import torch

from layeredge_dist.codecs import elias_fano
from layeredge_dist.codecs.base import CodecError, Encoded
from layeredge_dist.codecs.registry import parse_codec
from layeredge_dist.codecs.sparse import SparseCodec, random_indices, topk_recall
from layeredge_dist.codecs.spec import Term

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- Elias-Fano -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "k"),
    [(1, 1), (2, 1), (2, 2), (7, 7), (100, 100), (100, 1), (1000, 10), (1000, 999), (1 << 20, 3), (123457, 1234),
     (64, 16), (65, 16), (1 << 16, 1 << 15)],
)
def test_elias_fano_round_trip(n: int, k: int) -> None:
    idx = torch.randperm(n, generator=_gen(n + k))[:k].sort().values
    data = elias_fano.encode(idx, n)
    assert data.dtype == torch.uint8 and data.numel() == elias_fano.encoded_nbytes(n, k)
    assert torch.equal(elias_fano.decode(data, n, k), idx)


@pytest.mark.parametrize(
    ("n", "idx"),
    [(2**40, [0]), (2**40, [2**40 - 1]), (2**40, [0, 2**40 - 1]), (2**40, [5, 6, 7, 2**39]),
     (2**30, [0, 7, 2**29, 2**30 - 1]), (2**26, [3, 2**25 + 1]), (2**25, [2**24 - 1, 2**25 - 1])],
)
def test_elias_fano_huge_universe(n: int, idx: list[int]) -> None:
    """Large low-bit widths (L = 25..40) take the wide code paths."""
    t = torch.tensor(idx, dtype=torch.int64)
    data = elias_fano.encode(t, n)
    assert elias_fano.low_bits(n, len(idx)) >= 24
    assert torch.equal(elias_fano.decode(data, n, len(idx)), t)


def test_elias_fano_sizes_and_bits_per_index() -> None:
    assert elias_fano.low_bits(100, 100) == 0  # k = n: L = 0
    assert elias_fano.low_bits(100, 1) == 6
    assert elias_fano.low_bits(128, 1) == 7
    assert elias_fano.encoded_nbytes(10, 0) == 0
    n = 16 * 2**20
    for ratio in (0.001, 0.01, 0.05, 0.2):
        k = math.ceil(ratio * n)
        bpi = elias_fano.bits_per_index(n, k)
        assert bpi <= 2.0 + math.log2(n / k) + 0.01, (ratio, bpi)  # ~2 + log2(n/k)
        assert bpi >= math.log2(n / k), (ratio, bpi)


def test_elias_fano_rejects_bad_sets() -> None:
    with pytest.raises(CodecError, match="strictly increasing"):
        elias_fano.encode(torch.tensor([3, 3]), 10)
    with pytest.raises(CodecError, match="outside"):
        elias_fano.encode(torch.tensor([3, 10]), 10)
    good = elias_fano.encode(torch.tensor([1, 4, 9]), 10)
    with pytest.raises(CodecError, match=r"expected \d+ bytes"):
        elias_fano.decode(good[:-1], 10, 3)
    lo_nbytes, _ = elias_fano.section_nbytes(10, 3)
    bad = good.clone()
    bad[lo_nbytes:] = 0xFF  # every high-bitmap bit set: popcount 16 != 3
    with pytest.raises(CodecError, match="16 set bits"):
        elias_fano.decode(bad, 10, 3)
    with pytest.raises(CodecError, match="0 set bits"):
        elias_fano.decode(torch.zeros_like(good), 10, 3)
    bad = good.clone()
    bad[0] |= 0x80  # a padding bit after the 3 one-bit low parts
    with pytest.raises(CodecError, match="padding"):
        elias_fano.decode(bad, 10, 3)


def test_elias_fano_corruption_never_escapes_as_other_errors() -> None:
    n, k = 5000, 300
    idx = torch.randperm(n, generator=_gen(1))[:k].sort().values
    data = elias_fano.encode(idx, n)
    g = _gen(2)
    rejected = 0
    for _ in range(300):
        bad = data.clone()
        pos = torch.randint(0, bad.numel(), (1,), generator=g)
        bad[pos] ^= int(torch.randint(1, 256, (1,), generator=g))
        try:
            out = elias_fano.decode(bad, n, k)
        except CodecError:
            rejected += 1
            continue
        assert out.numel() == k and bool((out[1:] > out[:-1]).all()) and int(out[-1]) < n
    assert rejected > 0


# ---- spec and construction --------------------------------------------------------------------------


def test_spec_canonical_and_from_term() -> None:
    assert SparseCodec("topk", 0.050).spec == "topk:0.05"
    assert SparseCodec.from_term(Term("atopk", "1e-2")).spec == "atopk:0.01"
    assert SparseCodec.from_term(Term("randk", "1")).spec == "randk:1.0"
    assert parse_codec("topk:0.05+int8").spec == "topk:0.05+int8"
    assert parse_codec("topk:0.05+int8") == SparseCodec("topk", 0.05, parse_codec("int8"))


@pytest.mark.parametrize(
    ("term", "needle"),
    [(Term("topk"), "ratio"), (Term("topk", "0"), "ratio"), (Term("topk", "1.5"), "ratio"),
     (Term("topk", "-0.1"), "ratio"), (Term("topk", "1e400"), "ratio"), (Term("topk", "1e"), "not a number"),
     (Term("topk", "0.1", ("b64",)), "no options"), (Term("top", "0.1"), "unknown sparsifier")],
)
def test_bad_terms(term: Term, needle: str) -> None:
    with pytest.raises(CodecError, match=needle):
        SparseCodec.from_term(term)


def test_values_cannot_be_sparse() -> None:
    with pytest.raises(CodecError, match="sparsified again"):
        SparseCodec("topk", 0.1, SparseCodec("randk", 0.5))


def test_nominal_k_is_exact() -> None:
    c = SparseCodec("topk", 0.07)
    assert c.nominal_k(100) == 7  # 0.07 * 100 == 7.000000000000001 in floats
    assert c.nominal_k(101) == 8
    assert c.nominal_k(1) == 1
    assert c.nominal_k(0) == 0
    assert SparseCodec("randk", 1e-9).nominal_k(10) == 1


# ---- top-k --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_keeps_exactly_the_k_largest(dtype: torch.dtype) -> None:
    x = _randn(37, 29, seed=3, dtype=dtype)
    c = SparseCodec("topk", 0.1)
    y = c.decode(c.encode(x))
    k = c.nominal_k(x.numel())
    assert y.shape == x.shape and y.dtype == dtype
    kept = y.reshape(-1) != 0
    assert int(kept.sum()) == k
    assert torch.equal(y.reshape(-1)[kept], x.reshape(-1)[kept])  # raw values are exact
    threshold = x.reshape(-1).abs().float().topk(k).values[-1]
    assert float(x.reshape(-1)[kept].abs().float().min()) >= float(threshold)
    assert float(x.reshape(-1)[~kept].abs().float().max()) <= float(threshold)


def test_topk_indices_are_sorted_and_values_align() -> None:
    x = _randn(1000, seed=4)
    c = SparseCodec("topk", 0.05)
    idx, vals = c.decode_sparse(c.encode(x))
    assert bool((idx[1:] > idx[:-1]).all())
    assert torch.equal(vals, x[idx])


def test_ratio_one_keeps_everything() -> None:
    x = _randn(5, 7, seed=5)
    for method in SparseCodec.NAMES:
        c = SparseCodec(method, 1.0)
        assert torch.equal(c.decode(c.encode(x, generator=_gen())), x), method


def test_zero_dim_and_empty() -> None:
    for method in SparseCodec.NAMES:
        c = SparseCodec(method, 0.3)
        x0 = torch.tensor(2.5)
        y0 = c.decode(c.encode(x0, generator=_gen()))
        assert y0.shape == () and float(y0) == 2.5
        e = torch.empty(0, 4)
        enc = c.encode(e, generator=_gen())
        assert enc.nbytes == c.payload_nbytes(0)
        assert c.decode(enc).shape == (0, 4)


def test_non_contiguous_input() -> None:
    base = _randn(40, 30, seed=6)
    x = base.t()[::2]  # (15, 40), non-contiguous
    c = SparseCodec("topk", 0.2)
    y = c.decode(c.encode(x))
    kept = y != 0
    assert torch.equal(y[kept], x[kept]) and int(kept.sum()) == c.nominal_k(x.numel())


def test_decode_into_out() -> None:
    x = _randn(10, 10, seed=7)
    c = SparseCodec("topk", 0.1)
    enc = c.encode(x)
    out = torch.full((10, 10), 9.0)
    res = c.decode(enc, out=out)
    assert res is out and torch.equal(out, c.decode(enc))
    with pytest.raises(CodecError, match="out tensor"):
        c.decode(enc, out=torch.empty(100))


def test_encode_into_out_buffer() -> None:
    x = _randn(300, seed=8)
    for spec in ("topk:0.1", "randk:0.1", "topk:0.1+int8", "randk:0.1+fp16"):
        c = parse_codec(spec)
        buf = torch.empty(c.payload_nbytes(300), dtype=torch.uint8)
        enc = c.encode(x, generator=_gen(), out=buf)
        assert enc.payload.data_ptr() == buf.data_ptr()
        assert torch.equal(enc.payload, c.encode(x, generator=_gen()).payload)
        with pytest.raises(CodecError, match="out must"):
            c.encode(x, generator=_gen(), out=torch.empty(buf.numel() + 1, dtype=torch.uint8))
    with pytest.raises(CodecError, match="depends on the data"):
        SparseCodec("atopk", 0.1).encode(x, out=torch.empty(10, dtype=torch.uint8))


def test_rejects_non_finite_input() -> None:
    for method in SparseCodec.NAMES:
        c = SparseCodec(method, 0.5)
        for bad in (float("nan"), float("inf")):
            x = _randn(64, seed=9)
            x[17] = bad
            with pytest.raises(CodecError, match="NaN or Inf"):
                c.encode(x, generator=_gen())


def test_rejects_integer_dtype() -> None:
    with pytest.raises(CodecError, match="dtype"):
        SparseCodec("topk", 0.5).encode(torch.arange(10))


# ---- payload sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["topk:0.05", "topk:0.3", "randk:0.1", "randk:0.9", "topk:0.05+int8",
                                  "topk:0.01+int4/b64", "randk:0.25+int4/sr", "topk:0.5+fp16", "randk:0.01+bf16"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_payload_nbytes_is_exact(spec: str, dtype: torch.dtype) -> None:
    c = parse_codec(spec)
    for n in (1, 2, 3, 7, 64, 100, 129, 1000, 4097):
        x = _randn(n, seed=n, dtype=dtype)
        enc = c.encode(x, generator=_gen(n))
        assert enc.nbytes == c.payload_nbytes(n), (spec, n)


def test_atopk_payload_matches_its_own_k() -> None:
    c = SparseCodec("atopk", 0.02)
    x = _randn(50_000, seed=10)
    enc = c.encode(x, generator=_gen())
    k = c.kept_indices(enc).numel()
    assert enc.nbytes == 8 + 4 * k + elias_fano.encoded_nbytes(50_000, k)


def test_bits_per_element_at_one_percent() -> None:
    c = SparseCodec("topk", 0.01)
    n = 1 << 20
    bpe = c.bits_per_element(n)
    k = c.nominal_k(n)
    assert bpe == pytest.approx(8 * (8 + 4 * k + elias_fano.encoded_nbytes(n, k)) / n)
    assert bpe < 0.01 * (32 + 2 + math.log2(100)) + 0.001  # values + ~2+log2(n/k) bits per index


# ---- approximate top-k --------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.01, 0.05])
def test_atopk_recall_and_count_on_gaussian(ratio: float) -> None:
    x = _randn(1 << 20, seed=11)
    c = SparseCodec("atopk", ratio)
    enc = c.encode(x, generator=_gen(1))
    kept = c.kept_indices(enc).numel()
    k = c.nominal_k(x.numel())
    assert abs(kept - k) <= 0.15 * k, (kept, k)
    assert topk_recall(x, enc, c) >= 0.9
    y = c.decode(enc)
    nz = y != 0
    assert torch.equal(y[nz], x[nz])


def test_atopk_handles_ties_and_zeros() -> None:
    c = SparseCodec("atopk", 0.1)
    mostly_zero = torch.zeros(100_000)
    mostly_zero[::50] = 1.0  # 2% nonzero, all tied: threshold 1.0 keeps exactly those
    idx = c.kept_indices(c.encode(mostly_zero, generator=_gen()))
    assert idx.numel() == 2000
    constant = torch.ones(100_000)  # every element tied: falls back to exact top-k
    idx = c.kept_indices(c.encode(constant, generator=_gen()))
    assert idx.numel() == c.nominal_k(100_000)
    zeros = torch.zeros(1000)
    enc = c.encode(zeros, generator=_gen())
    assert 1 <= c.kept_indices(enc).numel() <= 200
    assert torch.equal(c.decode(enc), zeros)


def test_atopk_small_tensor_is_exact_threshold() -> None:
    x = _randn(5000, seed=12)
    c = SparseCodec("atopk", 0.1)
    assert topk_recall(x, c.encode(x, generator=_gen()), c) == 1.0


# ---- random-k -----------------------------------------------------------------------------------------


def test_randk_indices_distinct_deterministic_and_sized() -> None:
    for n, k in ((10, 3), (1000, 1), (1000, 999), (1000, 500), (1000, 501), (100_000, 5000), (100_000, 60_000)):
        a = random_indices(n, k, 42)
        assert a.numel() == k and bool((a[1:] > a[:-1]).all()) and int(a[0]) >= 0 and int(a[-1]) < n
        assert torch.equal(a, random_indices(n, k, 42))
    assert not torch.equal(random_indices(1000, 10, 1), random_indices(1000, 10, 2))


def test_randk_is_uniform() -> None:
    n, k, trials = 50, 10, 2000
    counts = torch.zeros(n)
    for s in range(trials):
        counts[random_indices(n, k, s)] += 1
    expected = trials * k / n  # 400 per position, std ~ 18
    assert float((counts - expected).abs().max()) < 6 * math.sqrt(expected)
    # chi-square over positions: 49 dof, mean 49, p(> 100) is negligible
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 100, chi2


def test_randk_payload_is_seed_plus_values() -> None:
    x = _randn(1000, seed=13)
    c = SparseCodec("randk", 0.1)
    enc = c.encode(x, generator=_gen(5))
    assert enc.nbytes == 8 + 4 * 100
    idx, vals = c.decode_sparse(enc)
    assert torch.equal(vals, x[idx]) and idx.numel() == 100
    other = c.encode(x, generator=_gen(6))
    assert not torch.equal(c.kept_indices(other), idx)


def test_randk_global_rng_when_no_generator() -> None:
    x = _randn(1000, seed=14)
    c = SparseCodec("randk", 0.1)
    torch.manual_seed(0)
    a = c.encode(x)
    torch.manual_seed(0)
    b = c.encode(x)
    assert torch.equal(a.payload, b.payload)


# ---- composition --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_int8_error_is_bounded(dtype: torch.dtype) -> None:
    x = _randn(64, 64, seed=15, dtype=dtype)
    c = parse_codec("topk:0.05+int8")
    assert isinstance(c, SparseCodec)
    enc = c.encode(x)
    y = c.decode(enc)
    idx = c.kept_indices(enc)
    flat_x, flat_y = x.reshape(-1).float(), y.reshape(-1).float()
    assert y.dtype == dtype and y.shape == x.shape
    absmax = float(flat_x[idx].abs().max())
    # kept values: within one int8 step of their (block) absmax; dropped ones are zero
    assert float((flat_y[idx] - flat_x[idx]).abs().max()) <= 2 * absmax / 255 + absmax * 2**-7
    dropped = torch.ones_like(flat_x, dtype=torch.bool)
    dropped[idx] = False
    assert bool((flat_y[dropped] == 0).all())
    assert enc.nbytes < parse_codec("topk:0.05").payload_nbytes(x.numel())


def test_randk_with_stochastic_int4_is_seeded_by_generator() -> None:
    x = _randn(2000, seed=16)
    c = parse_codec("randk:0.25+int4/sr")
    assert torch.equal(c.encode(x, generator=_gen(3)).payload, c.encode(x, generator=_gen(3)).payload)


# ---- validation of payloads ---------------------------------------------------------------------------


def _enc(spec: str = "topk:0.1", n: int = 500) -> tuple[SparseCodec, Encoded]:
    c = parse_codec(spec)
    assert isinstance(c, SparseCodec)
    return c, c.encode(_randn(n, seed=17), generator=_gen())


def _with_payload(enc: Encoded, payload: torch.Tensor) -> Encoded:
    return Encoded(enc.spec, enc.shape, enc.dtype, payload)


@pytest.mark.parametrize("spec", ["topk:0.1", "atopk:0.1", "randk:0.1", "topk:0.1+int8", "randk:0.1+fp16"])
def test_truncated_or_extended_payload_is_rejected(spec: str) -> None:
    c, enc = _enc(spec)
    for cut in (0, 1, 7, 8, enc.nbytes // 2, enc.nbytes - 1):
        with pytest.raises(CodecError):
            c.decode(_with_payload(enc, enc.payload[:cut]))
    with pytest.raises(CodecError, match="payload length"):
        c.decode(_with_payload(enc, torch.cat([enc.payload, torch.zeros(1, dtype=torch.uint8)])))


def test_header_fields_are_checked() -> None:
    c, enc = _enc("topk:0.1")
    bad = enc.payload.clone()
    bad[0] ^= 1  # k off by one
    with pytest.raises(CodecError, match="header says k="):
        c.decode(_with_payload(enc, bad))
    bad = enc.payload.clone()
    bad[7] = 9  # L field
    with pytest.raises(CodecError, match="L=9"):
        c.decode(_with_payload(enc, bad))
    ca, enca = _enc("atopk:0.1")
    bad = enca.payload.clone()
    bad[:7] = torch.tensor(list((10**6).to_bytes(7, "little")), dtype=torch.uint8)
    with pytest.raises(CodecError, match="k=1000000"):
        ca.decode(_with_payload(enca, bad))


def test_index_section_corruption_is_rejected() -> None:
    c, enc = _enc("topk:0.1")
    bad = enc.payload.clone()
    bad[-1] = 0xFF  # padding / extra ones in the high bitmap
    with pytest.raises(CodecError, match="elias-fano"):
        c.decode(_with_payload(enc, bad))
    bad = enc.payload.clone()
    bad[8 + 4 * 50 :] = 0  # empty index section: popcount 0
    with pytest.raises(CodecError, match="set bits"):
        c.decode(_with_payload(enc, bad))


def test_non_finite_value_in_payload_is_rejected() -> None:
    c, enc = _enc("topk:0.1")
    bad = enc.payload.clone()
    bad[8:12] = torch.tensor([0, 0, 0xC0, 0x7F], dtype=torch.uint8)  # fp32 NaN
    with pytest.raises(CodecError, match="NaN or Inf"):
        c.decode(_with_payload(enc, bad))
    c16 = SparseCodec("topk", 0.1)
    x16 = _randn(100, seed=18, dtype=torch.float16)
    e16 = c16.encode(x16)
    bad = e16.payload.clone()
    bad[8:12] = torch.tensor([1e6], dtype=torch.float32).view(torch.uint8)
    with pytest.raises(CodecError, match="NaN or Inf"):  # finite fp32, but overflows fp16
        c16.decode(_with_payload(e16, bad))


def test_spec_shape_dtype_mismatch() -> None:
    c, enc = _enc("topk:0.1")
    with pytest.raises(CodecError, match="codec mismatch"):
        parse_codec("topk:0.2").decode(enc)
    with pytest.raises(CodecError):
        c.decode(Encoded(enc.spec, (501,), enc.dtype, enc.payload))
    with pytest.raises(CodecError, match="dtype"):
        c.decode(Encoded(enc.spec, enc.shape, "int8", enc.payload))


def test_random_mutations_raise_codec_error_or_decode_finite() -> None:
    g = _gen(19)
    for spec in ("topk:0.1", "atopk:0.1", "randk:0.1", "topk:0.1+int8", "atopk:0.05+fp16"):
        c, enc = _enc(spec, n=300)
        for _ in range(150):
            bad = enc.payload.clone()
            for pos in torch.randint(0, bad.numel(), (int(torch.randint(1, 4, (1,), generator=g)),), generator=g):
                bad[pos] = int(torch.randint(0, 256, (1,), generator=g))
            try:
                y = c.decode(_with_payload(enc, bad))
            except CodecError:
                continue
            assert y.shape == enc.shape and bool(torch.isfinite(y).all())


def test_misaligned_payload_decodes() -> None:
    c, enc = _enc("topk:0.1")
    buf = torch.zeros(enc.nbytes + 3, dtype=torch.uint8)
    buf[3:] = enc.payload
    assert torch.equal(c.decode(_with_payload(enc, buf[3:])), c.decode(enc))
