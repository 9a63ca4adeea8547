"""The gRPC transport against real servers in separate processes on 127.0.0.1."""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from transport_support import (
    EDGE,
    ROLE,
    Child,
    ServerProc,
    make_certs,
    make_frame,
    start_servers,
    write_messages,
)

from layeredge_dist.transport import (
    DeadlineExceeded,
    EdgeSender,
    FrameRejected,
    GrpcEdgeSender,
    PeerUnavailable,
    StageServer,
    TcpEdgeSender,
    TLSConfig,
    TransferRecord,
    TransportConfig,
    Unauthenticated,
    open_sender,
    probe,
)
from layeredge_dist.transport.sender import make_channel
from layeredge_dist.types import Direction, EdgeId, TensorRole
from layeredge_dist.wire import datapath, envelope, service

Spawn = Callable[..., ServerProc]
Servers = dict[str, ServerProc]
SMALL = TransportConfig(chunk_bytes=64 << 10, max_message_bytes=1 << 20)
STALL_INBOX = 256 << 10


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    pytest.importorskip("cryptography")
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def servers(certs: dict[str, str]) -> Iterator[Servers]:
    """Server processes shared by this module, started in parallel (each costs seconds of imports)."""

    def tls(mtls: bool) -> dict[str, object]:
        return {"root_certs": certs["ca"], "cert_chain": certs["server_cert"], "private_key": certs["server_key"],
                "require_client_auth": mtls}

    procs = start_servers({
        "plain": {},
        "stall": {"inbox_bytes": STALL_INBOX, "tcp_data_path": True},  # nothing drains unless a test says so
        "tls": {"tls": tls(False), "token": "tok"},  # also the token-auth server
        "mtls": {"tls": tls(True), "token": "tok"},
        "victim": {"tcp_data_path": True},
        "fast": {"tcp_data_path": True, "token": "ft"},
    })
    yield procs
    for p in procs.values():
        p.kill()


def _recv(server: ServerProc, edge: EdgeId = EDGE, role: TensorRole = ROLE, timeout_s: float = 5) -> dict[str, object]:
    return server.cmd("receive", edge=str(edge), role=role.value, timeout_s=timeout_s)


def _count(server: ServerProc, name: str) -> int:
    return int(server.cmd("counters")[name])  # type: ignore[arg-type]


