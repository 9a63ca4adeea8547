"""Channel importance of a tensor crossing a cut: known values and planted dead channels."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from layeredge_dist.measure import ChannelAccumulator, channel_importance, least_important


def test_known_values() -> None:
    # (B=2, P=2, C=1)
    a = torch.tensor([[[1.0], [2.0]], [[3.0], [4.0]]])
    g = torch.tensor([[[1.0], [-1.0]], [[1.0], [1.0]]])
    s = channel_importance(a, g)
    assert s.taylor is not None
    assert s.taylor.tolist() == pytest.approx([(abs(1 - 2) + abs(3 + 4)) / 2])  # |sum per sample|, mean
    assert s.l2.tolist() == pytest.approx([math.sqrt((1 + 4 + 9 + 16) / 2)])  # rms over samples of the L2 norm
    assert s.mean_abs.tolist() == pytest.approx([2.5])
    assert s.samples == 2 and s.channels == 1
    assert channel_importance(a).taylor is None


def test_accumulator_matches_one_shot() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(12, 5, 7, generator=gen)
    g = torch.randn(12, 5, 7, generator=gen)
    acc = ChannelAccumulator(channels=7)
    for lo in range(0, 12, 4):
        acc.add(a[lo:lo + 4], g[lo:lo + 4])
    split, whole = acc.result(), channel_importance(a, g)
    assert split.taylor is not None and whole.taylor is not None
    assert torch.allclose(split.taylor, whole.taylor)
    assert torch.allclose(split.l2, whole.l2)
    assert torch.allclose(split.mean_abs, whole.mean_abs)
    with pytest.raises(ValueError):
        acc.add(torch.zeros(2, 6))
    with pytest.raises(ValueError):
        acc.add(torch.zeros(2, 7), torch.zeros(3, 7))
    with pytest.raises(ValueError):
        ChannelAccumulator().result()


def test_planted_dead_channels_rank_least_important() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(16, 10)
    dead = [2, 7, 8]
    with torch.no_grad():
        lin.weight[dead] *= 1e-3  # near-dead: tiny but not exactly zero
        lin.bias[dead] = 0.0
    head = nn.Linear(10, 3)
    acc = ChannelAccumulator()
    for _ in range(3):
        x = torch.randn(8, 4, 16)  # (B, T, in)
        a = lin(x).detach().requires_grad_(True)  # (B, T, 10): the tensor crossing the cut
        loss = head(torch.relu(a)).pow(2).mean()
        (g,) = torch.autograd.grad(loss, a)
        acc.add(a, g)
    s = acc.result()
    assert s.taylor is not None
    for scores in (s.taylor, s.l2, s.mean_abs):
        assert sorted(least_important(scores, 3).tolist()) == dead
    assert least_important(s.l2, 0).numel() == 0


def test_least_important_order_ties_nan() -> None:
    assert least_important([3.0, 1.0, 2.0, 1.0], 3).tolist() == [1, 3, 2]  # ties: lower index first
    assert least_important(torch.tensor([1.0, float("nan"), 0.5]), 1).tolist() == [1]
    assert least_important([1.0, 2.0], 2).dtype == torch.int64
    with pytest.raises(ValueError):
        least_important([1.0], 2)
