"""The training loop on a :class:`~layeredge_dist.pipeline.driver.Pipeline`: steps, validation, checkpoints,
and recovery from a dead stage.

Step ``k`` (0-based) trains on ``workload.batch(k)``; a checkpoint named ``k`` holds the state after ``k``
optimizer steps. When a stage fails, the loop waits for Ray to restart it, reloads the newest complete
checkpoint on every stage and continues from there, so no step is lost or done twice: the final state equals an
uninterrupted run's (bit for bit with lossless edges on the same hardware).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from layeredge_dist.model import Batch, Workload
from layeredge_dist.stage import read_manifest
from layeredge_dist.transport import ProbeResult

from .driver import CallResult, Pipeline, StageFailure
from .setup import Identity


@dataclass(frozen=True)
class LoopConfig:
    """Steps, validation and checkpoint cadence (0 = never) of a training run."""

    steps: int
    eval_every: int = 0
    eval_batches: int = 4
    checkpoint_every: int = 0
    checkpoint_dir: str | None = None
    resume: bool = True
    max_failures: int = 3
    probe_every: int = 0  # steps between link re-measurements (0 = never)
    probe_bytes: int = 4 << 20


@dataclass
class TrainResult:
    """What a run did. Losses in nats; seconds."""

    start_step: int = 0
    steps_done: int = 0
    losses: list[float] = field(default_factory=list)  # per executed step (a redone step appears again)
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (steps done, loss)
    step_seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    resumed_from: list[int] = field(default_factory=list)
    wall_s: float = 0.0


class Events:
    """Callbacks of a training run; the default ones do nothing."""

    def step(self, step: int, loss: float, result: CallResult) -> None:
        """After optimizer step ``step`` (1-based count of steps done)."""

    def evaluated(self, step: int, val_loss: float) -> None:
        """After a validation pass at ``step`` steps done."""

    def checkpointed(self, step: int) -> None:
        """After a complete checkpoint of ``step`` steps."""

    def failed(self, step: int, error: StageFailure, resume_step: int) -> None:
        """A stage failed during step ``step``; training resumes after ``resume_step`` steps."""

    def down(self, error: StageFailure) -> None:
        """A stage failure was detected; recovery starts now."""

    def probed(self, step: int, links: dict[tuple[int, int], ProbeResult]) -> None:
        """Links were re-measured after ``step`` steps."""


class EventChain(Events):
    """Forwards every callback to each of ``events`` in order."""

    def __init__(self, *events: Events) -> None:
        self.events = events

    def step(self, step: int, loss: float, result: CallResult) -> None:
        for e in self.events:
            e.step(step, loss, result)

    def evaluated(self, step: int, val_loss: float) -> None:
        for e in self.events:
            e.evaluated(step, val_loss)

    def checkpointed(self, step: int) -> None:
        for e in self.events:
            e.checkpointed(step)

    def failed(self, step: int, error: StageFailure, resume_step: int) -> None:
        for e in self.events:
            e.failed(step, error, resume_step)

    def down(self, error: StageFailure) -> None:
        for e in self.events:
            e.down(error)

    def probed(self, step: int, links: dict[tuple[int, int], ProbeResult]) -> None:
        for e in self.events:
            e.probed(step, links)


def evaluate(pipe: Pipeline, batches: list[Batch]) -> float:
    """Mean validation loss over ``batches`` (forward-only calls; the last stage returns each loss)."""
    total = 0.0
    for batch in batches:
        result = pipe.call(batch, "eval")
        total += float(torch.stack([o.float() for o in result.outputs]).mean())
    return total / max(1, len(batches))


def train(pipe: Pipeline, workload: Workload, loop: LoopConfig, events: Events = Events(),
          before_step: Callable[[int], None] | None = None) -> TrainResult:
    """Train for ``loop.steps`` steps (resuming from ``loop.checkpoint_dir`` when asked and possible).

    ``before_step(k)`` runs before step ``k`` is launched (failure drills use it). Raises StageFailure when a
    stage fails and there is no checkpoint to resume from, or after ``max_failures`` failures; ValueError when
    the checkpoint belongs to another model or cut.
    """
    result = TrainResult()
    t0 = time.perf_counter()
    ident = Identity.of(pipe.base)
    ckpt = loop.checkpoint_dir if loop.checkpoint_every > 0 else None
    step = 0
    if ckpt is not None and loop.resume:
        manifest = read_manifest(ckpt)
        if manifest is not None:
            problem = ident.mismatch(manifest)
            if problem:
                raise ValueError(f"cannot resume from {ckpt}: {problem}; use another checkpoint_dir or resume=false")
            step = int(manifest["step"])
            pipe.load_checkpoint(ckpt, step)
            result.resumed_from.append(step)
    result.start_step = step
    if ckpt is not None and read_manifest(ckpt) is None:
        pipe.save_checkpoint(ckpt, step, ident.to_dict())  # a failure before the first periodic one can resume
    val_batches = workload.val_batches(loop.eval_batches) if loop.eval_every >= 0 else []
    while step < loop.steps:
        try:
            if before_step is not None:
                before_step(step)
            res = pipe.call(workload.batch(step), "train")
            step += 1
            loss = float(torch.stack([o.float() for o in res.outputs]).mean())
            result.losses.append(loss)
            result.step_seconds.append(res.seconds)
            events.step(step, loss, res)
            if ckpt is not None and step % loop.checkpoint_every == 0:
                pipe.save_checkpoint(ckpt, step, ident.to_dict())
                events.checkpointed(step)
            if loop.probe_every and step % loop.probe_every == 0:
                events.probed(step, pipe.probe_links(loop.probe_bytes))
            if val_batches and ((loop.eval_every and step % loop.eval_every == 0) or step == loop.steps):
                val = evaluate(pipe, val_batches)
                result.val_losses.append((step, val))
                events.evaluated(step, val)
        except StageFailure as err:
            result.failures.append(str(err))
            if ckpt is None or len(result.failures) > loop.max_failures:
                raise
            events.down(err)
            pipe.recover()
            manifest = read_manifest(ckpt)
            assert manifest is not None, "the loop writes a checkpoint before its first step"
            resume = int(manifest["step"])
            events.failed(step, err, resume)
            pipe.load_checkpoint(ckpt, resume)
            result.resumed_from.append(resume)
            step = resume
    result.steps_done = step
    result.wall_s = time.perf_counter() - t0
    return result
