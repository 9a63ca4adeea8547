"""Predict one training step of a planned pipeline: step time, bubble, busy time per stage, traffic per link.

:func:`predict` turns a plan (profile, cuts, codec per edge and direction, cluster, schedule) into the per-stage
compute times and per-edge transfer times of :func:`layeredge_dist.schedule.simulate` and runs it with
``serialize_links=True``:

- virtual stage ``k`` (chunk ``c`` of stage ``s`` is ``k = c * P + s``) computes the blocks between its cuts; its
  forward / backward time per micro-batch is the sum of those blocks' times;
- virtual edge ``k`` (virtual stage ``k`` -> ``k + 1``, stages ``k % P`` -> ``(k + 1) % P``) crosses boundary
  ``cuts[k] - 1``; its activation and gradient times per micro-batch are :func:`~.codec_costs.edge_time` of the
  edge's forward / backward codec over the link between the two stages (edge ``k`` uses link ``k`` without
  interleaving).

Methods (``method=``):

- ``"simulate"``: :func:`layeredge_dist.schedule.simulate` itself (the reference; keeps the timelines).
- ``"fast"``: the same replay semantics, compiled once per (schedule, stages, micro-batches, chunks) into integer
  op lists and run with a work list that wakes a stage only when the message it waits for is sent, so the cost is
  linear in the number of actions (``schedule.replay`` rescans every stage until nothing moves, which is
  quadratic in the number of stages for 1F1B). The results are bit-identical to ``"simulate"``; the tests check it.
- ``"analytic"``: closed forms, no replay. GPipe with serialised links is a flow shop with identical jobs, so it is
  exact: forward makespan ``sum(p) + (M - 1) max(p)`` over the machines ``f_0, a_0, f_1, ..., f_{P-1}`` and the
  backward likewise over ``b_{P-1}, g_{P-2}, ..., b_0``. 1F1B is approximated by
  ``sum_s (f_s + b_s) + sum_k (a_k + g_k) + (M - 1) * period`` where ``period`` is the largest of every stage's
  ``f + b``, every transfer time, and the cycle means ``(sum_{k=s}^{t-1} (f_k+b_k+a_k+g_k) + (P-t)(f_t+b_t)) /
  (P-s)`` of the 1F1B dependency loops between stages ``s < t`` (only loops whose window ``P - s`` fits in ``M``).
  On balanced stages it is within ~2 % of the replay when every transfer is under a tenth of a stage's compute
  (tested) and within ~5 % at a fifth; it drifts to 10-20 % when comm rivals compute or stages are unbalanced.
  The planner itself decides with the exact replay; this is for quick estimates.
- ``"auto"`` (default): ``"simulate"`` for up to 4096 stage-micro-batch slots, else ``"fast"``.

All times are seconds per micro-batch unless named ``_per_step``.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from layeredge_dist.schedule import (Backward, DeadlockError, Forward, OptimizerStep, RecvAct, RecvGrad, Schedule,
                                     SendAct, SendGrad, SimResult, gpipe, interleaved_one_f_one_b, one_f_one_b,
                                     simulate)

from .cluster import ClusterSpec, LinkSpec, as_cluster, parse_bandwidth, parse_duration
from .codec_costs import Speeds, codec_cost
from .hosts import HostModel, host_step_time
from .profile import DIRECTIONS, ModelProfile, check_cuts, stage_ranges

SCHEDULES: tuple[str, ...] = ("gpipe", "1f1b", "interleaved")
METHODS: tuple[str, ...] = ("auto", "simulate", "fast", "analytic")
#: ``method="auto"`` uses schedule.simulate up to this many stage x micro-batch x chunk slots.
AUTO_SIMULATE_SLOTS = 4096

#: Codecs per edge: one spec for everything, a mapping ``{"s0->s1": {"forward": spec, "backward": spec}}`` (the
#: run config's ``codecs.edges``; missing entries are fp32), or one entry per virtual edge: a spec or a
#: ``(forward, backward)`` pair.
Codecs = str | Mapping[str, Mapping[str, str]] | Sequence[str | tuple[str, str]] | None


def edge_key(src: int, dst: int) -> str:
    """``"s0->s1"``: the run config's edge id."""
    return f"s{src}->s{dst}"


