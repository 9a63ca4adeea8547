"""The EdgeChannel contract: move frames along one edge, with timeouts, bounded in-flight data and close().

A stage holds an :class:`EdgeSender` per outgoing (edge, role) and an :class:`EdgeReceiver` per incoming one.
:class:`EdgeChannel` is both ends at once (what the in-process implementation provides).
"""

from __future__ import annotations

import abc

from layeredge_dist.types import EdgeId, TensorRole
from layeredge_dist.wire import Frame


class EdgeEndpoint:
    """What every end of an edge knows: which edge and which tensor role it carries (fixed at construction)."""

    def __init__(self, edge: EdgeId, role: TensorRole) -> None:
        self._edge = edge
        self._role = role

    @property
    def edge(self) -> EdgeId:
        """The edge this end feeds or drains."""
        return self._edge

    @property
    def role(self) -> TensorRole:
        """The role of the frames it carries."""
        return self._role


class EdgeSender(EdgeEndpoint, abc.ABC):
    """The sending end of one (edge, role).

    Frames are delivered in order. ``send`` returns once the frame fits the in-flight window (it does not wait
    for the receiver); the payload is read after ``send`` returns, so the caller must not modify it until
    ``flush`` has returned. Errors of earlier frames surface on the next ``send`` or ``flush``.
    """

    @abc.abstractmethod
    def send(self, frame: Frame, *, timeout_s: float) -> None:
        """Queue ``frame``; blocks at most ``timeout_s`` seconds for window space.

        Raises DeadlineExceeded when the window stays full, FrameRejected / Unauthenticated / PeerUnavailable when
        the receiver refused an earlier frame or became unreachable, ChannelClosed after close(), and
        FrameError when ``frame`` is for another edge.
        """

    @abc.abstractmethod
    def flush(self, *, timeout_s: float) -> None:
        """Wait until every sent frame is acknowledged by the receiver; same errors as ``send``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop sending; unacknowledged frames may be lost. Idempotent."""


class EdgeReceiver(EdgeEndpoint, abc.ABC):
    """The receiving end of one (edge, role): frames arrive validated (header, length, checksum)."""

    @abc.abstractmethod
    def receive(self, *, timeout_s: float) -> Frame:
        """The next frame; raises DeadlineExceeded after ``timeout_s`` seconds, ChannelClosed once closed."""

    def release(self, frame: Frame) -> None:  # noqa: B027 - optional hook with a no-op default
        """Hand ``frame``'s payload buffer back for reuse; the caller must not touch the payload afterwards."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop receiving; pending and future receive() calls raise ChannelClosed. Idempotent."""


class EdgeChannel(EdgeSender, EdgeReceiver, abc.ABC):
    """Both ends of one (edge, role) in one object."""
