"""Measure the planner's :class:`~layeredge_dist.plan.ModelProfile` of a configured model, in this process.

:func:`measure_profile` (no Ray) cuts the model at EVERY block boundary (one partition per block: the pre part
(embeddings) folded into block 0, the post part (head) and the loss into the last block, as
:mod:`layeredge_dist.plan.profile` defines), trains the chain a few steps with the run's optimizer and
micro-batching (as :func:`layeredge_dist.pipeline.profile.calibrate` does), and then measures:

- per block: forward and backward seconds per micro-batch (``data.batch_size / pipeline.microbatches``
  samples), each the median over ``reps`` timed repetitions after one warm-up, exactly as a stage runs a
  block (:func:`~layeredge_dist.model.stage_forward` / :func:`~layeredge_dist.model.stage_backward`, the last
  block including the loss), with ONE torch thread, like a stage actor with ``num_cpus=1``; and its parameter
  bytes;
- per boundary: the activation elements per micro-batch crossing it (the gradient crossing back has the same
  shape);
- per boundary, direction and codec, on ``calib_batches`` held-out batches: the measured sensitivity
  (:func:`~layeredge_dist.measure.edge_sensitivity`): forward = mean over batches of ``|L(compressed) -
  L(exact)|`` in nats when only that boundary's activation is compressed; backward = the relative error of the
  upstream parameter gradients when only that boundary's gradient is compressed; and the online proxy
  (:func:`~layeredge_dist.measure.chain_proxies`): forward = mean ``|sum g * (a_hat - a)|`` (first-order loss
  change, nats), backward = ``sqrt(rel_mse)`` of the gradient tensor itself (a relative error, like the
  measurement).

:func:`measure` returns the profile with extras the simulator benchmark needs (optimizer seconds per block),
:func:`measure_speeds` the encode / decode speeds of codecs on tensors of a given size here (1 thread), and
:func:`scale_profile` builds hypothetical larger models from a measured profile for what-if planning.

Units: seconds, bytes, elements, bytes per second.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch

from layeredge_dist.config import RunConfig
from layeredge_dist.measure import chain_proxies, edge_sensitivity
from layeredge_dist.measure.trial import finite_or_none
from layeredge_dist.model import (Partition, build_partition, family_for, partition_specs, split_batch,
                                  stage_backward, stage_forward, train_chain)
from layeredge_dist.plan import BlockCost, ModelProfile
from layeredge_dist.plan.codec_costs import canonical_spec, is_lossless

#: Codecs measured when none are given (the plan command's default candidates).
DEFAULT_CODECS: tuple[str, ...] = ("fp16", "bf16", "int8", "int4", "int2")
#: Score of a codec whose trial diverged (nats; the profile's tables hold finite numbers only).
DIVERGED_GAP = 1e3
#: Held-out batches that score each training trial (calibration and plan verification).
TRIAL_BATCHES = 8
#: Timed repetitions per block (after one warm-up); the median is kept.
DEFAULT_REPS = 5


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (None: unchanged), restoring the previous count."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Measurement:
    """What :func:`measure` found: the profile plus figures the profile format has no room for.

    Attributes:
        profile: the planner's cost model (see the module docstring).
        opt_s: optimizer step seconds per block (one step of the run's optimizer over that block's parameters,
            median over repetitions, 1 thread); a stage's optimizer time is the sum over its blocks.
        train_losses: the losses of the in-process training steps before measuring.
        exact_loss: the mean exact loss over the calibration batches.
        seconds: wall seconds per phase (``build``, ``train``, ``timing``, ``sensitivity``, ``proxy``, ``total``,
            ``trial``).
        trial: the :class:`~layeredge_dist.measure.trial.TrialResult` when the scores were calibrated by
            training (``trial_steps > 0``), else None.
        edge_width: the last dimension of the first boundary's activation (the features of a row, e.g.
            ``d_model``), for :func:`measure_speeds`; None when that activation has fewer than 2 dims.
    """

    profile: ModelProfile
    opt_s: tuple[float, ...]
    train_losses: tuple[float, ...]
    exact_loss: float | None
    seconds: dict[str, float]
    trial: Any = None
    edge_width: int | None = None


def block_partitions(cfg: RunConfig) -> tuple[Any, tuple[int, ...], list[Partition]]:
    """``(ModelSpec, cuts, partitions)`` of the configured model cut at every block boundary (one partition per
    block). ValueError for a model with a single block (nothing to cut)."""
    from . import setup

    model = setup.model_spec(cfg)
    n = family_for(model.family, model.config).num_blocks
    if n < 2:
        raise ValueError(f"{model.family} has {n} block(s): a profile needs at least 2 blocks to have a boundary")
    cuts = tuple(range(1, n))
    return model, cuts, [build_partition(p) for p in partition_specs(model, cuts)]


def train_parts(parts: Sequence[Partition], cfg: RunConfig, steps: int) -> list[float]:
    """Train ``parts`` ``steps`` optimizer steps as the pipeline would: the workload's batch of step ``k`` split into
    ``pipeline.microbatches`` micro-batches through :func:`~layeredge_dist.model.train_chain`, then one step of
    the run's optimizer. Returns the losses. ValueError for ``steps < 0``."""
    from . import setup

    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    params = [p for part in parts for p in part.parameters() if p.requires_grad]
    if steps == 0 or not params:
        return []
    base = setup.stage_spec(cfg)
    workload = setup.workload(cfg)
    opt = base.optimizer.build(params)
    losses = []
    modes = [part.training for part in parts]
    try:
        for part in parts:
            part.train()
        for step in range(steps):
            xs, sides = split_batch(workload.batch(step), base.microbatches)
            opt.zero_grad(set_to_none=True)
            losses.append(train_chain(parts, xs, sides).loss)
            opt.step()
    finally:
        opt.zero_grad(set_to_none=True)
        for part, mode in zip(parts, modes):
            part.train(mode)
    return losses


