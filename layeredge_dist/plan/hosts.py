"""The hosts under a pipeline: CPU cores shared by its stages, and per-message / per-step software overhead.

The plain replay (:func:`~.simulator.fast_step_time`) gives every stage its own processor and folds a codec's
encode and decode into the link time. That is the right model for one stage per machine with codecs on spare
cores. Our stage runtime encodes on the sending stage's thread (``send`` returns once the frame is queued) and
decodes on the receiving stage's thread (``receive``), so codec work delays the stage itself; and where several
stages share a machine's cores -- the network-namespace testbed puts every host on the same VM -- they slow each
other down whenever more of them are busy than there are cores.

:func:`host_step_time` replays a compiled schedule with both effects, as a fluid processor-sharing simulation:

- every piece of CPU work (a forward, a backward, an optimizer step, an encode, a decode) is a job of the stage
  that runs it; a stage runs its actions in order and has at most one job at a time;
- with ``n`` jobs running and ``cores`` cores, each job advances at ``min(1, cores / n)`` seconds of work per
  second (``cores=None``: every job at full speed, one core per stage);
- a send first encodes (a job), then puts the payload on its directed link; links carry one message at a time in
  the order they were queued (as in ``schedule.replay`` with ``serialize_links=True``) and a message arrives
  ``wire + message_overhead_s`` after its transfer starts (the overhead -- Python, gRPC and thread hand-offs on
  both ends -- delays the message but does not hold the link); on a token-bucket link (``buckets``) the bytes
  covered by the bucket's tokens leave at once, which shortens ``wire`` by ``min(tokens, bytes) / rate``; the
  bucket refills at the rate up to its depth while the link is idle; with ``star=True`` (one switch port per
  node) the resources are ports instead of links: a message holds its sender's egress and its receiver's ingress,
  each with its own bucket, so a middle stage's activations and gradients queue behind each other;
- a receive waits for the arrival, then decodes (a job);
- the step ends when every stage has finished its actions, plus ``step_overhead_s`` (the driver's dispatch and
  result collection).

:class:`HostModel` holds the four numbers (``compute_scale`` multiplies all CPU work: the profile was measured on
an idle core, the stage processes may be slower). :func:`fit_host` calibrates them on measured steps by a grid
search that minimises the largest relative error; :func:`cross_validate_host` predicts each of a set of measured
runs from a model fitted on the others (leave-one-out), which averages the run-to-run noise of a shared machine
into the calibration while keeping every prediction out of sample.

Units: seconds (work is seconds at full speed of one core), cores. Pure: no clocks, no processes.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from layeredge_dist.schedule import DeadlockError

if TYPE_CHECKING:
    from .simulator import _Compiled

#: Work below this many seconds counts as done (floating-point slack of the fluid simulation).
_EPS = 1e-12


@dataclass(frozen=True)
class HostModel:
    """How the machines under a pipeline behave.

    Attributes:
        cores: CPU cores shared by all stages (a fraction for cores shared with other work); None = one core per
            stage (no contention).
        message_overhead_s: software delay per message, seconds, on top of latency + bytes / bandwidth.
        step_overhead_s: driver time per step outside the stages, seconds.
        compute_scale: multiplier on every piece of CPU work (compute and codecs).

    ValueError for ``cores <= 0``, negative overheads or ``compute_scale <= 0``.
    """

    cores: float | None = None
    message_overhead_s: float = 0.0
    step_overhead_s: float = 0.0
    compute_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.cores is not None and not (self.cores > 0 and math.isfinite(self.cores)):
            raise ValueError(f"cores must be a finite number > 0 or None, got {self.cores!r}")
        for name in ("message_overhead_s", "step_overhead_s"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be finite and >= 0, got {v!r}")
        if not (self.compute_scale > 0 and math.isfinite(self.compute_scale)):
            raise ValueError(f"compute_scale must be finite and > 0, got {self.compute_scale!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict; ``HostModel.from_dict(h.to_dict()) == h``."""
        return {"cores": self.cores, "message_overhead_s": self.message_overhead_s,
                "step_overhead_s": self.step_overhead_s, "compute_scale": self.compute_scale}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostModel:
        """Inverse of :meth:`to_dict`; missing keys take the defaults."""
        cores = data.get("cores")
        return cls(None if cores is None else float(cores), float(data.get("message_overhead_s", 0.0)),
                   float(data.get("step_overhead_s", 0.0)), float(data.get("compute_scale", 1.0)))

    def describe(self) -> str:
        """One line, e.g. ``2 shared cores, 1.5 ms per message, 5 ms per step, compute x1.1``."""
        cores = "a core per stage" if self.cores is None else f"{self.cores:g} shared cores"
        return (f"{cores}, {self.message_overhead_s * 1e3:.2g} ms per message, {self.step_overhead_s * 1e3:.2g} ms "
                f"per step, compute x{self.compute_scale:.3g}")


