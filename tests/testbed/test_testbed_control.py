"""The issue's online-control check on a shaped 3-host testbed (a reduced ``layeredge bench control``): the links
drop from 1 Gbit/s to 100 Mbit/s mid-run; the controller switches to smaller codecs within two re-plan intervals,
and the step time after its switch beats the same run without the controller.

The model is the e2e check's network-bound one (3 blocks of width 64, 32 sequences of 128 bytes per step: 1 MiB of
fp32 activations per cut and direction per step, ~8 ms at 1 Gbit/s and ~85 ms at 100 Mbit/s), trained 24 steps with
a re-plan every 4 and the drop after step 8, so the first re-plan that can see it is step 12. The predicted gain of
compressing depends on the profile's compute, i.e. on the machine's load while profiling: 5-22 % at 1 Gbit/s and
45-60 % at 100 Mbit/s here, so ``min_gain`` 0.3 keeps fp32 before the drop and switches after it. Needs root and
iproute2; skips with the reason otherwise. The summary's arithmetic is checked without a testbed.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from layeredge_dist.testbed import list_testbeds, unavailable_reason


_REASON = unavailable_reason()

SMALL = ("model.config.n_layer=3", "model.config.d_model=64", "model.config.n_head=2", "data.batch_size=32",
         "data.corpus_bytes=1000000")
FP32 = {"s0->s1": {"forward": "fp32", "backward": "fp32"}, "s1->s2": {"forward": "fp32", "backward": "fp32"}}
INT8 = {"s0->s1": {"forward": "int8", "backward": "int8"}, "s1->s2": {"forward": "int8", "backward": "int8"}}


def _ours() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith(f"le-{os.getpid()}")}


def test_summary_of_two_runs() -> None:
    from layeredge_dist.bench.control import ControlSettings, format_result, summarize

    s = ControlSettings(steps=12, every=3, drop_step=6)
    dec = [{"step": 3, "bandwidth_Bps": [1.2e8, 1.2e8], "current_s": 0.1, "best_s": 0.1, "codecs": FP32,
            "switched": False},
           {"step": 6, "bandwidth_Bps": [1.2e8, 1.2e8], "current_s": 0.1, "best_s": 0.1, "codecs": FP32,
            "switched": False},
           {"step": 9, "bandwidth_Bps": [1.2e7, 1.2e7], "current_s": 0.3, "best_s": 0.15, "codecs": INT8,
            "switched": True},
           {"step": 12, "bandwidth_Bps": [1.2e7, 1.2e7], "current_s": 0.15, "best_s": 0.15, "codecs": INT8,
            "switched": False}]
    off = {"step_seconds": [1.0] * 3 + [0.1] * 3 + [0.3] * 6, "decisions": [], "codecs_initial": FP32,
           "codecs_final": FP32, "losses": [5.0]}
    on = {"step_seconds": [1.0] * 3 + [0.1] * 3 + [0.3] * 3 + [0.15] * 3, "decisions": dec, "codecs_initial": FP32,
          "codecs_final": INT8, "losses": [5.0]}
    summary, targets = summarize([{"off": off, "on": on}], s)
    assert summary["switch_step"] == 9 and summary["intervals_after_drop"] == 1
    assert summary["step_p50_s"]["before"] == pytest.approx(0.1)
    assert summary["step_p50_s"]["after_drop_off"] == pytest.approx(0.3)
    assert summary["step_p50_s"]["after_drop_on_before_switch"] == pytest.approx(0.3)
    assert summary["step_p50_s"]["after_switch_on"] == pytest.approx(0.15)
    assert summary["speedup"] == pytest.approx(2.0) and summary["speedup_normalized"] == pytest.approx(2.0)
    assert summary["bits_before"] == 32 and 8 < summary["bits_after"] < 9  # fp32 vs int8 (+ its scales)
    assert targets["met"]
    text = format_result({"settings": {**s.__dict__}, "summary": summary, "targets": targets,
                          "load_average": {"start": [1.0], "end": [2.0]}, "rounds": [{"on": on, "off": off}]})
    assert "switch at step 9 = 1 re-plan interval(s) after the drop" in text and "all targets met" in text
    late = [dict(d, switched=False) for d in dec[:3]] + [dict(dec[3], switched=True)]
    on_late = dict(on, decisions=late + [dict(dec[3], step=15, switched=True)])
    summary, targets = summarize([{"off": off, "on": on}, {"off": off, "on": on_late}], s)
    assert summary["switch_steps"] == [9, 12] and summary["intervals_after_drop"] == 2  # the worst round counts
    assert targets["switch_within_intervals"]["met"]
    summary, targets = summarize([{"off": off, "on": on_late}], ControlSettings(steps=12, every=3, drop_step=6,
                                                                               max_intervals=1))
    assert summary["switch_step"] == 12 and not targets["switch_within_intervals"]["met"] and not targets["met"]


def test_best_of_keeps_the_fastest_probe_per_link() -> None:
    from layeredge_dist.pipeline.controller import best_of
    from layeredge_dist.transport import ProbeResult

    slow, fast, mid = (ProbeResult(1e-3, bw, (1e-3,), 1 << 20) for bw in (3.5e7, 1.1e8, 9e7))
    got = best_of([{(0, 1): slow, (1, 2): mid}, {(0, 1): fast, (1, 2): slow}])
    assert got == {(0, 1): fast, (1, 2): mid}
    assert best_of([{(0, 1): slow}]) == {(0, 1): slow}


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.skipif(_REASON is not None, reason=f"testbed unavailable: {_REASON}")
def test_controller_switches_after_the_drop_and_beats_not_switching() -> None:
    from layeredge_dist.bench.control import ControlSettings, format_result, run_control

    settings = ControlSettings(steps=24, every=4, drop_step=8, min_gain=0.3, calib_steps=2, calib_batches=1,
                               overrides=SMALL, probe_bytes=2 << 20, start_timeout_s=150.0, run_timeout_s=400.0)
    result = run_control(settings, log=print)
    print(format_result(result))
    sm, runs = result["summary"], result["rounds"][0]
    assert [len(runs[m]["step_seconds"]) for m in ("off", "on")] == [24, 24]
    assert [d["step"] for d in runs["on"]["decisions"]] == [4, 8, 12, 16, 20, 24]
    assert not sm["switches_before_drop"][0], runs["on"]["decisions"]  # fp32 kept at 1 Gbit/s
    assert sm["switch_step"] is not None and sm["intervals_after_drop"] <= 2, runs["on"]["decisions"]
    assert sm["bits_after"] < sm["bits_before"], (sm["codecs_before"], sm["codecs_after"])
    p = sm["step_p50_s"]
    assert p["after_switch_on"] < p["after_drop_off"], p
    for r in runs.values():
        assert {x["node_ip"] for x in r["placement"]} == set(result["testbed"]["hosts"])  # one stage per host
    # torn down: no namespace, state file or process of ours is left
    assert not _ours()
    assert not [t for t in list_testbeds() if t["owner"]["pid"] == os.getpid()]


def test_calibrate_compute_matches_the_measured_step() -> None:
    """The controller's compute calibration: the factor that makes the simulator reproduce a measured step."""
    from layeredge_dist.pipeline.controller import SCALE_RANGE, calibrate_compute
    from layeredge_dist.plan import ModelProfile, predict

    prof = ModelProfile.uniform(6, 0.004, 0.008, 8 * 128 * 128)

    def at(p: ModelProfile) -> float:
        return predict(p, (2, 4), "fp32", "100Mbit").step_time_s

    for true in (0.5, 1.0, 2.7, 9.0):
        f = calibrate_compute(prof, at(prof.with_compute_scaled(true)), at)
        assert f == pytest.approx(true, rel=1e-6)
    assert calibrate_compute(prof, 1e-6, at) == SCALE_RANGE[0]  # faster than the links allow: clamp low
    assert calibrate_compute(prof, 1e6, at) == SCALE_RANGE[1]
    assert calibrate_compute(prof, 0.0, at) == 1.0  # nothing measured: unchanged
    with pytest.raises(ValueError):
        prof.with_compute_scaled(0.0)
