"""Encoded tensors <-> frames on the wire. The only package that imports the generated protobuf code.

- :class:`Frame` / :class:`FrameHeader`: one encoded tensor on one edge, with role, step, micro-batch, codec
  spec, shape, dtype, payload length and checksum.
- :func:`frame_from_encoded`, :func:`encoded_from_frame`: to and from the codec layer's ``Encoded``.
- :func:`validate_header` / :func:`validate_frame`: every check a receiver runs before decoding; failures are
  :class:`FrameError` (a ValueError) naming the field, expected vs found.
- :mod:`.envelope`: the hand-encoded stream messages of the ``Frames`` method; :mod:`.service`: method names and
  the probe messages.
"""

from __future__ import annotations

from .checksum import ChecksumKind
from .errors import FrameError
from .frame import (
    Frame,
    FrameHeader,
    encoded_from_frame,
    frame_from_encoded,
    header_from_bytes,
    header_to_bytes,
    payload_view,
    validate_frame,
    validate_header,
)
from .limits import Limits

__all__ = [
    "ChecksumKind", "Frame", "FrameError", "FrameHeader", "Limits", "encoded_from_frame", "frame_from_encoded",
    "header_from_bytes", "header_to_bytes", "payload_view", "validate_frame", "validate_header",
]