def edge_keys(num_stages: int, chunks: int = 1) -> tuple[str, ...]:
    """The edge id of every virtual edge (``num_stages * chunks - 1`` of them)."""
    return tuple(edge_key(k % num_stages, (k + 1) % num_stages) for k in range(num_stages * chunks - 1))


def even_cuts(n_blocks: int, num_parts: int) -> tuple[int, ...]:
    """The model layer's even split (``layeredge_dist.model.even_cuts``): ``n // P`` blocks per stage, the
    remainder one each to the last stages."""
    if not 1 <= num_parts <= n_blocks:
        raise ValueError(f"cannot cut {n_blocks} blocks into {num_parts} non-empty stages")
    base, extra = divmod(n_blocks, num_parts)
    out, pos = [], 0
    for s in range(num_parts - 1):
        pos += base + (1 if s >= num_parts - extra else 0)
        out.append(pos)
    return tuple(out)


def resolve_codecs(codecs: Codecs, num_stages: int, chunks: int = 1) -> tuple[tuple[str, str], ...]:
    """``(forward, backward)`` spec per virtual edge from any :data:`Codecs` form. ValueError for a mapping key
    that is not an edge of this pipeline, an unknown direction, or a sequence of the wrong length."""
    keys = edge_keys(num_stages, chunks)
    if codecs is None:
        return (("fp32", "fp32"),) * len(keys)
    if isinstance(codecs, str):
        return ((codecs, codecs),) * len(keys)
    if isinstance(codecs, Mapping):
        unknown = set(codecs) - set(keys)
        if unknown:
            raise ValueError(f"codecs for edges {sorted(unknown)} that this pipeline does not have; edges: "
                             f"{sorted(set(keys))}")
        out = []
        for key in keys:
            sides = codecs.get(key, {})
            bad = set(sides) - set(DIRECTIONS)
            if bad:
                raise ValueError(f"codecs[{key!r}]: unknown directions {sorted(bad)}; use forward and/or backward")
            out.append((sides.get("forward", "fp32"), sides.get("backward", "fp32")))
        return tuple(out)
    seq = list(codecs)
    if len(seq) != len(keys):
        raise ValueError(f"codecs: expected {len(keys)} entries (one per edge), got {len(seq)}")
    return tuple((c, c) if isinstance(c, str) else (c[0], c[1]) for c in seq)


def codecs_mapping(pairs: Sequence[tuple[str, str]], num_stages: int, chunks: int = 1) -> dict[str, dict[str, str]]:
    """The run config's ``codecs.edges`` mapping for per-virtual-edge ``(forward, backward)`` specs. ValueError
    when two virtual edges with the same edge id (interleaved) were given different codecs."""
    out: dict[str, dict[str, str]] = {}
    for key, (f, b) in zip(edge_keys(num_stages, chunks), pairs):
        prev = out.setdefault(key, {"forward": f, "backward": b})
        if prev != {"forward": f, "backward": b}:
            raise ValueError(f"edge {key} carries several virtual edges; they must share codecs")
    return out


# ---- the pipeline as numbers ------------------------------------------------------------------------------------


