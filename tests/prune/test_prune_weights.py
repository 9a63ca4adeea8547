"""Weight pruning: magnitude / Taylor / N:M masks, kept sparse through optimizer steps, sparse export."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from layeredge_dist.prune import MaskKeeper, apply_masks, check_nm, prune_masks, sparsity_report, to_sparse


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def _train(net: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    g = torch.Generator().manual_seed(5)
    for _ in range(steps):
        x, y = torch.randn(32, 16, generator=g), torch.randn(32, 8, generator=g)
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        opt.step()


def test_nm_masks_keep_exactly_n_of_m_and_stay_sparse_after_steps() -> None:
    net = _net()
    masks = prune_masks(net, "2:4")
    assert set(masks) == {"0.weight", "2.weight"}  # weight matrices only, not biases
    for name, mask in masks.items():
        groups = mask.reshape(-1, 4).sum(dim=1)
        assert bool((groups == 2).all()), name
        assert check_nm(mask, 2, 4)
        # the kept two are the largest magnitudes of each group
        w = dict(net.named_parameters())[name].detach().abs().reshape(-1, 4)
        kept_min = torch.where(mask.reshape(-1, 4), w, torch.inf).amin(dim=1)
        dropped_max = torch.where(mask.reshape(-1, 4), -torch.inf, w).amax(dim=1)
        assert bool((kept_min >= dropped_max).all())
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    keeper = MaskKeeper(net, masks, opt)
    _train(net, opt, 5)
    params = dict(net.named_parameters())
    for name, mask in masks.items():
        w = params[name].detach()
        assert bool((w[~mask] == 0).all()), name
        assert bool(((w.reshape(-1, 4) != 0).sum(dim=1) <= 2).all())
        assert bool((w[mask] != 0).all())  # kept weights still train
    keeper.remove()
    _train(net, opt, 2)  # without the hook AdamW's momentum revives pruned weights: the hook was doing the work
    assert bool((params["0.weight"].detach()[~masks["0.weight"]] != 0).any())


def test_magnitude_mask_hits_the_target_per_tensor() -> None:
    net = _net(1)
    masks = prune_masks(net, "magnitude", targets={"0.weight": 0.5, "2.*": 0.75})
    assert masks["0.weight"].sum() == 16 * 32 // 2
    assert masks["2.weight"].sum() == 8 * 32 // 4 and masks["2.bias"].sum() == 2  # "2.*" matched the bias too
    w = net[0].weight.detach().abs()
    assert float(w[masks["0.weight"]].min()) >= float(w[~masks["0.weight"]].max())
    apply_masks(net, masks)
    rep = sparsity_report(net, masks)
    assert rep["zeros_in_masked"] == rep["pruned_elements"] == 256 + 192 + 6


def test_taylor_uses_gradients() -> None:
    net = _net(2)
    with pytest.raises(ValueError, match="gradient"):
        prune_masks(net, "taylor", sparsity=0.5)
    x = torch.randn(64, 16)
    net(x).pow(2).mean().backward()
    t = prune_masks(net, "taylor", sparsity=0.5)
    m = prune_masks(net, "magnitude", sparsity=0.5)
    score = (net[0].weight * net[0].weight.grad).abs().detach()
    assert float(score[t["0.weight"]].min()) >= float(score[~t["0.weight"]].max())
    assert not torch.equal(t["0.weight"], m["0.weight"])


def test_sparse_export_round_trips() -> None:
    net = _net(3)
    masks = prune_masks(net, "magnitude", sparsity=0.7)
    apply_masks(net, masks)
    sparse = to_sparse(net.state_dict(), masks)
    for name, sw in sparse.items():
        assert torch.equal(sw.to_dense(), net.state_dict()[name])
        assert abs(sw.density - 0.3) < 0.01
        assert bool((sw.indices[1:] > sw.indices[:-1]).all())


def test_bad_methods_are_refused() -> None:
    with pytest.raises(ValueError, match="method"):
        prune_masks(_net(), "random")
    with pytest.raises(ValueError, match="N < M"):
        prune_masks(_net(), "4:2")
