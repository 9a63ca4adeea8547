"""The one exception the wire layer raises for a malformed or inconsistent frame."""

from __future__ import annotations


class FrameError(ValueError):
    """A frame (header, payload or stream message) failed validation.

    ``field`` names the offending header field (``"role"``, ``"payload_length"``, ``"checksum"``, ...) or
    ``"message"`` for a stream message that is not a valid envelope. The message says what was expected and
    what was found, e.g. ``"payload_length: expected 1024 bytes of payload, found 1000"``; the transport sends
    it back to the peer verbatim with gRPC status INVALID_ARGUMENT.
    """

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail
