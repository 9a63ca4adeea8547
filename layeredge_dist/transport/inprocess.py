"""In-process EdgeChannel for unit tests of stage code: a bounded queue, same contract as the gRPC transport."""

from __future__ import annotations

import time

from layeredge_dist.types import Direction, EdgeId, TensorRole
from layeredge_dist.wire import Frame, FrameError, Limits, validate_frame, validate_header

from .accounting import AccountingHook, Counters, TransferRecord, emit, raw_bytes
from .channel import EdgeChannel
from .errors import ChannelClosed
from .inbox import Inbox


class InProcessChannel(EdgeChannel):
    """Both ends of one (edge, role) in one process.

    ``send`` validates the frame (header always; checksum too when ``verify_checksum``) and blocks while more
    than ``window_bytes`` of payload are unread (one frame always fits). Frames are passed by reference.
    """

    def __init__(self, edge: EdgeId, role: TensorRole, *, window_bytes: int = 128 << 20,
                 limits: Limits = Limits(), verify_checksum: bool = True,
                 hooks: tuple[AccountingHook, ...] = ()) -> None:
        super().__init__(edge, role)
        self._limits = limits
        self._verify = verify_checksum
        self._hooks = hooks
        self.counters = Counters()
        self._inbox = Inbox(window_bytes, f"in-process {edge} {role.value}")
        self._closed = False

    def send(self, frame: Frame, *, timeout_s: float) -> None:
        if self._closed:
            raise ChannelClosed(f"in-process {self._edge} {self._role.value}: sender closed")
        if frame.edge != self._edge or frame.role != self._role:
            raise FrameError("edge", f"expected a frame for {self._edge} {self._role.value}, found "
                                     f"{frame.edge} {frame.role.value}")
        if self._verify:
            validate_frame(frame, self._limits)
        else:
            validate_header(frame.header, self._limits)
        t0 = time.perf_counter()
        self._inbox.put(frame, timeout_s)
        h = frame.header
        self.counters.add("frames_sent")
        self.counters.add("bytes_sent", h.payload_length)
        emit(self._hooks, TransferRecord(h.edge, h.role, Direction.SEND, h.codec, h.numel,
                                         raw_bytes(h.dtype, h.numel), h.payload_length,
                                         time.perf_counter() - t0), self.counters)

    def flush(self, *, timeout_s: float) -> None:
        self._inbox.wait_empty(timeout_s)

    def receive(self, *, timeout_s: float) -> Frame:
        frame = self._inbox.get(timeout_s)
        self.counters.add("frames_received")
        self.counters.add("bytes_received", frame.nbytes)
        return frame

    def close(self) -> None:
        self._closed = True
        self._inbox.close()
