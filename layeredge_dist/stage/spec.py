"""What one stage process needs to know, as plain picklable data: :class:`StageSpec` and its parts.

The driver builds one :class:`StageSpec` per stage and hands it to the stage's process; the stage builds its
partition(s), optimizer, codecs and transport endpoints from it. Nothing here refers to Ray.

Edges and the host: stages are ``s0 .. s{P-1}``; the driver ("host") takes part in the edge transport as the
pseudo-stage ``s{P}``: model inputs travel on ``s{P}->s0`` and losses / outputs come back on ``s{P-1}->s{P}``.
Host edges are always ``raw`` (lossless, any dtype).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import torch

from layeredge_dist.model import ModelSpec, PartitionSpec
from layeredge_dist.schedule import (
    Forward,
    RecvAct,
    Schedule,
    SendAct,
    build,
    gpipe,
    interleaved_one_f_one_b,
)
from layeredge_dist.transport import TransportConfig
from layeredge_dist.types import EdgeId, StageId, TensorRole

#: Codec of the host edges (model inputs in, losses / outputs out): lossless for every dtype.
HOST_CODEC = "raw"
#: Run modes of one call: train (forward, backward, optimizer step), grad (train without the step), eval
#: (forward, losses back), infer (forward, outputs back).
Mode = Literal["train", "grad", "eval", "infer"]
TRAINING = ("train", "grad")
OPTIMIZERS = ("sgd", "adamw")
#: Learning-rate schedules after the warm-up (see :class:`OptimizerSpec`).
LR_SCHEDULES = ("constant", "cosine")
#: The param-group key that holds the number of optimizer steps taken (checkpointed with the optimizer).
SCHEDULE_STEP = "schedule_step"


@dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer every stage builds over its own parameters, and its learning-rate schedule.

    ``lr`` is the peak learning rate (parameter units per step). The rate of optimizer step ``k`` (0-based) is
    :meth:`lr_at` ``(k)``: a linear warm-up from ``lr / warmup_steps`` to ``lr`` over the first ``warmup_steps``
    steps, then ``lr`` (``schedule="constant"``) or a cosine from ``lr`` down to ``final_lr_frac * lr`` at step
    ``total_steps`` (``schedule="cosine"``; held there after). The rate is a pure function of the step count, which
    the optimizer keeps in its param groups (so a checkpoint restores it; :meth:`seek` re-aligns it). ValueError
    for a bad field.
    """

    name: str = "adamw"
    lr: float = 3e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 0
    final_lr_frac: float = 0.1

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.name!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"optimizer lr must be a positive finite number, got {self.lr}")
        if self.momentum < 0 or self.weight_decay < 0:
            raise ValueError(f"momentum and weight_decay must be >= 0, got {self.momentum}, {self.weight_decay}")
        if self.schedule not in LR_SCHEDULES:
            raise ValueError(f"lr schedule must be one of {LR_SCHEDULES}, got {self.schedule!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.schedule == "cosine" and self.total_steps < 1:
            raise ValueError(f"a cosine schedule needs total_steps >= 1, got {self.total_steps}")
        if not 0.0 < self.final_lr_frac <= 1.0:
            raise ValueError(f"final_lr_frac must be in (0, 1], got {self.final_lr_frac}")

    @property
    def scheduled(self) -> bool:
        """Whether the rate changes with the step (a warm-up or a non-constant schedule)."""
        return self.warmup_steps > 0 or self.schedule != "constant"

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based, the step about to be taken)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        f = self.final_lr_frac
        return self.lr * (f + (1.0 - f) * 0.5 * (1.0 + math.cos(math.pi * progress)))

    def build(self, params: list[torch.nn.Parameter], start_step: int = 0) -> torch.optim.Optimizer:
        """A fresh optimizer over ``params`` whose next step is step ``start_step`` of the schedule."""
        opt: torch.optim.Optimizer
        if self.name == "sgd":
            opt = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.scheduled:
            self.seek(opt, start_step)
            opt.register_step_pre_hook(self._before_step)
            opt.register_step_post_hook(self._after_step)
        return opt

    def seek(self, opt: torch.optim.Optimizer, step: int) -> None:
        """Make ``opt``'s next step step ``step`` of the schedule (e.g. after loading a checkpoint written
        before the step count was kept). No-op for an unscheduled spec."""
        if not self.scheduled:
            return
        for group in opt.param_groups:
            group[SCHEDULE_STEP] = int(step)
            group["lr"] = self.lr_at(int(step))

    def _before_step(self, opt: torch.optim.Optimizer, _args: object, _kwargs: object) -> None:
        for group in opt.param_groups:
            group["lr"] = self.lr_at(group.setdefault(SCHEDULE_STEP, 0))

    def _after_step(self, opt: torch.optim.Optimizer, _args: object, _kwargs: object) -> None:
        for group in opt.param_groups:
            group[SCHEDULE_STEP] = group.get(SCHEDULE_STEP, 0) + 1


