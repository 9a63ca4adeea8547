"""Round-trip time and bandwidth between this process and a StageServer (Ping and Sink methods)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from layeredge_dist.wire import envelope, service

from .config import TransportConfig
from .security import auth_metadata
from .sender import make_channel, translate, wait_ready


@dataclass(frozen=True)
class ProbeResult:
    """``rtt_s``: median Ping round trip (s); ``bandwidth_Bps``: bytes/s of a Sink stream of ``probe_bytes``."""

    rtt_s: float
    bandwidth_Bps: float
    rtt_samples: tuple[float, ...]
    probe_bytes: int


def probe(address: str, config: TransportConfig = TransportConfig(), *, pings: int = 10, ping_bytes: int = 64,
          probe_bytes: int = 32 << 20, timeout_s: float = 30.0) -> ProbeResult:
    """Measure RTT (``pings`` Ping calls of ``ping_bytes``) and bandwidth (``probe_bytes`` streamed to Sink in
    ``config.chunk_bytes`` chunks) to the server at ``address``.

    Every call has a deadline (``config.call_timeout_s`` per ping, ``timeout_s`` for the stream). Raises
    PeerUnavailable / Unauthenticated / DeadlineExceeded (TransportError subclasses) on failure.
    """
    channel = make_channel(address, config)
    what = f"probe {address}"
    try:
        wait_ready(channel, address, config, config.connect_timeout_s)
        md = auth_metadata(config)
        ping = channel.unary_unary(service.method_path(service.PING_METHOD), request_serializer=None,
                                   response_deserializer=None)
        req = service.ping_request_to_bytes(service.PingRequest(bytes(ping_bytes)))
        samples = []
        try:
            ping(req, timeout=config.call_timeout_s, metadata=md)  # warm-up
            for _ in range(pings):
                t0 = time.perf_counter()
                service.ping_reply_from_bytes(ping(req, timeout=config.call_timeout_s, metadata=md))
                samples.append(time.perf_counter() - t0)
            sink = channel.stream_unary(service.method_path(service.SINK_METHOD), request_serializer=None,
                                        response_deserializer=None)
            block = memoryview(bytes(min(config.chunk_bytes, max(probe_bytes, 1))))

            def chunks() -> Iterator[bytes]:
                left = probe_bytes
                while left > 0:
                    n = min(left, block.nbytes)
                    yield envelope.chunk_message(block[:n])
                    left -= n

            t0 = time.perf_counter()
            reply = service.sink_reply_from_bytes(sink(chunks(), timeout=timeout_s, metadata=md))
            elapsed = time.perf_counter() - t0
        except grpc.RpcError as e:
            raise translate(e, what) from None
        bw = reply.bytes_received / elapsed if elapsed > 0 else float("inf")
        return ProbeResult(statistics.median(samples) if samples else 0.0, bw, tuple(samples), reply.bytes_received)
    finally:
        channel.close()
