"""Codec cost model: exact bits from the codec objects, the speed table, edge_time arithmetic."""

from __future__ import annotations

import math

import pytest

from layeredge_dist.codecs import EXAMPLES, parse_any, parse_codec
from layeredge_dist.plan import CodecCost, LinkSpec, codec_cost, default_speeds, edge_time
from layeredge_dist.plan.codec_costs import DEFAULT_SPEEDS, MEMCPY_BPS, canonical_spec, is_lossless


def test_edge_time_arithmetic() -> None:
    cost = CodecCost("int8", 2e9, 4e9)
    link = LinkSpec(12.5e6, 0.001)
    n = 1_000_000
    wire = parse_codec("int8").payload_nbytes(n)
    assert 8.25 <= 8 * wire / n < 8.26  # about 8.25 bits per element at the default block size
    assert cost.wire_bytes(n) == wire
    expected = 0.001 + wire / 12.5e6 + n * 4 / 2e9 + n * 4 / 4e9
    assert edge_time(cost, n, link) == pytest.approx(expected, rel=1e-12)
    # an infinitely fast link leaves latency + encode + decode
    assert edge_time(cost, n, LinkSpec(math.inf, 0.0)) == pytest.approx(n * 4 / 2e9 + n * 4 / 4e9)
    assert edge_time(cost, 0, link) == pytest.approx(0.001)


@pytest.mark.parametrize("spec", EXAMPLES)
def test_bits_are_the_codecs_own(spec: str) -> None:
    cost = codec_cost(spec)
    codec = parse_any(spec)
    n = 12345
    if spec == "raw":
        assert cost.wire_bytes(n) == 4 * n
    else:
        assert cost.bits_per_element(n) == pytest.approx(codec.bits_per_element(n), rel=0, abs=0)
        assert cost.wire_bytes(n) == codec.payload_nbytes(n)
    enc, dec = default_speeds(spec)
    assert 0 < enc < math.inf and 0 < dec < math.inf


def test_speed_table_and_overrides() -> None:
    assert default_speeds("fp32") == (MEMCPY_BPS, MEMCPY_BPS)
    assert default_speeds("int8") == DEFAULT_SPEEDS["int8"]
    assert default_speeds("int8/b4096") == DEFAULT_SPEEDS["int8"]  # block size does not change speed
    assert default_speeds("int4/b64/rht")[0] < 1.5e9  # rotations are slow
    assert default_speeds("topk:0.2")[0] < 0.5e9  # exact top-k is slow
    ef_enc, _ = default_speeds("ef(int8)")
    assert ef_enc < DEFAULT_SPEEDS["int8"][0]
    measured = codec_cost("int8", {"int8": (1e9, 2e9)})
    assert (measured.encode_Bps, measured.decode_Bps) == (1e9, 2e9)
    assert codec_cost("bf16", {"int8": (1e9, 2e9)}).encode_Bps == DEFAULT_SPEEDS["bf16"][0]


def test_canonical_and_lossless() -> None:
    assert canonical_spec("topk:0.050+int8") == "topk:0.05+int8"
    assert is_lossless("fp32") and is_lossless("raw") and not is_lossless("bf16")
    with pytest.raises(ValueError):
        canonical_spec("int9")
    with pytest.raises(ValueError):
        CodecCost("int8", 0.0, 1e9)
