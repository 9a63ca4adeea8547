"""Measured edge sensitivity on the tiny byte GPT: exact for fp32, ordered by bits, both modes, both directions."""

from __future__ import annotations

import math

import pytest
import torch

from layeredge_dist.measure import edge_sensitivity, output_distance
from layeredge_dist.model import ByteGPTConfig, SyntheticWorkload, build_partition, byte_gpt_spec, partition_specs

CFG = ByteGPTConfig(context=16, d_model=32, n_layer=3, n_head=2)
CUTS = (1, 2)
CODECS = ["fp32", "fp16", "bf16", "int8", "int4", "int2"]  # decreasing bits


@pytest.fixture(scope="module")
def setup():  # -> (spec, 4 synthetic batches, train-mode table)
    spec = byte_gpt_spec(CFG, seed=0)
    batches = SyntheticWorkload(spec, batch_size=8, context=16, seed=0).val_batches(4)
    return spec, batches, edge_sensitivity(spec, CUTS, batches, CODECS, mode="train")


def test_fp32_is_exactly_zero(setup) -> None:
    _, batches, table = setup
    assert table.exact_loss is not None and 5.0 < table.exact_loss < 6.0  # ~ln 256 for an untrained model
    for k in range(len(CUTS)):
        e = table.get(k, "fp32")
        assert e.loss_deltas == (0.0,) * len(batches)
        assert e.loss_delta_mean == 0.0 and e.loss_delta_stderr == 0.0
        assert e.cos_dist_mean == 0.0 and e.kl_mean == 0.0
        assert e.grad_rel_error_mean == 0.0
        assert e.bits_per_element == 32.0 and e.block == CUTS[k]


def test_loss_delta_grows_as_bits_shrink(setup) -> None:
    _, batches, table = setup
    for k in range(len(CUTS)):
        d = {c: table.get(k, c) for c in CODECS}
        print(k, {c: f"{e.loss_delta_mean:+.2e}±{e.loss_delta_stderr:.1e}" for c, e in d.items()})
        assert abs(d["int2"].loss_delta_mean) > abs(d["int8"].loss_delta_mean) > 0.0
        assert d["int2"].loss_delta_abs_mean > d["int4"].loss_delta_abs_mean > d["int8"].loss_delta_abs_mean
        # (the sign is not asserted: on an untrained model with random targets coarse noise may even help)
        assert d["int2"].loss_delta_stderr is not None and d["int2"].loss_delta_stderr > 0.0
        assert len(d["int2"].loss_deltas or ()) == len(batches)
        # output distances ordered by bits in train mode too (computed from the same runs)
        cos = [d[c].cos_dist_mean for c in CODECS]
        kl = [d[c].kl_mean for c in CODECS]
        assert all(x < y for x, y in zip(cos, cos[1:])), cos
        assert all(x < y for x, y in zip(kl, kl[1:])), kl


def test_backward_gradient_error_ordered_by_bits(setup) -> None:
    _, _, table = setup
    for k in range(len(CUTS)):
        errs = [table.get(k, c).grad_rel_error_mean for c in CODECS]
        print(k, "grad rel error", [f"{e:.2e}" for e in errs])
        assert errs[0] == 0.0
        assert all(x < y for x, y in zip(errs, errs[1:])), errs
        assert 0.05 < errs[-1] < 1.5  # int2 gradients: tens of percent off
        assert table.get(k, "int8").grad_bits_per_element == pytest.approx(8.25)


def test_infer_mode_distances_without_labels(setup) -> None:
    spec, batches, train_table = setup
    no_labels = [(x, {}) for x, _ in batches]
    table = edge_sensitivity(spec, CUTS, no_labels, ["fp32", "fp16", "int8", "int2"], mode="infer")
    assert table.exact_loss is None and table.cost.stage_backwards == 0
    for k in range(len(CUTS)):
        e = {c: table.get(k, c) for c in ("fp32", "fp16", "int8", "int2")}
        assert e["fp32"].cos_dist_mean == 0.0 and e["fp32"].kl_mean == 0.0
        assert 0.0 < e["fp16"].cos_dist_mean < e["int8"].cos_dist_mean < e["int2"].cos_dist_mean
        assert 0.0 < e["fp16"].kl_mean < e["int8"].kl_mean < e["int2"].kl_mean  # type: ignore[operator]
        assert e["int2"].loss_delta_mean is None and e["int2"].grad_rel_error_mean is None
        # same runs as in train mode: identical distances
        assert e["int2"].kl_mean == pytest.approx(train_table.get(k, "int2").kl_mean, rel=1e-9)
    # the infer ordering agrees with the train-mode loss ordering
    for k in range(len(CUTS)):
        assert (abs(train_table.get(k, "int2").loss_delta_mean) > abs(train_table.get(k, "int8").loss_delta_mean))


