"""N emulated hosts on one machine: network namespaces on a software switch, with shaped links.

Layout of a testbed with id ``ID`` (``le-<pid>`` of the creating process, ``le-<pid>t<n>`` for its n-th one)::

    le-ID-sw   the switch: bridge br0 and one veth end v<i> per host (its egress = the link towards host i)
    le-ID-h0   host 0: lo up, eth0 = 10.250.x.1/24 (its egress = the link from host 0 to the switch)
    le-ID-h1   host 1: eth0 = 10.250.x.2/24
    ...

Everything lives inside namespaces this module creates; nothing is added to the root namespace (no address, no
route, no link), so the machine's own networking is untouched and deleting the namespaces deletes every link.
The /24 is the first ``10.250.0.0/24``, ``10.250.1.0/24``, ... that overlaps none of the host's routes or
addresses (``ip -4 route show table all``, ``ip -4 addr``) and no other live testbed.

Shaping (``rate``): a ``tc tbf`` qdisc on *both* veth ends of every host, so each host has a full-duplex port of
that rate (upload on its eth0, download on the switch's v<i>), like a host on a switched Ethernet. ``100mbit``
measures ~95 Mbit/s of TCP payload (tbf counts Ethernet/IP/TCP headers), ``1gbit`` ~0.9 Gbit/s; ``unshaped`` is
the bare veth (several Gbit/s, CPU-bound). The kernel of the development machines has no ``netem``: no added
latency or loss is emulated (see ``cluster/testbed.md``).

Bookkeeping, so a crashed run never leaves anything behind for long: before creating anything, :meth:`Testbed.up`
writes a state file ``/run/layeredge-testbed/<prefix>-<ID>.json`` (``$LAYEREDGE_TESTBED_STATE`` overrides the
directory) naming the owner process (PID and start time), the namespaces, the work directory and every process
started through :meth:`Testbed.spawn`. :meth:`Testbed.down` stops those processes and any other process still
inside the testbed's namespaces (SIGTERM, then SIGKILL), deletes the namespaces and the work directory and removes
the state file; it is idempotent. :func:`cleanup_stale` (called by every ``up``) does the same for testbeds whose
owner has died, and deletes namespaces named like ours whose creating process is gone and that no process uses.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layeredge_dist.files import atomic_write_json

__all__ = [
    "Shaping",
    "Testbed",
    "TestbedError",
    "TestbedHost",
    "cleanup_stale",
    "list_testbeds",
    "parse_rate",
    "require_tools",
]

DEFAULT_PREFIX = "le"
DEFAULT_STATE_DIR = "/run/layeredge-testbed"
STATE_ENV = "LAYEREDGE_TESTBED_STATE"
#: Interface names inside every host namespace / in the switch namespace.
HOST_IF = "eth0"
BRIDGE = "br0"
#: The tbf queue bound: how long a packet may wait in the shaper (ms); tbf drops beyond it, as a switch would.
DEFAULT_LATENCY_MS = 25.0
MAX_HOSTS = 200
_RATE_RE = re.compile(r"^\s*(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[kmgtKMGT]?(?:bit|bits|bps|bit/s|B/s))\s*$")
_UNSHAPED = ("unshaped", "none", "off", "inf", "unlimited", "0")
_CMD_TIMEOUT_S = 20.0
_STOP_GRACE_S = 8.0
_counter = itertools.count()


class TestbedError(RuntimeError):
    """The testbed cannot be built, shaped or torn down here; the message says what is missing and what to do."""

    __test__ = False  # not a pytest test class despite the name


# --------------------------------------------------------------------------------------------- shaping


@dataclass(frozen=True)
class Shaping:
    """Per-direction rate of every host's link: ``rate_bps`` bits per second (None: unshaped), tbf bucket size in
    bytes and queue bound in ms."""

    rate_bps: float | None
    burst_bytes: int = 0
    latency_ms: float = DEFAULT_LATENCY_MS

    @property
    def label(self) -> str:
        """``"100mbit"``, ``"1gbit"``, ``"2.5gbit"``, ``"unshaped"``."""
        if self.rate_bps is None:
            return "unshaped"
        for scale, unit in ((1e9, "gbit"), (1e6, "mbit"), (1e3, "kbit")):
            if self.rate_bps >= scale:
                return f"{self.rate_bps / scale:g}{unit}"
        return f"{self.rate_bps:g}bit"

    @property
    def bytes_per_s(self) -> float | None:
        return None if self.rate_bps is None else self.rate_bps / 8.0

    def tc_args(self) -> list[str]:
        """The ``tbf`` arguments of ``tc qdisc replace dev X root ...`` (empty when unshaped)."""
        if self.rate_bps is None:
            return []
        return ["tbf", "rate", f"{int(self.rate_bps)}bit", "burst", str(self.burst_bytes),
                "latency", f"{self.latency_ms:g}ms"]


def parse_rate(rate: str | float | int | Shaping | None) -> Shaping:
    """``"100mbit"``, ``"1gbit"``, ``"1Gbit/s"``, ``"12.5MB/s"`` (see :func:`layeredge_dist.plan.parse_bandwidth`),
    a number of bits per second, or ``"unshaped"`` / ``"none"`` / None -> :class:`Shaping`.

    The tbf bucket holds 2 ms at the rate, at least 32 KiB (whole TSO segments must fit, or tbf must split them).
    Raises ValueError for anything else, or a rate below 64 kbit/s.
    """
    if isinstance(rate, Shaping):
        return rate
    if rate is None or (isinstance(rate, str) and rate.strip().lower() in _UNSHAPED):
        return Shaping(None)
    if isinstance(rate, (int, float)) and not isinstance(rate, bool):
        bps = float(rate)
    else:
        m = _RATE_RE.match(str(rate))
        if m is None:
            raise ValueError(f"cannot parse rate {rate!r}; expected e.g. 100mbit, 1gbit, 1Gbit/s, 500kbit, 10mbps, "
                             "12.5MB/s, or unshaped")
        unit = m.group("unit").lower()
        scale = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[unit[0] if unit[0] in "kmgt" else ""]
        per_byte = m.group("unit").endswith("B/s")
        bps = float(m.group("num")) * scale * (8.0 if per_byte else 1.0)
    if not bps >= 64e3 or bps == float("inf"):
        if bps == float("inf"):
            return Shaping(None)
        raise ValueError(f"rate {rate!r} is below 64 kbit/s; give e.g. 100mbit, 1gbit or unshaped")
    burst = max(32 * 1024, int(bps / 8.0 * 0.002))
    return Shaping(bps, burst, DEFAULT_LATENCY_MS)


# --------------------------------------------------------------------------------------------- tools


def require_tools() -> None:
    """Raise :class:`TestbedError` unless this process can build a testbed: root, ``ip`` and ``tc`` on PATH,
    and ``ip netns`` working."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise TestbedError(
            "the testbed needs root: it creates network namespaces (ip netns), veth links, a bridge and tc "
            "shaping. Run it as root (e.g. `sudo -E env PATH=$PATH layeredge testbed up ...`) or in a container "
            "with CAP_SYS_ADMIN and CAP_NET_ADMIN.")
    missing = [t for t in ("ip", "tc") if shutil.which(t) is None]
    if missing:
        raise TestbedError(f"the testbed needs iproute2's {' and '.join(missing)} on PATH (not found). Install it "
                           "(Debian/Ubuntu: apt-get install iproute2; Fedora: dnf install iproute iproute-tc).")
    try:
        r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=_CMD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TestbedError(f"`ip netns list` failed: {e}. The testbed needs network namespace support.") from e
    if r.returncode != 0:
        raise TestbedError(f"`ip netns list` failed (exit {r.returncode}): {r.stderr.strip()}. The testbed needs a "
                           "kernel with network namespaces and permission to use them (root).")