def host_step_time(compiled: _Compiled, fwd: Sequence[float], bwd: Sequence[float], opt: Sequence[float],
                   encode: Sequence[float], wire: Sequence[float], decode: Sequence[float],
                   host: HostModel, buckets: Sequence[tuple[float, float, float]] | None = None,
                   star: bool = False) -> tuple[float, tuple[float, ...]]:
    """(step seconds, finish time of each stage) of ``compiled`` on ``host`` (see the module docstring).

    ``fwd`` / ``bwd``: seconds per micro-batch per virtual stage; ``opt``: per physical stage; ``encode``,
    ``wire``, ``decode``: per transfer index (activations of virtual edges ``0..V-2`` then gradients), seconds per
    message (``wire`` includes the link latency); ``buckets``: per transfer index ``(bytes, rate_Bps,
    burst_bytes)`` of its token-bucket link (burst 0: a plain link), None = plain links. Buckets start full.
    ``star``: messages hold the sender's egress and the receiver's ingress port instead of a directed link.
    DeadlockError when some stage never finishes.
    """
    p = compiled.num_stages
    k = host.compute_scale
    durations = [k * t for t in (*fwd, *bwd, *opt)]
    enc = [k * t for t in encode]
    dec = [k * t for t in decode]
    ops = compiled.ops
    n_msg = compiled.num_messages
    delivered = [False] * n_msg
    msg_decode = [0.0] * n_msg
    waiting = [-1] * n_msg
    # resources a message holds: its directed link, or (star) the sending stage s's egress port (id p + s) and the
    # receiving stage r's ingress port (id r)
    n_res = 2 * p if star else compiled.num_links
    free = [0.0] * n_res
    tokens: list[float | None] = [None] * n_res  # bytes in each resource's bucket (None: full)
    refilled = [0.0] * n_res
    in_flight: list[tuple[float, int, int]] = []  # (arrival, order, message)
    ptr = [0] * p
    work = [0.0] * p  # remaining seconds of work of the stage's job
    busy = [False] * p
    on_done: list[tuple[int, int, int] | None] = [None] * p  # (message, link, transfer) of an encode job
    finish = [math.nan] * p
    now = 0.0
    order = 0

    def run_until_blocked(s: int) -> None:
        """Start stage ``s``'s next job, or leave it waiting for a message, or mark it finished."""
        acts = ops[s]
        while ptr[s] < len(acts):
            kind, a, b, c = acts[ptr[s]]
            if kind == 0:
                cost = durations[a]
            elif kind == 1:
                cost = enc[c]
                on_done[s] = (a, b, c)
            else:
                if not delivered[a]:
                    waiting[a] = s
                    return
                cost = msg_decode[a]
            if cost > _EPS:
                work[s], busy[s] = cost, True
                return
            complete(s)
        finish[s] = now

    def complete(s: int) -> None:
        """Stage ``s``'s current action is done: put an encoded message on its link; move on."""
        nonlocal order
        sent = on_done[s]
        if sent is not None:
            a, b, c = sent
            if star:
                src = b // 2
                res: tuple[int, ...] = (src + p, (src + 1) % p if b % 2 == 0 else (src - 1) % p)
            else:
                res = (b,)
            start = max(now, *(free[r] for r in res))
            dur = wire[c]
            if buckets is not None and buckets[c][2] > 0:
                nbytes, rate, depth = buckets[c]
                have = [depth if tokens[r] is None else min(depth, tokens[r] + (start - refilled[r]) * rate)
                        for r in res]
                used = min(min(have), nbytes)
                dur -= used / rate
                for r, h in zip(res, have):
                    tokens[r], refilled[r] = h - used, start + dur
            for r in res:
                free[r] = start + dur
            msg_decode[a] = dec[c]
            heapq.heappush(in_flight, (start + dur + host.message_overhead_s, order, a))
            order += 1
            on_done[s] = None
        ptr[s] += 1

    for s in range(p):
        run_until_blocked(s)
    cores = host.cores
    while True:
        active = [s for s in range(p) if busy[s]]
        if not active and not in_flight:
            break
        rate = 1.0 if cores is None or len(active) <= cores else cores / len(active)
        dt = min((work[s] for s in active), default=math.inf) / rate
        if in_flight and in_flight[0][0] - now < dt:
            dt = max(0.0, in_flight[0][0] - now)
        now += dt
        done = []
        for s in active:
            work[s] -= dt * rate
            if work[s] <= _EPS:
                busy[s] = False
                done.append(s)
        for s in done:
            complete(s)
            run_until_blocked(s)
        while in_flight and in_flight[0][0] <= now + _EPS:
            _, _, a = heapq.heappop(in_flight)
            delivered[a] = True
            w = waiting[a]
            if w >= 0:
                waiting[a] = -1
                run_until_blocked(w)
    stuck = [s for s in range(p) if math.isnan(finish[s])]
    if stuck:
        raise DeadlockError(f"stages {stuck} never finish")
    return max(finish, default=0.0) + host.step_overhead_s, tuple(finish)