def test_cost_matches_the_documented_formula(setup) -> None:
    _, batches, table = setup
    s, c, b = len(CUTS) + 1, len(CODECS), len(batches)
    lossy = c - 1  # fp32 reuses the exact run
    assert table.cost.stage_forwards == b * (s + lossy * sum(s - 1 - k for k in range(len(CUTS))))
    assert table.cost.stage_forwards_autograd == b * s
    assert table.cost.stage_backwards == b * (s + lossy * sum(k + 1 for k in range(len(CUTS))))
    doc = table.to_dict()
    assert len(doc["rows"]) == len(CUTS) * len(CODECS) and doc["rows"][0]["codec"] == "fp32"


def test_prebuilt_parts_states_and_model_state(setup) -> None:
    spec, batches, table = setup
    parts = [build_partition(p) for p in partition_specs(spec, CUTS)]
    with torch.no_grad():
        for p in parts[1].parameters():
            p.mul_(1.5)  # a different model than the seeded one
    sentinel = torch.ones_like(next(parts[0].parameters()))
    next(parts[0].parameters()).grad = sentinel
    for p in parts:
        p.train()
    t_parts = edge_sensitivity(spec, CUTS, batches[:2], ["int4"], cut_indices=[1], parts=parts)
    assert next(parts[0].parameters()).grad is sentinel  # .grad untouched
    assert all(p.training for p in parts)  # mode restored
    assert t_parts.cut_indices == (1,) and set(t_parts.entries) == {(1, "int4")}
    t_states = edge_sensitivity(spec, CUTS, batches[:2], ["int4"], cut_indices=[1],
                                states=[p.state_dict() for p in parts])
    assert t_states.get(1, "int4").loss_deltas == t_parts.get(1, "int4").loss_deltas
    assert t_parts.get(1, "int4").loss_deltas != table.get(1, "int4").loss_deltas[:2]  # type: ignore[index]


def test_bad_arguments(setup) -> None:
    spec, batches, _ = setup
    with pytest.raises(ValueError):
        edge_sensitivity(spec, CUTS, batches, ["int8"], mode="eval")
    with pytest.raises(ValueError):
        edge_sensitivity(spec, CUTS, [], ["int8"])
    with pytest.raises(ValueError):
        edge_sensitivity(spec, CUTS, batches, ["int8", "int8"])
    with pytest.raises(ValueError):
        edge_sensitivity(spec, CUTS, batches, ["int8"], cut_indices=[2])
    with pytest.raises(ValueError):
        edge_sensitivity(spec, CUTS, batches, ["int8"], cut_indices=[0, 0])
    parts = [build_partition(p) for p in partition_specs(spec, (1,))]
    with pytest.raises(ValueError):
        edge_sensitivity(spec, CUTS, batches, ["int8"], parts=parts)
    with pytest.raises(KeyError):
        edge_sensitivity(spec, CUTS, batches[:1], ["int8"], mode="infer").get(0, "int4")


def test_output_distance() -> None:
    e = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    cos, kl = output_distance(e, torch.tensor([[0.0, 1.0], [0.0, 5.0]]))
    assert cos == pytest.approx(0.5)  # 1 - cos: 1 for the first row, 0 for the second
    p = torch.softmax(e, -1)
    q = torch.softmax(torch.tensor([[0.0, 1.0], [0.0, 5.0]]), -1)
    assert kl == pytest.approx(float((p * (p.log() - q.log())).sum(-1).mean()), rel=1e-6)
    assert output_distance(torch.ones(3, 1), torch.ones(3, 1) * 2)[1] is None  # not logits
    assert math.isclose(output_distance(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0]))[0], 0.0, abs_tol=1e-12)


def test_sequential_regression_model() -> None:
    """A non-LM family: MSE loss, a (B, 1) output (no KL), cuts between plain layers."""
    from layeredge_dist.model import ModelSpec

    layers = [
        {"type": "Linear", "args": {"in_features": 8, "out_features": 16}},
        {"type": "Tanh"},
        {"type": "Linear", "args": {"in_features": 16, "out_features": 16}},
        {"type": "Tanh"},
        {"type": "Linear", "args": {"in_features": 16, "out_features": 1}},
    ]
    spec = ModelSpec("sequential", {"layers": layers, "loss": "mse"}, seed=3)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 8, generator=g), {"target": torch.randn(16, 1, generator=g)}) for _ in range(3)]
    table = edge_sensitivity(spec, (2, 4), batches, ["fp32", "int8", "int2"])
    for k in (0, 1):
        e8, e2 = table.get(k, "int8"), table.get(k, "int2")
        assert e2.kl_mean is None and table.get(k, "fp32").kl_mean is None
        assert table.get(k, "fp32").loss_delta_mean == 0.0
        assert e2.loss_delta_abs_mean > e8.loss_delta_abs_mean > 0.0  # type: ignore[operator]
        assert e2.grad_rel_error_mean > e8.grad_rel_error_mean > 0.0  # type: ignore[operator]
