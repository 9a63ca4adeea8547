"""The testbed's network: namespaces on a switch, shaping, and teardown that leaves nothing behind.

Tests that build namespaces need root and iproute2 (CI runs as root); they skip with the reason otherwise. The
rest (rate parsing, the errors for a missing root or missing tools) run anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from layeredge_dist.testbed import Testbed, TestbedError, cleanup_stale, parse_rate, require_tools
from layeredge_dist.testbed import netns


def _root_reason() -> str | None:
    try:
        require_tools()
    except TestbedError as err:
        return str(err)
    return None


_REASON = _root_reason()
root_only = pytest.mark.skipif(_REASON is not None, reason=f"testbed unavailable: {_REASON}")


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.strip()}


def _alive(pid: int) -> bool:
    return netns._proc_start(pid) is not None


# --------------------------------------------------------------------------------------------- anywhere


def test_parse_rate() -> None:
    assert parse_rate("100mbit").rate_bps == 100e6
    assert parse_rate("1Gbit/s").rate_bps == 1e9
    assert parse_rate("12.5MB/s").rate_bps == 100e6
    assert parse_rate("1gbit").label == "1gbit" and parse_rate("100mbit").label == "100mbit"
    for unshaped in ("unshaped", "none", None, "inf"):
        assert parse_rate(unshaped).rate_bps is None and parse_rate(unshaped).label == "unshaped"
        assert parse_rate(unshaped).tc_args() == []
    args = parse_rate("100mbit").tc_args()
    assert args[:3] == ["tbf", "rate", "100000000bit"] and "burst" in args and "latency" in args
    assert parse_rate("1gbit").burst_bytes >= 250_000  # 2 ms at the rate
    for bad in ("fast", "100", "100Mb/s", "1kbit"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_clear_error_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(TestbedError, match="needs root"):
        require_tools()
    with pytest.raises(TestbedError, match="needs root"):
        Testbed().up(2, "100mbit")


def test_clear_error_without_iproute2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(TestbedError, match="iproute2"):
        require_tools()


# --------------------------------------------------------------------------------------------- root


@pytest.mark.root
@root_only
def test_up_down_leaves_nothing_even_after_an_exception() -> None:
    before_ns, before_links = _namespaces(), _root_links()
    tb = Testbed()
    stray = None
    with pytest.raises(RuntimeError, match="boom"):
        with tb.up(3, "100mbit"):
            assert set(tb.namespaces) <= _namespaces()
            assert len(tb.namespaces) == 4 and tb.switch in tb.namespaces
            assert _root_links() == before_links  # nothing in the root namespace
            assert json.loads(tb.state_path.read_text())["namespaces"] == tb.namespaces
            # addresses, lo, shaping in both directions
            h1 = tb.hosts[1]
            addr = subprocess.run(["ip", "-n", h1.namespace, "-4", "-o", "addr", "show", "dev", "eth0"],
                                  capture_output=True, text=True, check=True).stdout
            assert f"{h1.ip}/24" in addr
            lo = subprocess.run(["ip", "-n", h1.namespace, "link", "show", "lo"], capture_output=True, text=True,
                                check=True).stdout
            assert "UP" in lo
            for ns, dev in ((h1.namespace, "eth0"), (tb.switch, "v1")):
                q = subprocess.run(["tc", "-n", ns, "qdisc", "show", "dev", dev], capture_output=True, text=True,
                                   check=True).stdout
                assert "tbf" in q and "100Mbit" in q, q
            tb.set_rate("unshaped")
            q = subprocess.run(["tc", "-n", h1.namespace, "qdisc", "show", "dev", "eth0"], capture_output=True,
                               text=True, check=True).stdout
            assert "tbf" not in q
            tb.up(3, "1gbit")  # idempotent: same hosts, only the rate changes
            assert tb.rate == "1gbit"
            spawned = tb.spawn(1, ["sleep", "300"], what="sleeper")
            # a process started behind the testbed's back, inside one of its namespaces, goes too
            stray = subprocess.Popen(["ip", "netns", "exec", tb.hosts[2].namespace, "sleep", "300"],
                                     start_new_session=True)
            time.sleep(0.2)
            assert {spawned.pid, stray.pid} <= set(tb.pids())
            raise RuntimeError("boom")
    assert stray is not None
    stray.wait(timeout=10)
    assert not _alive(spawned.pid) and not _alive(stray.pid)
    assert not set(tb.namespaces) & _namespaces() and not any(n.startswith(f"le-{tb.id}-") for n in _namespaces())
    assert _namespaces() - before_ns == set()
    assert _root_links() == before_links
    assert not tb.state_path.exists() and not os.path.exists(tb.work_dir)
    assert tb.down()["namespaces"] == []  # idempotent

_CRASHER = r"""
import sys, time
from layeredge_dist.testbed import Testbed
tb = Testbed().up(2, "100mbit")
p = tb.spawn(1, ["sleep", "300"], what="left behind")
print(tb.id, p.pid, " ".join(tb.namespaces), tb.state_path, flush=True)
time.sleep(300)
"""


@pytest.mark.root
@root_only
def test_leftovers_of_a_killed_owner_are_cleaned_up() -> None:
    proc = subprocess.Popen([sys.executable, "-c", _CRASHER], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().split() if proc.stdout else []
        assert len(line) >= 4, "the crashing owner did not report its testbed"
        tb_id, sleeper, namespaces, state = line[0], int(line[1]), line[2:-1], line[-1]
        assert set(namespaces) <= _namespaces() and _alive(sleeper)
    finally:
        proc.send_signal(signal.SIGKILL)  # no teardown: namespaces, a process and the state file stay behind
        proc.wait(timeout=10)
    try:
        assert set(namespaces) <= _namespaces() and os.path.exists(state)
        removed = cleanup_stale()
        assert tb_id in removed
        assert not set(namespaces) & _namespaces()
        assert not os.path.exists(state) and not os.path.exists(f"/tmp/le-{tb_id}")
        deadline = time.monotonic() + 5
        while _alive(sleeper) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(sleeper)
        # an orphaned namespace named like ours (no state file, creator dead, nothing inside) goes too
        orphan = f"le-{proc.pid}t9-h0"
        subprocess.run(["ip", "netns", "add", orphan], check=True)
        assert orphan in cleanup_stale() and orphan not in _namespaces()
    finally:
        for name in list(namespaces) + [f"le-{proc.pid}t9-h0"]:
            if name in _namespaces():
                subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.mark.root
@root_only
def test_cli_up_status_down() -> None:
    """`layeredge testbed up --no-ray` in the foreground, `status --json` sees it, SIGTERM tears it down."""
    from layeredge_dist.cli.main import build_parser

    args = build_parser().parse_args(["testbed", "up", "--hosts", "2", "--rate", "1gbit"])
    assert args.func.__name__ == "run_up" and args.hosts == 2 and args.rate == "1gbit"
    cmd = [sys.executable, "-m", "layeredge_dist.cli.testbed_cmd"]  # = `layeredge testbed`, without other imports
    proc = subprocess.Popen(cmd + ["up", "--hosts", "2", "--rate", "100mbit", "--no-ray", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    info: dict = {}
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line, proc.stderr.read() if proc.stderr else ""
        info = json.loads(line)
        names = [h["namespace"] for h in info["hosts"]] + [info["switch"]]
        assert set(names) <= _namespaces()
        status = json.loads(subprocess.run(cmd + ["status", "--json"], capture_output=True, text=True,
                                           check=True).stdout)
        mine = [t for t in status["testbeds"] if t["id"] == info["id"]]
        assert mine and mine[0]["owner_alive"] and mine[0]["rate"] == "100mbit"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not set(names) & _namespaces()
        status = json.loads(subprocess.run(cmd + ["status", "--json"], capture_output=True, text=True,
                                           check=True).stdout)
        assert not [t for t in status["testbeds"] if t["id"] == info["id"]]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if info:
            subprocess.run(cmd + ["down", "--id", info["id"]], capture_output=True, timeout=60)


def test_testbed_doc_commands_parse() -> None:
    """Every `layeredge ...` command in cluster/testbed.md's code blocks is accepted by the CLI parser."""
    import pathlib
    import re
    import shlex

    from layeredge_dist.cli.main import build_parser

    doc = pathlib.Path(__file__).resolve().parents[2] / "cluster" / "testbed.md"
    blocks = re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S)
    parser = build_parser()
    seen = 0
    for line in "\n".join(blocks).splitlines():
        line = re.sub(r"\[[^\]]*\]", "", line.split("#", 1)[0]).strip()  # drop comments and [optional] parts
        if "layeredge " not in line:
            continue
        words = shlex.split(line[line.index("layeredge "):])[1:]
        args = parser.parse_args(words)  # SystemExit on an unknown command or flag
        assert callable(args.func)
        seen += 1
    assert seen >= 8
