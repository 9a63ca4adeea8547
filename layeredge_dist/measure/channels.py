"""Importance of the channels of a tensor crossing a cut (channel = last, feature dimension).

For an activation ``a`` of shape (B, ..., C) and its gradient ``g`` (same shape), per channel ``c``:

- ``taylor[c] = E_b |sum_{positions} a[b, ..., c] * g[b, ..., c]|``: the first-order estimate of how much sample
  ``b``'s loss changes when channel ``c`` is zeroed (the criterion of Molchanov et al. 2017), absolute value per
  sample, then the mean over samples;
- ``l2[c] = sqrt(E_b sum_{positions} a[b, ..., c]²)``: the root-mean-square over samples of the per-sample L2
  norm of the channel;
- ``mean_abs[c] = mean |a[..., c]|`` over all elements of the channel.

:class:`ChannelAccumulator` aggregates micro-batches with O(C) memory; ``g`` is optional (no ``taylor`` then).
The first dimension is the sample dimension; a 1-D tensor is one sample. Scores live on the device of the
first tensor added.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChannelScores:
    """Per-channel importance, each a float64 tensor of shape (C,); ``taylor`` is None without gradients."""

    taylor: torch.Tensor | None
    l2: torch.Tensor
    mean_abs: torch.Tensor
    samples: int

    @property
    def channels(self) -> int:
        """Number of channels C."""
        return int(self.l2.numel())


def _as_samples(t: torch.Tensor) -> torch.Tensor:
    """(B, ..., C) -> (B, P, C) float64; a 1-D (C,) tensor is one sample at one position."""
    if t.dim() == 0:
        raise ValueError("a channel tensor needs at least one dimension (the channels)")
    t = t.detach().to(torch.float64)
    if t.dim() == 1:
        return t.reshape(1, 1, -1)
    return t.reshape(t.shape[0], -1, t.shape[-1])


class ChannelAccumulator:
    """Running :class:`ChannelScores` over micro-batches (O(C) memory).

    ``channels``, when given, is checked against every tensor; otherwise the first tensor fixes it.
    """

    def __init__(self, channels: int | None = None) -> None:
        self.channels = channels
        self.samples = 0
        self._elements = 0  # elements per channel seen
        self._taylor: torch.Tensor | None = None
        self._taylor_samples = 0
        self._sq: torch.Tensor | None = None
        self._abs: torch.Tensor | None = None

    def add(self, a: torch.Tensor, g: torch.Tensor | None = None) -> ChannelAccumulator:
        """Fold in activation ``a`` (B, ..., C) and optionally its gradient ``g`` (same shape); returns self.

        Raises ValueError for a channel count other than the accumulator's or a gradient of another shape. Once
        some call passed no gradient while another did, ``taylor`` averages over the samples that had one.
        """
        x = _as_samples(a)  # (B, P, C)
        c = x.shape[-1]
        if self.channels is None:
            self.channels = c
        elif c != self.channels:
            raise ValueError(f"expected {self.channels} channels in the last dimension, got {c}")
        if self._sq is None:
            self._sq = torch.zeros(c, dtype=torch.float64, device=x.device)
            self._abs = torch.zeros(c, dtype=torch.float64, device=x.device)
        assert self._abs is not None
        b = x.shape[0]
        self._sq += (x * x).sum(dim=(0, 1))
        self._abs += x.abs().sum(dim=(0, 1))
        self._elements += b * x.shape[1]
        self.samples += b
        if g is not None:
            if tuple(g.shape) != tuple(a.shape):
                raise ValueError(f"gradient shape {tuple(g.shape)} differs from activation shape {tuple(a.shape)}")
            per_sample = (x * _as_samples(g)).sum(dim=1).abs()  # (B, C)
            if self._taylor is None:
                self._taylor = torch.zeros(c, dtype=torch.float64, device=x.device)
            self._taylor += per_sample.sum(dim=0)
            self._taylor_samples += b
        return self

    def result(self) -> ChannelScores:
        """The scores so far; raises ValueError before any tensor was added."""
        if self._sq is None or self._abs is None or self.samples == 0:
            raise ValueError("no activations added yet")
        taylor = self._taylor / self._taylor_samples if self._taylor is not None else None
        return ChannelScores(
            taylor=taylor,
            l2=torch.sqrt(self._sq / self.samples),
            mean_abs=self._abs / max(self._elements, 1),
            samples=self.samples,
        )


def channel_importance(a: torch.Tensor, g: torch.Tensor | None = None) -> ChannelScores:
    """:class:`ChannelScores` of one activation (and optionally its gradient)."""
    return ChannelAccumulator().add(a, g).result()


def least_important(scores: torch.Tensor | Sequence[float], k: int) -> torch.Tensor:
    """Indices (int64) of the ``k`` lowest scores, least important first; ties go to the lower index.

    NaN scores count as least important. Raises ValueError unless ``0 <= k <= len(scores)``.
    """
    s = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    if not 0 <= k <= s.numel():
        raise ValueError(f"k must lie in [0, {s.numel()}], got {k}")
    s = torch.where(torch.isnan(s), torch.full_like(s, -math.inf), s)
    order = torch.sort(s, stable=True).indices
    return order[:k].to(torch.int64)
