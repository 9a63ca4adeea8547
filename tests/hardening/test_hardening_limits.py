"""Limits and backpressure against a real StageServer child.

* A frame whose header claims more than ``Limits.max_frame_bytes`` or ``Limits.max_elements``, or a data-path
  header longer than 64 KiB, is rejected on its header alone: the client sends nothing but the header and gets
  INVALID_ARGUMENT back, so the server never waited for (or allocated) the payload. A gRPC message above
  ``max_message_bytes`` is refused by gRPC itself (RESOURCE_EXHAUSTED) without the server's memory growing by
  its size.
* A slow consumer (a receiver nobody drains) and a fast sender: the sender's ``send`` blocks on its in-flight
  window and raises DeadlineExceeded after its timeout, instead of the receiver's memory growing: the server's
  peak RSS grows by at most about ``inbox_bytes`` + the window.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import socket
import time
from collections.abc import Iterator

import grpc
import pytest
from hardening_support import ServerProc, grpc_frames_call, open_data_connection, start_servers, valid_frame

from layeredge_dist.transport import DeadlineExceeded, TransportConfig, open_sender
from layeredge_dist.types import EdgeId, TensorRole
from layeredge_dist.wire import datapath, envelope

MiB = 1 << 20
INBOX = 8 * MiB
WINDOW_FRAMES, WINDOW_BYTES = 4, 4 * MiB
FRAME = 1 * MiB
LIMITS = {"max_frame_bytes": 2 * MiB, "max_elements": 1 << 20}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProc]]:
    common = {"tcp_data_path": True, "tune_malloc": True, "inbox_bytes": INBOX, "max_message_bytes": 2 * MiB,
              "chunk_bytes": 256 << 10, "buffer_pool_bytes": 8 * MiB}
    procs = start_servers({"limits": {**common, "limits": LIMITS}, "slow-grpc": {**common, "drain": False},
                           "slow-tcp": {**common, "drain": False}}, tmp_path_factory.mktemp("limits"))
    yield procs
    for p in procs.values():
        p.kill()


def _claim(**changes: object):  # type: ignore[no-untyped-def]
    f = valid_frame(random.Random(1), "s0->s1", "activation", 1)
    return dataclasses.replace(f.header, **changes)


CLAIMS = [
    ("payload_length", {"payload_length": LIMITS["max_frame_bytes"] + 1},
     "payload_length: expected at most 2097152 bytes (max frame size), found 2097153"),
    ("payload_length", {"payload_length": 1 << 62}, "payload_length: expected at most 2097152 bytes"),
    ("shape", {"shape": (1 << 10, (1 << 10) + 1)}, "shape: expected at most 1048576 elements, found 1049600"),
    ("shape", {"shape": (1 << 40, 1 << 40)}, "shape: expected at most 1048576 elements"),
]


def test_oversized_claims_rejected_on_the_header(servers: dict[str, ServerProc]) -> None:
    server = servers["limits"]
    before = server.counters()
    server.cmd("reset_peak")
    rss0 = server.rss()["rss"]
    channel = grpc.insecure_channel(server.address)
    try:
        for field, changes, message in CLAIMS:
            header = _claim(**changes)
            # gRPC: the header alone, then the stream stays open (no payload ever comes)
            ans = grpc_frames_call(channel, [envelope.header_message(header)], None, 10.0)
            assert ans.code == "INVALID_ARGUMENT" and ans.details.startswith(message), ans
            # TCP data path: the header alone, without closing our side: the error record comes back at once
            s = open_data_connection(channel, "127.0.0.1", None, 10.0)
            try:
                s.sendall(datapath.frame_prefix(header))
                t0 = time.monotonic()
                rec = datapath.read_record(lambda n: _recv_exact(s, n))
                assert rec.code == "INVALID_ARGUMENT" and (rec.message or "").startswith(message), rec
                assert field in message
                assert time.monotonic() - t0 < 5
            finally:
                s.close()
        # a data-path header longer than 64 KiB is refused by its 4-byte length
        s = open_data_connection(channel, "127.0.0.1", None, 10.0)
        try:
            s.sendall((datapath.MAX_HEADER_BYTES + 1).to_bytes(4, "little"))
            rec = datapath.read_record(lambda n: _recv_exact(s, n))
            assert rec.code == "INVALID_ARGUMENT" and "expected at most 65536 header bytes" in (rec.message or "")
        finally:
            s.close()
        # a gRPC message above max_message_bytes (2 MiB): refused by gRPC before our handler sees it
        big = envelope.chunk_message(bytes(16 * MiB))
        ans = grpc_frames_call(channel, [big], None, 20.0)
        assert ans.code == "RESOURCE_EXHAUSTED" and "larger than max" in ans.details, ans
    finally:
        channel.close()
    after = server.counters()
    assert after["invalid_frames"] - before["invalid_frames"] == 2 * len(CLAIMS) + 1
    assert after["frames_received"] == before["frames_received"]
    growth = server.rss()["peak"] - rss0
    assert growth < 24 * MiB, f"peak RSS grew {growth / MiB:.1f} MiB while refusing oversized claims"
    assert server.alive()


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


@pytest.mark.parametrize("tcp", [False, True], ids=["grpc", "tcp-data-path"])
def test_slow_consumer_blocks_the_sender_not_the_receiver_memory(servers: dict[str, ServerProc], tcp: bool) -> None:
    server = servers["slow-tcp" if tcp else "slow-grpc"]  # a fresh receiver each: no pooled buffers to reuse
    edge = EdgeId.parse("s3->s4" if tcp else "s1->s2")
    role = TensorRole.ACTIVATION
    cfg = TransportConfig(tcp_data_path=tcp, window_frames=WINDOW_FRAMES, window_bytes=WINDOW_BYTES,
                          chunk_bytes=256 << 10, max_message_bytes=2 * MiB)
    rng = random.Random(7)
    frames = []
    sent = 0
    with open_sender(server.address, edge, role, cfg) as tx:
        warm = _frame(rng, edge, 0)
        tx.send(warm, timeout_s=20)
        tx.flush(timeout_s=20)
        frames.append(warm)
        server.cmd("reset_peak")
        base = server.rss()["rss"]
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded, match=r"in-flight window full for 1 s \(4 frames, 4194304 B "
                                                   r"unacknowledged; window 4 frames / 4194304 B\)"):
            for step in range(1, 200):
                f = _frame(rng, edge, step)
                tx.send(f, timeout_s=1.0)
                frames.append(f)
                sent += 1
                n, nbytes = tx.unacknowledged
                assert n <= WINDOW_FRAMES and nbytes <= WINDOW_BYTES
        elapsed = time.monotonic() - t0
        queued = server.cmd("queued", edge=str(edge), role=role.value)["bytes"]
        peak = server.rss()["peak"]
        # the inbox (with one frame held at its door) plus the window; nothing beyond was even sent
        assert sent + 1 <= INBOX // FRAME + 1 + WINDOW_FRAMES, sent
        assert queued <= INBOX
        growth = peak - base
        assert growth <= INBOX + WINDOW_BYTES + 16 * MiB, \
            f"receiver peak RSS grew {growth / MiB:.1f} MiB (inbox {INBOX // MiB} MiB, window {WINDOW_BYTES // MiB} MiB)"
        assert elapsed < 30
        # the consumer catches up: everything the sender was told was sent arrives, in order, bit-exactly
        for f in frames:
            got = server.cmd("receive", edge=str(edge), role=role.value, step=f.step, timeout_s=20)
            assert got.get("sha256") == hashlib.sha256(f.payload_bytes()).hexdigest() and got["skipped"] == 0, got
        tx.flush(timeout_s=20)
    print(f"{'tcp' if tcp else 'grpc'}: {sent + 1} frames of 1 MiB accepted before send() timed out; receiver "
          f"queued {queued / MiB:.0f} MiB, peak RSS +{growth / MiB:.1f} MiB")


def _frame(rng: random.Random, edge: EdgeId, step: int):  # type: ignore[no-untyped-def]
    import torch

    from layeredge_dist.codecs.base import Encoded
    from layeredge_dist.wire import frame_from_encoded

    payload = torch.randint(0, 256, (FRAME,), dtype=torch.uint8, generator=torch.Generator().manual_seed(step))
    return frame_from_encoded(Encoded("raw", (FRAME,), "uint8", payload), edge, TensorRole.ACTIVATION, step, 0)
