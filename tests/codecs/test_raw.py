"""``raw``: bit-exact for every wire dtype, exact sizes, out= buffers, strict payload checks, clear refusals."""

from __future__ import annotations

import pytest
import torch

from layeredge_dist.codecs import parse_any, parse_codec
from layeredge_dist.codecs.base import (
    DTYPE_NAMES,
    INTEGER_DTYPE_NAMES,
    INTEGER_DTYPES,
    SUPPORTED_DTYPES,
    WIRE_DTYPE_NAMES,
    WIRE_DTYPES,
    CodecError,
    Encoded,
)
from layeredge_dist.codecs.raw import RawCodec
from layeredge_dist.codecs.sparse import SparseCodec
from layeredge_dist.codecs.stateful import DeltaCodec, ErrorFeedback
from layeredge_dist.transport.accounting import raw_bytes

RAW = RawCodec()
SHAPES = [(), (0,), (3, 0, 2), (1,), (7,), (4, 5), (2, 3, 5)]
ITEMSIZE = {"int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1,
            "float32": 4, "float16": 2, "bfloat16": 2}


def _sample(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Values spanning the dtype's whole range (extremes included for integers)."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 100).to(dtype)
    info = torch.iinfo(dtype)
    x = torch.randint(info.min, info.max, shape, generator=g, dtype=dtype)
    flat = x.view(-1)
    if flat.numel() >= 2:
        flat[0], flat[-1] = info.min, info.max
    return x


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes in C order (1-D uint8)."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def test_dtype_tables() -> None:
    assert set(SUPPORTED_DTYPES) == {"float32", "float16", "bfloat16"}
    assert set(INTEGER_DTYPES) == {"int64", "int32", "int16", "int8", "uint8", "bool"}
    assert WIRE_DTYPES == {**SUPPORTED_DTYPES, **INTEGER_DTYPES}
    for names, table in ((DTYPE_NAMES, SUPPORTED_DTYPES), (INTEGER_DTYPE_NAMES, INTEGER_DTYPES),
                         (WIRE_DTYPE_NAMES, WIRE_DTYPES)):
        assert names == {v: k for k, v in table.items()}
    assert RAW.input_dtypes == WIRE_DTYPES and parse_codec("int8").input_dtypes == SUPPORTED_DTYPES


def test_spec_and_registry() -> None:
    c = parse_codec("raw")
    assert isinstance(c, RawCodec) and c.spec == "raw" and c == RAW and hash(c) == hash(RAW)
    assert parse_any("raw") == RAW


@pytest.mark.parametrize("name", sorted(WIRE_DTYPES))
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_is_bit_exact(name: str, shape: tuple[int, ...]) -> None:
    dtype = WIRE_DTYPES[name]
    x = _sample(shape, dtype)
    enc = RAW.encode(x)
    assert (enc.spec, enc.shape, enc.dtype) == ("raw", shape, name)
    assert enc.payload.dtype == torch.uint8 and enc.payload.dim() == 1
    n = x.numel()
    assert enc.nbytes == RAW.payload_nbytes(n, dtype) == RAW.payload_nbytes(n, name) == n * ITEMSIZE[name]
    assert torch.equal(enc.payload, _bits(x))
    y = RAW.decode(enc)
    assert y.dtype == dtype and tuple(y.shape) == shape and y.is_contiguous()
    assert torch.equal(_bits(y), _bits(x))
    assert y.data_ptr() != enc.payload.data_ptr() or n == 0  # decode copies
    assert raw_bytes(name, n) == enc.nbytes


@pytest.mark.parametrize("name", sorted(WIRE_DTYPES))
def test_bits_per_element(name: str) -> None:
    assert RAW.bits_per_element(10, WIRE_DTYPES[name]) == 8.0 * ITEMSIZE[name]
    assert RAW.encode(_sample((10,), WIRE_DTYPES[name])).bits_per_element == 8.0 * ITEMSIZE[name]
    assert RAW.bits_per_element(0, name) == 0.0
    assert RAW.bits_per_element(3, "int64") == 64.0 and RAW.bits_per_element(3, "bool") == 8.0


def test_size_needs_a_supported_dtype() -> None:
    with pytest.raises(CodecError, match="depends on the dtype"):
        RAW.payload_nbytes(10)
    with pytest.raises(CodecError, match="unsupported dtype torch.float64"):
        RAW.payload_nbytes(10, torch.float64)
    with pytest.raises(CodecError, match="unsupported dtype 'complex64'"):
        RAW.bits_per_element(10, "complex64")
    with pytest.raises(CodecError, match="numel must be >= 0"):
        RAW.payload_nbytes(-1, torch.int64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_nan_payloads_inf_and_signed_zero_survive(dtype: torch.dtype) -> None:
    bits_dtype = torch.int32 if dtype == torch.float32 else torch.int16
    patterns = {torch.float32: [0x7F800001, 0x7FC01234, -0x00400001, 0x7F800000, -0x80000000, 0],
                torch.float16: [0x7C01, 0x7E55, -0x0201, 0x7C00, -0x8000, 1],
                torch.bfloat16: [0x7F81, 0x7FC3, -0x0041, 0x7F80, -0x8000, 1]}[dtype]
    x = torch.tensor(patterns, dtype=bits_dtype).view(dtype)  # signalling/quiet NaNs with payloads, +Inf, -0
    y = RAW.decode(RAW.encode(x))
    assert torch.equal(y.view(bits_dtype), x.view(bits_dtype))


@pytest.mark.parametrize("name", ["int64", "bool", "float32", "bfloat16", "uint8"])
def test_non_contiguous_inputs(name: str) -> None:
    dtype = WIRE_DTYPES[name]
    base = _sample((6, 8), dtype, seed=1)
    for x in (base.t(), base[::2, 1::3], base[:, 3], base.expand(2, 6, 8)[1], base.unsqueeze(0).expand(3, 6, 8)):
        enc = RAW.encode(x)
        assert torch.equal(enc.payload, _bits(x))
        y = RAW.decode(enc)
        assert y.is_contiguous() and tuple(y.shape) == tuple(x.shape) and torch.equal(_bits(y), _bits(x))


def test_payload_does_not_alias_input() -> None:
    x = torch.arange(10, dtype=torch.int64)
    enc = RAW.encode(x)
    x.add_(1)
    assert torch.equal(RAW.decode(enc), torch.arange(10, dtype=torch.int64))


@pytest.mark.parametrize("name", ["int64", "int16", "bool", "float32", "bfloat16"])
def test_out_buffers(name: str) -> None:
    dtype = WIRE_DTYPES[name]
    x = _sample((5, 3), dtype, seed=2)
    buf = torch.empty(RAW.payload_nbytes(x.numel(), dtype), dtype=torch.uint8)
    enc = RAW.encode(x, out=buf)
    assert enc.payload.data_ptr() == buf.data_ptr() and torch.equal(buf, _bits(x))
    res = torch.empty((5, 3), dtype=dtype)
    assert RAW.decode(enc, out=res) is res and torch.equal(_bits(res), _bits(x))
    x2 = _sample((5, 3), dtype, seed=3)  # the same buffer is reused
    assert RAW.encode(x2, out=buf).payload.data_ptr() == buf.data_ptr() and torch.equal(buf, _bits(x2))


def test_misaligned_out_and_payload() -> None:
    x = torch.arange(-7, 8, dtype=torch.int64) * (1 << 40)
    big = torch.zeros(x.numel() * 8 + 3, dtype=torch.uint8)
    enc = RAW.encode(x, out=big[3:])  # offset 3: not 8-byte aligned
    assert torch.equal(big[3:], _bits(x)) and int(big[:3].sum()) == 0
    assert torch.equal(RAW.decode(enc), x)


def test_bad_out_buffers() -> None:
    x = torch.arange(6, dtype=torch.int32)
    with pytest.raises(CodecError, match="out must hold exactly 24 B"):
        RAW.encode(x, out=torch.empty(23, dtype=torch.uint8))
    with pytest.raises(CodecError, match="out must be a contiguous 1-D uint8 tensor"):
        RAW.encode(x, out=torch.empty(6, dtype=torch.int32))
    with pytest.raises(CodecError, match="out must be a contiguous 1-D uint8 tensor"):
        RAW.encode(x, out=torch.empty(48, dtype=torch.uint8)[::2])
    enc = RAW.encode(x)
    with pytest.raises(CodecError, match="out tensor must be contiguous torch.int32 of shape"):
        RAW.decode(enc, out=torch.empty(6, dtype=torch.int64))
    with pytest.raises(CodecError, match="out tensor must be contiguous torch.int32 of shape"):
        RAW.decode(enc, out=torch.empty(7, dtype=torch.int32))


@pytest.mark.parametrize("name", ["int64", "bool", "float16"])
def test_wrong_payload_length(name: str) -> None:
    x = _sample((4, 3), WIRE_DTYPES[name])
    enc = RAW.encode(x)
    n = enc.nbytes
    for bad in (enc.payload[:-1], torch.cat([enc.payload, enc.payload[:1]]), enc.payload[:0]):
        with pytest.raises(CodecError, match=rf"raw: payload length {bad.numel()} B does not match shape "
                                             rf"\(4, 3\) \(expected {n} B\)"):
            RAW.decode(Encoded("raw", enc.shape, enc.dtype, bad))
    with pytest.raises(CodecError, match=r"does not match shape \(5, 3\)"):
        RAW.decode(Encoded("raw", (5, 3), enc.dtype, enc.payload))


def test_decode_validates_spec_dtype_shape_and_payload_type() -> None:
    enc = RAW.encode(torch.arange(4, dtype=torch.int64))
    with pytest.raises(CodecError, match="unknown dtype 'float64'"):
        RAW.decode(Encoded("raw", enc.shape, "float64", enc.payload))
    # the same 32 bytes reinterpreted as another dtype of the matching size decode; a wrong size does not
    assert RAW.decode(Encoded("raw", (8,), "int32", enc.payload)).dtype == torch.int32
    with pytest.raises(CodecError, match="expected 8 B"):
        RAW.decode(Encoded("raw", enc.shape, "int16", enc.payload))
    with pytest.raises(CodecError, match="codec mismatch: payload was encoded with 'fp32', decoder is 'raw'"):
        RAW.decode(Encoded("fp32", enc.shape, enc.dtype, enc.payload))
    with pytest.raises(CodecError, match="invalid shape"):
        RAW.decode(Encoded("raw", (-1, 4), enc.dtype, enc.payload))
    with pytest.raises(CodecError, match="payload must be a 1-D uint8 tensor"):
        RAW.decode(Encoded("raw", enc.shape, enc.dtype, enc.payload.view(torch.int64)))
    with pytest.raises(CodecError, match="expected Encoded"):
        RAW.decode(enc.payload)  # type: ignore[arg-type]


def test_encode_rejects_unsupported_inputs() -> None:
    with pytest.raises(CodecError, match=r"raw: unsupported input dtype torch.float64; expected one of \['bfloat16', "
                                         r"'bool', 'float16', 'float32', 'int16', 'int32', 'int64', 'int8', 'uint8'\]"):
        RAW.encode(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(CodecError, match="unsupported input dtype torch.complex64"):
        RAW.encode(torch.zeros(3, dtype=torch.complex64))
    with pytest.raises(CodecError, match="expected a torch.Tensor"):
        RAW.encode([1, 2, 3])  # type: ignore[arg-type]


FLOAT_LIST = r"\['bfloat16', 'float16', 'float32'\]"


@pytest.mark.parametrize("spec", ["fp32", "fp16", "bf16", "fp8e4m3", "int8", "int4/rht", "int2/sr", "topk:0.5",
                                  "atopk:0.5", "randk:0.5", "topk:0.5+int8"])
@pytest.mark.parametrize("name", sorted(INTEGER_DTYPES))
def test_float_codecs_reject_integer_tensors(spec: str, name: str) -> None:
    codec = parse_codec(spec)
    x = _sample((8,), INTEGER_DTYPES[name])
    pattern = rf"{spec}: unsupported input dtype {x.dtype}; expected one of {FLOAT_LIST}".replace("+", r"\+")
    with pytest.raises(CodecError, match=pattern):
        codec.encode(x)


def test_float_codec_message_matches_the_contract() -> None:
    with pytest.raises(CodecError) as info:
        parse_codec("int8").encode(torch.arange(4))
    assert str(info.value) == "int8: unsupported input dtype torch.int64; expected one of " \
                              "['bfloat16', 'float16', 'float32']"


@pytest.mark.parametrize("spec", ["fp16", "int8", "topk:0.5"])
def test_float_codecs_refuse_integer_payloads(spec: str) -> None:
    codec = parse_codec(spec)
    enc = codec.encode(torch.randn(8))
    with pytest.raises(CodecError, match=rf"unsupported dtype 'int64'; expected one of {FLOAT_LIST}"):
        codec.decode(Encoded(enc.spec, enc.shape, "int64", enc.payload))


@pytest.mark.parametrize("spec", ["ef(int4)", "delta(int4)"])
def test_wrappers_reject_integer_tensors(spec: str) -> None:
    w = parse_any(spec)
    x = torch.arange(8)
    with pytest.raises(CodecError, match="unsupported input dtype torch.int64"):
        if isinstance(w, ErrorFeedback):
            w.encode(x, w.new_state())
        else:
            assert isinstance(w, DeltaCodec)
            w.encode(x, w.new_state(), "k")


def test_raw_is_standalone_not_a_value_codec() -> None:
    with pytest.raises(CodecError, match=r"topk:0.1\+raw: 'raw' is a standalone codec, not a value codec; .*'topk:0.1'"):
        parse_codec("topk:0.1+raw")
    for method in SparseCodec.NAMES:
        with pytest.raises(CodecError, match="standalone codec"):
            SparseCodec(method, 0.25, values=RAW)
    with pytest.raises(CodecError, match="sparsifier\\+valuecodec"):
        parse_codec("raw+int8")


@pytest.mark.parametrize("wrapper", [ErrorFeedback, DeltaCodec])
def test_raw_cannot_be_wrapped(wrapper: type[ErrorFeedback] | type[DeltaCodec]) -> None:
    name = wrapper.NAME
    with pytest.raises(CodecError, match=rf"{name}\(raw\): wrappers compute in fp32 and wrap only float codecs"):
        parse_any(f"{name}(raw)")
    with pytest.raises(CodecError, match="wrap only float codecs"):
        wrapper(RAW)


def test_raw_takes_no_argument_or_options() -> None:
    for spec in ("raw:1", "raw/b64", "raw:0.5/x"):
        with pytest.raises(CodecError, match="raw takes no argument or options"):
            parse_codec(spec)


def test_accounting_raw_bytes_for_every_wire_dtype() -> None:
    for name in WIRE_DTYPES:
        assert raw_bytes(name, 10) == 10 * ITEMSIZE[name]
    assert raw_bytes("float64", 10) == 0
