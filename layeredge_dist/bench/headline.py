"""The end-to-end benchmark's headline targets and the verdict on a result of ``layeredge bench e2e``.

The targets: at 100 Mbit/s the plan reaches the target loss at least 5x faster than fp32 edges and at least 2.5x
faster than bf16 edges, ends within 1 % of fp32's final validation loss, and its codecs use at most 3 bits per
element forward and 6 backward (the "winning plan"). At 1 Gbit/s it reaches the target at least 2x faster than
fp32, with whatever codecs the planner picks for that link.

Each check is ``met`` True, False, or None when the result cannot decide it: a configuration that is missing, or
one that never reached the target, or a loss gap whose spread straddles the tolerance. The loss check judges the
paired gaps to fp32 over the seeds (:func:`~layeredge_dist.bench.replicates.spread`). It is met when the mean gap
plus two standard errors stays within the tolerance. It fails when the mean minus two standard errors is beyond
it. A single seed decides nothing, because one seed's gap is one draw (docs/benchmarks.md).

Pure: it reads the result's rows and runs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Targets:
    """The headline at one link rate: time-to-target speed-ups of the plan over fp32 and bf16 edges (None = no
    target), the final loss's largest relative gap to fp32 (None = no target), and the plan's largest bits per
    element forward and backward (None = no target)."""

    rate_bps: float
    vs_fp32: float
    vs_bf16: float | None = None
    loss_gap: float | None = None
    bits_fwd: float | None = None
    bits_bwd: float | None = None


TARGETS = (Targets(100e6, 5.0, 2.5, 0.01, 3.0, 6.0), Targets(1e9, 2.0))


def targets_for(rate: str) -> Targets | None:
    """The headline of testbed rate label ``rate`` (``100mbit``, ``1gbit``), None for other rates."""
    from layeredge_dist.testbed import parse_rate

    bps = parse_rate(rate).rate_bps
    return next((t for t in TARGETS if bps is not None and abs(bps - t.rate_bps) < 1e-6 * t.rate_bps), None)


#: How each kind of check shows its value.
_SHOW = {"x": "{:.2f}x", "%": "{:+.2%}", "bits": "{:.2f}"}


def _check(name: str, value: float | None, unit: str, want: str, met: bool | None, why: str = "") -> dict[str, Any]:
    return {"name": name, "value": value, "unit": unit, "want": want, "met": met, "why": why}


def _speedup(rows: Mapping[str, Mapping[str, Any]], base: str, plan: Mapping[str, Any], least: float
             ) -> dict[str, Any]:
    name, want = f"time to target vs {base}", f">= {least:g}x"
    ref = rows.get(base)
    if ref is None:
        return _check(name, None, "x", want, None, f"no {base} row")
    if ref["time_to_target_s"] is None:
        return _check(name, None, "x", want, None, f"{base} never reached the target")
    if plan["time_to_target_s"] is None:
        return _check(name, None, "x", want, False, "the plan never reached the target")
    x = ref["time_to_target_s"] / plan["time_to_target_s"]
    return _check(name, x, "x", want, x >= least)


def _loss(plan: Mapping[str, Any], tolerance: float) -> dict[str, Any]:
    name, want = "final val loss vs fp32", f"<= +{tolerance:.0%}"
    gap = plan.get("final_gap_vs_fp32")
    if not gap:
        return _check(name, None, "%", want, None, "no fp32 row")
    if gap["n"] < 2:
        return _check(name, gap["mean"], "%", want, None, "one seed cannot decide it (its gap is one draw): --seeds 3 "
                      "or more")
    lo, hi = gap["mean"] - 2.0 * gap["se"], gap["mean"] + 2.0 * gap["se"]
    met = True if hi <= tolerance else False if lo > tolerance else None
    return _check(name, gap["mean"], "%", want, met, f"mean {gap['mean']:+.2%}, two standard errors "
                  f"[{lo:+.2%}, {hi:+.2%}] over {gap['n']} seeds")


def verdict(rows: Sequence[Mapping[str, Any]], rate: str) -> dict[str, Any] | None:
    """The headline checks of ``rate`` on the rows of that rate: ``{"rate", "checks": [{"name", "value", "want",
    "met", "why"}], "met"}`` (``met``: True when every check is met, False when one fails, else None); None for a
    rate with no headline or without a plan row."""
    t = targets_for(rate)
    by = {r["config"]: r for r in rows if r["bandwidth"] == rate}
    plan = by.get("plan")
    if t is None or plan is None:
        return None
    checks = [_speedup(by, "fp32", plan, t.vs_fp32)]
    if t.vs_bf16 is not None:
        checks.append(_speedup(by, "bf16", plan, t.vs_bf16))
    if t.loss_gap is not None:
        checks.append(_loss(plan, t.loss_gap))
    for side, most in (("fwd", t.bits_fwd), ("bwd", t.bits_bwd)):
        if most is not None:
            bits = plan[f"bits_{side}"]
            checks.append(_check(f"bits {'forward' if side == 'fwd' else 'backward'}", bits, "bits", f"<= {most:g}",
                                 bits <= most + 1e-9))
    met = [c["met"] for c in checks]
    return {"rate": rate, "checks": checks,
            "met": False if False in met else True if all(m is True for m in met) else None}


def lines(v: Mapping[str, Any]) -> list[str]:
    """:func:`verdict` as text lines."""
    word = {True: "met", False: "NOT met", None: "undecided"}
    out = [f"headline at {v['rate']}: {word[v['met']]}"]
    for c in v["checks"]:
        value = "-" if c["value"] is None else _SHOW[c["unit"]].format(c["value"])
        out.append(f"  {c['name']}: {value} (want {c['want']}): {word[c['met']]}" + (f"; {c['why']}" if c["why"]
                                                                                     else ""))
    return out
