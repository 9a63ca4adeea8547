"""Training-calibrated sensitivity: exact codecs cost nothing, destructive ones show, inputs are checked."""

from __future__ import annotations

import math

import pytest
import torch

from layeredge_dist.codecs import CodecError
from layeredge_dist.measure.trial import trial_losses
from layeredge_dist.model import (
    ByteGPTConfig, CorpusConfig, build_partition, byte_gpt_spec, partition_specs, split_batch, workload_for,
)

CFG = ByteGPTConfig(context=16, d_model=32, n_layer=3, n_head=2)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the planner measures: with two threads on a loaded machine OpenMP may change the
    reduction split between runs, and this small, chaotic training amplifies the difference."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _setup(cuts=(1, 2), steps=20):
    """A tiny byte GPT on real text (the stdlib corpus): it learns within a few steps, so codecs can matter."""
    spec = byte_gpt_spec(CFG, seed=0)
    parts = [build_partition(s) for s in partition_specs(spec, cuts)]
    work = workload_for(spec, 8, 16, 0, CorpusConfig(max_bytes=200_000))
    step_batches = [split_batch(work.batch(k), 2) for k in range(steps)]
    val = [(x[0], side[0]) for x, side in (split_batch(b, 1) for b in work.val_batches(3))]
    return parts, step_batches, val


def _adam(params):
    return torch.optim.AdamW(params, lr=3e-3)


def test_exact_codec_has_zero_gap_and_lossy_ones_cost() -> None:
    parts, steps, val = _setup()
    before = [{k: v.clone() for k, v in p.state_dict().items()} for p in parts]
    res = trial_losses(parts, _adam, steps, val, ["fp32", "int8", "topk:0.01"])
    # fp32 is a bit-exact round trip: the same computation as the exact run
    assert res.gap("forward", "fp32") == 0.0 and res.gap("backward", "fp32") == 0.0
    # keeping 1 % of the values costs clearly more than int8, in both directions (measured: forward 0.036 vs
    # -0.0002 nats, backward 0.066 vs 0.001 after 20 steps)
    for d in ("forward", "backward"):
        assert res.gap(d, "topk:0.01") > 0.015, d
        assert abs(res.gap(d, "int8")) < 0.01, d
        assert res.gap(d, "topk:0.01") > 5 * abs(res.gap(d, "int8")), d
    assert math.isfinite(res.exact) and res.steps == len(steps)
    # the partitions are left as they were
    for p, st in zip(parts, before):
        for k, v in p.state_dict().items():
            assert torch.equal(v, st[k]), k
    d = res.to_dict()
    assert d["losses"]["forward"]["fp32"] == res.exact


def test_boundaries_limit_where_codecs_apply() -> None:
    parts, steps, val = _setup(steps=6)
    only0 = trial_losses(parts, _adam, steps, val, ["topk:0.01"], directions=("forward",), boundaries=[0])
    both = trial_losses(parts, _adam, steps, val, ["topk:0.01"], directions=("forward",))
    assert only0.exact == both.exact
    assert only0.losses["forward"]["topk:0.01"] != both.losses["forward"]["topk:0.01"]


def test_stateful_codecs_keep_state_per_edge() -> None:
    parts, steps, val = _setup(steps=6)
    res = trial_losses(parts, _adam, steps, val, ["ef(int2)", "int2"], directions=("backward",))
    assert set(res.losses["backward"]) == {"ef(int2)", "int2"}
    assert all(math.isfinite(v) for v in res.losses["backward"].values())


def test_bad_inputs() -> None:
    parts, steps, val = _setup(steps=2)
    with pytest.raises(CodecError):
        trial_losses(parts, _adam, steps, val, ["int9"])
    with pytest.raises(ValueError, match="direction"):
        trial_losses(parts, _adam, steps, val, ["int8"], directions=("sideways",))
    with pytest.raises(ValueError, match="boundaries"):
        trial_losses(parts, _adam, steps, val, ["int8"], boundaries=[5])
    with pytest.raises(ValueError, match="at least one training step"):
        trial_losses(parts, _adam, [], val, ["int8"])
    with pytest.raises(ValueError, match="two partitions"):
        trial_losses(parts[:1], _adam, steps, val, ["int8"])


