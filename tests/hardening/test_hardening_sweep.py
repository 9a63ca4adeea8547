"""The sweep of orphaned embedded-cluster temp dirs (``cluster.sweep_orphaned_temp_dirs``), on fake dirs.

A SIGKILLed driver never runs the ``finally`` of ``connect()`` that removes its ``/tmp/le-ray-XXXXXXXX``; the
next ``connect()`` removes every such dir whose owner marker names a dead process, after SIGKILLing the Ray
processes the marker lists that still run (the raylet's agents linger ~60 s otherwise). It must never touch a
dir of a live owner, a dir without a marker, a dir not ours, nor a process whose PID was reused. (The real thing,
a SIGKILLed ``layeredge train``, is in test_hardening_driver.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from layeredge_dist.pipeline import cluster
from layeredge_dist.pipeline.cluster import _OWNER_FILE, _boot_id, _stat, sweep_orphaned_temp_dirs


def _start(pid: int) -> int:
    st = _stat(pid)
    assert st is not None
    return st[3]


def _dead_pid() -> tuple[int, int]:
    """(pid, start time) of a process that has exited and been reaped."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    start = _start(p.pid)
    p.wait()
    return p.pid, start


def _dir(root: Path, name: str, owner: dict[str, Any] | None | str) -> Path:
    d = root / f"le-ray-{name}"
    d.mkdir(mode=0o700)
    (d / "session_latest").mkdir()
    (d / "session_latest" / "log.txt").write_text("x" * 1000)
    if isinstance(owner, str):
        (d / _OWNER_FILE).write_text(owner)
    elif owner is not None:
        (d / _OWNER_FILE).write_text(json.dumps(owner))
    return d


def _owner(pid: int, start: int | None, processes: dict[int, int] | None = None,
           boot: str | None = None) -> dict[str, Any]:
    return {"pid": pid, "start": start, "boot_id": boot or _boot_id(),
            "processes": {str(p): s for p, s in (processes or {}).items()}}


def test_only_dirs_of_dead_owners_are_removed(tmp_path: Path) -> None:
    dead, dead_start = _dead_pid()
    me = os.getpid()
    dirs = {
        "dead": _dir(tmp_path, "dead0001", _owner(dead, dead_start)),
        "reused": _dir(tmp_path, "reused01", _owner(me, _start(me) - 1)),  # our PID, another start: a reuse
        "reboot": _dir(tmp_path, "reboot01", _owner(me, _start(me), boot="00000000-0000-0000-0000-000000000000")),
        "live": _dir(tmp_path, "live0001", _owner(me, _start(me))),
        "parent": _dir(tmp_path, "parent01", _owner(os.getppid(), _start(os.getppid()))),
        "nomarker": _dir(tmp_path, "nomark01", None),
        "garbage": _dir(tmp_path, "garbage1", "{not json"),
        "notdict": _dir(tmp_path, "notdict1", "[1, 2]"),
        "other": _dir(tmp_path, "other001", None),  # not our prefix below
    }
    other = tmp_path / "ray-other"
    dirs["other"].rename(other)
    dirs["rayshared"] = _dir(tmp_path, "shared01", _owner(dead, dead_start))
    dirs["rayshared"].chmod(0o777)  # what Ray does to its temp dir: still ours, the marker decides
    writable = _dir(tmp_path, "writabl1", _owner(dead, dead_start))
    (writable / _OWNER_FILE).chmod(0o666)  # anyone could have written this marker
    foreign = _dir(tmp_path, "foreign1", _owner(dead, dead_start))
    if os.getuid() == 0:
        os.chown(foreign / _OWNER_FILE, 65534, 65534)  # another user's marker (as root we can make one)
    else:
        foreign.rename(tmp_path / "not-le-ray-foreign1")
        foreign = tmp_path / "not-le-ray-foreign1"
    link = tmp_path / "le-ray-symlink1"
    link.symlink_to(dirs["dead"])
    removed = sweep_orphaned_temp_dirs(str(tmp_path))
    gone = ("dead", "reused", "reboot", "rayshared")
    assert sorted(removed) == sorted(str(dirs[k]) for k in gone)
    for k in gone:
        assert not dirs[k].exists()
    for k in ("live", "parent", "nomarker", "garbage", "notdict"):
        assert (dirs[k] / "session_latest" / "log.txt").exists(), k
    assert other.exists() and writable.exists() and foreign.exists() and link.is_symlink()
    assert sweep_orphaned_temp_dirs(str(tmp_path)) == []  # idempotent