def time_blocks(parts: Sequence[Partition], x: torch.Tensor, side: dict[str, torch.Tensor], loss_scale: float,
                reps: int = DEFAULT_REPS) -> tuple[list[float], list[float], list[int]]:
    """Per partition (block): median forward and backward seconds of one micro-batch ``(x, side)`` over ``reps``
    repetitions after one warm-up, run as a stage runs it (train mode); and the elements of the tensor each
    partition but the last sends. Parameter gradients are dropped afterwards."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    n = len(parts)
    fwd: list[list[float]] = [[] for _ in range(n)]
    bwd: list[list[float]] = [[] for _ in range(n)]
    elements = [0] * (n - 1)
    params = [p for part in parts for p in part.parameters()]
    modes = [part.training for part in parts]
    try:
        for part in parts:
            part.train()
        for rep in range(reps + 1):
            h = x
            saved = []
            for s, part in enumerate(parts):
                t0 = time.perf_counter()
                h, state = stage_forward(part, h, side, train=True, loss_scale=loss_scale)
                dt = time.perf_counter() - t0
                saved.append(state)
                if rep:
                    fwd[s].append(dt)
                if s < n - 1:
                    elements[s] = h.numel()
            g: torch.Tensor | None = None
            for s in reversed(range(n)):
                t0 = time.perf_counter()
                g = stage_backward(saved[s], g)
                dt = time.perf_counter() - t0
                if rep:
                    bwd[s].append(dt)
            del saved
    finally:
        for p in params:
            p.grad = None
        for part, mode in zip(parts, modes):
            part.train(mode)
    return [statistics.median(t) for t in fwd], [statistics.median(t) for t in bwd], elements


def time_optimizer(parts: Sequence[Partition], cfg: RunConfig, reps: int = DEFAULT_REPS) -> list[float]:
    """Per partition: median seconds of one step of the run's optimizer over its parameters (random gradients,
    after one warm-up step; the weights are restored afterwards)."""
    from . import setup

    spec = setup.stage_spec(cfg)
    out = []
    for part in parts:
        params = [p for p in part.parameters() if p.requires_grad]
        if not params:
            out.append(0.0)
            continue
        backup = [p.detach().clone() for p in params]
        opt = spec.optimizer.build(params)
        times = []
        try:
            for rep in range(reps + 1):
                for p in params:
                    p.grad = torch.randn_like(p) * 1e-3
                t0 = time.perf_counter()
                opt.step()
                if rep:
                    times.append(time.perf_counter() - t0)
        finally:
            with torch.no_grad():
                for p, b in zip(params, backup):
                    p.copy_(b)
                    p.grad = None
        out.append(statistics.median(times))
    return out


def _param_bytes(part: Partition) -> int:
    seen: set[int] = set()
    total = 0
    for p in part.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def measure(cfg: RunConfig, calib_batches: int = 2, calib_steps: int = 20,
            codecs: Sequence[str] = DEFAULT_CODECS, *, reps: int = DEFAULT_REPS, threads: int | None = 1,
            sensitivity: bool = True, proxies: bool = True, optimizer: bool = False, trial_steps: int = 0,
            trial_batches: int = TRIAL_BATCHES, directions: Mapping[str, Sequence[str]] | None = None,
            log: Callable[[str], None] = lambda _t: None) -> Measurement:
    """Measure the profile of ``cfg``'s model (see the module docstring) and, with ``optimizer``, the optimizer
    seconds per block.

    Args:
        cfg: the run (model, micro-batches, batch shape, optimizer).
        calib_batches: held-out calibration batches for sensitivity and proxy (>= 1).
        calib_steps: in-process training steps before measuring (>= 0; 0 keeps the seeded / loaded weights).
        codecs: codec specs to score at every boundary (lossless ones score 0 and are skipped).
        reps: timed repetitions per block.
        threads: torch threads for everything here (1 = like a stage actor, and much faster than 2 threads on a
            loaded 2-core machine; None = unchanged).
        sensitivity, proxies: whether to fill the two score tables.
        optimizer: also time the run's optimizer per block (``Measurement.opt_s``; zeros otherwise).
        trial_steps: > 0 calibrates the sensitivity table by training (:func:`calibrate_by_trial`): both
            directions' scores become validation-loss gaps in nats after that many steps with the codec on the
            run's cuts; ``trial_batches`` held-out batches score them. 0 keeps the one-shot scores.
        directions: which of ``codecs`` each direction may use, e.g. ``{"forward": [...], "backward": [...]}``
            (low-bit gradients need error feedback to train); the other pairs are left out of the sensitivity
            table, which the planner reads as "not allowed" under a budget. None: every codec in both.
        log: progress lines (the trials take minutes).

    Raises ValueError for bad counts, duplicate codecs or a one-block model; CodecError for an unknown codec.
    """
    if calib_batches < 1:
        raise ValueError(f"need at least one calibration batch, got {calib_batches}")
    specs = [canonical_spec(c) for c in codecs]
    if len(set(specs)) != len(specs):
        raise ValueError(f"duplicate codec specs in {list(codecs)}")
    lossy = [s for s in specs if not is_lossless(s)]
    if trial_steps < 0 or trial_batches < 1:
        raise ValueError(f"need trial_steps >= 0 and trial_batches >= 1, got {trial_steps}, {trial_batches}")
    with torch_threads(threads):
        meas = _measure(cfg, calib_batches, calib_steps, lossy, reps, sensitivity, proxies, optimizer)
        allowed = {d: [canonical_spec(c) for c in (directions or {}).get(d, specs) if canonical_spec(c) in lossy]
                   for d in ("forward", "backward")}
        if trial_steps and sensitivity and lossy:
            meas = calibrate_by_trial(meas, cfg, allowed, calib_steps, trial_steps, trial_batches, log)
        elif directions is not None:
            meas = replace(meas, profile=meas.profile.with_scores(_restrict(meas.profile.sensitivity, allowed)))
    return meas


def _restrict(table: Mapping[int, Mapping[str, Mapping[str, float]]],
              allowed: Mapping[str, Sequence[str]]) -> dict[int, dict[str, dict[str, float]]]:
    """``table`` with only the (direction, codec) pairs of ``allowed``."""
    return {k: {d: {c: v for c, v in per.items() if c in allowed.get(d, ())} for d, per in dirs.items()}
            for k, dirs in table.items()}


def calibrate_by_trial(meas: Measurement, cfg: RunConfig, specs: Sequence[str] | Mapping[str, Sequence[str]],
                       calib_steps: int, trial_steps: int, trial_batches: int,
                       log: Callable[[str], None] = lambda _t: None) -> Measurement:
    """``meas`` with its sensitivity table calibrated by short training runs (see
    :mod:`layeredge_dist.measure.trial`).

    The block chain is trained ``calib_steps`` steps as in :func:`measure` (same batches, so the same weights),
    then :func:`~layeredge_dist.measure.trial.trial_losses` trains ``trial_steps`` more steps (the workload's
    batches ``calib_steps + 1 ..``) with exact edges and with each codec in each direction on the run's cuts
    (``pipeline.cuts`` or even cuts). The validation-loss gap ``G(d, c)`` (nats, clipped at 0; ``inf`` when
    training diverged) replaces the one-shot scores: at every boundary ``k``, ``score(k) = oneshot(k) * G /
    sum(oneshot at the run's cuts)``, so the scores keep their relative shape over boundaries while a uniform
    assignment on the run's cuts sums to the measured gap (spread evenly when the one-shot sum is 0). The
    forward and backward scores then share one unit, validation-loss nats, and a budget is a loss gap.
    ``specs`` may map each direction to its own codecs; pairs not tried are left out of the new table (not
    allowed under a budget). ``Measurement.trial`` keeps the raw result.
    """
    from layeredge_dist.measure.trial import trial_losses

    from . import setup

    model, cuts, parts, make_optimizer, steps, val = _trial_inputs(cfg, calib_steps, trial_steps, trial_batches)
    run_cuts = setup.cuts(cfg, model)
    at = [c - 1 for c in run_cuts]  # boundary k lies after block k
    per_dir = {d: list(v) for d, v in specs.items()} if isinstance(specs, Mapping) else {
        d: list(specs) for d in ("forward", "backward")}
    log(f"trial calibration: {trial_steps} steps x {1 + sum(map(len, per_dir.values()))} runs on cuts "
        f"{list(run_cuts)} ...")
    t0 = time.perf_counter()
    trial = trial_losses(parts, make_optimizer, steps, val, per_dir, boundaries=at, seed=cfg.model.seed, progress=log)
    old = meas.profile.sensitivity
    new: dict[int, dict[str, dict[str, float]]] = {}
    for d, d_specs in per_dir.items():
        for spec in d_specs:
            gap = min(max(trial.gap(d, spec), 0.0), DIVERGED_GAP)
            one = [max(old.get(k, {}).get(d, {}).get(spec, 0.0), 0.0) for k in range(len(cuts))]
            total = sum(one[k] for k in at)
            for k in range(len(cuts)):
                v = gap * one[k] / total if total > 0 else gap / len(at)
                new.setdefault(k, {}).setdefault(d, {})[spec] = v
    seconds = dict(meas.seconds) | {"trial": time.perf_counter() - t0}
    return replace(meas, profile=replace(meas.profile, sensitivity=new), trial=trial, seconds=seconds)


def _trial_inputs(cfg: RunConfig, calib_steps: int, trial_steps: int, trial_batches: int) -> tuple[
        Any, tuple[int, ...], list[Partition], Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
        list[Any], list[Any]]:
    """What a trial trains: ``(model spec, every block boundary as cuts, the block partitions trained
    calib_steps steps as in measure(), an optimizer factory that continues the run's schedule from there, the
    micro-batches of the next trial_steps steps, trial_batches held-out batches as single micro-batches)``."""
    from . import setup

    model, cuts, parts = block_partitions(cfg)
    train_parts(parts, cfg, calib_steps)
    base = setup.stage_spec(cfg)
    workload = setup.workload(cfg)
    m = cfg.pipeline.microbatches
    steps = [split_batch(workload.batch(calib_steps + 1 + k), m) for k in range(trial_steps)]
    val = [(x[0], side[0]) for x, side in (split_batch(b, 1) for b in workload.val_batches(trial_batches))]
    # every trial continues the schedule where the calibration training left it
    return model, cuts, parts, functools.partial(base.optimizer.build, start_step=calib_steps), steps, val


def trial_verifier(cfg: RunConfig, calib_steps: int, trial_steps: int, trial_batches: int = TRIAL_BATCHES,
                   log: Callable[[str], None] = lambda _t: None, seeds: int = 1) -> Callable[[Sequence[Any]], Any]:
    """The ``verify`` argument of :func:`choose_verified_plan` for ``cfg``'s model: :func:`trial_plans` with
    these settings, announcing each call on ``log``."""
    def verify(plans: Sequence[Any]) -> Any:
        log(f"verifying {len(plans)} plan(s): {trial_steps} in-process training steps each (1 thread)"
            + (f", over {seeds} seeds" if seeds > 1 else "") + " ...")
        return trial_plans(cfg, plans, calib_steps, trial_steps, trial_batches, log=log, seeds=seeds)
    return verify


def trial_plans(cfg: RunConfig, plans: Sequence[Any], calib_steps: int, trial_steps: int, trial_batches: int,
                threads: int | None = 1, log: Callable[[str], None] = lambda _t: None, seeds: int = 1) -> Any:
    """Train ``cfg``'s model in this process with each :class:`~layeredge_dist.plan.Plan` of ``plans`` in place
    (its cuts, every edge's forward and backward codec at once) for ``trial_steps`` steps from the same point as
    :func:`calibrate_by_trial` (``calib_steps`` steps of exact training, the same batches after them), and once
    with exact edges; the :class:`~layeredge_dist.measure.trial.PlanTrialResult` (validation losses on
    ``trial_batches`` held-out batches; ``gap(i)`` in nats).

    With ``seeds`` > 1 all of that is repeated for each replicate ``k`` of :func:`layeredge_dist.config.reseeded`
    (other batches, initial weights and codec draws) and the result is the mean over seeds
    (:meth:`~layeredge_dist.measure.trial.PlanTrialResult.mean`): one short trial's gap is largely the draw of a
    chaotic run, and the mean of ``seeds`` paired gaps shrinks that noise by about ``sqrt(seeds)``.

    Cost: ``seeds x (1 + len(plans)) x trial_steps`` training steps of the whole model, plus ``seeds x
    calib_steps``. ValueError for ``trial_steps``, ``trial_batches`` or ``seeds`` < 1, an interleaved plan or a
    plan that cuts past the model's blocks; CodecError for a codec the trial cannot load."""
    from layeredge_dist.config import reseeded
    from layeredge_dist.measure.trial import PlanTrialResult, plan_losses

    if trial_steps < 1 or trial_batches < 1 or seeds < 1:
        raise ValueError(f"need trial_steps, trial_batches and seeds >= 1, got {trial_steps}, {trial_batches}, "
                         f"{seeds}")
    boundaries = [p.boundary_codecs() for p in plans]
    results = []
    with torch_threads(threads):
        for k in range(seeds):
            c = reseeded(cfg, k)
            if seeds > 1:
                log(f"trial seed {k + 1} of {seeds} (data.seed {c.data.seed}, model.seed {c.model.seed})")
            _, _, parts, make_optimizer, steps, val = _trial_inputs(c, calib_steps, trial_steps, trial_batches)
            results.append(plan_losses(parts, make_optimizer, steps, val, boundaries, seed=c.model.seed,
                                       progress=log))
    return PlanTrialResult.mean(results)


def _measure(cfg: RunConfig, calib_batches: int, calib_steps: int, lossy: list[str], reps: int, sensitivity: bool,
             proxies: bool, optimizer: bool) -> Measurement:
    from . import setup

    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    model, cuts, parts = block_partitions(cfg)
    seconds["build"] = time.perf_counter() - t_start
    t0 = time.perf_counter()
    losses = train_parts(parts, cfg, calib_steps)
    seconds["train"] = time.perf_counter() - t0

    m = cfg.pipeline.microbatches
    workload = setup.workload(cfg)
    xs, sides = split_batch(workload.batch(calib_steps), m)
    x_mb, side_mb = xs[0], sides[0]
    t0 = time.perf_counter()
    fwd, bwd, elements = time_blocks(parts, x_mb, side_mb, 1.0 / m, reps)
    with torch.no_grad():
        first = parts[0](x_mb, side_mb)  # the activation crossing the first boundary
    width = int(first.shape[-1]) if first.dim() >= 2 else None
    opt_s = time_optimizer(parts, cfg, reps) if optimizer else [0.0] * len(parts)
    seconds["timing"] = time.perf_counter() - t0

    sens: dict[int, dict[str, dict[str, float]]] = {}
    prox: dict[int, dict[str, dict[str, float]]] = {}
    exact_loss = None
    cal = workload.val_batches(calib_batches) if lossy and (sensitivity or proxies) else []
    t0 = time.perf_counter()
    if sensitivity and lossy:
        table = edge_sensitivity(model, cuts, cal, lossy, mode="train", parts=parts)
        exact_loss = table.exact_loss
        for k in range(len(cuts)):
            for spec in lossy:
                e = table.get(k, spec)
                if e.loss_delta_abs_mean is not None and math.isfinite(e.loss_delta_abs_mean):
                    sens.setdefault(k, {}).setdefault("forward", {})[spec] = float(e.loss_delta_abs_mean)
                if e.grad_rel_error_mean is not None and math.isfinite(e.grad_rel_error_mean):
                    sens.setdefault(k, {}).setdefault("backward", {})[spec] = float(e.grad_rel_error_mean)
    seconds["sensitivity"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if proxies and lossy:
        values = chain_proxies(parts, cal, lossy)
        for k, per in values.items():
            for spec, pv in per.items():
                if math.isfinite(pv.taylor_abs_mean):
                    prox.setdefault(k, {}).setdefault("forward", {})[spec] = float(pv.taylor_abs_mean)
                if math.isfinite(pv.rel_mse):
                    prox.setdefault(k, {}).setdefault("backward", {})[spec] = math.sqrt(max(pv.rel_mse, 0.0))
    seconds["proxy"] = time.perf_counter() - t0

    tokens = int(x_mb.numel()) if not x_mb.is_floating_point() and x_mb.dim() >= 1 else None
    blocks = tuple(BlockCost(f, b, _param_bytes(part)) for f, b, part in zip(fwd, bwd, parts))
    profile = ModelProfile(blocks, tuple(elements), None, sens, prox, micro_batches=m,
                           tokens_per_micro_batch=tokens or None, name=_name(cfg))
    seconds["total"] = time.perf_counter() - t_start
    return Measurement(profile, tuple(opt_s), tuple(losses), exact_loss, seconds, edge_width=width)


def _name(cfg: RunConfig) -> str:
    conf = dict(cfg.model.config)
    keys = [k for k in ("n_layer", "d_model", "num_hidden_layers", "hidden_size", "n_embd") if k in conf]
    detail = ", ".join(f"{k}={conf[k]}" for k in keys)
    return f"{cfg.model.family}" + (f" ({detail})" if detail else "")


def measure_profile(cfg: RunConfig, calib_batches: int = 2, calib_steps: int = 20,
                    codecs: Sequence[str] = DEFAULT_CODECS) -> ModelProfile:
    """The :class:`~layeredge_dist.plan.ModelProfile` of ``cfg``'s model measured here (see :func:`measure`)."""
    return measure(cfg, calib_batches, calib_steps, codecs).profile


def measure_speeds(specs: Sequence[str], numel: int, reps: int = 5, threads: int | None = 1,
                   seed: int = 0, width: int | None = None) -> dict[str, tuple[float, float]]:
    """``spec -> (encode_Bps, decode_Bps)`` of fp32 input, measured here on a ``numel``-element Gaussian tensor
    (median of ``reps`` after one warm-up, ``threads`` torch threads), for :func:`layeredge_dist.plan.predict`'s
    ``speeds``. fp32 / raw are timed as the copy they are; error feedback (``ef(...)``) is timed with its state as
    the stage runtime drives it (a fresh tensor each repetition); ``delta(...)`` is left out (its cost depends on
    the reference it keeps; the built-in estimate applies).

    With ``width`` (the features per row of the edge's tensors) dividing ``numel``, the tensor is shaped
    ``(numel / width, width)`` with correlated features (:func:`correlated_rows`), as activations are, so that a
    shape-aware codec (``klt:B``) is timed on its transform path rather than its fallback.
    """
    from layeredge_dist.codecs import Codec, parse_any
    from layeredge_dist.codecs.stateful import ErrorFeedback

    if numel < 1:
        raise ValueError(f"numel must be >= 1, got {numel}")
    g = torch.Generator().manual_seed(seed)
    if width is not None and width >= 1 and numel % width == 0 and numel // width >= 2:
        xs = [correlated_rows(numel // width, width, g) for _ in range(2)]  # (rows, width) each
    else:
        xs = [torch.randn(numel, generator=g) for _ in range(2)]  # (numel,) each; alternate so EF sees new input
    out: dict[str, tuple[float, float]] = {}
    with torch_threads(threads):
        for spec in dict.fromkeys(canonical_spec(s) for s in specs):
            codec = parse_any(spec)
            if isinstance(codec, ErrorFeedback):
                state = codec.new_state()
                encode: Callable[[torch.Tensor], Any] = lambda x, c=codec, st=state: c.encode(x, st)
            elif isinstance(codec, Codec):
                encode = codec.encode
            else:
                continue  # delta(...): the planner's built-in estimate stands
            lossless = is_lossless(spec)
            enc_t, dec_t = [], []
            for rep in range(reps + 1):
                x = xs[rep % 2]
                t0 = time.perf_counter()
                enc = None if lossless else encode(x)
                t1 = time.perf_counter()
                if enc is not None:
                    codec.decode(enc)
                else:
                    x.clone()
                t2 = time.perf_counter()
                if rep:
                    enc_t.append(t1 - t0 if enc is not None else (t2 - t1))
                    dec_t.append(t2 - t1)
            nbytes = numel * 4
            out[spec] = (nbytes / max(statistics.median(enc_t), 1e-9), nbytes / max(statistics.median(dec_t), 1e-9))
    return out


def correlated_rows(rows: int, width: int, generator: torch.Generator, decay: float = 0.85) -> torch.Tensor:
    """(rows, width) fp32 Gaussian rows whose covariance has eigenvalues ``decay**i`` in a random orthonormal basis,
    plus a common offset: a stand-in for activations (whose spectra decay, see :mod:`layeredge_dist.codecs.klt`)."""
    basis, _ = torch.linalg.qr(torch.randn(width, width, generator=generator))  # (width, width) orthonormal
    std = decay ** (torch.arange(width, dtype=torch.float32) / 2)  # (width,)
    return (torch.randn(rows, width, generator=generator) * std) @ basis.T + torch.randn(width, generator=generator)


# ---- hypothetical models ----------------------------------------------------------------------------------------


def _median_table(profile: ModelProfile, source: str) -> dict[str, dict[str, float]]:
    """Per direction and codec: the median over the profile's boundaries of the scores in ``source``."""
    acc: dict[str, dict[str, list[float]]] = {}
    for dirs in getattr(profile, source).values():
        for d, codecs in dirs.items():
            for spec, v in codecs.items():
                acc.setdefault(d, {}).setdefault(spec, []).append(v)
    return {d: {s: statistics.median(v) for s, v in c.items()} for d, c in acc.items()}


def scale_profile(profile: ModelProfile, n_blocks: int, mode: str = "repeat") -> ModelProfile:
    """A profile of ``n_blocks`` blocks built from a measured one, for what-if planning of clusters larger than the
    measured model allows.

    ``mode="repeat"``: the measured blocks tiled: block 0 and the last block (which carry the pre and post parts)
    stay at the ends; the interior is filled by cycling through the measured interior blocks (all measured blocks
    when there are fewer than 3), and boundary ``j`` takes the elements and scores of measured boundary
    ``j mod (n - 1)``. ``mode="uniform"``: identical copies of the median interior block, the pre / post extra
    cost (first / last block minus that median, at least 0) added to the ends, every boundary the median
    elements and the median score per direction and codec. ValueError for ``n_blocks < 2`` or an unknown mode.
    """
    if n_blocks < 2:
        raise ValueError(f"n_blocks must be >= 2, got {n_blocks}")
    if mode not in ("repeat", "uniform"):
        raise ValueError(f"mode must be 'repeat' or 'uniform', got {mode!r}")
    blocks = list(profile.blocks)
    n = len(blocks)
    inner = blocks[1:-1] if n >= 3 else blocks
    nb_old = profile.n_boundaries
    if mode == "uniform":
        med = BlockCost(statistics.median(b.fwd_s for b in inner), statistics.median(b.bwd_s for b in inner),
                        int(statistics.median(b.params_bytes for b in inner)))
        first, last = blocks[0], blocks[-1]

        def plus(extra: BlockCost) -> BlockCost:
            return BlockCost(med.fwd_s + max(extra.fwd_s - med.fwd_s, 0.0),
                             med.bwd_s + max(extra.bwd_s - med.bwd_s, 0.0),
                             med.params_bytes + max(extra.params_bytes - med.params_bytes, 0))

        new_blocks = [med] * n_blocks
        new_blocks[0] = plus(first)
        new_blocks[-1] = plus(last)
        elems = (int(statistics.median(profile.elements)),) * (n_blocks - 1)
        grads = (None if profile.grad_elements is None
                 else (int(statistics.median(profile.grad_elements)),) * (n_blocks - 1))
        tables = {}
        for source in ("sensitivity", "proxy"):
            med_t = _median_table(profile, source)
            tables[source] = {j: med_t for j in range(n_blocks - 1)} if med_t else {}
    else:
        new_blocks = [blocks[0]]
        for i in range(1, n_blocks - 1):
            new_blocks.append(inner[(i - 1) % len(inner)])
        new_blocks.append(blocks[-1])
        elems = tuple(profile.elements[j % nb_old] for j in range(n_blocks - 1))
        grads = (None if profile.grad_elements is None
                 else tuple(profile.grad_elements[j % nb_old] for j in range(n_blocks - 1)))
        tables = {}
        for source in ("sensitivity", "proxy"):
            table = getattr(profile, source)
            tables[source] = {j: table[j % nb_old] for j in range(n_blocks - 1) if (j % nb_old) in table}
    name = f"{profile.name} x{n_blocks} blocks ({mode})"
    return replace(profile, blocks=tuple(new_blocks), elements=elems, grad_elements=grads,
                   sensitivity=_plain(tables["sensitivity"]), proxy=_plain(tables["proxy"]), name=name)


def _plain(table: Any) -> dict[int, dict[str, dict[str, float]]]:
    return {int(b): {d: dict(c) for d, c in dirs.items()} for b, dirs in table.items()}




def what_if_blocks(profile: ModelProfile, nodes: int) -> int:
    """Blocks of the ``repeat`` what-if profile for ``nodes`` stages: the measured model tiled until every stage
    can hold at least one block (the measured block count times ``ceil(nodes / n_blocks)``)."""
    n = profile.n_blocks
    return n * max(1, math.ceil(nodes / n))


# ---- planning with baselines ------------------------------------------------------------------------------------

#: best_cuts costs O(blocks^2 x stages) per pass; plan_jointly runs it about ten times. Above this product the
#: planner keeps even cuts (what-if profiles with very many blocks).
JOINT_CUTS_LIMIT = 2_000_000


@dataclass(frozen=True)
class Baseline:
    """A uniform plan the chosen plan is compared with (every edge and direction one codec, cuts best for it)."""

    name: str
    codec: str
    cuts: tuple[int, ...]
    step_time_s: float
    bytes_per_step: int
    total_sensitivity: float | None

    def to_dict(self, plan: Any) -> dict[str, Any]:
        """JSON-compatible, with the chosen plan's speed-up and byte reduction against this baseline."""
        return {"codec": self.codec, "cuts": list(self.cuts), "step_time_s": self.step_time_s,
                "bytes_per_step": self.bytes_per_step, "total_sensitivity": self.total_sensitivity,
                "plan_speedup": self.step_time_s / plan.step_time_s if plan.step_time_s > 0 else None,
                "plan_bytes_ratio": (self.bytes_per_step / plan.prediction.bytes_per_step
                                     if plan.prediction.bytes_per_step > 0 else None)}


def _uniform_sens(profile: ModelProfile, cuts: Sequence[int], spec: str, score: str) -> float | None:
    total = 0.0
    for c in cuts:
        for d in ("forward", "backward"):
            v = profile.score(c - 1, d, spec, score)
            if v is None:
                return None
            total += max(v, 0.0)
    return total


def uniform_options(profile: ModelProfile, nodes: int, cluster: Any, specs: Sequence[str], *, schedule: str,
                    score: str = "sensitivity", speeds: Any = None, even: bool = False) -> list[Baseline]:
    """Every codec of ``specs`` (and fp32) used on every edge and direction, each with its best cuts (even cuts with
    ``even``): predicted step, bytes per step and total score (None when unmeasured at some cut)."""
    from layeredge_dist.plan import best_cuts, even_cuts, predict

    out = []
    for spec in dict.fromkeys(["fp32", *(canonical_spec(s) for s in specs)]):
        cuts = (even_cuts(profile.n_blocks, nodes) if even
                else best_cuts(profile, nodes, cluster, spec, speeds=speeds))
        pred = predict(profile, cuts, spec, cluster, schedule, speeds=speeds, method="fast" if nodes > 8 else "auto")
        out.append(Baseline(f"uniform:{spec}", spec, tuple(cuts), pred.step_time_s, pred.bytes_per_step,
                            _uniform_sens(profile, cuts, spec, score)))
    return out


def choose_plan(profile: ModelProfile, nodes: int, cluster: Any, candidates: Sequence[str], *,
                objective: str = "time", budget: float | None = None, time_budget: float | None = None,
                schedule: str = "1f1b", score: str = "sensitivity", speeds: Any = None,
                what_if: bool = False) -> tuple[Any, dict[str, Baseline]]:
    """The plan for ``nodes`` stages on ``cluster`` and its baselines ``{"fp32", "best_uniform"}``.

    ``objective="time"``: the fastest plan whose total score is within ``budget`` (None: no accuracy constraint)
    by :func:`~layeredge_dist.plan.plan_jointly` (cuts and codecs together; even cuts + codecs when the profile is
    too large for repeated cut searches); ``"loss"``: the least total score whose predicted step meets
    ``time_budget`` (:func:`~layeredge_dist.plan.min_loss_under_time` at the cuts of every uniform option and even
    cuts). The best uniform baseline is the fastest uniform codec within the budget (``time``) or the least
    sensitive uniform codec meeting the time (``loss``); when it beats the search it becomes the plan, so the plan
    is never worse than the baseline. Raises InfeasibleError when no plan meets ``time_budget``; ValueError for a
    bad objective or a negative budget.
    """
    from layeredge_dist.plan import InfeasibleError, even_cuts, make_plan, min_loss_under_time, min_time_under_budget
    from layeredge_dist.plan import plan_jointly

    if objective not in ("time", "loss"):
        raise ValueError(f"objective must be 'time' or 'loss', got {objective!r}")
    if budget is not None and not budget >= 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if objective == "loss" and time_budget is None:
        raise ValueError("objective 'loss' needs a time budget (seconds per step)")
    specs = list(dict.fromkeys(canonical_spec(c) for c in candidates))
    if not 1 <= nodes <= profile.n_blocks:
        raise ValueError(f"cannot cut {profile.n_blocks} blocks into {nodes} stages")
    kw: dict[str, Any] = dict(schedule=schedule, speeds=speeds, score=score)
    cheap_cuts = profile.n_blocks ** 2 * nodes <= JOINT_CUTS_LIMIT
    uniforms = uniform_options(profile, nodes, cluster, specs, schedule=schedule, score=score, speeds=speeds,
                               even=not cheap_cuts)
    fp32 = uniforms[0]
    tag = "what_if" if what_if else None
    polish = 300_000 if what_if or nodes > 16 else None
    extra: dict[str, Any] = {} if polish is None else {"polish_work": polish}

    def mk(cuts: Sequence[int], codecs: Any, obj: str, notes: Sequence[str]) -> Any:
        return make_plan(profile, cuts, codecs, cluster, schedule=schedule, budget=time_budget if obj ==
                         "min_loss_under_time" else budget, objective=tag or obj, speeds=speeds, score=score,
                         notes=notes)

    if objective == "time":
        ok = [u for u in uniforms if budget is None or (u.total_sensitivity is not None
                                                         and u.total_sensitivity <= budget * (1 + 1e-9))]
        best_u = min(ok, key=lambda u: (u.step_time_s, u.total_sensitivity or 0.0))
        if cheap_cuts and nodes > 1:
            plan = plan_jointly(profile, nodes, cluster, specs, budget, **kw)
            if what_if:
                plan = mk(plan.cuts, plan.codecs_dict(), "plan_jointly", plan.notes)
        else:
            cuts = even_cuts(profile.n_blocks, nodes)
            a = min_time_under_budget(profile, cuts, cluster, specs, budget, **kw, **extra)
            plan = mk(cuts, a.codecs_dict(), "min_time_under_budget", (f"even cuts ({a.method})",))
        if best_u.step_time_s < plan.step_time_s * (1 - 1e-12):
            plan = mk(best_u.cuts, best_u.codec, "plan_jointly",
                      (f"chosen: best uniform codec {best_u.codec} with its best cuts (faster than the search)",))
        return plan, {"fp32": fp32, "best_uniform": best_u}
    assert time_budget is not None
    fits = [u for u in uniforms if u.step_time_s <= time_budget * (1 + 1e-9) and u.total_sensitivity is not None]
    best_u = (min(fits, key=lambda u: (u.total_sensitivity, u.step_time_s)) if fits
              else min(uniforms, key=lambda u: u.step_time_s))
    best = None
    tried: set[tuple[int, ...]] = set()
    last_err: InfeasibleError | None = None
    for cuts in [tuple(u.cuts) for u in uniforms] + [even_cuts(profile.n_blocks, nodes)]:
        if cuts in tried:
            continue
        tried.add(cuts)
        try:
            a = min_loss_under_time(profile, cuts, cluster, specs, time_budget, **kw, **extra)
        except InfeasibleError as err:
            last_err = err
            continue
        if best is None or (a.total_sensitivity, a.step_time_s) < (best.total_sensitivity, best.step_time_s):
            best = a
    if best is None:
        fastest = min(uniforms, key=lambda u: u.step_time_s)
        raise InfeasibleError(f"no plan meets {time_budget:.6g} s per step; the fastest uniform codec "
                              f"({fastest.codec}) takes {fastest.step_time_s:.6g} s ({last_err})")
    plan = mk(best.cuts, best.codecs_dict(), "min_loss_under_time", (f"assignment method: {best.method}",))
    if fits and (best_u.total_sensitivity, best_u.step_time_s) < (plan.total_sensitivity, plan.step_time_s):
        plan = mk(best_u.cuts, best_u.codec, "min_loss_under_time",
                  (f"chosen: best uniform codec {best_u.codec} (less sensitive than the search)",))
    return plan, {"fp32": fp32, "best_uniform": best_u}


#: Budget multiples whose plans :func:`choose_verified_plan` trains side by side (1 = the plan of the budget itself).
VERIFY_FACTORS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
#: The negative control of a verification trial: a codec whose own cost is negligible (bf16: relative error ~4e-3).
VERIFY_CONTROL = "bf16"


@dataclass(frozen=True)
class Verification:
    """What :func:`choose_verified_plan` compared.

    Attributes:
        budget: the accuracy budget (nats) the trial gaps were held to.
        candidates: per distinct candidate plan ``{"factors": [budget multiples that gave it], "cuts",
            "codecs", "step_time_s" (predicted), "score" (the planner's additive score, nats), "trial_gap"
            (measured, nats; None when training diverged; over several seeds the mean, and "trial_gaps" each
            seed's)}``, in the order of the smallest factor.
        chosen: index into ``candidates``.
        reason: why that one.
        trial: the trial's plain data (:meth:`~layeredge_dist.measure.trial.PlanTrialResult.to_dict`; the
            controls' losses follow the candidates').
        controls: per distinct cuts of the candidates ``{"cuts", "codec", "trial_gap"}`` (and "trial_gaps" over
            several seeds): the control codec on every edge and direction, trained the same way.
        noise: how far the trial moves the loss for a perturbation that costs nothing by itself: the largest
            control gap in absolute value (nats; over several seeds ``|mean gap| + 2`` standard errors of the
            per-seed gaps; inf when a control diverged, 0 without controls).
    """

    budget: float
    candidates: tuple[Mapping[str, Any], ...]
    chosen: int
    reason: str
    trial: Mapping[str, Any]
    controls: tuple[Mapping[str, Any], ...] = ()
    noise: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible."""
        return {"budget": self.budget, "candidates": [dict(c) for c in self.candidates], "chosen": self.chosen,
                "reason": self.reason, "trial": dict(self.trial), "controls": [dict(c) for c in self.controls],
                "noise": finite_or_none(self.noise)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Verification:
        """The inverse of :meth:`to_dict` (KeyError for a missing field)."""
        noise = d.get("noise", 0.0)
        return cls(float(d["budget"]), tuple(d["candidates"]), int(d["chosen"]), str(d["reason"]), d["trial"],
                   tuple(d.get("controls", ())), math.inf if noise is None else float(noise))

    def lines(self) -> list[str]:
        """One line per candidate (``*`` = chosen) and control, and the reason, for progress output."""
        def gap(v: float | None) -> str:
            return "diverged" if v is None else f"{v:+.4f}"

        def trial(c: Mapping[str, Any]) -> str:
            seeds = c.get("trial_gaps")
            return f"trial gap {gap(c['trial_gap'])}" + (
                f" (mean of {len(seeds)} seeds: {', '.join(gap(v) for v in seeds)})" if seeds else "")

        out = []
        for i, c in enumerate(self.candidates):
            codecs = ", ".join(f"{e} {v.get('forward', 'fp32')} | {v.get('backward', 'fp32')}"
                               for e, v in c["codecs"].items())
            out.append(f"{'*' if i == self.chosen else ' '} budget x {','.join(f'{f:g}' for f in c['factors'])}: "
                       f"cuts {c['cuts']}, {codecs}; predicted {c['step_time_s']:.4g} s, additive score "
                       f"{c['score']:.4f}, {trial(c)}")
        out += [f"  control: cuts {c['cuts']}, {c['codec']} everywhere, {trial(c)}" for c in self.controls]
        return out + [f"chosen: {self.reason} (budget {self.budget:g} nats)"]


def _control_noise(gaps: Sequence[float]) -> float:
    """How far a control's trial moved the loss (nats): ``|mean| + 2 x standard error`` of its per-seed gaps
    (one seed: ``|gap|``; inf when any seed diverged)."""
    if not all(math.isfinite(g) for g in gaps):
        return math.inf
    se = statistics.stdev(gaps) / math.sqrt(len(gaps)) if len(gaps) > 1 else 0.0
    return abs(statistics.fmean(gaps)) + 2.0 * se


def choose_verified_plan(profile: ModelProfile, nodes: int, cluster: Any, candidates: Sequence[str], *,
                         budget: float, verify: Callable[[Sequence[Any]], Any],
                         factors: Sequence[float] = VERIFY_FACTORS, control: str | None = VERIFY_CONTROL,
                         schedule: str = "1f1b", score: str = "sensitivity",
                         speeds: Any = None) -> tuple[Any, dict[str, Baseline], Verification]:
    """The fastest plan whose *measured* joint trial gap fits ``budget``, among the plans the additive planner
    makes at ``budget x factors`` -- when the trial can resolve the budget at all.

    :func:`choose_plan` holds the *sum* of per-codec, per-direction trial gaps to the budget. Codec errors do not
    add up like that (measured on the demo: ``klt:3`` forward alone +0.056 nats after 60 trial steps,
    ``int4/rht/sr`` backward alone -0.006, the two together -0.090), so the sum can rule out a plan that trains
    as well as the one it keeps. Here :func:`choose_plan` runs at each budget multiple (tighter and looser
    plans), and ``verify`` trains every distinct plan with all its codecs in place (:func:`trial_plans`; it
    returns a :class:`~layeredge_dist.measure.trial.PlanTrialResult`), followed by a negative control per
    distinct cuts: ``control`` (bf16) on every edge and direction, a perturbation that costs nothing by itself.

    - If a control moves the loss by more than ``budget`` (in either direction; over several seeds, when its
      mean gap's magnitude plus two standard errors of its per-seed gaps exceeds ``budget``: a control whose
      seeds moved +0.06 and -0.06 has a mean near 0 but says the same), the trial's noise -- how much
      any perturbation shifts a short, chaotic training run -- exceeds what it is asked to resolve, and a
      fastest-that-fits choice would pick whichever aggressive candidate drew a lucky gap (measured on the demo
      with a 150-step recipe: bf16 +0.158, and the candidate that then won, int8 | int8, trained 13 % worse over
      the run). The additive plan (``budget x 1``) is kept.
    - Else the fastest predicted candidate whose gap is within ``budget`` (ties: the smaller gap); when none
      fits, the one with the smallest gap.

    ``control=None`` skips the control (noise 0). Returns ``(plan, baselines of choose_plan at budget x 1,
    Verification)``; the plan's ``budget`` is ``budget`` and a note records the trial. ValueError for a negative
    budget, or ``factors`` without 1 or with a non-positive entry.
    """
    import json

    from layeredge_dist.plan import make_plan

    if not budget >= 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if 1.0 not in factors or not all(f > 0 for f in factors):
        raise ValueError(f"factors must be positive and include 1, got {list(factors)}")
    plans: list[Any] = []
    sources: list[list[float]] = []
    seen: dict[tuple[Any, ...], int] = {}
    baselines: dict[str, Baseline] = {}
    additive = 0
    for f in sorted(set(factors)):
        plan, base = choose_plan(profile, nodes, cluster, candidates, budget=budget * f, schedule=schedule,
                                 score=score, speeds=speeds)
        key = (tuple(plan.cuts), json.dumps(plan.codecs_dict(), sort_keys=True))
        if key not in seen:
            seen[key] = len(plans)
            plans.append(plan)
            sources.append([])
        sources[seen[key]].append(f)
        if f == 1.0:
            baselines, additive = base, seen[key]
    control_cuts = list(dict.fromkeys(tuple(p.cuts) for p in plans)) if control is not None else []
    controls = [make_plan(profile, cuts, control, cluster, schedule=schedule, speeds=speeds)
                for cuts in control_cuts]
    result = verify(plans + controls)
    gaps = [result.gap(i) for i in range(len(plans))]
    control_gaps = [result.gap(len(plans) + i) for i in range(len(controls))]
    noise = max((_control_noise(result.gaps(len(plans) + j)) for j in range(len(controls))), default=0.0)
    n_seeds = len(result.gaps(0))
    fits = [i for i, g in enumerate(gaps) if g <= budget * (1 + 1e-9)]
    if noise > budget * (1 + 1e-9):
        chosen = additive
        reason = (f"the control ({control} everywhere) moved the loss by {noise:.4f} nats"
                  + (" (|mean| + 2 standard errors over the seeds)" if n_seeds > 1 else "")
                  + ", more than the budget: the trial cannot resolve it, so the additive plan is kept")
    elif fits:
        chosen = min(fits, key=lambda i: (plans[i].step_time_s, gaps[i]))
        reason = "the fastest predicted candidate whose trial gap fits the budget"
    else:
        chosen = min(range(len(plans)), key=lambda i: (gaps[i], plans[i].step_time_s))
        reason = "no candidate's trial gap fits the budget: the smallest gap"

    def per_seed(i: int) -> dict[str, Any]:
        seeds = result.gaps(i)
        return {"trial_gaps": [finite_or_none(g) for g in seeds]} if len(seeds) > 1 else {}

    rows = tuple({"factors": sources[i], "cuts": list(p.cuts), "codecs": p.codecs_dict(),
                  "step_time_s": p.step_time_s, "score": p.total_sensitivity, "trial_gap": finite_or_none(gaps[i]),
                  **per_seed(i)} for i, p in enumerate(plans))
    ctl = tuple({"cuts": list(c), "codec": control, "trial_gap": finite_or_none(g), **per_seed(len(plans) + j)}
                for j, (c, g) in enumerate(zip(control_cuts, control_gaps)))
    best = plans[chosen]
    note = (f"checked by a {result.steps}-step trial with all codecs in place"
            + (f", mean of {n_seeds} seeds" if n_seeds > 1 else "") + f": gap {gaps[chosen]:+.4f} nats "
            f"(budget {budget:g}; additive score {best.total_sensitivity:.4f}; control noise {noise:.4f}); "
            f"{len(plans)} candidate(s) from budget x {', '.join(f'{f:g}' for f in sorted(set(factors)))}")
    best = replace(best, budget=budget, notes=tuple(best.notes) + (note,))
    return best, baselines, Verification(budget, rows, chosen, reason, result.to_dict(), ctl, noise)


def plot_plan(plan: Any, profile: ModelProfile, cluster: Any, baselines: dict[str, Baseline], path: str,
              speeds: Any = None) -> str:
    """One PNG: (top) a Gantt-like timeline of the planned step from :func:`layeredge_dist.plan.simulation`
    (per stage its forward / backward / optimizer spans, per link its transfers), (bottom) wire bytes per step on
    every directed link for the plan and the baselines. RuntimeError naming the ``bench`` extra without
    matplotlib; OSError when ``path`` cannot be written."""
    try:
        import matplotlib
    except ImportError as err:
        raise RuntimeError("--plot needs matplotlib: pip install 'layeredge-dist[bench]' (or matplotlib)") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from layeredge_dist.plan import predict, simulation
    from layeredge_dist.schedule import Backward, Forward

    sim = simulation(profile, plan.cuts, plan.codecs_dict(), cluster, plan.schedule, plan.microbatches,
                     speeds=speeds)
    p = plan.num_stages
    rows = 2 * p - 1
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(12, max(5.0, 0.28 * rows + 3) + 4),
                                 gridspec_kw={"height_ratios": [max(2.0, 0.28 * rows), 3]})
    cmap = plt.get_cmap("tab20")
    for s, spans in enumerate(sim.timelines):
        y = 2 * (p - 1 - s)
        for span in spans:
            if span.end <= span.start:
                continue
            mb = getattr(span.action, "mb", 0)
            if isinstance(span.action, Forward):
                color, hatch = cmap((2 * mb) % 20), None
            elif isinstance(span.action, Backward):
                color, hatch = cmap((2 * mb + 1) % 20), "//"
            else:
                color, hatch = "0.3", None
            ax.broken_barh([(span.start, span.end - span.start)], (y - 0.4, 0.8), facecolors=color, hatch=hatch,
                           edgecolor="black", linewidth=0.3)
            if p <= 16 and span.end - span.start > sim.step_time / 60:
                ax.text((span.start + span.end) / 2, y, str(mb), ha="center", va="center", fontsize=6)
    for t in sim.transfers:
        lo = min(t.src_stage, t.dst_stage)
        y = 2 * (p - 1 - lo) - 1
        fwd = t.dst_stage > t.src_stage
        ax.broken_barh([(t.start, max(t.end - t.start, sim.step_time * 1e-4))], (y + (0.02 if fwd else -0.38), 0.36),
                       facecolors="tab:blue" if fwd else "tab:red", alpha=0.7)
    ticks = [2 * (p - 1 - s) for s in range(p)] + [2 * (p - 1 - k) - 1 for k in range(p - 1)]
    labels = [f"s{s}" for s in range(p)] + [f"link {k}->{k + 1}" for k in range(p - 1)]
    if p > 16:
        keep = [i for i in range(len(ticks)) if i < p and i % max(1, p // 16) == 0]
        ticks, labels = [ticks[i] for i in keep], [labels[i] for i in keep]
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.set_xlabel("seconds from the step's start")
    ax.set_title(f"planned step ({plan.schedule}, {plan.microbatches} micro-batches): {sim.step_time:.4g} s, "
                 f"bubble {sim.bubble_fraction:.0%}; compute: colour = micro-batch, hatched = backward; links: "
                 f"blue = activations, red = gradients", fontsize=9)
    # bytes per directed link
    series = [("plan", plan.prediction.bytes_per_link_per_step)]
    for name, b in baselines.items():
        pred = predict(profile, b.cuts, b.codec, cluster, plan.schedule, plan.microbatches, speeds=speeds,
                       method="fast" if p > 8 else "auto")
        series.append((f"{name} ({b.codec})", pred.bytes_per_link_per_step))
    links = [f"s{k}->s{k + 1}" for k in range(p - 1)] + [f"s{k + 1}->s{k}" for k in range(p - 1)]
    width = 0.8 / len(series)
    for j, (name, per_link) in enumerate(series):
        bx.bar([i + (j - (len(series) - 1) / 2) * width for i in range(len(links))],
               [per_link.get(lk, 0) / 1e6 for lk in links], width=width * 0.95, label=name)
    if len(links) <= 32:
        bx.set_xticks(range(len(links)), links, rotation=60 if len(links) > 8 else 0, fontsize=7)
    else:
        bx.set_xlabel(f"directed links: {p - 1} forward (activations) then {p - 1} backward (gradients)")
    bx.set_ylabel("MB per step")
    bx.legend(fontsize=8)
    bx.set_title("wire bytes per step on each directed link", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["Baseline", "DEFAULT_CODECS", "JOINT_CUTS_LIMIT", "Measurement", "block_partitions", "choose_plan",
           "measure", "measure_profile", "measure_speeds", "plot_plan", "scale_profile", "time_blocks",
           "time_optimizer", "torch_threads", "train_parts", "uniform_options", "what_if_blocks"]
