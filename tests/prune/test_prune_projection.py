"""Low-rank projection at a cut: fewer elements on the wire, identity at full rank, built from plain data."""

from __future__ import annotations

import json

import pytest
import torch

from layeredge_dist.model import (
    ByteGPTConfig,
    PartitionSpec,
    SyntheticWorkload,
    build_partition,
    build_reference,
    byte_gpt_spec,
    merge_state_dicts,
    partition_specs,
    run_chain,
    split_state_dict,
)
from layeredge_dist.prune import CutProjection, apply_projection, cut_tensors, projection_weights

CFG = ByteGPTConfig(d_model=32, n_layer=3, n_head=2, context=16)


@pytest.fixture(scope="module")
def setup():  # type: ignore[no-untyped-def]
    model = byte_gpt_spec(CFG, seed=1)
    parts = [build_partition(p) for p in partition_specs(model, (1, 2))]
    batches = SyntheticWorkload(model, 4, 16).val_batches(3)
    acts = cut_tensors(parts, batches[:2], grads=False)
    return parts, batches, acts


def test_half_rank_halves_the_cut_tensor(setup) -> None:  # type: ignore[no-untyped-def]
    parts, batches, acts = setup
    pruned = apply_projection(parts, 0, 16, acts[0][0])
    pruned = apply_projection(pruned, 1, 16, acts[1][0])
    x, side = batches[2]
    _, before = run_chain(parts, x, side)
    out, after = run_chain(pruned, x, side)
    for b, a in zip(before, after):
        assert a.numel() * 2 == b.numel() and a.shape[-1] == 16
    assert out.shape == run_chain(parts, x, side)[0].shape
    send, recv = pruned[0].blocks[-1], pruned[1].blocks[0]
    assert isinstance(send.edge_down, CutProjection) and send.edge_down.weight.shape == (16, 32)
    assert isinstance(recv.edge_up, CutProjection) and recv.edge_up.weight.shape == (32, 16)
    assert pruned[0].spec.model.config["prune"]["projections"] == [
        {"cut": 1, "width": 32, "rank": 16}, {"cut": 2, "width": 32, "rank": 16}]


@pytest.mark.parametrize("init", ["pca", "channels"])
def test_full_rank_projection_is_the_identity(setup, init: str) -> None:  # type: ignore[no-untyped-def]
    parts, batches, acts = setup
    scores = torch.arange(32.0)
    pruned = apply_projection(parts, 0, 32, acts[0][0], init=init, scores=scores)
    x, side = batches[2]
    want, _ = run_chain(parts, x, side)
    got, crossing = run_chain(pruned, x, side)
    assert crossing[0].shape[-1] == 32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    # and a real bottleneck changes the output (the test can fail)
    low = apply_projection(parts, 0, 4, acts[0][0], init=init, scores=scores)
    assert (run_chain(low, x, side)[0] - want).abs().max() > 1e-3


def test_pca_is_the_best_rank_r_reconstruction() -> None:
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(8, 8, generator=g))[0]
    z = torch.randn(2000, 8, generator=g) * torch.tensor([5.0, 3.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.1])
    x = z @ basis.T + 2.0
    w = projection_weights(x, 3)
    x = x.double()
    z = x @ w["down.weight"].double().T + w["down.bias"].double()
    rec = z @ w["up.weight"].double().T + w["up.bias"].double()
    assert float((rec - x).pow(2).mean()) < 0.02  # only the 5 small directions (var 0.01 each) are lost
    with pytest.raises(ValueError, match="rank"):
        projection_weights(x, 9)


def test_stage_builds_the_projection_from_plain_data(setup) -> None:  # type: ignore[no-untyped-def]
    parts, batches, acts = setup
    pruned = apply_projection(parts, 1, 8, acts[1][0])
    model = pruned[0].spec.model
    cuts = pruned[0].spec.cuts
    native = merge_state_dicts(model, cuts, [p.state_dict() for p in pruned])
    assert "blocks.1.edge_down.weight" in native and "blocks.2.edge_up.weight" in native
    x, side = batches[2]
    want, _ = run_chain(pruned, x, side)
    # every stage from a JSON round trip of its PartitionSpec plus its state slice, as a Ray actor builds it
    slices = split_state_dict(model, cuts, native)
    rebuilt = [build_partition(PartitionSpec.from_dict(json.loads(json.dumps(p.spec.to_dict()))), s)
               for p, s in zip(pruned, slices)]
    torch.testing.assert_close(run_chain(rebuilt, x, side)[0], want, rtol=0, atol=0)
    # re-cut into one stage, and the single-process reference, carry the same bottleneck
    whole = build_partition(PartitionSpec(model, (), 0), split_state_dict(model, (), native)[0]).eval()
    torch.testing.assert_close(whole(x, side), want, rtol=0, atol=1e-5)
    ref = build_reference(model=model).eval()
    ref.load_state_dict(native)
    torch.testing.assert_close(ref(x), want, rtol=0, atol=1e-5)


def test_projection_rejects_bad_cuts(setup) -> None:  # type: ignore[no-untyped-def]
    parts, _, acts = setup
    with pytest.raises(ValueError, match="out of range"):
        apply_projection(parts, 2, 8, acts[0][0])
    with pytest.raises(ValueError):
        apply_projection(parts, 0, 8, acts[0][0], init="nope")


def test_finetune_freezes_or_slows_the_projections(setup) -> None:  # type: ignore[no-untyped-def]
    from layeredge_dist.pipeline.prune_run import finetune
    from layeredge_dist.stage import OptimizerSpec

    parts, _, acts = setup
    model = parts[0].spec.model
    workload = SyntheticWorkload(model, 4, 16)
    moved = {}
    for scale in (0.0, 0.1, 1.0):
        pruned = apply_projection(parts, 0, 8, acts[0][0])
        down0 = pruned[0].blocks[-1].edge_down.weight.detach().clone()
        fc0 = pruned[0].blocks[-1].fc.weight.detach().clone()
        losses = finetune(pruned, workload, OptimizerSpec("adamw", 1e-2), 0, 3, 2, projection_lr_scale=scale)
        assert len(losses) == 3
        assert not torch.equal(pruned[0].blocks[-1].fc.weight, fc0)  # the rest of the model trains
        moved[scale] = float((pruned[0].blocks[-1].edge_down.weight.detach() - down0).abs().max())
        assert all(p.requires_grad for part in pruned for p in part.parameters())  # frozen ones are restored
    assert moved[0.0] == 0.0 and 0 < moved[0.1] < moved[1.0]
