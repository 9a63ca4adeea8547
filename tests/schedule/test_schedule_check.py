"""The validator finds broken schedules, and the deadlock check names the cycle of waits."""

from __future__ import annotations

import pytest

from layeredge_dist.schedule import (Backward, DeadlockError, Forward, OptimizerStep, RecvAct, RecvGrad, Schedule,
                                     ScheduleError, SendAct, SendGrad, gpipe, validate)


def _two_stage(stage0: list, stage1: list, m: int = 1) -> Schedule:
    return Schedule("hand-made", 2, m, (tuple(stage0), tuple(stage1)))


GOOD0 = [Forward(0), SendAct(0, 1), RecvGrad(0, 1), Backward(0), OptimizerStep()]
GOOD1 = [RecvAct(0, 0), Forward(0), Backward(0), SendGrad(0, 0), OptimizerStep()]


def test_hand_made_schedule_is_valid() -> None:
    validate(_two_stage(GOOD0, GOOD1))


def test_cycle_of_waits_is_reported() -> None:
    # Stage 0 waits for the gradient before sending the activation stage 1 waits for.
    stage0 = [Forward(0), RecvGrad(0, 1), SendAct(0, 1), Backward(0), OptimizerStep()]
    with pytest.raises(DeadlockError, match=r"cycle of waits: s0 -> s1 -> s0"):
        validate(_two_stage(stage0, GOOD1))


@pytest.mark.parametrize("stage0,stage1,match", [
    ([Forward(0), RecvGrad(0, 1), Backward(0), OptimizerStep()], GOOD1, "never sent"),  # activation never sent
    (GOOD0, [RecvAct(0, 0), Forward(0), Backward(0), OptimizerStep()], "never sent"),  # gradient never sent
    ([Forward(0), SendAct(0, 1), SendAct(0, 1), RecvGrad(0, 1), Backward(0), OptimizerStep()], GOOD1, "more than once"),
    ([SendAct(0, 1), Forward(0), RecvGrad(0, 1), Backward(0), OptimizerStep()], GOOD1, "before the compute"),
    (GOOD0, [Forward(0), RecvAct(0, 0), Backward(0), SendGrad(0, 0), OptimizerStep()], "after the compute"),
    ([Forward(0), SendAct(0, 1), RecvGrad(0, 1), Backward(0)], GOOD1, "no optimizer step"),
    ([Forward(0), SendAct(0, 1), RecvGrad(0, 1), Backward(0), OptimizerStep(), OptimizerStep()], GOOD1, "second"),
    ([Forward(0), SendAct(0, 1), RecvGrad(0, 1), Backward(0), Backward(0), OptimizerStep()], GOOD1, "twice"),
    ([Backward(0), Forward(0), SendAct(0, 1), RecvGrad(0, 1), OptimizerStep()], GOOD1, "backward before forward"),
    ([Forward(0), SendAct(0, 1), RecvGrad(0, 1), OptimizerStep(), Backward(0)], GOOD1, "after the optimizer"),
    ([Forward(0), SendAct(0, 0), RecvGrad(0, 1), Backward(0), OptimizerStep()], GOOD1, "peer 0"),
    ([Forward(1), SendAct(0, 1), RecvGrad(0, 1), Backward(0), OptimizerStep()], GOOD1, "out of range"),
    (GOOD0, [RecvAct(0, 0), Forward(0), SendGrad(0, 0), OptimizerStep()], "before the compute"),
])
def test_broken_schedules_are_rejected(stage0: list, stage1: list, match: str) -> None:
    with pytest.raises(ScheduleError, match=match):
        validate(_two_stage(stage0, stage1))


def test_missing_forward_is_named() -> None:
    s = gpipe(2, 2)
    broken = Schedule(s.name, 2, 3, s.stages)  # claims 3 micro-batches, runs 2
    with pytest.raises(ScheduleError, match="no forward of micro-batch 2"):
        validate(broken)


def test_inference_schedule_must_not_train() -> None:
    with pytest.raises(ScheduleError, match="no optimizer step"):
        validate(Schedule("inf", 1, 1, ((Forward(0), OptimizerStep()),), training=False))


def test_wrong_number_of_stage_lists() -> None:
    with pytest.raises(ValueError, match="action lists"):
        Schedule("x", 3, 1, ((Forward(0),),))
