"""Pipeline schedules as plain data: per-stage action lists that stages execute and the simulator replays.

Build one with :func:`gpipe`, :func:`one_f_one_b` or :func:`interleaved_one_f_one_b`; check it with
:func:`validate`; time it with :func:`simulate`; ``print(schedule)`` shows a table.
"""

from .actions import Action, Backward, Forward, OptimizerStep, RecvAct, RecvGrad, SendAct, SendGrad
from .builders import build, gpipe, interleaved_one_f_one_b, one_f_one_b
from .replay import DeadlockError, Span, Transfer
from .schedule import Message, Schedule, ScheduleError
from .simulate import SimResult, simulate
from .validate import expected_messages, peak_in_flight, validate

__all__ = [
    "Action", "Backward", "DeadlockError", "Forward", "Message", "OptimizerStep", "RecvAct", "RecvGrad",
    "Schedule", "ScheduleError", "SendAct", "SendGrad", "SimResult", "Span", "Transfer", "build",
    "expected_messages", "gpipe", "interleaved_one_f_one_b", "one_f_one_b", "peak_in_flight", "simulate",
    "validate",
]