def test_plan_losses_reproduce_per_codec_trials_and_measure_combinations() -> None:
    """A plan with one codec on every boundary in one direction is exactly trial_losses' run for that codec (the
    same calls, so the same seeds, also for a randomized codec); both directions at once is its own run."""
    from layeredge_dist.measure.trial import plan_losses

    parts, steps, val = _setup(steps=8)
    per = trial_losses(parts, _adam, steps, val, {"forward": ["int4/rht"], "backward": ["int4/rht/sr"]})
    plans = [{0: ("int4/rht", None), 1: ("int4/rht", None)}, {0: (None, "int4/rht/sr"), 1: (None, "int4/rht/sr")},
             {0: ("int4/rht", "int4/rht/sr"), 1: ("int4/rht", "int4/rht/sr")}, {},
             {0: ("topk:0.01", "topk:0.01")}]
    res = plan_losses(parts, _adam, steps, val, plans)
    assert res.exact == per.exact and res.gap(3) == 0.0
    assert res.losses[0] == per.losses["forward"]["int4/rht"]
    assert res.losses[1] == per.losses["backward"]["int4/rht/sr"]
    # the combination is a different run from either part (not their sum by construction)
    assert res.losses[2] not in (res.losses[0], res.losses[1])
    # keeping 1 % of the values on one boundary both ways costs clearly more than 4 bits everywhere
    assert res.gap(4) > 0.015 and res.gap(4) > 3 * abs(res.gap(2))
    assert res.steps == len(steps) and res.to_dict()["losses"][3] == res.exact


def test_plan_losses_bad_inputs() -> None:
    from layeredge_dist.measure.trial import plan_losses

    parts, steps, val = _setup(steps=2)
    with pytest.raises(ValueError, match=r"plan 1: boundaries \[2\]"):
        plan_losses(parts, _adam, steps, val, [{0: ("int8", None)}, {2: ("int8", None)}])
    with pytest.raises(CodecError):
        plan_losses(parts, _adam, steps, val, [{0: (None, "int9")}])
    with pytest.raises(ValueError, match="at least one training step"):
        plan_losses(parts, _adam, [], val, [{}])


def test_plan_trial_mean_is_the_mean_of_paired_gaps_and_keeps_the_seeds() -> None:
    from layeredge_dist.measure.trial import PlanTrialResult

    a = PlanTrialResult(5, 3.0, (3.1, 2.9), 3.2, (3.3, 3.1))
    b = PlanTrialResult(5, 2.0, (2.3, math.inf), 2.2, (2.5, math.inf))  # plan 1 diverged in this seed
    m = PlanTrialResult.mean([a, b])
    assert m.exact == pytest.approx(2.5) and m.losses[0] == pytest.approx(2.7)
    assert m.gap(0) == pytest.approx((a.gap(0) + b.gap(0)) / 2) and m.gaps(0) == (a.gap(0), b.gap(0))
    assert m.gap(1) == math.inf and m.gaps(1) == (a.gap(1), math.inf)  # diverged once is diverged
    assert a.gaps(1) == (a.gap(1),) and PlanTrialResult.mean([a]) is a
    doc = m.to_dict()
    assert doc["losses"][1] is None and [r["exact"] for r in doc["replicates"]] == [3.0, 2.0]
    assert "replicates" not in a.to_dict()
    with pytest.raises(ValueError, match="differ"):
        PlanTrialResult.mean([a, PlanTrialResult(6, 3.0, (3.1, 2.9), 3.2, (3.3, 3.1))])
    with pytest.raises(ValueError, match="no trial"):
        PlanTrialResult.mean([])
