"""Which codec on each edge and direction, under an accuracy budget or a time budget.

Decision variables: one codec per edge id (``"s0->s1"``) and direction (``forward`` = activations, ``backward`` =
gradients), from ``candidates`` (``fp32`` is always added, so a plan always exists). The *score* of a choice is
the profile's ``sensitivity`` (or ``proxy``) at the edge's boundary for that direction and codec, summed over the
choices (an additive model: each entry was measured with only that boundary compressed); negative measurements
(noise) count as 0. A lossy codec without a measurement at a boundary is not allowed there; ``budget=None``
lifts the accuracy constraint (and allows every candidate). Step times are predicted with the exact replay of
:mod:`.simulator` (``method="fast"``).

Since a step time can only grow when a transfer gets slower, options that are both slower and no less sensitive
than another option of the same variable are dropped first (Pareto pruning).

:func:`min_time_under_budget` (multiple-choice knapsack with a simulated objective):

- ``exhaustive`` when the pruned options multiply to at most ``exhaustive_limit``: every combination within the
  budget is enumerated, and those to which no option can be upgraded without breaking the budget are simulated
  (the optimum is among them because upgrades never slow a step). Exact with respect to the simulator.
- ``threshold+greedy`` otherwise: each variable belongs to the stage that sends it, and a stage's load is its
  compute plus the transfer times it sends (the bottleneck of :mod:`.cuts`). For a threshold ``tau`` on every
  stage's load, each stage takes its least sensitive pair of options under ``tau``; the smallest feasible ``tau``
  is found by bisection, and for it and a few larger thresholds the remaining budget is spent greedily (best
  transfer-time saving per unit of score on each stage's convex hull). Every candidate, the best uniform codec
  and the least sensitive assignment are simulated, the fastest is polished by simulated single upgrades and
  exchanges while the work allows (``polish_work``). Not guaranteed optimal (on random 3-4 stage problems it
  matched the exhaustive optimum in 59 of 60 cases, 1.6 % slower in the other); never slower than
  :func:`best_uniform`.

Both then take simulated single downgrades that leave the step time unchanged, so among equally fast
assignments the less sensitive one is returned.

:func:`min_loss_under_time` is the dual (least total score with a predicted step at most ``time_budget_s``):
exhaustive in order of increasing score when small, else the largest threshold whose least sensitive assignment
meets the time, then simulated single downgrades. :func:`plan_jointly` alternates cuts and codecs.
"""

from __future__ import annotations

import heapq
import itertools
import math
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .cluster import ClusterSpec, LinkSpec, as_cluster, links_of
from .codec_costs import Speeds, canonical_spec, codec_cost, edge_time
from .profile import DIRECTIONS, ModelProfile
from .simulator import PipelineModel, Prediction, even_cuts, fast_step_time, predict_model

#: Default number of combinations up to which :func:`min_time_under_budget` searches exhaustively.
EXHAUSTIVE_LIMIT = 20000
#: Default replay work (ops replayed, summed over simulations) the heuristics may spend on polishing.
POLISH_WORK = 3_000_000


class InfeasibleError(ValueError):
    """No assignment meets the constraint; the message says what the best possible is."""


def _fits(x: float, limit: float) -> bool:
    return x <= limit + 1e-9 * abs(limit) + 1e-15


@dataclass(frozen=True)
class _Option:
    spec: str
    time: float  # seconds per micro-batch over all the variable's virtual edges
    sens: float  # score used for the budget (>= 0)
    reported: float | None  # the measured score (None: not measured)
    edge_times: tuple[float, ...]  # per virtual edge of the variable


@dataclass(frozen=True)
class _Var:
    key: str
    direction: str
    edges: tuple[int, ...]
    sender: int
    options: tuple[_Option, ...]  # Pareto frontier: slowest (least sensitive) first
    allowed: Mapping[str, _Option]  # every allowed candidate, by spec

    def covering(self, option: _Option) -> int:
        """Index of the fastest frontier option no more sensitive than ``option`` (so no slower either)."""
        return max(i for i, o in enumerate(self.options) if o.sens <= option.sens)


