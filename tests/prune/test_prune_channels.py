"""Channel pruning with weight surgery: sequential cuts and transformer MLP hidden units."""

from __future__ import annotations

import pytest
import torch

from layeredge_dist.model import (
    ByteGPTConfig,
    ModelSpec,
    PartitionSpec,
    SyntheticWorkload,
    build_partition,
    byte_gpt_spec,
    partition_specs,
    run_chain,
)
from layeredge_dist.prune import (
    NotPrunable,
    cut_prunability,
    mlp_hidden_scores,
    mlp_keep,
    prune_cut_channels,
    prune_mlp_hidden,
)

LAYERS = [
    {"type": "Linear", "args": {"in_features": 8, "out_features": 16}},
    {"type": "ReLU"},
    {"type": "Linear", "args": {"in_features": 16, "out_features": 12}},
    {"type": "GELU"},
    {"type": "Linear", "args": {"in_features": 12, "out_features": 4}},
]
TINY_GPT = ByteGPTConfig(d_model=32, n_layer=3, n_head=2, context=16)


def _parts(model: ModelSpec, cuts: tuple[int, ...]) -> list:
    return [build_partition(p) for p in partition_specs(model, cuts)]


def _masked_chain(parts, x, cut: int, keep: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    h = x
    with torch.no_grad():
        for i, part in enumerate(parts):
            h = part(h, {})
            if i == cut:
                h = h * keep
    return h


@pytest.mark.parametrize("cut", [0, 1])
def test_sequential_surgery_equals_masking(cut: int) -> None:
    model = ModelSpec("sequential", {"layers": LAYERS, "loss": "mse"}, seed=3)
    parts = _parts(model, (2, 4))
    channels = (16, 12)[cut]
    drop = torch.tensor([1, 5, 7, 9] if cut == 0 else [0, 3, 11])
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    pruned = prune_cut_channels(parts, cut, drop)
    out, crossing = run_chain(pruned, x, {})
    keep = torch.ones(channels)
    keep[drop] = 0.0
    masked = _masked_chain(parts, x, cut, keep)
    assert crossing[cut].shape == (6, channels - len(drop))  # the edge really carries fewer channels
    torch.testing.assert_close(out, masked, rtol=0, atol=1e-6)  # equal up to float summation order
    # the layers physically shrank, in the model description every stage builds from
    layers = pruned[0].spec.model.config["layers"]
    if cut == 0:
        assert layers[0]["args"]["out_features"] == 12 and layers[2]["args"]["in_features"] == 12
        assert pruned[0].blocks[0].weight.shape == (12, 8) and pruned[1].blocks[0].weight.shape == (12, 12)
    else:
        assert layers[2]["args"]["out_features"] == 9 and layers[4]["args"]["in_features"] == 9
        assert pruned[2].blocks[0].weight.shape == (4, 9)
    # not a vacuous comparison: the unmasked original differs
    full, _ = run_chain(parts, x, {})
    assert (full - masked).abs().max() > 1e-3


def test_sequential_batchnorm_between_is_sliced() -> None:
    layers = [{"type": "Linear", "args": {"in_features": 6, "out_features": 10}},
              {"type": "BatchNorm1d", "args": {"num_features": 10}}, {"type": "ReLU"},
              {"type": "Linear", "args": {"in_features": 10, "out_features": 3}}]
    parts = _parts(ModelSpec("sequential", {"layers": layers}, seed=0), (3,))
    with torch.no_grad():  # non-trivial running statistics
        parts[0].blocks[1].running_mean.uniform_(-1, 1)
        parts[0].blocks[1].running_var.uniform_(0.5, 2)
    for p in parts:
        p.eval()
    drop = torch.tensor([2, 3, 8])
    pruned = prune_cut_channels(parts, 0, drop)
    for p in pruned:
        p.eval()
    x = torch.randn(4, 6)
    keep = torch.ones(10)
    keep[drop] = 0
    out, _ = run_chain(pruned, x, {})
    torch.testing.assert_close(out, _masked_chain(parts, x, 0, keep), rtol=0, atol=1e-6)
    assert pruned[0].blocks[1].running_mean.shape == (7,)


def test_byte_gpt_cut_is_not_prunable_and_says_why() -> None:
    parts = _parts(byte_gpt_spec(TINY_GPT), (1, 2))
    rows = cut_prunability(parts)
    assert [r["prunable"] for r in rows] == [False, False]
    assert "residual stream" in rows[0]["reason"] and "projection" in rows[0]["reason"]
    with pytest.raises(NotPrunable, match="residual stream"):
        prune_cut_channels(parts, 0, [0, 1])


def test_mlp_hidden_pruning_shrinks_weights_and_equals_masking() -> None:
    model = byte_gpt_spec(TINY_GPT, seed=2)
    parts = _parts(model, (1, 2))
    batches = SyntheticWorkload(model, 4, 16).val_batches(2)
    scores = mlp_hidden_scores(parts, batches)
    assert sorted(scores) == [0, 1, 2] and all(s.taylor is not None and s.channels == 128 for s in scores.values())
    assert all(p.grad is None for part in parts for p in part.parameters())  # calibration leaves no gradients
    keep = mlp_keep(scores, 0.5)
    pruned = prune_mlp_hidden(parts, keep)
    for part in pruned:
        block = part.blocks[0]
        assert block.fc.weight.shape == (64, 32) and block.fc.bias.shape == (64,)
        assert block.proj.weight.shape == (32, 64)
    n_before = sum(p.numel() for part in parts for p in part.parameters())
    n_after = sum(p.numel() for part in pruned for p in part.parameters())
    assert n_before - n_after == 3 * 64 * (32 + 1 + 32)
    # the spec carries the smaller layers: a stage rebuilding from plain data gets them
    spec = PartitionSpec.from_dict(pruned[1].spec.to_dict())
    assert build_partition(spec).blocks[0].fc.out_features == 64
    x, side = batches[0]
    hooks = []
    for part in parts:
        for local, block in enumerate(part.blocks):
            mask = torch.zeros(128)
            mask[keep[part.first_block + local]] = 1.0
            hooks.append(block.proj.register_forward_pre_hook(lambda _m, a, mask=mask: (a[0] * mask,)))
    masked, _ = run_chain(parts, x, side)
    for h in hooks:
        h.remove()
    out, crossing = run_chain(pruned, x, side)
    torch.testing.assert_close(out, masked, rtol=0, atol=1e-5)
    assert crossing[0].shape[-1] == 32  # the cut is not what this shrinks
    full, _ = run_chain(parts, x, side)
    assert (full - masked).abs().max() > 1e-4
