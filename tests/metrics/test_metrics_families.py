"""The metric family table, label validation and the recording helpers of ``Metrics``."""

from __future__ import annotations

import math
import re
import threading

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from layeredge_dist.metrics import FAMILIES, MetricLabelError, Metrics, family, label_value
from layeredge_dist.metrics.labels import ALLOWED_LABELS, DATAFLOW_DIRECTIONS, TRAFFIC_DIRECTIONS
from layeredge_dist.types import Direction, EdgeId, StageId, TensorRole

UNITS = {"bytes", "seconds", "ratio", "bytes_per_second", "bytes_per_element", "tokens_per_second"}
#: Words that name a dimensioned quantity; a family whose name contains one must declare a unit.
DIMENSIONED = re.compile(r"(bytes|seconds|time|duration|latency|bandwidth|rtt|fraction|ratio|bits)")


# --- the table ------------------------------------------------------------------------------------------------

def test_names_and_keys_are_unique() -> None:
    names = [f.name for f in FAMILIES]
    assert len(names) == len(set(names))
    keys = [f.key for f in FAMILIES]
    assert len(keys) == len(set(keys))
    # no family's exported series name collides with another's (histogram _bucket/_count/_sum, counter _created)
    series: list[str] = []
    for f in FAMILIES:
        base = f.name.removesuffix("_total")
        if f.type == "histogram":
            series += [base + s for s in ("_bucket", "_count", "_sum", "_created")]
        elif f.type == "counter":
            series += [base + "_total", base + "_created"]
        else:
            series.append(base)
    assert len(series) == len(set(series))


@pytest.mark.parametrize("fam", FAMILIES, ids=lambda f: f.key)
def test_family_conventions(fam) -> None:  # noqa: ANN001
    assert re.fullmatch(r"layeredge_[a-z][a-z0-9_]*[a-z0-9]", fam.name), fam.name
    assert fam.type in ("counter", "gauge", "histogram")
    assert fam.help.strip() and fam.help.strip()[-1] in ".)", fam.help
    assert fam.labels and set(fam.labels) <= ALLOWED_LABELS, fam.labels
    assert len(set(fam.labels)) == len(fam.labels)
    assert len(fam.labels) <= 4, "keep label sets small"
    assert "le" not in fam.labels and "quantile" not in fam.labels
    base = fam.name
    if fam.type == "counter":
        assert fam.name.endswith("_total"), fam.name
        base = fam.name.removesuffix("_total")
    else:
        assert not fam.name.endswith("_total"), fam.name
    if fam.unit:
        assert fam.unit in UNITS, fam.unit
        assert base.endswith("_" + fam.unit), (fam.name, fam.unit)
    else:
        assert not DIMENSIONED.search(base), f"{fam.name}: looks dimensioned but declares no unit"
        assert fam.type != "histogram", "a histogram observes a quantity with a unit"
    # the run label only on run-level families
    assert ("run" in fam.labels) == fam.name.startswith("layeredge_run_"), fam.name
    if "direction" in fam.labels:
        assert fam.directions in (TRAFFIC_DIRECTIONS, DATAFLOW_DIRECTIONS)
    else:
        assert fam.directions == ()
    if fam.type == "histogram":
        b = fam.buckets
        assert b and len(b) >= 10
        assert all(x < y for x, y in zip(b, b[1:])), "buckets must increase"
        assert all(x > 0 and math.isfinite(x) for x in b)
    else:
        assert fam.buckets is None


def test_bucket_ranges_fit_the_quantities() -> None:
    def span(key: str) -> tuple[float, float]:
        b = family(key).buckets
        assert b is not None
        return b[0], b[-1]

    assert span("edge_transfer_seconds") == (50e-6, 60.0)
    assert span("edge_encode_seconds") == span("edge_decode_seconds") == (5e-6, 10.0)
    assert span("run_step_seconds") == (1e-3, 600.0)
    for key in ("edge_transfer_seconds", "edge_encode_seconds", "run_step_seconds"):
        b = family(key).buckets
        assert b is not None
        # roughly log-spaced: consecutive bounds grow by a factor between 1.5 and 3.5
        assert all(1.5 <= y / x <= 3.5 for x, y in zip(b, b[1:])), key