@dataclass(frozen=True)
class Assignment:
    """A codec per edge and direction for fixed cuts, with its predicted step.

    ``codecs`` has the shape of the run config's ``codecs.edges``; ``sensitivity`` the score used per edge and
    direction (None: not measured, only with ``budget=None``); ``method`` how it was found; ``evaluations`` the
    number of step simulations spent.
    """

    cuts: tuple[int, ...]
    codecs: Mapping[str, Mapping[str, str]]
    sensitivity: Mapping[str, Mapping[str, float | None]]
    total_sensitivity: float
    prediction: Prediction
    method: str
    evaluations: int = 0
    chunks: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "cuts", tuple(self.cuts))
        object.__setattr__(self, "codecs", types.MappingProxyType(
            {k: types.MappingProxyType(dict(v)) for k, v in self.codecs.items()}))
        object.__setattr__(self, "sensitivity", types.MappingProxyType(
            {k: types.MappingProxyType(dict(v)) for k, v in self.sensitivity.items()}))

    @property
    def step_time_s(self) -> float:
        """Predicted seconds per step."""
        return self.prediction.step_time_s

    def codecs_dict(self) -> dict[str, dict[str, str]]:
        """``codecs`` as plain dicts (for JSON / the run config)."""
        return {k: dict(v) for k, v in self.codecs.items()}


