"""ModelProfile: construction, queries, validation, JSON round trip."""

from __future__ import annotations

import pytest

from layeredge_dist.plan import BlockCost, ModelProfile
from layeredge_dist.plan.profile import check_cuts, stage_ranges


def test_uniform_and_queries() -> None:
    p = ModelProfile.uniform(4, 0.5, 1.0, 1000, params_bytes=10, micro_batches=8)
    assert p.n_blocks == 4 and p.n_boundaries == 3
    assert p.compute(1, 3) == (1.0, 2.0)
    assert p.params(0, 4) == 40
    assert p.boundary_elements(2) == 1000 and p.boundary_elements(2, "backward") == 1000
    assert p.summary()["fwd_s"] == 2.0


def test_from_numbers_and_scores() -> None:
    sens = {0: {"forward": {"int8": 0.01, "topk:0.050+int8": 0.2}}, "1": {"backward": {"int4": 0.03}}}
    p = ModelProfile.from_numbers([1, 2, 3], [2, 4, 6], [10, 20], grad_elements=[5, 6], sensitivity=sens)
    assert p.boundary_elements(1, "backward") == 6
    assert p.score(0, "forward", "int8") == 0.01
    assert p.score(0, "forward", "topk:0.05+int8") == 0.2  # keys are canonical specs
    assert p.score(1, "backward", "int4") == 0.03
    assert p.score(1, "forward", "int4") is None
    assert p.score(1, "forward", "fp32") == 0.0  # lossless needs no measurement
    assert p.measured_codecs() == ("int8", "topk:0.05+int8", "int4")


def test_json_round_trip() -> None:
    p = ModelProfile.from_numbers([0.1, 0.2, 0.3], [0.2, 0.4, 0.6], [100, 200], params_bytes=[1, 2, 3],
                                  sensitivity={1: {"forward": {"int8": 0.5}, "backward": {"bf16": 0.001}}},
                                  proxy={0: {"forward": {"int4": 2.0}}}, micro_batches=6, tokens_per_micro_batch=512,
                                  name="tiny")
    q = ModelProfile.from_json(p.to_json())
    assert q == p
    assert q.to_dict() == p.to_dict()


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(fwd_s=[1, 2], bwd_s=[1, 2], elements=[1, 2]), "expected 1 entries"),
    (dict(fwd_s=[1, -2], bwd_s=[1, 2], elements=[1]), ">= 0"),
    (dict(fwd_s=[1, 2], bwd_s=[1], elements=[1]), "one entry per block"),
    (dict(fwd_s=[1, 2], bwd_s=[1, 2], elements=[1], sensitivity={5: {"forward": {"int8": 1.0}}}), "outside"),
    (dict(fwd_s=[1, 2], bwd_s=[1, 2], elements=[1], sensitivity={0: {"sideways": {"int8": 1.0}}}), "direction"),
    (dict(fwd_s=[1, 2], bwd_s=[1, 2], elements=[1], sensitivity={0: {"forward": {"int9": 1.0}}}), "int9"),
    (dict(fwd_s=[1, 2], bwd_s=[1, 2], elements=[1], sensitivity={0: {"forward": {"int8": float("nan")}}}),
     "finite"),
    (dict(fwd_s=[1, 2], bwd_s=[1, 2], elements=[1], micro_batches=0), "micro_batches"),
])
def test_validation(kwargs, fragment) -> None:
    with pytest.raises(ValueError, match=fragment):
        ModelProfile.from_numbers(**kwargs)


def test_block_cost_and_cuts_helpers() -> None:
    with pytest.raises(ValueError):
        BlockCost(float("inf"), 1.0)
    assert stage_ranges(6, (2, 4)) == ((0, 2), (2, 4), (4, 6))
    assert check_cuts(6, [2, 4], 3) == (2, 4)
    for bad in ((2,), (4, 2), (0, 3), (3, 6)):
        with pytest.raises(ValueError):
            check_cuts(6, bad, 3)
    with pytest.raises(ValueError, match="unknown"):
        ModelProfile.from_dict({"blocks": [], "elements": [], "colour": "red"})
