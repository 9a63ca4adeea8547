"""The actions a stage executes, in order. Plain frozen data.

Semantics (shared by the stage runtime, the validator and the simulator):

- A stage runs its actions strictly in list order on one compute stream.
- ``Forward``/``Backward`` run one micro-batch through one model chunk of the stage (chunk 0 unless the schedule
  is interleaved). On the last virtual stage ``Forward`` includes the loss and ``Backward`` starts from it.
- ``SendAct``/``SendGrad`` hand a tensor to the transport and return at once (sends are asynchronous and
  buffered); ``RecvAct``/``RecvGrad`` block until the matching tensor has arrived.
- ``OptimizerStep`` steps the stage's optimizer once all its backwards are done.

``peer`` is the other stage's index. ``chunk`` is the local model chunk: for a send, the chunk that produced
the tensor; for a receive, the chunk that will consume it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class Forward:
    """Run micro-batch ``mb`` forward through local chunk ``chunk``."""

    mb: int
    chunk: int = 0

    def code(self) -> str:
        """Short text for tables: ``F3`` (``F3.1`` for chunk 1)."""
        return f"F{self.mb}" + (f".{self.chunk}" if self.chunk else "")


@dataclass(frozen=True)
class Backward:
    """Run micro-batch ``mb`` backward through local chunk ``chunk``."""

    mb: int
    chunk: int = 0

    def code(self) -> str:
        """Short text for tables: ``B3`` (``B3.1`` for chunk 1)."""
        return f"B{self.mb}" + (f".{self.chunk}" if self.chunk else "")


@dataclass(frozen=True)
class SendAct:
    """Send micro-batch ``mb``'s activation produced by ``chunk`` to stage ``peer`` (asynchronous)."""

    mb: int
    peer: int
    chunk: int = 0

    def code(self) -> str:
        """``sa3>1``: send activation of micro-batch 3 to stage 1."""
        return f"sa{self.mb}" + (f".{self.chunk}" if self.chunk else "") + f">{self.peer}"


@dataclass(frozen=True)
class RecvAct:
    """Wait for micro-batch ``mb``'s activation from stage ``peer``, for local chunk ``chunk``."""

    mb: int
    peer: int
    chunk: int = 0

    def code(self) -> str:
        """``ra3<0``: receive activation of micro-batch 3 from stage 0."""
        return f"ra{self.mb}" + (f".{self.chunk}" if self.chunk else "") + f"<{self.peer}"


@dataclass(frozen=True)
class SendGrad:
    """Send the gradient of micro-batch ``mb``'s input of ``chunk`` back to stage ``peer`` (asynchronous)."""

    mb: int
    peer: int
    chunk: int = 0

    def code(self) -> str:
        """``sg3>0``: send gradient of micro-batch 3 to stage 0."""
        return f"sg{self.mb}" + (f".{self.chunk}" if self.chunk else "") + f">{self.peer}"


@dataclass(frozen=True)
class RecvGrad:
    """Wait for the gradient of micro-batch ``mb``'s output of ``chunk`` from stage ``peer``."""

    mb: int
    peer: int
    chunk: int = 0

    def code(self) -> str:
        """``rg3<2``: receive gradient of micro-batch 3 from stage 2."""
        return f"rg{self.mb}" + (f".{self.chunk}" if self.chunk else "") + f"<{self.peer}"


@dataclass(frozen=True)
class OptimizerStep:
    """Step this stage's optimizer (and zero its gradients)."""

    def code(self) -> str:
        """``OPT``."""
        return "OPT"


Action = Union[Forward, Backward, SendAct, RecvAct, SendGrad, RecvGrad, OptimizerStep]
Compute = Union[Forward, Backward, OptimizerStep]
Send = Union[SendAct, SendGrad]
Recv = Union[RecvAct, RecvGrad]
