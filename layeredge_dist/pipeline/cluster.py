"""Start or join the Ray cluster that hosts the pipeline stages.

Three ways to get a cluster, all through :func:`connect`:

* ``connect()`` - an embedded single-node Ray on 127.0.0.1 (``ray.init`` with the node IP given explicitly and
  no dashboard); shut down on exit.
* ``connect(nodes=N)`` - a :class:`LocalCluster`: N Ray nodes on 127.0.0.1, each with its own raylet and its own
  resources, so placement groups with ``STRICT_SPREAD`` put stages on distinct nodes exactly as on N machines.
  Started and stopped by us.
* ``connect(address="host:port" | "auto")`` - join a running cluster (e.g. one from ``layeredge cluster up`` or
  ``ray start``); never stopped by us.

Facts about Ray 2.60 this module is built on (read in Ray's source and checked on the development machines):

* Token authentication is on by default. A new cluster started by ``ray.init()`` writes a random token to
  ``~/.ray/auth_token``; a node or driver that *joins* never creates one, and a process in token mode without a
  token aborts inside Ray's C++ code (a failed CHECK, not a Python exception). Every process must therefore agree
  on ``RAY_AUTH_MODE=token`` and find the same token: ``RAY_AUTH_TOKEN`` (the token itself) wins over
  ``RAY_AUTH_TOKEN_PATH`` (a file), which wins over ``~/.ray/auth_token``. :func:`ray_env` creates the default
  file when none of these exists, so the token is in place before any Ray code runs.
* ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` is read once, when ``ray`` is imported. With it at ``0`` Ray takes
  127.0.0.1 as the node IP; otherwise ``ray.init(address="127.0.0.1:port")`` rewrites the loopback address to
  the machine's external IP (``resolve_ip_for_localhost``), where nothing listens, and waits for minutes. The
  same flag makes ``ray start --address`` refuse to start a worker node, so it is for loopback clusters only:
  ``ray_env(local=False)`` leaves it out for real multi-host clusters.
* A driver can only ``ray.init(address=...)`` on a machine that runs a raylet of that cluster; we check that
  before calling ``ray.init`` so the error is immediate and precise instead of a long internal wait.

How a :class:`LocalCluster` runs: one helper process (this module, started with ``python -c``) in a new session
hosts all Ray nodes through ``ray._private.node.Node`` - the same machinery as ``ray.cluster_utils.Cluster`` - and
prints one JSON line when every node is alive. The session boundary means a Ctrl-C on the terminal reaches
only the foreground command, which then stops the cluster in order; the helper's Ray processes are tied to it
by the kernel (``PR_SET_PDEATHSIG``) and the helper shuts down when its parent disappears. :meth:`LocalCluster.stop`
signals exactly the processes it started - the helper and its descendants, found by parent links and session id
in ``/proc`` and checked by start time against PID reuse - never ``ray stop`` or a kill by name.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "ClusterError",
    "ClusterInfo",
    "LocalCluster",
    "PLACEMENTS",
    "alive_nodes",
    "choose_placement",
    "connect",
    "ray_env",
    "sweep_orphaned_temp_dirs",
    "token_path",
]

#: The only address a local cluster binds: never the machine's external interface.
LOCAL_IP = "127.0.0.1"
#: Object store per node of a cluster we start (MiB). Stage tensors travel over our gRPC transport, not the
#: object store; it holds partitions and small control objects, and Ray spills to disk beyond it.
DEFAULT_OBJECT_STORE_MB = 512
#: Placement requests accepted by :func:`choose_placement`.
PLACEMENTS = ("auto", "strict_spread", "spread", "pack")

_READY = "LAYEREDGE_CLUSTER_READY "
_HOST_LOG = "layeredge-cluster-host.log"
_STOP_GRACE_S = 10.0
_MAX_SOCKET_DIR = 48  # Ray's unix sockets live under <temp_dir>/session_<date>_<pid>/sockets/; AF_UNIX allows 107 bytes
#: Temp dirs of clusters we start: ``<_TEMP_ROOT>/<_TEMP_PREFIX>XXXXXXXX`` (short: Ray's socket paths).
_TEMP_ROOT = "/tmp"
_TEMP_PREFIX = "le-ray-"
#: Owner marker in an embedded single-node cluster's temp dir (see :func:`sweep_orphaned_temp_dirs`).
_OWNER_FILE = "layeredge-owner.json"


class ClusterError(RuntimeError):
    """A Ray cluster could not be started, reached or used; the message says what, where, how long, and a hint."""


@dataclass(frozen=True)
class ClusterInfo:
    """What a driver needs to know about the cluster it is connected to."""

    address: str  #: GCS address "host:port", what ``--address`` takes
    node_ips: tuple[str, ...]  #: one entry per alive node (all "127.0.0.1" for a local cluster)
    num_nodes: int
    embedded: bool  #: True when we started it (and will stop it)
    resources: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))  #: cluster totals

    def __post_init__(self) -> None:
        object.__setattr__(self, "resources", MappingProxyType(dict(self.resources)))


# --------------------------------------------------------------------------------------------- environment


def token_path() -> Path:
    """The token file Ray reads when ``RAY_AUTH_TOKEN`` is not set: ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``."""
    explicit = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(explicit).expanduser() if explicit else Path.home() / ".ray" / "auth_token"


def _ensure_token() -> None:
    """Make sure Ray will find a token; create ``~/.ray/auth_token`` (0600) the way ``ray.init`` would if none exists."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return
    path = token_path()
    with contextlib.suppress(OSError):
        if path.read_text().strip():
            return
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        raise ClusterError(
            f"RAY_AUTH_TOKEN_PATH={path} is set but the file is missing or empty; Ray would abort. "
            "Hint: copy the cluster's token there, or unset RAY_AUTH_TOKEN_PATH to use ~/.ray/auth_token."
        )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Write a private temp file, then link it into place: concurrent creators never see a half-written token
    # and the first one wins.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".auth_token.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))  # what Ray's own generator produces: 256 random bits, hex
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def ray_env(local: bool = True) -> dict[str, str]:
    """Environment variables every Ray process of ours and the driver need; creates the token file if absent.

    * ``RAY_AUTH_MODE=token`` - explicit, so every process agrees (Ray 2.60 turns token auth on by itself only
      for clusters it starts, and a joining process with a different mode is rejected).
    * ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (only with ``local=True``) - keep the node IP on 127.0.0.1; must be
      in the environment before ``ray`` is imported. Leave ``local=False`` for nodes of real multi-host clusters,
      where the flag would make ``ray start --address`` refuse to start.
    * ``RAY_USAGE_STATS_ENABLED=0`` - no usage reporting (the machines are offline).
    * ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` - passed through when set, so child processes see the same token.
    """
    _ensure_token()
    env = {"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    if local:
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def _apply_env(local: bool) -> None:
    """Put :func:`ray_env` into this process's environment (before ray is imported, where possible)."""
    env = ray_env(local=local)
    changed = any(os.environ.get(k) != v for k, v in env.items())
    os.environ.update(env)
    if changed and "ray" in sys.modules:
        # ray was imported before this environment was in place, and it caches both settings at import:
        # - RayConfig (C++) holds the auth mode; a stale "disabled" makes every GCS call fail with
        #   InvalidAuthToken. Ray itself re-reads it this way when it turns token auth on (_enable_token_auth).
        # - ray_constants.ENABLE_RAY_CLUSTER is a module constant; a stale True rewrites 127.0.0.1 addresses to
        #   the external IP. Ray consults it at call time, so correcting it is enough.
        import ray

        if not ray.is_initialized():
            from ray._raylet import Config

            Config.initialize("")
        if local:
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False


# --------------------------------------------------------------------------------------------- processes


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, session id, start time) of a process from /proc, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2:].split()
    return rest[0].decode(), int(rest[1]), int(rest[3]), int(rest[19])


