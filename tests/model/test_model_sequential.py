"""nn.Sequential cut by child index: stages chained equal the whole model, forward and backward."""

from __future__ import annotations

import pytest
import torch

from layeredge_dist.model import (ModelSpec, build_partition, build_reference, merge_state_dicts, partition_specs,
                                  split_state_dict)
from layeredge_dist.model.verify import compare_chain

TOL = 1e-6


def mlp_spec(loss: str = "mse") -> ModelSpec:
    layers = [
        {"type": "Linear", "args": {"in_features": 8, "out_features": 16}},
        {"type": "ReLU"},
        {"type": "Linear", "args": {"in_features": 16, "out_features": 16}},
        {"type": "Tanh"},
        {"type": "LayerNorm", "args": {"normalized_shape": [16]}},
        {"type": "Linear", "args": {"in_features": 16, "out_features": 4}},
    ]
    return ModelSpec("sequential", {"layers": layers, "loss": loss}, seed=5)


@pytest.mark.parametrize("cuts", [(), (2,), (1, 3), (1, 2, 3, 4, 5)])
def test_chained_stages_equal_whole_model(cuts: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(3, 8, generator=g) for _ in range(4)]
    sides = [{"target": torch.randn(3, 4, generator=g)} for _ in range(4)]
    agree = compare_chain(mlp_spec(), cuts, xs, sides)
    assert agree.worst() <= TOL, agree


def test_cross_entropy_loss() -> None:
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(5, 8, generator=g) for _ in range(2)]
    sides = [{"target": torch.randint(0, 4, (5,), generator=g)} for _ in range(2)]
    assert compare_chain(mlp_spec("cross_entropy"), (3,), xs, sides).worst() <= TOL


def test_split_and_merge_round_trip_and_load() -> None:
    spec = mlp_spec()
    native = build_reference(model=spec)
    with torch.no_grad():
        for p in native.parameters():
            p.add_(1.0)  # weights differing from the seeded init, to prove they are loaded
    state = native.state_dict()
    slices = split_state_dict(spec, (2, 5), state)
    assert sorted(slices[1]) == ["blocks.0.bias", "blocks.0.weight", "blocks.2.bias", "blocks.2.weight"]
    merged = merge_state_dicts(spec, (2, 5), slices)
    assert merged.keys() == state.keys() and all(merged[k] is state[k] for k in state)
    parts = [build_partition(ps, state=sl) for ps, sl in zip(partition_specs(spec, (2, 5)), slices)]
    x = torch.randn(2, 8)
    h = x
    for part in parts:
        h = part(h)
    assert torch.equal(h, native(x))


def test_same_block_same_init_whatever_the_cut() -> None:
    spec = mlp_spec()
    a = build_partition(partition_specs(spec, (2,))[1])  # blocks 2..5
    b = build_partition(partition_specs(spec, (2, 5))[1])  # blocks 2..4
    assert torch.equal(a.blocks[0].weight, b.blocks[0].weight)


def test_merge_rejects_misplaced_and_duplicate_keys() -> None:
    spec = mlp_spec()
    slices = split_state_dict(spec, (2,), build_reference(model=spec).state_dict())
    with pytest.raises(ValueError, match="slices for"):
        merge_state_dicts(spec, (2,), slices[:1])
    with pytest.raises(KeyError, match="belongs to stage"):
        merge_state_dicts(spec, (2,), [{**slices[0], "blocks.2.weight": torch.zeros(1)}, slices[1]])
    with pytest.raises(KeyError, match="beyond the model"):
        merge_state_dicts(spec, (2,), [slices[0], {**slices[1], "blocks.9.weight": torch.zeros(1)}])


def test_bad_layers_and_cuts_raise() -> None:
    with pytest.raises(ValueError, match="not a torch.nn layer"):
        build_partition(partition_specs(ModelSpec("sequential", {"layers": [{"type": "open"}]}), ())[0])
    with pytest.raises(ValueError, match="leave a stage empty"):
        build_partition(partition_specs(mlp_spec(), (6,))[0])
    last = build_partition(partition_specs(mlp_spec(), (3,))[1])
    first = build_partition(partition_specs(mlp_spec(), (3,))[0])
    with pytest.raises(RuntimeError, match="not the last"):
        first.loss(torch.zeros(1), {})
    assert last.loss(torch.zeros(2, 4), {"target": torch.zeros(2, 4)}).item() == 0.0
