"""Pure tensor codecs: tensor -> Encoded -> tensor. No grpc, ray or prometheus imports here.

Start with :func:`parse_codec` (stateless codecs) or :func:`parse_any` (also ``ef(...)`` / ``delta(...)``).
"""

from .base import Codec, CodecError, Encoded
from .registry import EXAMPLES, known_names, parse_any, parse_codec

__all__ = ["Codec", "CodecError", "Encoded", "EXAMPLES", "known_names", "parse_any", "parse_codec"]