class PipelineModel:
    """A profile cut into ``num_stages * chunks`` virtual stages on a cluster: compute per virtual stage, and
    the cost of any codec on any virtual edge (cached). The building block of :func:`predict`, the cut search and
    the codec assignment."""

    def __init__(self, profile: ModelProfile, cuts: Sequence[int] | None, cluster: ClusterSpec | LinkSpec | str | float,
                 num_stages: int | None = None, *, schedule: str = "1f1b", microbatches: int | None = None,
                 chunks: int = 1, speeds: Speeds | None = None, opt_time_s: float | Sequence[float] = 0.0) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
        if chunks < 1:
            raise ValueError(f"chunks must be >= 1, got {chunks}")
        if chunks > 1 and schedule != "interleaved":
            raise ValueError(f"{chunks} chunks per stage need schedule 'interleaved', got {schedule!r}")
        if cuts is None:
            if num_stages is None:
                raise ValueError("give cuts or num_stages")
            cuts = even_cuts(profile.n_blocks, num_stages * chunks)
        nv = len(cuts) + 1
        if nv % chunks:
            raise ValueError(f"{len(cuts)} cuts do not make a whole number of stages with {chunks} chunks each")
        p = nv // chunks if num_stages is None else num_stages
        if p * chunks != nv:
            raise ValueError(f"{p} stages x {chunks} chunks need {p * chunks - 1} cuts, got {len(cuts)}")
        if chunks > 1 and p < 2:
            raise ValueError("interleaving needs at least 2 stages")
        self.profile = profile
        self.cuts = check_cuts(profile.n_blocks, cuts, nv)
        self.num_stages, self.chunks, self.num_virtual = p, chunks, nv
        self.schedule = schedule
        self.microbatches = profile.micro_batches if microbatches is None else int(microbatches)
        if self.microbatches < 1:
            raise ValueError(f"microbatches must be >= 1, got {microbatches}")
        if schedule == "interleaved" and self.microbatches % p:
            raise ValueError(f"interleaved 1F1B needs micro-batches ({self.microbatches}) to be a multiple of "
                             f"stages ({p})")
        self.cluster = as_cluster(cluster, p)
        self.speeds = speeds
        self.ranges = stage_ranges(profile.n_blocks, self.cuts)
        comp = [profile.compute(lo, hi) for lo, hi in self.ranges]
        self.fwd = tuple(c[0] for c in comp)
        self.bwd = tuple(c[1] for c in comp)
        self.keys = edge_keys(p, chunks)
        self.boundaries = tuple(c - 1 for c in self.cuts)
        self.links = tuple(self.cluster.link_between(k % p, (k + 1) % p, p) for k in range(nv - 1))
        self.opt = ((float(opt_time_s),) * p if isinstance(opt_time_s, (int, float))
                    else tuple(float(t) for t in opt_time_s))
        if len(self.opt) != p:
            raise ValueError(f"opt_time_s: expected {p} values, got {len(self.opt)}")
        self._cache: dict[tuple[int, str, str], tuple[float, int]] = {}

    @property
    def slots(self) -> int:
        """Stage x micro-batch x chunk slots: the replay's work is proportional to this."""
        return self.num_stages * self.microbatches * self.chunks

    def stage_compute(self) -> tuple[tuple[float, float], ...]:
        """(forward, backward) seconds per micro-batch of each physical stage (all its chunks)."""
        p = self.num_stages
        return tuple((sum(self.fwd[s::p]), sum(self.bwd[s::p])) for s in range(p))

    def comm(self, edge: int, direction: str, spec: str) -> tuple[float, int]:
        """(seconds, wire bytes) of one micro-batch's tensor on virtual edge ``edge`` in ``direction``."""
        key = (edge, direction, spec)
        hit = self._cache.get(key)
        if hit is None:
            enc, wire, dec = self.codec_parts(edge, direction, spec)
            n = self.profile.boundary_elements(self.boundaries[edge], direction)
            hit = (wire + enc + dec, codec_cost(spec, self.speeds).wire_bytes(n))  # = codec_costs.edge_time
            self._cache[key] = hit
        return hit

    def comm_times(self, pairs: Sequence[tuple[str, str]]) -> tuple[list[float], list[float]]:
        """Activation and gradient seconds per virtual edge for ``(forward, backward)`` specs per virtual edge."""
        act = [self.comm(e, "forward", f)[0] for e, (f, _) in enumerate(pairs)]
        grad = [self.comm(e, "backward", b)[0] for e, (_, b) in enumerate(pairs)]
        return act, grad

    def codec_parts(self, edge: int, direction: str, spec: str) -> tuple[float, float, float]:
        """(encode, wire, decode) seconds of one micro-batch's tensor on virtual edge ``edge`` in ``direction``;
        wire = latency + bytes / bandwidth. Their sum is :meth:`comm`'s time."""
        cost = codec_cost(spec, self.speeds)
        n = self.profile.boundary_elements(self.boundaries[edge], direction)
        return cost.encode_s(n), self.links[edge].transfer_s(cost.wire_bytes(n)), cost.decode_s(n)

    def host_step_time(self, pairs: Sequence[tuple[str, str]], host: HostModel) -> float:
        """Step time for ``(forward, backward)`` specs per virtual edge on ``host``
        (:func:`~.hosts.host_step_time`: codecs on the stages' threads, shared cores, software overheads)."""
        sides = ([(e, "forward", f) for e, (f, _) in enumerate(pairs)]
                 + [(e, "backward", b) for e, (_, b) in enumerate(pairs)])
        parts = [self.codec_parts(*side) for side in sides]
        buckets = None
        if any(link.burst_bytes > 0 for link in self.links):
            buckets = [(float(self.comm(*side)[1]), self.links[side[0]].bandwidth_Bps, self.links[side[0]].burst_bytes)
                       for side in sides]
        return host_step_time(self.compiled(), self.fwd, self.bwd, self.opt, [x[0] for x in parts],
                              [x[1] for x in parts], [x[2] for x in parts], host, buckets, self.cluster.star)[0]

    def compiled(self) -> _Compiled:
        """The schedule compiled for :func:`fast_step_time` (cached across models)."""
        return _compile(self.schedule, self.num_stages, self.microbatches, self.chunks)

    def build_schedule(self) -> Schedule:
        """The schedule (cached across models)."""
        return _schedule(self.schedule, self.num_stages, self.microbatches, self.chunks)

    def step_time(self, act: Sequence[float], grad: Sequence[float], method: str = "fast") -> float:
        """Step time for the given transfer times per virtual edge."""
        if method == "analytic":
            return analytic_step_time(self.schedule, self.fwd, self.bwd, act, grad, self.microbatches, self.opt,
                                      self.chunks)
        if method == "simulate":
            return simulate(self.build_schedule(), self.fwd, self.bwd, list(act), list(grad), self.opt, True).step_time
        return fast_step_time(self.compiled(), self.fwd, self.bwd, act, grad, self.opt)[0]


