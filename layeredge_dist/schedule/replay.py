"""Replay a schedule in virtual time: the engine under both the deadlock check and the simulator.

Each stage runs its actions in order on one compute stream. Compute takes ``duration(stage, action)`` seconds;
a send is asynchronous: the message occupies its directed link (sender stage -> receiver stage) for
``transfer_time(message)`` seconds, starting when the sender issues it or, with ``serialize_links``, when the
link has finished the previous message; a receive blocks until the message has arrived. Because every stage is
sequential and arrival times are fixed when a message is sent, the result does not depend on the order in
which stages are advanced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .actions import Action, Forward, Backward, OptimizerStep, RecvAct, RecvGrad, SendAct, SendGrad
from .schedule import Message, Schedule, ScheduleError


@dataclass(frozen=True)
class Span:
    """A compute action of one stage and when it ran (seconds from the step's start)."""

    stage: int
    action: Action
    start: float
    end: float


@dataclass(frozen=True)
class Transfer:
    """A message on its link (seconds from the step's start)."""

    message: Message
    src_stage: int
    dst_stage: int
    start: float
    end: float


@dataclass(frozen=True)
class Replay:
    """Per-stage compute spans, all transfers, and each stage's finish time (seconds)."""

    spans: tuple[tuple[Span, ...], ...]
    transfers: tuple[Transfer, ...]
    finish: tuple[float, ...]


class DeadlockError(ScheduleError):
    """Some stages wait forever; the message names each blocked stage, what it waits for, and any cycle."""


def replay(
    schedule: Schedule,
    duration: Callable[[int, Action], float],
    transfer_time: Callable[[Message], float],
    serialize_links: bool = True,
) -> Replay:
    """Run ``schedule`` in virtual time. Raises DeadlockError when no stage can proceed before all finish, and
    ScheduleError when the same message is sent twice."""
    p = schedule.num_stages
    acts = schedule.stages
    ptr = [0] * p
    clock = [0.0] * p
    spans: list[list[Span]] = [[] for _ in range(p)]
    transfers: list[Transfer] = []
    arrival: dict[Message, float] = {}
    link_free: dict[tuple[int, int], float] = {}
    progressed = True
    while progressed:
        progressed = False
        for s in range(p):
            while ptr[s] < len(acts[s]):
                a = acts[s][ptr[s]]
                if isinstance(a, (RecvAct, RecvGrad)):
                    msg = schedule.message(s, a)
                    assert msg is not None
                    if msg not in arrival:
                        break
                    clock[s] = max(clock[s], arrival[msg])
                elif isinstance(a, (SendAct, SendGrad)):
                    msg = schedule.message(s, a)
                    assert msg is not None
                    if msg in arrival:
                        raise ScheduleError(f"stage {s} sends {msg} a second time (action {ptr[s]}: {a.code()})")
                    link = (s, a.peer)
                    start = max(clock[s], link_free.get(link, 0.0)) if serialize_links else clock[s]
                    end = start + transfer_time(msg)
                    link_free[link] = end
                    arrival[msg] = end
                    transfers.append(Transfer(msg, s, a.peer, start, end))
                else:
                    assert isinstance(a, (Forward, Backward, OptimizerStep))
                    start = clock[s]
                    clock[s] = start + duration(s, a)
                    spans[s].append(Span(s, a, start, clock[s]))
                ptr[s] += 1
                progressed = True
    if any(ptr[s] < len(acts[s]) for s in range(p)):
        raise DeadlockError(_explain(schedule, ptr))
    return Replay(tuple(map(tuple, spans)), tuple(transfers), tuple(clock))


def _explain(schedule: Schedule, ptr: list[int]) -> str:
    """Name each blocked stage, what it waits for, and the first cycle of waits."""
    waits: dict[int, int] = {}
    lines = []
    for s, acts in enumerate(schedule.stages):
        if ptr[s] < len(acts):
            a = acts[ptr[s]]
            msg = schedule.message(s, a)
            assert msg is not None
            waits[s] = schedule.stage_of(msg.src)
            lines.append(f"stage {s} blocked at action {ptr[s]} ({a.code()}) waiting for {msg.kind} of micro-batch "
                         f"{msg.mb} from stage {waits[s]}")
    cycle: list[int] = []
    for start in waits:
        seen: list[int] = []
        s = start
        while s in waits and s not in seen:
            seen.append(s)
            s = waits[s]
        if s in seen:
            cycle = seen[seen.index(s):] + [s]
            break
    tail = (f"cycle of waits: {' -> '.join(f's{c}' for c in cycle)}" if cycle
            else "no cycle: the waits end at a stage that never sends the awaited message")
    return f"{schedule.name} deadlocks: " + "; ".join(lines) + "; " + tail
