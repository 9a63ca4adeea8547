"""``layeredge verify``: does the distributed pipeline compute what a single process computes?

For each schedule it runs one training step's forward and backward (no optimizer step) of the same batch
through the stage actors and through the native single-process model, and reports the largest absolute
differences of the per-micro-batch losses and of every parameter gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from layeredge_dist.model import Workload, split_batch
from layeredge_dist.model.verify import grad_difference, merge_grads, reference_step
from layeredge_dist.stage import StageSpec

from .driver import Pipeline, Placement


@dataclass(frozen=True)
class ScheduleAgreement:
    """Largest absolute differences pipeline vs single process for one schedule; ``worst_grad`` names the
    native parameter where the gradient differs most."""

    schedule: str
    max_abs_loss_diff: float
    max_abs_grad_diff: float
    worst_grad: str
    loss: float

    def to_dict(self) -> dict[str, object]:
        return {"max_abs_loss_diff": self.max_abs_loss_diff, "max_abs_grad_diff": self.max_abs_grad_diff,
                "worst_grad": self.worst_grad, "loss": self.loss}


def verify(specs: Sequence[StageSpec], workload: Workload, placement: Placement = Placement(),
           step: int = 0) -> list[ScheduleAgreement]:
    """Compare the pipeline with the single-process model on ``workload.batch(step)`` for each spec (one per
    schedule; all of the same model and micro-batch count).

    Raises StageFailure when the pipeline cannot run, AssertionError when the two hold different parameters,
    ValueError when the specs disagree on the model or micro-batches.
    """
    if not specs or len({(s.model, s.microbatches) for s in specs}) != 1:
        raise ValueError("verify needs at least one spec, all of one model and micro-batch count")
    batch = workload.batch(step)
    inputs, sides = split_batch(batch, specs[0].microbatches)
    want_losses, want_grads = reference_step(specs[0].model, inputs, sides)
    out = []
    for spec in specs:
        name = spec.schedule
        with Pipeline(spec, placement) as pipe:
            result = pipe.call(batch, "grad")
            got = merge_grads(spec.model, spec.cuts, pipe.gradients())
        losses = [float(o) for o in result.outputs]
        loss_diff = max(abs(a - b) for a, b in zip(losses, want_losses))
        grad_diff, worst = grad_difference(want_grads, got)
        out.append(ScheduleAgreement(name, loss_diff, grad_diff, worst, sum(losses) / len(losses)))
    return out
