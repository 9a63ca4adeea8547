from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TensorRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TENSOR_ROLE_UNSPECIFIED: _ClassVar[TensorRole]
    TENSOR_ROLE_ACTIVATION: _ClassVar[TensorRole]
    TENSOR_ROLE_GRADIENT: _ClassVar[TensorRole]
    TENSOR_ROLE_WEIGHT: _ClassVar[TensorRole]

class ChecksumKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHECKSUM_KIND_UNSPECIFIED: _ClassVar[ChecksumKind]
    CHECKSUM_KIND_CRC32: _ClassVar[ChecksumKind]
    CHECKSUM_KIND_XXH3_64: _ClassVar[ChecksumKind]
TENSOR_ROLE_UNSPECIFIED: TensorRole
TENSOR_ROLE_ACTIVATION: TensorRole
TENSOR_ROLE_GRADIENT: TensorRole
TENSOR_ROLE_WEIGHT: TensorRole
CHECKSUM_KIND_UNSPECIFIED: ChecksumKind
CHECKSUM_KIND_CRC32: ChecksumKind
CHECKSUM_KIND_XXH3_64: ChecksumKind

class FrameHeader(_message.Message):
    __slots__ = ("edge", "role", "step", "micro_batch", "codec", "shape", "dtype", "payload_length", "checksum_kind", "checksum")
    EDGE_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCH_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_LENGTH_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_KIND_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    edge: str
    role: TensorRole
    step: int
    micro_batch: int
    codec: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    payload_length: int
    checksum_kind: ChecksumKind
    checksum: int
    def __init__(self, edge: _Optional[str] = ..., role: _Optional[_Union[TensorRole, str]] = ..., step: _Optional[int] = ..., micro_batch: _Optional[int] = ..., codec: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., payload_length: _Optional[int] = ..., checksum_kind: _Optional[_Union[ChecksumKind, str]] = ..., checksum: _Optional[int] = ...) -> None: ...

class FrameAck(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: int
    def __init__(self, frames: _Optional[int] = ...) -> None: ...

class StreamMessage(_message.Message):
    __slots__ = ("header", "chunk", "ack")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    header: FrameHeader
    chunk: bytes
    ack: FrameAck
    def __init__(self, header: _Optional[_Union[FrameHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ..., ack: _Optional[_Union[FrameAck, _Mapping]] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ("payload", "reply_bytes")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    REPLY_BYTES_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    reply_bytes: int
    def __init__(self, payload: _Optional[bytes] = ..., reply_bytes: _Optional[int] = ...) -> None: ...

class PingReply(_message.Message):
    __slots__ = ("payload", "server_time_ns")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    server_time_ns: int
    def __init__(self, payload: _Optional[bytes] = ..., server_time_ns: _Optional[int] = ...) -> None: ...

class DataPathRequest(_message.Message):
    __slots__ = ("edge", "role")
    EDGE_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    edge: str
    role: TensorRole
    def __init__(self, edge: _Optional[str] = ..., role: _Optional[_Union[TensorRole, str]] = ...) -> None: ...

class DataPathGrant(_message.Message):
    __slots__ = ("port", "ticket")
    PORT_FIELD_NUMBER: _ClassVar[int]
    TICKET_FIELD_NUMBER: _ClassVar[int]
    port: int
    ticket: bytes
    def __init__(self, port: _Optional[int] = ..., ticket: _Optional[bytes] = ...) -> None: ...

class SinkReply(_message.Message):
    __slots__ = ("bytes_received", "messages_received", "elapsed_ns")
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_NS_FIELD_NUMBER: _ClassVar[int]
    bytes_received: int
    messages_received: int
    elapsed_ns: int
    def __init__(self, bytes_received: _Optional[int] = ..., messages_received: _Optional[int] = ..., elapsed_ns: _Optional[int] = ...) -> None: ...
