"""Simulate one training step of a schedule: step time, bubble fraction and per-stage timelines.

All times are seconds. Per-stage times may be one number for all stages or a sequence with one entry per stage
(or per virtual stage when interleaved: the time of one chunk's forward/backward). Communication times are per
*edge*: one entry per cut between virtual stages ``k`` and ``k + 1`` (``p - 1`` entries without interleaving),
the time to move one micro-batch's tensor across it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .actions import Action, Backward, Forward, OptimizerStep
from .replay import Span, Transfer, replay
from .schedule import Message, Schedule

Times = float | Sequence[float]


@dataclass(frozen=True)
class SimResult:
    """Outcome of :func:`simulate`.

    ``bubble_fraction`` is the idle share of all stages' time: ``1 - sum(busy) / (p * step_time)``; the
    per-stage values use each stage's own busy time over the same step time.
    """

    step_time: float
    bubble_fraction: float
    stage_bubble: tuple[float, ...]
    busy: tuple[float, ...]
    timelines: tuple[tuple[Span, ...], ...]
    transfers: tuple[Transfer, ...]

    def format_gantt(self, width: int = 72) -> str:
        """An ASCII timeline, one row per stage: forward of micro-batch ``i`` is the digit ``i % 10``, backward
        the letter ``'a' + i % 26``, ``o`` the optimizer step, ``.`` idle."""
        if self.step_time <= 0:
            return "\n".join(f"s{s} |" for s in range(len(self.timelines)))
        dt = self.step_time / width
        rows = []
        for s, spans in enumerate(self.timelines):
            cells = ["."] * width
            for span in spans:
                if span.end <= span.start:
                    continue  # zero-time actions (e.g. a free optimizer step) are not drawn
                lo, hi = int(span.start / dt + 0.5), int(span.end / dt + 0.5)
                for c in range(lo, min(max(hi, lo + 1), width)):
                    cells[c] = _glyph(span.action)
            rows.append(f"s{s} |{''.join(cells)}|")
        rows.append(f"step {self.step_time:.6g} s, bubble {self.bubble_fraction:.1%}")
        return "\n".join(rows)


def _glyph(action: Action) -> str:
    if isinstance(action, Forward):
        return str(action.mb % 10)
    if isinstance(action, Backward):
        return chr(ord("a") + action.mb % 26)
    return "o"


def _per(times: Times, n: int, what: str) -> tuple[float, ...]:
    """Broadcast a number or check a sequence's length; ValueError otherwise."""
    if isinstance(times, (int, float)):
        return (float(times),) * n
    out = tuple(float(t) for t in times)
    if len(out) != n:
        raise ValueError(f"{what}: expected {n} values, got {len(out)}")
    if any(t < 0 for t in out):
        raise ValueError(f"{what}: times must be >= 0, got {out}")
    return out


def _per_virtual(times: Times, schedule: Schedule, what: str) -> tuple[float, ...]:
    """Times per virtual stage from one number, one per stage, or one per virtual stage."""
    if not isinstance(times, (int, float)) and len(times) == schedule.num_stages != schedule.num_virtual:
        per_stage = _per(times, schedule.num_stages, what)
        return tuple(per_stage[schedule.stage_of(k)] for k in range(schedule.num_virtual))
    return _per(times, schedule.num_virtual, what)


def simulate(
    schedule: Schedule,
    fwd_time: Times,
    bwd_time: Times,
    comm_time: Times = 0.0,
    grad_comm_time: Times | None = None,
    opt_time: Times = 0.0,
    serialize_links: bool = True,
) -> SimResult:
    """Replay ``schedule`` with the given times (seconds).

    Args:
        fwd_time, bwd_time: compute time of one micro-batch (per stage, or per virtual stage).
        comm_time: activation transfer time per edge (``num_virtual - 1`` values, or one number).
        grad_comm_time: gradient transfer time per edge; None means the same as ``comm_time``.
        opt_time: optimizer step time per stage.
        serialize_links: a directed link carries one message at a time (bandwidth-bound links); False lets
            transfers overlap (latency-bound links).

    Raises ValueError for a wrongly sized time list and DeadlockError when the schedule cannot finish.
    """
    fwd = _per_virtual(fwd_time, schedule, "fwd_time")
    bwd = _per_virtual(bwd_time, schedule, "bwd_time")
    edges = schedule.num_virtual - 1
    act_comm = _per(comm_time, edges, "comm_time")
    grad_comm = act_comm if grad_comm_time is None else _per(grad_comm_time, edges, "grad_comm_time")
    opt = _per(opt_time, schedule.num_stages, "opt_time")

    def duration(stage: int, action: Action) -> float:
        if isinstance(action, OptimizerStep):
            return opt[stage]
        k = schedule.virtual_stage(stage, action.chunk)
        return fwd[k] if isinstance(action, Forward) else bwd[k]

    def transfer(msg: Message) -> float:
        edge = min(msg.src, msg.dst)
        return act_comm[edge] if msg.kind == "act" else grad_comm[edge]

    run = replay(schedule, duration, transfer, serialize_links)
    step = max(run.finish, default=0.0)
    busy = tuple(sum(sp.end - sp.start for sp in spans) for spans in run.spans)
    p = schedule.num_stages
    stage_bubble = tuple(1.0 - b / step if step > 0 else 0.0 for b in busy)
    bubble = 1.0 - sum(busy) / (p * step) if step > 0 else 0.0
    return SimResult(step, bubble, stage_bubble, busy, run.spans, run.transfers)
