"""Shared helpers of the transport tests: child processes that always get cleaned up, frames, certificates."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from layeredge_dist.codecs.base import Encoded
from layeredge_dist.types import EdgeId, TensorRole
from layeredge_dist.wire import Frame, frame_from_encoded

PROC = Path(__file__).with_name("transport_proc.py")
REPO = Path(__file__).resolve().parents[2]
EDGE = EdgeId.parse("s0->s1")
ROLE = TensorRole.ACTIVATION


class Child:
    """A child process speaking JSON lines; ``kill()`` is idempotent and always called by the fixture."""

    def __init__(self, argv: list[str], wait: bool = True) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.proc = subprocess.Popen([sys.executable, str(PROC), *argv], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
        self.first: dict[str, object] = self.read() if wait else {}

    def read(self) -> dict[str, object]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"child exited with {self.proc.poll()}")
        return json.loads(line)

    def cmd(self, op: str, edge: str | None = None, role: str | None = None,
            timeout_s: float | None = None) -> dict[str, object]:
        """Send one command (fields that are None are left out) and return the child's answer."""
        assert self.proc.stdin is not None
        fields = {"op": op, "edge": edge, "role": role, "timeout_s": timeout_s}
        self.proc.stdin.write(json.dumps({k: v for k, v in fields.items() if v is not None}) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


class ServerProc(Child):
    """A StageServer child; ``wait=False`` returns at once (call :meth:`ready` later) so several start in
    parallel."""

    def __init__(self, config: dict[str, object], wait: bool = True) -> None:
        super().__init__(["server", json.dumps(config)], wait=False)
        self.port = 0
        self.data_port = 0
        self.address = ""
        if wait:
            self.ready()

    def ready(self) -> ServerProc:
        if not self.port:
            self.first = self.read()
            self.port = int(self.first["port"])  # type: ignore[arg-type]
            self.data_port = int(self.first["data_port"])  # type: ignore[arg-type]
            self.address = f"127.0.0.1:{self.port}"
        return self


def start_servers(configs: dict[str, dict[str, object]]) -> dict[str, ServerProc]:
    """Start one server child per config, in parallel; kill them all if any fails to come up."""
    procs = {name: ServerProc(cfg, wait=False) for name, cfg in configs.items()}
    try:
        for p in procs.values():
            p.ready()
    except BaseException:
        for p in procs.values():
            p.kill()
        raise
    return procs


def write_messages(path: Path, messages: list[bytes]) -> str:
    """Length-prefixed messages for ``transport_proc.py partial-client``."""
    path.write_bytes(b"".join(len(m).to_bytes(8, "little") + m for m in messages))
    return str(path)


def make_frame(n: int, step: int = 0, seed: int = 0, edge: EdgeId = EDGE, role: TensorRole = ROLE) -> Frame:
    g = torch.Generator().manual_seed(seed)
    payload = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g)
    return frame_from_encoded(Encoded("fp16", (n // 2,), "float32", payload), edge, role, step, 0)


def make_certs(root: Path) -> dict[str, str]:
    """A CA, a server cert for 127.0.0.1/localhost and a client cert, as PEM files under ``root``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = key()
    ca = (x509.CertificateBuilder().subject_name(name("layeredge test CA")).issuer_name(name("layeredge test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> tuple[bytes, bytes]:
        k = key()
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject).public_key(k.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        return (cert.public_bytes(serialization.Encoding.PEM),
                k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))

    server_cert, server_key = leaf("localhost", ExtendedKeyUsageOID.SERVER_AUTH,
                                   [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client_cert, client_key = leaf("stage-client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    files = {
        "ca": ca.public_bytes(serialization.Encoding.PEM), "server_cert": server_cert, "server_key": server_key,
        "client_cert": client_cert, "client_key": client_key,
    }
    out = {}
    for k, v in files.items():
        p = root / f"{k}.pem"
        p.write_bytes(v)
        out[k] = str(p)
    return out