def test_frames_round_trip_in_order_with_chunking(servers: Servers) -> None:
    server = servers["plain"]
    before = _count(server, "frames_received")
    frames = [make_frame(n, step=i, seed=i) for i, n in enumerate([0, 1, 1000, (64 << 10) * 5 + 7, 64 << 10])]
    records: list[TransferRecord] = []
    with GrpcEdgeSender(server.address, EDGE, ROLE, SMALL, hooks=(records.append,)) as tx:
        for f in frames:
            tx.send(f, timeout_s=5)
        tx.flush(timeout_s=5)
        assert tx.unacknowledged == (0, 0)
        for f in frames:
            got = _recv(server)
            assert (got["step"], got["nbytes"], got["codec"]) == (f.step, f.nbytes, "fp16")
            assert got["crc"] == zlib.crc32(f.payload_bytes())
    for r, f in zip(records, frames):  # wire bytes: payload plus header and per-chunk framing, nothing more
        chunks = max(1, -(-f.nbytes // SMALL.chunk_bytes))
        assert f.nbytes < r.wire_bytes <= f.nbytes + 256 + 16 * chunks, (r.wire_bytes, f.nbytes)
    assert all(r.direction is Direction.SEND and r.transfer_s > 0 for r in records)
    assert _count(server, "frames_received") == before + len(frames)


def test_port_zero_reports_real_port_and_no_port_sharing() -> None:
    a = StageServer("127.0.0.1:0", TransportConfig())
    port = a.start()
    try:
        assert port > 0 and a.address == f"127.0.0.1:{port}"
        with pytest.raises(OSError, match=rf"cannot bind 127.0.0.1:{port}"):
            StageServer(f"127.0.0.1:{port}", TransportConfig()).start()
    finally:
        a.stop(0)


def test_non_loopback_needs_auth_unless_disabled() -> None:
    with pytest.raises(ValueError, match=r"refusing to serve 0.0.0.0:0 without authentication"):
        StageServer("0.0.0.0:0", TransportConfig())
    with pytest.raises(ValueError, match=r"bearer token over plain text"):
        StageServer("[::]:0", TransportConfig(token="t"))
    StageServer("0.0.0.0:0", TransportConfig(allow_unauthenticated=True))  # constructed, never started
    with pytest.raises(ValueError, match=r"refusing to send the bearer token in clear text to 10.1.2.3:1"):
        GrpcEdgeSender("10.1.2.3:1", EDGE, ROLE, TransportConfig(token="t"))


def _client_tls(certs: dict[str, str], client_cert: bool = True) -> TLSConfig:
    if client_cert:
        return TLSConfig.from_files(certs["ca"], certs["client_cert"], certs["client_key"])
    return TLSConfig.from_files(certs["ca"])


def test_health_and_reflection(servers: Servers, certs: dict[str, str]) -> None:
    server = servers["tls"]
    tls = _client_tls(certs, client_cert=False)
    channel = grpc.secure_channel(server.address, grpc.ssl_channel_credentials(tls.root_certs))
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", service.SERVICE_NAME):  # health is exempt from auth
            reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        (resp,) = list(refl.ServerReflectionInfo(iter([req]), timeout=5,
                                                 metadata=(("authorization", "Bearer tok"),)))
        names = {s.name for s in resp.list_services_response.service}
        assert service.SERVICE_NAME in names and "grpc.health.v1.Health" in names
    finally:
        channel.close()


def test_token_auth_rejects_and_counts(servers: Servers, certs: dict[str, str]) -> None:
    server = servers["tls"]
    tls = _client_tls(certs)
    before = _count(server, "unauthenticated")
    for cfg in (TransportConfig(tls=tls), TransportConfig(tls=tls, token="wrong")):
        with GrpcEdgeSender(server.address, EDGE, ROLE, cfg) as tx:
            with pytest.raises(Unauthenticated, match=r"connecting to 127.0.0.1:\d+: UNAUTHENTICATED: "
                                                      r"/layeredge.v1.StageService/Ping: "
                                                      r"(missing authorization metadata|wrong bearer token)"):
                tx.send(make_frame(100), timeout_s=5)
    with pytest.raises(Unauthenticated):
        probe(server.address, TransportConfig(tls=tls, token="nope"), pings=1, probe_bytes=1)
    assert _count(server, "unauthenticated") == before + 3
    with GrpcEdgeSender(server.address, EDGE, ROLE, TransportConfig(tls=tls, token="tok")) as tx:
        tx.send(make_frame(100), timeout_s=5)
        tx.flush(timeout_s=5)
    assert _recv(server)["nbytes"] == 100


@pytest.mark.parametrize("kind", ["tls", "mtls"])
def test_tls_and_mutual_tls(servers: Servers, certs: dict[str, str], kind: str) -> None:
    server = servers[kind]
    with_cert = _client_tls(certs)
    with GrpcEdgeSender(server.address, EDGE, ROLE, TransportConfig(tls=with_cert, token="tok")) as tx:
        tx.send(make_frame(5000), timeout_s=5)
        tx.flush(timeout_s=5)
    assert _recv(server)["nbytes"] == 5000
    result = probe(server.address, TransportConfig(tls=with_cert, token="tok"), pings=2, probe_bytes=1 << 20)
    assert result.rtt_s > 0 and result.probe_bytes == 1 << 20
    without_cert = _client_tls(certs, client_cert=False)
    if kind == "tls":  # server-only TLS: no client certificate needed
        with GrpcEdgeSender(server.address, EDGE, ROLE, TransportConfig(tls=without_cert, token="tok")) as tx:
            tx.send(make_frame(10), timeout_s=5)
            tx.flush(timeout_s=5)
        assert _recv(server)["nbytes"] == 10
    else:  # mutual TLS: the handshake fails without a client certificate
        cfg = TransportConfig(tls=without_cert, token="tok", connect_timeout_s=1)
        with GrpcEdgeSender(server.address, EDGE, ROLE, cfg) as tx:
            with pytest.raises(PeerUnavailable, match=r"could not connect to 127.0.0.1:\d+ within 1 s"):
                tx.send(make_frame(10), timeout_s=5)
    # a plain-text client cannot talk to a TLS server
    with GrpcEdgeSender(server.address, EDGE, ROLE, TransportConfig(token="tok", connect_timeout_s=1)) as tx:
        with pytest.raises(PeerUnavailable, match=r"could not connect to 127.0.0.1:\d+ within 1 s"):
            tx.send(make_frame(10), timeout_s=5)


def test_receive_timeout_is_a_clear_error() -> None:
    with StageServer("127.0.0.1:0", TransportConfig()) as server:
        rx = server.receiver(EDGE, ROLE)
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded, match=r"s0->s1 activation: no frame within 0.2 s"):
            rx.receive(timeout_s=0.2)
        assert time.monotonic() - t0 < 2


def test_stream_deadline_expiry_is_a_clear_error(servers: Servers) -> None:
    server = servers["stall"]
    edge = EdgeId.parse("s7->s8")
    cfg = TransportConfig(stream_deadline_s=1.0)
    frame = make_frame(STALL_INBOX // 2 + 1, edge=edge)  # one fits the inbox, then the stream stalls
    with GrpcEdgeSender(server.address, edge, ROLE, cfg) as tx:
        for i in range(3):
            tx.send(frame, timeout_s=5)
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded, match=r"s7->s8 activation -> 127.0.0.1:\d+: DEADLINE_EXCEEDED: .*"
                                                   r"\(the call's deadline passed\) \(\d frames unacknowledged, "
                                                   r"lost\)") as info:
            tx.flush(timeout_s=10)
        assert info.value.code == "DEADLINE_EXCEEDED"
        assert time.monotonic() - t0 < 5
        # the sender recovers on a new stream once the receiver drains
        server.cmd("drain", edge=str(edge), role=ROLE.value)
        tx.send(make_frame(10, edge=edge), timeout_s=5)
        tx.flush(timeout_s=5)


def test_window_and_backpressure(servers: Servers) -> None:
    server = servers["stall"]
    edge = EdgeId.parse("s5->s6")
    cfg = TransportConfig(window_frames=4, window_bytes=1 << 20, chunk_bytes=64 << 10)
    frame = make_frame(100 << 10, edge=edge)
    with GrpcEdgeSender(server.address, edge, ROLE, cfg) as tx:
        sent = 0
        with pytest.raises(DeadlineExceeded, match=r"in-flight window full for 0.5 s \(4 frames, 409600 B "
                                                   r"unacknowledged; window 4 frames / 1048576 B\)"):
            for _ in range(50):
                tx.send(frame, timeout_s=0.5)
                sent += 1
                frames, nbytes = tx.unacknowledged
                assert frames <= 4 and nbytes <= 1 << 20
        queued = server.cmd("queued", edge=str(edge), role=ROLE.value)["bytes"]
        assert queued <= STALL_INBOX
        # beyond the inbox (+1 frame blocked in delivery) and the window, nothing was sent
        assert sent <= STALL_INBOX // frame.nbytes + 1 + 4
        server.cmd("drain", edge=str(edge), role=ROLE.value)
        tx.flush(timeout_s=10)
        tx.send(frame, timeout_s=5)
        tx.flush(timeout_s=5)
    deadline = time.monotonic() + 5
    while server.cmd("drained", edge=str(edge))["frames"] < sent + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.cmd("drained", edge=str(edge))["frames"] == sent + 1  # nothing lost, nothing duplicated


def _raw_frames_call(address: str, messages: list[bytes]) -> grpc.RpcError:
    channel = make_channel(address, TransportConfig())
    try:
        call = channel.stream_stream(service.method_path(service.FRAMES_METHOD), request_serializer=None,
                                     response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            for _ in call(iter(messages), timeout=10):
                pass
        return info.value  # type: ignore[return-value]
    finally:
        channel.close()


def test_malformed_and_truncated_frames_are_invalid_argument(servers: Servers) -> None:
    server = servers["plain"]
    before = _count(server, "invalid_frames")
    good = make_frame(3000)
    msgs = list(envelope.frame_messages(good.header, good.payload_bytes(), 1000))
    bad_crc = bytearray(msgs[2])
    bad_crc[-1] ^= 0xFF
    cases = [
        ([b"\x42\x00"], r"message: expected field tag 0x0a \(header\), 0x12 \(chunk\) or 0x1a \(ack\), found 0x42"),
        ([envelope.chunk_message(b"abc")], r"message: expected a header before payload chunks, found a chunk"),
        ([msgs[0][:-10]], r"message: expected chunk body of 1000 bytes, found only 990 bytes left"),
        (msgs[:2] + [envelope.header_message(good.header)],
         r"header: expected 1000 more payload bytes of the previous frame, found a new header"),
        (msgs[:2], r"payload_length: expected 3000 bytes of payload, found 2000 before the stream ended"),
        (msgs[:2] + [bytes(bad_crc)], r"checksum: expected 0x[0-9a-f]+ \(\w+\) from the header, computed"),
        ([envelope.header_message(make_frame(10).header, b"x" * 20)],
         r"payload_length: expected 10 bytes of payload, found at least 20"),
        ([envelope.ack_message(1)], r"message: expected header or chunk from a sender, found an ack"),
    ]
    for i, (messages, pattern) in enumerate(cases):
        err = _raw_frames_call(server.address, messages)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (i, err)
        assert re.search(pattern, err.details()), (i, err.details())
    assert _count(server, "invalid_frames") == before + len(cases)
    # a bad header field comes back verbatim through the sender API, and the server still serves
    import dataclasses

    from layeredge_dist.wire import Frame

    bad = Frame(dataclasses.replace(good.header, checksum=good.header.checksum ^ 1), good.payload)
    with GrpcEdgeSender(server.address, EDGE, ROLE) as tx:
        tx.send(bad, timeout_s=5)
        with pytest.raises(FrameRejected, match=r"INVALID_ARGUMENT: checksum: expected"):
            tx.flush(timeout_s=5)
        tx.send(good, timeout_s=5)  # a fresh stream
        tx.flush(timeout_s=5)
    assert _recv(server)["crc"] == zlib.crc32(good.payload_bytes())
    assert _count(server, "invalid_frames") == before + len(cases) + 1


def test_receiver_killed_mid_stream_gives_senders_a_clear_error(servers: Servers) -> None:
    server = servers["victim"]
    frame = make_frame(256 << 10)
    senders = [GrpcEdgeSender(server.address, EDGE, ROLE, TransportConfig(chunk_bytes=64 << 10)),
               TcpEdgeSender(server.address, EDGE, ROLE, TransportConfig(tcp_data_path=True))]
    try:
        for tx in senders:
            tx.send(frame, timeout_s=5)
            tx.flush(timeout_s=5)
        server.kill()
        for tx in senders:
            t0 = time.monotonic()
            with pytest.raises(PeerUnavailable, match=r"s0->s1 activation -> 127.0.0.1:\d+( \(tcp data path\))?: "
                                                      r"(UNAVAILABLE|CANCELLED|could not connect)"):
                for _ in range(100):
                    tx.send(frame, timeout_s=3)
                    tx.flush(timeout_s=3)
            assert time.monotonic() - t0 < 3.5
    finally:
        for tx in senders:
            tx.close()


def test_sender_killed_mid_frame_server_keeps_serving(servers: Servers, tmp_path: Path,
                                                      spawn_client: Callable[[list[str]], Child]) -> None:
    server = servers["plain"]
    before = _count(server, "stream_errors")
    edge = EdgeId.parse("s3->s4")
    frame = make_frame(4000, edge=edge)
    half = envelope.header_message(frame.header, frame.payload_bytes()[:2000])  # small: surely delivered
    client = spawn_client(["partial-client", server.address, service.method_path(service.FRAMES_METHOD),
                           write_messages(tmp_path / "msgs", [half])])
    assert client.first == {"sent": True}
    with GrpcEdgeSender(server.address, edge, TensorRole.GRADIENT) as other:
        client.kill()
        deadline = time.monotonic() + 5
        while _count(server, "stream_errors") < before + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _count(server, "stream_errors") == before + 1
        other.send(make_frame(1000, edge=edge, role=TensorRole.GRADIENT), timeout_s=5)
        other.flush(timeout_s=5)
    assert _recv(server, edge, TensorRole.GRADIENT)["nbytes"] == 1000
    # the half frame was dropped: nothing reached the activation receiver of that edge
    assert "error" in _recv(server, edge, ROLE, timeout_s=0.2)


def test_probe(servers: Servers) -> None:
    server = servers["plain"]
    before = _count(server, "sink_bytes")
    result = probe(server.address, pings=5, probe_bytes=4 << 20)
    assert 0 < result.rtt_s < 1 and len(result.rtt_samples) == 5
    assert result.bandwidth_Bps > 1e6 and result.probe_bytes == 4 << 20
    assert _count(server, "sink_bytes") == before + (4 << 20)


def test_connect_failure_is_clear() -> None:
    with StageServer() as s:
        port = s.port
    with GrpcEdgeSender(f"127.0.0.1:{port}", EDGE, ROLE, TransportConfig(connect_timeout_s=0.5)) as tx:
        with pytest.raises(PeerUnavailable, match=rf"could not connect to 127.0.0.1:{port} within 0.5 s"):
            tx.send(make_frame(10), timeout_s=5)


@pytest.mark.slow
@pytest.mark.parametrize("fast", [False, True], ids=["grpc", "tcp-data-path"])
def test_streaming_memory_growth_stays_under_twice_the_window(spawn: Spawn, fast: bool) -> None:
    window = 64 << 20
    server = spawn({"window_bytes": window, "inbox_bytes": 32 << 20, "buffer_pool_bytes": 32 << 20,
                    "tcp_data_path": True})
    server.cmd("drain", edge=str(EDGE), role=ROLE.value)
    frame = make_frame(8 << 20)
    cfg = TransportConfig(window_bytes=window, tcp_data_path=fast)
    with open_sender(server.address, EDGE, ROLE, cfg) as tx:  # type: ignore[attr-defined]
        tx.send(frame, timeout_s=10)
        tx.flush(timeout_s=10)
        base = server.cmd("reset_peak")["rss"]
        for _ in range(48):  # 384 MiB
            tx.send(frame, timeout_s=30)
        tx.flush(timeout_s=30)
    peak = server.cmd("peak")["peak"]
    deadline = time.monotonic() + 5
    while server.cmd("drained", edge=str(EDGE))["frames"] < 49 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.cmd("drained", edge=str(EDGE))["frames"] == 49
    growth = peak - base  # type: ignore[operator]
    assert growth < 2 * window, f"receiver RSS grew {growth >> 20} MiB for a {window >> 20} MiB window"


# ---- the TCP data path (fast path) --------------------------------------------------------------------------

FAST = TransportConfig(tcp_data_path=True, token="ft")


def test_data_path_round_trip_in_order(servers: Servers) -> None:
    server = servers["fast"]
    edge = EdgeId.parse("s9->s10")
    frames = [make_frame(n, step=i, seed=i, edge=edge) for i, n in enumerate([0, 1, 1000, 300_001, 64 << 10])]
    records: list[TransferRecord] = []
    tx = open_sender(server.address, edge, ROLE, FAST, hooks=(records.append,))
    assert isinstance(tx, TcpEdgeSender)
    with tx:
        for f in frames:
            tx.send(f, timeout_s=5)
        tx.flush(timeout_s=5)
        assert tx.unacknowledged == (0, 0)
    for f in frames:
        got = _recv(server, edge)
        assert (got["step"], got["nbytes"]) == (f.step, f.nbytes)
        assert got["crc"] == zlib.crc32(f.payload_bytes())
    assert [r.raw_bytes for r in records] == [f.header.numel * 4 for f in frames]


def test_data_path_needs_the_token_and_a_fresh_ticket(servers: Servers) -> None:
    import socket

    server = servers["fast"]
    before = _count(server, "unauthenticated")
    with TcpEdgeSender(server.address, EDGE, ROLE, TransportConfig(tcp_data_path=True)) as tx:
        with pytest.raises(Unauthenticated, match=r"OpenDataPath: UNAUTHENTICATED: .*missing authorization"):
            tx.send(make_frame(10), timeout_s=5)
    with socket.create_connection(("127.0.0.1", server.data_port), timeout=5) as s:
        s.sendall(datapath.hello(b"x" * datapath.TICKET_BYTES))
        rec = datapath.read_record(lambda n: _recv_exact(s, n))
        assert (rec.code, rec.message) == ("UNAUTHENTICATED", "data path: missing, unknown or expired ticket")
    assert _count(server, "unauthenticated") == before + 2


def _recv_exact(sock: object, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))  # type: ignore[attr-defined]
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def _data_connection(server: ServerProc, token: str) -> object:
    import socket

    channel = grpc.insecure_channel(server.address)
    try:
        rpc = channel.unary_unary(service.method_path(service.OPEN_DATA_PATH_METHOD))
        req = service.data_path_request_to_bytes(service.DataPathRequest(EDGE, ROLE))
        grant = service.data_path_grant_from_bytes(rpc(req, timeout=5, metadata=(("authorization",
                                                                                  f"Bearer {token}"),)))
    finally:
        channel.close()
    s = socket.create_connection(("127.0.0.1", grant.port), timeout=5)
    s.sendall(datapath.hello(grant.ticket))
    return s


def test_data_path_bad_frames_are_invalid_argument(servers: Servers) -> None:
    import dataclasses

    from layeredge_dist.wire import Frame

    server = servers["fast"]
    before = _count(server, "invalid_frames")
    good = make_frame(2000)
    cases = [
        (b"\xff\xff\xff\x00", r"header: expected at most 65536 header bytes, found a length of 16777215"),
        (b"\x03\x00\x00\x00\xff\xff\xff", r"header: expected a serialized layeredge.v1.FrameHeader"),
        (datapath.frame_prefix(dataclasses.replace(good.header, dtype="int8")), r"dtype: expected one of"),
        (datapath.frame_prefix(good.header) + bytes(good.payload_bytes()[:-1]) + b"\x00",
         r"checksum: expected 0x[0-9a-f]+ \(\w+\) from the header, computed"),
    ]
    for data, pattern in cases:
        s = _data_connection(server, "ft")
        try:
            s.sendall(data)  # type: ignore[attr-defined]
            rec = datapath.read_record(lambda n: _recv_exact(s, n))
            assert rec.code == "INVALID_ARGUMENT" and re.search(pattern, rec.message or ""), rec
        finally:
            s.close()  # type: ignore[attr-defined]
    assert _count(server, "invalid_frames") == before + len(cases)
    bad = Frame(dataclasses.replace(good.header, checksum=good.header.checksum ^ 1), good.payload)
    with TcpEdgeSender(server.address, EDGE, ROLE, FAST) as tx:
        tx.send(bad, timeout_s=5)
        with pytest.raises(FrameRejected, match=r"INVALID_ARGUMENT: checksum: expected .* \(1 frames "
                                                r"unacknowledged, lost\)"):
            tx.flush(timeout_s=5)
        tx.send(good, timeout_s=5)  # a new connection; the server still serves
        tx.flush(timeout_s=5)
    assert _recv(server)["crc"] == zlib.crc32(good.payload_bytes())


def test_data_path_window_and_backpressure(servers: Servers) -> None:
    server = servers["stall"]
    edge = EdgeId.parse("s11->s12")
    cfg = TransportConfig(tcp_data_path=True, window_frames=4, window_bytes=1 << 20)
    frame = make_frame(100 << 10, edge=edge)
    with TcpEdgeSender(server.address, edge, ROLE, cfg) as tx:
        sent = 0
        with pytest.raises(DeadlineExceeded, match=r"in-flight window full for 0.5 s \(4 frames, 409600 B "
                                                   r"unacknowledged; window 4 frames / 1048576 B\)"):
            for _ in range(50):
                tx.send(frame, timeout_s=0.5)
                sent += 1
        assert server.cmd("queued", edge=str(edge), role=ROLE.value)["bytes"] <= STALL_INBOX
        assert sent <= STALL_INBOX // frame.nbytes + 1 + 4
        server.cmd("drain", edge=str(edge), role=ROLE.value)
        tx.flush(timeout_s=10)  # the timeout above kept the connection: nothing is lost
        tx.send(frame, timeout_s=5)
        tx.flush(timeout_s=5)
    deadline = time.monotonic() + 5
    while server.cmd("drained", edge=str(edge))["frames"] < sent + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.cmd("drained", edge=str(edge))["frames"] == sent + 1


def test_data_path_refused_by_a_server_without_it(servers: Servers) -> None:
    with TcpEdgeSender(servers["plain"].address, EDGE, ROLE, TransportConfig(tcp_data_path=True)) as tx:
        with pytest.raises(PeerUnavailable, match=r"FAILED_PRECONDITION: this server offers no TCP data path"):
            tx.send(make_frame(10), timeout_s=5)
    with pytest.raises(ValueError, match=r"tcp_data_path carries no TLS"):
        TransportConfig(tcp_data_path=True, tls=TLSConfig())


def test_open_sender_picks_the_grpc_stream_by_default(servers: Servers) -> None:
    tx: EdgeSender = open_sender(servers["plain"].address, EDGE, ROLE)
    try:
        assert isinstance(tx, GrpcEdgeSender)
    finally:
        tx.close()