def _all_stats() -> dict[int, tuple[str, int, int, int]]:
    out: dict[int, tuple[str, int, int, int]] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit():
                st = _stat(int(name))
                if st is not None:
                    out[int(name)] = st
    return out


def _alive(pid: int, start: int | None) -> bool:
    st = _stat(pid)
    if st is None:
        if not os.path.isdir("/proc"):  # no procfs: fall back to a signal-0 probe
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        return False
    return st[0] not in ("Z", "X") and (start is None or st[3] == start)


def _signal(pid: int, start: int | None, sig: int) -> None:
    if _alive(pid, start):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _boot_id() -> str | None:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ray_processes(temp_dir: str) -> dict[int, int]:
    """The embedded cluster's processes, pid -> start time: this process's descendants whose command line names
    ``temp_dir`` (GCS, raylet, dashboard, log monitor) and everything below those (the raylet's agents and
    workers, whose command lines Ray retitles ``ray::...``)."""
    stats = _all_stats()
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[int, int] = {}
    stack = [(os.getpid(), False)]
    while stack:
        parent, ours = stack.pop()
        for child in children.get(parent, []):
            mine = ours or temp_dir in _cmdline(child)
            if mine:
                out[child] = stats[child][3]
            stack.append((child, mine))
    return out


def _write_owner(temp_dir: str, processes: Mapping[int, int] | None = None) -> None:
    """Write (atomically) the owner marker of an embedded cluster's temp dir: this process (PID, start time,
    boot id) and the Ray processes it started (PID, start time), for :func:`sweep_orphaned_temp_dirs`."""
    st = _stat(os.getpid())
    data = {"pid": os.getpid(), "start": st[3] if st else None, "boot_id": _boot_id(),
            "processes": {str(p): s for p, s in (processes or {}).items()}}
    tmp = os.path.join(temp_dir, f".{_OWNER_FILE}.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, os.path.join(temp_dir, _OWNER_FILE))


def _owner_gone(owner: Mapping[str, Any]) -> bool:
    """True when the process named by an owner marker no longer exists (another boot, no such PID, or the PID
    now belongs to a process with another start time)."""
    boot = _boot_id()
    if owner.get("boot_id") and boot and owner["boot_id"] != boot:
        return True
    start = owner.get("start")
    return not _alive(int(owner["pid"]), int(start) if start is not None else None)


def sweep_orphaned_temp_dirs(root: str | None = None) -> list[str]:
    """Remove the temp dirs of embedded single-node clusters whose driver died without cleaning up (SIGKILL,
    OOM kill): ``<root>/le-ray-*`` (root: /tmp) with our owner marker naming a process that is gone (another
    boot, no such PID, or a PID now used by a process with another start time). First the Ray processes the
    marker lists that still run get SIGKILL - each checked by PID *and* start time, and by its command line
    (naming the dir, or retitled ``ray::...``): the raylet's dashboard and runtime-env agents otherwise linger ~60 s
    after their driver's death. Dirs without a marker (another program's, a LocalCluster's, one being created),
    of a live owner, or whose dir or marker is another user's or whose marker others may write, are never
    touched. Returns the dirs removed; never raises for one it cannot read or remove."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(root or _TEMP_ROOT))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(_TEMP_PREFIX):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            marker = os.path.join(entry.path, _OWNER_FILE)
            st_dir, st_marker = os.lstat(entry.path), os.lstat(marker)
            # Ray makes its temp dir world-writable (0777), so the marker file itself must be ours and only ours
            if st_dir.st_uid != os.getuid() or st_marker.st_uid != os.getuid() or \
                    not stat.S_ISREG(st_marker.st_mode) or st_marker.st_mode & 0o022:
                continue
            with open(marker) as f:
                owner = json.load(f)
            if not isinstance(owner, dict) or not _owner_gone(owner):
                continue
            for pid_s, start in dict(owner.get("processes") or {}).items():
                pid = int(pid_s)
                cmd = _cmdline(pid)
                ray_proc = entry.path in cmd or cmd.startswith("ray::")
                if pid != os.getpid() and _alive(pid, int(start)) and ray_proc:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        if not os.path.exists(entry.path):
            removed.append(entry.path)
    return removed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL_IP, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------- LocalCluster


class LocalCluster:
    """Several Ray nodes on 127.0.0.1, each its own raylet with its own resources, started and stopped by PID.

    ``with LocalCluster(3) as cluster: ...`` starts it and stops it (``cluster.info``, ``cluster.address``,
    ``cluster.pids()``); :meth:`start` waits until every node is alive or raises :class:`ClusterError` after
    ``timeout_s`` (having stopped what it started). The driver is not connected: use :func:`connect`
    (``connect(nodes=3)`` or ``connect(address=cluster.address)``).
    """

    def __init__(
        self,
        nodes: int,
        cpus_per_node: float = 1.0,
        gpus_per_node: float = 0.0,
        timeout_s: float = 60.0,
        temp_dir: str | None = None,
        *,
        object_store_mb: int = DEFAULT_OBJECT_STORE_MB,
    ) -> None:
        if int(nodes) != nodes or nodes < 1:
            raise ValueError(f"nodes must be a positive integer, got {nodes!r}")
        if cpus_per_node <= 0 or gpus_per_node < 0:
            raise ValueError(f"need cpus_per_node > 0 and gpus_per_node >= 0, got {cpus_per_node}, {gpus_per_node}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if object_store_mb < 75:  # Ray's minimum object store is 75 MiB
            raise ValueError(f"object_store_mb must be at least 75, got {object_store_mb}")
        self.nodes = int(nodes)
        self.cpus_per_node = float(cpus_per_node)
        self.gpus_per_node = float(gpus_per_node)
        self.timeout_s = float(timeout_s)
        self.object_store_mb = int(object_store_mb)
        self._temp_dir_arg = temp_dir
        self.temp_dir: str | None = None
        self._own_temp_dir = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._tracked: dict[int, int | None] = {}  # pid -> start time, every process we know we started
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._tail: list[str] = []
        self._info: ClusterInfo | None = None
        self._lock = threading.RLock()

    # -- public -------------------------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        if self._info is None:
            raise ClusterError("LocalCluster is not started; call start() first")
        return self._info.address

    @property
    def info(self) -> ClusterInfo | None:
        return self._info

    @property
    def log_path(self) -> str | None:
        return os.path.join(self.temp_dir, _HOST_LOG) if self.temp_dir else None

    def running(self) -> bool:
        """True while the helper process that hosts the nodes is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> ClusterInfo:
        """Start head and worker nodes; return when all are alive (else ClusterError after ``timeout_s``)."""
        with self._lock:
            if self._proc is not None:
                raise ClusterError("LocalCluster already started; stop() it first")
            t0 = time.monotonic()
            env = {**os.environ, **ray_env(local=True)}
            self._prepare_temp_dir()
            assert self.temp_dir is not None
            spec = {
                "nodes": self.nodes,
                "cpus": self.cpus_per_node,
                "gpus": self.gpus_per_node,
                "object_store_bytes": self.object_store_mb * 1024 * 1024,
                "temp_dir": self.temp_dir,
                "parent_pid": os.getpid(),
                "timeout_s": self.timeout_s,
                "own_temp_dir": self._own_temp_dir,
            }
            code = "from layeredge_dist.pipeline.cluster import _host_main; _host_main()"
            with open(os.path.join(self.temp_dir, _HOST_LOG), "ab") as log:
                self._proc = subprocess.Popen(
                    [sys.executable, "-c", code, json.dumps(spec)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    env=env,
                    start_new_session=True,  # Ctrl-C on our terminal does not reach it; we stop it in order
                    close_fds=True,
                )
            st = _stat(self._proc.pid)
            self._tracked[self._proc.pid] = st[3] if st else None
            atexit.register(self.stop)
            threading.Thread(target=self._read_stdout, args=(self._proc,), daemon=True,
                             name=f"layeredge-cluster-{self._proc.pid}").start()
            try:
                payload = self._wait_ready(t0)
            except BaseException:
                self.stop(keep_temp_dir=True)
                raise
            for pid in payload["pids"]:
                st = _stat(pid)
                self._tracked.setdefault(pid, st[3] if st else None)
            nodes = payload["nodes"]
            self._info = ClusterInfo(
                address=payload["address"],
                node_ips=tuple(n["ip"] for n in nodes),
                num_nodes=len(nodes),
                embedded=True,
                resources=_sum_resources(n["resources"] for n in nodes),
            )
            self.start_seconds = time.monotonic() - t0
            return self._info

    def pids(self) -> list[int]:
        """Live processes this cluster started: the helper and, recursively, every Ray process under it."""
        with self._lock:
            if self._proc is None:
                return []
            return sorted(pid for pid, start in self._members().items() if _alive(pid, start))

    def stop(self, keep_temp_dir: bool = False) -> None:
        """Stop exactly the processes this cluster started (by PID); idempotent; never ``ray stop``.

        The helper gets SIGTERM and shuts its nodes down gracefully (raylets first, so they stop their workers);
        whatever is still alive after a grace period gets SIGKILL. Removes the temp dir if we created it.
        """
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            with contextlib.suppress(Exception):
                atexit.unregister(self.stop)
            members = self._members()
            helper_start = self._tracked.get(proc.pid)
            _signal(proc.pid, helper_start, signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
            members.update(self._members())  # anything started meanwhile (session members outlive the helper)
            deadline = time.monotonic() + 3.0
            while True:
                alive = {p: s for p, s in members.items() if _alive(p, s) and p != os.getpid()}
                if not alive or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            for pid, start in alive.items():
                _signal(pid, start, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)
            deadline = time.monotonic() + 5.0
            while any(_alive(p, s) for p, s in members.items()) and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc.stdout is not None:
                with contextlib.suppress(Exception):
                    proc.stdout.close()
            self._proc = None
            self._info = None
            self._tracked.clear()
            if self._own_temp_dir and not keep_temp_dir and self.temp_dir:
                shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"address={self._info.address}" if self._info else "stopped"
        return f"LocalCluster(nodes={self.nodes}, cpus_per_node={self.cpus_per_node}, {state})"

    # -- internals ----------------------------------------------------------------------------------------------

    def _prepare_temp_dir(self) -> None:
        if self._temp_dir_arg is not None:
            self.temp_dir = os.path.abspath(self._temp_dir_arg)
            os.makedirs(self.temp_dir, exist_ok=True)
            self._own_temp_dir = False
        else:
            # /tmp, not $TMPDIR: Ray's unix socket paths must stay short
            self.temp_dir = tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=_TEMP_ROOT)
            self._own_temp_dir = True
        if len(self.temp_dir) > _MAX_SOCKET_DIR:
            raise ClusterError(
                f"temp_dir {self.temp_dir!r} is {len(self.temp_dir)} characters long; Ray's unix socket paths under "
                f"it would exceed the 107-byte limit. Hint: use a directory of at most {_MAX_SOCKET_DIR} characters."
            )

    def _read_stdout(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        with contextlib.suppress(Exception):
            for raw in proc.stdout:
                self._lines.put(raw.decode(errors="replace").rstrip("\n"))
        self._lines.put(None)

    def _members(self) -> dict[int, int | None]:
        """Tracked PIDs plus the helper's live descendants and its session members (it is a session leader)."""
        out = dict(self._tracked)
        if self._proc is None:
            return out
        root = self._proc.pid
        stats = _all_stats()
        children: dict[int, list[int]] = {}
        for pid, (_, ppid, _, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        stack = [p for p in out if p in stats]
        while stack:
            for child in children.get(stack.pop(), []):
                if child not in out:
                    out[child] = stats[child][3]
                    stack.append(child)
        for pid, (_, _, sid, start) in stats.items():
            if sid == root and pid not in out:
                out[pid] = start
        return out

    def _wait_ready(self, t0: float) -> dict[str, Any]:
        deadline = t0 + self.timeout_s
        assert self._proc is not None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ClusterError(self._failure(
                    f"was not ready after {time.monotonic() - t0:.1f} s (timeout_s={self.timeout_s:g})",
                    "the machine may be overloaded; raise timeout_s / --timeout, or use fewer nodes"))
            try:
                line = self._lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:  # helper closed stdout: it exited
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=2.0)
                raise ClusterError(self._failure(
                    f"helper process exited with code {self._proc.returncode} after "
                    f"{time.monotonic() - t0:.1f} s, before all nodes were alive",
                    "read the log below; a leftover token or RAY_AUTH_* mismatch, or a full /tmp, are common causes"))
            if line.startswith(_READY):
                return json.loads(line[len(_READY):])
            self._tail = (self._tail + [line])[-20:]

    def _failure(self, what: str, hint: str) -> str:
        log = ""
        if self.log_path:
            with contextlib.suppress(OSError):
                log = "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-15:])
        return (
            f"local Ray cluster of {self.nodes} node(s) on {LOCAL_IP} ({self.cpus_per_node:g} CPU, "
            f"{self.gpus_per_node:g} GPU each) {what}. Hint: {hint}. Logs: {self.log_path} and "
            f"{self.temp_dir}/session_latest/logs."
            + (f"\nLast helper output:\n{log}" if log else "")
            + (f"\nLast stdout:\n" + "\n".join(self._tail) if self._tail else "")
        )


def _sum_resources(per_node: Any) -> dict[str, float]:
    total: dict[str, float] = {}
    for res in per_node:
        for key, value in res.items():
            total[key] = total.get(key, 0.0) + float(value)
    return total


def _host_main() -> None:
    """Entry of the helper process of a :class:`LocalCluster`: host all nodes until SIGTERM or parent death."""
    spec = json.loads(sys.argv[1])
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    parent = int(spec["parent_pid"])

    import ray._private.node as ray_node
    from ray._private.parameter import RayParams

    def log(msg: str) -> None:
        print(f"[layeredge cluster host {os.getpid()}] {msg}", file=sys.stderr, flush=True)

    nodes: list[Any] = []
    orphaned = False
    try:
        common = dict(
            node_ip_address=LOCAL_IP,
            num_cpus=spec["cpus"],
            num_gpus=spec["gpus"],
            object_store_memory=spec["object_store_bytes"],
            include_dashboard=False,
            dashboard_agent_listen_port=0,  # the default (52365) is fixed and would collide between clusters
            min_worker_port=0,
            max_worker_port=0,
            node_manager_port=0,
            temp_dir=spec["temp_dir"],
        )
        t0 = time.monotonic()
        # The head's API server (jobs/state HTTP, minimal without the dashboard) defaults to fixed port 8265;
        # no autoscaler monitor: nothing to autoscale, and one Python process less on small machines.
        head_params = RayParams(**common, dashboard_port=_free_port(), no_monitor=True)
        # spawn_reaper=True: on Linux Ray then ties each child to this process with PR_SET_PDEATHSIG (no reaper
        # process, no setpgrp); shutdown_at_exit=False: we stop the nodes ourselves below.
        head = ray_node.Node(head_params, head=True, shutdown_at_exit=False, spawn_reaper=True)
        nodes.append(head)
        log(f"head node up at {head.gcs_address} after {time.monotonic() - t0:.2f} s")
        for _ in range(1, spec["nodes"]):
            if stop.is_set():
                return
            params = RayParams(**common, gcs_address=head.gcs_address, include_log_monitor=False)
            nodes.append(ray_node.Node(params, head=False, shutdown_at_exit=False, spawn_reaper=True))
        log(f"{len(nodes)} node(s) started after {time.monotonic() - t0:.2f} s; waiting until all are alive")

        from ray.core.generated import gcs_pb2

        client = head.get_gcs_client()
        alive: list[Any] = []
        deadline = time.monotonic() + float(spec["timeout_s"])
        while not stop.is_set() and time.monotonic() < deadline:
            infos = client.get_all_node_info(timeout=5).values()
            alive = [i for i in infos if i.state == gcs_pb2.GcsNodeInfo.GcsNodeState.ALIVE]
            if len(alive) >= spec["nodes"]:
                break
            time.sleep(0.1)
        if len(alive) < spec["nodes"]:
            log(f"only {len(alive)} of {spec['nodes']} nodes alive")
            return
        pids = [info.process.pid for node in nodes for infos in node.all_processes.values() for info in infos]
        payload = {
            "address": head.gcs_address,
            "session_dir": head.get_session_dir_path(),
            "pids": pids,
            "nodes": [
                {"node_id": i.node_id.hex(), "ip": i.node_manager_address, "is_head": bool(i.is_head_node),
                 "resources": dict(i.resources_total)}
                for i in sorted(alive, key=lambda i: (not i.is_head_node, i.node_id))
            ],
        }
        print(_READY + json.dumps(payload), flush=True)
        log(f"ready after {time.monotonic() - t0:.2f} s: {payload['address']}, pids {pids}")
        while not stop.wait(0.5):
            if os.getppid() != parent:
                log("parent process is gone; shutting down")
                orphaned = True
                break
    finally:
        for node in reversed(nodes):  # workers first, head (GCS) last
            try:
                node.kill_all_processes(check_alive=False, allow_graceful=True, wait=True)
            except Exception as e:  # keep going: every node must be stopped
                log(f"error stopping a node: {e!r}")
        log("stopped")
        if orphaned and spec.get("own_temp_dir"):  # nobody else is left to remove it
            shutil.rmtree(spec["temp_dir"], ignore_errors=True)


# --------------------------------------------------------------------------------------------- connect


def _parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"Ray address {address!r} is not 'host:port' (or 'auto'). Hint: copy the address that "
                           "`layeredge cluster up` or `ray start --head` printed, e.g. 127.0.0.1:6379.")
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _resolve_auto() -> str:
    """The GCS address of the single Ray cluster running on this machine (or $RAY_ADDRESS)."""
    _apply_env(local=True)
    import ray._private.services as services

    try:
        return str(services.canonicalize_bootstrap_address_or_die("auto"))
    except (ConnectionError, ValueError) as e:
        raise ClusterError(f"address 'auto' found no single running Ray cluster on this machine: {e}. Hint: pass "
                           "the address explicitly (layeredge cluster up prints it), or set RAY_ADDRESS.") from e


def _gcs_client(address: str, timeout_s: float) -> Any:
    from ray._raylet import InnerGcsClient

    return InnerGcsClient.standalone(address, None, max(1, int(timeout_s * 1000)))


def _probe(address: str, timeout_s: float) -> list[Any]:
    """Wait until ``address`` accepts TCP and answers as a Ray GCS; return its alive GcsNodeInfo entries."""
    from ray.core.generated import gcs_pb2

    host, port = _parse_address(address)
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    last: Exception | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ClusterError(
                f"cannot reach the Ray GCS at {address}: {last} (waited {time.monotonic() - t0:.1f} s, "
                f"timeout_s={timeout_s:g}). Hint: is the cluster up? `layeredge cluster up --nodes N` prints its "
                "address; for a remote head check that the port is open from here.")
        try:
            with socket.create_connection((host, port), timeout=min(remaining, 2.0)):
                break
        except OSError as e:
            last = e
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    remaining = max(0.5, deadline - time.monotonic())
    try:
        client = _gcs_client(address, remaining)
        infos = client.get_all_node_info(timeout=remaining).values()
    except Exception as e:
        raise ClusterError(
            f"{address} accepts connections but did not answer as a Ray GCS (waited "
            f"{time.monotonic() - t0:.1f} s, timeout_s={timeout_s:g}): "
            f"{type(e).__name__}: {e}. Hint: check the port is the GCS port (not the dashboard or client port) and "
            f"that this process has the cluster's token (RAY_AUTH_MODE=token, {token_path()} or RAY_AUTH_TOKEN)."
        ) from e
    return [i for i in infos if i.state == gcs_pb2.GcsNodeInfo.GcsNodeState.ALIVE]


def _join(address: str, timeout_s: float, log_to_driver: bool) -> None:
    """ray.init into an existing cluster, with every wait bounded by ``timeout_s``."""
    import ray
    import ray._private.services as services

    t0 = time.monotonic()
    alive = _probe(address, timeout_s)
    local_ids = set(services.find_node_ids())
    local = [i for i in alive if i.node_id.hex() in local_ids]
    if not local:
        raise ClusterError(
            f"the Ray cluster at {address} is up ({len(alive)} alive node(s)) but none of its nodes runs on this "
            "machine, and a Ray driver must run on a cluster node. Hint: run the driver on a cluster machine, or "
            f"add this machine with `ray start --address {address}` (same RAY_AUTH_MODE and token).")
    node = next((i for i in local if i.is_head_node), local[0])
    try:
        ray.init(address=address, _node_ip_address=node.node_manager_address, log_to_driver=log_to_driver,
                 configure_logging=False)
    except Exception as e:
        raise ClusterError(f"ray.init(address={address!r}) failed after {time.monotonic() - t0:.1f} s: "
                           f"{type(e).__name__}: {e}. Hint: check RAY_AUTH_MODE/token and that the cluster's "
                           "Ray and Python versions match this process.") from e


def _current_info(embedded: bool) -> ClusterInfo:
    import ray

    nodes = alive_nodes()
    return ClusterInfo(
        address=str(ray.get_runtime_context().gcs_address),
        node_ips=tuple(n["ip"] for n in nodes),
        num_nodes=len(nodes),
        embedded=embedded,
        resources={k: float(v) for k, v in ray.cluster_resources().items()},
    )


@contextlib.contextmanager
def connect(
    address: str | None = None,
    nodes: int = 1,
    cpus_per_node: float = 1.0,
    gpus_per_node: float = 0.0,
    timeout_s: float = 120.0,
    log_to_driver: bool = False,
) -> Iterator[ClusterInfo]:
    """Connect this process to a Ray cluster for the block; see the module docstring for the three cases.

    If Ray is already initialised in this process (e.g. by the test fixture) it is reused as is and left
    running; asking for a different explicit address then is an error. Sets :func:`ray_env` in ``os.environ``
    (Ray reads it from there, and processes we start inherit it).
    """
    if address is None and (int(nodes) != nodes or nodes < 1):
        raise ValueError(f"nodes must be a positive integer, got {nodes!r}")
    _apply_env(local=address is None or _is_loopback(address.strip().rpartition(":")[0].strip("[]"))
               or address.strip() == "auto")
    import ray

    if ray.is_initialized():
        info = _current_info(embedded=False)
        if address not in (None, "auto") and address.strip() != info.address:
            raise ClusterError(f"Ray is already initialised in this process, connected to {info.address}; cannot "
                               f"also connect to {address}. Hint: ray.shutdown() first, or pass no address.")
        yield info
        return

    cluster: LocalCluster | None = None
    temp_dir: str | None = None
    t0 = time.monotonic()
    try:
        if address is None and nodes == 1:
            with contextlib.suppress(Exception):  # best effort: never a reason not to start
                sweep_orphaned_temp_dirs()
            temp_dir = tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=_TEMP_ROOT)
            with contextlib.suppress(OSError):  # before Ray starts: after a SIGKILL the next connect sweeps it
                _write_owner(temp_dir)
            try:
                ray.init(
                    _node_ip_address=LOCAL_IP,
                    num_cpus=cpus_per_node,
                    num_gpus=gpus_per_node,
                    object_store_memory=DEFAULT_OBJECT_STORE_MB * 1024 * 1024,
                    include_dashboard=False,
                    dashboard_port=_free_port(),  # the minimal API server would otherwise take fixed port 8265
                    log_to_driver=log_to_driver,
                    configure_logging=False,
                    _temp_dir=temp_dir,
                )
            except Exception as e:
                raise ClusterError(
                    f"embedded single-node Ray on {LOCAL_IP} failed to start after {time.monotonic() - t0:.1f} s: "
                    f"{type(e).__name__}: {e}. Hint: logs under {temp_dir}/session_latest/logs.") from e
            if time.monotonic() - t0 > timeout_s:
                raise ClusterError(f"embedded single-node Ray took {time.monotonic() - t0:.1f} s to start, more than "
                                   f"timeout_s={timeout_s:g}. Hint: the machine is overloaded; raise the timeout.")
            with contextlib.suppress(OSError):
                _write_owner(temp_dir, _ray_processes(temp_dir))
            embedded = True
        elif address is None:
            cluster = LocalCluster(nodes, cpus_per_node, gpus_per_node, timeout_s=timeout_s)
            info = cluster.start()
            _join(info.address, max(1.0, timeout_s - (time.monotonic() - t0)), log_to_driver)
            embedded = True
        else:
            target = _resolve_auto() if address.strip() == "auto" else address.strip()
            _join(target, timeout_s, log_to_driver)
            embedded = False
        yield _current_info(embedded=embedded)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if cluster is not None:
            cluster.stop()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------- queries


def alive_nodes(address: str | None = None, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Alive nodes, head first: ``{"node_id", "ip", "is_head", "resources"}``.

    Without ``address`` asks the Ray this process is connected to; with one, asks that cluster's GCS directly
    (no driver, works from any machine that reaches it and has the token), waiting at most ``timeout_s``.
    """
    if address is None:
        import ray

        if not ray.is_initialized():
            raise ClusterError("alive_nodes(): Ray is not initialised in this process. Hint: use connect(), or "
                               "pass the cluster address.")
        nodes = [
            {"node_id": n["NodeID"], "ip": n["NodeManagerAddress"], "is_head": "node:__internal_head__" in n["Resources"],
             "resources": {k: float(v) for k, v in n["Resources"].items()}}
            for n in ray.nodes() if n["Alive"]
        ]
    else:
        _apply_env(local=_is_loopback(_parse_address(address)[0]))
        nodes = [
            {"node_id": i.node_id.hex(), "ip": i.node_manager_address, "is_head": bool(i.is_head_node),
             "resources": {k: float(v) for k, v in i.resources_total.items()}}
            for i in _probe(address, timeout_s)
        ]
    return sorted(nodes, key=lambda n: (not n["is_head"], n["node_id"]))


def choose_placement(num_stages: int, requested: str, alive: int) -> str:
    """The Ray placement-group strategy for ``num_stages`` stage bundles on ``alive`` nodes.

    ``auto``: ``STRICT_SPREAD`` (one stage per node, as in production) when there are enough nodes, else
    ``PACK``; ``strict_spread`` insists on one node per stage and raises :class:`ClusterError` otherwise;
    ``spread`` and ``pack`` map to Ray's ``SPREAD`` and ``PACK``.
    """
    if num_stages < 1:
        raise ValueError(f"num_stages must be at least 1, got {num_stages}")
    key = requested.strip().lower().replace("-", "_")
    if key not in PLACEMENTS:
        raise ValueError(f"placement {requested!r} is not one of {', '.join(PLACEMENTS)}")
    if key == "auto":
        return "STRICT_SPREAD" if alive >= num_stages else "PACK"
    if key == "strict_spread":
        if alive < num_stages:
            raise ClusterError(
                f"strict_spread placement needs one Ray node per stage: {num_stages} stages but only {alive} alive "
                f"node(s). Hint: start more nodes (layeredge cluster up --nodes {num_stages}) or use placement "
                "auto, spread or pack.")
        return "STRICT_SPREAD"
    return key.upper()
