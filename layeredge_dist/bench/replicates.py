"""Replicate runs of one benchmark configuration over several seeds, merged into one row.

One seed's final loss is one draw. On the demo over 300 steps, single runs with codecs whose error on the cut
activations is below 1 % ended anywhere from +1.7 % to +19.8 % above fp32 (docs/benchmarks.md, the one-seed
spread). So a criterion such as "within 1 % of fp32" needs several seeds. Replicate ``k`` trains
:func:`layeredge_dist.config.reseeded` ``(cfg, k)``: other batches, other initial weights and other codec draws.
Every configuration of a benchmark trains once per seed, so its comparison with fp32 is paired by seed.

Pure bookkeeping: no Ray, no training.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any


def mean_of(values: Sequence[Any]) -> Any:
    """The element-wise mean of equally shaped values: numbers, lists of them, or dicts of them (nested).
    Keys or items missing from some values, values that are not numbers, and numbers equal in every value (an
    evaluation step, say: it keeps its type) come from the first value."""
    first = values[0]
    if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values):
        return first if all(x == first for x in values) else statistics.fmean(float(x) for x in values)
    if all(isinstance(x, Mapping) for x in values):
        return {k: mean_of([x[k] for x in values]) if all(k in x for x in values) else v for k, v in first.items()}
    if all(isinstance(x, list) for x in values) and len({len(x) for x in values}) == 1:
        return [mean_of([x[i] for x in values]) for i in range(len(first))]
    return first


def spread(xs: Sequence[float]) -> dict[str, float | int]:
    """``{"mean", "sd", "se", "min", "max", "n"}`` of ``xs``: sample standard deviation and standard error of the
    mean, both 0.0 for one value. ValueError for no values."""
    if not xs:
        raise ValueError("no values")
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return {"mean": statistics.fmean(xs), "sd": sd, "se": sd / math.sqrt(len(xs)), "min": min(xs), "max": max(xs),
            "n": len(xs)}


def merge(runs: Sequence[Mapping[str, Any]], skip_steps: int) -> dict[str, Any]:
    """One configuration's replicate runs (the same steps and evaluation points, one seed each) as one run.

    ``step_s`` and ``step_s_mean`` are the median and mean of all replicates' step times after the first
    ``skip_steps`` of each, and ``step_seconds`` is all of them in order. ``val_curve`` is the point-wise mean
    (step, training time, wall time, loss), and ``final_val_loss`` is the mean of the final losses. The other
    numeric figures (traffic, stage medians) are means, and everything else comes from the first run. Each run's
    ``seed``, ``step_s``, ``final_val_loss``, ``train_s`` and ``val_curve`` go under ``replicates``, in order.

    ValueError for no runs, or for runs whose evaluation steps differ.
    """
    if not runs:
        raise ValueError("no runs to merge")
    steps = [[p["step"] for p in r["val_curve"]] for r in runs]
    if any(s != steps[0] for s in steps):
        raise ValueError(f"replicates evaluated at different steps: {steps}")
    out = dict(runs[0])
    replicates = [{"seed": r.get("seed"), "step_s": r["step_s"], "final_val_loss": r["final_val_loss"],
                   "train_s": r.get("train_s"), "val_curve": r["val_curve"]} for r in runs]
    if len(runs) > 1:
        steady = [t for r in runs for t in (r["step_seconds"][skip_steps:] or r["step_seconds"])]
        out.update({k: mean_of([r[k] for r in runs]) for k in runs[0]
                    if k not in ("seed", "step_seconds", "val_curve", "codecs", "cuts", "placement", "overrides")})
        out.update(step_s=statistics.median(steady), step_s_mean=statistics.fmean(steady),
                   step_seconds=[t for r in runs for t in r["step_seconds"]],
                   val_curve=mean_of([r["val_curve"] for r in runs]))
    out.pop("seed", None)
    out["seeds"] = [r.get("seed") for r in runs]
    out["replicates"] = replicates
    return out
