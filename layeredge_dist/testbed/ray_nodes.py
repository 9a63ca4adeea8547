"""A Ray cluster across the hosts of a :class:`~layeredge_dist.testbed.netns.Testbed`, and drivers inside it.

:class:`RayNodes` starts one ``ray start --block`` per host, each inside its host's namespace
(``ip netns exec``), as a process of its own session recorded by the testbed (so :meth:`Testbed.down` and a later
stale cleanup stop it, its children and anything else left inside the namespaces):

* host 0: ``ray start --head --node-ip-address <ip0> --port 6379 --temp-dir /tmp/le-ID/h0 --num-cpus C --block``
* host i: ``ray start --address <ip0>:6379 --node-ip-address <ipi> --temp-dir /tmp/le-ID/h<i> --num-cpus C
  --block``

Every node has its own temp dir (Ray's unix sockets and session files would otherwise collide: namespaces
separate the network, not the file system) and binds only its testbed address; ports are Ray's defaults, since
every namespace has its own port space. No dashboard, no usage stats. Environment: token auth as everywhere
(:func:`layeredge_dist.pipeline.cluster.ray_env` with ``local=False``: ``RAY_AUTH_MODE=token``, the token in
``~/.ray/auth_token``), and ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` removed: these are not loopback addresses, and
with that flag ``ray start --address`` refuses worker nodes.

Drivers: the testbed addresses are reachable only from inside the testbed's namespaces, so a Ray driver must run
inside host 0 (the head node; a driver needs a raylet on its own machine). :meth:`RayNodes.driver_argv` /
:meth:`RayNodes.spawn_driver` run a command there with the right environment; the commands that need it
(``layeredge testbed run``, ``layeredge bench e2e``) start their driver part that way, as a subprocess of the
foreground process, which owns the testbed and tears it down. Waiting until all nodes are alive is itself such a
subprocess (a GCS query from host 0).

The pipeline's edges then cross the testbed's shaped links: each stage's edge server binds its node's testbed
address; runs need ``transport.allow_plaintext_token=true`` (a private emulated network; the raw TCP data path
stays on), which :data:`TESTBED_OVERRIDES` sets.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .netns import Testbed, TestbedError

__all__ = ["RayNodes", "TESTBED_OVERRIDES", "driver_env", "ray_binary"]

#: Run-config overrides every pipeline on the testbed needs: the bearer token in clear text on the private
#: emulated network (the raw TCP data path stays allowed), one stage per host.
TESTBED_OVERRIDES: tuple[str, ...] = ("transport.allow_plaintext_token=true", "cluster.placement=strict_spread")
GCS_PORT = 6379
DEFAULT_OBJECT_STORE_MB = 128
_DROP_ENV = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")


def ray_binary() -> str:
    """The ``ray`` command of this interpreter's environment (next to ``sys.executable``), else on PATH."""
    here = Path(sys.executable).with_name("ray")
    if here.exists():
        return str(here)
    found = shutil.which("ray")
    if found is None:
        raise TestbedError("cannot find the `ray` command next to this Python or on PATH; install ray[default]")
    return found


