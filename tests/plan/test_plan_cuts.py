"""best_cuts: equals brute force on small profiles, balances uniform models."""

from __future__ import annotations

import itertools
import random

import pytest

from layeredge_dist.plan import ClusterSpec, LinkSpec, ModelProfile, best_cuts, bottleneck, stage_costs


def _random_profile(rng: random.Random, n: int) -> ModelProfile:
    return ModelProfile.from_numbers([rng.choice([0.0, rng.uniform(0, 1)]) for _ in range(n)],
                                     [rng.uniform(0, 2) for _ in range(n)],
                                     [rng.randint(0, 4_000_000) for _ in range(n - 1)])


def test_matches_brute_force() -> None:
    rng = random.Random(1)
    for trial in range(250):
        n = rng.randint(1, 8)
        p = rng.randint(1, min(4, n))
        prof = _random_profile(rng, n)
        if trial % 3 == 0:
            cluster = ClusterSpec(max(p, 1), tuple(LinkSpec.parse(rng.choice(["10Mbit", "100Mbit", "1Gbit"]))
                                                  for _ in range(p - 1)))
        else:
            cluster = ClusterSpec.uniform(p, rng.choice(["10Mbit", "100Mbit", "1Gbit", "inf"]))
        per = None if trial % 2 else [rng.choice(["fp32", "int8", ("int4", "bf16")]) for _ in range(n - 1)]
        cuts = best_cuts(prof, p, cluster, per)
        options = list(itertools.combinations(range(1, n), p - 1))
        scores = {c: bottleneck(prof, c, cluster, per) for c in options}
        best = min(scores.values())
        assert scores[cuts] == pytest.approx(best, rel=1e-12, abs=1e-15), (trial, cuts)
        # tie-break: among the optimal cut sets, the smallest largest stage compute
        opt = [c for c, v in scores.items() if v <= best * (1 + 1e-9) + 1e-15]

        def max_compute(c):
            bounds = (0, *c, n)
            return max(sum(prof.compute(a, b)) for a, b in zip(bounds, bounds[1:]))

        assert max_compute(cuts) == pytest.approx(min(max_compute(c) for c in opt), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("n,p,expected", [(12, 4, (3, 6, 9)), (8, 4, (2, 4, 6)), (6, 3, (2, 4)), (5, 5, (1, 2, 3, 4)),
                                          (9, 1, ())])
def test_balances_a_uniform_model(n: int, p: int, expected: tuple[int, ...]) -> None:
    prof = ModelProfile.uniform(n, 1.0, 2.0, 1000)
    assert best_cuts(prof, p, "10Gbit") == expected


def test_uneven_counts_put_the_extra_blocks_where_they_fit() -> None:
    prof = ModelProfile.uniform(10, 1.0, 2.0, 1000)
    cuts = best_cuts(prof, 4, "10Gbit")
    sizes = [b - a for a, b in zip((0, *cuts), (*cuts, 10))]
    assert sorted(sizes) == [2, 2, 3, 3]


def test_comm_moves_cuts_and_heavy_blocks_stand_alone() -> None:
    # comm-heavy uniform model: middle stages send in both directions, so they get fewer blocks
    prof = ModelProfile.uniform(12, 0.01, 0.02, 1_000_000)
    cuts = best_cuts(prof, 4, "100Mbit")
    costs = stage_costs(prof, cuts, "100Mbit")
    assert max(costs) < max(stage_costs(prof, (3, 6, 9), "100Mbit"))
    heavy = ModelProfile.from_numbers([1, 1, 10, 1, 1], [1, 1, 10, 1, 1], 10)
    assert best_cuts(heavy, 3, "inf") == (2, 3)


def test_errors() -> None:
    prof = ModelProfile.uniform(3, 1.0, 1.0, 10)
    with pytest.raises(ValueError):
        best_cuts(prof, 4, "1Gbit")
    with pytest.raises(ValueError):
        best_cuts(prof, 2, "1Gbit", ["int8"])  # one entry per boundary
