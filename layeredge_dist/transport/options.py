"""gRPC channel and server options derived from a TransportConfig (keepalive settings that agree, no
SO_REUSEPORT, raised message limits)."""

from __future__ import annotations

from .config import TransportConfig

Options = list[tuple[str, int | str]]


def server_options(config: TransportConfig) -> Options:
    """Server options: accepts the clients' keepalive pings (min interval <= client interval)."""
    return [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", config.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", config.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", config.server_min_ping_interval_ms),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def channel_options(config: TransportConfig) -> Options:
    """Client options: keepalive pings every ``keepalive_time_ms`` even when idle, an own TCP connection per
    channel, no transparent retries (a frame is never sent twice behind our back)."""
    opts: Options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", config.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", config.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.enable_retries", 0),
    ]
    if config.tls is not None and config.tls.server_name_override:
        opts.append(("grpc.ssl_target_name_override", config.tls.server_name_override))
    return opts