def test_required_families_and_label_sets() -> None:
    traffic = ("edge", "direction", "role", "codec")
    want = {
        "layeredge_edge_raw_bytes_total": traffic, "layeredge_edge_wire_bytes_total": traffic,
        "layeredge_edge_frames_total": traffic, "layeredge_edge_transfer_seconds": traffic,
        "layeredge_edge_encode_seconds": traffic, "layeredge_edge_decode_seconds": traffic,
        "layeredge_edge_compression_ratio": traffic, "layeredge_edge_wire_bytes_per_element": traffic,
        "layeredge_edge_relative_error_ratio": traffic,
        "layeredge_edge_rejected_frames_total": ("edge", "reason"),
        "layeredge_edge_importance": ("edge", "direction", "kind"),
        "layeredge_edge_codec_sensitivity": ("edge", "direction", "codec"),
        "layeredge_edge_error_budget_ratio": ("edge", "direction"),
        "layeredge_link_bandwidth_bytes_per_second": ("src", "dst"),
        "layeredge_link_rtt_seconds": ("src", "dst"),
        "layeredge_stage_compute_seconds_total": ("stage", "phase"),
        "layeredge_stage_idle_seconds_total": ("stage",), "layeredge_stage_bubble_ratio": ("stage",),
        "layeredge_stage_up": ("stage",), "layeredge_stage_restarts_total": ("stage",),
        "layeredge_run_step": ("run",), "layeredge_run_loss": ("run", "split"),
        "layeredge_run_throughput_tokens_per_second": ("run",), "layeredge_run_step_seconds": ("run",),
        "layeredge_edge_codec_switches_total": ("edge", "direction"),
        "layeredge_edge_plan_info": ("edge", "direction", "codec"),
    }
    have = {f.name: f.labels for f in FAMILIES}
    for name, labels in want.items():
        assert have.get(name) == labels, name


def test_metrics_uses_a_private_registry() -> None:
    before = set(REGISTRY._names_to_collectors)  # noqa: SLF001 - the global default registry must stay untouched
    a, b = Metrics(), Metrics()  # two in one process must not clash
    assert a.registry is not b.registry and a.registry is not REGISTRY
    assert set(REGISTRY._names_to_collectors) == before  # noqa: SLF001
    a.stage_up("s0", True)
    assert b"layeredge_stage_up{" not in b.exposition()


# --- label validation -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("label", "value"),
    [
        ("stage", "s0"), ("stage", "s12"), ("stage", "host"), ("stage", StageId(3)),
        ("src", "host"), ("dst", "s1"),
        ("edge", "s0->s1"), ("edge", "s10->s11"), ("edge", EdgeId(StageId(1), StageId(2))),
        ("role", "gradient"), ("role", TensorRole.WEIGHT),
        ("codec", "fp32"), ("codec", "int4/b64"), ("codec", "topk:0.05+int8"), ("codec", "ef(topk:0.01+int4/b64)"),
        ("codec", "delta(int2)"), ("codec", "topk:1e-3"),
        ("reason", "checksum"), ("phase", "optimizer"), ("kind", "channel_taylor"), ("split", "val"),
        ("run", "demo"), ("run", "bert-tune_2.v1"), ("run", "2024-run"),
    ],
)
def test_valid_label_values(label: str, value: object) -> None:
    assert isinstance(label_value("fam", label, value), str)


@pytest.mark.parametrize(
    ("label", "value"),
    [
        ("stage", 17), ("stage", True), ("stage", None), ("stage", "mb17"), ("stage", "s01"), ("stage", "stage0"),
        ("stage", "s123456"), ("stage", "S0"), ("stage", ""),
        ("edge", "s0-s1"), ("edge", "s0->s0"), ("edge", "mb17"), ("edge", "s0->s1 "), ("edge", 3),
        ("role", "activations"), ("role", "mb17"),
        ("codec", "x" * 200), ("codec", "int 8"), ("codec", "int8\n"), ("codec", ""), ("codec", "17"), ("codec", 8),
        ("reason", "timeout"), ("phase", "fwd"), ("kind", "random"), ("split", "test"),
        ("run", 17), ("run", "17"), ("run", "r" * 65), ("run", "my run"), ("run", ""),
        ("step", "3"), ("microbatch", "mb17"),
    ],
)
def test_invalid_label_values(label: str, value: object) -> None:
    with pytest.raises(MetricLabelError) as ei:
        label_value("layeredge_x", label, value, ("send", "recv"))
    msg = str(ei.value)
    assert "layeredge_x" in msg and label in msg
    assert ei.value.label == label and ei.value.family == "layeredge_x"
    assert isinstance(ei.value, ValueError)