# ---- the fast exact replay ----------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _schedule(name: str, p: int, m: int, v: int) -> Schedule:
    if name == "gpipe":
        return gpipe(p, m)
    if name == "1f1b":
        return one_f_one_b(p, m)
    return interleaved_one_f_one_b(p, m, v)


@dataclass(frozen=True)
class _Compiled:
    """Per stage a tuple of ops ``(kind, a, b, c)``: kind 0 = compute (``a`` indexes the durations
    ``fwd[0..V) + bwd[0..V) + opt[0..P)``), 1 = send (message ``a`` on link ``b``, transfer time index ``c`` into
    ``act[0..V-1) + grad[0..V-1)``), 2 = receive (message ``a``)."""

    num_stages: int
    num_virtual: int
    num_messages: int
    num_links: int
    ops: tuple[tuple[tuple[int, int, int, int], ...], ...]


@lru_cache(maxsize=16)
def _compile(name: str, p: int, m: int, v: int) -> _Compiled:
    sched = _schedule(name, p, m, v)
    nv = sched.num_virtual
    # message id: (kind * m + mb) * nv + sending virtual stage; directed link id: 2 * stage + (0 if the peer is
    # the next stage else 1) -- with 2 stages both peers are the same stage and so is the link, as in the replay.
    stages = []
    for s, acts in enumerate(sched.stages):
        nxt = (s + 1) % p
        ops = []
        for a in acts:
            kind = type(a)
            if kind is Forward:
                ops.append((0, a.chunk * p + s, 0, 0))
            elif kind is Backward:
                ops.append((0, nv + a.chunk * p + s, 0, 0))
            elif kind is OptimizerStep:
                ops.append((0, 2 * nv + s, 0, 0))
            else:
                k = a.chunk * p + s  # this stage's virtual stage
                if kind is SendAct:
                    ops.append((1, a.mb * nv + k, 2 * s + (a.peer != nxt), k))
                elif kind is SendGrad:
                    ops.append((1, (m + a.mb) * nv + k, 2 * s + (a.peer != nxt), nv - 1 + k - 1))
                elif kind is RecvAct:
                    ops.append((2, a.mb * nv + k - 1, 0, 0))
                else:
                    assert kind is RecvGrad, a
                    ops.append((2, (m + a.mb) * nv + k + 1, 0, 0))
        stages.append(tuple(ops))
    return _Compiled(p, nv, 2 * m * nv, 2 * p, tuple(stages))


