"""Does running the partitions one after another equal the single-process model? Measure it.

:func:`compare_chain` builds every stage's partition and the native model with the same weights, runs the same
micro-batches through both, and reports the largest absolute differences of outputs, loss and parameter
gradients (the gradients of cross-stage tied copies are summed first, as the stage runtime must do).
Dropout must be off in the config for the training comparison to be meaningful (it draws different masks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .chain import run_chain, train_chain
from .family import Side, family_for
from .partition import Partition, build_partition, build_reference
from .spec import ModelSpec, partition_specs
from .state import merge_state_dicts


@dataclass(frozen=True)
class Agreement:
    """Largest absolute differences between the chained partitions and the native model.

    ``worst_grad`` names the native parameter with the largest gradient difference.
    """

    max_abs_output_diff: float
    max_abs_loss_diff: float | None
    max_abs_grad_diff: float | None
    worst_grad: str | None
    loss: float | None

    def worst(self) -> float:
        """The largest of all measured differences."""
        return max(d for d in (self.max_abs_output_diff, self.max_abs_loss_diff, self.max_abs_grad_diff)
                   if d is not None)


def concat_sides(sides: Sequence[Side]) -> dict[str, torch.Tensor]:
    """Micro-batch side inputs joined along the batch dimension."""
    return {k: torch.cat([s[k] for s in sides], dim=0) for k in sides[0]}


def merge_grads(model: ModelSpec, cuts: Sequence[int],
                per_stage: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-(virtual-)stage gradients in partition keys -> native names, tied copies summed into their source."""
    merged = merge_state_dicts(model, cuts, per_stage)
    keymap = family_for(model.family, model.config).key_map()
    for dst, src in keymap.tied:
        if dst in merged and src in merged:
            copy = merged.pop(dst)
            if copy is not merged[src]:
                merged[src] = merged[src] + copy
    return merged


def partition_grads(model: ModelSpec, cuts: Sequence[int], parts: Sequence[Partition]) -> dict[str, torch.Tensor]:
    """Parameter gradients of all partitions under native names, tied copies summed into their source.

    Parameters without a gradient are left out.
    """
    return merge_grads(model, cuts, [{k: p.grad for k, p in part.named_parameters(remove_duplicate=False)
                                      if p.grad is not None} for part in parts])


def reference_step(model: ModelSpec, inputs: Sequence[torch.Tensor],
                   sides: Sequence[Mapping[str, torch.Tensor]]) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Single-process reference of one pipeline training step: the native model in train mode runs each
    micro-batch, backpropagating ``loss / len(inputs)``; returns the per-micro-batch losses and the accumulated
    gradients under native names."""
    native = build_reference(model=model)
    native.train()
    family = family_for(model.family, model.config)
    losses = []
    for x, side in zip(inputs, sides):
        loss = family.native_loss(native, x, side)
        (loss / len(inputs)).backward()
        losses.append(float(loss.detach()))
    return losses, {k: p.grad for k, p in native.named_parameters() if p.grad is not None}


def grad_difference(want: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor]) -> tuple[float, str]:
    """Largest absolute gradient difference and the parameter it occurs in.

    Raises AssertionError when the two hold different parameter sets.
    """
    if set(want) != set(got):
        raise AssertionError(f"gradient sets differ: only reference {sorted(set(want) - set(got))[:3]}, "
                             f"only pipeline {sorted(set(got) - set(want))[:3]}")
    diffs = {k: float((got[k] - g).abs().max()) for k, g in want.items()}
    worst = max(diffs, key=diffs.__getitem__)
    return diffs[worst], worst


def compare_chain(
    model: ModelSpec,
    cuts: Sequence[int],
    inputs: Sequence[torch.Tensor],
    sides: Sequence[Mapping[str, torch.Tensor]],
    train: bool = True,
) -> Agreement:
    """Run ``inputs`` (one tensor per micro-batch) through the chained partitions and the native model.

    Outputs are compared in eval mode; with ``train`` the loss and gradients of one step over all micro-batches
    (mean loss, full batch on the native side) are compared too. Raises ValueError for mismatched inputs.
    """
    if len(inputs) != len(sides) or not inputs:
        raise ValueError(f"need as many sides as inputs (>0), got {len(inputs)} and {len(sides)}")
    family = family_for(model.family, model.config)
    native = build_reference(model=model)
    parts = [build_partition(spec) for spec in partition_specs(model, cuts)]
    full_x = torch.cat(list(inputs), dim=0)
    full_side = concat_sides(sides)

    native.eval()
    for part in parts:
        part.eval()
    with torch.no_grad():
        want = family.run_native(native, full_x, full_side)
    got = torch.cat([run_chain(parts, x, side)[0] for x, side in zip(inputs, sides)], dim=0)
    out_diff = float((got - want).abs().max())
    if not train:
        return Agreement(out_diff, None, None, None, None)

    native.train()
    for part in parts:
        part.train()
        part.zero_grad(set_to_none=True)
    native.zero_grad(set_to_none=True)
    native_loss = family.native_loss(native, full_x, full_side)
    native_loss.backward()
    step = train_chain(parts, list(inputs), list(sides))
    want_grads = {k: p.grad for k, p in native.named_parameters() if p.grad is not None}
    worst_diff, worst = grad_difference(want_grads, partition_grads(model, cuts, parts))
    return Agreement(out_diff, abs(step.loss - native_loss.item()), worst_diff, worst, step.loss)