def test_direction_sets_are_per_family() -> None:
    m = Metrics()
    m.edge_frame("s0->s1", "send", "activation", "fp16", 8, 4)
    m.edge_frame("s0->s1", Direction.RECV, "activation", "fp16", 8, 4)
    with pytest.raises(MetricLabelError, match="direction='forward'"):
        m.edge_frame("s0->s1", "forward", "activation", "fp16", 8, 4)
    m.importance("s0->s1", "backward", "proxy", 1.0)
    with pytest.raises(MetricLabelError, match="layeredge_edge_importance.*direction='send'"):
        m.importance("s0->s1", "send", "proxy", 1.0)


def test_helpers_reject_unbounded_labels_and_record_nothing() -> None:
    m = Metrics()
    before = m.exposition()
    with pytest.raises(MetricLabelError, match="layeredge_run_step.*run=17"):
        m.step(17, 3)  # type: ignore[arg-type]  # step and run swapped: an int label
    with pytest.raises(MetricLabelError, match="codec"):
        m.edge_frame("s0->s1", "send", "activation", "c" * 200, 10, 5, transfer_s=0.1)
    with pytest.raises(MetricLabelError, match="stage='mb17'"):
        m.stage_time("mb17", "forward", 0.1)
    with pytest.raises(MetricLabelError, match="reason"):
        m.rejected("s0->s1", "bad luck")
    with pytest.raises(ValueError, match="raw_bytes"):
        m.edge_frame("s0->s1", "send", "activation", "fp16", -1, 5)
    with pytest.raises(TypeError, match="seconds"):
        m.stage_idle("s0", "0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step must be an int"):
        m.step("demo", 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fraction"):
        m.bubble("s0", 1.5)
    assert m.exposition() == before


# --- recording changes the exposition -------------------------------------------------------------------------

def _samples(m: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for fam in text_string_to_metric_families(m.exposition().decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _get(m: Metrics, name: str, **labels: str) -> float:
    return _samples(m)[(name, frozenset(labels.items()))]


def test_edge_frame_records_traffic_and_derived_gauges() -> None:
    m = Metrics()
    e = EdgeId(StageId(0), StageId(1))
    lab = {"edge": "s0->s1", "direction": "send", "role": "activation", "codec": "int8"}
    m.edge_frame(e, Direction.SEND, TensorRole.ACTIVATION, "int8", 4000, 1100, encode_s=3e-5, transfer_s=2e-3,
                 elements=1000)
    m.edge_frame("s0->s1", "send", "activation", "int8", 4000, 900, encode_s=7e-5, transfer_s=0.3, elements=1000)
    assert _get(m, "layeredge_edge_raw_bytes_total", **lab) == 8000
    assert _get(m, "layeredge_edge_wire_bytes_total", **lab) == 2000
    assert _get(m, "layeredge_edge_frames_total", **lab) == 2
    assert _get(m, "layeredge_edge_elements_total", **lab) == 2000
    assert _get(m, "layeredge_edge_compression_ratio", **lab) == pytest.approx(4.0)
    assert _get(m, "layeredge_edge_wire_bytes_per_element", **lab) == pytest.approx(1.0)
    assert _get(m, "layeredge_edge_transfer_seconds_count", **lab) == 2
    assert _get(m, "layeredge_edge_transfer_seconds_sum", **lab) == pytest.approx(0.302)
    assert _get(m, "layeredge_edge_transfer_seconds_bucket", **lab, le="0.0025") == 1
    assert _get(m, "layeredge_edge_transfer_seconds_bucket", **lab, le="0.5") == 2
    assert _get(m, "layeredge_edge_encode_seconds_bucket", **lab, le="5e-05") == 1
    assert _get(m, "layeredge_edge_encode_seconds_count", **lab) == 2
    # no decode time was given: the decode histogram has no series for this label set
    assert ("layeredge_edge_decode_seconds_count", frozenset(lab.items())) not in _samples(m)
    # another label set is independent
    m.edge_frame("s0->s1", "recv", "activation", "int8", 4000, 1000, decode_s=1e-4)
    recv = dict(lab, direction="recv")
    assert _get(m, "layeredge_edge_compression_ratio", **recv) == pytest.approx(4.0)
    assert _get(m, "layeredge_edge_decode_seconds_count", **recv) == 1
    assert _get(m, "layeredge_edge_frames_total", **lab) == 2
    # direct setters
    m.bits("s0->s1", "send", "activation", "int8", 8.25)
    assert _get(m, "layeredge_edge_wire_bytes_per_element", **lab) == pytest.approx(8.25 / 8)
    m.ratio("s0->s1", "send", "activation", "int8", 3.5)
    assert _get(m, "layeredge_edge_compression_ratio", **lab) == 3.5
    m.relative_error("s0->s1", "send", "activation", "int8", 0.013)
    assert _get(m, "layeredge_edge_relative_error_ratio", **lab) == pytest.approx(0.013)


def test_transfer_record_duck_type() -> None:
    class Rec:  # the shape of transport.accounting.TransferRecord
        edge = EdgeId(StageId(1), StageId(2))
        role = TensorRole.GRADIENT
        direction = Direction.RECV
        codec = "fp16"
        elements = 100
        raw_bytes = 400
        wire_bytes = 250
        transfer_s = 0.01

    m = Metrics()
    m.transfer_record(Rec())
    lab = {"edge": "s1->s2", "direction": "recv", "role": "gradient", "codec": "fp16"}
    assert _get(m, "layeredge_edge_wire_bytes_total", **lab) == 250
    assert _get(m, "layeredge_edge_wire_bytes_per_element", **lab) == pytest.approx(2.5)
    assert _get(m, "layeredge_edge_transfer_seconds_count", **lab) == 1


def test_plan_and_link_helpers() -> None:
    m = Metrics()
    m.rejected("s0->s1", "checksum")
    m.rejected("s0->s1", "checksum")
    m.rejected("s0->s1", "auth")
    assert _get(m, "layeredge_edge_rejected_frames_total", edge="s0->s1", reason="checksum") == 2
    assert _get(m, "layeredge_edge_rejected_frames_total", edge="s0->s1", reason="auth") == 1
    m.importance("s0->s1", "forward", "activation_norm", 12.5)
    assert _get(m, "layeredge_edge_importance", edge="s0->s1", direction="forward", kind="activation_norm") == 12.5
    m.sensitivity("s1->s2", "backward", "int4/b64", 0.02)
    assert _get(m, "layeredge_edge_codec_sensitivity", edge="s1->s2", direction="backward",
                codec="int4/b64") == pytest.approx(0.02)
    m.error_budget("s0->s1", "forward", 0.05)
    assert _get(m, "layeredge_edge_error_budget_ratio", edge="s0->s1", direction="forward") == 0.05
    m.link("s0", "s1", bandwidth_Bps=1.25e8, rtt_s=2e-4)
    m.link("host", "s0", rtt_s=1e-3)
    assert _get(m, "layeredge_link_bandwidth_bytes_per_second", src="s0", dst="s1") == 1.25e8
    assert _get(m, "layeredge_link_rtt_seconds", src="s0", dst="s1") == 2e-4
    assert _get(m, "layeredge_link_rtt_seconds", src="host", dst="s0") == 1e-3
    assert ("layeredge_link_bandwidth_bytes_per_second", frozenset({("src", "host"), ("dst", "s0")})) not in _samples(m)


def test_codec_switch_and_plan_info() -> None:
    m = Metrics()
    d = {"edge": "s0->s1", "direction": "forward"}
    m.plan_codec("s0->s1", "forward", "fp16")
    assert _get(m, "layeredge_edge_plan_info", **d, codec="fp16") == 1
    m.codec_switch("s0->s1", "forward", "int8", "fp16")
    assert _get(m, "layeredge_edge_codec_switches_total", **d) == 1
    assert _get(m, "layeredge_edge_plan_info", **d, codec="int8") == 1
    assert _get(m, "layeredge_edge_plan_info", **d, codec="fp16") == 0
    m.codec_switch("s0->s1", "forward", "int4/b64", None)  # old = the one recorded as active
    assert _get(m, "layeredge_edge_codec_switches_total", **d) == 2
    assert _get(m, "layeredge_edge_plan_info", **d, codec="int4/b64") == 1
    assert _get(m, "layeredge_edge_plan_info", **d, codec="int8") == 0
    active = [k for k, v in _samples(m).items() if k[0] == "layeredge_edge_plan_info" and v == 1]
    assert len(active) == 1
    # the other direction is separate
    m.codec_switch("s0->s1", "backward", "int8", "fp32")
    assert _get(m, "layeredge_edge_plan_info", edge="s0->s1", direction="backward", codec="fp32") == 0
    assert _get(m, "layeredge_edge_codec_switches_total", **d) == 2


def test_stage_helpers() -> None:
    m = Metrics()
    m.stage_time("s0", "forward", 0.25)
    m.stage_time(StageId(0), "forward", 0.5)
    m.stage_time("s0", "optimizer", 0.1)
    m.stage_idle("s1", 1.5)
    m.bubble("s1", 0.4)
    m.stage_up("s1", True)
    m.stage_up("s2", False)
    m.restart("s2")
    assert _get(m, "layeredge_stage_compute_seconds_total", stage="s0", phase="forward") == 0.75
    assert _get(m, "layeredge_stage_compute_seconds_total", stage="s0", phase="optimizer") == 0.1
    assert _get(m, "layeredge_stage_idle_seconds_total", stage="s1") == 1.5
    assert _get(m, "layeredge_stage_bubble_ratio", stage="s1") == 0.4
    assert _get(m, "layeredge_stage_up", stage="s1") == 1
    assert _get(m, "layeredge_stage_up", stage="s2") == 0
    assert _get(m, "layeredge_stage_restarts_total", stage="s2") == 1


def test_run_helpers_keep_the_step_a_value() -> None:
    m = Metrics()
    for step in range(1, 4):
        m.step("demo", step, loss=3.0 / step, tokens_per_s=1000.0 * step, step_s=0.2 * step)
    m.val_loss("demo", 2.25)
    assert _get(m, "layeredge_run_step", run="demo") == 3
    assert _get(m, "layeredge_run_loss", run="demo", split="train") == pytest.approx(1.0)
    assert _get(m, "layeredge_run_loss", run="demo", split="val") == 2.25
    assert _get(m, "layeredge_run_throughput_tokens_per_second", run="demo") == 3000
    assert _get(m, "layeredge_run_step_seconds_count", run="demo") == 3
    assert _get(m, "layeredge_run_step_seconds_bucket", run="demo", le="0.25") == 1
    # however many steps, the step number never creates a series
    names = {k for k in _samples(m) if k[0].startswith("layeredge_run_")}
    m.step("demo", 1000)
    assert {k for k in _samples(m) if k[0].startswith("layeredge_run_")} == names
    text = m.exposition().decode()
    assert 'step="' not in text and "microbatch" not in text
    m.step("demo", 1001, loss=float("nan"))  # a diverged loss is shown, not refused
    assert math.isnan(_get(m, "layeredge_run_loss", run="demo", split="train"))


def test_labelled_generic_access_validates() -> None:
    m = Metrics()
    m.labelled("stage_restarts", "s4").inc()
    assert _get(m, "layeredge_stage_restarts_total", stage="s4") == 1
    with pytest.raises(MetricLabelError):
        m.labelled("stage_restarts", 4)
    with pytest.raises(MetricLabelError, match="expected 1 label values"):
        m.labelled("stage_restarts", "s4", "s5")
    with pytest.raises(KeyError, match="unknown metric family"):
        m.labelled("nope", "s4")


def test_concurrent_recording_is_consistent() -> None:
    m = Metrics()
    n, threads = 500, 4

    def work() -> None:
        for _ in range(n):
            m.edge_frame("s0->s1", "send", "activation", "fp16", 100, 50, transfer_s=1e-3, elements=25)

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    lab = {"edge": "s0->s1", "direction": "send", "role": "activation", "codec": "fp16"}
    assert _get(m, "layeredge_edge_frames_total", **lab) == n * threads
    assert _get(m, "layeredge_edge_raw_bytes_total", **lab) == 100 * n * threads
    assert _get(m, "layeredge_edge_compression_ratio", **lab) == 2.0
    assert _get(m, "layeredge_edge_wire_bytes_per_element", **lab) == 2.0