def fast_step_time(compiled: _Compiled, fwd: Sequence[float], bwd: Sequence[float], act: Sequence[float],
                   grad: Sequence[float], opt: Sequence[float] | float = 0.0) -> tuple[float, tuple[float, ...]]:
    """(step time, finish time per stage) of the compiled schedule; the same arithmetic in the same order as
    ``schedule.replay`` with ``serialize_links=True``, so the numbers are identical. DeadlockError when some
    stage never finishes."""
    p = compiled.num_stages
    opt_t = [float(opt)] * p if isinstance(opt, (int, float)) else list(opt)
    durations = [*fwd, *bwd, *opt_t]
    transfers = [*act, *grad]
    arrival: list[float | None] = [None] * compiled.num_messages
    waiting = [-1] * compiled.num_messages
    link_free = [0.0] * compiled.num_links
    ptr = [0] * p
    clock = [0.0] * p
    stack = list(range(p - 1, -1, -1))
    all_ops = compiled.ops
    while stack:
        s = stack.pop()
        ops = all_ops[s]
        i, t, n = ptr[s], clock[s], len(ops)
        while i < n:
            kind, a, b, c = ops[i]
            if kind == 0:
                t = t + durations[a]
            elif kind == 1:
                free = link_free[b]
                start = t if t >= free else free
                end = start + transfers[c]
                link_free[b] = end
                arrival[a] = end
                w = waiting[a]
                if w >= 0:
                    waiting[a] = -1
                    stack.append(w)
            else:
                arr = arrival[a]
                if arr is None:
                    waiting[a] = s
                    break
                if arr > t:
                    t = arr
            i += 1
        ptr[s], clock[s] = i, t
    stuck = [s for s in range(p) if ptr[s] < len(all_ops[s])]
    if stuck:
        raise DeadlockError(f"stages {stuck} never finish")
    return max(clock, default=0.0), tuple(clock)


# ---- closed forms ---------------------------------------------------------------------------------------------


def _flow_shop_finish(machines: Sequence[float], m: int) -> list[float]:
    """Completion of the last of ``m`` identical jobs on each machine of a flow shop (prefix sum + (m-1) prefix
    max), exact for unbounded buffers."""
    out, total, top = [], 0.0, 0.0
    for t in machines:
        total += t
        top = max(top, t)
        out.append(total + (m - 1) * top)
    return out


