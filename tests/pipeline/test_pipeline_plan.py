"""``layeredge plan``: a measured profile of a tiny model (every block boundary, every codec), plans under an
accuracy and a time budget with their baselines, a fast what-if on a 64-node cluster, the plot, and errors."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from layeredge_dist.cli.main import main
from layeredge_dist.config import RunConfig, with_overrides
from layeredge_dist.plan import ModelProfile, Plan

#: 4 blocks of d_model 32, 8 x 32 bytes per step in 4 micro-batches.
TINY_SETS = ["model.config.n_layer=4", "model.config.d_model=32", "model.config.n_head=2", "model.config.context=32",
             "data.context=32", "data.batch_size=8", "data.corpus_bytes=400000"]
TINY = [arg for s in TINY_SETS for arg in ("--set", s)]
CODECS = ("fp16", "bf16", "int8", "int4", "int2")


@pytest.fixture(scope="module")
def profile_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's profile, measured once (5 training steps, 1 calibration batch) and saved as JSON."""
    from layeredge_dist.pipeline.planning import measure

    cfg = with_overrides(RunConfig(), TINY_SETS)
    meas = measure(cfg, 1, 5, CODECS, reps=3, optimizer=True)
    path = tmp_path_factory.mktemp("plan") / "tiny.json"
    path.write_text(meas.profile.to_json())
    assert len(meas.opt_s) == 4 and all(t > 0 for t in meas.opt_s)
    return path