def driver_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of every Ray process and driver on the testbed: this process's, plus token auth
    (``ray_env(local=False)``), minus ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` and ``RAY_ADDRESS``."""
    from layeredge_dist.pipeline.cluster import ray_env

    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env.update(ray_env(local=False))
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


_WAIT_CODE = r"""
import json, sys, time
from layeredge_dist.pipeline.cluster import ClusterError, alive_nodes
address, want, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
nodes, last = [], None
while time.monotonic() < deadline:
    try:
        nodes = alive_nodes(address, timeout_s=max(1.0, min(10.0, deadline - time.monotonic())))
        if len(nodes) >= want:
            break
    except ClusterError as e:
        last = str(e)
    time.sleep(0.5)
print(json.dumps({"nodes": nodes, "error": last}), flush=True)
sys.exit(0 if len(nodes) >= want else 1)
"""


class RayNodes:
    """One Ray node per testbed host (head on host 0). ``with RayNodes(tb) as nodes: nodes.address``.

    :meth:`start` returns when every node is alive (a GCS query from host 0) or raises TestbedError after
    ``timeout_s`` with the tail of the nodes' logs, having stopped what it started. :meth:`stop` stops the node
    processes (their sessions, by PID via the testbed); :meth:`Testbed.down` would too.
    """

    def __init__(self, testbed: Testbed, cpus_per_node: float = 1.0, *, timeout_s: float = 120.0,
                 object_store_mb: int = DEFAULT_OBJECT_STORE_MB, python: str | None = None) -> None:
        if not testbed.is_up:
            raise TestbedError("the testbed is not up; call Testbed.up() first")
        if cpus_per_node <= 0 or timeout_s <= 0 or object_store_mb < 75:
            raise ValueError("need cpus_per_node > 0, timeout_s > 0 and object_store_mb >= 75")
        self.testbed = testbed
        self.cpus_per_node = float(cpus_per_node)
        self.timeout_s = float(timeout_s)
        self.object_store_mb = int(object_store_mb)
        self.python = python or sys.executable
        self.procs: list[subprocess.Popen[bytes]] = []
        self.nodes: list[dict[str, Any]] = []
        self.start_seconds = 0.0

    @property
    def address(self) -> str:
        """The GCS address ``<host 0 ip>:6379`` (what ``--address`` takes, from inside the testbed)."""
        return f"{self.testbed.hosts[0].ip}:{GCS_PORT}"

    def temp_dir(self, i: int) -> str:
        return os.path.join(self.testbed.work_dir, f"h{i}")

    def log_path(self, i: int) -> str:
        return os.path.join(self.testbed.work_dir, f"ray-h{i}.log")

    def _argv(self, i: int) -> list[str]:
        host = self.testbed.hosts[i]
        argv = [ray_binary(), "start", "--block", "--node-ip-address", host.ip, "--temp-dir", self.temp_dir(i),
                "--num-cpus", f"{self.cpus_per_node:g}", "--num-gpus", "0",
                "--object-store-memory", str(self.object_store_mb * 1024 * 1024), "--disable-usage-stats"]
        if i == 0:
            argv += ["--head", "--port", str(GCS_PORT), "--include-dashboard", "false"]
        else:
            argv += ["--address", self.address]
        return argv

    def start(self) -> dict[str, Any]:
        """Start every node and wait until all are alive; returns ``{"address", "nodes", "pids", "start_s"}``."""
        if self.procs:
            raise TestbedError("Ray nodes already started; stop() them first")
        t0 = time.monotonic()
        env = driver_env()
        try:
            for i in range(len(self.testbed.hosts)):
                os.makedirs(self.temp_dir(i), exist_ok=True)
                with open(self.log_path(i), "ab") as log:
                    self.procs.append(self.testbed.spawn(i, self._argv(i), what=f"ray-node-h{i}", env=env,
                                                         stdout=log, stderr=subprocess.STDOUT))
            self.nodes = self._wait(len(self.testbed.hosts), t0)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        info = {"address": self.address, "nodes": self.nodes, "pids": [p.pid for p in self.procs],
                "start_s": round(self.start_seconds, 2), "temp_dirs": [self.temp_dir(i) for i in
                                                                       range(len(self.testbed.hosts))]}
        self.testbed.annotate("ray", {"address": self.address, "pids": info["pids"]})
        return info

    def _wait(self, want: int, t0: float) -> list[dict[str, Any]]:
        remaining = self.timeout_s - (time.monotonic() - t0)
        for i, p in enumerate(self.procs):
            if p.poll() is not None:
                raise TestbedError(self._failure(f"the Ray node of host {i} exited with code {p.returncode}"))
        if remaining <= 0:
            raise TestbedError(self._failure(f"not all {want} Ray nodes alive after {self.timeout_s:g} s"))
        proc = self.testbed.spawn(0, [self.python, "-c", _WAIT_CODE, self.address, str(want), str(remaining)],
                                  what="ray-wait", env=driver_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=remaining + 30.0)
        except subprocess.TimeoutExpired:
            out, err = b"", b"timed out"
        finally:
            self.testbed.stop(proc, grace_s=1.0)
        try:
            result = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            result = {"nodes": [], "error": err.decode(errors="replace")[-2000:]}
        nodes = result.get("nodes") or []
        if len(nodes) < want:
            raise TestbedError(self._failure(f"only {len(nodes)} of {want} Ray nodes alive after "
                                             f"{time.monotonic() - t0:.1f} s ({result.get('error')})"))
        return nodes

    def _failure(self, what: str) -> str:
        tails = []
        for i in range(len(self.procs)):
            try:
                lines = Path(self.log_path(i)).read_text(errors="replace").splitlines()[-8:]
            except OSError:
                continue
            if lines:
                tails.append(f"host {i} ({self.log_path(i)}):\n  " + "\n  ".join(lines))
        return (f"Ray on the testbed: {what}. Hint: the machine may be overloaded (raise the timeout), or the token "
                "settings disagree (RAY_AUTH_MODE=token, ~/.ray/auth_token). Logs are under "
                f"{self.testbed.work_dir} until the testbed is torn down." + ("\n" + "\n".join(tails) if tails else ""))

    def stop(self) -> None:
        """Stop every node (workers first, then the head), each with its session. Idempotent."""
        for p in reversed(self.procs):
            self.testbed.stop(p)
        self.procs = []
        self.nodes = []

    def __enter__(self) -> RayNodes:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- drivers ----------------------------------------------------------------------------------------------

    def driver_argv(self, argv: Sequence[str]) -> list[str]:
        """``ip netns exec <host 0> argv...``: the command line of a driver on the testbed (print it for users)."""
        return self.testbed.hosts[0].netns_argv(argv)

    def spawn_driver(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, stdout: Any = None,
                     stderr: Any = None, cwd: str | None = None, what: str = "driver") -> subprocess.Popen[bytes]:
        """Start ``argv`` as a driver inside host 0 with :func:`driver_env` (plus ``env``), recorded by the
        testbed so teardown stops it."""
        return self.testbed.spawn(0, argv, what=what, env=driver_env(env), stdout=stdout, stderr=stderr, cwd=cwd)
