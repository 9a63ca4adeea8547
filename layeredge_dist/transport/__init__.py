"""Moving frames between stage processes: the EdgeChannel contract and its implementations.

- :class:`EdgeSender` / :class:`EdgeReceiver` / :class:`EdgeChannel`: the contract (send with a window, flush,
  receive, timeouts, close).
- :class:`InProcessChannel`: both ends in one process, for unit tests.
- :class:`StageServer` + :class:`GrpcEdgeSender`: gRPC, one long-lived stream per (edge, role), chunked
  payloads without protobuf copies, credit-based window, TLS / mutual TLS, shared-token auth, health and
  reflection services, validation before decoding (INVALID_ARGUMENT on a bad frame).
- :class:`TcpEdgeSender` (``TransportConfig.tcp_data_path``): the fast path, a raw TCP connection granted by an
  authenticated gRPC call, for loopback and trusted networks; :func:`open_sender` picks per config.
- :func:`probe`: RTT and bandwidth to a server.
- Accounting: hooks receive a :class:`TransferRecord` per frame; :class:`Counters` are plain ints.

Imports wire, codecs (types only) and types; never ray or models.
"""

from __future__ import annotations

from .accounting import AccountingHook, Counters, TransferRecord
from .channel import EdgeChannel, EdgeReceiver, EdgeSender
from .config import TLSConfig, TransportConfig
from .datapath_sender import TcpEdgeSender, open_sender
from .errors import (
    ChannelClosed,
    DeadlineExceeded,
    FrameRejected,
    PeerUnavailable,
    TransportError,
    Unauthenticated,
)
from .inprocess import InProcessChannel
from .probe import ProbeResult, probe
from .sender import GrpcEdgeSender
from .server import GrpcEdgeReceiver, StageServer

__all__ = [
    "AccountingHook", "ChannelClosed", "Counters", "DeadlineExceeded", "EdgeChannel", "EdgeReceiver", "EdgeSender",
    "FrameRejected", "GrpcEdgeReceiver", "GrpcEdgeSender", "InProcessChannel", "PeerUnavailable", "ProbeResult",
    "StageServer", "TLSConfig", "TcpEdgeSender", "TransferRecord", "TransportConfig", "TransportError",
    "Unauthenticated", "open_sender", "probe",
]