def analytic_step_time(schedule: str, fwd: Sequence[float], bwd: Sequence[float], act: Sequence[float],
                       grad: Sequence[float], microbatches: int, opt: Sequence[float] | float = 0.0,
                       chunks: int = 1) -> float:
    """Closed-form step time (see the module docstring): exact for GPipe, approximate for 1F1B. ValueError for
    interleaved schedules."""
    if chunks != 1 or schedule not in ("gpipe", "1f1b"):
        raise ValueError("the analytic model covers gpipe and 1f1b without interleaving")
    p, m = len(fwd), microbatches
    opt_t = [float(opt)] * p if isinstance(opt, (int, float)) else list(opt)
    if schedule == "gpipe":
        fmach: list[float] = []
        for s in range(p):
            fmach.append(fwd[s])
            if s < p - 1:
                fmach.append(act[s])
        t_fwd = _flow_shop_finish(fmach, m)[-1]
        bmach: list[float] = []
        for s in range(p - 1, -1, -1):
            bmach.append(bwd[s])
            if s > 0:
                bmach.append(grad[s - 1])
        done = _flow_shop_finish(bmach, m)
        return max(t_fwd + done[2 * (p - 1 - s)] + opt_t[s] for s in range(p))
    fb = [f + b for f, b in zip(fwd, bwd)]
    period = max(fb + list(act) + list(grad), default=0.0)
    for s in range(p - 1):
        if p - s > m:
            continue
        acc = 0.0
        for t in range(s + 1, p):
            acc += fb[t - 1] + act[t - 1] + grad[t - 1]
            period = max(period, (acc + (p - t) * fb[t]) / (p - s))
    return sum(fb) + sum(act) + sum(grad) + (m - 1) * period + max(opt_t, default=0.0)


# ---- predictions ----------------------------------------------------------------------------------------------


