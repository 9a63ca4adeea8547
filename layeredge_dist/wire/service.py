"""Names and small unary messages of ``layeredge.v1.StageService``, so the transport never touches generated code.

The Frames and Sink methods carry hand-encoded StreamMessages (see :mod:`.envelope`); Ping carries small
protobuf messages built and parsed here.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from ._proto import layeredge_pb2 as pb
from layeredge_dist.types import EdgeId, TensorRole

from .checksum import Buffer
from .errors import FrameError
from .header import role_from_proto, role_to_proto

#: Full protobuf name of the service (what health checks and reflection list).
SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["StageService"].full_name
FRAMES_METHOD = "Frames"
PING_METHOD = "Ping"
SINK_METHOD = "Sink"
OPEN_DATA_PATH_METHOD = "OpenDataPath"


def method_path(method: str) -> str:
    """The gRPC path of ``method``, e.g. ``/layeredge.v1.StageService/Frames``."""
    return f"/{SERVICE_NAME}/{method}"


@dataclass(frozen=True)
class PingRequest:
    """``payload`` is echoed unless ``reply_bytes`` > 0, in which case the reply carries that many bytes."""

    payload: bytes
    reply_bytes: int = 0


@dataclass(frozen=True)
class PingReply:
    """The echoed (or requested) ``payload`` and the server's monotonic clock in ns (diagnostics only)."""

    payload: bytes
    server_time_ns: int


@dataclass(frozen=True)
class SinkReply:
    """What the Sink probe received: chunk bytes, messages, and server time from first to last message (ns)."""

    bytes_received: int
    messages_received: int
    elapsed_ns: int


def _parse(cls: type, data: Buffer, what: str) -> object:
    try:
        return cls.FromString(bytes(data))
    except DecodeError as e:
        raise FrameError("message", f"expected a serialized layeredge.v1.{what}, found {len(data)} undecodable "
                                    f"bytes ({e})") from None


def ping_request_to_bytes(req: PingRequest) -> bytes:
    """Serialize a PingRequest (protobuf)."""
    return pb.PingRequest(payload=req.payload, reply_bytes=req.reply_bytes).SerializeToString()


def ping_request_from_bytes(data: Buffer) -> PingRequest:
    """Raises :class:`FrameError` for bytes that are not a PingRequest."""
    msg = _parse(pb.PingRequest, data, "PingRequest")
    return PingRequest(payload=msg.payload, reply_bytes=msg.reply_bytes)  # type: ignore[attr-defined]


def ping_reply_to_bytes(reply: PingReply) -> bytes:
    """Serialize a PingReply (protobuf)."""
    return pb.PingReply(payload=reply.payload, server_time_ns=reply.server_time_ns).SerializeToString()


def ping_reply_from_bytes(data: Buffer) -> PingReply:
    """Raises :class:`FrameError` for bytes that are not a PingReply."""
    msg = _parse(pb.PingReply, data, "PingReply")
    return PingReply(payload=msg.payload, server_time_ns=msg.server_time_ns)  # type: ignore[attr-defined]


def sink_reply_to_bytes(reply: SinkReply) -> bytes:
    """Serialize a SinkReply (protobuf)."""
    return pb.SinkReply(bytes_received=reply.bytes_received, messages_received=reply.messages_received,
                        elapsed_ns=reply.elapsed_ns).SerializeToString()


def sink_reply_from_bytes(data: Buffer) -> SinkReply:
    """Raises :class:`FrameError` for bytes that are not a SinkReply."""
    msg = _parse(pb.SinkReply, data, "SinkReply")
    return SinkReply(bytes_received=msg.bytes_received, messages_received=msg.messages_received,  # type: ignore
                     elapsed_ns=msg.elapsed_ns)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class DataPathRequest:
    """Which (edge, role) a sender wants a TCP data connection for."""

    edge: EdgeId
    role: TensorRole


@dataclass(frozen=True)
class DataPathGrant:
    """``port`` of the data path on the server's host; ``ticket`` to send first on the connection."""

    port: int
    ticket: bytes


def data_path_request_to_bytes(req: DataPathRequest) -> bytes:
    """Serialize a DataPathRequest (protobuf)."""
    return pb.DataPathRequest(edge=str(req.edge), role=role_to_proto(req.role)).SerializeToString()


def data_path_request_from_bytes(data: Buffer) -> DataPathRequest:
    """Raises :class:`FrameError` for bytes that are not a valid DataPathRequest."""
    msg = _parse(pb.DataPathRequest, data, "DataPathRequest")
    try:
        edge = EdgeId.parse(msg.edge)  # type: ignore[attr-defined]
    except ValueError:
        raise FrameError("edge", f"expected an edge id like 's0->s1', found {msg.edge!r}") from None  # type: ignore
    return DataPathRequest(edge, role_from_proto(msg.role))  # type: ignore[attr-defined]


def data_path_grant_to_bytes(grant: DataPathGrant) -> bytes:
    """Serialize a DataPathGrant (protobuf)."""
    return pb.DataPathGrant(port=grant.port, ticket=grant.ticket).SerializeToString()


def data_path_grant_from_bytes(data: Buffer) -> DataPathGrant:
    """Raises :class:`FrameError` for bytes that are not a DataPathGrant."""
    msg = _parse(pb.DataPathGrant, data, "DataPathGrant")
    return DataPathGrant(int(msg.port), bytes(msg.ticket))  # type: ignore[attr-defined]
