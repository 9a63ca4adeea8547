"""Every malformed header field, payload and stream message is a FrameError naming the field."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from layeredge_dist.codecs.base import INTEGER_DTYPES, WIRE_DTYPES, Encoded
from layeredge_dist.types import EdgeId, StageId, TensorRole
from layeredge_dist.wire import (
    ChecksumKind,
    Frame,
    FrameError,
    FrameHeader,
    Limits,
    frame_from_encoded,
    header_from_bytes,
    header_to_bytes,
    validate_frame,
    validate_header,
)
from layeredge_dist.wire import checksum as cks
from layeredge_dist.wire import envelope as env
from layeredge_dist.wire import header as hdr
from layeredge_dist.wire._proto import layeredge_pb2 as pb

LIMITS = Limits()


def _frame(n: int = 256) -> Frame:
    payload = torch.arange(n, dtype=torch.int64).to(torch.uint8)
    return frame_from_encoded(Encoded("fp16", (n // 2,), "float32", payload), EdgeId.parse("s1->s2"),
                              TensorRole.ACTIVATION, step=5, micro_batch=2)


def _proto(**changes: object) -> bytes:
    msg = hdr.header_to_proto(_frame().header)
    for k, v in changes.items():
        if k == "shape":
            del msg.shape[:]
            msg.shape.extend(v)  # type: ignore[arg-type]
        else:
            setattr(msg, k, v)
    return msg.SerializeToString()


def _raises(data: bytes, field: str, pattern: str, limits: Limits = LIMITS) -> FrameError:
    with pytest.raises(FrameError, match=pattern) as info:
        header_from_bytes(data, limits)
    assert info.value.field == field
    return info.value


def test_valid_header_parses() -> None:
    assert header_from_bytes(_proto(), LIMITS) == _frame().header


@pytest.mark.parametrize("value", [0, 7])
def test_unknown_role(value: int) -> None:
    _raises(_proto(role=value), "role", rf"role: expected one of activation, gradient, weight, found enum value "
                                        rf"{value}")


@pytest.mark.parametrize("edge", ["s0-s1", "", "x0->s1", "s0->s1->s2", "s-1->s2", "s0->"])
def test_bad_edge_syntax(edge: str) -> None:
    _raises(_proto(edge=edge), "edge", rf"edge: expected an edge id like 's0->s1', found {edge!r}")


def test_non_canonical_and_overlong_edge() -> None:
    _raises(_proto(edge="s01->s1"), "edge", r"edge: expected canonical form 's1->s1', found 's01->s1'")
    _raises(_proto(edge="s" + "1" * 70 + "->s2"), "edge", r"edge: expected at most 64 characters, found 75")


@pytest.mark.parametrize("spec", ["", "INT8", "int4//b64", "topk:0.05++int8", "ef(int8"])
def test_unparseable_codec_spec(spec: str) -> None:
    _raises(_proto(codec=spec), "codec", r"codec: expected a")


def test_unknown_codec_name_when_registry_is_available() -> None:
    try:
        from layeredge_dist.codecs import parse_any  # noqa: F401
    except ImportError:
        pytest.skip("codec registry not importable yet; only the spec grammar is checked")
    _raises(_proto(codec="nosuchcodec9"), "codec", r"codec: expected a known codec spec, found 'nosuchcodec9'")


def test_overlong_codec_spec() -> None:
    _raises(_proto(codec="fp16" + "/x" * 200), "codec", r"codec: expected at most 256 characters, found 404")


WIRE_DTYPE_LIST = r"\['bfloat16', 'bool', 'float16', 'float32', 'int16', 'int32', 'int64', 'int8', 'uint8'\]"


@pytest.mark.parametrize("dtype", ["", "float64", "Float32", "int", "uint16"])
def test_unknown_dtype(dtype: str) -> None:
    _raises(_proto(dtype=dtype), "dtype", rf"dtype: expected one of {WIRE_DTYPE_LIST}, found {dtype!r}")


def _int_frame(codec: str, dtype: str = "int64", numel: int = 6) -> Frame:
    x = torch.arange(numel, dtype=torch.int64).to(WIRE_DTYPES[dtype])
    return frame_from_encoded(Encoded(codec, (2, numel // 2), dtype, x.view(torch.uint8)), EdgeId.parse("s0->s1"),
                              TensorRole.ACTIVATION, step=1, micro_batch=0)


@pytest.mark.parametrize("dtype", sorted(INTEGER_DTYPES))
def test_integer_frame_with_raw_is_valid(dtype: str) -> None:
    frame = _int_frame("raw", dtype)
    validate_frame(frame, LIMITS)
    assert header_from_bytes(header_to_bytes(frame.header), LIMITS) == frame.header


@pytest.mark.parametrize("codec", ["int8", "fp16", "topk:0.5", "topk:0.5+int8", "ef(int4)", "delta(int2)"])
def test_integer_frame_with_lossy_codec_is_rejected_on_dtype(codec: str) -> None:
    frame = _int_frame(codec)
    pattern = (rf"dtype: expected one of \['bfloat16', 'float16', 'float32'\] for codec {re.escape(repr(codec))}, "
               r"found 'int64' \(integer dtypes travel only with codec 'raw'\)")
    with pytest.raises(FrameError, match=pattern) as info:
        validate_frame(frame, LIMITS)
    assert info.value.field == "dtype"
    _raises(header_to_bytes(frame.header), "dtype", r"dtype: expected one of .* for codec")


def test_float_frame_with_raw_is_valid() -> None:
    validate_frame(_frame(), LIMITS)
    payload = torch.arange(64, dtype=torch.uint8)
    frame = frame_from_encoded(Encoded("raw", (16,), "float32", payload), EdgeId.parse("s0->s1"),
                               TensorRole.GRADIENT, step=0, micro_batch=0)
    validate_frame(frame, LIMITS)


@pytest.mark.parametrize("codec", ["ef(raw)", "delta(raw)", "topk:0.5+raw", "raw:1"])
def test_raw_compositions_are_bad_codec_fields(codec: str) -> None:
    _raises(_proto(codec=codec), "codec", rf"codec: expected a known codec spec, found {re.escape(repr(codec))}")


def test_shape_too_many_dims_and_too_many_elements() -> None:
    _raises(_proto(shape=[1] * 17), "shape", r"shape: expected at most 16 dims, found 17")
    _raises(_proto(shape=[2**20, 2**20, 2**20]), "shape", rf"shape: expected at most {LIMITS.max_elements} elements, "
                                                          r"found 1152921504606846976")


def test_negative_dim_in_typed_header() -> None:
    h = dataclasses.replace(_frame().header, shape=(4, -1))
    with pytest.raises(FrameError, match=r"shape: expected non-negative int dims, found -1 at dim 1 of \(4, -1\)"):
        validate_header(h, LIMITS)


def test_payload_length_over_max_frame_size() -> None:
    _raises(_proto(payload_length=1025), "payload_length", r"payload_length: expected at most 1024 bytes "
                                                            r"\(max frame size\), found 1025",
            limits=Limits(max_frame_bytes=1024))


def test_unknown_checksum_kind() -> None:
    _raises(_proto(checksum_kind=9), "checksum_kind", r"checksum_kind: expected one of \['crc32', 'xxh3_64'\], "
                                                      r"found enum value 9")


def test_xxh3_without_xxhash_is_a_clear_error() -> None:
    if cks.available(ChecksumKind.XXH3_64):
        pytest.skip("xxhash is installed")
    _raises(_proto(checksum_kind=pb.CHECKSUM_KIND_XXH3_64), "checksum_kind",
            r"'xxh3_64' cannot be verified here: the 'xxhash' package is not installed")


def test_garbage_header_bytes() -> None:
    _raises(b"\xff\xff\xff\xff", "header", r"header: expected a serialized layeredge.v1.FrameHeader, found 4 "
                                           r"undecodable bytes")


def test_step_and_micro_batch_ranges_in_typed_header() -> None:
    with pytest.raises(FrameError, match=r"step: expected an int in \[0, 18446744073709551615\], found -1"):
        validate_header(dataclasses.replace(_frame().header, step=-1), LIMITS)
    with pytest.raises(FrameError, match=r"micro_batch: expected an int in \[0, 4294967295\], found 4294967296"):
        validate_header(dataclasses.replace(_frame().header, micro_batch=2**32), LIMITS)


def test_typed_header_with_wrong_types() -> None:
    with pytest.raises(FrameError, match=r"role: expected one of activation, gradient, weight, found 'activation'"):
        validate_header(dataclasses.replace(_frame().header, role="activation"), LIMITS)  # type: ignore[arg-type]
    with pytest.raises(FrameError, match=r"edge: expected an EdgeId like 's0->s1', found 's0->s1'"):
        validate_header(dataclasses.replace(_frame().header, edge="s0->s1"), LIMITS)  # type: ignore[arg-type]


# ---- payload ------------------------------------------------------------------------------------------------


def test_checksum_mismatch() -> None:
    frame = _frame()
    bad = frame.payload.clone()
    bad[17] ^= 0xFF
    with pytest.raises(FrameError, match=r"checksum: expected 0x[0-9a-f]{16} \(\w+\) from the header, computed "
                                         r"0x[0-9a-f]{16} over the payload") as info:
        validate_frame(Frame(frame.header, bad), LIMITS)
    assert info.value.field == "checksum"


def test_truncated_payload() -> None:
    frame = _frame()
    with pytest.raises(FrameError, match=r"payload_length: expected 256 bytes of payload, found 200"):
        validate_header(frame.header, LIMITS, frame.payload_bytes()[:200])


def test_header_with_other_length_than_payload() -> None:
    frame = _frame()
    h: FrameHeader = dataclasses.replace(frame.header, payload_length=300)
    with pytest.raises(FrameError, match=r"payload_length: expected 300 bytes of payload, found 256"):
        validate_header(h, LIMITS, frame.payload_bytes())


# ---- stream messages ----------------------------------------------------------------------------------------


def test_message_bad_tag() -> None:
    with pytest.raises(FrameError, match=r"message: expected field tag 0x0a \(header\), 0x12 \(chunk\) or 0x1a "
                                         r"\(ack\), found 0x22 at byte 0"):
        env.parse_message(b"\x22\x01x")


def test_message_too_short_and_truncated_varint() -> None:
    with pytest.raises(FrameError, match=r"message: expected a StreamMessage of at least 2 bytes, found 1"):
        env.parse_message(b"\x12")
    with pytest.raises(FrameError, match=r"message: expected a varint length after the chunk tag"):
        env.parse_message(b"\x12\x80\x80")


def test_truncated_chunk_message() -> None:
    msg = env.chunk_message(b"x" * 1000)
    with pytest.raises(FrameError, match=r"message: expected chunk body of 1000 bytes, found only 999 bytes left"):
        env.parse_message(msg[:-1])
    with pytest.raises(FrameError, match=r"message: expected field tag .* found 0x79 at byte 1003"):
        env.parse_message(msg + b"y")


def test_fields_out_of_order_or_repeated() -> None:
    chunk = env.chunk_message(b"abc")
    with pytest.raises(FrameError, match=r"message: expected fields header, chunk, ack at most once each and in "
                                         r"that order, found chunk after chunk"):
        env.parse_message(chunk + chunk)
    with pytest.raises(FrameError, match=r"found header after chunk"):
        env.parse_message(chunk + env.header_message(_frame().header))


def test_header_message_with_garbage_body() -> None:
    msg = env.parse_message(b"\x0a\x03\xff\xff\xff")
    assert msg.header is not None
    with pytest.raises(FrameError, match=r"header: expected a serialized layeredge.v1.FrameHeader"):
        env.parse_header_body(msg.header, LIMITS)


def test_ack_body_garbage() -> None:
    with pytest.raises(FrameError, match=r"message: expected a serialized layeredge.v1.FrameAck"):
        env.parse_ack_body(b"\xff\xff")


def test_frame_error_is_a_value_error() -> None:
    assert issubclass(FrameError, ValueError)


def test_limits_reject_nonsense() -> None:
    with pytest.raises(ValueError, match=r"Limits.max_frame_bytes must be a positive int, got 0"):
        Limits(max_frame_bytes=0)


def test_header_bytes_are_stable_protobuf() -> None:
    data = header_to_bytes(_frame().header)
    msg = pb.FrameHeader.FromString(data)
    assert (msg.edge, msg.role, msg.step, msg.micro_batch) == ("s1->s2", pb.TENSOR_ROLE_ACTIVATION, 5, 2)
    assert EdgeId(StageId(1), StageId(2)) == EdgeId.parse(msg.edge)
