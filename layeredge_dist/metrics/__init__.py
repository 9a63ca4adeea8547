"""Prometheus metrics of LayerEdge: one table of families, bounded labels, a private registry per ``Metrics``,
an HTTP exporter per process and file service discovery for Prometheus.

Layer rank 1: imports only the standard library, prometheus_client and ``layeredge_dist.types``.
"""

from __future__ import annotations

from .exporter import Exporter, start_exporter
from .families import BY_KEY, FAMILIES, Family, family
from .file_sd import read_file_sd, write_file_sd
from .labels import ALLOWED_LABELS, MetricLabelError, check_labels, label_value
from .registry import Metrics

__all__ = [
    "ALLOWED_LABELS",
    "BY_KEY",
    "FAMILIES",
    "Exporter",
    "Family",
    "MetricLabelError",
    "Metrics",
    "check_labels",
    "family",
    "label_value",
    "read_file_sd",
    "start_exporter",
    "write_file_sd",
]
