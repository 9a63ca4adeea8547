"""Weight importance per tensor and per output channel, on layers with known values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from layeredge_dist.measure import tensor_importance, weight_importance


def _linear() -> nn.Linear:
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [0.0, 0.5, -0.5]]))
        lin.bias.copy_(torch.tensor([0.25, -4.0]))
    return lin


def test_linear_rows_magnitude_and_taylor() -> None:
    lin = _linear()
    lin.weight.grad = torch.tensor([[0.1, 0.1, -1.0], [2.0, 2.0, 2.0]])
    w = tensor_importance(lin.weight, lin.weight.grad, "weight")
    assert w.out_channels == 2 and w.shape == (2, 3)
    assert w.channel_l1_mean.tolist() == pytest.approx([2.0, 1 / 3])
    assert w.channel_l2_mean.tolist() == pytest.approx([math.sqrt(14 / 3), math.sqrt(0.5 / 3)])
    assert w.channel_taylor is not None
    assert w.channel_taylor.tolist() == pytest.approx([0.1 + 0.2 + 3.0, 0.0 + 1.0 + 1.0])
    assert w.taylor == pytest.approx(5.3)
    assert w.l1_mean == pytest.approx(7 / 6)
    assert w.l2_mean == pytest.approx(math.sqrt(14.5 / 6))


def test_module_without_and_with_grads() -> None:
    lin = _linear()
    before = weight_importance(lin)
    assert set(before) == {"weight", "bias"}
    assert before["weight"].taylor is None and before["weight"].channel_taylor is None
    assert before["bias"].channel_l1_mean.tolist() == pytest.approx([0.25, 4.0])  # 1-D: one channel per element
    x = torch.tensor([[1.0, 1.0, 1.0]])
    lin(x).sum().backward()  # d/dW = x for every row, d/db = 1
    after = weight_importance(lin)
    assert after["weight"].channel_taylor is not None
    assert after["weight"].channel_taylor.tolist() == pytest.approx([6.0, 1.0])  # sum |w| per row
    assert after["bias"].channel_taylor is not None
    assert after["bias"].channel_taylor.tolist() == pytest.approx([0.25, 4.0])
    only_w = weight_importance(lin, include=lambda name, p: p.dim() >= 2)
    assert set(only_w) == {"weight"}


def test_conv_output_channels() -> None:
    conv = nn.Conv2d(2, 4, kernel_size=3)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[1] = 2.0
        conv.weight[3] = -1.0
    w = weight_importance(conv)["weight"]
    assert w.out_channels == 4
    assert w.channel_l1_mean.tolist() == pytest.approx([0.0, 2.0, 0.0, 1.0])
    assert w.channel_l2_mean.tolist() == pytest.approx([0.0, 2.0, 0.0, 1.0])


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        tensor_importance(torch.zeros(2, 2), torch.zeros(2, 3))
    with pytest.raises(ValueError):
        tensor_importance(torch.zeros(0))
    s = tensor_importance(torch.tensor(-3.0))
    assert s.out_channels == 1 and s.l1_mean == 3.0
