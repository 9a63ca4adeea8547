"""The e2e benchmark's bookkeeping, without a testbed: traffic per step from the stages' counters, the target and
time to target, settings validation, the table and the plot. Runs anywhere (no root)."""

from __future__ import annotations

import argparse

import pytest

from layeredge_dist.bench.e2e import (E2ESettings, _base_config, _finish_rows, _traffic, add_arguments, format_rows,
                                      run_overrides)
from layeredge_dist.types import Direction, EdgeId, EdgeStats, TensorRole


def _stat(src: int, dst: int, role: TensorRole, direction: Direction, elements: int, wire: int) -> EdgeStats:
    return EdgeStats(EdgeId.parse(f"s{src}->s{dst}"), role, direction, "x", elements, elements * 4, wire, 0.0, 0.0, 0.0)


def test_traffic_counts_training_bytes_per_step_and_bits() -> None:
    steps, n = 10, 1000  # elements per step and cut
    A, G = TensorRole.ACTIVATION, TensorRole.GRADIENT
    stats = [
        # forward: training (10 x n) plus validation (5 x n) activations, 4 bits per element
        _stat(0, 1, A, Direction.SEND, 15 * n, 15 * n // 2),
        _stat(1, 2, A, Direction.SEND, 15 * n, 15 * n // 2),
        _stat(0, 1, A, Direction.RECV, 15 * n, 15 * n // 2),  # receivers do not count twice
        # backward: training only, 8 bits per element
        _stat(1, 0, G, Direction.SEND, steps * n, steps * n),
        _stat(2, 1, G, Direction.SEND, steps * n, steps * n),
        # the driver's host endpoint (pseudo-stage 3) is not an inter-stage edge
        _stat(3, 0, A, Direction.SEND, 99 * n, 99 * n),
        _stat(2, 3, A, Direction.SEND, 99 * n, 99 * n),
    ]
    t = _traffic(stats, stages=3, steps=steps)
    assert t["bits_fwd"] == pytest.approx(4.0) and t["bits_bwd"] == pytest.approx(8.0)
    assert set(t["bytes_per_step_per_edge"]) == {"s0->s1", "s1->s2"}
    e = t["bytes_per_step_per_edge"]["s0->s1"]
    assert e["forward"] == pytest.approx(n / 2) and e["backward"] == pytest.approx(n)  # validation excluded
    assert t["bytes_per_step"] == pytest.approx(2 * (n / 2 + n))


def _run(config: str, curve: list[tuple[int, float, float]], step_s: float = 0.3) -> dict:
    return {"config": config, "step_s": step_s, "final_val_loss": curve[-1][2], "bits_fwd": 32.0, "bits_bwd": 32.0,
            "bytes_per_step": 1e6, "bytes_per_step_per_edge": {}, "val_curve": [
                {"step": s, "train_s": t, "wall_s": t, "val_loss": v} for s, t, v in curve]}


def test_target_is_fp32_at_the_fraction_and_time_to_target() -> None:
    s = E2ESettings(steps=100, eval_every=20, target_frac=0.6)
    fp32 = _run("fp32", [(20, 4.0, 3.5), (40, 8.0, 3.3), (60, 12.0, 3.1), (80, 16.0, 3.0), (100, 20.0, 2.9)])
    fast = _run("plan", [(20, 2.0, 3.6), (40, 4.0, 3.2), (60, 6.0, 3.05), (80, 8.0, 3.0), (100, 10.0, 2.95)])
    never = _run("strong", [(20, 1.0, 3.6), (100, 5.0, 3.2)])
    target, rows = _finish_rows([fp32, fast, never], s, "100mbit", 95.0)
    assert target["loss"] == 3.1 and "step 60" in target["source"]
    by = {r["config"]: r for r in rows}
    assert by["fp32"]["time_to_target_s"] == 12.0
    assert by["plan"]["time_to_target_s"] == 6.0  # first evaluation at or below 3.1
    assert by["strong"]["time_to_target_s"] is None
    assert all(r["bandwidth"] == "100mbit" and r["bandwidth_measured_mbit"] == 95.0 for r in rows)
    # an explicit target wins; without fp32 and without one there is none
    target, rows = _finish_rows([fast], E2ESettings(steps=100, target_loss=3.3), "1gbit", 900.0)
    assert target["loss"] == 3.3 and rows[0]["time_to_target_s"] == 4.0
    target, rows = _finish_rows([fast], s, "1gbit", 900.0)
    assert target["loss"] is None and rows[0]["time_to_target_s"] is None
    result = {"rates": {"100mbit": {"bandwidth_measured_mbit": 95.0, "probe": None}},
              "targets": {"100mbit": {"loss": 3.1, "source": "x"}}, "plans": {},
              "rows": _finish_rows([fp32, fast], s, "100mbit", 95.0)[1]}
    table = format_rows(result)
    assert "fp32" in table and "plan" in table and "1.00x" in table
    # the plan's verification trial is listed under it, the chosen candidate starred
    codecs = {"s0->s1": {"forward": "klt:3", "backward": "int4/rht/sr"}}
    result["plans"] = {"100mbit": {"cuts": [2], "codecs": codecs, "step_time_s": 0.2, "verification": {
        "budget": 0.03, "chosen": 1, "reason": "the fastest predicted candidate whose trial gap fits the budget",
        "trial": {"steps": 60, "exact": 3.2, "losses": [3.21, 3.22]},
        "candidates": [{"factors": [0.5, 1.0], "cuts": [2], "codecs": {"s0->s1": {"forward": "int8"}},
                        "step_time_s": 0.3, "score": 0.01, "trial_gap": 0.01},
                       {"factors": [2.0, 4.0], "cuts": [2], "codecs": codecs, "step_time_s": 0.2, "score": 0.05,
                        "trial_gap": 0.02}]}}}
    lines = format_rows(result).splitlines()
    assert any("candidates trained 60 steps" in t for t in lines)
    assert any(t.strip().startswith("* budget x 2,4") and "klt:3 | int4/rht/sr" in t and "+0.0200" in t
               for t in lines)
    assert any(t.strip().startswith("budget x 0.5,1") and "int8 | fp32" in t for t in lines)


def test_rows_of_runs_merged_over_seeds_pair_each_seed_with_fp32() -> None:
    """With --seeds the row is judged on its mean curve; each seed has its own target (fp32 of that seed), its own
    time to target and its gap to that run; the row's gap is their spread; the table shows mean ± one SE."""
    from layeredge_dist.bench.replicates import merge

    s = E2ESettings(steps=40, eval_every=20, target_frac=0.5, seeds=2)
    fp32 = [_run("fp32", [(20, 2.0, 3.0), (40, 4.0, 2.0)]), _run("fp32", [(20, 2.0, 3.2), (40, 4.0, 2.4)])]
    plan = [_run("plan", [(20, 1.0, 2.9), (40, 2.0, 2.02)]), _run("plan", [(20, 1.0, 3.3), (40, 2.0, 2.28)])]
    for r in fp32 + plan:
        r["step_seconds"] = [r["step_s"]] * 5
    runs = [{"config": c, **merge(rs, 3)} for c, rs in (("fp32", fp32), ("plan", plan))]
    target, rows = _finish_rows(runs, s, "100mbit", 95.0)
    assert target["loss"] == pytest.approx(3.1)  # fp32's mean curve at step 20
    by = {r["config"]: r for r in rows}
    assert by["plan"]["time_to_target_s"] == 1.0 and by["plan"]["final_val_loss"] == pytest.approx(2.15)
    reps = by["plan"]["replicates"]
    assert [r["time_to_target_s"] for r in reps] == [1.0, 2.0]  # seed 1's own target is 3.2: reached at step 40
    assert [r["final_gap_vs_fp32"] for r in reps] == pytest.approx([0.01, -0.05])
    gap = by["plan"]["final_gap_vs_fp32"]
    assert gap["n"] == 2 and gap["mean"] == pytest.approx(-0.02) and gap["se"] == pytest.approx(0.03)
    assert by["fp32"]["final_gap_vs_fp32"]["mean"] == 0.0
    table = format_rows({"rates": {"100mbit": {"bandwidth_measured_mbit": 95.0, "probe": None}},
                         "targets": {"100mbit": target}, "plans": {}, "rows": rows})
    assert "-2.0%±3.0" in table and "once per seed (2 seeds)" in table
    # a run without replicates (an older result) still gets its gap to fp32
    _, rows = _finish_rows([_run("fp32", [(40, 4.0, 2.0)]), _run("bf16", [(40, 4.0, 2.1)])], s, "1gbit", 900.0)
    assert rows[1]["final_gap_vs_fp32"]["mean"] == pytest.approx(0.05) and "replicates" not in rows[1]


def test_settings_and_cli_options() -> None:
    with pytest.raises(ValueError):
        E2ESettings(configs=("fp32", "zip"))
    with pytest.raises(ValueError):
        E2ESettings(target_frac=0.0)
    with pytest.raises(ValueError):
        E2ESettings(hosts=1)
    with pytest.raises(ValueError, match="warmup_steps"):
        E2ESettings(steps=10, warmup_steps=11)
    with pytest.raises(ValueError, match="verify_steps"):
        E2ESettings(verify_steps=-1)
    with pytest.raises(ValueError, match="seeds"):
        E2ESettings(seeds=0)
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert p.parse_args([]).seeds == 1 and p.parse_args(["--seeds", "3"]).seeds == 3


def test_out_file_is_checked_before_the_run(tmp_path, capsys) -> None:  # noqa: ANN001
    from layeredge_dist.cli.main import main

    assert main(["bench", "e2e", "--out", str(tmp_path / "missing" / "e2e.json")]) == 2
    assert "--out" in capsys.readouterr().err and not (tmp_path / "missing").exists()


def test_every_configuration_trains_with_one_warmup_and_cosine_recipe_over_the_benchmark_steps() -> None:
    cfg = _base_config(E2ESettings(steps=300))
    t = cfg.train
    assert (t.steps, t.lr_schedule, t.warmup_steps) == (300, "cosine", 30)
    # --set comes last, so a user can still change the recipe
    over = run_overrides(E2ESettings(steps=50, warmup_steps=0, lr_schedule="constant",
                                     overrides=("train.lr=0.001",)))
    cfg = _base_config(E2ESettings(steps=50, warmup_steps=0, lr_schedule="constant", overrides=("train.lr=0.001",)))
    assert over[-1] == "train.lr=0.001"
    assert (cfg.train.steps, cfg.train.lr_schedule, cfg.train.warmup_steps, cfg.train.lr) == (50, "constant", 0, 0.001)
    with pytest.raises(ValueError, match="host_calib_steps"):
        E2ESettings(host_calib_steps=2)  # not more than the warm-up steps the median skips
    assert E2ESettings(host_calib_steps=0).host_calib_steps == 0
    from layeredge_dist.bench import output

    p = argparse.ArgumentParser()
    add_arguments(p)
    output.add_arguments(p)  # the CLI adds --json and --out to every benchmark
    a = p.parse_args(["--rates", "100mbit,unshaped", "--steps", "20", "--target-loss", "3.0", "--json",
                      "--host-calib-steps", "8"])
    assert a.rates == "100mbit,unshaped" and a.steps == 20 and a.target_loss == 3.0 and a.json
    assert a.host_calib_steps == 8
    from layeredge_dist.cli.main import BENCHES

    assert "e2e" in BENCHES


def test_plot(tmp_path) -> None:  # noqa: ANN001
    pytest.importorskip("matplotlib")
    from layeredge_dist.bench.e2e import plot

    s = E2ESettings(steps=100, eval_every=50)
    runs = [_run("fp32", [(50, 5.0, 3.2), (100, 10.0, 3.0)]), _run("bf16", [(50, 4.0, 3.2), (100, 8.0, 3.0)])]
    for r in runs:
        r["bytes_per_step_per_edge"] = {"s0->s1": {"forward": 5e5, "backward": 5e5}}
    target, rows = _finish_rows(runs, s, "100mbit", 95.0)
    result = {"rates": {"100mbit": {}}, "targets": {"100mbit": target}, "rows": rows}
    out = plot(result, str(tmp_path / "e2e.png"))
    assert (tmp_path / "e2e.png").stat().st_size > 10_000 and out.endswith("e2e.png")
    # merged over seeds: the mean curve with the seeds' range as a band
    from layeredge_dist.bench.replicates import merge

    seeds = [_run("fp32", [(50, 5.0, 3.2), (100, 10.0, 3.0)]), _run("fp32", [(50, 5.0, 3.4), (100, 10.0, 2.9)])]
    for r in seeds:
        r.update(step_seconds=[0.3] * 5, bytes_per_step_per_edge={"s0->s1": {"forward": 5e5, "backward": 5e5}})
    target, rows = _finish_rows([{"config": "fp32", **merge(seeds, 3)}], s, "100mbit", 95.0)
    plot({"rates": {"100mbit": {}}, "targets": {"100mbit": target}, "rows": rows}, str(tmp_path / "seeds.png"))
    assert (tmp_path / "seeds.png").stat().st_size > 10_000


def test_repredict_recovers_the_host_model_that_made_the_measurements(tmp_path) -> None:  # noqa: ANN001
    """``bench e2e --from-json``: steps generated by a known host model on the testbed's topology (star, tbf
    buckets) are predicted exactly again -- by the model fitted on the calibration runs and leave-one-out."""
    import json

    from dataclasses import asdict

    from layeredge_dist.bench.e2e import _base_config, _cluster_from_probe_dict, repredict
    from layeredge_dist.bench.simulator import host_prediction
    from layeredge_dist.cli.main import main
    from layeredge_dist.config import with_overrides
    from layeredge_dist.plan import HostModel, ModelProfile

    settings = E2ESettings(rates=("100mbit", "1gbit"))
    cfg = _base_config(settings)
    profile = ModelProfile.from_numbers([0.002] * 6, [0.004] * 6, [32_768] * 5, micro_batches=4)
    opt = [0.0005] * 6
    speeds = {"fp32": [2e10, 2e10], "bf16": [5e9, 5e9], "int4/rht": [2e8, 2.5e8], "ef(int8)": [4e8, 1.4e9]}
    truth = HostModel(cores=2, message_overhead_s=0.001, step_overhead_s=0.005, compute_scale=1.3)
    probe = {"s0->s1": {"bandwidth_Bps": 11.7e6, "rtt_s": 0.001}, "s1->s2": {"bandwidth_Bps": 11.7e6, "rtt_s": 0.001}}
    fast = {k: dict(v, bandwidth_Bps=115e6) for k, v in probe.items()}

    def step(config: str, rate: str, p: dict) -> tuple[list[str], float]:
        over = {"fp32": ["codecs.forward=fp32", "codecs.backward=fp32"],
                "bf16": ["codecs.forward=bf16", "codecs.backward=bf16"],
                "strong": ["codecs.forward=int4/rht", "codecs.backward=ef(int8)"]}[config]
        cl = _cluster_from_probe_dict(p, 3, rate)
        return over, host_prediction(with_overrides(cfg, over), profile, opt, cl, speeds, truth)

    rows, cal = [], []
    for rate, p in (("100mbit", probe), ("1gbit", fast)):
        for config in ("fp32", "bf16", "strong"):
            over, s = step(config, rate, p)
            rows.append({"bandwidth": rate, "config": config, "overrides": over, "step_s": s, "prediction": {}})
    for rate, p in (("unshaped", fast), ("100mbit", probe)):
        for config in ("fp32", "strong"):
            over, s = step(config, rate, p)
            cal.append({"rate": rate, "config": config, "overrides": over, "step_s": s, "probe": p})
    result = {"settings": asdict(settings), "profile": {"profile": profile.to_dict(), "opt_s": opt},
              "codec_speeds_Bps": speeds, "rows": rows,
              "rates": {"100mbit": {"probe": probe}, "1gbit": {"probe": fast}},
              "host_calibration": {"steps": 15, "runs": cal}}
    out = repredict(json.loads(json.dumps(result)))
    assert HostModel.from_dict(out["host_calibration"]["host"]) == truth
    assert out["host_calibration"]["max_rel_error"] < 1e-9
    for r in out["rows"]:
        assert abs(r["prediction"]["rel_error_host"]) < 1e-9 and abs(r["prediction"]["rel_error_host_cv"]) < 1e-9
    with pytest.raises(ValueError, match="no profile"):
        repredict(dict(result, profile=None))
    path = tmp_path / "e2e.json"
    path.write_text(json.dumps(result))
    assert main(["bench", "e2e", "--from-json", str(path), "--json"]) == 0
    assert main(["bench", "e2e", "--from-json", str(tmp_path / "missing.json")]) == 2


def test_a_failed_rate_keeps_the_rates_that_finished(monkeypatch, tmp_path, capsys) -> None:  # noqa: ANN001
    """A driver failure ends only its rate: the other rates run, their rows are printed and written to --out, the
    error is kept under ``errors`` and the command exits 1. The testbed, Ray and the drivers are stand-ins here
    (the real ones run in tests/testbed/test_testbed_e2e.py); what is tested is the orchestration around them."""
    import json
    from contextlib import contextmanager
    from types import SimpleNamespace

    from layeredge_dist.bench import e2e, testbed_job
    from layeredge_dist.cli.main import main
    from layeredge_dist.testbed import bandwidth, netns, parse_rate

    class Testbed:
        rate = ""
        work_dir = str(tmp_path)

        def set_rate(self, rate: str) -> None:
            self.rate = parse_rate(rate).label

    @contextmanager
    def testbed_with_ray(hosts, rate, cpus, timeout_s, log):  # noqa: ANN001, ANN202
        yield Testbed(), SimpleNamespace(address="10.0.0.1:6379"), {"hosts": []}

    driven = []
    path = tmp_path / "e2e.json"

    def run_driver(nodes, job, timeout_s, progress):  # noqa: ANN001, ANN202
        driven.append(job["rate"])
        if job["rate"] == "100mbit":  # what the rates before wrote is already on disk
            before = json.loads(path.read_text())
            assert before["partial"] is True and not before["rows"]
            assert before["errors"] == {"1gbit": "the driver for 1gbit exited with code 1: boom"}
        if job["rate"] == "10mbit":  # a finished rate was saved before the next one started
            assert {r["bandwidth"] for r in json.loads(path.read_text())["rows"]} == {"100mbit"}
        if job["rate"] == "1gbit":
            raise e2e.E2EError("the driver for 1gbit exited with code 1: boom")
        curve = [(10, 1.0, 3.0), (20, 2.0, 2.5)]
        return {"runs": [_run("fp32", curve), _run("bf16", curve, step_s=0.2)], "probe": None, "plan": None,
                "seconds": 3.0}

    monkeypatch.setattr(netns, "require_tools", lambda: None)
    monkeypatch.setattr(bandwidth, "measure_bandwidth", lambda tb, a, b, seconds: SimpleNamespace(mbit_per_s=95.0))
    monkeypatch.setattr(testbed_job, "testbed_with_ray", testbed_with_ray)
    monkeypatch.setattr(e2e, "_run_driver", run_driver)
    argv = ["bench", "e2e", "--rates", "1gbit,100mbit,10mbit", "--configs", "fp32,bf16", "--steps", "20", "--out", str(path)]
    assert main(argv) == 1
    assert driven == ["1gbit", "100mbit", "10mbit"]  # the failure did not stop the next rates
    doc = json.loads(path.read_text())
    assert doc["errors"] == {"1gbit": "the driver for 1gbit exited with code 1: boom"} and "partial" not in doc
    assert [(r["bandwidth"], r["config"]) for r in doc["rows"]] == [
        ("100mbit", "fp32"), ("100mbit", "bf16"), ("10mbit", "fp32"), ("10mbit", "bf16")]
    captured = capsys.readouterr()
    assert "FAILED 1gbit: the driver for 1gbit exited with code 1: boom" in captured.out
    assert "100mbit    bf16" in captured.out and "layeredge bench e2e: 1gbit:" in captured.err
