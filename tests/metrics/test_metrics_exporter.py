"""The HTTP exporter, promtool's verdict on the live exposition, and file service discovery."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from layeredge_dist.metrics import FAMILIES, Metrics, read_file_sd, start_exporter, write_file_sd


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - loopback only
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return r.read().decode()


def _value(text: str, name: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return s.value
    raise KeyError((name, labels))


def _can_bind(port: int) -> bool:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _record_everything(m: Metrics) -> None:
    """One call of every helper, so every family has at least one series."""
    m.edge_frame("s0->s1", "send", "activation", "topk:0.05+int8", 4096, 700, encode_s=2e-4, transfer_s=3e-3,
                 elements=1024)
    m.edge_frame("s0->s1", "recv", "gradient", "int4/b64", 4096, 600, decode_s=1e-4, transfer_s=2e-3,
                 elements=1024)
    m.relative_error("s0->s1", "send", "activation", "topk:0.05+int8", 0.02)
    m.rejected("s0->s1", "checksum")
    m.importance("s0->s1", "forward", "proxy", 0.7)
    m.sensitivity("s0->s1", "forward", "int8", 0.01)
    m.error_budget("s0->s1", "backward", 0.05)
    m.plan_codec("s0->s1", "forward", "fp16")
    m.codec_switch("s0->s1", "forward", "int8", "fp16")
    m.link("s0", "s1", bandwidth_Bps=1.2e8, rtt_s=1e-4)
    m.stage_time("s0", "backward", 0.3)
    m.stage_idle("s0", 0.1)
    m.bubble("s0", 0.25)
    m.stage_up("s0", True)
    m.restart("s0")
    m.step("demo", 7, loss=2.0, tokens_per_s=5e3, step_s=0.8)
    m.val_loss("demo", 2.1)


def test_exporter_serves_its_registry_on_an_ephemeral_port() -> None:
    m = Metrics()
    ex = start_exporter(m)
    try:
        assert ex.port > 0 and ex.url == f"http://127.0.0.1:{ex.port}/metrics"
        assert ex.target == f"127.0.0.1:{ex.port}"
        m.stage_up("s0", True)
        m.step("demo", 42, loss=1.5)
        text = _fetch(ex.url)
        assert _value(text, "layeredge_stage_up", stage="s0") == 1
        assert _value(text, "layeredge_run_step", run="demo") == 42
        m.step("demo", 43)  # served live, not a snapshot
        assert _value(_fetch(ex.url), "layeredge_run_step", run="demo") == 43
    finally:
        ex.close()


def test_two_exporters_have_separate_registries_and_ports() -> None:
    a, b = Metrics(), Metrics()
    with start_exporter(a) as ea, start_exporter(b) as eb:
        assert ea.port != eb.port
        a.restart("s1")
        b.restart("s2")
        b.restart("s2")
        ta, tb = _fetch(ea.url), _fetch(eb.url)
        assert _value(ta, "layeredge_stage_restarts_total", stage="s1") == 1
        assert _value(tb, "layeredge_stage_restarts_total", stage="s2") == 2
        with pytest.raises(KeyError):
            _value(ta, "layeredge_stage_restarts_total", stage="s2")
        with pytest.raises(KeyError):
            _value(tb, "layeredge_stage_restarts_total", stage="s1")


def test_close_frees_the_port_and_is_idempotent() -> None:
    ex = start_exporter(Metrics())
    port, url = ex.port, ex.url
    assert not _can_bind(port)
    ex.close()
    ex.close()
    assert ex.closed
    assert _can_bind(port)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)  # noqa: S310
    # the freed port can be served again
    with start_exporter(Metrics(), port=port) as again:
        assert again.port == port
        _fetch(again.url)


def test_taken_port_raises_oserror_naming_the_port() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        with pytest.raises(OSError) as ei:
            start_exporter(Metrics(), port=port)
        assert str(port) in str(ei.value)
        assert ei.value.errno == errno.EADDRINUSE
    finally:
        holder.close()
    with pytest.raises(ValueError, match="0..65535"):
        start_exporter(Metrics(), port=70000)


def test_promtool_accepts_the_live_exposition() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not on PATH (Debian package 'prometheus'; CI installs it)")
    m = Metrics()
    _record_everything(m)
    with start_exporter(m) as ex:
        text = _fetch(ex.url)
    for fam in FAMILIES:  # every family is in the checked exposition
        assert f"# TYPE {fam.name} {fam.type}" in text, fam.name
    r = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
    out = (r.stdout + r.stderr).decode()
    assert r.returncode == 0 and not out.strip(), out


# --- file service discovery -----------------------------------------------------------------------------------

def test_file_sd_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "layeredge.json"
    targets = {"driver": "127.0.0.1:9100", "s0": "127.0.0.1:9101", "s1": "[::1]:9102"}
    written = write_file_sd(path, targets, {"driver": {"job": "layeredge-driver"}, "s1": {"node": "n2"}})
    doc = json.loads(path.read_text())
    assert doc == written == read_file_sd(path)
    by_target = {g["targets"][0]: g["labels"] for g in doc}
    assert by_target == {
        "127.0.0.1:9100": {"job": "layeredge-driver", "process": "driver"},
        "127.0.0.1:9101": {"job": "layeredge", "process": "s0"},
        "[::1]:9102": {"job": "layeredge", "process": "s1", "node": "n2"},
    }
    assert all(len(g["targets"]) == 1 for g in doc)
    # world-readable: Prometheus usually runs as another user
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    # rewriting replaces the content
    write_file_sd(path, {"driver": "127.0.0.1:9200"})
    assert read_file_sd(path) == [{"targets": ["127.0.0.1:9200"], "labels": {"job": "layeredge", "process": "driver"}}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layeredge.json"]  # no temp file left


def test_file_sd_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sd.json"
    write_file_sd(path, {"driver": "127.0.0.1:9100"})
    old = path.read_bytes()

    def boom(src: str, dst: str) -> None:
        raise OSError(errno.EIO, "injected rename failure")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="injected"):
        write_file_sd(path, {"driver": "127.0.0.1:9999"})
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sd.json"]


@pytest.mark.parametrize(
    ("targets", "labels", "match"),
    [
        ({"s0": "127.0.0.1"}, None, "host:port"),
        ({"s0": "127.0.0.1:0"}, None, "host:port"),
        ({"s0": "127.0.0.1:70000"}, None, "host:port"),
        ({"s0": "http://127.0.0.1:9100"}, None, "host:port"),
        ({"s0": "127.0.0.1:9100"}, {"s9": {"a": "b"}}, "unknown targets"),
        ({"s0": "127.0.0.1:9100"}, {"s0": {"stage": "s0"}}, "exported_stage"),
        ({"s0": "127.0.0.1:9100"}, {"s0": {"bad-name": "x"}}, "label name"),
        ({"s0": "127.0.0.1:9100"}, {"s0": {"n": 3}}, "must be a string"),
    ],
)
def test_file_sd_rejects_bad_input_before_writing(tmp_path: Path, targets: dict, labels: dict | None,
                                                  match: str) -> None:
    path = tmp_path / "sd.json"
    with pytest.raises(ValueError, match=match):
        write_file_sd(path, targets, labels)
    assert list(tmp_path.iterdir()) == []


def test_read_file_sd_rejects_malformed(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    for content in ("{", '{"targets": []}', '[{"labels": {}}]', '[{"targets": [1]}]', '[{"targets": [], "labels": []}]'):
        p.write_text(content)
        with pytest.raises(ValueError, match="file SD"):
            read_file_sd(p)
    p.write_text('[{"targets": ["h:1"]}]')
    assert read_file_sd(p) == [{"targets": ["h:1"], "labels": {}}]
