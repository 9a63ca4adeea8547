"""Run partitions one after another in one process, exactly as stages do across machines.

:func:`stage_forward` and :func:`stage_backward` are the per-micro-batch primitives a stage executes (the
boundary tensor is detached and made a leaf, so nothing but that tensor and its gradient crosses a cut);
:func:`run_chain` and :func:`train_chain` chain them over all stages for reference runs and tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .family import Side
from .partition import Partition


@dataclass
class SavedForward:
    """What a stage keeps between a micro-batch's forward and backward.

    ``input`` is the leaf the stage received (None when it takes an integer model input); ``output`` is the
    tensor sent onward, or the scaled loss on the last stage.
    """

    input: torch.Tensor | None
    output: torch.Tensor


def stage_forward(
    part: Partition, x: torch.Tensor, side: Side, train: bool = True, loss_scale: float = 1.0
) -> tuple[torch.Tensor, SavedForward | None]:
    """One stage's forward of one micro-batch.

    Returns ``(edge tensor to send, saved state)``; on the last stage in training, the first element is the
    unscaled loss (detached) and the saved output is ``loss * loss_scale`` (``1 / micro-batches`` makes
    accumulated gradients those of the full-batch mean). Without ``train`` no graph is kept and the state is
    None. The returned edge tensor is detached.
    """
    if not train:
        with torch.no_grad():
            return part(x, side), None
    leaf = x.detach().requires_grad_(True) if x.is_floating_point() else None
    out = part(leaf if leaf is not None else x, side)
    if part.spec.is_last:
        loss = part.loss(out, side)
        return loss.detach(), SavedForward(leaf, loss * loss_scale)
    return out.detach(), SavedForward(leaf, out)


def stage_backward(saved: SavedForward, grad_output: torch.Tensor | None) -> torch.Tensor | None:
    """One stage's backward of one micro-batch; accumulates parameter gradients.

    ``grad_output`` is the gradient of the edge tensor this stage sent (None on the last stage, whose output is
    the loss). Returns the gradient to send to the previous stage, or None on a stage with an integer input.
    Raises RuntimeError when called twice on the same state (the graph is freed after the first).
    """
    torch.autograd.backward(saved.output, grad_output)
    return saved.input.grad if saved.input is not None else None


def run_chain(parts: Sequence[Partition], x: torch.Tensor, side: Side) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Inference through all stages: ``(model output, tensors crossing each cut)``."""
    boundaries: list[torch.Tensor] = []
    h = x
    with torch.no_grad():
        for i, part in enumerate(parts):
            h = part(h, side)
            if i < len(parts) - 1:
                boundaries.append(h)
    return h, boundaries


@dataclass(frozen=True)
class ChainStep:
    """Result of :func:`train_chain`: the mean loss over micro-batches and the edge traffic of each cut."""

    loss: float
    activations: tuple[tuple[torch.Tensor, ...], ...]  # [cut][micro-batch], forward direction
    gradients: tuple[tuple[torch.Tensor, ...], ...]  # [cut][micro-batch], backward direction


def train_chain(
    parts: Sequence[Partition], inputs: Sequence[torch.Tensor], sides: Sequence[Side]
) -> ChainStep:
    """Forward and backward every micro-batch through every stage (GPipe order), accumulating gradients.

    ``inputs[i]`` and ``sides[i]`` are micro-batch ``i``; gradients are scaled by ``1 / len(inputs)`` so they
    equal the full-batch gradient of a mean loss over equal-sized micro-batches. Does not zero gradients nor step
    any optimizer. Raises ValueError when ``inputs`` and ``sides`` differ in length.
    """
    if len(inputs) != len(sides) or not inputs:
        raise ValueError(f"need as many sides as inputs (>0), got {len(inputs)} and {len(sides)}")
    m = len(inputs)
    cuts = len(parts) - 1
    acts: list[list[torch.Tensor]] = [[] for _ in range(cuts)]
    grads: list[list[torch.Tensor]] = [[] for _ in range(cuts)]
    saved: list[list[SavedForward]] = [[] for _ in parts]
    total = 0.0
    for x, side in zip(inputs, sides):
        h = x
        for s, part in enumerate(parts):
            h, state = stage_forward(part, h, side, train=True, loss_scale=1.0 / m)
            assert state is not None
            saved[s].append(state)
            if s < cuts:
                acts[s].append(h)
        total += float(h)
    for mb in range(m):
        g: torch.Tensor | None = None
        for s in reversed(range(len(parts))):
            g = stage_backward(saved[s][mb], g)
            if s > 0:
                assert g is not None, f"stage {s} received a non-float input; it cannot pass a gradient back"
                grads[s - 1].append(g)
    return ChainStep(total / m, tuple(map(tuple, acts)), tuple(map(tuple, grads)))
