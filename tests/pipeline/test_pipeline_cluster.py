"""Ray clusters for the stage runtime: the session's 3-node cluster, LocalCluster, connect(), `layeredge cluster`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from layeredge_dist.pipeline.cluster import (
    ClusterError,
    LocalCluster,
    alive_nodes,
    choose_placement,
    connect,
    ray_env,
)

ROOT = Path(__file__).resolve().parents[2]


def _proc_start(pid: int) -> int | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2:].split()[19])


def _snapshot(pids: list[int]) -> dict[int, int | None]:
    return {p: _proc_start(p) for p in pids}


def _still_alive(snap: dict[int, int | None]) -> list[int]:
    """PIDs from the snapshot that still run the same process (not a zombie, not a reused PID)."""
    out = []
    for pid, start in snap.items():
        try:
            data = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            continue
        rest = data[data.rindex(b")") + 2:].split()
        if rest[0] not in (b"Z", b"X") and int(rest[19]) == start:
            out.append(pid)
    return out


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                data = Path(f"/proc/{name}/stat").read_bytes()
            except OSError:
                continue
            children.setdefault(int(data[data.rindex(b")") + 2:].split()[1]), []).append(int(name))
    out, stack = [], [root]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def _kill_all(snap: dict[int, int | None]) -> None:
    for pid in _still_alive(snap):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------- no cluster needed


def test_ray_env_creates_a_private_token_where_ray_looks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    env = ray_env()
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert "RAY_AUTH_TOKEN" not in env  # the secret stays in the file
    token_file = tmp_path / ".ray" / "auth_token"
    token = token_file.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert ray_env() == env and token_file.read_text() == token  # idempotent: never replaces a token
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in ray_env(local=False)  # would stop `ray start --address`
    assert [p.name for p in token_file.parent.iterdir()] == ["auth_token"]  # no temp files left behind


def test_ray_env_passes_explicit_tokens_through(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "abc123")
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert ray_env()["RAY_AUTH_TOKEN"] == "abc123"
    assert not (tmp_path / ".ray").exists()  # RAY_AUTH_TOKEN wins; no file needed
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(ClusterError, match="RAY_AUTH_TOKEN_PATH"):
        ray_env()  # Ray would abort in C++; we say why instead
    (tmp_path / "missing").write_text("t0ken")
    assert ray_env()["RAY_AUTH_TOKEN_PATH"] == str(tmp_path / "missing")


@pytest.mark.parametrize(("stages", "requested", "alive", "expected"), [
    (3, "auto", 3, "STRICT_SPREAD"),
    (3, "auto", 5, "STRICT_SPREAD"),
    (3, "auto", 2, "PACK"),
    (3, "auto", 1, "PACK"),
    (3, "strict_spread", 3, "STRICT_SPREAD"),
    (3, "STRICT-SPREAD", 4, "STRICT_SPREAD"),
    (3, "spread", 1, "SPREAD"),
    (3, "pack", 3, "PACK"),
    (1, "auto", 1, "STRICT_SPREAD"),
])
def test_choose_placement(stages: int, requested: str, alive: int, expected: str) -> None:
    assert choose_placement(stages, requested, alive) == expected


def test_choose_placement_refuses_what_cannot_work() -> None:
    with pytest.raises(ClusterError, match=r"4 stages but only 2 alive node"):
        choose_placement(4, "strict_spread", 2)
    with pytest.raises(ValueError, match="placement 'round_robin'"):
        choose_placement(2, "round_robin", 2)
    with pytest.raises(ValueError):
        choose_placement(0, "auto", 2)


def test_local_cluster_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        LocalCluster(0)
    with pytest.raises(ValueError):
        LocalCluster(2, cpus_per_node=0)
    with pytest.raises(ValueError):
        LocalCluster(2, timeout_s=0)
    assert LocalCluster(2).pids() == []
    LocalCluster(2).stop()  # stopping a cluster that never started is a no-op


def _run_py(code: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_connect_to_a_wrong_address_fails_within_its_timeout() -> None:
    # In a fresh process: this one may already be connected to the session's cluster.
    port = _free_port()
    t0 = time.monotonic()
    out = _run_py(f"""
        import time
        from layeredge_dist.pipeline.cluster import ClusterError, connect
        t = time.monotonic()
        try:
            with connect(address="127.0.0.1:{port}", timeout_s=3.0):
                print("CONNECTED")
        except ClusterError as e:
            print("CLUSTER_ERROR", round(time.monotonic() - t, 2), e)
    """, timeout=60)
    assert "CLUSTER_ERROR" in out.stdout, out.stdout + out.stderr
    waited = float(out.stdout.split()[1])
    assert 2.5 <= waited < 20.0, out.stdout  # the timeout is honoured; generous upper bound for loaded CI
    assert f"127.0.0.1:{port}" in out.stdout and "timeout_s=3" in out.stdout and "Hint" in out.stdout
    assert time.monotonic() - t0 < 30
    bad = _run_py("""
        from layeredge_dist.pipeline.cluster import ClusterError, connect
        try:
            with connect(address="no-port-here", timeout_s=1.0):
                print("CONNECTED")
        except ClusterError as e:
            print("CLUSTER_ERROR", e)
    """, timeout=60)  # in a fresh process: this one may already be connected to the session's cluster
    assert "CLUSTER_ERROR" in bad.stdout and "not 'host:port'" in bad.stdout, bad.stdout + bad.stderr


def test_connect_embedded_single_node() -> None:
    out = _run_py("""
        import json, time
        t = time.monotonic()
        from layeredge_dist.pipeline.cluster import connect
        import ray
        with connect(cpus_per_node=1.0, timeout_s=60) as info:
            up = time.monotonic() - t
            ok = ray.get(ray.remote(lambda: 41 + 1).remote(), timeout=60)
            print(json.dumps({"info": [info.address, info.num_nodes, info.embedded, list(info.node_ips),
                                       info.resources.get("CPU")], "ok": ok, "up_s": up}))
        print("INITIALIZED_AFTER", ray.is_initialized())
    """, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout.splitlines()[0])
    address, nodes, embedded, ips, cpus = doc["info"]
    assert address.startswith("127.0.0.1:") and nodes == 1 and embedded and ips == ["127.0.0.1"] and cpus == 1.0
    assert doc["ok"] == 42
    assert "INITIALIZED_AFTER False" in out.stdout
    print(f"embedded single-node connect: {doc['up_s']:.2f} s including imports")


def test_local_cluster_stop_leaves_none_of_its_pids_alive() -> None:
    cluster = LocalCluster(2, cpus_per_node=1.0, timeout_s=90.0)
    snap: dict[int, int | None] = {}
    try:
        t0 = time.monotonic()
        info = cluster.start()
        started = time.monotonic() - t0
        assert info.num_nodes == 2 and info.embedded and info.node_ips == ("127.0.0.1", "127.0.0.1")
        assert info.resources["CPU"] == 2.0
        nodes = alive_nodes(info.address, timeout_s=20)
        assert len(nodes) == 2 and nodes[0]["is_head"] and not nodes[1]["is_head"]
        assert len({n["node_id"] for n in nodes}) == 2
        assert all(n["resources"]["CPU"] == 1.0 for n in nodes)
        pids = cluster.pids()
        assert len(pids) >= 5  # helper, GCS, 2 raylets, their agents
        snap = _snapshot(pids)
        assert sorted(_still_alive(snap)) == sorted(pids)
        t0 = time.monotonic()
        cluster.stop()
        stopped = time.monotonic() - t0
        assert _still_alive(snap) == [], "LocalCluster.stop left processes running"
        assert cluster.pids() == []
        cluster.stop()  # idempotent
        print(f"2-node LocalCluster: start {started:.2f} s, stop {stopped:.2f} s, {len(pids)} processes")
    finally:
        cluster.stop()
        _kill_all(snap)


def test_local_cluster_start_timeout_raises_and_cleans_up() -> None:
    before = set(_descendants(os.getpid()))
    t0 = time.monotonic()
    with pytest.raises(ClusterError) as err:
        with LocalCluster(2, timeout_s=0.5):
            pytest.fail("a 2-node cluster cannot be ready in 0.5 s")
    assert time.monotonic() - t0 < 20  # 0.5 s wait plus an orderly stop
    assert "2 node(s) on 127.0.0.1" in str(err.value) and "timeout_s=0.5" in str(err.value)
    assert "Hint" in str(err.value)
    logs = re.search(r"Logs: (/\S+)/layeredge-cluster-host\.log", str(err.value))
    assert logs and Path(logs.group(1)).is_dir()  # kept after a failure, for the logs the message points to
    shutil.rmtree(logs.group(1))
    deadline = time.monotonic() + 10
    while (left := set(_descendants(os.getpid())) - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes left after a failed start: {left}"


def test_local_cluster_dies_with_a_killed_parent() -> None:
    """A driver killed with SIGKILL runs no cleanup; the cluster must still go away on its own."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import json, time
        from layeredge_dist.pipeline.cluster import LocalCluster
        c = LocalCluster(1, timeout_s=90)
        c.start()
        print(json.dumps(c.pids()), flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    snap: dict[int, int | None] = {}
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, "the cluster did not start"
        snap = _snapshot(json.loads(line))
        assert len(_still_alive(snap)) == len(snap) >= 3
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 20
        while _still_alive(snap) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _still_alive(snap) == [], "the cluster outlived its killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        _kill_all(snap)
        if proc.stdout is not None:
            proc.stdout.close()


# --------------------------------------------------------------------------------------------- session cluster


def test_three_nodes_alive_with_distinct_ids(ray_cluster) -> None:  # type: ignore[no-untyped-def]
    import ray

    assert ray.is_initialized()
    assert ray_cluster.num_nodes == 3 and len(ray_cluster.node_ips) == 3
    assert set(ray_cluster.node_ips) == {"127.0.0.1"}
    assert ray_cluster.address.startswith("127.0.0.1:")
    nodes = alive_nodes()
    assert len(nodes) == 3 and len({n["node_id"] for n in nodes}) == 3
    assert [n["is_head"] for n in nodes] == [True, False, False]
    assert all(n["resources"]["CPU"] == 2.0 for n in nodes)
    assert ray.cluster_resources()["CPU"] == 6.0
    gcs_view = alive_nodes(ray_cluster.address, timeout_s=20)  # asked of the GCS directly, not via the driver
    assert [(n["node_id"], n["is_head"]) for n in gcs_view] == [(n["node_id"], n["is_head"]) for n in nodes]


def test_strict_spread_places_three_actors_on_three_nodes(ray_cluster) -> None:  # type: ignore[no-untyped-def]
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    @ray.remote(num_cpus=1)
    class Where:
        def node(self) -> str:
            return str(ray.get_runtime_context().get_node_id())

    strategy = choose_placement(3, "auto", len(alive_nodes()))
    assert strategy == "STRICT_SPREAD"
    pg = placement_group([{"CPU": 1}] * 3, strategy=strategy)
    actors = []
    try:
        ray.get(pg.ready(), timeout=60)
        actors = [Where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i))
                  .remote() for i in range(3)]
        where = ray.get([a.node.remote() for a in actors], timeout=60)
        assert len(set(where)) == 3
        assert set(where) == {n["node_id"] for n in alive_nodes()}
    finally:
        for a in actors:
            ray.kill(a)
        remove_placement_group(pg)