class _Problem:
    """Variables, options and a step-time evaluator for one set of cuts."""

    def __init__(self, profile: ModelProfile, cuts: Sequence[int], cluster: ClusterSpec | LinkSpec | str | float,
                 candidates: Iterable[str] | None, budget: float | None, *, schedule: str, microbatches: int | None,
                 chunks: int, speeds: Speeds | None, score: str) -> None:
        self.profile, self.budget, self.score = profile, budget, score
        self.model = PipelineModel(profile, cuts, cluster, schedule=schedule, microbatches=microbatches,
                                   chunks=chunks, speeds=speeds)
        model = self.model
        if candidates is None:
            candidates = profile.measured_codecs(score)
        specs = list(dict.fromkeys(["fp32", *(canonical_spec(c) for c in candidates)]))
        self.specs = specs
        p = model.num_stages
        self.vars: list[_Var] = []
        for key in dict.fromkeys(model.keys):
            edges = tuple(e for e, k in enumerate(model.keys) if k == key)
            src, dst = edges[0] % p, (edges[0] + 1) % p
            for direction in DIRECTIONS:
                opts = []
                for spec in specs:
                    vals = [profile.score(model.boundaries[e], direction, spec, score) for e in edges]
                    reported = None if any(v is None for v in vals) else sum(vals)  # type: ignore[arg-type]
                    if reported is None and budget is not None:
                        continue  # not measured: not allowed under an accuracy budget
                    sens = max(0.0, reported) if reported is not None else 0.0
                    times = tuple(model.comm(e, direction, spec)[0] for e in edges)
                    opts.append(_Option(spec, sum(times), sens, reported, times))
                self.vars.append(_Var(key, direction, edges, src if direction == "forward" else dst,
                                      _pareto(opts), types.MappingProxyType({o.spec: o for o in opts})))
        self.compiled = model.compiled()
        self.evaluations = 0
        self.work = 0
        self._ops = sum(len(ops) for ops in self.compiled.ops)
        #: per spec allowed on every variable: that uniform assignment, as options
        self.uniform: dict[str, list[_Option]] = {
            spec: [var.allowed[spec] for var in self.vars] for spec in specs
            if all(spec in var.allowed for var in self.vars)}

    # ---- evaluation ----

    def options(self, choice: Sequence[int]) -> list[_Option]:
        return [var.options[c] for var, c in zip(self.vars, choice)]

    def step_of(self, opts: Sequence[_Option]) -> float:
        """Simulated step time with one option per variable."""
        n = self.model.num_virtual - 1
        act, grad = [0.0] * n, [0.0] * n
        for var, o in zip(self.vars, opts):
            target = act if var.direction == "forward" else grad
            for e, t in zip(var.edges, o.edge_times):
                target[e] = t
        self.evaluations += 1
        self.work += self._ops
        m = self.model
        return fast_step_time(self.compiled, m.fwd, m.bwd, act, grad, m.opt)[0]

    def step(self, choice: Sequence[int]) -> float:
        return self.step_of(self.options(choice))

    def sens(self, choice: Sequence[int]) -> float:
        return sum(var.options[c].sens for var, c in zip(self.vars, choice))

    def product(self) -> int:
        out = 1
        for var in self.vars:
            out *= len(var.options)
        return out

    def assignment(self, choice: Sequence[int] | Sequence[_Option], method: str) -> Assignment:
        opts = [c if isinstance(c, _Option) else var.options[c] for var, c in zip(self.vars, choice)]
        pairs = [["fp32", "fp32"] for _ in range(self.model.num_virtual - 1)]
        codecs: dict[str, dict[str, str]] = {}
        used: dict[str, dict[str, float | None]] = {}
        for var, o in zip(self.vars, opts):
            for e in var.edges:
                pairs[e][0 if var.direction == "forward" else 1] = o.spec
            codecs.setdefault(var.key, {})[var.direction] = o.spec
            used.setdefault(var.key, {})[var.direction] = o.reported
        pred = predict_model(self.model, [(f, b) for f, b in pairs], "auto")
        return Assignment(self.model.cuts, codecs, used, sum(o.sens for o in opts), pred, method, self.evaluations,
                          self.model.chunks)

    def fastest(self) -> list[int]:
        return [len(var.options) - 1 for var in self.vars]

    def least_sensitive(self) -> list[int]:
        return [0] * len(self.vars)

    # ---- the per-stage grouping of the heuristics ----

    def groups(self) -> list[tuple[list[int], list[tuple[tuple[int, ...], float, float, float]]]]:
        """Per sending stage: its variables and items ``(choice per variable, load, sens, comm time)``."""
        comp = self.model.stage_compute()
        by_stage: dict[int, list[int]] = {}
        for i, var in enumerate(self.vars):
            by_stage.setdefault(var.sender, []).append(i)
        out = []
        for s, idx in sorted(by_stage.items()):
            items = []
            for combo in itertools.product(*(range(len(self.vars[i].options)) for i in idx)):
                t = sum(self.vars[i].options[c].time for i, c in zip(idx, combo))
                sn = sum(self.vars[i].options[c].sens for i, c in zip(idx, combo))
                items.append((combo, comp[s][0] + comp[s][1] + t, sn, t))
            out.append((idx, items))
        return out


def _pareto(opts: list[_Option]) -> tuple[_Option, ...]:
    """Options not dominated in (time, sens), slowest first (so sens strictly increases along the tuple)."""
    keep: list[_Option] = []
    for o in sorted(opts, key=lambda o: (o.time, o.sens)):  # fastest first; first seen wins exact ties
        if keep and keep[-1].time == o.time:
            continue
        if all(o.sens < k.sens for k in keep):
            keep.append(o)
    return tuple(reversed(keep))


def _better(a: tuple[float, float], b: tuple[float, float] | None) -> bool:
    """(time, sens) ``a`` strictly better than ``b``: faster beyond rounding, or as fast and less sensitive."""
    if b is None:
        return True
    if a[0] < b[0] - 1e-12 * abs(b[0]):
        return True
    return a[0] <= b[0] + 1e-12 * abs(b[0]) and a[1] < b[1] - 1e-15


# ---- min time under an accuracy budget ------------------------------------------------------------------------


