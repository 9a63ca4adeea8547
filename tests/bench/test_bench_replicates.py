"""Replicate runs over seeds (merge, spread) and the e2e headline verdict; pure bookkeeping."""

from __future__ import annotations

import math

import pytest

from layeredge_dist.bench.headline import lines, targets_for, verdict
from layeredge_dist.bench.replicates import mean_of, merge, spread


def _run(seed: int, curve: list[tuple[int, float, float]], steps: list[float], bits: float = 4.0) -> dict:
    return {"seed": {"data": seed, "model": seed}, "step_s": sorted(steps)[len(steps) // 2], "step_s_mean": 0.0,
            "step_seconds": steps, "final_val_loss": curve[-1][2], "final_train_loss": curve[-1][2] + 0.1,
            "train_s": curve[-1][1], "wall_s": 2 * curve[-1][1], "bits_fwd": bits, "bits_bwd": 2 * bits,
            "bytes_per_step": 1000.0 * bits, "bytes_per_step_per_edge": {"s0->s1": {"forward": bits, "backward": 1.0}},
            "codecs": {"forward": "int4/rht"}, "cuts": [2], "placement": [{"stage": 0}], "overrides": ["x=1"],
            "stage_medians": [{"forward_s": 0.1 * seed}],
            "val_curve": [{"step": s, "train_s": t, "wall_s": t, "val_loss": v} for s, t, v in curve]}


def test_spread_is_mean_sample_sd_and_standard_error() -> None:
    s = spread([0.01, 0.03, 0.02])
    assert s["mean"] == pytest.approx(0.02) and s["sd"] == pytest.approx(0.01)
    assert s["se"] == pytest.approx(0.01 / math.sqrt(3)) and (s["min"], s["max"], s["n"]) == (0.01, 0.03, 3)
    assert spread([0.5]) == {"mean": 0.5, "sd": 0.0, "se": 0.0, "min": 0.5, "max": 0.5, "n": 1}
    with pytest.raises(ValueError):
        spread([])


def test_mean_of_nests_and_keeps_what_is_not_a_number() -> None:
    assert mean_of([{"a": [1, 3], "b": "x", "c": 4}, {"a": [3, 5], "b": "y"}]) == {"a": [2.0, 4.0], "b": "x", "c": 4}
    step = mean_of([{"step": 10, "v": 1.0}, {"step": 10, "v": 2.0}])
    assert step == {"step": 10, "v": 1.5} and isinstance(step["step"], int)


def test_merge_averages_curves_and_figures_and_keeps_each_seed() -> None:
    a = _run(0, [(10, 1.0, 3.0), (20, 2.0, 2.0)], [9.0, 0.2, 0.4], bits=4.0)
    b = _run(1, [(10, 1.5, 3.4), (20, 3.0, 2.2)], [9.0, 0.3, 0.5], bits=4.5)
    m = merge([a, b], skip_steps=1)
    assert m["step_s"] == pytest.approx(0.35) and m["step_s_mean"] == pytest.approx(0.35)  # warm-up steps skipped
    assert m["step_seconds"] == [9.0, 0.2, 0.4, 9.0, 0.3, 0.5]
    assert [p["val_loss"] for p in m["val_curve"]] == pytest.approx([3.2, 2.1])
    assert [p["train_s"] for p in m["val_curve"]] == pytest.approx([1.25, 2.5])
    assert m["final_val_loss"] == pytest.approx(2.1) and m["bits_fwd"] == pytest.approx(4.25)
    assert m["bytes_per_step_per_edge"]["s0->s1"]["forward"] == pytest.approx(4.25)
    assert m["stage_medians"] == [{"forward_s": pytest.approx(0.05)}]
    assert m["overrides"] == ["x=1"] and m["cuts"] == [2] and "seed" not in m
    assert m["seeds"] == [{"data": 0, "model": 0}, {"data": 1, "model": 1}]
    assert [r["final_val_loss"] for r in m["replicates"]] == [2.0, 2.2]
    assert [r["val_curve"][0]["val_loss"] for r in m["replicates"]] == [3.0, 3.4]
    # one run stays as it was, with its one replicate listed
    one = merge([a], skip_steps=1)
    assert one["step_s"] == a["step_s"] and one["val_curve"] == a["val_curve"] and len(one["replicates"]) == 1
    with pytest.raises(ValueError, match="different steps"):
        merge([a, _run(2, [(10, 1.0, 3.0)], [0.1])], skip_steps=1)
    with pytest.raises(ValueError):
        merge([], skip_steps=0)


def _row(config: str, ttt: float | None, gap: dict | None = None, bits: tuple[float, float] = (32.0, 32.0),
         rate: str = "100mbit") -> dict:
    return {"bandwidth": rate, "config": config, "time_to_target_s": ttt, "final_gap_vs_fp32": gap,
            "bits_fwd": bits[0], "bits_bwd": bits[1]}


def test_headline_targets_by_rate() -> None:
    assert targets_for("100mbit").vs_fp32 == 5.0 and targets_for("100Mbit/s").vs_bf16 == 2.5
    assert targets_for("1gbit").vs_fp32 == 2.0 and targets_for("1gbit").loss_gap is None
    assert (targets_for("100mbit").bits_fwd, targets_for("100mbit").bits_bwd) == (3.0, 6.0)
    assert targets_for("1gbit").bits_fwd is None
    assert targets_for("unshaped") is None and targets_for("10mbit") is None


def test_headline_verdict_met_not_met_and_undecided() -> None:
    good = spread([0.001, -0.002, 0.003, 0.0])
    rows = [_row("fp32", 60.0), _row("bf16", 30.0), _row("plan", 10.0, good, (2.99, 4.27))]
    v = verdict(rows, "100mbit")
    assert v["met"] is True and [c["met"] for c in v["checks"]] == [True, True, True, True, True]
    assert v["checks"][0]["value"] == pytest.approx(6.0) and v["checks"][1]["value"] == pytest.approx(3.0)
    # too slow against bf16, too many bits: not met
    rows[1] = _row("bf16", 20.0)
    rows[2] = _row("plan", 10.0, good, (4.27, 4.27))
    v = verdict(rows, "100mbit")
    assert v["met"] is False and [c["met"] for c in v["checks"]] == [True, False, True, False, True]
    # a gap whose two standard errors straddle +1 %: undecided; one seed: undecided; clearly worse: not met
    rows = [_row("fp32", 60.0), _row("bf16", 30.0), _row("plan", 10.0, spread([0.0, 0.02]), (3.0, 4.0))]
    assert verdict(rows, "100mbit")["checks"][2]["met"] is None and verdict(rows, "100mbit")["met"] is None
    rows[2]["final_gap_vs_fp32"] = spread([0.002])
    check = verdict(rows, "100mbit")["checks"][2]
    assert check["met"] is None and "one seed" in check["why"]
    rows[2]["final_gap_vs_fp32"] = spread([0.05, 0.06, 0.055])
    assert verdict(rows, "100mbit")["checks"][2]["met"] is False
    # the plan never reached the target: not met; fp32 never did: undecided
    rows[2]["time_to_target_s"] = None
    assert verdict(rows, "100mbit")["checks"][0]["met"] is False
    rows[0]["time_to_target_s"], rows[2]["time_to_target_s"] = None, 10.0
    assert verdict(rows, "100mbit")["checks"][0]["met"] is None
    # 1 Gbit/s has only the fp32 speed-up and the bits; no plan row or another rate: no verdict
    g = [_row("fp32", 20.0, rate="1gbit"), _row("plan", 8.0, None, (3.0, 6.0), rate="1gbit")]
    v = verdict(g, "1gbit")
    assert [c["name"] for c in v["checks"]] == ["time to target vs fp32"]
    assert v["met"] is True
    assert verdict(g[:1], "1gbit") is None and verdict(g, "unshaped") is None
    text = "\n".join(lines(v))
    assert "headline at 1gbit: met" in text and "2.50x" in text
