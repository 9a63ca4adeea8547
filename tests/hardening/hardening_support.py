"""Shared helpers of the hardening tests: a StageServer child process, certificates, process trees, and the
seeded frame mutation fuzzer with its oracles.

Run as a script it is the child: ``python hardening_support.py server '<json config>'`` starts a StageServer on
127.0.0.1 (with an ``on_reject`` hook that tallies reasons, and a thread that drains every receiver except the
control edge), prints ``{"port": N, "data_port": M}`` and answers one JSON command per stdin line.

The fuzzer builds valid frames with the real codecs, mutates them (structured header-field changes through the
protobuf message, byte-level bit flips / truncation / extension / splices, payload corruption, random stream
messages, random bytes) and predicts with an oracle - the wire format's rules written out once more over the
``layeredge_dist.wire`` parsers - whether a receiver must accept the result (and how many frames) or reject it
(and with which :class:`FrameError` field). ``LAYEREDGE_FUZZ_CASES`` scales every fuzz test (default: CI size).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import hashlib
import ipaddress
import json
import os
import random
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve()
#: Cases per fuzz target; the CI default keeps every fuzz test within seconds, the long run sets >= 100000.
FUZZ_CASES = int(os.environ.get("LAYEREDGE_FUZZ_CASES", "0") or 0)
#: Fixed seed unless LAYEREDGE_FUZZ_SEED says otherwise (a failure prints the seed and case index).
FUZZ_SEED = int(os.environ.get("LAYEREDGE_FUZZ_SEED", "20261128"))
#: The edge and role the control frames (valid frames checked for bit-exact delivery) travel on.
CONTROL_EDGE = "s5->s6"
CONTROL_ROLE = "gradient"
#: Control frames use steps from here up, which no fuzz case produces (fuzz steps stay below 2**40).
CONTROL_STEP0 = 1 << 50


def fuzz_cases(default: int) -> int:
    """Cases for one fuzz target: ``LAYEREDGE_FUZZ_CASES`` when set, else ``default``."""
    return FUZZ_CASES if FUZZ_CASES > 0 else default


# =============================================================================================== child process


class Child:
    """A child process speaking JSON lines (stdin commands, stdout answers); stderr goes to a file so a test
    can search it (for secrets). ``kill()`` is idempotent."""

    def __init__(self, argv: list[str], stderr_path: Path | None = None, env: dict[str, str] | None = None) -> None:
        full_env = dict(os.environ if env is None else env)
        full_env["PYTHONPATH"] = os.pathsep.join([str(REPO), full_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.stderr_path = stderr_path
        self._err = open(stderr_path, "wb") if stderr_path is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, str(HERE), *argv], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err, text=True, bufsize=1, env=full_env)
        self._lock = threading.Lock()

    def read(self, timeout_s: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        out: list[str] = []
        t = threading.Thread(target=lambda: out.append(self.proc.stdout.readline()), daemon=True)  # type: ignore
        t.start()
        t.join(timeout_s)
        if not out:
            raise TimeoutError(f"child {self.proc.pid} did not answer within {timeout_s} s (hung?)")
        if not out[0]:
            raise RuntimeError(f"child {self.proc.pid} exited with {self.proc.poll()}")
        return json.loads(out[0])

    def cmd(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one command and return the child's answer; TimeoutError when it does not answer within a
        minute more than the command's own ``timeout_s``."""
        assert self.proc.stdin is not None
        with self._lock:
            self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
            self.proc.stdin.flush()
            return self.read(60.0 + float(fields.get("timeout_s", 0.0)))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()
        if self._err is not subprocess.DEVNULL:
            self._err.close()  # type: ignore[union-attr]