def _run(argv: Sequence[str], what: str | None = None, check: bool = True,
         timeout: float = _CMD_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    try:
        r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise TestbedError(f"`{' '.join(argv)}` did not finish in {timeout:g} s") from e
    except OSError as e:
        raise TestbedError(f"cannot run `{' '.join(argv)}`: {e}") from e
    if check and r.returncode != 0:
        hint = ""
        err = r.stderr.strip()
        if "qdisc" in err.lower() and ("not found" in err.lower() or "unknown" in err.lower()):
            hint = (" Hint: the kernel lacks the tbf qdisc (module sch_tbf); load it (modprobe sch_tbf) or use rate "
                    "unshaped.")
        raise TestbedError(f"{what or 'command'} failed: `{' '.join(argv)}` exited {r.returncode}: {err}{hint}")
    return r


# --------------------------------------------------------------------------------------------- processes


def _proc_start(pid: int) -> int | None:
    """Start time (clock ticks since boot) of ``pid`` from /proc, None if it does not exist or is a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2:].split()
    if rest[0] in (b"Z", b"X"):
        return None
    return int(rest[19])


def _proc_session(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2:].split()[3])


def _alive(pid: int, start: int | None) -> bool:
    now = _proc_start(pid)
    return now is not None and (start is None or now == start)


def _all_pids() -> list[int]:
    with contextlib.suppress(OSError):
        return [int(n) for n in os.listdir("/proc") if n.isdigit()]
    return []


def _netns_dir() -> Path:
    return Path("/run/netns")


def _ns_exists(name: str) -> bool:
    return (_netns_dir() / name).exists()


def _ns_pids(names: Sequence[str]) -> dict[int, int | None]:
    """Live processes whose network namespace is one of ``names`` (as ``ip netns pids`` finds them):
    ``{pid: start time}``."""
    ids = set()
    for name in names:
        with contextlib.suppress(OSError):
            st = os.stat(_netns_dir() / name)
            ids.add((st.st_dev, st.st_ino))
    out: dict[int, int | None] = {}
    if not ids:
        return out
    for pid in _all_pids():
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in ids:
            start = _proc_start(pid)
            if start is not None:
                out[pid] = start
    return out


def _protected() -> set[int]:
    """This process and its ancestors: never signalled."""
    out = {os.getpid()}
    pid = os.getpid()
    for _ in range(64):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            break
        pid = int(data[data.rindex(b")") + 2:].split()[1])
        if pid <= 1:
            break
        out.add(pid)
    return out


def _stop_processes(tracked: Mapping[int, int | None], namespaces: Sequence[str],
                    grace_s: float = _STOP_GRACE_S) -> list[int]:
    """Stop every tracked process (each a session leader: its session goes too) and every process inside
    ``namespaces``: SIGTERM to the tracked leaders first (``ray start --block`` then stops its node in order),
    then to everything left, SIGKILL after ``grace_s``. Returns the PIDs that were signalled."""
    protected = _protected()

    def members() -> dict[int, int | None]:
        out = {p: s for p, s in tracked.items() if _alive(p, s)}
        # sessions only of leaders still alive as themselves: a dead leader's PID may be reused by a stranger's
        # session (what a dead leader left behind is inside the namespaces, found below)
        leaders = set(out)
        for pid in _all_pids():
            if pid not in out and _proc_session(pid) in leaders:
                start = _proc_start(pid)
                if start is not None:
                    out[pid] = start
        out.update(_ns_pids(namespaces))
        return {p: s for p, s in out.items() if p not in protected}

    found = members()
    signalled = set(found)
    for pid, start in tracked.items():
        if pid in found and _alive(pid, start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(_alive(p, tracked[p]) for p in tracked if p in found) and time.monotonic() < deadline:
        time.sleep(0.05)
    for sig, wait in ((signal.SIGTERM, min(2.0, grace_s)), (signal.SIGKILL, 5.0)):
        left = members()
        signalled |= set(left)
        if not left:
            break
        for pid, start in left.items():
            if _alive(pid, start):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while any(_alive(p, s) for p, s in left.items()) and time.monotonic() < deadline:
            time.sleep(0.05)
    return sorted(signalled)


# --------------------------------------------------------------------------------------------- state


def state_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """Where testbed state files live: ``path``, ``$LAYEREDGE_TESTBED_STATE`` or ``/run/layeredge-testbed``."""
    return Path(path or os.environ.get(STATE_ENV) or DEFAULT_STATE_DIR)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    with open(directory / ".lock", "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _read_states(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    with contextlib.suppress(OSError):
        for path in sorted(directory.glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                out.append((path, json.loads(path.read_text())))
    return out


def _owner_alive(state: Mapping[str, Any]) -> bool:
    owner = state.get("owner") or {}
    return isinstance(owner.get("pid"), int) and _alive(owner["pid"], owner.get("start"))


def _teardown(state: Mapping[str, Any], path: Path | None) -> dict[str, Any]:
    """Stop the processes, delete the namespaces and the work directory of one testbed state; remove its file.
    Idempotent; collects errors and raises TestbedError at the end if a namespace could not be deleted."""
    namespaces = list(state.get("namespaces", []))
    tracked = {int(p["pid"]): p.get("start") for p in state.get("processes", [])}
    stopped = _stop_processes(tracked, [n for n in namespaces if _ns_exists(n)])
    errors = []
    # hosts first: deleting a host's namespace deletes its eth0 and, with it, the peer v<i> in the switch
    for name in sorted(namespaces, key=lambda n: n.endswith("-sw")):
        if _ns_exists(name):
            r = _run(["ip", "netns", "delete", name], check=False)
            if r.returncode != 0 and _ns_exists(name):
                errors.append(f"{name}: {r.stderr.strip()}")
    work = state.get("work_dir")
    if work and _safe_work_dir(work, state.get("prefix", DEFAULT_PREFIX), state.get("id", "")):
        shutil.rmtree(work, ignore_errors=True)
    if errors:
        raise TestbedError("could not delete namespace(s): " + "; ".join(errors))
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return {"id": state.get("id"), "namespaces": namespaces, "processes": stopped}


def _safe_work_dir(path: str, prefix: str, tb_id: str) -> bool:
    """Only ever remove the directory a testbed made for itself: ``/tmp/<prefix>-<id>``."""
    return bool(tb_id) and os.path.abspath(path) == f"/tmp/{prefix}-{tb_id}"


def _ns_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}-(?P<pid>\d+)(?:t\d+)?-(?:sw|h\d+)$")


def unavailable_reason() -> str | None:
    """Why this process cannot build a testbed (the message of :func:`require_tools`), or None when it can;
    for skip conditions and status lines."""
    try:
        require_tools()
    except TestbedError as err:
        return str(err)
    return None


def list_namespaces() -> list[str]:
    """Names of all network namespaces (``ip netns list``)."""
    with contextlib.suppress(OSError):
        return sorted(p.name for p in _netns_dir().iterdir())
    return []


def cleanup_stale(prefix: str = DEFAULT_PREFIX, directory: str | os.PathLike[str] | None = None) -> list[str]:
    """Tear down testbeds whose owner process is gone (processes, namespaces, work dir, state file), and delete
    namespaces named ``<prefix>-<pid>[t<n>]-(sw|h<i>)`` whose ``pid`` is dead, that no state file of a live
    testbed claims and that no process uses. Returns what was removed (testbed ids and namespace names)."""
    d = state_dir(directory)
    removed: list[str] = []
    with _locked(d):
        live_ns: set[str] = set()
        for path, state in _read_states(d):
            if state.get("prefix", DEFAULT_PREFIX) != prefix:
                live_ns.update(state.get("namespaces", []))
                continue
            if _owner_alive(state):
                live_ns.update(state.get("namespaces", []))
                continue
            _teardown(state, path)
            removed.append(str(state.get("id")))
        pattern = _ns_pattern(prefix)
        for name in list_namespaces():
            m = pattern.match(name)
            if m is None or name in live_ns or _alive(int(m.group("pid")), None):
                continue
            if _ns_pids([name]):
                continue  # in use by someone: not ours to remove
            r = _run(["ip", "netns", "delete", name], check=False)
            if r.returncode == 0:
                removed.append(name)
    return removed


def list_testbeds(directory: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Every testbed with a state file: its state plus ``owner_alive``, ``namespaces_present`` and ``processes``
    (live PIDs inside its namespaces or tracked by it)."""
    out = []
    for path, state in _read_states(state_dir(directory)):
        namespaces = list(state.get("namespaces", []))
        tracked = {int(p["pid"]): p.get("start") for p in state.get("processes", [])}
        pids = {p for p, s in tracked.items() if _alive(p, s)} | set(_ns_pids(namespaces))
        out.append({**state, "state_file": str(path), "owner_alive": _owner_alive(state),
                    "namespaces_present": [n for n in namespaces if _ns_exists(n)], "live_pids": sorted(pids)})
    return out


# --------------------------------------------------------------------------------------------- the testbed


@dataclass(frozen=True)
class TestbedHost:
    """One emulated host: its namespace, its address on the testbed's /24 and the interface carrying it."""

    __test__ = False

    index: int
    namespace: str
    ip: str
    interface: str = HOST_IF

    def netns_argv(self, argv: Sequence[str]) -> list[str]:
        """``ip netns exec <namespace> argv...``."""
        return ["ip", "netns", "exec", self.namespace, *argv]


def _used_networks() -> list[ipaddress.IPv4Network]:
    nets: list[ipaddress.IPv4Network] = []
    for argv in (["ip", "-j", "-4", "route", "show", "table", "all"], ["ip", "-j", "-4", "addr", "show"]):
        r = _run(argv, check=False)
        try:
            items = json.loads(r.stdout or "[]")
        except ValueError:
            continue
        for item in items:
            cands = [item.get("dst")] if "dst" in item else []
            cands += [f"{a['local']}/{a.get('prefixlen', 32)}" for a in item.get("addr_info", []) if "local" in a]
            for c in cands:
                if not c or c == "default":
                    continue
                with contextlib.suppress(ValueError):
                    nets.append(ipaddress.ip_network(c, strict=False))  # type: ignore[arg-type]
    return nets


def _choose_subnet(taken: Sequence[str]) -> ipaddress.IPv4Network:
    used = _used_networks() + [ipaddress.ip_network(t) for t in taken]
    for a in range(250, 255):
        for b in range(256):
            net = ipaddress.IPv4Network(f"10.{a}.{b}.0/24")
            if not any(net.overlaps(u) for u in used):
                return net
    raise TestbedError("no free /24 in 10.250.0.0/14 for the testbed (all overlap the host's routes)")


class Testbed:
    """Emulated hosts in network namespaces on one switch, with per-host shaped links.

    ``with Testbed().up(3, "100mbit") as tb: ...`` (or :meth:`up` / :meth:`down`); :attr:`hosts` gives each
    host's namespace and IP, :meth:`spawn` starts a process inside a host (stopped by :meth:`down`),
    :meth:`set_rate` reshapes every link in place. See the module docstring for the layout and the bookkeeping.
    Raises :class:`TestbedError` when not root or without ``ip`` / ``tc``.
    """

    __test__ = False

    def __init__(self, prefix: str = DEFAULT_PREFIX, state_directory: str | os.PathLike[str] | None = None) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", prefix):
            raise ValueError(f"prefix must be 1-8 lower-case letters/digits starting with a letter, got {prefix!r}")
        self.prefix = prefix
        self.state_dir = state_dir(state_directory)
        n = next(_counter)
        self.id = f"{os.getpid()}" + (f"t{n}" if n else "")
        self.hosts: list[TestbedHost] = []
        self.subnet: str | None = None
        self.shaping = Shaping(None)
        self._procs: dict[int, tuple[int | None, str, subprocess.Popen[bytes] | None]] = {}
        self._extra: dict[str, Any] = {}
        self._created = 0.0
        self._up = False

    # -- names ------------------------------------------------------------------------------------------------

    @property
    def switch(self) -> str:
        return f"{self.prefix}-{self.id}-sw"

    def namespace(self, i: int) -> str:
        return f"{self.prefix}-{self.id}-h{i}"

    @property
    def namespaces(self) -> list[str]:
        return [h.namespace for h in self.hosts] + ([self.switch] if self.hosts else [])

    @property
    def work_dir(self) -> str:
        """``/tmp/<prefix>-<id>``: scratch space (e.g. Ray temp dirs) removed by :meth:`down`; short, because Ray's
        unix socket paths live under it."""
        return f"/tmp/{self.prefix}-{self.id}"

    @property
    def state_path(self) -> Path:
        return self.state_dir / f"{self.prefix}-{self.id}.json"

    @property
    def is_up(self) -> bool:
        return self._up

    @property
    def rate(self) -> str:
        return self.shaping.label

    # -- lifecycle --------------------------------------------------------------------------------------------

    def up(self, hosts: int, rate: str | float | Shaping | None = "unshaped") -> Testbed:
        """Create ``hosts`` hosts on one switch, shaped to ``rate`` per direction (see :func:`parse_rate`).
        Idempotent: when already up with the same number of hosts, only the rate is applied. Cleans up stale
        testbeds first. On any failure everything created is removed again and TestbedError is raised."""
        if int(hosts) != hosts or not 1 <= hosts <= MAX_HOSTS:
            raise ValueError(f"hosts must be an integer in 1..{MAX_HOSTS}, got {hosts!r}")
        shaping = parse_rate(rate)
        if self._up:
            if len(self.hosts) != hosts:
                raise TestbedError(f"testbed {self.id} is already up with {len(self.hosts)} hosts; down() it first")
            self.set_rate(shaping)
            return self
        require_tools()
        cleanup_stale(self.prefix, self.state_dir)
        with _locked(self.state_dir):
            taken = [s.get("subnet") for _, s in _read_states(self.state_dir) if s.get("subnet")]
            net = _choose_subnet([t for t in taken if t])
            self.subnet = str(net)
            addrs = list(net.hosts())
            self.hosts = [TestbedHost(i, self.namespace(i), str(addrs[i])) for i in range(hosts)]
            self._created = time.time()
            self._up = True  # from here on, down() has something to undo
            self._save()
        try:
            os.makedirs(self.work_dir, mode=0o755, exist_ok=True)
            self._build()
            self.set_rate(shaping)
        except BaseException:
            with contextlib.suppress(Exception):
                self.down()
            raise
        return self

    def _build(self) -> None:
        sw = self.switch
        for ns in [sw] + [h.namespace for h in self.hosts]:
            if _ns_exists(ns):
                raise TestbedError(f"namespace {ns} exists already; is another testbed with id {self.id} running?")
            _run(["ip", "netns", "add", ns], f"creating namespace {ns}")
            _run(["ip", "-n", ns, "link", "set", "lo", "up"], f"bringing up lo in {ns}")
        _run(["ip", "-n", sw, "link", "add", BRIDGE, "type", "bridge"], "creating the bridge")
        _run(["ip", "-n", sw, "link", "set", BRIDGE, "up"], "bringing up the bridge")
        prefixlen = ipaddress.ip_network(self.subnet or "0.0.0.0/0").prefixlen
        for h in self.hosts:
            port = f"v{h.index}"
            _run(["ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", h.interface, "netns",
                  h.namespace], f"creating the link of host {h.index}")
            _run(["ip", "-n", sw, "link", "set", port, "master", BRIDGE], f"attaching host {h.index} to the switch")
            _run(["ip", "-n", sw, "link", "set", port, "up"], f"bringing up switch port {port}")
            _run(["ip", "-n", h.namespace, "addr", "add", f"{h.ip}/{prefixlen}", "dev", h.interface],
                 f"addressing host {h.index}")
            _run(["ip", "-n", h.namespace, "link", "set", h.interface, "up"], f"bringing up host {h.index}")

    def set_rate(self, rate: str | float | Shaping | None) -> None:
        """Shape every host's link to ``rate`` in both directions (tbf on eth0 and on the switch port), or remove
        the shaping (``unshaped``). Takes effect at once; open connections survive."""
        if not self._up:
            raise TestbedError("the testbed is not up; call up() first")
        shaping = parse_rate(rate)
        for h in self.hosts:
            for ns, dev in ((h.namespace, h.interface), (self.switch, f"v{h.index}")):
                if shaping.rate_bps is None:
                    r = _run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], check=False)
                    if r.returncode != 0 and "no such file" not in r.stderr.lower() and \
                            "cannot delete qdisc with handle of zero" not in r.stderr.lower() and \
                            "cannot find" not in r.stderr.lower():
                        raise TestbedError(f"removing the shaping of {dev} in {ns} failed: {r.stderr.strip()}")
                else:
                    _run(["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", *shaping.tc_args()],
                         f"shaping {dev} in {ns} to {shaping.label}")
        self.shaping = shaping
        self._save()

    def down(self) -> dict[str, Any]:
        """Stop every process started in the testbed (and anything else inside its namespaces), delete the
        namespaces (and with them every link) and the work directory, remove the state file. Idempotent."""
        if not self._up:
            return {"id": self.id, "namespaces": [], "processes": []}
        state = self._state()
        with _locked(self.state_dir):
            out = _teardown(state, self.state_path)
        for _, _, proc in self._procs.values():
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.wait(timeout=1.0)
        self._procs.clear()
        self._extra.clear()
        self._up = False
        self.hosts = []
        return out

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def __repr__(self) -> str:
        return f"Testbed(id={self.id!r}, hosts={len(self.hosts)}, rate={self.rate}, up={self._up})"

    # -- processes --------------------------------------------------------------------------------------------

    def spawn(self, host: int, argv: Sequence[str], *, what: str = "", env: Mapping[str, str] | None = None,
              stdout: Any = subprocess.DEVNULL, stderr: Any = subprocess.DEVNULL,
              cwd: str | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside host ``host`` (``ip netns exec``, which execs it under the same PID) in a new
        session, and record it so :meth:`down` (or a later :func:`cleanup_stale`) stops it and its session."""
        if not self._up:
            raise TestbedError("the testbed is not up; call up() first")
        h = self.hosts[host]
        proc = subprocess.Popen(h.netns_argv(argv), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
                                close_fds=True)
        self._procs[proc.pid] = (_proc_start(proc.pid), what or argv[0], proc)
        self._save()
        return proc

    def track(self, pid: int, what: str = "") -> None:
        """Record a process started some other way, so :meth:`down` stops it (and its session)."""
        self._procs[pid] = (_proc_start(pid), what, None)
        self._save()

    def stop(self, proc: subprocess.Popen[bytes] | int, grace_s: float = _STOP_GRACE_S) -> None:
        """Stop one spawned process and its session (SIGTERM, SIGKILL after ``grace_s``) and forget it."""
        pid = proc if isinstance(proc, int) else proc.pid
        entry = self._procs.get(pid)
        _stop_processes({pid: entry[0] if entry else None}, [], grace_s)
        if entry is not None and entry[2] is not None:
            with contextlib.suppress(Exception):
                entry[2].wait(timeout=2.0)
        self._procs.pop(pid, None)
        if self._up:
            self._save()

    def pids(self) -> list[int]:
        """Live processes of the testbed: spawned / tracked ones, their sessions, and anything in its namespaces."""
        tracked = {p: s for p, (s, _, _) in self._procs.items()}
        out = {p for p, s in tracked.items() if _alive(p, s)}
        leaders = set(out)
        for pid in _all_pids():
            if _proc_session(pid) in leaders and _proc_start(pid) is not None:
                out.add(pid)
        out |= set(_ns_pids([n for n in self.namespaces if _ns_exists(n)]))
        return sorted(out)

    def annotate(self, key: str, value: Any) -> None:
        """Store ``key: value`` (JSON) in the state file, e.g. the Ray address, for ``layeredge testbed status``."""
        self._extra[key] = value
        if self._up:
            self._save()

    def run(self, host: int, argv: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a short command inside host ``host`` and wait for it (output captured, not checked)."""
        h = self.hosts[host]
        return subprocess.run(h.netns_argv(argv), capture_output=True, text=True, timeout=timeout)

    # -- state ------------------------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "id": self.id, "prefix": self.prefix,
            "owner": {"pid": os.getpid(), "start": _proc_start(os.getpid())},
            "created": self._created, "subnet": self.subnet, "rate": self.shaping.label,
            "rate_bps": self.shaping.rate_bps, "switch": self.switch,
            "hosts": [{"index": h.index, "namespace": h.namespace, "ip": h.ip, "interface": h.interface}
                      for h in self.hosts],
            "namespaces": self.namespaces, "work_dir": self.work_dir,
            "processes": [{"pid": p, "start": s, "what": w} for p, (s, w, _) in self._procs.items()],
            **self._extra,
        }

    def _save(self) -> None:
        self.state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write_json(self.state_path, self._state(), indent=1)