def _doc(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


def test_measured_profile(profile_file: Path) -> None:
    prof = ModelProfile.from_json(profile_file.read_text())
    assert prof.n_blocks == 4 and prof.micro_batches == 4 and prof.tokens_per_micro_batch == 2 * 32
    assert prof.elements == (2 * 32 * 32,) * 3  # (B/m, T, C) per micro-batch at every boundary
    assert all(b.fwd_s > 0 and b.bwd_s > 0 and b.params_bytes > 0 for b in prof.blocks)
    # embeddings folded into block 0, head into block 3: both hold more parameters than a middle block
    assert prof.blocks[0].params_bytes > prof.blocks[1].params_bytes == prof.blocks[2].params_bytes
    assert prof.blocks[3].params_bytes > prof.blocks[2].params_bytes
    for source in ("sensitivity", "proxy"):
        table = getattr(prof, source)
        assert set(table) == {0, 1, 2}
        for b in range(3):
            for d in ("forward", "backward"):
                vals = table[b][d]
                assert set(vals) == set(CODECS) and all(v >= 0 for v in vals.values())
                assert vals["int2"] > vals["int8"] > vals["fp16"], (source, b, d, vals)


def test_plan_meets_budget_and_beats_uniform(capsys: pytest.CaptureFixture[str], profile_file: Path,
                                             tmp_path: Path) -> None:
    budget = 0.01
    saved = tmp_path / "again.json"
    doc = _doc(capsys, ["plan", *TINY, "--nodes", "2", "--bandwidth", "100Mbit", "--budget", str(budget),
                        "--calib-steps", "5", "--calib-batches", "1", "--profile-out", str(saved), "--json"])
    plan = Plan.from_dict(doc["plan"])
    assert plan.num_stages == 2 and len(plan.cuts) == 1 and plan.budget == budget
    assert plan.total_sensitivity <= budget * (1 + 1e-9)
    base = doc["baselines"]
    assert set(base) == {"fp32", "best_uniform"}
    assert plan.step_time_s <= base["best_uniform"]["step_time_s"] * (1 + 1e-9)
    assert base["best_uniform"]["total_sensitivity"] <= budget * (1 + 1e-9)
    assert plan.step_time_s < base["fp32"]["step_time_s"]
    assert plan.prediction.bytes_per_step < base["fp32"]["bytes_per_step"] and base["fp32"]["plan_bytes_ratio"] > 1
    # the overrides apply to the run config as they are printed
    cfg = plan.apply(with_overrides(RunConfig(), TINY_SETS))
    assert cfg.pipeline.stages == 2 and tuple(cfg.pipeline.cuts) == plan.cuts
    assert {k: dict(v) for k, v in cfg.codecs.edges.items()} == plan.codecs_dict()
    assert doc["apply"] == plan.overrides() and doc["apply_command"].startswith("layeredge train --set ")
    assert ModelProfile.from_json(saved.read_text()).n_blocks == 4


def test_text_time_budget_and_plot(capsys: pytest.CaptureFixture[str], profile_file: Path, tmp_path: Path) -> None:
    png = tmp_path / "plan.png"
    rc = main(["plan", "--profile", str(profile_file), "--nodes", "3", "--bandwidth", "100Mbit,10Mbit",
               "--latency", "1ms", "--budget", "0.02", "--plot", str(png)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "Plan for" in out and "best_uniform" in out and "fp32" in out and "apply with:" in out
    assert "layeredge train --set pipeline.stages=3" in out and "'codecs.edges.s1->s2.forward=" in out
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    # the dual objective: least sensitivity within a time budget (between the fastest and fp32's step)
    fp32 = _doc(capsys, ["plan", "--profile", str(profile_file), "--nodes", "3", "--bandwidth", "10Mbit",
                         "--budget", "0", "--json"])["baselines"]["fp32"]["step_time_s"]
    doc = _doc(capsys, ["plan", "--profile", str(profile_file), "--nodes", "3", "--bandwidth", "10Mbit",
                        "--time-budget", str(0.7 * fp32), "--json"])
    assert doc["objective"] == "loss"
    plan = Plan.from_dict(doc["plan"])
    assert plan.objective == "min_loss_under_time" and plan.step_time_s <= 0.7 * fp32 * (1 + 1e-9)
    assert 0 < plan.total_sensitivity
    assert main(["plan", "--profile", str(profile_file), "--nodes", "3", "--bandwidth", "10Mbit",
                 "--time-budget", "1e-6"]) == 1
    assert "infeasible" in capsys.readouterr().err


def test_what_if_64_nodes_is_fast(capsys: pytest.CaptureFixture[str], profile_file: Path) -> None:
    t0 = time.perf_counter()
    doc = _doc(capsys, ["plan", "--profile", str(profile_file), "--what-if", "--nodes", "64", "--bandwidth", "1Gbit",
                        "--budget", "0.05", "--json"])
    elapsed = time.perf_counter() - t0
    assert elapsed < 5.0, elapsed
    plan = Plan.from_dict(doc["plan"])
    assert plan.num_stages == 64 and doc["profile"]["n_blocks"] == 64 and plan.objective == "what_if"
    assert plan.total_sensitivity <= 0.05 * (1 + 1e-9)
    assert plan.step_time_s <= doc["baselines"]["best_uniform"]["step_time_s"] * (1 + 1e-9)
    t0 = time.perf_counter()
    doc = _doc(capsys, ["plan", "--profile", str(profile_file), "--what-if", "--nodes", "64", "--bandwidth", "1Gbit",
                        "--blocks", "512", "--budget", "0.05", "--json"])
    assert time.perf_counter() - t0 < 5.0
    assert doc["profile"]["n_blocks"] == 512 and len(doc["plan"]["cuts"]) == 63


def test_bad_arguments(capsys: pytest.CaptureFixture[str], profile_file: Path) -> None:
    for bad in ("100Mb/s", "fast", "100Mbit,", "1Gbit,2Gbit,3Gbit"):
        assert main(["plan", "--profile", str(profile_file), "--nodes", "3", "--bandwidth", bad]) == 2
        assert "bandwidth" in capsys.readouterr().err
    assert main(["plan", "--profile", str(profile_file), "--nodes", "3", "--latency", "soon"]) == 2
    assert "duration" in capsys.readouterr().err
    assert main(["plan", "--profile", str(profile_file), "--nodes", "8"]) == 2
    assert "--what-if" in capsys.readouterr().err
    assert main(["plan", *TINY, "--nodes", "8"]) == 2  # refused before measuring anything
    assert "4 blocks" in capsys.readouterr().err
    assert main(["plan", "--profile", str(profile_file), "--codecs", "int9"]) == 2
    assert main(["plan", "--profile", str(profile_file), "--objective", "loss"]) == 2
    assert "--time-budget" in capsys.readouterr().err
    assert main(["plan", "--profile", str(profile_file), "--budget", "-1"]) == 2
    assert main(["plan", "--profile", str(profile_file) + ".missing"]) == 2


def test_scale_profile() -> None:
    from layeredge_dist.pipeline.planning import scale_profile, what_if_blocks

    prof = ModelProfile.from_numbers([3.0, 1.0, 2.0, 5.0], [6.0, 2.0, 4.0, 9.0], [10, 20, 30],
                                     params_bytes=[7, 1, 2, 8],
                                     sensitivity={0: {"forward": {"int8": 0.1}}, 1: {"forward": {"int8": 0.2}},
                                                  2: {"forward": {"int8": 0.3}}})
    assert what_if_blocks(prof, 64) == 64 and what_if_blocks(prof, 3) == 4 and what_if_blocks(prof, 6) == 8
    rep = scale_profile(prof, 8)
    assert [b.fwd_s for b in rep.blocks] == [3.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 5.0]
    assert rep.elements == (10, 20, 30, 10, 20, 30, 10)
    assert rep.score(4, "forward", "int8") == 0.2 and rep.score(6, "forward", "int8") == 0.1
    uni = scale_profile(prof, 6, "uniform")
    assert [b.fwd_s for b in uni.blocks] == [3.0, 1.5, 1.5, 1.5, 1.5, 5.0]
    assert uni.elements == (20,) * 5 and uni.score(3, "forward", "int8") == 0.2
    assert sum(b.params_bytes for b in uni.blocks) == 7 + 4 * 1 + 8
    with pytest.raises(ValueError):
        scale_profile(prof, 1)


def test_trial_calibrated_profile() -> None:
    """``trial_steps`` turns both directions' scores into validation-loss gaps: on the run's cuts a uniform codec
    sums to its measured gap, the shape over boundaries is the one-shot table's, and lossless codecs cost 0."""
    from layeredge_dist.pipeline.planning import measure

    cfg = with_overrides(RunConfig(), TINY_SETS + ["pipeline.stages=2"])
    lines: list[str] = []
    meas = measure(cfg, 1, 5, ("bf16", "int8", "int2"), reps=1, proxies=False, trial_steps=4, trial_batches=2,
                   log=lines.append)
    trial = meas.trial
    assert trial is not None and trial.steps == 4 and any("trial" in t for t in lines)
    prof = meas.profile
    run_boundary = 1  # 4 blocks in 2 stages: cut at block 2, boundary 1
    for d in ("forward", "backward"):
        for spec in ("bf16", "int8", "int2"):
            gap = max(trial.gap(d, spec), 0.0)
            assert prof.score(run_boundary, d, spec, "sensitivity") == pytest.approx(gap, abs=1e-12)
            assert all(prof.score(k, d, spec, "sensitivity") >= 0 for k in range(3))
    assert meas.seconds["trial"] > 0
    one_shot = measure(cfg, 1, 5, ("int2",), reps=1, proxies=False)
    ratio = [prof.score(k, "forward", "int2", "sensitivity") / one_shot.profile.score(k, "forward", "int2",
                                                                                          "sensitivity")
             for k in range(3) if one_shot.profile.score(k, "forward", "int2", "sensitivity")]
    if max(trial.gap("forward", "int2"), 0.0) > 0:
        assert max(ratio) == pytest.approx(min(ratio), rel=1e-9)  # one factor for every boundary


def test_directions_restrict_the_codecs_per_direction() -> None:
    """``directions`` keeps only the allowed (direction, codec) scores; the planner may then use nothing else."""
    from layeredge_dist.pipeline.planning import choose_plan, measure

    cfg = with_overrides(RunConfig(), TINY_SETS + ["pipeline.stages=2"])
    meas = measure(cfg, 1, 2, ("int8", "int2", "ef(int2)"), reps=1, proxies=False,
                   directions={"forward": ["int2"], "backward": ["ef(int2)"]})
    prof = meas.profile
    for k in range(prof.n_boundaries):
        assert prof.score(k, "forward", "int2") is not None and prof.score(k, "forward", "int8") is None
        assert prof.score(k, "backward", "ef(int2)") is not None and prof.score(k, "backward", "int2") is None
    plan, _ = choose_plan(prof, 2, "1Mbit", ["int8", "int2", "ef(int2)"], budget=1e9)  # a slow link: compress
    for dirs in plan.codecs_dict().values():
        assert dirs == {"forward": "int2", "backward": "ef(int2)"}


def test_measure_speeds_times_error_feedback() -> None:
    """ef(...) is timed with its state (it used to fall back to the 64 MiB table, 3-7x too fast for the small
    tensors of a pipeline); delta(...) still uses the built-in estimate; fp32 is a copy."""
    from layeredge_dist.pipeline.planning import measure_speeds

    got = measure_speeds(["fp32", "int8", "ef(int8)", "delta(int8)"], 4096, reps=2)
    assert set(got) == {"fp32", "int8", "ef(int8)"}
    for enc, dec in got.values():
        assert enc > 0 and dec > 0
    with pytest.raises(ValueError):
        measure_speeds(["int8"], 0)


def test_measure_speeds_times_klt_on_its_transform_path() -> None:
    """With the edge's feature width, the timing input has correlated rows, so klt runs its transform (a flat
    Gaussian tensor would time its int/rht fallback instead)."""
    from layeredge_dist.codecs import parse_codec
    from layeredge_dist.pipeline.planning import correlated_rows, measure_speeds

    rows = correlated_rows(512, 64, torch.Generator().manual_seed(0))
    klt = parse_codec("klt:2")
    assert rows.shape == (512, 64) and int(klt.encode(rows).payload[0]) == 1  # transform mode
    assert int(klt.encode(rows.reshape(-1)).payload[0]) == 2  # flat: the fallback
    got = measure_speeds(["klt:2", "ef(klt:2)"], 512 * 64, reps=1, width=64)
    assert set(got) == {"klt:2", "ef(klt:2)"} and all(e > 0 and d > 0 for e, d in got.values())


class _Gaps:
    """A stand-in for a trial's result: the selection logic is under test here, the trials themselves in
    tests/measure/test_measure_trial.py and below."""

    def __init__(self, gaps: list[float]) -> None:
        self.values, self.steps = gaps, 7

    def gap(self, i: int) -> float:
        return self.values[i]

    def gaps(self, i: int) -> tuple[float, ...]:
        return (self.values[i],)

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "losses": self.values}


def _toy_profile() -> ModelProfile:
    sens = {b: {"forward": {"int8": 0.01, "int4": 0.05}, "backward": {"int8": 0.005}} for b in range(5)}
    return ModelProfile.from_numbers([0.001] * 6, [0.002] * 6, [100_000] * 5, params_bytes=1_000_000,
                                     sensitivity=sens, micro_batches=4, tokens_per_micro_batch=256, name="toy")


def test_choose_verified_plan_holds_the_measured_gap_to_the_budget() -> None:
    """Candidates come from budget x factors; the fastest whose trial gap fits wins even when its additive score
    does not; when the additive plan fails its trial a tighter one is taken; when none fits, the smallest gap;
    when the bf16 control moves the loss by more than the budget, the additive plan is kept."""
    from layeredge_dist.pipeline.planning import choose_plan, choose_verified_plan

    prof = _toy_profile()
    base, _ = choose_plan(prof, 3, "10Mbit", ["int8", "int4"], budget=0.03)
    seen: list[list[Any]] = []

    def verify_with(gap_of: Any) -> Any:
        def verify(plans: list[Any]) -> Any:
            seen.append(plans)
            return _Gaps([gap_of(p) for p in plans])
        return verify

    def n_int4(p: Any) -> int:
        return sum(v["forward"] == "int4" for v in p.codecs_dict().values())

    def is_control(p: Any) -> bool:
        return all(v == {"forward": "bf16", "backward": "bf16"} for v in p.codecs_dict().values())

    plan, baselines, ver = choose_verified_plan(prof, 3, "10Mbit", ["int8", "int4"], budget=0.03,
                                                verify=verify_with(lambda p: 0.01 - 0.001 * n_int4(p)))
    cands = seen[-1][:len(ver.candidates)]
    assert len(ver.candidates) >= 3  # distinct plans only; 0.5, 1, 2, 4 x the budget
    # then one bf16 control per distinct cuts, trained the same way
    assert [is_control(p) for p in seen[-1]] == [False] * len(cands) + [True] * len(ver.controls)
    assert {tuple(c["cuts"]) for c in ver.controls} == {tuple(p.cuts) for p in cands}
    assert ver.noise == pytest.approx(0.01)
    assert sorted(f for c in ver.candidates for f in c["factors"]) == [0.5, 1.0, 2.0, 4.0]
    fastest = min(cands, key=lambda p: p.step_time_s)
    assert plan.cuts == fastest.cuts and plan.codecs_dict() == fastest.codecs_dict()
    assert n_int4(plan) == 2 and plan.total_sensitivity > 0.031 and base.total_sensitivity < 0.0301  # the sum said no
    assert plan.budget == 0.03 and "checked by a 7-step trial" in plan.notes[-1]
    assert baselines["fp32"].step_time_s > plan.step_time_s
    assert ver.candidates[ver.chosen]["trial_gap"] == pytest.approx(0.008)
    assert any(line.startswith("*") for line in ver.lines()) and any("control" in t for t in ver.lines())
    assert type(ver).from_dict(json.loads(json.dumps(ver.to_dict()))) == ver

    # the additive plan (and everything faster) fails its trial: the tighter candidate is taken
    tight = seen[-1][0]  # budget x 0.5
    plan, _, ver = choose_verified_plan(prof, 3, "10Mbit", ["int8", "int4"], budget=0.03,
                                        verify=verify_with(lambda p: 0.0 if p.total_sensitivity <= 0.015 else 0.2))
    assert plan.codecs_dict() == tight.codecs_dict() and "fits the budget" in ver.reason
    # nothing fits: the smallest measured gap, and the reason says so
    plan, _, ver = choose_verified_plan(prof, 3, "10Mbit", ["int8", "int4"], budget=0.03,
                                        verify=verify_with(lambda p: 0.0 if is_control(p) else 1.0 + n_int4(p)))
    assert n_int4(plan) == 0 and ver.reason.startswith("no candidate")
    # a noisy trial (the control alone moves the loss by more than the budget): the additive plan stays,
    # although a faster candidate measured within the budget
    plan, _, ver = choose_verified_plan(prof, 3, "10Mbit", ["int8", "int4"], budget=0.03,
                                        verify=verify_with(lambda p: -0.05 if is_control(p) else 0.03 - n_int4(p)))
    assert plan.codecs_dict() == base.codecs_dict() and plan.cuts == base.cuts
    assert ver.noise == pytest.approx(0.05) and "cannot resolve" in ver.reason
    # without a control nothing is added and the fastest fitting candidate wins
    plan, _, ver = choose_verified_plan(prof, 3, "10Mbit", ["int8", "int4"], budget=0.03, control=None,
                                        verify=verify_with(lambda p: 0.03 - n_int4(p)))
    assert not ver.controls and ver.noise == 0.0 and n_int4(plan) == 2
    assert len(seen[-1]) == len(ver.candidates)
    with pytest.raises(ValueError, match="include 1"):
        choose_verified_plan(prof, 3, "10Mbit", ["int8"], budget=0.03, verify=verify_with(lambda p: 0.0),
                             factors=(0.5, 2.0))
    with pytest.raises(ValueError, match="budget"):
        choose_verified_plan(prof, 3, "10Mbit", ["int8"], budget=-1.0, verify=verify_with(lambda p: 0.0))


def test_choose_verified_plan_over_seeds_reads_the_controls_spread() -> None:
    """With per-seed trials the gate is the control's |mean| + 2 standard errors: bf16 moving two seeds by +0.05
    and -0.05 averages to 0 but cannot resolve a 0.03 budget, so the additive plan stays; consistent controls pass
    and the fastest candidate whose mean gap fits wins. Per-seed gaps travel with every row."""
    from layeredge_dist.measure.trial import PlanTrialResult
    from layeredge_dist.pipeline.planning import choose_plan, choose_verified_plan

    prof = _toy_profile()
    base, _ = choose_plan(prof, 3, "10Mbit", ["int8", "int4"], budget=0.03)

    def is_control(p: Any) -> bool:
        return all(v == {"forward": "bf16", "backward": "bf16"} for v in p.codecs_dict().values())

    def verify_over(control_gaps: tuple[float, float]) -> Any:
        def verify(plans: list[Any]) -> Any:
            def seed(k: int) -> PlanTrialResult:
                gaps = [control_gaps[k] if is_control(p) else 0.03 - 0.5 * p.total_sensitivity for p in plans]
                return PlanTrialResult(7, 3.0, tuple(3.0 + g for g in gaps), 3.0, tuple(3.0 for _ in gaps))
            return PlanTrialResult.mean([seed(0), seed(1)])
        return verify

    plan, _, ver = choose_verified_plan(prof, 3, "10Mbit", ["int8", "int4"], budget=0.03,
                                        verify=verify_over((0.05, -0.05)))
    assert plan.codecs_dict() == base.codecs_dict() and "cannot resolve" in ver.reason
    assert ver.noise == pytest.approx(0.1)  # |0| + 2 x (0.0707 / sqrt 2)
    assert all(c["trial_gaps"] == [pytest.approx(0.05), pytest.approx(-0.05)] for c in ver.controls)
    plan, _, ver = choose_verified_plan(prof, 3, "10Mbit", ["int8", "int4"], budget=0.03,
                                        verify=verify_over((0.004, 0.006)))
    assert ver.noise == pytest.approx(0.005 + 0.002) and ver.reason.startswith("the fastest")
    fastest = min(ver.candidates, key=lambda c: c["step_time_s"])
    assert plan.codecs_dict() == fastest["codecs"] and len(fastest["trial_gaps"]) == 2
    assert "mean of 2 seeds" in plan.notes[-1]


def test_plan_verify_steps_trains_the_candidates(capsys: pytest.CaptureFixture[str]) -> None:
    """``layeredge plan --verify-steps``: real in-process trials of every candidate plan of the tiny model, the
    chosen one's gap within the budget, the table printed; and the option's misuse is a usage error."""
    doc = _doc(capsys, ["plan", *TINY, "--json", "--nodes", "2", "--bandwidth", "10Mbit", "--codecs", "int8,int2",
                        "--budget", "0.05", "--trial-steps", "4", "--calib-steps", "3", "--verify-steps", "4"])
    ver = doc["verification"]
    assert ver["trial"]["steps"] == 4 and len(ver["candidates"]) >= 1
    assert len(ver["trial"]["losses"]) == len(ver["candidates"]) + len(ver["controls"])  # + one bf16 control
    chosen = ver["candidates"][ver["chosen"]]
    assert chosen["codecs"] == doc["plan"]["codecs"] and chosen["cuts"] == doc["plan"]["cuts"]
    if ver["reason"].startswith("the fastest"):
        assert chosen["trial_gap"] <= 0.05
    assert main(["plan", *TINY, "--verify-steps", "4"]) == 2  # no budget
    assert main(["plan", *TINY, "--verify-steps", "4", "--budget", "0.1", "--verify-seeds", "0"]) == 2
    assert main(["plan", *TINY, "--verify-steps", "4", "--budget", "0.1", "--what-if", "--nodes", "8"]) == 2
    assert "--verify-steps goes with --budget" in capsys.readouterr().err


def test_plan_verify_seeds_averages_real_trials_over_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    """``--verify-seeds 2``: every candidate and control is trained in two reseeded runs (other batches and
    weights, so other exact losses); the gap that decides is the mean of the paired per-seed gaps, and the first
    seed's trial is the single-seed trial exactly."""
    argv = ["plan", *TINY, "--json", "--nodes", "2", "--bandwidth", "10Mbit", "--codecs", "int8,int2",
            "--budget", "0.05", "--calib-steps", "3", "--verify-steps", "3"]
    one = _doc(capsys, argv)["verification"]
    two = _doc(capsys, [*argv, "--verify-seeds", "2"])["verification"]
    reps = two["trial"]["replicates"]
    assert len(reps) == 2 and reps[0]["exact"] != reps[1]["exact"]
    assert reps[0] == one["trial"]  # seed 0 is the base run, bit for bit
    for c in [*two["candidates"], *two["controls"]]:
        assert len(c["trial_gaps"]) == 2 and c["trial_gap"] == pytest.approx(sum(c["trial_gaps"]) / 2)
    assert "trial_gaps" not in one["candidates"][0]
    from layeredge_dist.pipeline.planning import Verification

    lines = Verification.from_dict(two).lines()
    assert all("(mean of 2 seeds: " in line for line in lines[:len(two["candidates"]) + len(two["controls"])])
