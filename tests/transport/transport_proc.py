"""Child process for the transport tests: a StageServer driven over stdin/stdout, or a misbehaving client.

Server mode: ``python transport_proc.py server '<json config>'`` prints ``{"port": N}`` and then answers one JSON
command per stdin line with one JSON line. Client mode: ``python transport_proc.py partial-client ADDRESS METHOD FILE``
sends the given messages (a header and half a payload), prints ``{"sent": true}`` and waits to be killed.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from layeredge_dist.transport import TransportConfig

def _config(spec: dict[str, object]) -> TransportConfig:
    from layeredge_dist.transport import TLSConfig, TransportConfig
    from layeredge_dist.wire import Limits

    tls = spec.pop("tls", None)
    limits = spec.pop("limits", None)
    kwargs: dict[str, object] = dict(spec)
    if isinstance(tls, dict):
        kwargs["tls"] = TLSConfig.from_files(
            root_certs=tls.get("root_certs"), cert_chain=tls.get("cert_chain"), private_key=tls.get("private_key"),
            require_client_auth=bool(tls.get("require_client_auth", False)))
    if isinstance(limits, dict):
        kwargs["limits"] = Limits(**limits)
    return TransportConfig(**kwargs)  # type: ignore[arg-type]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def serve(spec: dict[str, object]) -> None:
    from layeredge_dist.transport import ChannelClosed, DeadlineExceeded, StageServer
    from layeredge_dist.types import EdgeId, TensorRole

    server = StageServer("127.0.0.1:0", _config(spec))
    port = server.start()
    print(json.dumps({"port": port, "data_port": server.data_path_port}), flush=True)
    drains: list[threading.Event] = []
    drained: dict[str, dict[str, int]] = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        out: dict[str, object] = {}
        if op == "counters":
            out = server.counters.snapshot()
        elif op == "receive":
            rx = server.receiver(EdgeId.parse(cmd["edge"]), TensorRole(cmd["role"]))
            try:
                f = rx.receive(timeout_s=float(cmd.get("timeout_s", 5.0)))
                out = {"step": f.step, "micro_batch": f.micro_batch, "codec": f.codec, "shape": list(f.header.shape),
                       "nbytes": f.nbytes, "crc": zlib.crc32(f.payload_bytes())}
                rx.release(f)
            except DeadlineExceeded as e:
                out = {"error": "DeadlineExceeded", "message": str(e)}
        elif op == "queued":
            rx = server.receiver(EdgeId.parse(cmd["edge"]), TensorRole(cmd["role"]))
            out = {"bytes": rx.queued_bytes}
        elif op == "drain":
            stop = threading.Event()
            drains.append(stop)
            rx = server.receiver(EdgeId.parse(cmd["edge"]), TensorRole(cmd["role"]))
            counts = drained.setdefault(cmd["edge"], {"frames": 0, "bytes": 0})

            def drain(stop: threading.Event = stop, rx: object = rx, counts: dict[str, int] = counts) -> None:
                while not stop.is_set():
                    try:
                        f = rx.receive(timeout_s=0.1)  # type: ignore[attr-defined]
                    except DeadlineExceeded:
                        continue
                    except ChannelClosed:
                        return
                    counts["frames"] += 1
                    counts["bytes"] += f.nbytes
                    rx.release(f)  # type: ignore[attr-defined]

            threading.Thread(target=drain, daemon=True).start()
        elif op == "drained":
            out = dict(drained.get(cmd["edge"], {"frames": 0, "bytes": 0}))
        elif op == "reset_peak":
            Path("/proc/self/clear_refs").write_text("5")
            out = {"rss": _status_kib("VmRSS") * 1024}
        elif op == "peak":
            out = {"peak": _status_kib("VmHWM") * 1024}
        elif op == "stop":
            break
        print(json.dumps(out), flush=True)
    for stop in drains:
        stop.set()
    server.stop(0.5)


def partial_client(address: str, method: str, messages_file: str) -> None:
    """Send the length-prefixed messages in ``messages_file`` on one Frames stream, then hang (no torch import,
    so this child starts fast)."""
    import grpc

    data = Path(messages_file).read_bytes()
    messages = []
    while data:
        n = int.from_bytes(data[:8], "little")
        messages.append(data[8:8 + n])
        data = data[8 + n:]
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 1 << 30)])
    call = channel.stream_stream(method, request_serializer=None, response_deserializer=None)

    def requests():  # type: ignore[no-untyped-def]
        yield from messages
        print(json.dumps({"sent": True}), flush=True)
        time.sleep(3600)

    for _ in call(requests(), timeout=3600):
        pass


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(json.loads(sys.argv[2]))
    elif sys.argv[1] == "partial-client":
        partial_client(sys.argv[2], sys.argv[3], sys.argv[4])
