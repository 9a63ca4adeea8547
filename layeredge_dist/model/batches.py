"""Batches of byte windows for next-byte prediction, reproducible from ``(seed, step)`` alone.

A batch is a pure function of the seed and the step number, so any stage (and a run resumed from a checkpoint)
regenerates exactly the batch of step ``s`` without replaying earlier steps.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


def _step_seed(seed: int, step: int) -> int:
    digest = hashlib.sha256(f"batch/{seed}/{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass(frozen=True, eq=False)
class BatchSampler:
    """Random windows of ``data`` (uint8 bytes): inputs and next-byte targets, each (batch_size, context).

    Raises ValueError when ``data`` is shorter than ``context + 1`` bytes or sizes are not positive.
    """

    data: torch.Tensor  # (N,) uint8
    batch_size: int
    context: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.context < 1:
            raise ValueError(f"batch_size and context must be >= 1, got {self.batch_size}, {self.context}")
        if self.data.dim() != 1 or self.data.numel() < self.context + 1:
            raise ValueError(f"need a 1-D byte tensor of >= {self.context + 1} bytes, got {tuple(self.data.shape)}")

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)`` of ``step``, both (B, T) int64; ``targets`` is ``inputs`` shifted by one byte."""
        g = torch.Generator().manual_seed(_step_seed(self.seed, step))
        starts = torch.randint(0, self.data.numel() - self.context, (self.batch_size,), generator=g)  # (B,)
        return windows(self.data, starts, self.context)


def windows(data: torch.Tensor, starts: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``data[s : s + T]`` and targets ``data[s + 1 : s + T + 1]`` for each start, (B, T) int64 each."""
    idx = starts.unsqueeze(1) + torch.arange(context + 1).unsqueeze(0)  # (B, T + 1)
    w = data[idx].long()  # (B, T + 1)
    return w[:, :-1], w[:, 1:]


def fixed_batches(
    data: torch.Tensor, batch_size: int, context: int, num_batches: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``num_batches`` batches of evenly spaced windows covering ``data`` (for a comparable validation loss).

    Raises ValueError when ``data`` is shorter than ``context + 1`` bytes.
    """
    span = data.numel() - context - 1
    if span < 0:
        raise ValueError(f"need >= {context + 1} bytes, got {data.numel()}")
    total = batch_size * num_batches
    starts = torch.linspace(0, span, total).long()  # (num_batches * B,)
    return [windows(data, starts[i * batch_size:(i + 1) * batch_size], context) for i in range(num_batches)]


def split_microbatches(x: torch.Tensor, num_microbatches: int) -> tuple[torch.Tensor, ...]:
    """Split the batch dimension into equal micro-batches; ValueError when it does not divide evenly."""
    if num_microbatches < 1 or x.shape[0] % num_microbatches:
        raise ValueError(f"batch of {x.shape[0]} does not split into {num_microbatches} equal micro-batches")
    return tuple(x.chunk(num_microbatches, dim=0))
