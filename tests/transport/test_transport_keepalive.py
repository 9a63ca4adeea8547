"""Idle connections survive keepalive pings: the server accepts the client's idle pings (no GOAWAY
too_many_pings, which gRPC logs but otherwise hides by reconnecting)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from layeredge_dist.codecs import parse_codec
    from layeredge_dist.transport import StageServer, TransportConfig, open_sender
    from layeredge_dist.types import EdgeId, TensorRole
    from layeredge_dist.wire import frame_from_encoded
    edge = EdgeId.parse("s0->s1")
    cfg = TransportConfig(token="t", tcp_data_path=sys.argv[1] == "tcp", keepalive_time_ms=300,
                          keepalive_timeout_ms=2000, server_min_ping_interval_ms=200)
    with StageServer("127.0.0.1:0", cfg) as server:
        rx = server.receiver(edge, TensorRole.ACTIVATION)
        with open_sender(server.address, edge, TensorRole.ACTIVATION, cfg) as tx:
            for step in range(3):
                x = torch.full((16,), float(step))
                tx.send(frame_from_encoded(parse_codec("fp32").encode(x), edge, TensorRole.ACTIVATION, step, 0),
                        timeout_s=5)
                tx.flush(timeout_s=5)
                assert rx.receive(timeout_s=5).header.step == step
                time.sleep(2.0)  # idle for ~6 keepalive intervals
        print("stream_errors", server.counters.get("stream_errors"))
""")


@pytest.mark.parametrize("path", ["tcp", "grpc"])
def test_idle_channel_keepalive_pings_are_accepted(path: str) -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT, path], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "GRPC_VERBOSITY": "info"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "stream_errors 0" in out.stdout
    assert "too_many_pings" not in out.stderr, "the server refused our keepalive pings (option name?)"
