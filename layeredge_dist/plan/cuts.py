"""Where to cut: dynamic programming over block boundaries.

The cost of a stage holding blocks ``i..j-1`` as stage ``s`` of ``P`` is its compute per micro-batch (forward +
backward) plus the time of the tensors it sends: the activation over boundary ``j - 1`` to stage ``s + 1`` (link
``s``) and the gradient over boundary ``i - 1`` back to stage ``s - 1`` (link ``s - 1``), each
:func:`~.codec_costs.edge_time` of that boundary's codec. :func:`best_cuts` minimises the bottleneck
``max_s cost(s)``, which sets the steady-state rate of the pipeline; among cut sets with the same bottleneck (to a
relative 1e-9) it takes the smallest largest stage compute, and then the smallest sum of squared stage computes
(the most balanced). Three passes of an ``O(n^2 P)`` dynamic programme; each pass is exact, so the result equals
a brute-force search (tested).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from .cluster import ClusterSpec, LinkSpec, as_cluster
from .codec_costs import Speeds, codec_cost, edge_time
from .profile import ModelProfile, check_cuts, stage_ranges

#: Codec per boundary: None (fp32), one spec for all, one entry per boundary (a spec or a (forward, backward)
#: pair), or a mapping boundary -> entry (other boundaries fp32).
CodecPerBoundary = None | str | Sequence[str | tuple[str, str]] | Mapping[int, str | tuple[str, str]]

_INF = math.inf


def boundary_codecs(profile: ModelProfile, codec_per_boundary: CodecPerBoundary) -> list[tuple[str, str]]:
    """``(forward, backward)`` spec for every boundary. ValueError for a wrong length or boundary."""
    nb = profile.n_boundaries
    if codec_per_boundary is None:
        return [("fp32", "fp32")] * nb
    if isinstance(codec_per_boundary, str):
        return [(codec_per_boundary, codec_per_boundary)] * nb
    if isinstance(codec_per_boundary, Mapping):
        out = [("fp32", "fp32")] * nb
        for b, c in codec_per_boundary.items():
            if not 0 <= int(b) < nb:
                raise ValueError(f"codec for boundary {b}: outside 0..{nb - 1}")
            out[int(b)] = (c, c) if isinstance(c, str) else (c[0], c[1])
        return out
    seq = list(codec_per_boundary)
    if len(seq) != nb:
        raise ValueError(f"codec_per_boundary: expected {nb} entries (one per boundary), got {len(seq)}")
    return [(c, c) if isinstance(c, str) else (c[0], c[1]) for c in seq]


class _Costs:
    """Stage costs for the DP, with per-link tables of boundary transfer times."""

    def __init__(self, profile: ModelProfile, num_stages: int, cluster: ClusterSpec,
                 codecs: list[tuple[str, str]], speeds: Speeds | None) -> None:
        self.profile, self.p = profile, num_stages
        links = [cluster.link(k) for k in range(num_stages - 1)]
        nb = profile.n_boundaries
        f_costs = [codec_cost(f, speeds) for f, _ in codecs]
        b_costs = [codec_cost(b, speeds) for _, b in codecs]

        def table(link: LinkSpec, direction: str) -> list[float]:
            costs = f_costs if direction == "forward" else b_costs
            return [edge_time(costs[b], profile.boundary_elements(b, direction), link) for b in range(nb)]

        cache: dict[tuple[LinkSpec, str], list[float]] = {}

        def get(link: LinkSpec, direction: str) -> list[float]:
            if (link, direction) not in cache:
                cache[(link, direction)] = table(link, direction)
            return cache[(link, direction)]

        self.act = [get(link, "forward") for link in links]
        self.grad = [get(link, "backward") for link in links]
        pre = [0.0]
        for blk in profile.blocks:
            pre.append(pre[-1] + blk.fwd_s + blk.bwd_s)
        self.pre = pre

    def compute(self, i: int, j: int) -> float:
        return self.pre[j] - self.pre[i]

    def stage(self, i: int, j: int, s: int) -> float:
        c = self.pre[j] - self.pre[i]
        if s < self.p - 1:
            c += self.act[s][j - 1]
        if s > 0:
            c += self.grad[s - 1][i - 1]
        return c


def _setup(profile: ModelProfile, num_stages: int, link_or_cluster: ClusterSpec | LinkSpec | str | float,
           codec_per_boundary: CodecPerBoundary, speeds: Speeds | None) -> _Costs:
    if not 1 <= num_stages <= profile.n_blocks:
        raise ValueError(f"cannot cut {profile.n_blocks} blocks into {num_stages} non-empty stages")
    cluster = as_cluster(link_or_cluster, num_stages)
    return _Costs(profile, num_stages, cluster, boundary_codecs(profile, codec_per_boundary), speeds)


def stage_costs(profile: ModelProfile, cuts: Sequence[int], link_or_cluster: ClusterSpec | LinkSpec | str | float,
                codec_per_boundary: CodecPerBoundary = None, *, speeds: Speeds | None = None) -> tuple[float, ...]:
    """Per stage: compute (forward + backward per micro-batch) plus its outgoing transfer times (seconds)."""
    p = len(cuts) + 1
    cuts = check_cuts(profile.n_blocks, cuts, p)
    costs = _setup(profile, p, link_or_cluster, codec_per_boundary, speeds)
    return tuple(costs.stage(i, j, s) for s, (i, j) in enumerate(stage_ranges(profile.n_blocks, cuts)))


def bottleneck(profile: ModelProfile, cuts: Sequence[int], link_or_cluster: ClusterSpec | LinkSpec | str | float,
               codec_per_boundary: CodecPerBoundary = None, *, speeds: Speeds | None = None) -> float:
    """The largest :func:`stage_costs` entry: what :func:`best_cuts` minimises."""
    return max(stage_costs(profile, cuts, link_or_cluster, codec_per_boundary, speeds=speeds))


def _tol(x: float) -> float:
    return x + 1e-9 * abs(x) + 1e-15


def _dp(n: int, p: int, weight: Callable[[int, int, int], float], use_max: bool) -> tuple[float, list[list[int]]]:
    """min over cut sets of max (or sum) of ``weight(i, j, s)`` over stages; returns the value and the argmin
    tables for reconstruction (``arg[s][j]``: start of stage ``s`` when it ends at ``j``)."""
    prev = [_INF] * (n + 1)
    for j in range(1, n - p + 2):
        prev[j] = weight(0, j, 0)
    args: list[list[int]] = [[0] * (n + 1)]
    for s in range(1, p):
        cur = [_INF] * (n + 1)
        arg = [-1] * (n + 1)
        for j in range(s + 1, n - (p - 1 - s) + 1):
            best, bi = _INF, -1
            for i in range(s, j):
                a = prev[i]
                if a == _INF:
                    continue
                w = weight(i, j, s)
                v = (a if a > w else w) if use_max else a + w
                if v < best:
                    best, bi = v, i
            cur[j], arg[j] = best, bi
        prev = cur
        args.append(arg)
    return prev[n], args


def best_cuts(profile: ModelProfile, num_stages: int, link_or_cluster: ClusterSpec | LinkSpec | str | float,
              codec_per_boundary: CodecPerBoundary = None, *, speeds: Speeds | None = None) -> tuple[int, ...]:
    """Cut points (block index where each stage after the first begins) minimising the bottleneck stage cost,
    ties broken toward balanced compute (see the module docstring). ``link_or_cluster``: a ClusterSpec (link
    ``k`` joins stages ``k`` and ``k + 1``), one LinkSpec, or a bandwidth. ValueError when there are fewer blocks
    than stages."""
    costs = _setup(profile, num_stages, link_or_cluster, codec_per_boundary, speeds)
    n, p = profile.n_blocks, num_stages
    if p == 1:
        return ()
    stage, compute = costs.stage, costs.compute
    t_star, _ = _dp(n, p, stage, True)
    t_lim = _tol(t_star)
    c_star, _ = _dp(n, p, lambda i, j, s: compute(i, j) if stage(i, j, s) <= t_lim else _INF, True)
    c_lim = _tol(c_star)

    def balanced(i: int, j: int, s: int) -> float:
        c = compute(i, j)
        return c * c if c <= c_lim and stage(i, j, s) <= t_lim else _INF

    _, args = _dp(n, p, balanced, False)
    cuts, j = [], n
    for s in range(p - 1, 0, -1):
        j = args[s][j]
        cuts.append(j)
    return tuple(reversed(cuts))
