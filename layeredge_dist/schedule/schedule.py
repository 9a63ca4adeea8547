"""A pipeline schedule: the ordered actions of every stage, plus the numbers that define it.

Model chunks are laid out as in Megatron's interleaved schedule: with ``p`` stages and ``v`` chunks per stage,
chunk ``c`` of stage ``s`` is *virtual stage* ``c * p + s``, and activations flow from virtual stage ``k`` to
``k + 1`` (so from stage ``p - 1`` back to stage 0 between chunks). Without interleaving ``v == 1`` and virtual
stages are stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .actions import Action, Backward, Forward, OptimizerStep, RecvAct, RecvGrad, SendAct, SendGrad


@dataclass(frozen=True, order=True)
class Message:
    """One tensor crossing a cut: its kind, micro-batch, and sending and receiving virtual stages."""

    kind: Literal["act", "grad"]
    mb: int
    src: int  # virtual stage that sends
    dst: int  # virtual stage that receives


@dataclass(frozen=True)
class Schedule:
    """Per-stage action lists. ``str(schedule)`` prints a table (one column per stage).

    Raises ValueError when ``stages`` does not have ``num_stages`` entries or a count is not positive. Use
    :func:`layeredge_dist.schedule.validate.validate` for the semantic checks.
    """

    name: str
    num_stages: int
    num_microbatches: int
    stages: tuple[tuple[Action, ...], ...]
    num_chunks: int = 1
    training: bool = True

    def __post_init__(self) -> None:
        if min(self.num_stages, self.num_microbatches, self.num_chunks) < 1:
            raise ValueError(f"stages, micro-batches and chunks must be >= 1 in {self.name}")
        object.__setattr__(self, "stages", tuple(tuple(a) for a in self.stages))
        if len(self.stages) != self.num_stages:
            raise ValueError(f"{self.name}: {len(self.stages)} action lists for {self.num_stages} stages")

    @property
    def num_virtual(self) -> int:
        """Number of virtual stages (model chunks in the whole pipeline)."""
        return self.num_stages * self.num_chunks

    def virtual_stage(self, stage: int, chunk: int) -> int:
        """Virtual stage index of ``chunk`` on ``stage``."""
        return chunk * self.num_stages + stage

    def stage_of(self, virtual: int) -> int:
        """Physical stage hosting ``virtual``."""
        return virtual % self.num_stages

    def message(self, stage: int, action: Action) -> Message | None:
        """The message a send/recv action on ``stage`` sends or waits for; None for compute actions."""
        if isinstance(action, (Forward, Backward, OptimizerStep)):
            return None
        v = self.virtual_stage(stage, action.chunk)
        if isinstance(action, SendAct):
            return Message("act", action.mb, v, v + 1)
        if isinstance(action, RecvAct):
            return Message("act", action.mb, v - 1, v)
        if isinstance(action, SendGrad):
            return Message("grad", action.mb, v, v - 1)
        assert isinstance(action, RecvGrad)
        return Message("grad", action.mb, v + 1, v)

    def compute_only(self) -> tuple[tuple[Action, ...], ...]:
        """Each stage's Forward/Backward/OptimizerStep actions, in order."""
        return tuple(tuple(a for a in acts if isinstance(a, (Forward, Backward, OptimizerStep)))
                     for acts in self.stages)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form: action codes per stage."""
        return {"name": self.name, "num_stages": self.num_stages, "num_microbatches": self.num_microbatches,
                "num_chunks": self.num_chunks, "training": self.training,
                "stages": [[a.code() for a in acts] for acts in self.stages]}

    def format_table(self, compute_only: bool = False) -> str:
        """A table with a header, one column per stage and one row per action slot.

        Codes: ``F3``/``B3`` forward/backward of micro-batch 3 (``F3.1``: chunk 1); ``sa3>1``/``ra3<0`` send /
        receive activation to / from a stage; ``sg``/``rg`` the same for gradients; ``OPT`` optimizer step.
        """
        cols = self.compute_only() if compute_only else self.stages
        cells = [[a.code() for a in acts] for acts in cols]
        width = max([len(f"s{s}") for s in range(self.num_stages)] + [len(c) for col in cells for c in col]) + 1
        rows = max((len(c) for c in cells), default=0)
        title = (f"{self.name}: {self.num_stages} stages, {self.num_microbatches} micro-batches"
                 + (f", {self.num_chunks} chunks/stage" if self.num_chunks > 1 else "")
                 + ("" if self.training else ", inference"))
        lines = [title, "step | " + " ".join(f"s{s}".ljust(width) for s in range(self.num_stages)).rstrip()]
        lines.append("-" * len(lines[-1]))
        for r in range(rows):
            row = " ".join((col[r] if r < len(col) else "").ljust(width) for col in cells).rstrip()
            lines.append(f"{r:4d} | {row}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_table()


class ScheduleError(ValueError):
    """A schedule breaks a rule (missing/duplicate action, bad order, unmatched message, deadlock)."""
