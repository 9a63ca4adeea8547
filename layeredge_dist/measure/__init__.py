"""Measurement of edges: activation statistics, loss-sensitivity proxies and measured sensitivities of edges,
channel and weight importance, rank correlation.

Pure functions over tensors and in-process models (layer rank 3: imports torch, ``types``, ``config``,
``codecs`` and ``model`` only; no wire, transport, schedule, stage, pipeline, grpc or ray).

- :mod:`.stats`: :func:`activation_stats`, :class:`StatsAccumulator`.
- :mod:`.proxy`: :class:`ProxyAccumulator` (Taylor / relative-error proxies from ``(a, dL/da)``),
  :func:`chain_proxies`, :func:`relative_error`.
- :mod:`.sensitivity`: :func:`edge_sensitivity` (loss / output / gradient change when one edge is compressed).
- :mod:`.channels`: :class:`ChannelAccumulator`, :func:`least_important`.
- :mod:`.weights`: :func:`weight_importance` per tensor and output channel.
- :mod:`.rank`: :func:`spearman`, :func:`kendall_tau`.
"""

from ._codec import roundtrip
from .channels import ChannelAccumulator, ChannelScores, channel_importance, least_important
from .proxy import ProxyAccumulator, ProxyValue, chain_proxies, relative_error, taylor_delta
from .rank import kendall_tau, rankdata, spearman
from .sensitivity import EdgeSensitivity, SensitivityCost, SensitivityTable, edge_sensitivity, output_distance
from .stats import ActivationStats, StatsAccumulator, activation_stats
from .weights import WeightImportance, tensor_importance, weight_importance

__all__ = [
    "ActivationStats", "StatsAccumulator", "activation_stats",
    "ProxyAccumulator", "ProxyValue", "chain_proxies", "relative_error", "taylor_delta", "roundtrip",
    "EdgeSensitivity", "SensitivityCost", "SensitivityTable", "edge_sensitivity", "output_distance",
    "ChannelAccumulator", "ChannelScores", "channel_importance", "least_important",
    "WeightImportance", "tensor_importance", "weight_importance",
    "kendall_tau", "rankdata", "spearman",
]
