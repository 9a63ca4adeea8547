"""Measured sensitivity of each edge: what happens to the model when *only* that edge is compressed.

:func:`edge_sensitivity` builds the partitions of ``(model, cuts)`` in-process (or takes prebuilt ones, e.g. a
trained chain), runs every calibration batch through them exactly, then, for each cut ``k`` and codec ``c``,
replaces the tensor crossing cut ``k`` by ``decode(encode(·))`` and re-runs only the stages after the cut;
everything else stays exact.

Forward direction (both modes):
    - ``mode="train"``: loss delta ``L(compressed) - L(exact)`` per batch (the last partition's ``loss``), its mean,
      standard error and mean absolute value over batches. The loss is evaluated on the model output upcast to
      float64 when the family's loss accepts that (else in the output's dtype), so the tiny deltas of fp16/bf16
      are not lost in float32 rounding of the loss itself.
    - both modes: output distance between the exact and the compressed model output: mean ``1 - cos`` over the
      output's last dimension (one vector per position/sample: per token for a language model's (B, T, V)
      logits, per sample for (B, D)) and, when the last dimension is > 1 (logits), mean
      ``KL(softmax(exact) || softmax(compressed))`` over the same vectors. ``mode="infer"`` needs no labels.

Backward direction (``mode="train"``, ``backward=True``): the gradient crossing cut ``k`` (the one the stage
after the cut sends back) is replaced by ``decode(encode(g))`` and back-propagated exactly through stages
``0..k``; the relative error ``||∇θ̂ - ∇θ|| / ||∇θ||`` over all parameters of those stages is reported per
batch, with its mean and standard error. Parameter ``.grad`` fields are never touched
(``torch.autograd.grad`` with a retained graph).

Everything runs with the partitions in eval mode (dropout off, restored afterwards) so exact and compressed runs
differ only by the codec. A reconstruction bitwise equal to the input (``fp32``, ``raw``) reuses the exact run,
so its deltas are exactly 0. Stateful specs use a fresh state per call (see :mod:`._codec`); randomized codecs
draw from a generator seeded by ``(seed, batch index)``, as :class:`~layeredge_dist.measure.proxy.ProxyAccumulator`
does for its ``i``-th call.

Cost, with ``S`` stages, ``C`` codecs, ``B`` batches and measured cuts ``K`` (stage-level passes; a stage pass
costs about ``1/S`` of a model pass for even cuts):
    - forward: ``B * (S + C * sum_{k in K} (S - 1 - k))`` stage forwards (one exact pass, then the stages after
      each cut per codec), i.e. ``B * (1 + C * |K| / 2)`` model forwards for evenly spread cuts;
    - backward (train mode): another ``B * S`` stage forwards with autograd, ``B * S`` stage backwards for the
      exact gradients, and ``B * C * sum_{k in K} (k + 1)`` stage backwards for the compressed gradients.
Here ``C`` counts only the codecs whose reconstruction differs from their input (``fp32`` costs no pass). The
counts actually spent are in :attr:`SensitivityTable.cost`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from ..model.chain import stage_forward
from ..model.partition import Partition, build_partition
from ..model.spec import ModelSpec, partition_specs
from ._codec import call_seed, load_codec, roundtrip

Batch = tuple[torch.Tensor, Mapping[str, torch.Tensor]]
MODES = ("train", "infer")


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (NaN with fewer than 2 values)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    m = sum(values) / n
    if n < 2:
        return m, math.nan
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)


@dataclass(frozen=True)
class EdgeSensitivity:
    """Sensitivity of one (cut, codec) pair over the calibration batches. ``None``: not measured in this mode.

    Attributes:
        cut: index into ``cuts`` (the edge from stage ``cut`` to stage ``cut + 1``).
        block: the block index at which that cut lies (``cuts[cut]``).
        codec: the codec spec as given.
        bits_per_element: exact payload bits per element of the forward encodings (mean over batches).
        loss_delta_mean / loss_delta_stderr: mean and standard error over batches of ``L(compressed) - L(exact)``.
        loss_delta_abs_mean: mean over batches of ``|L(compressed) - L(exact)|``.
        loss_deltas: the per-batch loss deltas.
        cos_dist_mean / cos_dist_stderr: ``1 - cos`` between exact and compressed outputs (see module docstring).
        kl_mean / kl_stderr: ``KL(softmax(exact) || softmax(compressed))``; None when outputs are not logits.
        grad_bits_per_element: exact payload bits per element of the gradient encodings.
        grad_rel_error_mean / grad_rel_error_stderr: relative error of the parameter gradients of stages
            ``0..cut`` when the gradient crossing the cut is compressed.
        num_batches: calibration batches used.
    """

    cut: int
    block: int
    codec: str
    bits_per_element: float
    loss_delta_mean: float | None
    loss_delta_stderr: float | None
    loss_delta_abs_mean: float | None
    loss_deltas: tuple[float, ...] | None
    cos_dist_mean: float
    cos_dist_stderr: float
    kl_mean: float | None
    kl_stderr: float | None
    grad_bits_per_element: float | None
    grad_rel_error_mean: float | None
    grad_rel_error_stderr: float | None
    num_batches: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (NaN becomes None, tuples become lists)."""
        return {k: _json_value(v) for k, v in self.__dict__.items()}


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, tuple):
        return [_json_value(x) for x in v]
    return v


