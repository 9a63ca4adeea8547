"""Plan: plain data with exact JSON / YAML round trips, a readable table, a diff, and the run config's shape."""

from __future__ import annotations

import json

import pytest
import yaml

from layeredge_dist.config import RunConfig
from layeredge_dist.plan import ClusterSpec, LinkSpec, ModelProfile, Plan, make_plan, plan_jointly

SENS = {b: {"forward": {"int8": 0.01, "int4": 0.05}, "backward": {"int8": 0.005}} for b in range(5)}


def _profile() -> ModelProfile:
    return ModelProfile.from_numbers([0.01, 0.02, 0.03, 0.01, 0.02, 0.03], [0.02, 0.04, 0.06, 0.02, 0.04, 0.06],
                                     [100_000, 200_000, 300_000, 200_000, 100_000], params_bytes=1_000_000,
                                     sensitivity=SENS, micro_batches=4, tokens_per_micro_batch=256, name="toy")


def _plan(**kw) -> Plan:
    cluster = ClusterSpec(3, (LinkSpec.parse("100Mbit", "1ms"), LinkSpec.parse("1Gbit")))
    codecs = kw.pop("codecs", {"s0->s1": {"forward": "int8", "backward": "int8"}, "s1->s2": {"forward": "int4"}})
    return make_plan(_profile(), kw.pop("cuts", (2, 4)), codecs, cluster, budget=0.1,
                     objective="min_time_under_budget", **kw)


def test_round_trips() -> None:
    plan = _plan(notes=("hello",))
    assert Plan.from_json(plan.to_json()) == plan
    assert Plan.from_yaml(plan.to_yaml()) == plan
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))).to_dict() == plan.to_dict()
    inter = make_plan(_profile(), (1, 3, 5), "bf16", "1Gbit", schedule="interleaved", chunks=2)
    assert Plan.from_yaml(inter.to_yaml()) == inter
    assert set(inter.codecs) == {"s0->s1", "s1->s0"}
    with pytest.raises(ValueError, match="unknown plan keys"):
        Plan.from_dict({**plan.to_dict(), "extra": 1})


def test_codecs_have_the_run_config_shape() -> None:
    plan = _plan()
    assert plan.codecs_dict() == {"s0->s1": {"forward": "int8", "backward": "int8"},
                                  "s1->s2": {"forward": "int4", "backward": "fp32"}}
    assert yaml.safe_load(plan.to_yaml())["codecs"] == plan.codecs_dict()
    cfg = plan.apply(RunConfig())
    assert cfg.pipeline.stages == 3 and cfg.pipeline.cuts == (2, 4) and cfg.pipeline.microbatches == 4
    assert {k: dict(v) for k, v in cfg.codecs.edges.items()} == plan.codecs_dict()
    assert "codecs.edges.s1->s2.forward=int4" in plan.overrides()
    patch = plan.config_patch()
    assert patch["codecs"]["edges"] == plan.codecs_dict() and patch["pipeline"]["cuts"] == [2, 4]


def test_scores_and_summary() -> None:
    plan = _plan()
    assert plan.sensitivity["s0->s1"]["forward"] == 0.01
    assert plan.sensitivity["s0->s1"]["backward"] == 0.005
    assert plan.sensitivity["s1->s2"]["forward"] == 0.05
    assert plan.sensitivity["s1->s2"]["backward"] == 0.0  # fp32
    assert plan.total_sensitivity == pytest.approx(0.065)
    assert [s["blocks"] for s in plan.stages] == [((0, 2),), ((2, 4),), ((4, 6),)]
    assert plan.stages[1]["fwd_s"] == pytest.approx(0.04)
    assert plan.stages[0]["params_bytes"] == 2_000_000
    unmeasured = _plan(codecs="bf16")
    assert unmeasured.sensitivity["s0->s1"]["forward"] is None


def test_format_is_a_readable_table() -> None:
    text = _plan().format()
    print(text)
    lines = text.splitlines()
    assert lines[0].startswith("Plan for 'toy' (6 blocks): 3 stages, 1f1b, 4 micro-batches")
    assert any(line.startswith("s1 ") and "2-3" in line for line in lines)
    row = next(line for line in lines if line.startswith("s1->s2") and "forward" in line)
    assert "int4" in row and "0.05" in row
    assert "sensitivity used: 0.065 of 0.1" in text
    assert "100 Mbit/s" in text


def test_diff() -> None:
    a = _plan()
    b = _plan(cuts=(3, 4), codecs={"s0->s1": {"forward": "int8", "backward": "fp32"}, "s1->s2": {"forward": "int4"}})
    assert a.diff(a) == []
    changes = a.diff(b)
    assert "cuts: (2, 4) -> (3, 4)" in changes
    assert "s0->s1 backward: int8 -> fp32" in changes
    assert not any(c.startswith("s1->s2") for c in changes)
    assert any(c.startswith("predicted step:") for c in changes)
    c = make_plan(_profile(), (2,), "fp32", "1Gbit")
    changes = a.diff(c)
    assert "num_stages: 3 -> 2" in changes and "s1->s2 forward: int4 -> fp32" in changes


def test_joint_plan_round_trips() -> None:
    plan = plan_jointly(_profile(), 3, ClusterSpec.uniform(3, "100Mbit"), ["int8", "int4"], 0.05)
    assert Plan.from_json(plan.to_json()) == plan
    assert plan.total_sensitivity <= 0.05 + 1e-12


def test_boundary_codecs_map_cuts_to_block_boundaries() -> None:
    """Cut c starts stage i + 1 at block c, so its edge's codecs sit at boundary c - 1; a missing side is fp32."""
    assert _plan().boundary_codecs() == {1: ("int8", "int8"), 3: ("int4", "fp32")}
    inter = make_plan(_profile(), (1, 3, 5), "bf16", "1Gbit", schedule="interleaved", chunks=2)
    with pytest.raises(ValueError, match="one chunk per stage"):
        inter.boundary_codecs()
