"""A plan: cuts, a codec per edge and direction, schedule and the predicted step, as plain data.

``Plan.codecs`` has exactly the shape of the run config's ``codecs.edges`` (``{"s0->s1": {"forward": "int8",
"backward": "bf16"}}``) and ``Plan.cuts`` that of ``pipeline.cuts``, so a plan applies with ``--set`` (see
:meth:`Plan.overrides`) or :meth:`Plan.apply`. Plans print as a table (:meth:`Plan.format`), compare
(:meth:`Plan.diff`), and round-trip through JSON and YAML exactly.
"""

from __future__ import annotations

import json
import math
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from .cluster import ClusterSpec, LinkSpec
from .codec_costs import Speeds
from .profile import DIRECTIONS, ModelProfile
from .simulator import (Codecs, PipelineModel, Prediction, codecs_mapping, edge_key, predict_model,
                        resolve_codecs)

OBJECTIVES = ("manual", "min_time_under_budget", "min_loss_under_time", "plan_jointly", "best_uniform", "what_if")


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return types.MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_thaw(v) for v in value]
    return value


def _empty() -> Mapping[str, Any]:
    return types.MappingProxyType({})


@dataclass(frozen=True)
class Plan:
    """A pipeline plan; see the module docstring.

    Attributes:
        model: summary of the profile (name, blocks, totals).
        num_stages, cuts, schedule, microbatches, chunks: as in the run config's ``pipeline`` section.
        codecs: ``{edge: {"forward": spec, "backward": spec}}`` for every edge (the run config's ``codecs.edges``).
        cluster: the cluster (``ClusterSpec.to_dict()``).
        prediction: the predicted step.
        budget: the accuracy budget (total score) or time budget (seconds) the plan was made under, or None.
        objective: how it was chosen (``min_time_under_budget``, ``min_loss_under_time``, ``plan_jointly``, ...).
        sensitivity: the score used per edge and direction (None: not measured).
        stages: per stage ``{"stage", "blocks": [[lo, hi], ...], "fwd_s", "bwd_s", "params_bytes"}`` (per
            micro-batch; one block range per chunk).
        score: which table scored the codecs (``sensitivity`` or ``proxy``).
        notes: free text (e.g. what the plan was compared with).
    """

    model: Mapping[str, Any]
    num_stages: int
    cuts: tuple[int, ...]
    codecs: Mapping[str, Mapping[str, str]]
    schedule: str
    microbatches: int
    cluster: Mapping[str, Any]
    prediction: Prediction
    budget: float | None = None
    objective: str = "manual"
    chunks: int = 1
    sensitivity: Mapping[str, Mapping[str, float | None]] = field(default_factory=_empty)
    stages: tuple[Mapping[str, Any], ...] = ()
    score: str = "sensitivity"
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("model", "codecs", "cluster", "sensitivity", "stages", "cuts", "notes"):
            object.__setattr__(self, name, _freeze(getattr(self, name)))
        if not isinstance(self.prediction, Prediction):
            object.__setattr__(self, "prediction", Prediction.from_dict(self.prediction))
        for key, sides in self.codecs.items():
            bad = set(sides) - set(DIRECTIONS)
            if bad:
                raise ValueError(f"codecs[{key!r}]: unknown directions {sorted(bad)}; use forward and backward")

    # ---- derived ----

    @property
    def step_time_s(self) -> float:
        """Predicted seconds per step."""
        return self.prediction.step_time_s

    @property
    def total_sensitivity(self) -> float:
        """Sum of the measured scores used (unmeasured entries count 0)."""
        return sum(v for sides in self.sensitivity.values() for v in sides.values() if v is not None)

    def codecs_dict(self) -> dict[str, dict[str, str]]:
        """``codecs`` as plain dicts: the value for the run config's ``codecs.edges``."""
        return _thaw(self.codecs)

    def boundary_codecs(self) -> dict[int, tuple[str, str]]:
        """``{k: (forward spec, backward spec)}`` for every model boundary the plan cuts (``k = cut - 1``, the
        boundary after block ``k``; an edge without an entry is fp32): the form
        :func:`layeredge_dist.measure.trial.plan_losses` trains. ValueError for an interleaved plan
        (``chunks > 1``), whose virtual edges do not map onto one boundary each here."""
        if self.chunks != 1:
            raise ValueError(f"boundary codecs need a plan with one chunk per stage, this one has {self.chunks}")
        out = {}
        for i, cut in enumerate(self.cuts):
            sides = self.codecs.get(edge_key(i, i + 1), {})
            out[cut - 1] = (sides.get("forward", "fp32"), sides.get("backward", "fp32"))
        return out

    def config_patch(self) -> dict[str, Any]:
        """The run-config sections this plan sets: ``{"pipeline": {...}, "codecs": {"edges": {...}}}``."""
        return {"pipeline": {"stages": self.num_stages, "cuts": list(self.cuts), "schedule": self.schedule,
                             "microbatches": self.microbatches, "chunks": self.chunks},
                "codecs": {"edges": self.codecs_dict()}}

    def overrides(self) -> list[str]:
        """``--set`` strings that apply this plan: ``pipeline.stages=4``, ``pipeline.cuts=[3, 6, 9]``, ...,
        ``codecs.edges.s0->s1.forward=int8``."""
        out = [f"pipeline.stages={self.num_stages}", f"pipeline.cuts={list(self.cuts)}",
               f"pipeline.schedule={self.schedule}", f"pipeline.microbatches={self.microbatches}",
               f"pipeline.chunks={self.chunks}"]
        for key, sides in self.codecs.items():
            out += [f"codecs.edges.{key}.{d}={sides[d]}" for d in DIRECTIONS if d in sides]
        return out

    def apply(self, cfg: Any) -> Any:
        """A copy of the RunConfig ``cfg`` with this plan applied (ConfigError when it does not fit, e.g. the
        micro-batches do not divide ``data.batch_size``)."""
        from layeredge_dist.config.load import with_overrides

        return with_overrides(cfg, self.overrides())

    # ---- serialisation ----

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-compatible dict; ``Plan.from_dict(p.to_dict()) == p``."""
        budget = self.budget
        return {"model": _thaw(self.model), "num_stages": self.num_stages, "cuts": list(self.cuts),
                "codecs": self.codecs_dict(), "schedule": self.schedule, "microbatches": self.microbatches,
                "chunks": self.chunks, "cluster": _thaw(self.cluster), "prediction": self.prediction.to_dict(),
                "budget": "inf" if budget is not None and math.isinf(budget) else budget,
                "objective": self.objective, "score": self.score, "sensitivity": _thaw(self.sensitivity),
                "stages": _thaw(self.stages), "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """Inverse of :meth:`to_dict`; ValueError for unknown keys."""
        known = {"model", "num_stages", "cuts", "codecs", "schedule", "microbatches", "chunks", "cluster",
                 "prediction", "budget", "objective", "score", "sensitivity", "stages", "notes"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown plan keys {sorted(unknown)}; known: {sorted(known)}")
        budget = data.get("budget")
        return cls(data["model"], int(data["num_stages"]), tuple(data["cuts"]), data["codecs"], data["schedule"],
                   int(data["microbatches"]), data["cluster"], Prediction.from_dict(data["prediction"]),
                   None if budget is None else float(budget), data.get("objective", "manual"),
                   int(data.get("chunks", 1)), data.get("sensitivity") or {}, tuple(data.get("stages") or ()),
                   data.get("score", "sensitivity"), tuple(data.get("notes") or ()))

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def to_yaml(self) -> str:
        """YAML text (``yaml.safe_dump``, keys in field order)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> Plan:
        """Inverse of :meth:`to_yaml`."""
        return cls.from_dict(yaml.safe_load(text))

    # ---- reading ----

    def format(self) -> str:
        """A readable report: header, one row per stage (blocks, compute, busy), one row per edge and direction
        (codec, bytes per step, transfer time per micro-batch, score used)."""
        p = self.prediction
        name = self.model.get("name", "model")
        head = (f"Plan for {name!r} ({self.model.get('n_blocks', '?')} blocks): {self.num_stages} stages"
                + (f" x {self.chunks} chunks" if self.chunks > 1 else "")
                + f", {self.schedule}, {self.microbatches} micro-batches; objective {self.objective}")
        if self.budget is not None:
            head += f", budget {self.budget:.6g}" + (" s" if self.objective == "min_loss_under_time" else
                                                      f" ({self.score})")
        lines = [head, f"cluster: {_cluster_line(self.cluster)}",
                 f"predicted step {p.step_time_s:.6g} s, bubble {p.bubble_fraction:.1%}"
                 + (f", {p.tokens_per_s:.6g} tokens/s" if p.tokens_per_s else "")
                 + f", {_bytes(p.bytes_per_step)} on the wire per step", ""]
        rows = [("stage", "blocks", "fwd ms/mb", "bwd ms/mb", "busy s/step", "params")]
        for st in self.stages:
            s = st["stage"]
            blocks = ",".join(f"{lo}-{hi - 1}" if hi - lo > 1 else f"{lo}" for lo, hi in st["blocks"])
            busy = p.per_stage_busy_s[s] if s < len(p.per_stage_busy_s) else math.nan
            rows.append((f"s{s}", blocks, f"{st['fwd_s'] * 1e3:.4g}", f"{st['bwd_s'] * 1e3:.4g}", f"{busy:.4g}",
                         _bytes(st.get("params_bytes", 0))))
        lines += _table(rows)
        lines.append("")
        rows = [("edge", "direction", "codec", "bytes/step", "comm ms/mb", self.score)]
        for key, sides in self.codecs.items():
            for d in DIRECTIONS:
                nbytes = p.bytes_per_edge_per_step.get(key, {}).get(d)
                t = p.comm_time_per_edge.get(key, {}).get(d)
                sens = self.sensitivity.get(key, {}).get(d)
                rows.append((key, d, sides.get(d, "fp32"), "-" if nbytes is None else _bytes(nbytes),
                             "-" if t is None else f"{t * 1e3:.4g}", "-" if sens is None else f"{sens:.4g}"))
        lines += _table(rows)
        used = f"{self.score} used: {self.total_sensitivity:.6g}"
        if self.budget is not None and self.objective != "min_loss_under_time":
            used += f" of {self.budget:.6g}"
        lines += ["", used]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    def diff(self, other: Plan) -> list[str]:
        """What changes from this plan to ``other``: stages, schedule, micro-batches, chunks, cuts, the codec of
        each edge and direction (a missing entry is fp32), budget, objective, and the predicted step time. Empty
        when the plans agree on all of them."""
        out: list[str] = []
        for name in ("num_stages", "schedule", "microbatches", "chunks", "cuts", "budget", "objective"):
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                out.append(f"{name}: {a} -> {b}")
        keys = list(dict.fromkeys([*self.codecs, *other.codecs]))
        for key in keys:
            for d in DIRECTIONS:
                a = self.codecs.get(key, {}).get(d, "fp32")
                b = other.codecs.get(key, {}).get(d, "fp32")
                if a != b:
                    out.append(f"{key} {d}: {a} -> {b}")
        ta, tb = self.step_time_s, other.step_time_s
        if ta != tb:
            rel = f" ({(tb / ta - 1):+.1%})" if ta > 0 else ""
            out.append(f"predicted step: {ta:.6g} s -> {tb:.6g} s{rel}")
        return out


