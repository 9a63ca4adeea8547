"""Importance of weights, per parameter tensor and per output channel.

The output channel of a weight is its dim 0: a row of an ``nn.Linear`` weight (out, in), a filter of an
``nn.Conv*d`` weight (out, in/groups, k...); for a 1-D parameter (bias, norm scale) every element is a channel.
Per channel ``o`` with ``n`` elements ``w[o, ...]``:

- ``l1_mean[o] = mean |w[o]|``;
- ``l2_mean[o] = sqrt(mean w[o]²)`` (the RMS: the L2 norm divided by ``sqrt(n)``, comparable across tensors);
- ``taylor[o] = sum |w[o] * grad[o]|``: the first-order loss change summed per output channel, available only
  when the parameter has a gradient (after a backward).

The per-tensor figures are the same over the whole tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class WeightImportance:
    """Importance of one parameter tensor. Channel tensors are float64 of shape (out,) (``(1,)`` for a scalar)."""

    name: str
    shape: tuple[int, ...]
    l1_mean: float
    l2_mean: float
    taylor: float | None
    channel_l1_mean: torch.Tensor
    channel_l2_mean: torch.Tensor
    channel_taylor: torch.Tensor | None

    @property
    def out_channels(self) -> int:
        """Number of output channels (size of dim 0)."""
        return int(self.channel_l1_mean.numel())


def tensor_importance(weight: torch.Tensor, grad: torch.Tensor | None = None, name: str = "") -> WeightImportance:
    """:class:`WeightImportance` of one tensor; Taylor figures only when ``grad`` is given (same shape).

    Raises ValueError for an empty tensor or a gradient of another shape.
    """
    if weight.numel() == 0:
        raise ValueError(f"{name or 'weight'}: empty tensor")
    w = weight.detach().to(torch.float64)
    rows = w.reshape(1, 1) if w.dim() == 0 else w.reshape(w.shape[0], -1)  # (out, n)
    channel_l1 = rows.abs().mean(dim=1)
    channel_l2 = rows.pow(2).mean(dim=1).sqrt()
    taylor = channel_taylor = None
    if grad is not None:
        if tuple(grad.shape) != tuple(weight.shape):
            raise ValueError(f"{name or 'weight'}: gradient shape {tuple(grad.shape)} != {tuple(weight.shape)}")
        prod = (rows * grad.detach().to(torch.float64).reshape(rows.shape)).abs()  # (out, n)
        channel_taylor = prod.sum(dim=1)
        taylor = float(channel_taylor.sum())
    return WeightImportance(
        name=name, shape=tuple(weight.shape), l1_mean=float(rows.abs().mean()),
        l2_mean=float(rows.pow(2).mean().sqrt()), taylor=taylor,
        channel_l1_mean=channel_l1, channel_l2_mean=channel_l2, channel_taylor=channel_taylor,
    )


def weight_importance(
    module: nn.Module,
    include: Callable[[str, nn.Parameter], bool] | None = None,
) -> dict[str, WeightImportance]:
    """:class:`WeightImportance` of every parameter of ``module`` (by qualified name), optionally filtered by
    ``include(name, param)``. Taylor figures where the parameter's ``.grad`` is set (after a backward),
    magnitude only otherwise. Empty parameters are skipped.
    """
    out: dict[str, WeightImportance] = {}
    for name, p in module.named_parameters():
        if p.numel() == 0 or (include is not None and not include(name, p)):
            continue
        out[name] = tensor_importance(p, p.grad, name)
    return out
