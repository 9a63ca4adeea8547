"""CastCodec: spec, exact sizes, round-to-nearest bounds, fp8 saturation, payload validation, buffers."""

from __future__ import annotations

import pytest
import torch

from layeredge_dist.codecs.base import CodecError, Encoded
from layeredge_dist.codecs.cast import CastCodec
from layeredge_dist.codecs.spec import parse_spec

NAMES = ("fp32", "fp16", "bf16", "fp8e4m3", "fp8e5m2")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ITEMSIZE = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8e4m3": 1, "fp8e5m2": 1}
#: unit roundoff (half the machine epsilon) and the smallest subnormal of each format
UNIT = {"fp32": 2.0**-24, "fp16": 2.0**-11, "bf16": 2.0**-8, "fp8e4m3": 2.0**-4, "fp8e5m2": 2.0**-3}
TINY = {"fp32": 2.0**-149, "fp16": 2.0**-24, "bf16": 2.0**-133, "fp8e4m3": 2.0**-9, "fp8e5m2": 2.0**-16}
FMT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
WIRE = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
SHAPES = ((), (0,), (1,), (5, 0), (7,), (3, 50), (2, 3, 17))


def codec(spec: str) -> CastCodec:
    return CastCodec.from_term(parse_spec(spec).terms[0])


@pytest.mark.parametrize("name", NAMES)
def test_spec_round_trip(name: str) -> None:
    c = codec(name)
    assert c.spec == name and codec(c.spec) == c and c.NAMES == NAMES


@pytest.mark.parametrize("text", ["fp16:1", "fp16/x", "bf16/b64", "fp8e4m3:2/sr"])
def test_args_and_options_are_rejected(text: str) -> None:
    with pytest.raises(CodecError, match="takes no argument or options"):
        codec(text)


def test_unknown_name() -> None:
    with pytest.raises(CodecError, match="unknown cast codec 'fp64'"):
        CastCodec("fp64")


@pytest.mark.parametrize("name", NAMES)
def test_payload_sizes_are_exact(name: str) -> None:
    c = codec(name)
    for n in (0, 1, 2, 3, 17, 1000):
        assert c.payload_nbytes(n) == n * ITEMSIZE[name]
        assert c.encode(torch.randn(n)).nbytes == n * ITEMSIZE[name]
    assert c.bits_per_element(1000) == 8 * ITEMSIZE[name]
    with pytest.raises(CodecError):
        c.payload_nbytes(-1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_within_rounding_bound(name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    c = codec(name)
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 20).to(dtype)
    enc = c.encode(x)
    assert (enc.spec, enc.shape, enc.dtype) == (name, tuple(shape), WIRE[dtype])
    assert enc.payload.dtype == torch.uint8 and enc.payload.dim() == 1
    y = c.decode(enc)
    assert y.shape == x.shape and y.dtype == dtype
    xf, yf = x.float(), y.float()
    # cast to the target (one rounding) and back into the input format (a second one)
    bound = (UNIT[name] + UNIT[FMT[dtype]] * (1 + UNIT[name])) * xf.abs() + TINY[name] + TINY[FMT[dtype]]
    assert bool(((yf - xf).abs() <= bound).all())


def test_payload_is_the_cast_bytes() -> None:
    x = torch.tensor([1.0, -2.5, 3e-3])
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp8e4m3", torch.float8_e4m3fn),
                        ("fp8e5m2", torch.float8_e5m2), ("fp32", torch.float32)):
        assert torch.equal(codec(name).encode(x).payload, x.to(dtype).view(torch.uint8)), name


def test_same_format_cast_is_exact_and_never_aliases() -> None:
    x = torch.randn(100)
    enc = codec("fp32").encode(x)
    assert enc.payload.data_ptr() != x.data_ptr()
    y = codec("fp32").decode(enc)
    assert torch.equal(y, x) and y.data_ptr() != enc.payload.data_ptr()
    x.add_(1.0)  # mutating the input after encoding leaves the payload alone
    assert torch.equal(codec("fp32").decode(enc), y)
    h = torch.randn(50).to(torch.float16)
    assert torch.equal(codec("fp16").decode(codec("fp16").encode(h)), h)
    b = torch.randn(50).to(torch.bfloat16)
    assert torch.equal(codec("bf16").decode(codec("bf16").encode(b)), b)