@dataclass(frozen=True)
class SensitivityCost:
    """Work spent: stage-level forward passes (no grad and with autograd) and backward passes."""

    stage_forwards: int = 0
    stage_forwards_autograd: int = 0
    stage_backwards: int = 0


@dataclass(frozen=True)
class SensitivityTable:
    """Result of :func:`edge_sensitivity`: one :class:`EdgeSensitivity` per (cut index, codec).

    ``exact_loss`` is the mean exact loss over batches (None in infer mode).
    """

    mode: str
    cuts: tuple[int, ...]
    codecs: tuple[str, ...]
    cut_indices: tuple[int, ...]
    exact_loss: float | None
    exact_loss_stderr: float | None
    num_batches: int
    entries: Mapping[tuple[int, str], EdgeSensitivity] = field(default_factory=dict)
    cost: SensitivityCost = field(default_factory=SensitivityCost)

    def get(self, cut: int, codec: str) -> EdgeSensitivity:
        """The entry of cut index ``cut`` and spec ``codec``; KeyError naming what exists otherwise."""
        try:
            return self.entries[(cut, codec)]
        except KeyError:
            raise KeyError(f"no entry for cut {cut}, codec {codec!r}; have cuts {self.cut_indices}, "
                           f"codecs {self.codecs}") from None

    def rows(self) -> list[EdgeSensitivity]:
        """All entries, ordered by cut index then by the order the codecs were given."""
        return [self.entries[(k, c)] for k in self.cut_indices for c in self.codecs]

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict."""
        return {
            "mode": self.mode, "cuts": list(self.cuts), "codecs": list(self.codecs),
            "cut_indices": list(self.cut_indices), "exact_loss": _json_value(self.exact_loss),
            "exact_loss_stderr": _json_value(self.exact_loss_stderr), "num_batches": self.num_batches,
            "cost": dict(self.cost.__dict__), "rows": [r.to_dict() for r in self.rows()],
        }


def output_distance(exact: torch.Tensor, other: torch.Tensor) -> tuple[float, float | None]:
    """``(mean 1 - cos, mean KL(softmax(exact) || softmax(other)) or None)`` over the outputs' last dimension.

    Vectors are taken along the last dimension (a 0-d or 1-d output is one vector); KL only when that dimension
    has more than one element. Computed in float64.
    """
    if tuple(exact.shape) != tuple(other.shape):
        raise ValueError(f"output shapes differ: {tuple(exact.shape)} vs {tuple(other.shape)}")
    e = exact.detach().to(torch.float64)
    o = other.detach().to(torch.float64)
    if e.dim() <= 1:
        e, o = e.reshape(1, -1), o.reshape(1, -1)
    e = e.reshape(-1, e.shape[-1])
    o = o.reshape(-1, o.shape[-1])
    cos = F.cosine_similarity(e, o, dim=-1, eps=1e-30)  # (N,)
    cos_dist = float((1.0 - cos).mean())
    kl = None
    if _has_logits(exact):
        lp = F.log_softmax(e, dim=-1)
        lq = F.log_softmax(o, dim=-1)
        kl = float((lp.exp() * (lp - lq)).sum(dim=-1).mean())
    return cos_dist, kl


def _precise_loss(part: Partition, out: torch.Tensor, side: Mapping[str, torch.Tensor],
                  wide: bool) -> tuple[float, bool]:
    """``(loss, whether it was computed in float64)``: with ``wide``, the loss of the output upcast to float64
    when the family's loss accepts it (so loss deltas below float32's resolution of the loss are resolved),
    else in the output's own dtype."""
    with torch.no_grad():
        if wide and out.is_floating_point() and out.dtype != torch.float64:
            try:
                return float(part.loss(out.to(torch.float64), side)), True
            except (RuntimeError, TypeError, ValueError):
                pass
        return float(part.loss(out, side)), wide and out.dtype == torch.float64


