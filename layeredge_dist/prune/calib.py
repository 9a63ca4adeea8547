"""Calibration passes over in-process partitions: the tensors crossing the cuts (with their gradients), channel
importance there, and the validation loss of a chain of partitions.

Batches are ``(input, side)`` pairs (a :class:`~layeredge_dist.model.Workload`'s ``batch`` / ``val_batches``).
Partitions are put in eval mode for the measurement and left in the mode they had; parameter gradients
accumulated by the calibration are cleared.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from layeredge_dist.measure import ChannelAccumulator, ChannelScores
from layeredge_dist.model import Partition, split_batch, train_chain

Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]


@contextlib.contextmanager
def eval_mode(parts: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Partitions in eval mode inside the block, their previous mode restored after."""
    modes = [p.training for p in parts]
    for p in parts:
        p.eval()
    try:
        yield
    finally:
        for p, m in zip(parts, modes):
            p.train(m)


def _zero_grads(parts: Sequence[torch.nn.Module]) -> None:
    for p in parts:
        p.zero_grad(set_to_none=True)


def cut_tensors(parts: Sequence[Partition], batches: Sequence[Batch], microbatches: int = 1,
                grads: bool = True) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Per cut: (activations, gradients) of every calibration micro-batch, as the pipeline computes them.

    With ``grads=False`` only forward passes run and the gradient lists are empty.
    """
    n_cuts = len(parts) - 1
    out: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = [([], []) for _ in range(n_cuts)]
    with eval_mode(parts):
        for batch in batches:
            xs, sides = split_batch(batch, microbatches)
            if grads:
                step = train_chain(parts, xs, sides)
                for k in range(n_cuts):
                    out[k][0].extend(step.activations[k])
                    out[k][1].extend(step.gradients[k])
            else:
                with torch.no_grad():
                    for x, side in zip(xs, sides):
                        h = x
                        for k, part in enumerate(parts[:-1]):
                            h = part(h, side)
                            out[k][0].append(h)
    _zero_grads(parts)
    return out


def cut_channel_scores(parts: Sequence[Partition], batches: Sequence[Batch], microbatches: int = 1
                       ) -> list[ChannelScores]:
    """Channel importance (Taylor ``E|sum a_c g_c|``, L2, mean |a|) of the tensor crossing each cut."""
    scores = []
    for acts, grads in cut_tensors(parts, batches, microbatches, grads=True):
        acc = ChannelAccumulator()
        for a, g in zip(acts, grads):
            acc.add(a, g)
        scores.append(acc.result())
    return scores


def val_loss(parts: Sequence[Partition], batches: Sequence[Batch]) -> float:
    """Mean loss of the chain over ``batches`` (no gradients, eval mode)."""
    if not batches:
        raise ValueError("val_loss needs at least one batch")
    total = 0.0
    with eval_mode(parts), torch.no_grad():
        for x, side in batches:
            h = x
            for part in parts:
                h = part(h, side)
            total += float(parts[-1].loss(h, side))
    return total / len(batches)


def accumulate_gradients(parts: Sequence[Partition], batches: Sequence[Batch], microbatches: int = 1) -> None:
    """Leave in every parameter's ``.grad`` the mean gradient over ``batches`` (eval mode), for Taylor scores."""
    _zero_grads(parts)
    with eval_mode(parts):
        for batch in batches:
            xs, sides = split_batch(batch, microbatches)
            train_chain(parts, xs, sides)
    for part in parts:
        for p in part.parameters():
            if p.grad is not None:
                p.grad.div_(len(batches))