@pytest.mark.parametrize(("name", "limit"), [("fp8e4m3", 448.0), ("fp8e5m2", 57344.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_saturates_instead_of_nan(name: str, limit: float, dtype: torch.dtype) -> None:
    x = torch.tensor([1e6, -1e6, limit * 1.5, -limit * 1.01, float("inf"), float("-inf"), float("nan"), 1.0])
    y = codec(name).decode(codec(name).encode(x.to(dtype)))
    assert y.dtype == dtype
    assert y[:6].float().tolist() == [limit, -limit, limit, -limit, limit, -limit]
    assert bool(torch.isnan(y[6])) and float(y[7]) == 1.0


def test_fp8_saturation_from_fp16_input() -> None:
    x = torch.tensor([60000.0, -65504.0, 500.0]).to(torch.float16)
    assert codec("fp8e4m3").decode(codec("fp8e4m3").encode(x)).tolist() == [448.0, -448.0, 448.0]
    assert codec("fp8e5m2").decode(codec("fp8e5m2").encode(x)).tolist() == [57344.0, -57344.0, 512.0]


def test_fp16_overflows_to_inf_and_keeps_nan() -> None:
    y = codec("fp16").decode(codec("fp16").encode(torch.tensor([1e6, -1e6, float("nan"), 65504.0])))
    assert y[0] == float("inf") and y[1] == float("-inf") and bool(torch.isnan(y[2])) and float(y[3]) == 65504.0


@pytest.mark.parametrize("name", NAMES)
def test_non_contiguous_input(name: str) -> None:
    base = torch.randn(30, 40)
    for x in (base.t(), base[::3, 1::2]):
        assert not x.is_contiguous()
        assert torch.equal(codec(name).encode(x).payload, codec(name).encode(x.contiguous()).payload)
        assert codec(name).decode(codec(name).encode(x)).shape == x.shape


@pytest.mark.parametrize("name", NAMES)
def test_out_buffers(name: str) -> None:
    c = codec(name)
    x = torch.randn(4, 25)
    buf = torch.zeros(c.payload_nbytes(100), dtype=torch.uint8)
    enc = c.encode(x, out=buf)
    assert enc.payload is buf and torch.equal(buf, c.encode(x).payload)
    y = torch.empty(4, 25)
    assert c.decode(enc, out=y) is y and torch.equal(y, c.decode(enc))
    # an out buffer that is a misaligned slice of a larger one still works (bytes are copied)
    big = torch.zeros(c.payload_nbytes(100) + 1, dtype=torch.uint8)
    enc2 = c.encode(x, out=big[1:])
    assert torch.equal(enc2.payload, enc.payload) and torch.equal(c.decode(enc2), y)


def test_bad_out_buffers() -> None:
    c = codec("fp16")
    x = torch.randn(10)
    with pytest.raises(CodecError, match="exactly 20 B .* got 21 B"):
        c.encode(x, out=torch.empty(21, dtype=torch.uint8))
    with pytest.raises(CodecError, match="contiguous 1-D uint8"):
        c.encode(x, out=torch.empty(10, dtype=torch.float16))
    enc = c.encode(x)
    with pytest.raises(CodecError, match="out tensor must be contiguous"):
        c.decode(enc, out=torch.empty(10, dtype=torch.float16))
    with pytest.raises(CodecError, match="out tensor must be contiguous"):
        c.decode(enc, out=torch.empty(11))


@pytest.mark.parametrize("name", NAMES)
def test_payload_validation(name: str) -> None:
    c = codec(name)
    enc = c.encode(torch.randn(10))
    n = c.payload_nbytes(10)
    with pytest.raises(CodecError, match=rf"payload length {n - 1} B does not match shape \(10,\) \(expected {n} B\)"):
        c.decode(Encoded(name, enc.shape, enc.dtype, enc.payload[:-1]))
    with pytest.raises(CodecError, match=rf"payload length {n + 1} B .*\(expected {n} B\)"):
        c.decode(Encoded(name, enc.shape, enc.dtype, torch.cat([enc.payload, enc.payload[:1]])))
    with pytest.raises(CodecError, match=rf"does not match shape \(11,\)"):
        c.decode(Encoded(name, (11,), enc.dtype, enc.payload))
    with pytest.raises(CodecError, match="unsupported dtype 'int8'"):  # a wire dtype, but only raw carries it
        c.decode(Encoded(name, enc.shape, "int8", enc.payload))
    with pytest.raises(CodecError, match="unknown dtype 'float64'"):
        c.decode(Encoded(name, enc.shape, "float64", enc.payload))
    other = "fp16" if name != "fp16" else "bf16"
    with pytest.raises(CodecError, match=f"codec mismatch: payload was encoded with '{name}', decoder is '{other}'"):
        codec(other).decode(enc)


def test_unsupported_input() -> None:
    with pytest.raises(CodecError, match="unsupported input dtype torch.float64"):
        codec("fp16").encode(torch.randn(3, dtype=torch.float64))
    with pytest.raises(CodecError, match="unsupported input dtype torch.int64"):
        codec("fp32").encode(torch.arange(3))


def test_misaligned_payload_decodes() -> None:
    c = codec("fp32")
    x = torch.randn(33)
    enc = c.encode(x)
    big = torch.zeros(enc.nbytes + 1, dtype=torch.uint8)
    big[1:] = enc.payload
    assert torch.equal(c.decode(Encoded("fp32", enc.shape, enc.dtype, big[1:])), x)


def test_decoding_a_bf16_payload_into_fp32() -> None:
    # the original dtype decides the output dtype, whatever the wire format
    x = torch.randn(64)
    y = codec("bf16").decode(codec("bf16").encode(x))
    assert y.dtype == torch.float32 and torch.equal(y, x.to(torch.bfloat16).float())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_round_trip_matches_cpu(name: str) -> None:
    x = torch.randn(3, 333) * 1000
    c = codec(name)
    enc = c.encode(x.cuda())
    assert enc.payload.device.type == "cuda"
    assert torch.equal(enc.payload.cpu(), c.encode(x).payload)
    y = c.decode(enc)
    assert y.device.type == "cuda" and torch.equal(y.cpu(), c.decode(c.encode(x)))
