"""Round trips: Encoded -> Frame -> header bytes / stream messages -> Frame -> Encoded."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layeredge_dist.codecs.base import Encoded
from layeredge_dist.types import EdgeId, StageId, TensorRole
from layeredge_dist.wire import (
    ChecksumKind,
    Frame,
    FrameError,
    Limits,
    encoded_from_frame,
    frame_from_encoded,
    header_from_bytes,
    header_to_bytes,
    validate_frame,
)
from layeredge_dist.wire import checksum as cks
from layeredge_dist.wire import envelope as env

EDGE = EdgeId.parse("s0->s1")
KINDS = [k for k in ChecksumKind if cks.available(k)]


def _encoded(n: int = 1000, spec: str = "fp16", shape: tuple[int, ...] = (10, 50), dtype: str = "float32") -> Encoded:
    g = torch.Generator().manual_seed(n)
    payload = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g)
    return Encoded(spec=spec, shape=shape, dtype=dtype, payload=payload)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
@pytest.mark.parametrize("role", list(TensorRole), ids=lambda r: r.value)
def test_round_trip_through_header_bytes(kind: ChecksumKind, role: TensorRole) -> None:
    enc = _encoded()
    frame = frame_from_encoded(enc, EDGE, role, step=7, micro_batch=3, checksum_kind=kind)
    validate_frame(frame, Limits())
    header = header_from_bytes(header_to_bytes(frame.header), Limits())
    assert header == frame.header
    back = encoded_from_frame(Frame(header, frame.payload.clone()))
    assert (back.spec, back.shape, back.dtype) == (enc.spec, enc.shape, enc.dtype)
    assert torch.equal(back.payload, enc.payload)


def test_round_trip_through_stream_messages() -> None:
    enc = _encoded(100_003)
    frame = frame_from_encoded(enc, EdgeId(StageId(2), StageId(3)), TensorRole.GRADIENT, 1, 0)
    messages = list(env.frame_messages(frame.header, frame.payload_bytes(), 4096))
    assert len(messages) == 25
    first = env.parse_message(messages[0])
    assert first.header is not None and first.chunk is not None and first.ack is None
    header = env.parse_header_body(first.header, Limits())
    buf = torch.empty(header.payload_length, dtype=torch.uint8)
    off = 0
    for i, m in enumerate(messages):
        msg = env.parse_message(m)
        assert msg.chunk is not None and (msg.header is None) == (i > 0)
        buf[off:off + msg.chunk.nbytes] = torch.frombuffer(bytearray(msg.chunk), dtype=torch.uint8)
        off += msg.chunk.nbytes
    received = Frame(header, buf)
    validate_frame(received, Limits())
    assert torch.equal(encoded_from_frame(received).payload, enc.payload)


def test_small_frame_is_one_message_readable_by_protobuf() -> None:
    from layeredge_dist.wire._proto import layeredge_pb2 as pb

    frame = frame_from_encoded(_encoded(64), EDGE, TensorRole.ACTIVATION, 9, 1)
    (only,) = env.frame_messages(frame.header, frame.payload_bytes(), 1 << 20)
    msg = pb.StreamMessage.FromString(only)
    assert msg.header.step == 9 and msg.chunk == bytes(frame.payload_bytes())


def test_ack_message_round_trip() -> None:
    msg = env.parse_message(env.ack_message(123456789))
    assert msg.ack is not None and msg.header is None and msg.chunk is None
    assert env.parse_ack_body(msg.ack) == 123456789


def test_empty_payload_and_zero_sized_shape() -> None:
    enc = Encoded("fp32", (0, 4), "float32", torch.empty(0, dtype=torch.uint8))
    frame = frame_from_encoded(enc, EDGE, TensorRole.ACTIVATION, 0, 0)
    validate_frame(frame, Limits())
    (only,) = env.frame_messages(frame.header, frame.payload_bytes(), 1024)
    msg = env.parse_message(only)
    assert msg.header is not None and msg.chunk is None
    assert encoded_from_frame(frame).shape == (0, 4)


def test_non_contiguous_payload_is_made_contiguous() -> None:
    base = torch.arange(200, dtype=torch.uint8)
    enc = Encoded("fp16", (50,), "float32", base[::2])
    frame = frame_from_encoded(enc, EDGE, TensorRole.WEIGHT, 0, 0)
    assert frame.payload.is_contiguous()
    assert torch.equal(frame.payload, base[::2])
    validate_frame(frame, Limits())


def test_frame_rejects_wrong_payload_type_and_length() -> None:
    frame = frame_from_encoded(_encoded(), EDGE, TensorRole.ACTIVATION, 0, 0)
    with pytest.raises(FrameError, match=r"payload: expected a 1-D torch.uint8 tensor"):
        Frame(frame.header, torch.zeros(1000, dtype=torch.float32))
    with pytest.raises(FrameError, match=r"payload_length: expected 1000 bytes of payload, found 999"):
        Frame(frame.header, frame.payload[:999].clone())
    with pytest.raises(FrameError, match=r"payload: expected a 1-D torch.uint8 tensor"):
        frame_from_encoded(Encoded("fp16", (2,), "float32", torch.zeros(4)), EDGE, TensorRole.ACTIVATION, 0, 0)


def test_checksum_kinds_agree_between_one_shot_and_running() -> None:
    data = bytes(range(256)) * 1000
    for kind in KINDS:
        r = cks.running(kind)
        for off in range(0, len(data), 7777):
            r.update(memoryview(data)[off:off + 7777])
        assert r.value() == cks.compute(kind, data)


@settings(max_examples=60, deadline=None)
@given(
    src=st.integers(0, 1000), dst=st.integers(0, 1000), role=st.sampled_from(list(TensorRole)),
    step=st.integers(0, 2**64 - 1), mb=st.integers(0, 2**32 - 1),
    shape=st.lists(st.integers(0, 2**20), max_size=4).map(tuple),
    dtype=st.sampled_from(["float32", "float16", "bfloat16"]), spec=st.sampled_from(["fp32", "fp16", "bf16"]),
    n=st.integers(0, 300),
)
def test_header_round_trip_property(src: int, dst: int, role: TensorRole, step: int, mb: int,
                                    shape: tuple[int, ...], dtype: str, spec: str, n: int) -> None:
    enc = Encoded(spec, shape, dtype, torch.full((n,), 7, dtype=torch.uint8))
    frame = frame_from_encoded(enc, EdgeId(StageId(src), StageId(dst)), role, step, mb)
    limits = Limits(max_elements=2**80)
    assert header_from_bytes(header_to_bytes(frame.header), limits) == frame.header