def test_actor_with_one_cpu_runs_torch_with_one_thread(ray_cluster) -> None:  # type: ignore[no-untyped-def]
    import ray

    @ray.remote(num_cpus=1)
    class Threads:
        def count(self) -> tuple[int, str | None]:
            import torch

            return torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")

    a = Threads.remote()
    try:
        threads, omp = ray.get(a.count.remote(), timeout=60)
        assert threads == 1, (threads, omp)
    finally:
        ray.kill(a)


def test_killed_actor_with_max_restarts_comes_back(ray_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

    log = tmp_path / "inits.log"

    @ray.remote(num_cpus=1, max_restarts=1)
    class Phoenix:
        def __init__(self, path: str) -> None:
            with open(path, "a") as f:
                f.write(f"{os.getpid()}\n")

        def pid(self) -> int:
            return os.getpid()

        def sleep(self, s: float) -> None:
            time.sleep(s)

    a = Phoenix.remote(str(log))
    try:
        pid0 = ray.get(a.pid.remote(), timeout=60)
        in_flight = a.sleep.remote(30)
        time.sleep(0.2)
        t0 = time.monotonic()
        ray.kill(a, no_restart=False)
        seen: list[str] = []
        with pytest.raises(RayActorError) as in_flight_error:
            ray.get(in_flight, timeout=30)
        pid1 = None
        while time.monotonic() - t0 < 60:
            try:
                pid1 = ray.get(a.pid.remote(), timeout=10)
                break
            except (RayActorError, GetTimeoutError) as e:
                seen.append(type(e).__name__)
                time.sleep(0.05)
        restart_s = time.monotonic() - t0
        assert pid1 is not None and pid1 != pid0, "the actor did not come back"
        assert log.read_text().split() == [str(pid0), str(pid1)]  # __init__ ran again, in a new process
        # restarts exhausted: now it is dead for good
        ray.kill(a, no_restart=False)
        with pytest.raises(ActorDiedError):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                ray.get(a.pid.remote(), timeout=10)
                time.sleep(0.05)
        print(f"actor restart: {restart_s:.2f} s; in-flight call raised {type(in_flight_error.value).__name__}; "
              f"calls during restart raised {sorted(set(seen)) or 'nothing (queued until alive)'}; "
              f"after restarts were exhausted: ActorDiedError")
        assert issubclass(ActorUnavailableError, RayActorError)
    finally:
        ray.kill(a)


def test_connect_reuses_the_initialised_ray(ray_cluster) -> None:  # type: ignore[no-untyped-def]
    import ray

    with connect() as info:
        assert info.address == ray_cluster.address and info.num_nodes == 3 and not info.embedded
    with connect(address=ray_cluster.address) as info:
        assert info.address == ray_cluster.address
    assert ray.is_initialized()  # left running for the rest of the session
    with pytest.raises(ClusterError, match="already initialised"):
        with connect(address=f"127.0.0.1:{_free_port()}"):
            pass
    assert ray.is_initialized()


# --------------------------------------------------------------------------------------------- CLI


def test_cluster_up_cli_starts_serves_and_stops_by_pid() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "layeredge_dist.cli.main", "cluster", "up", "--nodes", "2", "--timeout", "90"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True,
    )
    snap: dict[int, int | None] = {proc.pid: _proc_start(proc.pid)}
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if line.startswith("Press Ctrl-C"):
                break
        text = "\n".join(lines)
        assert proc.poll() is None, text + (proc.stderr.read() if proc.stderr else "")
        address = re.search(r"^address: (\S+)$", text, re.M).group(1)  # type: ignore[union-attr]
        pids = [int(p) for p in re.search(r"^pids: (.+)$", text, re.M).group(1).split()]  # type: ignore[union-attr]
        assert "layeredge run --address " + address in text and "RAY_AUTH_MODE=token" in text
        # a real driver joins it from another process
        out = _run_py(f"""
            import ray
            from layeredge_dist.pipeline.cluster import alive_nodes, connect
            with connect(address="{address}", timeout_s=60) as info:
                print("NODES", info.num_nodes, len(alive_nodes()), info.embedded,
                      ray.get(ray.remote(lambda: "ran").remote(), timeout=60))
        """, timeout=120)
        assert "NODES 2 2 False ran" in out.stdout, out.stdout + out.stderr
        status = subprocess.run([sys.executable, "-m", "layeredge_dist.cli.main", "cluster", "status", "--address",
                                 address, "--json"], capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert json.loads(status.stdout)["num_nodes"] == 2, status.stdout + status.stderr
        snap.update(_snapshot(pids + _descendants(proc.pid)))  # includes Ray workers started for the driver
        assert all(p in _still_alive(snap) for p in pids)
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert "stopped" in (proc.stderr.read() if proc.stderr else "")
        deadline = time.monotonic() + 10
        while _still_alive(snap) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _still_alive(snap) == [], "cluster up left processes running"
    finally:
        if proc.poll() is None:
            snap.update(_snapshot(_descendants(proc.pid)))
            proc.kill()
            proc.wait(timeout=30)
        _kill_all(snap)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_cluster_help_explains_each_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from layeredge_dist.cli.main import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["cluster", "up"])  # --nodes is required
    args = parser.parse_args(["cluster", "up", "--nodes", "3", "--cpus-per-node", "2", "--timeout", "30"])
    assert (args.nodes, args.cpus_per_node, args.timeout) == (3, 2.0, 30.0)
    assert parser.parse_args(["cluster", "status", "--address", "127.0.0.1:1"]).address == "127.0.0.1:1"
    capsys.readouterr()
    for action, flags in (("up", ("--nodes", "--cpus-per-node", "--gpus-per-node", "--timeout", "--temp-dir",
                                  "--json")),
                          ("status", ("--address", "--timeout", "--json"))):
        with pytest.raises(SystemExit):
            parser.parse_args(["cluster", action, "--help"])
        text = capsys.readouterr().out
        for flag in flags:
            assert re.search(rf"^\s+{flag}\b.*\S+\s+\w", text, re.M), f"{action} {flag} has no help:\n{text}"