def _frozen(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return types.MappingProxyType({k: types.MappingProxyType(dict(v)) if isinstance(v, Mapping) else v
                                   for k, v in d.items()})


@dataclass(frozen=True)
class Prediction:
    """Predicted training step.

    Attributes:
        step_time_s: seconds per optimizer step (all micro-batches, forward and backward).
        bubble_fraction: idle share of all stages' time, ``1 - sum(busy) / (P * step)``.
        per_stage_busy_s: compute seconds per step of each stage.
        bytes_per_link_per_step: wire bytes per step on each directed link ``"s0->s1"`` (activations) and
            ``"s1->s0"`` (gradients).
        comm_time_per_edge: per edge id, ``{"forward": s, "backward": s}``: seconds for one micro-batch's
            activation / gradient to cross (encode + transfer + decode; summed over an edge id's virtual edges).
        microbatches, schedule, method: what was simulated and how.
        tokens_per_s: tokens per second when the profile knows tokens per micro-batch, else None.
        bytes_per_edge_per_step: per edge id, ``{"forward": bytes, "backward": bytes}`` on the wire per step.
    """

    step_time_s: float
    bubble_fraction: float
    per_stage_busy_s: tuple[float, ...]
    bytes_per_link_per_step: Mapping[str, int]
    comm_time_per_edge: Mapping[str, Mapping[str, float]]
    microbatches: int = 1
    schedule: str = "1f1b"
    method: str = "simulate"
    tokens_per_s: float | None = None
    bytes_per_edge_per_step: Mapping[str, Mapping[str, int]] = field(default_factory=lambda: types.MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "per_stage_busy_s", tuple(float(x) for x in self.per_stage_busy_s))
        object.__setattr__(self, "bytes_per_link_per_step",
                           types.MappingProxyType({k: int(v) for k, v in self.bytes_per_link_per_step.items()}))
        object.__setattr__(self, "comm_time_per_edge", _frozen(self.comm_time_per_edge))
        object.__setattr__(self, "bytes_per_edge_per_step", _frozen(
            {k: {d: int(n) for d, n in v.items()} for k, v in self.bytes_per_edge_per_step.items()}))

    @property
    def bytes_per_step(self) -> int:
        """Wire bytes per step over all links."""
        return sum(self.bytes_per_link_per_step.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict; ``Prediction.from_dict(p.to_dict()) == p``."""
        return {"step_time_s": self.step_time_s, "bubble_fraction": self.bubble_fraction,
                "per_stage_busy_s": list(self.per_stage_busy_s),
                "bytes_per_link_per_step": dict(self.bytes_per_link_per_step),
                "comm_time_per_edge": {k: dict(v) for k, v in self.comm_time_per_edge.items()},
                "microbatches": self.microbatches, "schedule": self.schedule, "method": self.method,
                "tokens_per_s": self.tokens_per_s,
                "bytes_per_edge_per_step": {k: dict(v) for k, v in self.bytes_per_edge_per_step.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Prediction:
        """Inverse of :meth:`to_dict`."""
        return cls(float(data["step_time_s"]), float(data["bubble_fraction"]), tuple(data["per_stage_busy_s"]),
                   dict(data["bytes_per_link_per_step"]), dict(data["comm_time_per_edge"]),
                   int(data.get("microbatches", 1)), data.get("schedule", "1f1b"), data.get("method", "simulate"),
                   data.get("tokens_per_s"), dict(data.get("bytes_per_edge_per_step") or {}))


def _choose_method(model: PipelineModel, method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    if method == "auto":
        return "simulate" if model.slots <= AUTO_SIMULATE_SLOTS else "fast"
    return method


def simulation(profile: ModelProfile, cuts: Sequence[int] | None, codecs_per_edge: Codecs,
               cluster: ClusterSpec | LinkSpec | str | float, schedule: str = "1f1b", microbatches: int | None = None,
               chunks: int = 1, *, speeds: Speeds | None = None, opt_time_s: float | Sequence[float] = 0.0
               ) -> SimResult:
    """The full :func:`layeredge_dist.schedule.simulate` result (timelines, transfers, ``format_gantt()``) for
    the same inputs as :func:`predict`."""
    model = PipelineModel(profile, cuts, cluster, schedule=schedule, microbatches=microbatches, chunks=chunks,
                          speeds=speeds, opt_time_s=opt_time_s)
    act, grad = model.comm_times(resolve_codecs(codecs_per_edge, model.num_stages, chunks))
    return simulate(model.build_schedule(), model.fwd, model.bwd, act, grad, model.opt, True)


def predict_model(model: PipelineModel, pairs: Sequence[tuple[str, str]], method: str = "auto",
                  host: HostModel | None = None) -> Prediction:
    """:func:`predict` for a prepared :class:`PipelineModel` and ``(forward, backward)`` specs per virtual edge;
    with ``host``, the step comes from :meth:`PipelineModel.host_step_time` (``method`` is then ``"host"``)."""
    method = "host" if host is not None else _choose_method(model, method)
    act, grad = model.comm_times(pairs)
    p, m = model.num_stages, model.microbatches
    busy: tuple[float, ...]
    if host is not None:
        step = model.host_step_time(pairs, host)
        busy = tuple(host.compute_scale * (m * (f + b) + o) for (f, b), o in zip(model.stage_compute(), model.opt))
        bubble = 1.0 - sum(busy) / (p * step) if step > 0 else 0.0
    elif method == "simulate":
        res = simulate(model.build_schedule(), model.fwd, model.bwd, act, grad, model.opt, True)
        step, busy, bubble = res.step_time, res.busy, res.bubble_fraction
    else:
        step = model.step_time(act, grad, method)
        busy = tuple(m * (f + b) + o for (f, b), o in zip(model.stage_compute(), model.opt))
        bubble = 1.0 - sum(busy) / (p * step) if step > 0 else 0.0
    links: dict[str, int] = {}
    comm: dict[str, dict[str, float]] = {}
    per_edge: dict[str, dict[str, int]] = {}
    for e, (f, b) in enumerate(pairs):
        src, dst = e % p, (e + 1) % p
        t_a, n_a = model.comm(e, "forward", f)
        t_g, n_g = model.comm(e, "backward", b)
        links[edge_key(src, dst)] = links.get(edge_key(src, dst), 0) + m * n_a
        links[edge_key(dst, src)] = links.get(edge_key(dst, src), 0) + m * n_g
        slot = comm.setdefault(model.keys[e], {"forward": 0.0, "backward": 0.0})
        slot["forward"] += t_a
        slot["backward"] += t_g
        nbytes = per_edge.setdefault(model.keys[e], {"forward": 0, "backward": 0})
        nbytes["forward"] += m * n_a
        nbytes["backward"] += m * n_g
    tokens = model.profile.tokens_per_micro_batch
    tps = tokens * m / step if tokens and step > 0 else None
    return Prediction(step, bubble, busy, links, comm, m, model.schedule, method, tps, per_edge)


def predict(profile: ModelProfile, cuts: Sequence[int] | None, codecs_per_edge: Codecs,
            cluster: ClusterSpec | LinkSpec | str | float, schedule: str = "1f1b", microbatches: int | None = None,
            chunks: int = 1, *, speeds: Speeds | None = None, method: str = "auto",
            opt_time_s: float | Sequence[float] = 0.0, host: HostModel | None = None) -> Prediction:
    """Predict one training step (see the module docstring).

    Args:
        profile: the model's cost profile.
        cuts: block index where each (virtual) stage after the first begins (``stages * chunks - 1`` of them),
            as in the run config; None = even split over ``cluster.nodes`` stages.
        codecs_per_edge: see :data:`Codecs`; None = fp32 everywhere.
        cluster: a ClusterSpec, one LinkSpec for every edge, or a bandwidth ("100Mbit", bytes/s).
        schedule: ``gpipe``, ``1f1b`` or ``interleaved`` (with ``chunks`` > 1).
        microbatches: per step; None = the profile's ``micro_batches``.
        speeds: measured codec speeds ``spec -> (encode_Bps, decode_Bps)`` overriding the built-in table.
        method: ``auto``, ``simulate``, ``fast`` or ``analytic``.
        opt_time_s: optimizer step seconds (one number or one per stage).
        host: the machines' cores and software overheads (:class:`~.hosts.HostModel`); None = one core per stage,
            codecs folded into the link time, no overheads (the plain replay of ``method``).

    Raises ValueError for inconsistent cuts, codecs, schedule or cluster size.
    """
    if cuts is None and isinstance(cluster, ClusterSpec):
        model = PipelineModel(profile, None, cluster, cluster.nodes, schedule=schedule, microbatches=microbatches,
                              chunks=chunks, speeds=speeds, opt_time_s=opt_time_s)
    else:
        model = PipelineModel(profile, cuts, cluster, schedule=schedule, microbatches=microbatches, chunks=chunks,
                              speeds=speeds, opt_time_s=opt_time_s)
    return predict_model(model, resolve_codecs(codecs_per_edge, model.num_stages, chunks), method, host)


def what_if(profile: ModelProfile, nodes: int, bandwidth: str | float, *, latency: str | float = 0.0,
            codec: str | Codecs = "fp32", cuts: Sequence[int] | None = None, schedule: str = "1f1b",
            microbatches: int | None = None, chunks: int = 1, speeds: Speeds | None = None,
            method: str = "auto") -> Prediction:
    """The predicted step on ``nodes`` identical machines joined by ``bandwidth`` links (``"1Gbit"``) with
    ``latency``, every edge using ``codec`` (or any :data:`Codecs` form). ``cuts=None`` picks the best cuts for
    that codec (:func:`~.cuts.best_cuts`; even cuts when interleaved)."""
    cluster = ClusterSpec(nodes, LinkSpec(parse_bandwidth(bandwidth), parse_duration(latency)))
    if cuts is None:
        if chunks == 1:
            from .cuts import best_cuts
            per_boundary = codec if isinstance(codec, str) else None
            cuts = best_cuts(profile, nodes, cluster, per_boundary, speeds=speeds)
        else:
            cuts = even_cuts(profile.n_blocks, nodes * chunks)
    return predict(profile, cuts, codec, cluster, schedule, microbatches, chunks, speeds=speeds, method=method)


__all__ = ["AUTO_SIMULATE_SLOTS", "Codecs", "METHODS", "PipelineModel", "Prediction", "SCHEDULES",
           "analytic_step_time", "codecs_mapping", "edge_key", "edge_keys", "even_cuts", "fast_step_time", "predict",
           "predict_model", "resolve_codecs", "simulation", "what_if"]