def _has_logits(out: torch.Tensor) -> bool:
    """Whether :func:`output_distance` reports a KL for outputs shaped like ``out``."""
    return (out.numel() if out.dim() <= 1 else out.shape[-1]) > 1


def _prepare_parts(model: ModelSpec, cuts: tuple[int, ...], parts: Sequence[Partition] | None,
                   states: Sequence[Mapping[str, torch.Tensor] | None] | None) -> list[Partition]:
    if parts is not None:
        if states is not None:
            raise ValueError("pass either parts or states, not both")
        parts = list(parts)
        if len(parts) != len(cuts) + 1:
            raise ValueError(f"{len(parts)} partitions given for cuts {cuts} ({len(cuts) + 1} stages)")
        for s, part in enumerate(parts):
            if part.spec.cuts != cuts or part.spec.stage != s or part.spec.model != model:
                raise ValueError(f"partition {s} was built for stage {part.spec.stage} of cuts {part.spec.cuts} "
                                 f"of {part.spec.model.family}, not stage {s} of cuts {cuts} of {model.family}")
        return parts
    specs = partition_specs(model, cuts)
    if states is not None and len(states) != len(specs):
        raise ValueError(f"{len(states)} state dicts given for {len(specs)} stages")
    return [build_partition(spec, None if states is None else states[s]) for s, spec in enumerate(specs)]


