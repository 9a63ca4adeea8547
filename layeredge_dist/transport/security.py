"""Security for the gRPC transport: address policy, TLS credentials and the shared-token interceptor."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable

import grpc

from .accounting import Counters
from .config import TLSConfig, TransportConfig

#: Calls that never need a token: load balancers and orchestrators probe health without one.
AUTH_EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


def host_of(address: str) -> str:
    """The host part of ``host:port`` / ``[v6]:port`` (brackets removed)."""
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback(address: str) -> bool:
    """Whether ``address`` (``host:port``) is a loopback address; unresolved host names other than
    ``localhost`` count as non-loopback."""
    host = host_of(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_server_policy(address: str, config: TransportConfig) -> None:
    """Refuse (ValueError) to serve a non-loopback address without client authentication (token or mutual TLS),
    unless ``config.allow_unauthenticated``."""
    if is_loopback(address) or config.allow_unauthenticated:
        return
    mtls = config.tls is not None and config.tls.require_client_auth
    if config.token is None and not mtls:
        raise ValueError(f"refusing to serve {address} without authentication: it is not a loopback address; set "
                         "TransportConfig.token (and TLS), or tls.require_client_auth, or allow_unauthenticated=True")
    if config.tls is None or config.tls.cert_chain is None:
        raise ValueError(f"refusing to serve {address} with a bearer token over plain text; configure "
                         "TransportConfig.tls (or allow_unauthenticated=True to accept the risk)")


def check_client_policy(address: str, config: TransportConfig) -> None:
    """Refuse (ValueError) to send a bearer token in clear text to a non-loopback address unless
    ``config.allow_unauthenticated``."""
    if config.token is not None and config.tls is None and not is_loopback(address) \
            and not config.allow_unauthenticated:
        raise ValueError(f"refusing to send the bearer token in clear text to {address}; configure "
                         "TransportConfig.tls (or allow_unauthenticated=True)")


def server_credentials(tls: TLSConfig) -> grpc.ServerCredentials:
    """TLS server credentials; mutual TLS when ``tls.require_client_auth``. Raises ValueError without a cert."""
    if tls.cert_chain is None or tls.private_key is None:
        raise ValueError("server TLS needs cert_chain and private_key")
    return grpc.ssl_server_credentials([(tls.private_key, tls.cert_chain)], root_certificates=tls.root_certs,
                                       require_client_auth=tls.require_client_auth)


def channel_credentials(tls: TLSConfig) -> grpc.ChannelCredentials:
    """TLS channel credentials (with a client certificate when ``tls.cert_chain`` is set)."""
    return grpc.ssl_channel_credentials(root_certificates=tls.root_certs, private_key=tls.private_key,
                                        certificate_chain=tls.cert_chain)


def auth_metadata(config: TransportConfig) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying the bearer token (empty without one)."""
    return (("authorization", f"Bearer {config.token}"),) if config.token is not None else ()


def _abort_like(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    def abort(request: object, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    make: Callable[..., grpc.RpcMethodHandler]
    if handler.request_streaming and handler.response_streaming:
        make = grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        make = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        make = grpc.unary_stream_rpc_method_handler
    else:
        make = grpc.unary_unary_rpc_method_handler
    return make(abort, request_deserializer=None, response_serializer=None)


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Rejects calls without ``authorization: Bearer <token>`` (constant-time compare) with UNAUTHENTICATED,
    counting each in ``counters['unauthenticated']``. Health checks are exempt."""

    def __init__(self, token: str, counters: Counters, on_reject: Callable[[], None] | None = None) -> None:
        self._expected = f"Bearer {token}".encode()
        self._counters = counters
        self._on_reject = on_reject

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method.startswith(AUTH_EXEMPT_PREFIXES):
            return continuation(handler_call_details)
        got = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization" and isinstance(value, str):
                got = value
        if hmac.compare_digest(got.encode(), self._expected):
            return continuation(handler_call_details)
        self._counters.add("unauthenticated")
        if self._on_reject is not None:
            self._on_reject()
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        reason = "missing authorization metadata" if not got else "wrong bearer token"
        return _abort_like(handler, f"{method}: {reason}")
