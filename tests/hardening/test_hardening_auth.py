"""Authentication over TLS on loopback, and secrets that must never show.

A server with a bearer token and mutual TLS (a real StageServer in a child process): the correct client works;
a missing or wrong token is refused with UNAUTHENTICATED, counted in ``unauthenticated`` and reported to
``on_reject`` as ``auth``; a client without a certificate, with a certificate from another CA, or speaking
plain text never gets past the TLS handshake (the client's error says so; the server's counters see nothing,
since gRPC ends those connections before any call exists). The token never appears in reprs, exception
messages, log records, the metrics exposition or the server's output.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from hardening_support import ServerProc, make_certs, start_servers, valid_frame

from layeredge_dist.transport import (
    FrameRejected,
    GrpcEdgeSender,
    PeerUnavailable,
    TLSConfig,
    TransportConfig,
    Unauthenticated,
)
from layeredge_dist.types import EdgeId, TensorRole

TOKEN = "s3cr3t-token-7d1c9e"  # distinctive, so a leak anywhere is found by a plain substring search
EDGE, ROLE = EdgeId.parse("s0->s1"), TensorRole.ACTIVATION


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    pytest.importorskip("cryptography")
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def mtls_server(certs: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    tls = {"root_certs": certs["ca"], "cert_chain": certs["server_cert"], "private_key": certs["server_key"],
           "require_client_auth": True}
    procs = start_servers({"mtls": {"token": TOKEN, "tls": tls, "drain": False}}, tmp_path_factory.mktemp("mtls"))
    yield procs["mtls"]
    for p in procs.values():
        p.kill()


def _client(certs: dict[str, str], cert: str | None = "client", ca: str = "ca", **kw: object) -> TransportConfig:
    if cert is None:
        tls = TLSConfig.from_files(certs[ca])
    else:
        tls = TLSConfig.from_files(certs[ca], certs[f"{cert}_cert"], certs[f"{cert}_key"])
    return TransportConfig(tls=tls, **kw)  # type: ignore[arg-type]


def _send(server: ServerProc, cfg: TransportConfig, step: int) -> None:
    frame = valid_frame(__import__("random").Random(step), str(EDGE), ROLE.value, step)
    with GrpcEdgeSender(server.address, EDGE, ROLE, cfg) as tx:
        tx.send(frame, timeout_s=10)
        tx.flush(timeout_s=10)
    got = server.cmd("receive", edge=str(EDGE), role=ROLE.value, step=step, timeout_s=10)
    assert got.get("nbytes") == frame.nbytes, got


def test_mutual_tls_with_token_rejects_every_wrong_client(mtls_server: ServerProc, certs: dict[str, str],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    server = mtls_server
    caplog.set_level(logging.DEBUG)
    _send(server, _client(certs, token=TOKEN), step=1)  # the correct client works
    before, rejects0 = server.counters(), collections.Counter(server.rejects())
    errors: list[str] = []
    for token, reason in ((None, "missing authorization metadata"), ("not-the-token", "wrong bearer token")):
        with pytest.raises(Unauthenticated, match=rf"connecting to 127.0.0.1:\d+: UNAUTHENTICATED: "
                                                  rf"/layeredge.v1.StageService/Ping: {reason}") as info:
            _send(server, _client(certs, token=token), step=2)
        errors.append(str(info.value))
    mid = server.counters()
    assert mid["unauthenticated"] - before["unauthenticated"] == 2
    assert collections.Counter(server.rejects()) - rejects0 == {"auth": 2}
    # below TLS: no client certificate, a certificate of another CA, plain text, a client that does not trust
    # the server's CA. The handshake fails, so no call (and no token) ever reaches the server.
    for cfg in (_client(certs, cert=None, token=TOKEN, connect_timeout_s=1.0),
                _client(certs, cert="rogue", token=TOKEN, connect_timeout_s=1.0),
                TransportConfig(token=TOKEN, connect_timeout_s=1.0),
                _client(certs, ca="rogue_ca", token=TOKEN, connect_timeout_s=1.0)):
        with pytest.raises(PeerUnavailable, match=r"could not connect to 127.0.0.1:\d+ within 1 s \(is the server "
                                                  r"up, and do TLS settings match\?\)") as pinfo:
            _send(server, cfg, step=3)
        errors.append(str(pinfo.value))
    after = server.counters()
    assert {k: after[k] - mid[k] for k in ("unauthenticated", "frames_received", "streams_opened", "pings")} == \
        dict.fromkeys(("unauthenticated", "frames_received", "streams_opened", "pings"), 0), (mid, after)
    _send(server, _client(certs, token=TOKEN), step=4)  # and the correct client still works
    assert server.alive()
    # the token is in no error message and no log record of this process
    for text in errors + [r.getMessage() for r in caplog.records]:
        assert TOKEN not in text, text


def test_rejected_frames_are_counted_on_an_authenticated_stream(mtls_server: ServerProc,
                                                                certs: dict[str, str]) -> None:
    """Once authenticated, a bad frame still gets INVALID_ARGUMENT with its field (TLS changes nothing)."""
    import dataclasses

    from layeredge_dist.wire import Frame

    server = mtls_server
    good = valid_frame(__import__("random").Random(9), str(EDGE), ROLE.value, 10)
    bad = Frame(dataclasses.replace(good.header, checksum=good.header.checksum ^ 4), good.payload)
    before = server.counters()["invalid_frames"]
    with GrpcEdgeSender(server.address, EDGE, ROLE, _client(certs, token=TOKEN)) as tx:
        tx.send(bad, timeout_s=10)
        with pytest.raises(FrameRejected, match=r"INVALID_ARGUMENT: checksum: expected"):
            tx.flush(timeout_s=10)
    assert server.counters()["invalid_frames"] == before + 1
    assert server.rejects().get("checksum", 0) >= 1


def test_secrets_never_in_reprs_metrics_or_server_output(mtls_server: ServerProc, certs: dict[str, str],
                                                         tmp_path: Path) -> None:
    from layeredge_dist.config import dump_yaml, load_config, with_overrides
    from layeredge_dist.metrics import Metrics
    from layeredge_dist.pipeline import setup
    from layeredge_dist.stage.endpoint import Endpoint

    key_pem = Path(certs["client_key"]).read_bytes()
    key_body = key_pem.decode().splitlines()[1]  # a line of the base64 key material
    tls = TLSConfig.from_files(certs["ca"], certs["client_cert"], certs["client_key"])
    cfg = TransportConfig(token=TOKEN, tls=tls)
    for obj in (cfg, tls):
        for text in (repr(obj), str(obj)):
            assert TOKEN not in text and key_body not in text and "PRIVATE KEY" not in text, text
    # a run config with TLS files: the key *path* may show, the key bytes and the per-run token may not
    run = with_overrides(load_config(None), ["transport.data_path=grpc", f"transport.tls_ca={certs['ca']}", f"transport.tls_cert="
                                             f"{certs['client_cert']}", f"transport.tls_key={certs['client_key']}"])
    spec = setup.stage_spec(run, token=TOKEN)
    assert spec.transport.token == TOKEN and spec.transport.tls is not None
    for text in (repr(spec), str(spec), repr(run), dump_yaml(run), repr(setup.transport(run))):
        assert TOKEN not in text and key_body not in text and "PRIVATE KEY" not in text
    assert certs["client_key"] in dump_yaml(run)  # the path is fine
    # metrics: a rejected call is exported with its reason, never with credentials
    metrics = Metrics()
    ep = Endpoint(0, TransportConfig(token=TOKEN), metrics=metrics)
    try:
        with GrpcEdgeSender(ep.address, EDGE, ROLE, TransportConfig(token="wrong-" + TOKEN[::-1])) as tx:
            with pytest.raises(Unauthenticated) as info:
                tx.send(valid_frame(__import__("random").Random(1), str(EDGE), ROLE.value, 1), timeout_s=10)
        assert TOKEN[::-1] not in str(info.value) and TOKEN not in str(info.value)
        text = metrics.exposition().decode()
        assert 'layeredge_edge_rejected_frames_total{edge="unknown",reason="auth"} 1.0' in text
        assert TOKEN not in text and TOKEN[::-1] not in text
    finally:
        ep.close()
    # the server child's stdout answers and stderr (gRPC and Python logs) never carried the token
    out = ""
    for name in ("counters", "rejects", "rss"):
        out += str(mtls_server.cmd(name))
    assert mtls_server.stderr_path is not None
    server_text = mtls_server.stderr_path.read_text(errors="replace")
    assert TOKEN not in out and TOKEN not in server_text


def test_plaintext_policy_refuses_token_off_loopback() -> None:
    """The defaults that keep the token off the network in clear text (see docs/security.md)."""
    from layeredge_dist.transport import StageServer

    with pytest.raises(ValueError, match=r"refusing to serve 10.0.0.11:0 with a bearer token over plain text"):
        StageServer("10.0.0.11:0", TransportConfig(token=TOKEN))
    with pytest.raises(ValueError, match=r"refusing to send the bearer token in clear text to 10.0.0.11:1") as info:
        GrpcEdgeSender("10.0.0.11:1", EDGE, ROLE, TransportConfig(token=TOKEN))
    assert TOKEN not in str(info.value)
