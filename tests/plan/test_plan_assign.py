"""Codec per edge and direction: budgets hold, per-edge beats uniform, the searches match brute force."""

from __future__ import annotations

import itertools
import random

import pytest

from layeredge_dist.plan import (ClusterSpec, InfeasibleError, ModelProfile, best_cuts, best_uniform, even_cuts,
                                 min_loss_under_time, min_time_under_budget, plan_from_assignment, plan_jointly,
                                 predict)

CANDIDATES = ("bf16", "int8", "int4")


def _table(values: dict[int, tuple[float, float, float]]) -> dict[int, dict[str, dict[str, float]]]:
    """boundary -> (bf16, int8, int4) scores, the same for both directions."""
    return {b: {d: dict(zip(CANDIDATES, v)) for d in ("forward", "backward")} for b, v in values.items()}


def _sensitive_middle() -> ModelProfile:
    """8 blocks; at the middle cut (boundary 3) int4 hurts a lot, elsewhere it is cheap."""
    sens = _table({b: (0.001, 0.01, 0.5 if b == 3 else 0.02) for b in range(7)})
    return ModelProfile.uniform(8, 0.01, 0.02, 1_000_000, sensitivity=sens, micro_batches=8)


def _random_profile(rng: random.Random, n: int) -> ModelProfile:
    sens = {}
    for b in range(n - 1):
        r = rng.uniform(0.2, 3)
        sens[b] = {"forward": {"bf16": 0.001 * r, "int8": 0.004 * r * rng.uniform(0.5, 2), "int4": 0.03 * r},
                   "backward": {"bf16": 0.001 * r, "int8": 0.002 * r, "int4": 0.02 * r * rng.uniform(0.5, 2)}}
    return ModelProfile.from_numbers([rng.uniform(0.01, 0.05) for _ in range(n)],
                                     [rng.uniform(0.02, 0.1) for _ in range(n)],
                                     [rng.randint(100_000, 3_000_000) for _ in range(n - 1)], sensitivity=sens,
                                     micro_batches=rng.choice([4, 8]))


def _check(a, prof: ModelProfile, budget: float) -> None:
    """The assignment's scores are the profile's, and their sum meets the budget."""
    assert a.total_sensitivity <= budget * (1 + 1e-9)
    total = 0.0
    for k, c in enumerate(a.cuts):
        for d in ("forward", "backward"):
            spec = a.codecs[f"s{k}->s{k + 1}"][d]
            s = prof.score(c - 1, d, spec)
            assert s is not None and a.sensitivity[f"s{k}->s{k + 1}"][d] == s
            total += max(0.0, s)
    assert total == pytest.approx(a.total_sensitivity)


def test_per_edge_beats_the_best_uniform_codec_at_100mbit() -> None:
    prof = _sensitive_middle()
    cluster = ClusterSpec.uniform(4, "100Mbit")
    cuts = (2, 4, 6)
    budget = 0.11
    uni = best_uniform(prof, cuts, cluster, CANDIDATES, budget)
    assert uni.method == "uniform:int8"  # int4 everywhere would spend 1.08
    for limit in (10 ** 6, 0):  # exhaustive, and the heuristic
        a = min_time_under_budget(prof, cuts, cluster, CANDIDATES, budget, exhaustive_limit=limit)
        _check(a, prof, budget)
        print(f"{a.method}: {a.step_time_s:.4f} s vs uniform int8 {uni.step_time_s:.4f} s; {a.codecs_dict()}")
        assert a.step_time_s < uni.step_time_s * 0.97
        assert a.codecs["s0->s1"]["forward"] == "int4" and a.codecs["s1->s2"]["forward"] != "int4"
        assert a.prediction == predict(prof, cuts, a.codecs_dict(), cluster)


def test_exhaustive_is_the_optimum_of_all_combinations() -> None:
    rng = random.Random(4)
    for _ in range(4):
        prof = _random_profile(rng, 5)
        cuts = (2, 3)
        cluster = ClusterSpec.uniform(3, rng.choice(["100Mbit", "1Gbit"]))
        budget = rng.choice([0.005, 0.02, 0.06])
        specs = ("fp32", *CANDIDATES)
        best = None
        for combo in itertools.product(specs, repeat=4):
            codecs = {"s0->s1": {"forward": combo[0], "backward": combo[1]},
                      "s1->s2": {"forward": combo[2], "backward": combo[3]}}
            sens = sum(max(0.0, prof.score(c - 1, d, codecs[f"s{k}->s{k + 1}"][d]))
                       for k, c in enumerate(cuts) for d in ("forward", "backward"))
            if sens <= budget:
                t = predict(prof, cuts, codecs, cluster).step_time_s
                best = t if best is None else min(best, t)
        a = min_time_under_budget(prof, cuts, cluster, CANDIDATES, budget)
        assert a.method == "exhaustive"
        _check(a, prof, budget)
        assert a.step_time_s == pytest.approx(best, rel=1e-12)


def test_budgets_hold_and_per_edge_is_never_slower_than_uniform() -> None:
    rng = random.Random(9)
    for _ in range(12):
        p = rng.choice([3, 4, 6])
        n = p + rng.randint(0, 6)
        prof = _random_profile(rng, n)
        cluster = ClusterSpec.uniform(p, rng.choice(["100Mbit", "1Gbit"]))
        cuts = even_cuts(n, p)
        budget = rng.choice([0.0, 0.003, 0.01, 0.03, 0.1])
        uni = best_uniform(prof, cuts, cluster, CANDIDATES, budget)
        for limit in (20000, 0):
            a = min_time_under_budget(prof, cuts, cluster, CANDIDATES, budget, exhaustive_limit=limit)
            _check(a, prof, budget)
            assert a.step_time_s <= uni.step_time_s * (1 + 1e-12)


