"""``Metrics``: every family of the table in a private registry, behind typed, validating helpers.

Each :class:`Metrics` owns its own :class:`prometheus_client.CollectorRegistry` (never the process-global
default), so several can live in one process (tests, a driver and an in-process stage) without clashing.
All helpers validate their labels (:mod:`layeredge_dist.metrics.labels`) and values before touching a series,
so a bad call raises and leaves the exposition unchanged. Thread-safe: prometheus_client's metrics are, and the
running totals kept here are guarded by a lock.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .families import FAMILIES, Family, family
from .labels import check_labels


class _TransferRecordLike(Protocol):
    """What :meth:`Metrics.transfer_record` reads; :class:`layeredge_dist.transport.accounting.TransferRecord`."""

    edge: object
    role: object
    direction: object
    codec: str
    elements: int
    raw_bytes: int
    wire_bytes: int
    transfer_s: float


def _amount(fam: Family, what: str, value: object) -> float:
    """A finite, non-negative number (bytes, seconds, counts); raises ValueError/TypeError naming the family."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"metric {fam.name}: {what} must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"metric {fam.name}: {what} must be finite and >= 0, got {value!r}")
    return v


def _gauge_value(fam: Family, what: str, value: object, *, lo: float | None = None, hi: float | None = None,
                 allow_nan: bool = False) -> float:
    """A gauge value, optionally bounded to ``[lo, hi]``; NaN only when ``allow_nan`` (e.g. a diverged loss)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"metric {fam.name}: {what} must be a number, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v):
        if allow_nan:
            return v
        raise ValueError(f"metric {fam.name}: {what} must not be NaN")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"metric {fam.name}: {what} must be in [{lo}, {hi}], got {value!r}")
    return v


class Metrics:
    """Every LayerEdge metric family in one private registry, with typed recording helpers.

    Units: bytes, seconds, bytes per second, tokens per second; ratios are plain fractions. Every helper
    raises :class:`~layeredge_dist.metrics.MetricLabelError` (a ValueError) for a label value outside its
    bounded set, and ValueError/TypeError for a negative, non-finite or non-numeric amount, before recording
    anything.
    """

    def __init__(self) -> None:
        #: The private registry; serve it with :func:`~layeredge_dist.metrics.start_exporter`.
        self.registry = CollectorRegistry(auto_describe=True)
        self._metrics: dict[str, Any] = {}
        for fam in FAMILIES:
            self._metrics[fam.key] = self._build(fam)
        self._lock = threading.Lock()
        # (edge, direction, role, codec) -> [raw bytes, wire bytes, elements], for the ratio and bits gauges
        self._totals: dict[tuple[str, ...], list[float]] = {}
        # (edge, direction) -> the codec whose plan_info is 1
        self._active: dict[tuple[str, ...], str] = {}

    def _build(self, fam: Family) -> Any:
        kw: dict[str, Any] = {"labelnames": fam.labels, "registry": self.registry}
        if fam.unit:
            kw["unit"] = fam.unit
        if fam.type == "counter":
            return Counter(fam.name, fam.help, **kw)
        if fam.type == "gauge":
            return Gauge(fam.name, fam.help, **kw)
        if fam.type == "histogram":
            return Histogram(fam.name, fam.help, buckets=fam.buckets, **kw)
        raise ValueError(f"metric {fam.name}: unknown type {fam.type!r}")  # pragma: no cover - table test

    # --- generic access ---------------------------------------------------------------------------------------

    def labelled(self, key: str, *values: object) -> Any:
        """The prometheus_client child of family ``key`` for validated label ``values`` (in table order).

        For families without a dedicated helper; raises KeyError for an unknown key, MetricLabelError for a bad
        label value.
        """
        fam = family(key)
        return self._metrics[key].labels(*check_labels(fam, values))

    _child = labelled

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (0.0.4), as served on ``/metrics``."""
        return generate_latest(self.registry)

    # --- edge traffic -----------------------------------------------------------------------------------------

    def edge_frame(
        self,
        edge: object,
        direction: object,
        role: object,
        codec: str,
        raw_bytes: int,
        wire_bytes: int,
        encode_s: float | None = None,
        decode_s: float | None = None,
        transfer_s: float | None = None,
        elements: int | None = None,
    ) -> None:
        """Record one frame on ``edge``: ``direction`` send/recv, ``role`` activation/gradient/weight.

        ``raw_bytes``: the original tensor's size; ``wire_bytes``: bytes on the wire (payload + header +
        framing); ``encode_s``/``decode_s``/``transfer_s``: seconds, observed into their histograms when given;
        ``elements``: tensor elements, needed for the bytes-per-element gauge. Also updates the compression ratio
        (raw/wire) and wire bytes-per-element (wire/elements) gauges from the running totals of this label set.
        """
        labels = check_labels(family("edge_raw_bytes"), (edge, direction, role, codec))
        raw = _amount(family("edge_raw_bytes"), "raw_bytes", raw_bytes)
        wire = _amount(family("edge_wire_bytes"), "wire_bytes", wire_bytes)
        timings = [
            (key, _amount(family(key), what, v))
            for key, what, v in (("edge_encode_seconds", "encode_s", encode_s),
                                 ("edge_decode_seconds", "decode_s", decode_s),
                                 ("edge_transfer_seconds", "transfer_s", transfer_s))
            if v is not None
        ]
        elems = _amount(family("edge_elements"), "elements", elements) if elements is not None else None
        m = self._metrics
        m["edge_raw_bytes"].labels(*labels).inc(raw)
        m["edge_wire_bytes"].labels(*labels).inc(wire)
        m["edge_frames"].labels(*labels).inc()
        if elems is not None:
            m["edge_elements"].labels(*labels).inc(elems)
        for key, seconds in timings:
            m[key].labels(*labels).observe(seconds)
        with self._lock:
            tot = self._totals.setdefault(labels, [0.0, 0.0, 0.0])
            tot[0] += raw
            tot[1] += wire
            if elems is not None:
                tot[2] += elems
            raw_t, wire_t, elems_t = tot
            if wire_t > 0:
                m["edge_compression_ratio"].labels(*labels).set(raw_t / wire_t)
            if elems_t > 0:
                m["edge_wire_bytes_per_element"].labels(*labels).set(wire_t / elems_t)

    def transfer_record(self, record: _TransferRecordLike) -> None:
        """Record a transport :class:`~layeredge_dist.transport.accounting.TransferRecord` (duck-typed), so a
        bound ``metrics.transfer_record`` can be passed as an accounting hook. Raises like :meth:`edge_frame`."""
        self.edge_frame(
            record.edge, record.direction, record.role, record.codec, record.raw_bytes, record.wire_bytes,
            transfer_s=record.transfer_s, elements=record.elements,
        )

    def ratio(self, edge: object, direction: object, role: object, codec: str, value: float) -> None:
        """Set the compression ratio (raw/wire, > 0) directly, e.g. from a codec's own report."""
        fam = family("edge_compression_ratio")
        v = _gauge_value(fam, "ratio", value, lo=0.0)
        self._child(fam.key, edge, direction, role, codec).set(v)

    def bits(self, edge: object, direction: object, role: object, codec: str, bits_per_element: float) -> None:
        """Set wire bits per element (>= 0) directly, e.g. the exact figure a codec reports.

        Exported as ``layeredge_edge_wire_bytes_per_element`` = ``bits_per_element / 8`` (Prometheus base unit).
        """
        fam = family("edge_wire_bytes_per_element")
        v = _gauge_value(fam, "bits_per_element", bits_per_element, lo=0.0)
        self._child(fam.key, edge, direction, role, codec).set(v / 8.0)

    def relative_error(self, edge: object, direction: object, role: object, codec: str, value: float) -> None:
        """Set the last measured relative error ||x - x'|| / ||x|| (>= 0) of ``codec`` on the edge."""
        fam = family("edge_relative_error")
        v = _gauge_value(fam, "relative error", value, lo=0.0)
        self._child(fam.key, edge, direction, role, codec).set(v)

    def rejected(self, edge: object, reason: str) -> None:
        """Count one frame rejected on ``edge`` for ``reason`` (checksum, header, length, codec, dtype, shape,
        auth, other)."""
        self._child("edge_rejected_frames", edge, reason).inc()

    # --- edge plan --------------------------------------------------------------------------------------------

    def importance(self, edge: object, direction: object, kind: str, value: float) -> None:
        """Set the importance of the edge in ``direction`` forward/backward as estimated by ``kind``
        (proxy, sensitivity, channel_taylor, activation_norm)."""
        fam = family("edge_importance")
        v = _gauge_value(fam, "importance", value)
        self._child(fam.key, edge, direction, kind).set(v)

    def sensitivity(self, edge: object, direction: object, codec: str, value: float) -> None:
        """Set the estimated sensitivity of the edge (forward/backward) to ``codec``."""
        fam = family("edge_codec_sensitivity")
        v = _gauge_value(fam, "sensitivity", value)
        self._child(fam.key, edge, direction, codec).set(v)

    def error_budget(self, edge: object, direction: object, value: float) -> None:
        """Set the relative error (>= 0) the plan allows on the edge (forward/backward)."""
        fam = family("edge_error_budget")
        v = _gauge_value(fam, "error budget", value, lo=0.0)
        self._child(fam.key, edge, direction).set(v)

    def plan_codec(self, edge: object, direction: object, codec: str) -> None:
        """Declare ``codec`` the active codec of the edge (forward/backward) without counting a switch: its plan
        info becomes 1 and the previously active codec recorded here (if another) becomes 0."""
        fam = family("edge_plan_info")
        edge_s, dir_s, codec_s = check_labels(fam, (edge, direction, codec))
        with self._lock:
            prev = self._active.get((edge_s, dir_s))
            if prev is not None and prev != codec_s:
                self._metrics[fam.key].labels(edge_s, dir_s, prev).set(0)
            self._metrics[fam.key].labels(edge_s, dir_s, codec_s).set(1)
            self._active[(edge_s, dir_s)] = codec_s

    def codec_switch(self, edge: object, direction: object, new_codec: str, old_codec: str | None) -> None:
        """Count a codec change on the edge (forward/backward) and update plan info: ``new_codec`` 1,
        ``old_codec`` 0 (and the codec recorded as active here, if different, 0). ``old_codec`` None: the one
        recorded as active, if any."""
        fam = family("edge_plan_info")
        edge_s, dir_s, new_s = check_labels(fam, (edge, direction, new_codec))
        old_s = check_labels(fam, (edge, direction, old_codec))[2] if old_codec is not None else None
        with self._lock:
            self._metrics["edge_codec_switches"].labels(edge_s, dir_s).inc()
            prev = self._active.get((edge_s, dir_s))
            for stale in {old_s, prev} - {None, new_s}:
                self._metrics[fam.key].labels(edge_s, dir_s, stale).set(0)
            self._metrics[fam.key].labels(edge_s, dir_s, new_s).set(1)
            self._active[(edge_s, dir_s)] = new_s

    # --- links ------------------------------------------------------------------------------------------------

    def link(self, src: object, dst: object, bandwidth_Bps: float | None = None,
             rtt_s: float | None = None) -> None:
        """Set the measured bandwidth (bytes/s) and/or round-trip time (s) from ``src`` to ``dst`` (stage ids or
        ``host``); a None value is left unchanged."""
        fam_bw, fam_rtt = family("link_bandwidth"), family("link_rtt")
        labels = check_labels(fam_bw, (src, dst))
        bw = _amount(fam_bw, "bandwidth_Bps", bandwidth_Bps) if bandwidth_Bps is not None else None
        rtt = _amount(fam_rtt, "rtt_s", rtt_s) if rtt_s is not None else None
        if bw is not None:
            self._metrics[fam_bw.key].labels(*labels).set(bw)
        if rtt is not None:
            self._metrics[fam_rtt.key].labels(*labels).set(rtt)

    # --- stages -----------------------------------------------------------------------------------------------

    def stage_time(self, stage: object, phase: str, seconds: float) -> None:
        """Add ``seconds`` of compute to ``stage`` in ``phase`` (forward, backward, optimizer)."""
        fam = family("stage_compute_seconds")
        v = _amount(fam, "seconds", seconds)
        self._child(fam.key, stage, phase).inc(v)

    def stage_idle(self, stage: object, seconds: float) -> None:
        """Add ``seconds`` the stage waited for its neighbours."""
        fam = family("stage_idle_seconds")
        v = _amount(fam, "seconds", seconds)
        self._child(fam.key, stage).inc(v)

    def bubble(self, stage: object, fraction: float) -> None:
        """Set the bubble fraction (idle share of the last step, 0..1) of ``stage``."""
        fam = family("stage_bubble")
        v = _gauge_value(fam, "fraction", fraction, lo=0.0, hi=1.0)
        self._child(fam.key, stage).set(v)

    def stage_up(self, stage: object, up: bool) -> None:
        """Set ``stage`` up (1) or down (0)."""
        self._child("stage_up", stage).set(1 if up else 0)

    def restart(self, stage: object) -> None:
        """Count one restart of ``stage``."""
        self._child("stage_restarts", stage).inc()

    # --- runs -------------------------------------------------------------------------------------------------

    def step(self, run: str, step: int, loss: float | None = None, tokens_per_s: float | None = None,
             step_s: float | None = None) -> None:
        """Record the end of step ``step`` (an int >= 0, stored as a gauge value) of ``run``.

        ``loss``: training loss (NaN allowed: a diverged run should show it); ``tokens_per_s``: throughput;
        ``step_s``: seconds the step took, observed into the step-time histogram. None values are skipped.
        """
        fam = family("run_step")
        (run_s,) = check_labels(fam, (run,))
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"metric {fam.name}: step must be an int >= 0, got {step!r}")
        loss_v = _gauge_value(family("run_loss"), "loss", loss, allow_nan=True) if loss is not None else None
        tps = _amount(family("run_throughput"), "tokens_per_s", tokens_per_s) if tokens_per_s is not None else None
        secs = _amount(family("run_step_seconds"), "step_s", step_s) if step_s is not None else None
        m = self._metrics
        m["run_step"].labels(run_s).set(step)
        if loss_v is not None:
            m["run_loss"].labels(run_s, "train").set(loss_v)
        if tps is not None:
            m["run_throughput"].labels(run_s).set(tps)
        if secs is not None:
            m["run_step_seconds"].labels(run_s).observe(secs)

    def val_loss(self, run: str, loss: float) -> None:
        """Set the validation loss of ``run`` (NaN allowed)."""
        fam = family("run_loss")
        v = _gauge_value(fam, "loss", loss, allow_nan=True)
        self._child(fam.key, run, "val").set(v)