#: Default grid of :func:`fit_host`: effective cores are searched around the given number.
DEFAULT_OVERHEADS_S: tuple[float, ...] = (0.0, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.006)
DEFAULT_STEP_OVERHEADS_S: tuple[float, ...] = (0.0, 0.002, 0.005, 0.01, 0.02, 0.03, 0.04)
DEFAULT_SCALES: tuple[float, ...] = tuple(round(0.9 + 0.1 * i, 1) for i in range(12))  # 0.9 ... 2.0


def host_grid(base: HostModel = HostModel(), *, scales: Iterable[float] = DEFAULT_SCALES,
              message_overheads_s: Iterable[float] = DEFAULT_OVERHEADS_S,
              step_overheads_s: Iterable[float] = DEFAULT_STEP_OVERHEADS_S) -> list[HostModel]:
    """Every combination of compute scale, message and step overhead, with ``base.cores``."""
    return [replace(base, compute_scale=k, message_overhead_s=m, step_overhead_s=t)
            for k in scales for m in message_overheads_s for t in step_overheads_s]


def _best(grid: Sequence[HostModel], preds: Sequence[Sequence[float]], meas: Sequence[float],
          use: Sequence[int]) -> tuple[HostModel, float]:
    """The grid entry with the smallest largest relative error over runs ``use`` (ties: smaller sum of squares);
    ``preds[g][i]`` is grid entry ``g``'s prediction of run ``i``."""
    best: tuple[float, float, int] | None = None
    for g, row in enumerate(preds):
        errs = [(row[i] - meas[i]) / meas[i] for i in use]
        key = (max(abs(e) for e in errs), sum(e * e for e in errs), g)
        if best is None or key < best:
            best = key
    assert best is not None
    return grid[best[2]], best[0]


def _check_measured(measured_s: Sequence[float]) -> list[float]:
    meas = [float(m) for m in measured_s]
    if not meas or any(not m > 0 for m in meas):
        raise ValueError("fit_host needs at least one measured step time > 0")
    return meas


def fit_host(predict_step: Callable[[HostModel], Sequence[float]], measured_s: Sequence[float],
             base: HostModel = HostModel(), grid: Sequence[HostModel] | None = None) -> tuple[HostModel, float]:
    """The :class:`HostModel` whose predictions ``predict_step(host)`` -- one step time per measured run -- come
    closest to ``measured_s``: the smallest largest relative error over ``grid`` (default :func:`host_grid` of
    ``base``; ties: the smaller sum of squared errors). Returns it and that largest relative error. ValueError for
    no measurements or a length mismatch."""
    meas = _check_measured(measured_s)
    hosts = list(grid) if grid is not None else host_grid(base)
    preds = []
    for host in hosts:
        row = [float(x) for x in predict_step(host)]
        if len(row) != len(meas):
            raise ValueError(f"predict_step gave {len(row)} step times for {len(meas)} measurements")
        preds.append(row)
    return _best(hosts, preds, meas, range(len(meas)))


def cross_validate_host(predict_run: Callable[[int, HostModel], float], measured_s: Sequence[float],
                        base: HostModel = HostModel(), grid: Sequence[HostModel] | None = None
                        ) -> list[tuple[HostModel, float]]:
    """Leave-one-out: for every run ``i``, the host model fitted (as :func:`fit_host`) on all the other runs and
    its prediction of run ``i`` (``predict_run(i, host)``: run ``i``'s predicted step seconds). Each prediction is
    out of sample. ValueError for fewer than two runs."""
    meas = _check_measured(measured_s)
    if len(meas) < 2:
        raise ValueError("cross-validation needs at least two runs")
    hosts = list(grid) if grid is not None else host_grid(base)
    preds = [[float(predict_run(i, h)) for i in range(len(meas))] for h in hosts]
    out = []
    for i in range(len(meas)):
        host, _ = _best(hosts, preds, meas, [j for j in range(len(meas)) if j != i])
        out.append((host, preds[hosts.index(host)][i]))
    return out


__all__ = ["HostModel", "cross_validate_host", "fit_host", "host_grid", "host_step_time"]
