"""Frozen configuration of the gRPC transport: TLS material, security policy, chunking, windows, keepalive."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from layeredge_dist.wire import Limits

MiB = 1 << 20


@dataclass(frozen=True)
class TLSConfig:
    """PEM-encoded TLS material.

    Server side: ``cert_chain`` and ``private_key`` are required; with ``require_client_auth`` the server also
    demands a client certificate signed by ``root_certs`` (mutual TLS). Client side: ``root_certs`` verifies the
    server (None: the system roots); ``cert_chain`` + ``private_key`` are the client certificate for mutual TLS.
    ``server_name_override`` makes a client accept a server certificate issued for that name (tests only).
    """

    root_certs: bytes | None = None
    cert_chain: bytes | None = None
    private_key: bytes | None = field(default=None, repr=False)
    require_client_auth: bool = False
    server_name_override: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_chain is None) != (self.private_key is None):
            raise ValueError("TLSConfig: cert_chain and private_key must be given together")
        if self.require_client_auth and self.root_certs is None:
            raise ValueError("TLSConfig: require_client_auth needs root_certs to verify client certificates")

    @classmethod
    def from_files(cls, root_certs: str | Path | None = None, cert_chain: str | Path | None = None,
                   private_key: str | Path | None = None, require_client_auth: bool = False,
                   server_name_override: str | None = None) -> TLSConfig:
        """Read the PEM files that are given; raises OSError when one cannot be read."""

        def read(p: str | Path | None) -> bytes | None:
            return None if p is None else Path(p).read_bytes()

        return cls(read(root_certs), read(cert_chain), read(private_key), require_client_auth, server_name_override)


@dataclass(frozen=True)
class TransportConfig:
    """Everything the gRPC transport needs besides addresses. Units in the field names (bytes, s, ms).

    Security: a server that binds a non-loopback address refuses to start unless it authenticates clients
    (``token`` or TLS with ``require_client_auth``) or ``allow_unauthenticated`` is set explicitly; a client
    refuses to send a token in clear text to a non-loopback address unless ``allow_unauthenticated`` is set.
    """

    #: Shared secret; clients send ``authorization: Bearer <token>``, servers compare in constant time.
    token: str | None = field(default=None, repr=False)
    tls: TLSConfig | None = None
    allow_unauthenticated: bool = False
    #: Payload bytes per stream message (the first rides with the header).
    chunk_bytes: int = 1 * MiB
    #: Most unacknowledged frames / payload bytes per stream; send() blocks beyond (one frame always fits).
    window_frames: int = 16
    window_bytes: int = 128 * MiB
    #: Most payload bytes a receiver queues per (edge, role) before it stops reading the stream.
    inbox_bytes: int = 64 * MiB
    #: Largest gRPC message either side accepts or sends.
    max_message_bytes: int = 64 * MiB
    #: Deadline of a long-lived Frames stream; the sender reopens streams before they expire.
    stream_deadline_s: float = 3600.0
    #: Deadline of unary calls (Ping) and of connecting.
    call_timeout_s: float = 10.0
    connect_timeout_s: float = 10.0
    #: Client keepalive ping interval / ack timeout; the server accepts pings every ``server_min_ping_interval_ms``.
    keepalive_time_ms: int = 20_000
    keepalive_timeout_ms: int = 10_000
    server_min_ping_interval_ms: int = 10_000
    #: Server threads = concurrent calls (each Frames stream holds one); more calls get RESOURCE_EXHAUSTED.
    max_concurrent_calls: int = 32
    #: Frame header bounds enforced by receivers.
    limits: Limits = Limits()
    #: Payload buffers a receiver keeps for reuse after ``release()`` (avoids page faults on big frames).
    buffer_pool_bytes: int = 256 * MiB
    #: Tune glibc malloc (process-wide!) so large gRPC buffers are reused instead of mmap'ed and faulted in per
    #: message; worth ~30-60 % of gRPC streaming throughput. Off by default because it changes the whole
    #: process; stage processes and benchmarks should turn it on.
    tune_malloc: bool = False
    #: Fast path: servers also offer, and senders use, a raw TCP data connection granted by the authenticated
    #: OpenDataPath call (plain TCP: not with ``tls``; for loopback and trusted networks).
    tcp_data_path: bool = False

    def __post_init__(self) -> None:
        positive = ("chunk_bytes", "window_frames", "window_bytes", "inbox_bytes", "max_message_bytes",
                    "stream_deadline_s", "call_timeout_s", "connect_timeout_s", "keepalive_time_ms",
                    "keepalive_timeout_ms", "server_min_ping_interval_ms", "max_concurrent_calls")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"TransportConfig.{name} must be > 0, got {value!r}")
        if self.max_message_bytes < self.chunk_bytes + 64 * 1024:
            raise ValueError(f"TransportConfig.max_message_bytes ({self.max_message_bytes}) must exceed "
                             f"chunk_bytes ({self.chunk_bytes}) by at least 64 KiB for the header")
        if self.server_min_ping_interval_ms > self.keepalive_time_ms:
            raise ValueError(f"TransportConfig: server_min_ping_interval_ms ({self.server_min_ping_interval_ms}) "
                             f"must be <= keepalive_time_ms ({self.keepalive_time_ms}) or servers would reject "
                             "our keepalive pings (GOAWAY too_many_pings)")
        if self.token is not None and not self.token:
            raise ValueError("TransportConfig.token must be non-empty when given")
        if self.tcp_data_path and self.tls is not None:
            raise ValueError("TransportConfig: tcp_data_path carries no TLS; it cannot be combined with tls")