def _exhaustive_min_time(prob: _Problem, budget: float) -> list[int]:
    vars_ = prob.vars
    n = len(vars_)
    choice = [0] * n
    best: list[int] | None = None
    best_key: tuple[float, float] | None = None

    def rec(v: int, used: float) -> None:
        nonlocal best, best_key
        if v == n:
            for i, var in enumerate(vars_):
                c = choice[i]
                if c + 1 < len(var.options) and _fits(used - var.options[c].sens + var.options[c + 1].sens, budget):
                    return  # not maximal: an upgrade still fits, and upgrades never slow the step
            key = (prob.step(choice), used)
            if _better(key, best_key):
                best, best_key = list(choice), key
            return
        for c, o in enumerate(vars_[v].options):
            if not _fits(used + o.sens, budget):
                break
            choice[v] = c
            rec(v + 1, used + o.sens)

    rec(0, 0.0)
    assert best is not None  # all-least-sensitive always fits (fp32 scores 0)
    return best


def _hull(items: list[tuple[tuple[int, ...], float, float, float]], allowed: list[int], start: int) -> list[int]:
    """Indices of the lower convex hull of (sens, comm time) over ``allowed`` items, from item ``start`` toward
    less time."""
    pts = sorted((i for i in allowed if items[i][2] >= items[start][2] and items[i][3] < items[start][3]),
                 key=lambda i: (items[i][2], items[i][3]))
    hull = [start]
    for i in pts:
        if items[i][3] >= items[hull[-1]][3]:
            continue
        while len(hull) >= 2:
            a, b, c = items[hull[-2]], items[hull[-1]], items[i]
            # drop b when it lies on or above the segment a -> c
            if (b[3] - a[3]) * (c[2] - a[2]) >= (c[3] - a[3]) * (b[2] - a[2]):
                hull.pop()
            else:
                break
        hull.append(i)
    return hull


def _threshold_choice(prob: _Problem, groups: list, tau: float, budget: float | None) -> list[int] | None:
    """Least sensitive items with load <= tau, then (with a budget) the leftover spent greedily on the hull."""
    picks: list[int] = []
    oks: list[list[int]] = []
    used = 0.0
    for _, items in groups:
        ok = [i for i, it in enumerate(items) if it[1] <= tau * (1 + 1e-12)]
        if not ok:
            return None
        i = min(ok, key=lambda i: (items[i][2], items[i][3]))
        picks.append(i)
        oks.append(ok)
        used += items[i][2]
    if budget is not None:
        if not _fits(used, budget):
            return None
        left = budget - used
        hulls = [_hull(items, oks[g], picks[g]) for g, (_, items) in enumerate(groups)]
        heap: list[tuple[float, int, int]] = []

        def push(g: int, pos: int) -> None:
            items, hull = groups[g][1], hulls[g]
            if pos + 1 < len(hull):
                a, b = items[hull[pos]], items[hull[pos + 1]]
                ds, dt = b[2] - a[2], b[3] - a[3]
                heapq.heappush(heap, (dt / ds if ds > 0 else -math.inf, g, pos))

        for g in range(len(groups)):
            push(g, 0)
        while heap:
            _, g, pos = heapq.heappop(heap)
            items, hull = groups[g][1], hulls[g]
            ds = items[hull[pos + 1]][2] - items[hull[pos]][2]
            if _fits(ds, left):
                left -= ds
                picks[g] = hull[pos + 1]
                push(g, pos + 1)
        # fill: per stage, the single swap that saves the most time within what is left
        for g, (_, items) in enumerate(groups):
            cur = items[picks[g]]
            best_i = picks[g]
            for i in oks[g]:
                if items[i][3] < items[best_i][3] and _fits(items[i][2] - cur[2], left):
                    best_i = i
            left -= items[best_i][2] - cur[2]
            picks[g] = best_i
    choice = [0] * len(prob.vars)
    for (idx, items), pick in zip(groups, picks):
        for v, c in zip(idx, items[pick][0]):
            choice[v] = c
    return choice