def test_lingering_processes_of_a_dead_owner_are_killed(tmp_path: Path) -> None:
    dead, dead_start = _dead_pid()
    d = tmp_path / "le-ray-linger01"
    # stand-ins for Ray's processes: one names the dir on its command line (GCS, raylet: --temp-dir=...), one is
    # titled ray::... (the agents); one does neither (a PID reused by an unrelated process: must survive), one is
    # listed with a wrong start time
    agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", f"--temp-dir={d}"])
    titled = subprocess.Popen(["bash", "-c", "exec -a ray::DashboardAgent sleep 120"])  # Ray retitles its agents
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    reused = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", f"--temp-dir={d}"])
    try:
        for p in (agent, titled, stranger, reused):
            while _stat(p.pid) is None or not cluster._cmdline(p.pid).startswith(("ray::", sys.executable)):
                time.sleep(0.01)
        _dir(tmp_path, "linger01", _owner(dead, dead_start, {agent.pid: _start(agent.pid),
                                                             titled.pid: _start(titled.pid),
                                                             stranger.pid: _start(stranger.pid),
                                                             reused.pid: _start(reused.pid) + 1}))
        t0 = time.monotonic()
        assert sweep_orphaned_temp_dirs(str(tmp_path)) == [str(d)]
        assert agent.wait(5) == -9 and titled.wait(5) == -9 and time.monotonic() - t0 < 5
        assert stranger.poll() is None and reused.poll() is None
    finally:
        for p in (agent, titled, stranger, reused):
            if p.poll() is None:
                p.kill()
                p.wait()


def _wait_exec(pid: int, text: str, timeout_s: float = 30.0) -> None:
    """Until the child ``pid`` has exec'd its command (``text`` in its command line): right after fork,
    /proc shows the parent's command line (a race seen once on a loaded 2-core CI run)."""
    deadline = time.monotonic() + timeout_s
    while _stat(pid) is None or text not in cluster._cmdline(pid):
        assert time.monotonic() < deadline, f"pid {pid} did not exec within {timeout_s} s"
        time.sleep(0.01)


def test_connect_marks_its_dir_and_sweeps_orphans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """connect()'s embedded path: the marker names this process and the Ray processes it started, and an
    orphan in the temp root is gone once connect() has run (here without Ray: ``ray.init`` is stubbed)."""
    import ray

    dead, dead_start = _dead_pid()
    orphan = _dir(tmp_path, "orphan01", _owner(dead, dead_start))
    monkeypatch.setattr(cluster, "_TEMP_ROOT", str(tmp_path))
    seen: dict[str, Any] = {}

    def fake_init(**kw: Any) -> None:
        seen["marker"] = json.loads((Path(kw["_temp_dir"]) / _OWNER_FILE).read_text())
        seen["dir"] = kw["_temp_dir"]
        seen["child"] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                          f"--temp-dir={kw['_temp_dir']}"])
        _wait_exec(seen["child"].pid, kw["_temp_dir"])
        raise RuntimeError("stop here")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    try:
        with pytest.raises(cluster.ClusterError, match="stop here"):
            with cluster.connect():
                pass
    finally:
        if "child" in seen:
            seen["child"].kill()
            seen["child"].wait()
    assert not orphan.exists()
    assert seen["marker"]["pid"] == os.getpid() and seen["marker"]["start"] == _start(os.getpid())
    assert seen["dir"].startswith(str(tmp_path / "le-ray-")) and not os.path.exists(seen["dir"])
    # the Ray processes are found by parentage and command line
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"--temp-dir={tmp_path}/x"])
    try:
        _wait_exec(p.pid, f"{tmp_path}/x")
        assert cluster._ray_processes(f"{tmp_path}/x") == {p.pid: _start(p.pid)}
    finally:
        p.kill()
        p.wait()
