"""The in-process EdgeChannel: same contract as the gRPC one (window, timeouts, close, validation, hooks)."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
import torch
from transport_support import EDGE, ROLE, make_frame

from layeredge_dist.transport import (
    ChannelClosed,
    DeadlineExceeded,
    InProcessChannel,
    TransferRecord,
)
from layeredge_dist.types import Direction, EdgeId, TensorRole
from layeredge_dist.wire import Frame, FrameError


def test_frames_arrive_in_order() -> None:
    ch = InProcessChannel(EDGE, ROLE)
    frames = [make_frame(100, step=i, seed=i) for i in range(5)]
    for f in frames:
        ch.send(f, timeout_s=1)
    ch.send(make_frame(0, step=5), timeout_s=1)
    got = [ch.receive(timeout_s=1) for _ in range(6)]
    assert [g.step for g in got] == list(range(6))
    assert all(torch.equal(a.payload, b.payload) for a, b in zip(frames, got))
    ch.flush(timeout_s=1)


def test_window_blocks_and_times_out() -> None:
    ch = InProcessChannel(EDGE, ROLE, window_bytes=1000)
    ch.send(make_frame(600), timeout_s=1)  # one frame always fits
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=r"inbox full \(600 B queued, capacity 1000 B\) for 0.2 s"):
        ch.send(make_frame(600), timeout_s=0.2)
    assert 0.15 < time.monotonic() - t0 < 2
    with pytest.raises(DeadlineExceeded, match=r"1 frames still unread after 0.1 s"):
        ch.flush(timeout_s=0.1)
    threading.Timer(0.1, lambda: ch.receive(timeout_s=1)).start()
    ch.send(make_frame(600), timeout_s=2)  # unblocked by the receive


def test_receive_timeout_and_close() -> None:
    ch = InProcessChannel(EDGE, ROLE)
    with pytest.raises(DeadlineExceeded, match=r"no frame within 0.05 s"):
        ch.receive(timeout_s=0.05)
    threading.Timer(0.1, ch.close).start()
    with pytest.raises(ChannelClosed):
        ch.receive(timeout_s=5)
    with pytest.raises(ChannelClosed):
        ch.send(make_frame(10), timeout_s=1)


def test_rejects_bad_frames() -> None:
    ch = InProcessChannel(EDGE, ROLE)
    with pytest.raises(FrameError, match=r"edge: expected a frame for s0->s1 activation, found s1->s2 activation"):
        ch.send(make_frame(10, edge=EdgeId.parse("s1->s2")), timeout_s=1)
    f = make_frame(64)
    bad = f.payload.clone()
    bad[0] ^= 1
    with pytest.raises(FrameError, match=r"checksum: expected"):
        ch.send(Frame(f.header, bad), timeout_s=1)
    with pytest.raises(FrameError, match=r"dtype: expected one of"):
        ch.send(Frame(dataclasses.replace(f.header, dtype="int64"), f.payload), timeout_s=1)


def test_hooks_and_counters() -> None:
    records: list[TransferRecord] = []
    ch = InProcessChannel(EDGE, TensorRole.GRADIENT, hooks=(records.append, lambda r: 1 / 0))
    ch.send(make_frame(100, role=TensorRole.GRADIENT), timeout_s=1)
    ch.receive(timeout_s=1)
    (r,) = records
    assert (r.edge, r.role, r.direction, r.codec, r.elements, r.raw_bytes, r.wire_bytes) == (
        EDGE, TensorRole.GRADIENT, Direction.SEND, "fp16", 50, 200, 100)
    snap = ch.counters.snapshot()
    assert snap["frames_sent"] == snap["frames_received"] == 1 and snap["hook_errors"] == 1