def _polish_upgrades(prob: _Problem, choice: list[int], budget: float, work: int) -> list[int]:
    """Local search with the simulator while ``prob.work < work``: first single upgrades (to the next faster
    option) that fit the budget, best gain per unit of score first; when none helps, exchanges (one variable one
    option slower, another one option faster) that fit the budget and shorten the step."""
    best_t = prob.step(choice)
    while prob.work < work:
        used = prob.sens(choice)
        gains = []
        for i, var in enumerate(prob.vars):
            c = choice[i]
            if prob.work >= work:
                break
            if c + 1 < len(var.options):
                ds = var.options[c + 1].sens - var.options[c].sens
                if _fits(used + ds, budget):
                    choice[i] += 1
                    t = prob.step(choice)
                    choice[i] -= 1
                    if t < best_t * (1 - 1e-12):
                        gains.append(((best_t - t) / ds if ds > 0 else math.inf, i, t))
        if gains:
            _, i, t = max(gains)
            choice[i] += 1
            best_t = t
            continue
        swap = None
        for i, vi in enumerate(prob.vars):
            if choice[i] == 0:
                continue
            freed = vi.options[choice[i]].sens - vi.options[choice[i] - 1].sens
            for j, vj in enumerate(prob.vars):
                if j == i or choice[j] + 1 >= len(vj.options) or prob.work >= work:
                    continue
                ds = vj.options[choice[j] + 1].sens - vj.options[choice[j]].sens
                if not _fits(used - freed + ds, budget):
                    continue
                choice[i] -= 1
                choice[j] += 1
                t = prob.step(choice)
                choice[i] += 1
                choice[j] -= 1
                if t < best_t * (1 - 1e-12) and (swap is None or t < swap[0]):
                    swap = (t, i, j)
        if swap is None:
            break
        best_t, i, j = swap
        choice[i] -= 1
        choice[j] += 1
    return choice


def _relax(prob: _Problem, choice: list[int], work: int) -> list[int]:
    """Simulated single downgrades (next slower, less sensitive option) that leave the step time unchanged (to a
    relative 1e-12), biggest score saving first: equally fast, less sensitive."""
    t0 = prob.step(choice)
    improved = True
    while improved and prob.work < work:
        improved = False
        order = sorted((i for i, c in enumerate(choice) if c > 0),
                       key=lambda i: prob.vars[i].options[choice[i]].sens - prob.vars[i].options[choice[i] - 1].sens,
                       reverse=True)
        for i in order:
            if prob.work >= work:
                break
            choice[i] -= 1
            if prob.step(choice) <= t0 * (1 + 1e-12):
                improved = True
            else:
                choice[i] += 1
    return choice


def _problem(profile: ModelProfile, cuts: Sequence[int], cluster: ClusterSpec | LinkSpec | str | float,
             candidates: Iterable[str] | None, budget: float | None, schedule: str, microbatches: int | None,
             chunks: int, speeds: Speeds | None, score: str) -> _Problem:
    if budget is not None and not budget >= 0:
        raise ValueError(f"budget must be >= 0 (or None for no accuracy constraint), got {budget!r}")
    return _Problem(profile, cuts, cluster, candidates, budget, schedule=schedule, microbatches=microbatches,
                    chunks=chunks, speeds=speeds, score=score)


def _uniform_choice(prob: _Problem, budget: float | None) -> tuple[list[_Option], str, float] | None:
    """The fastest uniform assignment within ``budget``: (options, spec, step time)."""
    best: tuple[list[_Option], str, float] | None = None
    best_key: tuple[float, float] | None = None
    for spec, opts in prob.uniform.items():
        sens = sum(o.sens for o in opts)
        if budget is not None and not _fits(sens, budget):
            continue
        key = (prob.step_of(opts), sens)
        if _better(key, best_key):
            best, best_key = (opts, spec, key[0]), key
    return best


