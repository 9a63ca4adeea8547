"""Exceptions of the transport layer; every one names the edge or peer and what to do about it."""

from __future__ import annotations


class TransportError(RuntimeError):
    """A frame could not be sent or received. ``code`` is the gRPC status name when one is known."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class PeerUnavailable(TransportError):
    """The peer could not be reached, or the stream to it broke (peer died, network down)."""


class DeadlineExceeded(TransportError, TimeoutError):
    """An operation did not finish within its timeout (window full, no frame arrived, no ack came back)."""


class FrameRejected(TransportError):
    """The receiver rejected a frame as malformed (gRPC INVALID_ARGUMENT); the message is the receiver's."""


class Unauthenticated(TransportError):
    """The receiver refused our credentials (gRPC UNAUTHENTICATED): missing or wrong token, or client cert."""


class ChannelClosed(TransportError):
    """The sender or receiver was closed (or its server stopped) before the operation finished."""
