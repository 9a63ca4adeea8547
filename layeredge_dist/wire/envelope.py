"""Stream messages of the ``Frames`` / ``Sink`` methods, written and read by hand.

Each message is a ``layeredge.v1.StreamMessage`` holding, in field order, an optional ``header`` (1), an
optional ``chunk`` (2) and an optional ``ack`` (3), at least one of them. Writing the protobuf encoding
ourselves (tag byte, varint length, body) lets a payload chunk go from the tensor into the message with one copy
and come out as a zero-copy ``memoryview`` slice, where the generated class would copy on every access. A small
frame travels as one message (header + whole payload). Any protobuf implementation decodes these messages too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ._proto import layeredge_pb2 as pb
from .checksum import Buffer
from .errors import FrameError
from .header import FrameHeader, header_from_bytes, header_to_bytes
from .limits import Limits

_TAG_HEADER = 0x0A  # field 1, length-delimited
_TAG_CHUNK = 0x12  # field 2, length-delimited
_TAG_ACK = 0x1A  # field 3, length-delimited
_TAG_NAMES = {_TAG_HEADER: "header", _TAG_CHUNK: "chunk", _TAG_ACK: "ack"}


@dataclass(frozen=True)
class StreamMessage:
    """The fields of one received message, each a zero-copy view into the message bytes (None when absent)."""

    header: memoryview | None = None
    chunk: memoryview | None = None
    ack: memoryview | None = None


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _prefix(tag: int, length: int) -> bytes:
    return bytes((tag,)) + _varint(length)


def header_message(header: FrameHeader, first_chunk: Buffer | None = None) -> bytes:
    """A StreamMessage carrying ``header`` and, optionally, the first payload chunk (one copy of it)."""
    body = header_to_bytes(header)
    if first_chunk is None:
        return _prefix(_TAG_HEADER, len(body)) + body
    n = memoryview(first_chunk).nbytes
    return b"".join((_prefix(_TAG_HEADER, len(body)), body, _prefix(_TAG_CHUNK, n), first_chunk))


def chunk_message(data: Buffer) -> bytes:
    """A StreamMessage carrying ``data`` as a chunk: one copy of ``data``."""
    n = memoryview(data).nbytes
    return b"".join((_prefix(_TAG_CHUNK, n), data))


def ack_message(frames: int) -> bytes:
    """A StreamMessage acknowledging the first ``frames`` frames of the stream."""
    body = pb.FrameAck(frames=frames).SerializeToString()
    return _prefix(_TAG_ACK, len(body)) + body


def frame_messages(header: FrameHeader, payload: memoryview, chunk_bytes: int) -> Iterator[bytes]:
    """The messages of one frame: header with the first chunk, then chunks of at most ``chunk_bytes``.

    Built lazily, so a sender holds one chunk copy at a time. Raises ValueError for ``chunk_bytes`` <= 0.
    """
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be > 0, got {chunk_bytes}")
    n = payload.nbytes
    yield header_message(header, payload[:chunk_bytes] if n else None)
    for off in range(chunk_bytes, n, chunk_bytes):
        yield chunk_message(payload[off:off + chunk_bytes])


def parse_message(data: Buffer) -> StreamMessage:
    """Split a StreamMessage into its fields (zero-copy views into ``data``).

    Raises :class:`FrameError` (field ``"message"``) unless ``data`` is one or more of header, chunk, ack — each
    at most once and in that order — with lengths that exactly fill the message.
    """
    mv = memoryview(data)
    total = mv.nbytes
    if total < 2:
        raise FrameError("message", f"expected a StreamMessage of at least 2 bytes, found {total}")
    fields: dict[int, memoryview] = {}
    pos = 0
    last = 0
    while pos < total:
        tag = mv[pos]
        if tag not in _TAG_NAMES:
            raise FrameError("message", f"expected field tag 0x0a (header), 0x12 (chunk) or 0x1a (ack), "
                                        f"found {tag:#04x} at byte {pos}")
        if tag <= last:
            raise FrameError("message", f"expected fields header, chunk, ack at most once each and in that "
                                        f"order, found {_TAG_NAMES[tag]} after {_TAG_NAMES[last]}")
        pos += 1
        length = 0
        shift = 0
        while True:
            if pos >= total or shift > 63:
                raise FrameError("message", f"expected a varint length after the {_TAG_NAMES[tag]} tag, found "
                                            f"the message ending inside it ({total} bytes)")
            b = mv[pos]
            pos += 1
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        if pos + length > total:
            raise FrameError("message", f"expected {_TAG_NAMES[tag]} body of {length} bytes, found only "
                                        f"{total - pos} bytes left in the message")
        fields[tag] = mv[pos:pos + length]
        pos += length
        last = tag
    return StreamMessage(fields.get(_TAG_HEADER), fields.get(_TAG_CHUNK), fields.get(_TAG_ACK))


def parse_header_body(body: Buffer, limits: Limits) -> FrameHeader:
    """Parse and validate the body of a HEADER message; raises :class:`FrameError`."""
    return header_from_bytes(body, limits)


def parse_ack_body(body: Buffer) -> int:
    """The frame count of an ACK message body; raises :class:`FrameError` if it is not a FrameAck."""
    try:
        return int(pb.FrameAck.FromString(bytes(body)).frames)
    except Exception as e:  # DecodeError; anything else means the same: not a FrameAck
        raise FrameError("message", f"expected a serialized layeredge.v1.FrameAck, found {len(body)} "
                                    f"undecodable bytes ({e})") from None