def best_uniform(profile: ModelProfile, cuts: Sequence[int], cluster: ClusterSpec | LinkSpec | str | float,
                 candidates: Iterable[str] | None, budget: float | None, *, schedule: str = "1f1b",
                 microbatches: int | None = None, chunks: int = 1, speeds: Speeds | None = None,
                 score: str = "sensitivity") -> Assignment:
    """The fastest single codec for every edge and direction whose total score meets ``budget`` (a codec not
    measured at some edge is out). ``method`` of the result is ``"uniform:<spec>"``. fp32 always qualifies."""
    prob = _problem(profile, cuts, cluster, candidates, budget, schedule, microbatches, chunks, speeds, score)
    found = _uniform_choice(prob, budget)
    assert found is not None  # fp32 scores 0 and is on every frontier or dominated by a faster 0-score option
    return prob.assignment(found[0], f"uniform:{found[1]}")


def min_time_under_budget(profile: ModelProfile, cuts: Sequence[int], cluster: ClusterSpec | LinkSpec | str | float,
                          candidates: Iterable[str] | None, budget: float | None, *, schedule: str = "1f1b",
                          microbatches: int | None = None, chunks: int = 1, speeds: Speeds | None = None,
                          score: str = "sensitivity", exhaustive_limit: int = EXHAUSTIVE_LIMIT,
                          polish_work: int = POLISH_WORK, taus: int = 8) -> Assignment:
    """The codec per edge and direction with the smallest predicted step time whose total score is at most
    ``budget`` (None: no accuracy constraint). See the module docstring for the method. ``candidates`` None =
    every codec the profile has scores for. ValueError for a negative budget."""
    prob = _problem(profile, cuts, cluster, candidates, budget, schedule, microbatches, chunks, speeds, score)
    if budget is None:
        return prob.assignment(prob.fastest(), "unconstrained")
    if prob.product() <= exhaustive_limit:
        return prob.assignment(_relax(prob, _exhaustive_min_time(prob, budget), polish_work), "exhaustive")
    groups = prob.groups()
    loads = sorted({it[1] for _, items in groups for it in items})
    lo_tau = max(min(it[1] for it in items) for _, items in groups)
    loads = [t for t in loads if t >= lo_tau]

    def feasible(tau: float) -> bool:
        return _fits(sum(min(it[2] for it in items if it[1] <= tau * (1 + 1e-12)) for _, items in groups), budget)

    lo, hi = 0, len(loads) - 1  # loads[-1] is feasible: every stage may take its least sensitive item
    while lo < hi:
        mid = (lo + hi) // 2
        if feasible(loads[mid]):
            hi = mid
        else:
            lo = mid + 1
    picks = sorted({lo + round((len(loads) - 1 - lo) * (k / max(taus - 1, 1)) ** 2) for k in range(taus)})
    pool: list[tuple[list[int], str]] = []
    for i in picks:
        choice = _threshold_choice(prob, groups, loads[i], budget)
        if choice is not None:
            pool.append((choice, "threshold+greedy"))
    pool.append((prob.least_sensitive(), "threshold+greedy"))
    uni = _uniform_choice(prob, budget)
    if uni is not None:  # as frontier options: each no slower and no more sensitive than the uniform one
        pool.append(([var.covering(o) for var, o in zip(prob.vars, uni[0])], f"uniform:{uni[1]}"))
    best, best_key, how = None, None, ""
    for choice, method in pool:
        key = (prob.step(choice), prob.sens(choice))
        if _better(key, best_key):
            best, best_key, how = choice, key, method
    assert best is not None
    polished = _polish_upgrades(prob, list(best), budget, polish_work)
    if polished != best:
        how = "threshold+greedy+polish"
    return prob.assignment(_relax(prob, polished, prob.work + polish_work // 3), how)


# ---- min loss under a time budget -----------------------------------------------------------------------------


def min_loss_under_time(profile: ModelProfile, cuts: Sequence[int], cluster: ClusterSpec | LinkSpec | str | float,
                        candidates: Iterable[str] | None, time_budget_s: float, *, schedule: str = "1f1b",
                        microbatches: int | None = None, chunks: int = 1, speeds: Speeds | None = None,
                        score: str = "sensitivity", exhaustive_limit: int = EXHAUSTIVE_LIMIT,
                        polish_work: int = POLISH_WORK) -> Assignment:
    """The codec per edge and direction with the smallest total score whose predicted step time is at most
    ``time_budget_s``. Raises InfeasibleError (a ValueError) naming the fastest achievable step when even the
    fastest allowed codecs miss the time."""
    prob = _problem(profile, cuts, cluster, candidates, math.inf, schedule, microbatches, chunks, speeds, score)
    fastest = prob.fastest()
    t_min = prob.step(fastest)
    if not _fits(t_min, time_budget_s):
        raise InfeasibleError(f"no codec assignment meets {time_budget_s:.6g} s per step: the fastest allowed "
                              f"codecs take {t_min:.6g} s")
    if prob.product() <= exhaustive_limit:
        combos = sorted(itertools.product(*(range(len(v.options)) for v in prob.vars)),
                        key=lambda c: (prob.sens(c), sum(v.options[i].time for v, i in zip(prob.vars, c))))
        for combo in combos:
            if _fits(prob.step(combo), time_budget_s):
                return prob.assignment(list(combo), "exhaustive")
        raise AssertionError("unreachable: the fastest combination meets the time")
    groups = prob.groups()
    loads = sorted({it[1] for _, items in groups for it in items})
    lo_tau = max(min(it[1] for it in items) for _, items in groups)
    loads = [t for t in loads if t >= lo_tau]
    cache: dict[int, tuple[list[int], bool]] = {}

    def at(i: int) -> tuple[list[int], bool]:
        if i not in cache:
            choice = _threshold_choice(prob, groups, loads[i], None)
            assert choice is not None
            cache[i] = (choice, _fits(prob.step(choice), time_budget_s))
        return cache[i]

    best = fastest
    lo, hi = 0, len(loads) - 1
    if at(hi)[1]:
        best = at(hi)[0]
    else:
        while lo < hi:  # largest feasible threshold, assuming time grows with the threshold
            mid = (lo + hi + 1) // 2
            if at(mid)[1]:
                lo = mid
            else:
                hi = mid - 1
        if at(lo)[1]:
            best = at(lo)[0]
    for choice, ok in cache.values():
        if ok and prob.sens(choice) < prob.sens(best):
            best = choice
    how = "threshold"
    for spec, opts in prob.uniform.items():
        if _fits(prob.step_of(opts), time_budget_s):
            cover = [var.covering(o) for var, o in zip(prob.vars, opts)]  # no slower, no more sensitive
            if prob.sens(cover) < prob.sens(best):
                best, how = cover, f"uniform:{spec}"
    # simulated single downgrades (to the next slower, less sensitive option), biggest saving first
    best = list(best)
    improved = True
    while improved and prob.work < polish_work:
        improved = False
        order = sorted((i for i, c in enumerate(best) if c > 0),
                       key=lambda i: prob.vars[i].options[best[i]].sens - prob.vars[i].options[best[i] - 1].sens,
                       reverse=True)
        for i in order:
            if prob.work >= polish_work:
                break
            best[i] -= 1
            if _fits(prob.step(best), time_budget_s):
                improved = True
                how = how + "+polish" if not how.endswith("+polish") else how
            else:
                best[i] += 1
    return prob.assignment(best, how)


# ---- cuts and codecs together ---------------------------------------------------------------------------------


def plan_jointly(profile: ModelProfile, num_stages: int, cluster: ClusterSpec | LinkSpec | str | float,
                 candidates: Iterable[str] | None, budget: float | None, *, schedule: str = "1f1b",
                 microbatches: int | None = None, speeds: Speeds | None = None, score: str = "sensitivity",
                 rounds: int = 3, exhaustive_limit: int = EXHAUSTIVE_LIMIT) -> Any:
    """The fastest plan found by alternating cuts and codecs (returns a :class:`~.plan.Plan`).

    Starting points: even cuts, and :func:`~.cuts.best_cuts` for fp32 and for each candidate used uniformly
    (where measured); each gets :func:`min_time_under_budget`. Then, from the best so far, for ``rounds``
    rounds: cut again with each boundary's codec = the assigned codec where a cut already is, elsewhere the
    fastest codec whose score there fits an even share of the budget; re-assign; stop when the cuts repeat.
    Even cuts with :func:`best_uniform` are in the pool, so the result is never slower than that baseline.
    """
    from .cuts import best_cuts
    from .plan import make_plan

    candidates = None if candidates is None else list(candidates)
    kw: dict[str, Any] = dict(schedule=schedule, microbatches=microbatches, speeds=speeds, score=score)
    tried: dict[tuple[int, ...], Assignment] = {}
    results: list[tuple[Assignment, str]] = []

    def consider(cuts: tuple[int, ...], note: str) -> Assignment:
        if cuts not in tried:
            tried[cuts] = min_time_under_budget(profile, cuts, cluster, candidates, budget,
                                                exhaustive_limit=exhaustive_limit, **kw)
            results.append((tried[cuts], note))
        return tried[cuts]

    even = even_cuts(profile.n_blocks, num_stages)
    baseline = best_uniform(profile, even, cluster, candidates, budget, **kw)
    results.append((baseline, "even cuts + best uniform codec"))
    consider(even, "even cuts")
    specs = list(dict.fromkeys(["fp32", *(canonical_spec(c) for c in
                                          (candidates if candidates is not None else profile.measured_codecs(score)))]))
    nb = profile.n_boundaries

    def allowed(b: int, direction: str, spec: str) -> float | None:
        s = profile.score(b, direction, spec, score)
        if s is None:
            return 0.0 if budget is None else None
        return max(0.0, s)

    for spec in specs:
        per = [tuple(spec if allowed(b, d, spec) is not None else "fp32" for d in DIRECTIONS) for b in range(nb)]
        consider(best_cuts(profile, num_stages, cluster, per, speeds=speeds), f"best cuts for {spec}")
    share = math.inf if budget is None else budget / max(1, 2 * (num_stages - 1))
    links = links_of(as_cluster(cluster, num_stages), num_stages)
    slowest = min(links, key=lambda link: (link.bandwidth_Bps, -link.latency_s)) if links else None

    def share_codec(b: int, direction: str) -> str:
        """The fastest codec (over the slowest link) whose score at ``b`` fits an even share of the budget."""
        ok = [s for s in specs if (v := allowed(b, direction, s)) is not None and _fits(v, share)]
        assert slowest is not None
        n = profile.boundary_elements(b, direction)
        return min(ok, key=lambda s: edge_time(codec_cost(s, speeds), n, slowest))

    for _ in range(rounds if num_stages > 1 else 0):
        best = min(results, key=lambda r: (r[0].step_time_s, r[0].total_sensitivity))[0]
        at_cut = {c - 1: best.codecs[f"s{k}->s{k + 1}"] for k, c in enumerate(best.cuts)}
        per = [(at_cut[b]["forward"], at_cut[b]["backward"]) if b in at_cut
               else (share_codec(b, "forward"), share_codec(b, "backward")) for b in range(nb)]
        cuts = best_cuts(profile, num_stages, cluster, per, speeds=speeds)
        if cuts in tried:
            break
        consider(cuts, "alternating cuts and codecs")
    best, note = min(results, key=lambda r: (r[0].step_time_s, r[0].total_sensitivity))
    return make_plan(profile, best.cuts, best.codecs_dict(), cluster, schedule=schedule,
                     microbatches=best.prediction.microbatches, budget=budget, objective="plan_jointly",
                     speeds=speeds, score=score, notes=(f"chosen: {note} ({best.method})",
                                                        f"baseline even cuts + {baseline.method}: "
                                                        f"{baseline.step_time_s:.6g} s"))