class ServerProc(Child):
    """A StageServer child; ``ready()`` waits for its ports (start several, then call ready on each)."""

    def __init__(self, config: dict[str, Any], stderr_path: Path | None = None) -> None:
        super().__init__(["server", json.dumps(config)], stderr_path)
        self.port = 0
        self.data_port = 0
        self.address = ""

    def ready(self, timeout_s: float = 120.0) -> ServerProc:
        if not self.port:
            first = self.read(timeout_s)
            self.port = int(first["port"])
            self.data_port = int(first["data_port"])
            self.address = f"127.0.0.1:{self.port}"
        return self

    def counters(self) -> dict[str, int]:
        return self.cmd("counters")

    def rejects(self) -> dict[str, int]:
        """Reasons the ``on_reject`` hook saw so far, e.g. ``{"checksum": 3, "auth": 1}``."""
        return self.cmd("rejects")["reasons"]

    def rss(self) -> dict[str, int]:
        """``{"rss": bytes, "peak": bytes}`` of the child."""
        return self.cmd("rss")


def _config(spec: dict[str, Any]) -> Any:
    from layeredge_dist.transport import TLSConfig, TransportConfig
    from layeredge_dist.wire import Limits

    spec = dict(spec)
    tls = spec.pop("tls", None)
    limits = spec.pop("limits", None)
    kwargs: dict[str, Any] = dict(spec)
    if isinstance(tls, dict):
        kwargs["tls"] = TLSConfig.from_files(
            root_certs=tls.get("root_certs"), cert_chain=tls.get("cert_chain"), private_key=tls.get("private_key"),
            require_client_auth=bool(tls.get("require_client_auth", False)))
    if isinstance(limits, dict):
        kwargs["limits"] = Limits(**limits)
    return TransportConfig(**kwargs)


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _serve(spec: dict[str, Any]) -> None:
    """Child main: a StageServer driven over stdin/stdout (see the module docstring)."""
    from layeredge_dist.transport import ChannelClosed, DeadlineExceeded, StageServer, TransferRecord
    from layeredge_dist.types import EdgeId, TensorRole

    drain = bool(spec.pop("drain", True))
    reasons: collections.Counter[str] = collections.Counter()
    reject_edges: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    seen: set[tuple[EdgeId, TensorRole]] = set()
    control = (EdgeId.parse(CONTROL_EDGE), TensorRole(CONTROL_ROLE))

    def on_reject(edge: EdgeId | None, reason: str) -> None:
        with lock:
            reasons[reason] += 1
            reject_edges[str(edge) if edge is not None else "unknown"] += 1

    def hook(rec: TransferRecord) -> None:
        key = (rec.edge, rec.role)
        if key not in seen:
            with lock:
                seen.add(key)

    server = StageServer("127.0.0.1:0", _config(spec), hooks=(hook,), on_reject=on_reject)
    port = server.start()
    stop = threading.Event()
    drained = collections.Counter()

    def drainer() -> None:  # every receiver but the control edge's: fuzz frames that were valid go here
        while not stop.is_set():
            with lock:
                keys = [k for k in seen if k != control]
            got = 0
            for key in keys:
                rx = server.receiver(*key)
                while True:
                    try:
                        f = rx.receive(timeout_s=0)
                    except (DeadlineExceeded, ChannelClosed):
                        break
                    rx.release(f)
                    got += 1
            drained["frames"] += got
            if not got:
                time.sleep(0.02)

    if drain:
        threading.Thread(target=drainer, daemon=True).start()
    print(json.dumps({"port": port, "data_port": server.data_path_port}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        out: dict[str, Any] = {}
        if op == "counters":
            out = server.counters.snapshot()
        elif op == "rejects":
            with lock:
                out = {"reasons": dict(reasons), "edges": dict(reject_edges)}
        elif op == "drained":
            out = dict(drained)
        elif op == "receive":  # the frame of ``step`` on an edge, skipping (and counting) any other frames
            rx = server.receiver(EdgeId.parse(cmd["edge"]), TensorRole(cmd["role"]))
            deadline = time.monotonic() + float(cmd.get("timeout_s", 10.0))
            skipped = 0
            out = {"error": "DeadlineExceeded"}
            while time.monotonic() < deadline:
                try:
                    f = rx.receive(timeout_s=max(0.01, deadline - time.monotonic()))
                except DeadlineExceeded:
                    break
                if f.step != int(cmd["step"]):
                    skipped += 1
                    rx.release(f)
                    continue
                h = f.header
                out = {"step": h.step, "micro_batch": h.micro_batch, "codec": h.codec, "shape": list(h.shape),
                       "dtype": h.dtype, "nbytes": f.nbytes, "sha256": hashlib.sha256(f.payload_bytes()).hexdigest(),
                       "skipped": skipped}
                rx.release(f)
                break
        elif op == "queued":
            rx = server.receiver(EdgeId.parse(cmd["edge"]), TensorRole(cmd["role"]))
            out = {"bytes": rx.queued_bytes}
        elif op == "rss":
            out = {"rss": _status_bytes("VmRSS"), "peak": _status_bytes("VmHWM")}
        elif op == "reset_peak":
            Path("/proc/self/clear_refs").write_text("5")
            out = {"rss": _status_bytes("VmRSS")}
        elif op == "stop":
            break
        print(json.dumps(out), flush=True)
    stop.set()
    server.stop(0.5)


def start_servers(configs: dict[str, dict[str, Any]], stderr_dir: Path | None = None) -> dict[str, ServerProc]:
    """One server child per config, started in parallel; all killed if one fails to come up."""
    procs = {name: ServerProc(cfg, None if stderr_dir is None else stderr_dir / f"{name}.stderr")
             for name, cfg in configs.items()}
    try:
        for p in procs.values():
            p.ready()
    except BaseException:
        for p in procs.values():
            p.kill()
        raise
    return procs


# =============================================================================================== processes


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of ``pid`` from /proc, None when it does not exist."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2:].split()
    return rest[0].decode(), int(rest[1]), int(rest[19])


def descendants(root: int) -> dict[int, int]:
    """Every live descendant of ``root`` (not ``root`` itself): pid -> start time (to tell PID reuse apart)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    stats: dict[int, tuple[str, int, int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None:
                stats[int(name)] = st
                children[st[1]].append(int(name))
    out: dict[int, int] = {}
    stack = [root]
    while stack:
        for c in children.get(stack.pop(), []):
            if c not in out:
                out[c] = stats[c][2]
                stack.append(c)
    return out


def still_alive(pids: dict[int, int]) -> dict[int, str]:
    """The processes of ``pids`` (pid -> start time) that still run (not zombies): pid -> command line."""
    out = {}
    for pid, start in pids.items():
        st = proc_stat(pid)
        if st is None or st[0] in ("Z", "X") or st[2] != start:
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
        except OSError:
            cmd = "?"
        out[pid] = cmd
    return out


# =============================================================================================== certificates


def make_certs(root: Path) -> dict[str, str]:
    """PEM files under ``root``: a CA with a server cert (127.0.0.1/localhost) and a client cert, and a second,
    unrelated CA with its own client cert (``rogue_*``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca(cn: str) -> tuple[Any, Any]:
        k = ec.generate_private_key(ec.SECP256R1())
        c = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn)).public_key(k.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
             .sign(k, hashes.SHA256()))
        return c, k

    def leaf(issuer: tuple[Any, Any], cn: str, usage: Any, sans: list[Any]) -> tuple[bytes, bytes]:
        k = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(issuer[0].subject)
             .public_key(k.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage(usage), critical=False))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = b.sign(issuer[1], hashes.SHA256())
        return (cert.public_bytes(serialization.Encoding.PEM),
                k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))

    good, rogue = ca("layeredge hardening CA"), ca("someone else's CA")
    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    server_cert, server_key = leaf(good, "localhost", both,
                                   [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client_cert, client_key = leaf(good, "stage-client", [ExtendedKeyUsageOID.CLIENT_AUTH], [])
    rogue_cert, rogue_key = leaf(rogue, "stage-client", [ExtendedKeyUsageOID.CLIENT_AUTH], [])
    files = {"ca": good[0].public_bytes(serialization.Encoding.PEM), "server_cert": server_cert,
             "server_key": server_key, "client_cert": client_cert, "client_key": client_key,
             "rogue_ca": rogue[0].public_bytes(serialization.Encoding.PEM), "rogue_cert": rogue_cert,
             "rogue_key": rogue_key}
    out = {}
    for k, v in files.items():
        p = root / f"{k}.pem"
        p.write_bytes(v)
        out[k] = str(p)
    return out


# =============================================================================================== fuzzer

#: Codec specs of the frames the fuzzer starts from (encoded by the real codecs, so payloads are genuine).
FRAME_CODECS = ("raw", "fp32", "fp16", "bf16", "fp8e4m3", "int8", "int4/b64", "int2/b64/rht/sr", "int3",
                "topk:0.25", "atopk:0.3", "randk:0.5+int4", "topk:0.2+int8")
#: Every codec family and wrapper, for the decode fuzz (stateless ones and ef/delta).
DECODE_CODECS = FRAME_CODECS + ("fp8e5m2", "int8/b4096", "int4/rht", "topk:0.05+int8", "ef(int2)",
                                "ef(topk:0.1+int8)", "delta(int4)", "delta(int2/rht)")
_SPEC_ALPHABET = "intopkfbrh/:+.()0123456789e-sdlaxwgr"
_EDGES = ("s0->s1", "s1->s2", "s2->s3", "s3->s0", "s1->s0")


def random_codec_spec(rng: random.Random) -> str:
    """A codec spec string that is often almost right: a known spec mutated, a splice of two, or junk."""
    choice = rng.random()
    if choice < 0.3:
        return rng.choice(DECODE_CODECS)
    if choice < 0.6:
        s = list(rng.choice(DECODE_CODECS))
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            pos = rng.randrange(len(s) + 1)
            if op < 0.4 and s:
                s[min(pos, len(s) - 1)] = rng.choice(_SPEC_ALPHABET)
            elif op < 0.7:
                s.insert(pos, rng.choice(_SPEC_ALPHABET))
            elif s:
                del s[min(pos, len(s) - 1)]
        return "".join(s)
    if choice < 0.8:
        a, b = rng.choice(DECODE_CODECS), rng.choice(DECODE_CODECS)
        return rng.choice([f"{a}+{b}", f"ef({a})", f"delta({b})", f"ef(delta({a}))", a + b, "ef(" * rng.randint(1, 90)])
    return "".join(rng.choice(_SPEC_ALPHABET + "\x00é ") for _ in range(rng.randint(0, 300)))


def _tensor(rng: random.Random, shape: tuple[int, ...], dtype: Any) -> Any:
    import torch

    g = torch.Generator().manual_seed(rng.randrange(1 << 31))
    if dtype in (torch.float32, torch.float16, torch.bfloat16):
        return (torch.randn(shape, generator=g) * rng.choice([1e-3, 1.0, 30.0])).to(dtype)
    if dtype is torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    return torch.randint(-100, 100, shape, generator=g).to(dtype)


def valid_frame(rng: random.Random, edge: str | None = None, role: str | None = None, step: int | None = None,
                max_numel: int = 300) -> Any:
    """A valid frame: a random small tensor encoded by one of :data:`FRAME_CODECS`."""
    import torch

    from layeredge_dist.codecs import parse_codec
    from layeredge_dist.types import EdgeId, TensorRole
    from layeredge_dist.wire import ChecksumKind, frame_from_encoded

    spec = rng.choice(FRAME_CODECS)
    ndim = rng.randint(0, 3)
    shape: tuple[int, ...] = ()
    budget = max_numel
    for _ in range(ndim):
        d = rng.randint(0, max(1, min(budget, 40)))
        shape += (d,)
        budget = max(1, budget // max(1, d))
    if spec == "raw":
        dtype = rng.choice([torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int8,
                            torch.uint8, torch.bool])
    else:
        dtype = rng.choice([torch.float32, torch.float16, torch.bfloat16])
    codec = parse_codec(spec)
    g = torch.Generator().manual_seed(rng.randrange(1 << 31))
    enc = codec.encode(_tensor(rng, shape, dtype), generator=g)
    return frame_from_encoded(
        enc, EdgeId.parse(edge or rng.choice(_EDGES)), TensorRole(role or rng.choice([r.value for r in TensorRole])),
        rng.randrange(1 << 40) if step is None else step, rng.randrange(1 << 16),
        rng.choice([ChecksumKind.CRC32, ChecksumKind.XXH3_64]))


def _flip_bits(rng: random.Random, data: bytes, lo: int = 0, hi: int | None = None) -> bytes:
    hi = len(data) if hi is None else hi
    if hi <= lo:
        return data
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
        i = rng.randrange(lo, hi)
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _mutate_bytes(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    """One byte-level mutation of ``data``; returns (its name, the result)."""
    op = rng.choice(["flip", "flip", "truncate", "extend", "splice", "delete", "insert", "zero", "random"])
    n = len(data)
    if op == "flip" and n:
        return op, _flip_bits(rng, data)
    if op == "truncate" and n:
        return op, data[:rng.randrange(n)]
    if op == "extend":
        return op, data + rng.randbytes(rng.choice([1, 2, 7, 100, rng.randint(1, 4000)]))
    if op == "splice" and n:
        i, j = sorted((rng.randrange(n + 1), rng.randrange(n + 1)))
        return op, data[:i] + rng.randbytes(j - i) + data[j:]
    if op == "delete" and n:
        i = rng.randrange(n)
        return op, data[:i] + data[i + rng.randint(1, 16):]
    if op == "insert":
        i = rng.randrange(n + 1)
        return op, data[:i] + rng.randbytes(rng.randint(1, 16)) + data[i:]
    if op == "zero" and n:
        i = rng.randrange(n)
        return op, data[:i] + bytes(min(n - i, rng.randint(1, 64))) + data[i + rng.randint(1, 64):]
    return "random", rng.randbytes(rng.choice([0, 1, 2, 5, 40, rng.randint(0, 2000)]))


def mutate_header(rng: random.Random, header: Any) -> tuple[str, bytes]:
    """A serialized FrameHeader with one or more fields changed on the protobuf message (values the typed
    header could not even hold: unknown enum values, 2**64-1, huge shapes, junk strings), or the serialized
    bytes mutated. Returns (what changed, bytes)."""
    from layeredge_dist.wire.header import header_to_proto

    msg = header_to_proto(header)
    names = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        field = rng.choice(["edge", "role", "step", "micro_batch", "codec", "shape", "dtype", "payload_length",
                            "checksum_kind", "checksum", "bytes"])
        names.append(field)
        if field == "edge":
            msg.edge = rng.choice(["", "s0->s0", "s1->s0", "s01->s1", "s0-s1", "x", "s0->s1 ", "s7->s8",
                                   "s4294967296->s1", "s1->s2" * 20, "s\u0661->s2", "\x00"])
        elif field == "role":
            msg.role = rng.choice([0, 1, 2, 3, 4, 99, (1 << 31) - 1, -1])
        elif field == "step":
            msg.step = rng.choice([0, 1, (1 << 64) - 1, rng.randrange(1 << 64)])
        elif field == "micro_batch":
            msg.micro_batch = rng.choice([0, (1 << 32) - 1, rng.randrange(1 << 32)])
        elif field == "codec":
            msg.codec = random_codec_spec(rng)
        elif field == "shape":
            del msg.shape[:]
            msg.shape.extend(rng.choice([
                [], [0], [1 << 63], [(1 << 64) - 1], [1 << 14, 1 << 14, 2], [1] * 17, [1] * 16,
                [rng.randrange(1 << 20) for _ in range(rng.randint(1, 4))],
                [d + rng.choice([-1, 1]) for d in header.shape if d > 0] or [3]]))
        elif field == "dtype":
            msg.dtype = rng.choice(["", "float32", "float16", "bfloat16", "int64", "int8", "bool", "float64",
                                    "complex64", "Float32", "float32\x00", "uint16"])
        elif field == "payload_length":
            msg.payload_length = rng.choice([0, header.payload_length + 1, max(0, header.payload_length - 1),
                                             1 << 30, (1 << 30) + 1, (1 << 64) - 1, rng.randrange(1 << 64)])
        elif field == "checksum_kind":
            msg.checksum_kind = rng.choice([0, 1, 2, 3, 77])
        elif field == "checksum":
            msg.checksum = rng.choice([0, (1 << 64) - 1, header.checksum ^ (1 << rng.randrange(64))])
    data = msg.SerializeToString()
    if "bytes" in names:
        op, data = _mutate_bytes(rng, data)
        names.append(op)
    return "+".join(names), data


# ---- gRPC Frames stream: messages and oracle ------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(body)) + body


def _messages_of(header_bytes: bytes, payload: bytes, chunk: int) -> list[bytes]:
    out = [_field(0x0A, header_bytes) + (_field(0x12, payload[:chunk]) if payload else b"")]
    for off in range(chunk, len(payload), chunk):
        out.append(_field(0x12, payload[off:off + chunk]))
    return out


def fuzz_grpc_messages(rng: random.Random) -> tuple[str, list[bytes]]:
    """The messages of one fuzz case for the Frames stream: one to three frames (valid or not) with one
    mutation somewhere. Returns (a description, messages)."""
    from layeredge_dist.wire import header_to_bytes
    from layeredge_dist.wire import envelope

    kind = rng.choice(["header", "header", "payload", "payload_fixed", "message_bytes", "structure", "random",
                       "valid", "payload_length"])
    frames = [valid_frame(rng) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
    target = rng.randrange(len(frames))
    msgs: list[bytes] = []
    desc = kind
    for i, f in enumerate(frames):
        hb = header_to_bytes(f.header)
        payload = bytes(f.payload_bytes())
        chunk = rng.choice([1, 7, 64, 1000, 1 << 20])
        if i == target:
            if kind == "header":
                what, hb = mutate_header(rng, f.header)
                desc = f"header:{what}"
            elif kind == "payload" and payload:
                payload = _flip_bits(rng, payload)
            elif kind == "payload_fixed":  # corrupt payload, matching checksum: transport-valid, decode may fail
                payload = _flip_bits(rng, payload) if payload else payload
                from layeredge_dist.wire import checksum as wc

                h = dataclasses.replace(f.header, checksum=wc.compute(f.header.checksum_kind, payload))
                hb = header_to_bytes(h)
            elif kind == "payload_length":
                cut = rng.choice([-1, 1, 5, -5])
                payload = payload[:cut] if cut < 0 else payload + rng.randbytes(cut)
        part = _messages_of(hb, payload, chunk)
        if i == target and kind == "message_bytes":
            j = rng.randrange(len(part))
            op, part[j] = _mutate_bytes(rng, part[j])
            desc = f"message_bytes:{op}"
        msgs += part
    if kind == "structure":
        op = rng.choice(["drop", "dup", "swap", "ack", "empty", "header_only", "split"])
        desc = f"structure:{op}"
        j = rng.randrange(len(msgs))
        if op == "drop" and len(msgs) > 1:
            del msgs[j]
        elif op == "dup":
            msgs.insert(j, msgs[j])
        elif op == "swap" and len(msgs) > 1:
            k = rng.randrange(len(msgs))
            msgs[j], msgs[k] = msgs[k], msgs[j]
        elif op == "ack":
            msgs.insert(j, envelope.ack_message(rng.randrange(5)))
        elif op == "empty":
            msgs.insert(j, b"")
        elif op == "header_only":
            msgs.insert(j, envelope.header_message(frames[0].header))
        elif op == "split":  # header and first chunk as separate messages: still valid
            f = frames[0]
            msgs = [envelope.header_message(f.header)] + [envelope.chunk_message(bytes(f.payload_bytes()))] \
                + msgs[1:] if f.nbytes else msgs
    elif kind == "random":
        msgs = [rng.randbytes(rng.choice([0, 1, 2, 3, 10, rng.randint(0, 3000)])) for _ in range(rng.randint(1, 3))]
    return desc, msgs


@dataclasses.dataclass
class Expect:
    """What a receiver must do with a fuzz case: accept ``frames`` frames, then either end cleanly
    (``field`` None, ``closed`` False), reject with a FrameError on ``field``, or (TCP only) see the connection
    close inside a frame (``closed``: a stream error, not a rejection)."""

    frames: int
    field: str | None = None
    closed: bool = False
    delivered: list[tuple[str, str, int]] = dataclasses.field(default_factory=list)  # (edge, role, step)


def grpc_oracle(messages: list[bytes], limits: Any) -> Expect:
    """What the Frames handler must answer for ``messages`` (sent, then half-closed)."""
    from layeredge_dist.wire import FrameError, envelope
    from layeredge_dist.wire import checksum as wc
    from layeredge_dist.wire.header import header_from_bytes

    exp = Expect(0)
    cur: Any = None
    got = bytearray()
    try:
        for raw in messages:
            msg = envelope.parse_message(raw)
            if msg.ack is not None:
                raise FrameError("message", "ack from a sender")
            if msg.header is not None:
                if cur is not None:
                    raise FrameError("header", "new header inside a frame")
                cur = header_from_bytes(msg.header, limits)
                got = bytearray()
            elif cur is None:
                raise FrameError("message", "chunk before a header")
            if msg.chunk is not None:
                if len(got) + msg.chunk.nbytes > cur.payload_length:
                    raise FrameError("payload_length", "chunk overruns the frame")
                got += msg.chunk
            if len(got) == cur.payload_length:
                if wc.compute(cur.checksum_kind, bytes(got)) != cur.checksum:
                    raise FrameError("checksum", "mismatch")
                exp.frames += 1
                exp.delivered.append((str(cur.edge), cur.role.value, cur.step))
                cur = None
        if cur is not None:
            raise FrameError("payload_length", "truncated frame")
    except FrameError as e:
        exp.field = e.field
    return exp


# ---- TCP data path: bytes and oracle ------------------------------------------------------------------------


def fuzz_tcp_bytes(rng: random.Random) -> tuple[str, bytes]:
    """The bytes (after the hello) of one fuzz case for the TCP data path."""
    from layeredge_dist.wire import header_to_bytes

    kind = rng.choice(["header", "header", "payload", "bytes", "length_prefix", "random", "valid", "truncate"])
    frames = [valid_frame(rng) for _ in range(rng.choice([1, 1, 2, 3]))]
    target = rng.randrange(len(frames))
    out = b""
    desc = kind
    for i, f in enumerate(frames):
        hb = header_to_bytes(f.header)
        payload = bytes(f.payload_bytes())
        prefix = struct.pack("<I", len(hb))
        if i == target:
            if kind == "header":
                what, hb = mutate_header(rng, f.header)
                prefix = struct.pack("<I", len(hb))
                desc = f"header:{what}"
            elif kind == "payload" and payload:
                payload = _flip_bits(rng, payload)
            elif kind == "length_prefix":
                prefix = struct.pack("<I", rng.choice([0, 1, len(hb) - 1, len(hb) + 1, 65536, 65537,
                                                       (1 << 32) - 1, rng.randrange(1 << 32)]) & 0xFFFFFFFF)
        record = prefix + hb + payload
        if i == target and kind == "bytes":
            op, record = _mutate_bytes(rng, record)
            desc = f"bytes:{op}"
        out += record
    if kind == "truncate" and out:
        out = out[:rng.randrange(len(out))]
    elif kind == "random":
        out = rng.randbytes(rng.choice([0, 1, 3, 4, 9, rng.randint(0, 3000)]))
    return desc, out


def tcp_oracle(data: bytes, limits: Any) -> Expect:
    """What the data path must answer for ``data`` (sent after a valid hello, then half-closed)."""
    from layeredge_dist.wire import FrameError, datapath
    from layeredge_dist.wire import checksum as wc
    from layeredge_dist.wire.header import header_from_bytes

    exp = Expect(0)
    pos = 0
    try:
        while pos < len(data):
            if len(data) - pos < 4:
                exp.closed = True
                return exp
            n = datapath.header_length(data[pos:pos + 4])
            pos += 4
            if len(data) - pos < n:
                exp.closed = True
                return exp
            h = header_from_bytes(data[pos:pos + n], limits)
            pos += n
            if len(data) - pos < h.payload_length:
                exp.closed = True
                return exp
            if wc.compute(h.checksum_kind, data[pos:pos + h.payload_length]) != h.checksum:
                raise FrameError("checksum", "mismatch")
            pos += h.payload_length
            exp.frames += 1
            exp.delivered.append((str(h.edge), h.role.value, h.step))
    except FrameError as e:
        exp.field = e.field
    return exp


# ---- clients --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Answer:
    """What a server answered to one fuzz case: acked frames and the final status (code name, details)."""

    acked: int
    code: str
    details: str
    seconds: float


def grpc_frames_call(channel: Any, messages: list[bytes], token: str | None, timeout_s: float) -> Answer:
    """Send ``messages`` on one Frames call (raw bytes, half-close at the end) and collect the answer."""
    import grpc

    from layeredge_dist.wire import envelope, service

    call = channel.stream_stream(service.method_path(service.FRAMES_METHOD), request_serializer=None,
                                 response_deserializer=None)
    md = (("authorization", f"Bearer {token}"),) if token else ()
    acked = 0
    t0 = time.monotonic()
    try:
        for raw in call(iter(messages), timeout=timeout_s, metadata=md):
            msg = envelope.parse_message(raw)
            acked = envelope.parse_ack_body(msg.ack)  # type: ignore[arg-type]
        return Answer(acked, "OK", "", time.monotonic() - t0)
    except grpc.RpcError as e:
        return Answer(acked, e.code().name, e.details() or "", time.monotonic() - t0)  # type: ignore[attr-defined]


def open_data_connection(channel: Any, port_host: str, token: str | None, timeout_s: float,
                         edge: str = "s0->s1", role: str = "activation") -> Any:
    """A socket to the data path with a fresh ticket (OpenDataPath over ``channel``) and the hello sent."""
    import socket

    from layeredge_dist.types import EdgeId, TensorRole
    from layeredge_dist.wire import datapath, service

    rpc = channel.unary_unary(service.method_path(service.OPEN_DATA_PATH_METHOD))
    md = (("authorization", f"Bearer {token}"),) if token else ()
    req = service.data_path_request_to_bytes(service.DataPathRequest(EdgeId.parse(edge), TensorRole(role)))
    grant = service.data_path_grant_from_bytes(rpc(req, timeout=timeout_s, metadata=md))
    s = socket.create_connection((port_host, grant.port), timeout=timeout_s)
    s.sendall(datapath.hello(grant.ticket))
    return s


def tcp_exchange(sock: Any, data: bytes, timeout_s: float) -> Answer:
    """Send ``data``, half-close, read records until the server closes: (last ack, error code or OK/CLOSED)."""
    import socket

    from layeredge_dist.wire import datapath

    t0 = time.monotonic()
    sock.settimeout(timeout_s)
    acked = 0
    buf = b""
    try:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server closed early (a rejected hello or header); its records are still to be read
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
        pos = 0

        def take(n: int) -> bytes:
            nonlocal pos
            if pos + n > len(buf):
                raise EOFError
            out = buf[pos:pos + n]
            pos += n
            return out

        while pos < len(buf):
            try:
                rec = datapath.read_record(take)
            except EOFError:
                return Answer(acked, "PARTIAL_RECORD", buf[pos:pos + 40].hex(), time.monotonic() - t0)
            if rec.frames is not None:
                acked = rec.frames
            else:
                return Answer(acked, rec.code or "?", rec.message or "", time.monotonic() - t0)
        return Answer(acked, "CLOSED", "", time.monotonic() - t0)
    except socket.timeout:
        return Answer(acked, "CLIENT_TIMEOUT", "", time.monotonic() - t0)
    finally:
        sock.close()


def rate_limited(items: list[Any], fn: Callable[[Any], Any], workers: int) -> Iterator[tuple[Any, Any]]:
    """``fn`` over ``items`` with ``workers`` threads; yields (item, result) in input order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        yield from zip(items, pool.map(fn, items))


if __name__ == "__main__":
    if sys.argv[1] == "server":
        _serve(json.loads(sys.argv[2]))