def _bytes(n: float) -> str:
    for scale, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{int(n)} B"


def _cluster_line(cluster: Mapping[str, Any]) -> str:
    try:
        return ClusterSpec.from_dict(_thaw(cluster)).describe()
    except (KeyError, TypeError, ValueError):
        return str(_thaw(cluster))


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    return out


def make_plan(profile: ModelProfile, cuts: Sequence[int] | None, codecs: Codecs,
              cluster: ClusterSpec | LinkSpec | str | float, *, num_stages: int | None = None,
              schedule: str = "1f1b", microbatches: int | None = None, chunks: int = 1, budget: float | None = None,
              objective: str = "manual", speeds: Speeds | None = None, score: str = "sensitivity",
              notes: Sequence[str] = (), method: str = "auto") -> Plan:
    """Build a :class:`Plan` (prediction, per-stage summary, scores used) for the given cuts and codecs
    (any :data:`~.simulator.Codecs` form). ``cuts=None``: even cuts over ``num_stages`` (default: every node)."""
    if cuts is None and num_stages is None and isinstance(cluster, ClusterSpec):
        num_stages = cluster.nodes
    model = PipelineModel(profile, cuts, cluster, num_stages, schedule=schedule, microbatches=microbatches,
                          chunks=chunks, speeds=speeds)
    p = model.num_stages
    pairs = resolve_codecs(codecs, p, chunks)
    mapping = codecs_mapping(pairs, p, chunks)
    pred = predict_model(model, pairs, method)
    used: dict[str, dict[str, float | None]] = {}
    for key in mapping:
        edges = [e for e, k in enumerate(model.keys) if k == key]
        for i, d in enumerate(DIRECTIONS):
            vals = [profile.score(model.boundaries[e], d, pairs[e][i], score) for e in edges]
            used.setdefault(key, {})[d] = None if any(v is None for v in vals) else sum(vals)  # type: ignore[misc]
    stages = []
    for s in range(p):
        ranges = [model.ranges[k] for k in range(s, model.num_virtual, p)]
        fwd, bwd = model.stage_compute()[s]
        stages.append({"stage": s, "blocks": [list(r) for r in ranges], "fwd_s": fwd, "bwd_s": bwd,
                       "params_bytes": sum(profile.params(lo, hi) for lo, hi in ranges)})
    return Plan(profile.summary(), p, model.cuts, mapping, schedule, model.microbatches, model.cluster.to_dict(),
                pred, budget, objective, chunks, used, tuple(stages), score, tuple(notes))



def plan_from_assignment(profile: ModelProfile, assignment: Any, cluster: ClusterSpec | LinkSpec | str | float, *,
                         budget: float | None = None, objective: str = "min_time_under_budget",
                         speeds: Speeds | None = None, score: str = "sensitivity", notes: Sequence[str] = ()) -> Plan:
    """A :class:`Plan` from an :class:`~.assign.Assignment` (its cuts, codecs, schedule and micro-batches)."""
    pred = assignment.prediction
    return make_plan(profile, assignment.cuts, assignment.codecs_dict(), cluster, schedule=pred.schedule,
                     microbatches=pred.microbatches, chunks=assignment.chunks, budget=budget, objective=objective,
                     speeds=speeds, score=score, notes=(*notes, f"assignment method: {assignment.method}"))


__all__ = ["OBJECTIVES", "Plan", "make_plan", "plan_from_assignment"]
