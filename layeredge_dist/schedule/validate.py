"""Checks that a schedule can be executed: complete, ordered, matched and free of deadlock."""

from __future__ import annotations

from collections import Counter

from .actions import Backward, Forward, OptimizerStep, RecvAct, RecvGrad, SendAct, SendGrad
from .replay import replay
from .schedule import Message, Schedule, ScheduleError


def expected_messages(schedule: Schedule) -> set[Message]:
    """Every message a correct schedule sends exactly once (activations; gradients too when training)."""
    out: set[Message] = set()
    for mb in range(schedule.num_microbatches):
        for k in range(schedule.num_virtual - 1):
            out.add(Message("act", mb, k, k + 1))
            if schedule.training:
                out.add(Message("grad", mb, k + 1, k))
    return out


def validate(schedule: Schedule) -> None:
    """Raise ScheduleError (DeadlockError for a deadlock) with the first problem found; return None if valid.

    Checks: fields in range and peers consistent with the chunk layout; every micro-batch forwarded (and, when
    training, backwarded after its forward) exactly once per chunk of every stage; every message sent and
    received exactly once, receives before the compute that consumes them and sends after the compute that
    produces them; one optimizer step per stage after its last backward (none for inference); and a replay
    reaches the end (no stage waits forever, no cycle of waits).
    """
    p, m, v = schedule.num_stages, schedule.num_microbatches, schedule.num_chunks
    sent: Counter[Message] = Counter()
    received: Counter[Message] = Counter()
    for s, acts in enumerate(schedule.stages):
        pos: dict[tuple[str, int, int], int] = {}
        for i, a in enumerate(acts):
            where = f"{schedule.name} stage {s} action {i} ({a.code()})"
            if isinstance(a, OptimizerStep):
                if not schedule.training:
                    raise ScheduleError(f"{where}: an inference schedule has no optimizer step")
                if "opt" in {k[0] for k in pos}:
                    raise ScheduleError(f"{where}: second optimizer step")
                pos[("opt", 0, 0)] = i
                continue
            if not 0 <= a.mb < m or not 0 <= a.chunk < v:
                raise ScheduleError(f"{where}: micro-batch or chunk out of range ({m} micro-batches, {v} chunks)")
            if isinstance(a, (Forward, Backward)):
                kind = "F" if isinstance(a, Forward) else "B"
                if kind == "B" and not schedule.training:
                    raise ScheduleError(f"{where}: an inference schedule has no backward")
                if (kind, a.mb, a.chunk) in pos:
                    raise ScheduleError(f"{where}: micro-batch {a.mb} chunk {a.chunk} run twice")
                if kind == "B" and ("F", a.mb, a.chunk) not in pos:
                    raise ScheduleError(f"{where}: backward before forward")
                if ("opt", 0, 0) in pos:
                    raise ScheduleError(f"{where}: compute after the optimizer step")
                pos[(kind, a.mb, a.chunk)] = i
                continue
            msg = schedule.message(s, a)
            assert msg is not None
            if not (0 <= msg.src < schedule.num_virtual and 0 <= msg.dst < schedule.num_virtual):
                raise ScheduleError(f"{where}: no virtual stage {min(msg.src, msg.dst)} .. {max(msg.src, msg.dst)}")
            other = msg.dst if isinstance(a, (SendAct, SendGrad)) else msg.src
            if a.peer != schedule.stage_of(other):
                raise ScheduleError(f"{where}: peer {a.peer} but virtual stage {other} is on stage "
                                    f"{schedule.stage_of(other)}")
            if msg.kind == "grad" and not schedule.training:
                raise ScheduleError(f"{where}: an inference schedule moves no gradients")
            compute = ("F" if msg.kind == "act" else "B", a.mb, a.chunk)
            if isinstance(a, (SendAct, SendGrad)):
                if compute not in pos:
                    raise ScheduleError(f"{where}: sent before the compute that produces it")
                sent[msg] += 1
            else:
                assert isinstance(a, (RecvAct, RecvGrad))
                if compute in pos:
                    raise ScheduleError(f"{where}: received after the compute that needs it")
                received[msg] += 1
        for mb in range(m):
            for c in range(v):
                for kind in ("F", "B") if schedule.training else ("F",):
                    if (kind, mb, c) not in pos:
                        name = "forward" if kind == "F" else "backward"
                        raise ScheduleError(f"{schedule.name} stage {s}: no {name} of micro-batch {mb} chunk {c}")
        if schedule.training and ("opt", 0, 0) not in pos:
            raise ScheduleError(f"{schedule.name} stage {s}: no optimizer step")
    expected = expected_messages(schedule)
    for label, counts in (("sent", sent), ("received", received)):
        extra = sorted(msg for msg, n in counts.items() if n > 1 or msg not in expected)
        missing = sorted(expected - set(counts))
        if extra or missing:
            raise ScheduleError(f"{schedule.name}: messages {label} more than once or unexpectedly: {extra[:4]}; "
                                f"never {label}: {missing[:4]}")
    replay(schedule, lambda s, a: 0.0, lambda msg: 0.0)


def peak_in_flight(schedule: Schedule) -> tuple[int, ...]:
    """Per stage, the most (micro-batch, chunk) units forwarded but not yet backwarded at any point.

    This bounds how many micro-batches' activations a stage must keep: ``m`` for GPipe, ``p - s`` for 1F1B.
    """
    peaks = []
    for acts in schedule.stages:
        live = peak = 0
        for a in acts:
            if isinstance(a, Forward):
                live += 1
                peak = max(peak, live)
            elif isinstance(a, Backward):
                live -= 1
        peaks.append(peak)
    return tuple(peaks)
