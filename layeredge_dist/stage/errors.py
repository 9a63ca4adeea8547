"""Errors of the stage runtime. Each message names the stage, the step and what it was waiting for."""

from __future__ import annotations


class StageError(RuntimeError):
    """Base class of stage runtime failures."""


class StepAborted(StageError):
    """The driver aborted the step (another stage failed); the stage's per-step state was discarded."""


class PeerTimeout(StageError, TimeoutError):
    """A tensor a stage waited for did not arrive in time: the sending stage is dead, stuck or unreachable."""