def test_unmeasured_codecs_are_not_used_under_a_budget() -> None:
    sens = {1: {"forward": {"int4": 0.0}, "backward": {"int4": 0.0}}}  # int4 measured only at boundary 1
    prof = ModelProfile.uniform(6, 0.01, 0.02, 1_000_000, sensitivity=sens)
    cuts = (2, 4)
    a = min_time_under_budget(prof, cuts, "100Mbit", ["int4", "int8"], 1.0)
    assert a.codecs_dict() == {"s0->s1": {"forward": "int4", "backward": "int4"},
                               "s1->s2": {"forward": "fp32", "backward": "fp32"}}
    free = min_time_under_budget(prof, cuts, "100Mbit", ["int4", "int8"], None)
    assert free.method == "unconstrained"
    assert free.codecs["s1->s2"]["forward"] == "int4"
    assert free.sensitivity["s1->s2"]["forward"] is None
    with pytest.raises(ValueError, match="budget"):
        min_time_under_budget(prof, cuts, "100Mbit", ["int4"], -1.0)


def test_min_loss_under_time_respects_the_time_budget() -> None:
    rng = random.Random(5)
    for _ in range(10):
        p = rng.choice([3, 4])
        n = p + rng.randint(0, 4)
        prof = _random_profile(rng, n)
        cluster = ClusterSpec.uniform(p, "100Mbit")
        cuts = even_cuts(n, p)
        fastest = min_time_under_budget(prof, cuts, cluster, CANDIDATES, 10.0).step_time_s
        slowest = predict(prof, cuts, "fp32", cluster).step_time_s
        limit = rng.uniform(fastest, slowest)
        exact = min_loss_under_time(prof, cuts, cluster, CANDIDATES, limit)
        heur = min_loss_under_time(prof, cuts, cluster, CANDIDATES, limit, exhaustive_limit=0)
        for a in (exact, heur):
            assert a.step_time_s <= limit * (1 + 1e-9)
            assert a.prediction == predict(prof, cuts, a.codecs_dict(), cluster)
        assert exact.method == "exhaustive"
        assert exact.total_sensitivity <= heur.total_sensitivity + 1e-12
        # nothing less sensitive meets the time: every cheaper combination is slower
        if p == 3:
            specs = ("fp32", *CANDIDATES)
            for combo in itertools.product(specs, repeat=4):
                codecs = {"s0->s1": {"forward": combo[0], "backward": combo[1]},
                          "s1->s2": {"forward": combo[2], "backward": combo[3]}}
                sens = sum(max(0.0, prof.score(c - 1, d, codecs[f"s{k}->s{k + 1}"][d]))
                           for k, c in enumerate(cuts) for d in ("forward", "backward"))
                if sens < exact.total_sensitivity - 1e-12:
                    assert predict(prof, cuts, codecs, cluster).step_time_s > limit
    prof = _sensitive_middle()
    with pytest.raises(InfeasibleError, match="fastest"):
        min_loss_under_time(prof, (2, 4, 6), "100Mbit", CANDIDATES, 0.01)
    relaxed = min_loss_under_time(prof, (2, 4, 6), "100Mbit", CANDIDATES, 1e6)
    assert relaxed.total_sensitivity == 0.0  # fp32 everywhere


def test_joint_plan_is_no_worse_than_even_cuts_with_the_best_uniform_codec() -> None:
    rng = random.Random(2)
    for p, n in [(4, 8), (3, 10), (4, 11)]:
        prof = _random_profile(rng, n)
        cluster = ClusterSpec.uniform(p, "100Mbit")
        budget = 0.03
        plan = plan_jointly(prof, p, cluster, CANDIDATES, budget)
        base = best_uniform(prof, even_cuts(n, p), cluster, CANDIDATES, budget)
        fp32_cuts = min_time_under_budget(prof, best_cuts(prof, p, cluster), cluster, CANDIDATES, budget)
        print(f"joint {plan.step_time_s:.4f} s, cuts {plan.cuts}; even + {base.method} {base.step_time_s:.4f} s")
        assert plan.objective == "plan_jointly" and plan.budget == budget
        assert plan.total_sensitivity <= budget * (1 + 1e-9)
        assert plan.step_time_s <= base.step_time_s * (1 + 1e-12)
        assert plan.step_time_s <= fp32_cuts.step_time_s * (1 + 1e-12)
        assert plan.prediction == predict(prof, plan.cuts, plan.codecs_dict(), cluster)
    prof = _sensitive_middle()
    cluster = ClusterSpec.uniform(4, "100Mbit")
    joint = plan_jointly(prof, 4, cluster, CANDIDATES, 0.11)
    assert joint.step_time_s < best_uniform(prof, (2, 4, 6), cluster, CANDIDATES, 0.11).step_time_s


def test_assignment_to_plan() -> None:
    prof = _sensitive_middle()
    a = min_time_under_budget(prof, (2, 4, 6), "100Mbit", CANDIDATES, 0.11)
    plan = plan_from_assignment(prof, a, "100Mbit", budget=0.11)
    assert plan.codecs_dict() == a.codecs_dict() and plan.prediction == a.prediction
    assert plan.total_sensitivity == pytest.approx(a.total_sensitivity)
