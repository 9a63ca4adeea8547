"""Byte format of the raw TCP data path, the transport's optional fast path next to the gRPC Frames stream.

A connection is opened with a ticket granted by the authenticated ``OpenDataPath`` call. Sender to receiver::

    hello  := "LED1" ticket[32]
    frame  := u32le header_length, FrameHeader (protobuf), payload[header.payload_length]

so the payload goes from the sender's tensor straight into the receiver's buffer (``sendall`` / ``recv_into``),
no message framing or copies in between. Receiver to sender, one record per event::

    ack    := "A" u64le frames          (frames accepted so far on this connection)
    error  := "E" u16le len code, u32le len message   (gRPC status name and the precise message), then close
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from .errors import FrameError
from .header import FrameHeader, header_to_bytes

MAGIC = b"LED1"
TICKET_BYTES = 32
HELLO_BYTES = len(MAGIC) + TICKET_BYTES
#: Largest serialized header a receiver reads.
MAX_HEADER_BYTES = 64 * 1024
ACK_BYTES = 9
_U32 = struct.Struct("<I")
_ACK = struct.Struct("<cQ")


def hello(ticket: bytes) -> bytes:
    """The first bytes on a data connection; raises ValueError for a ticket of the wrong size."""
    if len(ticket) != TICKET_BYTES:
        raise ValueError(f"ticket must be {TICKET_BYTES} bytes, got {len(ticket)}")
    return MAGIC + ticket


def parse_hello(data: bytes) -> bytes:
    """The ticket of a hello; raises :class:`FrameError` (field ``hello``) when ``data`` is not one."""
    if len(data) != HELLO_BYTES or not data.startswith(MAGIC):
        raise FrameError("hello", f"expected {MAGIC!r} and a {TICKET_BYTES}-byte ticket, found {data[:8]!r}... "
                                  f"({len(data)} bytes)")
    return data[len(MAGIC):]


def frame_prefix(header: FrameHeader) -> bytes:
    """What precedes a frame's payload: the header length and the serialized header."""
    body = header_to_bytes(header)
    return _U32.pack(len(body)) + body


def header_length(prefix: bytes) -> int:
    """Decode the 4-byte header length; raises :class:`FrameError` above :data:`MAX_HEADER_BYTES`."""
    (n,) = _U32.unpack(prefix)
    if n > MAX_HEADER_BYTES:
        raise FrameError("header", f"expected at most {MAX_HEADER_BYTES} header bytes, found a length of {n}")
    return n


def ack_record(frames: int) -> bytes:
    """The 9-byte record acknowledging the first ``frames`` frames of a connection."""
    return _ACK.pack(b"A", frames)


def parse_ack(record: bytes) -> int:
    """The frame count of a complete 9-byte ack record (the caller checked its kind byte)."""
    return _ACK.unpack(record)[1]


def error_record(code: str, message: str) -> bytes:
    """An error record: gRPC status name ``code`` (at least 2 characters) and the precise message."""
    c = code.encode()
    m = message.encode()
    return b"E" + struct.pack("<H", len(c)) + c + _U32.pack(len(m)) + m


@dataclass(frozen=True)
class Record:
    """An ack (``frames`` set) or an error (``code`` and ``message`` set) from the receiver."""

    frames: int | None = None
    code: str | None = None
    message: str | None = None


def read_record(recv_exact: Callable[[int], bytes]) -> Record:
    """Read one record with ``recv_exact(n)`` (returns exactly n bytes or raises); raises :class:`FrameError`
    for an unknown record kind."""
    head = recv_exact(ACK_BYTES)
    kind = head[:1]
    if kind == b"A":
        return Record(frames=_ACK.unpack(head)[1])
    if kind == b"E":
        (clen,) = struct.unpack("<H", head[1:3])
        rest = head[3:]
        while len(rest) < clen + 4:
            rest += recv_exact(clen + 4 - len(rest))
        code = rest[:clen].decode(errors="replace")
        (mlen,) = _U32.unpack(rest[clen:clen + 4])
        extra = rest[clen + 4:]
        message = (extra + recv_exact(mlen - len(extra)) if mlen > len(extra) else extra[:mlen])
        return Record(code=code, message=message.decode(errors="replace"))
    raise FrameError("message", f"expected an ack ('A') or error ('E') record from the receiver, found {kind!r}")
