"""The one table of every Prometheus metric family LayerEdge exports.

Every metric name, type, unit, label set and bucket layout is declared here and nowhere else; the registry
(:mod:`layeredge_dist.metrics.registry`) instantiates exactly this table. Conventions:

* names start with ``layeredge_`` and end with their unit in plural base units (``_bytes``, ``_seconds``,
  ``_ratio``, ``_bytes_per_second``, ``_bytes_per_element``, ``_tokens_per_second``); counters additionally end
  in ``_total``. Bits are not a base unit: ``promtool check metrics`` rejects any name containing ``bits``
  ("use base unit bytes"), so bits per element are exported as bytes per element (multiply by 8 in a query);
  dimensionless gauges (scores, a step number, a 0/1 state) carry no unit suffix; the plan gauge follows the
  ``_info`` convention (value 1 for the active codec, 0 for a replaced one);
* labels are only those of :data:`layeredge_dist.metrics.labels.ALLOWED_LABELS`, each bounded (see
  :mod:`layeredge_dist.metrics.labels`); a step number, micro-batch id or any free text is never a label;
* the ``run`` label appears only on run-level families (step, loss, throughput, step time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .labels import DATAFLOW_DIRECTIONS, TRAFFIC_DIRECTIONS

MetricType = Literal["counter", "gauge", "histogram"]

#: Seconds to move one tensor across an edge: 50 us (a small frame on loopback) .. 60 s (a large weight
#: transfer on a slow link); roughly log-spaced, 1-2.5-5 per decade.
TRANSFER_BUCKETS: tuple[float, ...] = (
    50e-6, 100e-6, 250e-6, 500e-6,
    1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
#: Seconds to encode or decode one tensor: 5 us (a tiny fp16 cast) .. 10 s (top-k of a huge tensor on CPU).
CODEC_BUCKETS: tuple[float, ...] = (
    5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
    1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0, 2.5, 5.0, 10.0,
)
#: Seconds of one training or inference step: 1 ms .. 10 min.
STEP_BUCKETS: tuple[float, ...] = (
    1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)


@dataclass(frozen=True)
class Family:
    """One metric family.

    ``key``: the short Python name used by :class:`~layeredge_dist.metrics.Metrics`; ``name``: the exported
    name (for counters including ``_total``); ``unit``: the unit suffix the name ends with ("" when
    dimensionless); ``buckets``: histogram upper bounds in ``unit`` (``+Inf`` is added by the client);
    ``directions``: accepted values of the ``direction`` label, when the family has one.
    """

    key: str
    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...]
    unit: str = ""
    buckets: tuple[float, ...] | None = None
    directions: tuple[str, ...] = ()


_TRAFFIC = ("edge", "direction", "role", "codec")
_T = TRAFFIC_DIRECTIONS
_D = DATAFLOW_DIRECTIONS

#: Every metric family, in exposition order.
FAMILIES: tuple[Family, ...] = (
    # --- edge traffic, per recording process: direction send/recv ---------------------------------------------
    Family("edge_raw_bytes", "layeredge_edge_raw_bytes_total", "counter",
           "Bytes of the original (uncompressed) tensors that crossed the edge.", _TRAFFIC, "bytes",
           directions=_T),
    Family("edge_wire_bytes", "layeredge_edge_wire_bytes_total", "counter",
           "Bytes put on (or read from) the wire for the edge: payload, header and framing.", _TRAFFIC, "bytes",
           directions=_T),
    Family("edge_frames", "layeredge_edge_frames_total", "counter",
           "Frames (one tensor each) that crossed the edge.", _TRAFFIC, directions=_T),
    Family("edge_elements", "layeredge_edge_elements_total", "counter",
           "Tensor elements (before compression) that crossed the edge.", _TRAFFIC, directions=_T),
    Family("edge_transfer_seconds", "layeredge_edge_transfer_seconds", "histogram",
           "Seconds to transfer one frame across the edge (sender: send to ack; receiver: header to last chunk).",
           _TRAFFIC, "seconds", TRANSFER_BUCKETS, _T),
    Family("edge_encode_seconds", "layeredge_edge_encode_seconds", "histogram",
           "Seconds to encode (compress) one tensor for the edge.", _TRAFFIC, "seconds", CODEC_BUCKETS, _T),
    Family("edge_decode_seconds", "layeredge_edge_decode_seconds", "histogram",
           "Seconds to decode (decompress) one tensor received on the edge.", _TRAFFIC, "seconds", CODEC_BUCKETS,
           _T),
    Family("edge_compression_ratio", "layeredge_edge_compression_ratio", "gauge",
           "Raw bytes over wire bytes, cumulative since the process started (>1 means compressed).", _TRAFFIC,
           "ratio", directions=_T),
    Family("edge_wire_bytes_per_element", "layeredge_edge_wire_bytes_per_element", "gauge",
           "Wire bytes per original tensor element, metadata included, cumulative (x8 for bits per element).",
           _TRAFFIC, "bytes_per_element", directions=_T),
    Family("edge_relative_error", "layeredge_edge_relative_error_ratio", "gauge",
           "Relative error of the decoded tensor, ||x - decode(encode(x))|| / ||x||, last measured.", _TRAFFIC,
           "ratio", directions=_T),
    Family("edge_rejected_frames", "layeredge_edge_rejected_frames_total", "counter",
           "Frames received on the edge and rejected before decoding, by reason.", ("edge", "reason")),
    # --- edge plan: direction forward/backward ------------------------------------------------------------------
    Family("edge_importance", "layeredge_edge_importance", "gauge",
           "Importance score of the tensors crossing the edge (dimensionless; scale depends on kind).",
           ("edge", "direction", "kind"), directions=_D),
    Family("edge_codec_sensitivity", "layeredge_edge_codec_sensitivity", "gauge",
           "Estimated loss sensitivity of the edge to a codec (dimensionless; larger is worse).",
           ("edge", "direction", "codec"), directions=_D),
    Family("edge_error_budget", "layeredge_edge_error_budget_ratio", "gauge",
           "Relative error the plan allows on the edge.", ("edge", "direction"), "ratio", directions=_D),
    Family("edge_codec_switches", "layeredge_edge_codec_switches_total", "counter",
           "Times the codec of the edge was changed by the policy.", ("edge", "direction"), directions=_D),
    Family("edge_plan_info", "layeredge_edge_plan_info", "gauge",
           "Codec of the edge in the plan: 1 for the active codec, 0 for one it replaced.",
           ("edge", "direction", "codec"), directions=_D),
    # --- links between processes --------------------------------------------------------------------------------
    Family("link_bandwidth", "layeredge_link_bandwidth_bytes_per_second", "gauge",
           "Measured bandwidth from src to dst in bytes per second.", ("src", "dst"), "bytes_per_second"),
    Family("link_rtt", "layeredge_link_rtt_seconds", "gauge",
           "Measured round-trip time between src and dst in seconds.", ("src", "dst"), "seconds"),
    # --- stages -------------------------------------------------------------------------------------------------
    Family("stage_compute_seconds", "layeredge_stage_compute_seconds_total", "counter",
           "Seconds the stage spent computing, by phase.", ("stage", "phase"), "seconds"),
    Family("stage_idle_seconds", "layeredge_stage_idle_seconds_total", "counter",
           "Seconds the stage spent waiting for its neighbours.", ("stage",), "seconds"),
    Family("stage_bubble", "layeredge_stage_bubble_ratio", "gauge",
           "Fraction of the last step the stage was idle (pipeline bubble), 0..1.", ("stage",), "ratio"),
    Family("stage_up", "layeredge_stage_up", "gauge",
           "1 if the stage is alive and serving, 0 otherwise.", ("stage",)),
    Family("stage_restarts", "layeredge_stage_restarts_total", "counter",
           "Times the stage was restarted.", ("stage",)),
    # --- weights pushed to a stage (deployment, fine-tuned weights, re-shipping after a restart) -----------------
    Family("weight_raw_bytes", "layeredge_weight_raw_bytes_total", "counter",
           "Bytes of the original tensors of weight pushes the stage received and verified.", ("stage",), "bytes"),
    Family("weight_wire_bytes", "layeredge_weight_wire_bytes_total", "counter",
           "Bytes read from the wire for weight pushes the stage received and verified (payload, header, framing).",
           ("stage",), "bytes"),
    Family("weight_transfer_seconds", "layeredge_weight_transfer_seconds", "histogram",
           "Seconds from waiting for a weight push's first frame to its last checksum verified, per push.",
           ("stage",), "seconds", TRANSFER_BUCKETS),
    Family("weight_rejected", "layeredge_weight_rejected_total", "counter",
           "Weight pushes the stage rejected (nothing loaded), by reason: checksum, shape or other.",
           ("stage", "reason")),
    # --- runs ---------------------------------------------------------------------------------------------------
    Family("run_step", "layeredge_run_step", "gauge",
           "Current step number of the run (a value, never a label).", ("run",)),
    Family("run_loss", "layeredge_run_loss", "gauge",
           "Last loss of the run, by split (as computed by the model's loss function).", ("run", "split")),
    Family("run_throughput", "layeredge_run_throughput_tokens_per_second", "gauge",
           "Tokens (or samples, for non-token models) processed per second over the last step.", ("run",),
           "tokens_per_second"),
    Family("run_step_seconds", "layeredge_run_step_seconds", "histogram",
           "Seconds per step of the run.", ("run",), "seconds", STEP_BUCKETS),
)

#: The families by key.
BY_KEY: dict[str, Family] = {f.key: f for f in FAMILIES}


def family(key: str) -> Family:
    """The family with short name ``key``; raises KeyError listing the known keys otherwise."""
    try:
        return BY_KEY[key]
    except KeyError:
        raise KeyError(f"unknown metric family {key!r}; known: {', '.join(BY_KEY)}") from None
