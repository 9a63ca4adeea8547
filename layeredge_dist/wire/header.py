"""The frame header: typed form, (de)serialization and validation.

A receiver calls :func:`header_from_bytes` (which validates every header field) as soon as a header arrives,
before it allocates the payload, and :func:`validate_header` with the payload once it is complete, before
decoding. Every failure is a :class:`~layeredge_dist.wire.errors.FrameError` naming the field.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from layeredge_dist.codecs import parse_any
from layeredge_dist.codecs.base import WIRE_DTYPES
from layeredge_dist.types import EdgeId, TensorRole

from . import checksum as _checksum
from ._proto import layeredge_pb2 as pb
from .checksum import Buffer, ChecksumKind
from .errors import FrameError
from .limits import Limits

_ROLE_TO_PB = {
    TensorRole.ACTIVATION: pb.TENSOR_ROLE_ACTIVATION,
    TensorRole.GRADIENT: pb.TENSOR_ROLE_GRADIENT,
    TensorRole.WEIGHT: pb.TENSOR_ROLE_WEIGHT,
}
_PB_TO_ROLE = {v: k for k, v in _ROLE_TO_PB.items()}
_CHECKSUM_TO_PB = {ChecksumKind.CRC32: pb.CHECKSUM_KIND_CRC32, ChecksumKind.XXH3_64: pb.CHECKSUM_KIND_XXH3_64}
_PB_TO_CHECKSUM = {v: k for k, v in _CHECKSUM_TO_PB.items()}
_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1


@dataclass(frozen=True)
class FrameHeader:
    """Everything about a frame except its payload bytes.

    ``shape`` and ``dtype`` describe the original tensor; ``payload_length`` is the encoded payload size in
    bytes; ``checksum`` is computed with ``checksum_kind`` over the payload bytes.
    """

    edge: EdgeId
    role: TensorRole
    step: int
    micro_batch: int
    codec: str
    shape: tuple[int, ...]
    dtype: str
    payload_length: int
    checksum_kind: ChecksumKind
    checksum: int

    @property
    def numel(self) -> int:
        """Elements of the original tensor."""
        n = 1
        for d in self.shape:
            n *= d
        return n


# ---- codec spec check ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _codec_dtypes(spec: str) -> tuple[str, ...]:
    """The dtype names the codec ``spec`` accepts, sorted; raises CodecError unless ``spec`` names a known codec
    with valid arguments (cached: specs repeat)."""
    return tuple(sorted(parse_any(spec).input_dtypes))


def _check_codec(spec: object, limits: Limits) -> tuple[str, ...]:
    """Check the codec field and return the dtype names that codec accepts; FrameError (``codec``) otherwise."""
    if not isinstance(spec, str) or not spec:
        raise FrameError("codec", f"expected a non-empty codec spec string, found {spec!r}")
    if len(spec) > limits.max_codec_chars:
        raise FrameError("codec", f"expected at most {limits.max_codec_chars} characters, found {len(spec)}")
    try:
        return _codec_dtypes(spec)
    except ValueError as e:  # CodecError is a ValueError
        raise FrameError("codec", f"expected a known codec spec, found {spec!r} ({e})") from None


def _check_dtype(dtype: object, codec: str, accepted: tuple[str, ...]) -> None:
    """FrameError (``dtype``) unless ``dtype`` is a wire dtype that ``codec`` accepts (integer dtypes: ``raw``)."""
    if not isinstance(dtype, str) or dtype not in WIRE_DTYPES:
        raise FrameError("dtype", f"expected one of {sorted(WIRE_DTYPES)}, found {dtype!r}")
    if dtype not in accepted:
        raise FrameError("dtype", f"expected one of {list(accepted)} for codec {codec!r}, found {dtype!r} "
                                  "(integer dtypes travel only with codec 'raw')")


# ---- validation ---------------------------------------------------------------------------------------------


def validate_header(header: FrameHeader, limits: Limits, payload: Buffer | None = None) -> None:
    """Check every field of ``header`` (and, when given, the payload against it) before anything is decoded.

    Checks: role is a TensorRole; edge is an EdgeId; step and micro_batch in range; codec spec parseable;
    dtype one of ``WIRE_DTYPES`` and accepted by the codec (integer dtypes only with ``raw``); shape has at most
    ``limits.max_ndim`` non-negative dims whose product is at most ``limits.max_elements``; payload_length at
    most ``limits.max_frame_bytes``; checksum kind known and computable here. With ``payload`` (a contiguous
    byte buffer): its length equals payload_length and its checksum matches. Raises :class:`FrameError` naming
    the first bad field.
    """
    if not isinstance(header.role, TensorRole):
        raise FrameError("role", f"expected one of {_role_names()}, found {header.role!r}")
    if not isinstance(header.edge, EdgeId):
        raise FrameError("edge", f"expected an EdgeId like 's0->s1', found {header.edge!r}")
    for name, bound in (("step", _U64), ("micro_batch", _U32)):
        value = getattr(header, name)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= bound:
            raise FrameError(name, f"expected an int in [0, {bound}], found {value!r}")
    accepted = _check_codec(header.codec, limits)
    _check_dtype(header.dtype, header.codec, accepted)
    _check_shape(header.shape, limits)
    n = header.payload_length
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise FrameError("payload_length", f"expected a non-negative int, found {n!r}")
    if n > limits.max_frame_bytes:
        raise FrameError("payload_length", f"expected at most {limits.max_frame_bytes} bytes (max frame size), "
                                           f"found {n}")
    if not isinstance(header.checksum_kind, ChecksumKind):
        raise FrameError("checksum_kind", f"expected one of {[k.value for k in ChecksumKind]}, "
                                          f"found {header.checksum_kind!r}")
    if not _checksum.available(header.checksum_kind):
        raise FrameError("checksum_kind", f"{header.checksum_kind.value!r} cannot be verified here: "
                                          "the 'xxhash' package is not installed")
    if not isinstance(header.checksum, int) or not 0 <= header.checksum <= _U64:
        raise FrameError("checksum", f"expected an unsigned 64-bit int, found {header.checksum!r}")
    if payload is not None:
        found = memoryview(payload).nbytes
        if found != n:
            raise FrameError("payload_length", f"expected {n} bytes of payload, found {found}")
        verify_checksum(header, _checksum.compute(header.checksum_kind, payload))


def verify_checksum(header: FrameHeader, computed: int) -> None:
    """Raise :class:`FrameError` unless ``computed`` (over the received payload) equals ``header.checksum``."""
    if computed != header.checksum:
        raise FrameError("checksum", f"expected {header.checksum:#018x} ({header.checksum_kind.value}) from the "
                                     f"header, computed {computed:#018x} over the payload")


def _check_shape(shape: object, limits: Limits) -> None:
    if not isinstance(shape, tuple):
        raise FrameError("shape", f"expected a tuple of non-negative ints, found {shape!r}")
    if len(shape) > limits.max_ndim:
        raise FrameError("shape", f"expected at most {limits.max_ndim} dims, found {len(shape)}")
    numel = 1
    for i, d in enumerate(shape):
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise FrameError("shape", f"expected non-negative int dims, found {d!r} at dim {i} of {shape}")
        numel *= d
    if numel > limits.max_elements:
        raise FrameError("shape", f"expected at most {limits.max_elements} elements, found {numel} "
                                  f"(product of {shape})")


def _role_names() -> str:
    return ", ".join(r.value for r in TensorRole)


def role_to_proto(role: TensorRole) -> int:
    """The protobuf enum value of ``role``."""
    return _ROLE_TO_PB[role]


def role_from_proto(value: int) -> TensorRole:
    """The TensorRole of a protobuf enum value; raises :class:`FrameError` (field ``role``) if unknown."""
    role = _PB_TO_ROLE.get(value)
    if role is None:
        raise FrameError("role", f"expected one of {_role_names()}, found enum value {value}")
    return role


# ---- (de)serialization --------------------------------------------------------------------------------------


def header_to_proto(header: FrameHeader) -> pb.FrameHeader:
    """The generated protobuf message for ``header`` (only the wire package sees this type)."""
    return pb.FrameHeader(
        edge=str(header.edge), role=_ROLE_TO_PB[header.role], step=header.step, micro_batch=header.micro_batch,
        codec=header.codec, shape=list(header.shape), dtype=header.dtype, payload_length=header.payload_length,
        checksum_kind=_CHECKSUM_TO_PB[header.checksum_kind], checksum=header.checksum,
    )


def header_to_bytes(header: FrameHeader) -> bytes:
    """Serialize ``header`` (protobuf ``layeredge.v1.FrameHeader``)."""
    return header_to_proto(header).SerializeToString()


@functools.lru_cache(maxsize=256)
def _parse_canonical_edge(text: str) -> EdgeId:
    """The EdgeId of ``text`` (cached: a stream repeats its edge); raises FrameError unless canonical."""
    try:
        edge = EdgeId.parse(text)
    except ValueError:
        raise FrameError("edge", f"expected an edge id like 's0->s1', found {text!r}") from None
    if str(edge) != text:
        raise FrameError("edge", f"expected canonical form {str(edge)!r}, found {text!r}")
    return edge


def header_from_proto(msg: pb.FrameHeader, limits: Limits) -> FrameHeader:
    """Convert and validate a received protobuf header; raises :class:`FrameError` for the first bad field."""
    role = role_from_proto(msg.role)
    if len(msg.edge) > limits.max_edge_chars:
        raise FrameError("edge", f"expected at most {limits.max_edge_chars} characters, found {len(msg.edge)}")
    edge = _parse_canonical_edge(msg.edge)
    if len(msg.shape) > limits.max_ndim:
        raise FrameError("shape", f"expected at most {limits.max_ndim} dims, found {len(msg.shape)}")
    kind = _PB_TO_CHECKSUM.get(msg.checksum_kind)
    if kind is None:
        raise FrameError("checksum_kind", f"expected one of {[k.value for k in ChecksumKind]}, "
                                          f"found enum value {msg.checksum_kind}")
    header = FrameHeader(
        edge=edge, role=role, step=msg.step, micro_batch=msg.micro_batch, codec=msg.codec,
        shape=tuple(msg.shape), dtype=msg.dtype, payload_length=msg.payload_length, checksum_kind=kind,
        checksum=msg.checksum,
    )
    validate_header(header, limits)
    return header


def header_from_bytes(data: Buffer, limits: Limits) -> FrameHeader:
    """Parse and validate a serialized header; raises :class:`FrameError` (field ``"header"`` when the bytes are
    not a FrameHeader at all)."""
    try:
        msg = pb.FrameHeader.FromString(bytes(data))
    except DecodeError as e:
        raise FrameError("header", f"expected a serialized layeredge.v1.FrameHeader, found {len(data)} "
                                   f"undecodable bytes ({e})") from None
    return header_from_proto(msg, limits)