@dataclass(frozen=True)
class EdgeCodecs:
    """Which codec encodes each edge and direction: ``forward`` for activations, ``backward`` for gradients,
    overridden per edge by ``edges = {"s0->s1": {"forward": "int8"}}``. Specs are checked when a stage parses
    them (CodecError for an unknown one)."""

    forward: str = "fp32"
    backward: str = "fp32"
    edges: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clean: dict[str, Mapping[str, str]] = {}
        for edge, sides in dict(self.edges).items():
            EdgeId.parse(edge)
            unknown = set(sides) - {"forward", "backward"}
            if unknown:
                raise ValueError(f"codec override for {edge}: unknown keys {sorted(unknown)}; "
                                 "use forward and/or backward")
            clean[edge] = MappingProxyType(dict(sides))
        object.__setattr__(self, "edges", MappingProxyType(clean))

    def spec_for(self, edge: EdgeId, role: TensorRole) -> str:
        """The codec spec of frames with ``role`` on ``edge``.

        Activations are looked up under their own edge, gradients under the edge of the activation they belong
        to (the gradient on ``s1->s0`` is the backward direction of cut ``s0->s1``).
        """
        if role is TensorRole.GRADIENT:
            cut, key, default = str(EdgeId(edge.dst, edge.src)), "backward", self.backward
        else:
            cut, key, default = str(edge), "forward", self.forward
        return self.edges.get(cut, {}).get(key, default)

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:  # MappingProxyType does not pickle
        return (EdgeCodecs, (self.forward, self.backward, {k: dict(v) for k, v in self.edges.items()}))


@dataclass(frozen=True)
class StageSpec:
    """Everything stage ``index`` of a ``num_stages`` pipeline needs.

    ``cuts`` cut the model into ``num_stages * chunks`` virtual stages (chunk ``c`` of stage ``s`` is virtual
    stage ``c * num_stages + s``). ``schedule`` names the training schedule (``gpipe``, ``1f1b``,
    ``interleaved``). Timeouts in seconds.
    """

    index: int
    num_stages: int
    model: ModelSpec
    cuts: tuple[int, ...]
    schedule: str = "1f1b"
    microbatches: int = 4
    chunks: int = 1
    codecs: EdgeCodecs = EdgeCodecs()
    optimizer: OptimizerSpec = OptimizerSpec()
    transport: TransportConfig = TransportConfig()
    recv_timeout_s: float = 120.0
    device: str = "cpu"
    #: Export Prometheus metrics from the stage process (an exporter on a free port of the stage's node).
    metrics: bool = False
    #: Online importance proxy: every ``proxy_every``-th training step (0 = off) the sender of each activation
    #: edge keeps the activations it sent and, when their gradients come back, accumulates the Taylor proxy
    #: E[(g·(a − â))²] of its own codec and of each of ``proxy_codecs`` (one encode + decode per codec).
    proxy_every: int = 0
    proxy_codecs: tuple[str, ...] = ()
    #: Relative codec error allowed on this stage's outgoing edges, exported for alerting (None: not exported).
    error_budget: float | None = None
    #: Seeds the random draws of randomized codecs (``/rht``, ``/sr``, ``randk``) on this stage's outgoing edges:
    #: each frame's draws are a pure function of (seed, edge, role, training step -- or call seq outside
    #: training --, micro-batch), so a repeated run sends the same bits, whatever its evaluation cadence (see
    #: :func:`~layeredge_dist.stage.endpoint.frame_seed`).
    codec_seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.num_stages:
            raise ValueError(f"stage index {self.index} outside [0, {self.num_stages})")
        if len(self.cuts) != self.num_stages * self.chunks - 1:
            raise ValueError(f"{self.num_stages} stages x {self.chunks} chunks need "
                             f"{self.num_stages * self.chunks - 1} cuts, got {len(self.cuts)}: {self.cuts}")
        if self.chunks != 1 and self.schedule != "interleaved":
            raise ValueError(f"chunks={self.chunks} needs schedule 'interleaved', got {self.schedule!r}")
        if self.recv_timeout_s <= 0:
            raise ValueError(f"recv_timeout_s must be > 0, got {self.recv_timeout_s}")

    @property
    def host(self) -> int:
        """Stage index of the driver on the edge transport (``num_stages``)."""
        return self.num_stages

    def virtual_stages(self) -> tuple[int, ...]:
        """Virtual stages (model chunks) hosted here, by local chunk index."""
        return tuple(c * self.num_stages + self.index for c in range(self.chunks))

    def partition_specs(self) -> tuple[PartitionSpec, ...]:
        """The partition of each local chunk."""
        return tuple(PartitionSpec(self.model, self.cuts, v) for v in self.virtual_stages())

    def build_schedule(self, mode: Mode) -> Schedule:
        """The schedule of a step in ``mode`` (forward-only GPipe for eval and infer)."""
        if self.schedule == "interleaved":
            sched = interleaved_one_f_one_b(self.num_stages, self.microbatches, self.chunks)
        elif mode not in TRAINING:
            return gpipe(self.num_stages, self.microbatches, training=False)
        else:
            return build(self.schedule, self.num_stages, self.microbatches)
        if mode in TRAINING:
            return sched
        forward_only = tuple(tuple(a for a in acts if isinstance(a, (Forward, SendAct, RecvAct)))
                             for acts in sched.stages)  # dropping waits and their sends cannot deadlock
        return Schedule(sched.name, sched.num_stages, sched.num_microbatches, forward_only,
                        num_chunks=sched.num_chunks, training=False)


def edge(src: int, dst: int) -> EdgeId:
    """``EdgeId`` from two stage indices."""
    return EdgeId(StageId(src), StageId(dst))


def wire_microbatch(sender_virtual: int, mb: int, num_stages: int, microbatches: int) -> int:
    """The micro-batch number on the wire: ``chunk of the sending virtual stage * microbatches + mb``.

    One physical edge carries the messages of every chunk under interleaving; this keeps them apart.
    """
    return (sender_virtual // num_stages) * microbatches + mb