def _grad_inputs(part: Partition, leaf: torch.Tensor | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    params = [p for p in part.parameters() if p.requires_grad]
    return params, params + ([leaf] if leaf is not None else [])


def _stage_grads(out: torch.Tensor, inputs: list[torch.Tensor], grad_out: torch.Tensor | None,
                 n_params: int) -> tuple[list[torch.Tensor | None], torch.Tensor | None]:
    """Gradients of ``out`` (given its incoming gradient) w.r.t. a stage's parameters and its input leaf."""
    if not inputs:
        return [], None
    grads = torch.autograd.grad(out, inputs, grad_outputs=grad_out, retain_graph=True, allow_unused=True)
    pg = list(grads[:n_params])
    leaf_g = grads[n_params] if len(grads) > n_params else None
    return pg, leaf_g


def _sq_norm(ts: Sequence[torch.Tensor | None]) -> float:
    return sum(float(t.detach().to(torch.float64).pow(2).sum()) for t in ts if t is not None)


def _sq_diff(a: Sequence[torch.Tensor | None], b: Sequence[torch.Tensor | None]) -> float:
    total = 0.0
    for x, y in zip(a, b):
        if x is None and y is None:
            continue
        xd = torch.zeros(()) if x is None else x.detach().to(torch.float64)
        yd = torch.zeros(()) if y is None else y.detach().to(torch.float64)
        total += float((xd - yd).pow(2).sum())
    return total


def edge_sensitivity(
    model: ModelSpec,
    cuts: Sequence[int],
    batches: Sequence[Batch],
    codecs: Sequence[str],
    mode: str = "train",
    *,
    cut_indices: Sequence[int] | None = None,
    backward: bool = True,
    parts: Sequence[Partition] | None = None,
    states: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
    seed: int = 0,
) -> SensitivityTable:
    """Measure the sensitivity of every (cut, codec) pair; see the module docstring for definitions and cost.

    Args:
        model, cuts: the model and its cut points (block indices, as in :class:`~layeredge_dist.model.PartitionSpec`).
        batches: calibration batches ``(inputs, side inputs)``, each run as one micro-batch.
        codecs: codec spec strings (``parse_any`` syntax); duplicates raise ValueError.
        mode: ``"train"`` (loss deltas, output distances and, with ``backward``, gradient errors; needs the side
            inputs the loss reads) or ``"infer"`` (output distances only).
        cut_indices: which cuts to measure (indices into ``cuts``); all by default.
        backward: in train mode, also measure the backward direction.
        parts: prebuilt partitions of exactly ``(model, cuts)`` (e.g. after training); otherwise they are built
            with :func:`~layeredge_dist.model.build_partition`, from ``states`` (one state dict or None per
            stage) when given.
        seed: seeds randomized codecs (per batch, see :func:`._codec.call_seed`).

    Raises ValueError for a bad mode, cut index, empty batches or mismatched partitions; CodecError for a bad
    spec.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    cuts = tuple(int(c) for c in cuts)
    if not cuts:
        raise ValueError("a model with no cuts has no edge to measure")
    batches = list(batches)
    if not batches:
        raise ValueError("need at least one calibration batch")
    specs = list(codecs)
    if len(set(specs)) != len(specs):
        raise ValueError(f"duplicate codec specs in {specs}")
    codec_objs = {s: load_codec(s) for s in specs}
    ks = tuple(range(len(cuts))) if cut_indices is None else tuple(int(k) for k in cut_indices)
    for k in ks:
        if not 0 <= k < len(cuts):
            raise ValueError(f"cut index {k} out of range for cuts {cuts}")
    if len(set(ks)) != len(ks):
        raise ValueError(f"duplicate cut indices in {ks}")
    chain = _prepare_parts(model, cuts, parts, states)
    n_stages = len(chain)
    train = mode == "train"
    do_backward = train and backward

    per: dict[tuple[int, str], dict[str, list[float]]] = {
        (k, s): {"bits": [], "loss": [], "cos": [], "kl": [], "gbits": [], "grad": []} for k in ks for s in specs
    }
    exact_losses: list[float] = []
    fw = fw_ag = bw = 0
    modes = [p.training for p in chain]
    try:
        for p in chain:
            p.eval()
        for bi, (x, side) in enumerate(batches):
            side = dict(side)
            # exact forward, no graph: boundaries and reference output
            h = x
            bounds: list[torch.Tensor] = []
            for s, part in enumerate(chain):
                h, _ = stage_forward(part, h, side, train=False)
                fw += 1
                if s < n_stages - 1:
                    bounds.append(h)
            out_exact = h
            loss_exact, wide = _precise_loss(chain[-1], out_exact, side, True) if train else (math.nan, False)
            exact_losses.append(loss_exact)
            # forward direction
            for k in ks:
                a = bounds[k]
                for spec in specs:
                    rec = per[(k, spec)]
                    a_hat, bits = roundtrip(codec_objs[spec], a, seed=call_seed(seed, bi, "a"))
                    rec["bits"].append(bits)
                    if torch.equal(a_hat, a):
                        out_c = out_exact
                    else:
                        hc = a_hat
                        for part in chain[k + 1:]:
                            hc, _ = stage_forward(part, hc, side, train=False)
                            fw += 1
                        out_c = hc
                    if out_c is out_exact:
                        rec["cos"].append(0.0)
                        if _has_logits(out_exact):
                            rec["kl"].append(0.0)
                        if train:
                            rec["loss"].append(0.0)
                        continue
                    cos_d, kl = output_distance(out_exact, out_c)
                    rec["cos"].append(cos_d)
                    if kl is not None:
                        rec["kl"].append(kl)
                    if train:
                        rec["loss"].append(_precise_loss(chain[-1], out_c, side, wide)[0] - loss_exact)
            if not do_backward:
                continue
            # backward direction: forward with autograd, exact backward, then compressed gradient per cut/codec
            leaves: list[torch.Tensor | None] = []
            outs: list[torch.Tensor] = []
            h = x
            with torch.enable_grad():
                for s, part in enumerate(chain):
                    leaf = h.detach().requires_grad_(True) if h.is_floating_point() else None
                    o = part(leaf if leaf is not None else h, side)
                    fw_ag += 1
                    leaves.append(leaf)
                    if s == n_stages - 1:
                        o = part.loss(o, side)
                    outs.append(o)
                    h = o.detach()
                inputs = [_grad_inputs(part, leaves[s]) for s, part in enumerate(chain)]
                exact_pg: list[list[torch.Tensor | None]] = [[] for _ in chain]
                cut_grads: list[torch.Tensor | None] = [None] * (n_stages - 1)
                g: torch.Tensor | None = None
                for s in reversed(range(n_stages)):
                    params, ins = inputs[s]
                    exact_pg[s], g = _stage_grads(outs[s], ins, g, len(params))
                    bw += 1
                    if s > 0:
                        if g is None:
                            raise RuntimeError(f"stage {s} takes a non-float input; no gradient crosses cut {s - 1}")
                        cut_grads[s - 1] = g
                for k in ks:
                    gk = cut_grads[k]
                    assert gk is not None
                    ref = [t for s in range(k + 1) for t in exact_pg[s]]
                    ref_norm = math.sqrt(_sq_norm(ref))
                    for spec in specs:
                        rec = per[(k, spec)]
                        g_hat, gbits = roundtrip(codec_objs[spec], gk, seed=call_seed(seed, bi, "g"))
                        rec["gbits"].append(gbits)
                        if torch.equal(g_hat, gk):
                            rec["grad"].append(0.0)
                            continue
                        comp: list[torch.Tensor | None] = []
                        gc: torch.Tensor | None = g_hat
                        for s in reversed(range(k + 1)):
                            params, ins = inputs[s]
                            pg, gc = _stage_grads(outs[s], ins, gc, len(params))
                            bw += 1
                            comp = pg + comp
                        err = math.sqrt(_sq_diff(comp, ref))
                        rec["grad"].append(err / ref_norm if ref_norm > 0 else (0.0 if err == 0 else math.inf))
            del outs, leaves
    finally:
        for p, m in zip(chain, modes):
            p.train(m)

    def opt(vals: list[float]) -> tuple[float | None, float | None]:
        return _mean_se(vals) if vals else (None, None)

    entries: dict[tuple[int, str], EdgeSensitivity] = {}
    for (k, spec), rec in per.items():
        loss_m, loss_se = opt(rec["loss"])
        cos_m, cos_se = _mean_se(rec["cos"])
        kl_m, kl_se = opt(rec["kl"])
        g_m, g_se = opt(rec["grad"])
        entries[(k, spec)] = EdgeSensitivity(
            cut=k, block=cuts[k], codec=spec,
            bits_per_element=sum(rec["bits"]) / len(rec["bits"]),
            loss_delta_mean=loss_m, loss_delta_stderr=loss_se,
            loss_delta_abs_mean=(sum(abs(v) for v in rec["loss"]) / len(rec["loss"])) if rec["loss"] else None,
            loss_deltas=tuple(rec["loss"]) if train else None,
            cos_dist_mean=cos_m, cos_dist_stderr=cos_se, kl_mean=kl_m, kl_stderr=kl_se,
            grad_bits_per_element=(sum(rec["gbits"]) / len(rec["gbits"])) if rec["gbits"] else None,
            grad_rel_error_mean=g_m, grad_rel_error_stderr=g_se,
            num_batches=len(batches),
        )
    exact_m, exact_se = _mean_se(exact_losses) if train else (None, None)
    return SensitivityTable(
        mode=mode, cuts=cuts, codecs=tuple(specs), cut_indices=ks, exact_loss=exact_m, exact_loss_stderr=exact_se,
        num_batches=len(batches), entries=entries,
        cost=SensitivityCost(stage_forwards=fw, stage_forwards_autograd=fw_ag, stage_backwards=bw),
    )
