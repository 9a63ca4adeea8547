"""A bounded, closable FIFO of frames for one (edge, role), bounded by payload bytes."""

from __future__ import annotations

import collections
import threading
import time

from layeredge_dist.wire import Frame

from .errors import ChannelClosed, DeadlineExceeded


class Inbox:
    """FIFO of frames holding at most ``capacity_bytes`` of payload (one frame is always admitted when empty).

    ``put`` blocks while full; ``get`` blocks while empty. Both take a timeout in seconds and raise
    DeadlineExceeded when it passes, ChannelClosed once :meth:`close` was called.
    """

    def __init__(self, capacity_bytes: int, name: str) -> None:
        self._capacity = capacity_bytes
        self._name = name
        self._frames: collections.deque[Frame] = collections.deque()
        self._bytes = 0
        self._closed = False
        self._cond = threading.Condition()

    @property
    def queued_bytes(self) -> int:
        """Payload bytes queued now."""
        with self._cond:
            return self._bytes

    def __len__(self) -> int:
        with self._cond:
            return len(self._frames)

    def put(self, frame: Frame, timeout_s: float, notify: bool = True) -> None:
        """Append ``frame``; with ``notify=False`` waiting receivers are woken only by a later :meth:`notify`
        (lets a server send its ack before a consumer thread competes for the CPU)."""
        n = frame.nbytes
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._closed and self._frames and self._bytes + n > self._capacity:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeadlineExceeded(f"{self._name}: inbox full ({self._bytes} B queued, capacity "
                                           f"{self._capacity} B) for {timeout_s:.3g} s", "DEADLINE_EXCEEDED")
                self._cond.wait(left)
            if self._closed:
                raise ChannelClosed(f"{self._name}: receiver closed")
            self._frames.append(frame)
            self._bytes += n
            if notify:
                self._cond.notify_all()

    def notify(self) -> None:
        """Wake receivers waiting for a frame (after ``put(..., notify=False)``)."""
        with self._cond:
            self._cond.notify_all()

    def get(self, timeout_s: float) -> Frame:
        """Take the oldest frame, waiting up to ``timeout_s``; DeadlineExceeded / ChannelClosed otherwise."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._frames:
                if self._closed:
                    raise ChannelClosed(f"{self._name}: receiver closed")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeadlineExceeded(f"{self._name}: no frame within {timeout_s:.3g} s", "DEADLINE_EXCEEDED")
                self._cond.wait(left)
            frame = self._frames.popleft()
            self._bytes -= frame.nbytes
            self._cond.notify_all()
            return frame

    def wait_empty(self, timeout_s: float) -> None:
        """Block until every queued frame was taken; DeadlineExceeded after ``timeout_s``, ChannelClosed if
        closed with frames left."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._frames:
                if self._closed:
                    raise ChannelClosed(f"{self._name}: receiver closed with {len(self._frames)} frames unread")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeadlineExceeded(f"{self._name}: {len(self._frames)} frames still unread after "
                                           f"{timeout_s:.3g} s", "DEADLINE_EXCEEDED")
                self._cond.wait(left)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        with self._cond:
            return self._closed
