"""End-to-end benchmark on shaped links: train the demo with each edge configuration on a 3-host testbed.

Needs root (network namespaces, tc); see ``cluster/testbed.md``. For every rate of ``--rates`` (default
``100mbit,1gbit``; ``unshaped`` allowed), on one testbed of ``--hosts`` emulated hosts (network namespaces on a
switch, every host's link shaped to the rate in both directions with ``tc tbf``) with one Ray node per host, the
demo model (byte-level GPT, 3 stages, 1F1B, one stage per host, edges over the raw TCP data path with
``transport.allow_plaintext_token=true``) is trained ``--steps`` steps from the same seed on the same batches with:

a. ``fp32`` on every edge;
b. ``bf16`` on every edge;
c. ``plan``: the planner's plan (:func:`layeredge_dist.pipeline.planning.choose_plan`, i.e.
   :func:`~layeredge_dist.plan.plan_jointly`: cuts and a codec per edge and direction, the fastest predicted
   step within ``--budget``) for a profile measured in this process before the testbed starts
   (:func:`layeredge_dist.pipeline.planning.measure`: block times with one thread, activation sizes,
   per-boundary sensitivity of ``--codecs`` after ``--calib-steps`` training steps, calibrated by
   ``--trial-steps`` of training per codec and direction so that the budget is a validation-loss gap in nats:
   :func:`~layeredge_dist.pipeline.planning.calibrate_by_trial`) and the links as measured by the first run's
   transport probe (``Pipeline.probe_links``: bandwidth and RTT of every stage-to-stage link). With
   ``--verify-steps N`` (default 60) the driver then trains the plans the planner makes at the budget x 0.5, 1, 2
   and 4 in-process, each with all its codecs in place, for N steps from the calibration point, and takes the
   fastest predicted one whose measured gap fits the budget -- unless a negative control (bf16 on every edge)
   moves the loss by more than the budget, when the trial cannot resolve it and the additive plan is kept
   (:func:`~layeredge_dist.pipeline.planning.choose_verified_plan`), because the per-codec gaps do not add up.
   Each trial runs over ``--verify-seeds K`` seeds (default 3) and the mean gaps decide, since one 60-step
   trial's gap is largely a draw;
d. ``strong``: a fixed aggressive configuration, forward ``--strong-forward`` (default ``klt:3``: transform coding
   at 3 bits per element) and backward ``--strong-backward`` (default ``int4/rht/sr``: rotated 4-bit with unbiased
   stochastic rounding, stateless), the pair that trained like fp32 in every seed of the 4-seed in-process study
   and ended +2.3 % +- 0.3 over three seeds on the testbed (docs/benchmarks.md, run 7; its codec draws alone move
   one seed's final loss by about +-3 %); ``--strong-forward int4/rht --strong-backward 'ef(int8)'`` is the
   AC-SGD-like 4-bit pair with error feedback, whose state the stage runtime keeps per edge and micro-batch slot.

Per rate and configuration it reports the step time (p50 of the steps after the first 3), the validation loss
every ``--eval-every`` steps on ``--eval-batches`` held-out batches (and at the end: ``final_val_loss``), the
inter-stage bytes per training step (sum over the cuts, forward + backward, metadata included; validation traffic
is excluded) and per edge, the bits per element forward and backward from the stages' own counters, and the
simulator's predicted step for the same cuts, codecs and probed links (``prediction``: from the in-process
profile, scaled for the cores, with the stages' own measured compute, and -- ``predicted_host_s`` -- on a
:class:`~layeredge_dist.plan.HostModel` fitted after the rates on separate short runs (fp32 and ``strong``,
``--host-calib-steps`` each, on unshaped links and at the slowest benchmarked rate): the testbed's hosts share
this machine's cores, codecs run on the stage threads, and every message and step carries a software overhead;
relative errors to the measured p50). ``predicted_host_cv_s`` is each
row predicted by a host model fitted on all the other rows (leave-one-out). Predictions on shaped links model
the ``tc tbf`` bucket (a message the bucket covers leaves at line speed).
Codec speeds for the planner and the simulator are measured in-process on the real tensor size next to the profile.

Every configuration trains with the same recipe: AdamW at ``train.lr`` with a linear warm-up over ``--warmup-steps``
(default a tenth of ``--steps``) and a cosine decay to ``train.final_lr_frac`` of the rate at the last step
(``--lr-schedule``). Without the warm-up the demo's tiny batches leave an early unigram plateau at a step that any
perturbation moves, which made time to target a lottery (docs/benchmarks.md).

Seeds: with ``--seeds N`` every configuration trains N times, seed ``k`` with ``data.seed + k`` and ``model.seed + k``
(other batches, initial weights and codec draws; :mod:`layeredge_dist.bench.replicates`), seeds outermost so that a
drift in the machine's load hits every configuration alike; the plan is chosen once, before its first run. A row
is the mean over its seeds (``replicates`` holds each seed's figures), and ``final_gap_vs_fp32`` is the spread of
the final-loss gaps to fp32's run of the same seed. One seed's gap is one draw: on the demo they ranged over +1.7 %
.. +19.8 % for codecs that change the cut activations by under 1 % (docs/benchmarks.md).

Headline: per rate with a target (100 Mbit/s, 1 Gbit/s), ``headline`` gives the issue's checks on the plan row and
whether each is met, not met or undecided (:mod:`layeredge_dist.bench.headline`); the table ends with them.

Time to target: the target validation loss is ``--target-loss`` if given, else the loss the fp32 run of the same
rate reaches at its first evaluation at or after ``--target-frac`` (default 0.6) of the steps. A configuration's
``time_to_target_s`` is its cumulative training time (the sum of its step times; evaluation excluded) up to its
first evaluation at or below the target; null if it never gets there within ``--steps``.

The driver runs inside host 0's namespace (the testbed's addresses are reachable only from inside it): this
command brings up the testbed and the Ray nodes, then starts one driver subprocess per rate with
``ip netns exec``, collects its results, and tears everything down at the end, on error and on Ctrl-C. Between
rates only the shaping changes (``tc qdisc replace``); Ray stays up. Besides the transport probe, every rate's
bandwidth is also measured with a plain TCP stream between hosts 0 and 1 (``bandwidth_measured_mbit``).

JSON: ``{"rows": [{"bandwidth", "config", "step_s", "time_to_target_s", "final_val_loss", "bits_fwd", "bits_bwd",
"bytes_per_step", "bytes_per_step_per_edge", "val_curve", "final_gap_vs_fp32", "seeds", "replicates", ...}],
"rates": {...}, "plans": {rate: {plan..., "verification": {"candidates", "chosen", "reason", "trial"} or null}},
"headline": {rate: {"checks", "met"}}, ...}``.
``--plot PATH`` writes one PNG: per rate, validation loss against cumulative training time per configuration,
and bytes per training step per edge and direction. ``--out FILE`` writes the JSON document beside the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from layeredge_dist.bench import output
from layeredge_dist.bench.headline import lines as headline_lines
from layeredge_dist.bench.headline import verdict
from layeredge_dist.bench.replicates import merge, spread
from layeredge_dist.files import atomic_write_json

#: The demo's batch shape and schedule (3 stages, 1F1B); no checkpoints, no metrics.
DEMO = ("data.batch_size=8", "data.context=128", "pipeline.microbatches=4", "pipeline.stages=3",
        "pipeline.schedule=1f1b", "train.checkpoint_every=0", "train.resume=false")
CONFIGS = ("fp32", "bf16", "plan", "strong")
#: The planner's forward and backward candidates, chosen by training from scratch with the codecs at every cut
#: (examples/codec_convergence.py, 4 seeds; docs/benchmarks.md). Forward: ``klt:B`` (transform coding) is the
#: low-bit option that trains like fp32, with 400-9000x less squared error than ``int2/rht`` on the cuts'
#: activations. With this benchmark's recipe (warm-up and cosine), on the demo over 300 steps, ``klt:3`` forward with
#: int4/rht/sr backward ended within +0.1 % of fp32 or below it in every seed (mean -4.0 %); ``klt:2`` had a lower
#: mean (-3.3 %) but one seed in four +5.1 % that reached the target only at the last step, so it is not offered by
#: default (``--codecs ...,klt:2``). ``int2/rht`` forward with ef(int2/rht) backward ended 55 % above fp32 and
#: ``int3/rht`` 9 % (without the warm-up); their 60-step trial gaps were within the budget: trials from step 20 miss
#: how much a codec delays the escape from the early plateau. Backward: 4 bits with unbiased rounding or error
#: feedback train like fp32; deterministic low-bit gradients without either (``klt:3``) are biased and trained 4-8 %
#: worse at 200 steps.
DEFAULT_CANDIDATES = ("bf16", "int8", "int4/rht", "klt:3")
DEFAULT_BACKWARD = ("bf16", "int8", "ef(int8)", "ef(int4/rht)", "int4/rht/sr")
WARMUP_STEPS = 3


@dataclass(frozen=True)
class E2ESettings:
    """What :func:`run_e2e` measures; see the module docstring. ``overrides`` are run-config ``--set`` strings
    applied after :data:`DEMO` (e.g. a smaller model)."""

    rates: tuple[str, ...] = ("100mbit", "1gbit")
    configs: tuple[str, ...] = CONFIGS
    steps: int = 150
    eval_every: int = 10
    eval_batches: int = 4
    target_loss: float | None = None
    target_frac: float = 0.6
    budget: float | None = 0.03
    trial_steps: int = 60
    trial_batches: int = 8
    verify_steps: int = 60
    verify_seeds: int = 3
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    backward_candidates: tuple[str, ...] = DEFAULT_BACKWARD
    strong_forward: str = "klt:3"
    strong_backward: str = "int4/rht/sr"
    calib_steps: int = 20
    calib_batches: int = 2
    hosts: int = 3
    overrides: tuple[str, ...] = ()
    probe_bytes: int = 8 << 20
    start_timeout_s: float = 180.0
    run_timeout_s: float = 3600.0
    bandwidth_seconds: float = 1.5
    host_calib_steps: int = 15
    lr_schedule: str = "cosine"
    warmup_steps: int | None = None
    seeds: int = 1

    def __post_init__(self) -> None:
        bad = [c for c in self.configs if c not in CONFIGS]
        if bad or not self.configs:
            raise ValueError(f"configs must be among {', '.join(CONFIGS)}, got {list(self.configs)}")
        if self.steps < 1 or self.eval_every < 1 or self.eval_batches < 1 or self.hosts < 2:
            raise ValueError("need steps >= 1, eval_every >= 1, eval_batches >= 1 and hosts >= 2")
        if not 0.0 < self.target_frac <= 1.0:
            raise ValueError(f"target_frac must be in (0, 1], got {self.target_frac}")
        if not self.rates:
            raise ValueError("need at least one rate")
        if self.trial_steps < 0 or self.trial_batches < 1:
            raise ValueError("need trial_steps >= 0 and trial_batches >= 1")
        if self.verify_steps < 0 or self.verify_seeds < 1:
            raise ValueError(f"need verify_steps >= 0 and verify_seeds >= 1, got {self.verify_steps}, "
                             f"{self.verify_seeds}")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps = {self.steps}], got {self.warmup_steps}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.host_calib_steps < 0 or 0 < self.host_calib_steps <= WARMUP_STEPS:
            raise ValueError(f"host_calib_steps must be 0 (off) or > {WARMUP_STEPS}, got {self.host_calib_steps}")


# --------------------------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``layeredge bench e2e``."""
    d = E2ESettings()
    p.add_argument("--rates", default=",".join(d.rates),
                   help=f"link rates, comma-separated (e.g. 100mbit,1gbit,unshaped; default {','.join(d.rates)})")
    p.add_argument("--configs", default=",".join(d.configs),
                   help=f"edge configurations to run, fp32 first (default {','.join(d.configs)})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"training steps per configuration (default {d.steps})")
    p.add_argument("--eval-every", type=int, default=d.eval_every,
                   help=f"steps between validation evaluations (default {d.eval_every})")
    p.add_argument("--eval-batches", type=int, default=d.eval_batches,
                   help=f"validation batches per evaluation (default {d.eval_batches})")
    p.add_argument("--target-loss", type=float, default=None, metavar="L",
                   help="target validation loss for time-to-target (default: fp32's at --target-frac of the steps)")
    p.add_argument("--target-frac", type=float, default=d.target_frac,
                   help=f"fraction of the steps where fp32's val loss defines the target (default {d.target_frac})")
    p.add_argument("--budget", type=float, default=d.budget,
                   help=f"planner's accuracy budget (default {d.budget}): with --trial-steps > 0 the validation-loss "
                   "gap in nats the plan may cost after that many training steps, else the total one-shot "
                   "sensitivity; negative = no budget")
    p.add_argument("--trial-steps", type=int, default=d.trial_steps,
                   help=f"calibrate the planner's sensitivities by short in-process training runs per codec and "
                   f"direction (default {d.trial_steps}; 0 = one-shot sensitivities only, which let codecs through "
                   "that stall training)")
    p.add_argument("--verify-steps", type=int, default=d.verify_steps, metavar="N",
                   help=f"train the plans made at the budget x 0.5, 1, 2, 4 for N steps each with all their codecs "
                   f"in place and keep the fastest whose measured gap fits the budget, unless a bf16 control moves the "
                   f"loss by more than the budget (default {d.verify_steps}; 0 = the additive plan as is; needs a "
                   "budget)")
    p.add_argument("--verify-seeds", type=int, default=d.verify_seeds, metavar="K",
                   help=f"repeat each verification trial over K seeds (other batches, initial weights and codec "
                   f"draws) and compare the mean gaps: one short trial's gap is mostly the draw of a chaotic run "
                   f"(default {d.verify_seeds}; costs K x the verification time)")
    p.add_argument("--trial-batches", type=int, default=d.trial_batches,
                   help=f"validation batches scoring each trial (default {d.trial_batches})")
    p.add_argument("--codecs", default=",".join(d.candidates),
                   help=f"planner candidates for activations (default {','.join(d.candidates)})")
    p.add_argument("--backward-codecs", default=",".join(d.backward_candidates),
                   help=f"planner candidates for activation-gradients (default {','.join(d.backward_candidates)})")
    p.add_argument("--strong-forward", default=d.strong_forward, help=f"(d) forward codec (default {d.strong_forward})")
    p.add_argument("--strong-backward", default=d.strong_backward,
                   help=f"(d) backward codec (default {d.strong_backward})")
    p.add_argument("--calib-steps", type=int, default=d.calib_steps,
                   help=f"in-process training steps before profiling (default {d.calib_steps})")
    p.add_argument("--calib-batches", type=int, default=d.calib_batches,
                   help=f"calibration batches for the profile's sensitivity (default {d.calib_batches})")
    p.add_argument("--hosts", type=int, default=d.hosts, help=f"emulated hosts (default {d.hosts})")
    p.add_argument("--host-calib-steps", type=int, default=d.host_calib_steps,
                   help=f"steps of each calibration run (fp32, strong; unshaped and at the slowest rate) after the "
                   f"rates, "
                   f"which fit the simulator's host model: shared cores, per-message and per-step overhead, compute "
                   f"scale (default {d.host_calib_steps}; 0 = no calibration, plain predictions only)")
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=("constant", "cosine"),
                   help=f"learning rate after the warm-up, the same for every configuration (default {d.lr_schedule}: "
                   "from train.lr down to train.final_lr_frac of it at the last step)")
    p.add_argument("--warmup-steps", type=int, default=None, metavar="N",
                   help="linear learning-rate warm-up steps (default: a tenth of --steps; 0 = none)")
    p.add_argument("--seeds", type=int, default=d.seeds, metavar="N",
                   help=f"train every configuration N times, with data.seed and model.seed + 0 .. N-1 (other batches, "
                   f"initial weights and codec draws; the plan is chosen once, on the first seed); rows give the "
                   f"mean over the seeds, each seed's figures and its gap to fp32 of the same seed go under "
                   f"'replicates', and the final-loss verdict uses the spread of those paired gaps. N x the run time "
                   f"(default {d.seeds})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a run config field (see layeredge train --help), e.g. model.config.n_layer=3")
    p.add_argument("--plot", metavar="PATH", default=None, help="also write a PNG: loss vs time, bytes per edge")
    p.add_argument("--from-json", metavar="FILE", default=None,
                   help="no runs: recompute the simulator's host-model predictions of a saved --json result with "
                   "this version (no root needed) and print it")


def run(args: argparse.Namespace) -> int:
    """``layeredge bench e2e``: 0 on success, 2 for bad arguments, 1 when the testbed or a run fails (the rates
    that finished are still printed and written to ``--out``)."""
    from layeredge_dist.testbed import TestbedError

    if args.from_json:
        return _run_from_json(args)
    try:
        settings = E2ESettings(
            rates=tuple(r.strip() for r in args.rates.split(",") if r.strip()),
            configs=tuple(c.strip() for c in args.configs.split(",") if c.strip()),
            steps=args.steps, eval_every=args.eval_every, eval_batches=args.eval_batches,
            target_loss=args.target_loss, target_frac=args.target_frac,
            budget=None if args.budget is not None and args.budget < 0 else args.budget,
            candidates=tuple(c.strip() for c in args.codecs.split(",") if c.strip()),
            backward_candidates=tuple(c.strip() for c in args.backward_codecs.split(",") if c.strip()),
            strong_forward=args.strong_forward, strong_backward=args.strong_backward,
            calib_steps=args.calib_steps, calib_batches=args.calib_batches, hosts=args.hosts,
            trial_steps=args.trial_steps, trial_batches=args.trial_batches, verify_steps=args.verify_steps,
            verify_seeds=args.verify_seeds,
            host_calib_steps=args.host_calib_steps, lr_schedule=args.lr_schedule, warmup_steps=args.warmup_steps,
            seeds=args.seeds, overrides=tuple(args.overrides))
        _base_config(settings)
        from layeredge_dist.testbed import parse_rate

        for r in settings.rates:
            parse_rate(r)
    except ValueError as err:
        print(f"layeredge bench e2e: {err}", file=sys.stderr)
        return 2
    log = output.progress(args)

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        result = run_e2e(settings, log=log, progress=not args.json,
                         save=(lambda doc: atomic_write_json(args.out, doc)) if args.out else lambda doc: None)
    except (TestbedError, E2EError) as err:
        print(f"layeredge bench e2e: {err}", file=sys.stderr)
        return 1
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    plot_error = None
    if args.plot:
        try:
            result["plot"] = plot(result, args.plot)
        except ImportError as err:  # the runs are still printed and written
            plot_error = f"--plot needs matplotlib (pip install matplotlib): {err}"
    if not output.emit(result, args):
        print(format_rows(result))
        if "plot" in result:
            print(f"plot: {result['plot']}")
    for what, err in result.get("errors", {}).items():
        print(f"layeredge bench e2e: {what}: {err}", file=sys.stderr)
    if plot_error is not None:
        print(f"layeredge bench e2e: {plot_error}", file=sys.stderr)
    return 1 if plot_error is not None or result.get("errors") else 0


def _run_from_json(args: argparse.Namespace) -> int:
    """``--from-json FILE``: :func:`repredict` a saved result and print it (table or ``--json``)."""
    try:
        with open(args.from_json, encoding="utf-8") as f:
            result = json.load(f)
        result = repredict(result, log=output.progress(args))
    except (OSError, json.JSONDecodeError, KeyError, ValueError) as err:
        print(f"layeredge bench e2e: --from-json {args.from_json}: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    if not output.emit(result, args):
        print(format_rows(result))
    return 0


# --------------------------------------------------------------------------------------------- orchestration


def _all_candidates(settings: E2ESettings) -> tuple[str, ...]:
    """Forward and backward candidates, each once."""
    return tuple(dict.fromkeys([*settings.candidates, *settings.backward_candidates]))


class E2EError(RuntimeError):
    """A driver run on the testbed failed; the message carries its last output."""


def run_overrides(settings: E2ESettings) -> list[str]:
    """The run-config overrides every configuration trains with: :data:`DEMO`, the training recipe (``--steps``
    as ``train.steps``, so a cosine schedule ends at the last step; the warm-up), then ``settings.overrides``."""
    warmup = settings.steps // 10 if settings.warmup_steps is None else settings.warmup_steps
    recipe = [f"train.steps={settings.steps}", f"train.lr_schedule={settings.lr_schedule}",
              f"train.warmup_steps={warmup}"]
    return [*DEMO, *recipe, *settings.overrides]


def _base_config(settings: E2ESettings) -> Any:
    from layeredge_dist.config import ConfigError, RunConfig, with_overrides

    try:
        return with_overrides(RunConfig(), run_overrides(settings))
    except ConfigError as err:
        raise ValueError(f"config error: {err}") from err


def run_e2e(settings: E2ESettings, log: Callable[[str], None] = lambda t: None, progress: bool = True,
            save: Callable[[dict[str, Any]], None] = lambda doc: None) -> dict[str, Any]:
    """Measure the profile (if the plan is wanted), bring up the testbed and Ray, run every rate's driver inside
    host 0, tear down; returns ``{"rows", "rates", "plans", "targets", "headline", "errors", "settings", "profile",
    "seconds"}``. A rate whose driver fails (E2EError) is left out of the rows and its error kept under
    ``errors[rate]``; the other rates still run. The testbed failing (TestbedError) or Ctrl-C ends the run.
    ``save`` gets the result so far after every rate (``partial`` true until the end), so that what finished
    survives even this process dying."""
    from layeredge_dist.bench import testbed_job
    from layeredge_dist.testbed.bandwidth import measure_bandwidth
    from layeredge_dist.testbed.netns import require_tools
    from layeredge_dist.testbed.ray_nodes import TESTBED_OVERRIDES

    require_tools()
    t_start = time.perf_counter()
    cfg = _base_config(settings)
    out: dict[str, Any] = {"settings": asdict(settings), "rows": [], "rates": {}, "plans": {}, "targets": {},
                           "headline": {}, "errors": {}, "profile": None, "demo": list(DEMO),
                           "load_average": {"start": list(os.getloadavg())}}
    profile = None
    if "plan" in settings.configs:
        from layeredge_dist.bench.simulator import _cores
        from layeredge_dist.pipeline import planning

        log(f"profiling {cfg.model.family} in-process (1 thread): {settings.calib_steps} training steps, "
            f"{settings.calib_batches} calibration batches, codecs forward {', '.join(settings.candidates)}, "
            f"backward {', '.join(settings.backward_candidates)} ...")
        t0 = time.perf_counter()
        meas = planning.measure(cfg, settings.calib_batches, settings.calib_steps, _all_candidates(settings),
                                optimizer=True, trial_steps=settings.trial_steps,
                                trial_batches=settings.trial_batches,
                                directions={"forward": settings.candidates,
                                            "backward": settings.backward_candidates}, log=log)
        profile = meas.profile.to_dict()
        out["profile"] = {"seconds": time.perf_counter() - t0, "name": meas.profile.name,
                          "n_blocks": meas.profile.n_blocks, "profile": profile, "opt_s": list(meas.opt_s),
                          "trial": meas.trial.to_dict() if meas.trial is not None else None}
        if meas.trial is not None:
            log("trial gaps (nats after {} steps): ".format(meas.trial.steps) + "; ".join(
                f"{d} " + ", ".join(f"{c} {meas.trial.gap(d, c):+.4f}" for c in per)
                for d, per in meas.trial.losses.items()))
        used = sorted({"fp32", "bf16", settings.strong_forward, settings.strong_backward, *_all_candidates(settings)})
        speeds = planning.measure_speeds(used, max(meas.profile.elements), width=meas.edge_width)
        out["codec_speeds_Bps"] = {k: list(v) for k, v in speeds.items()}
        out["edge_width"] = meas.edge_width
        out["host_cores"] = _cores()  # the testbed's hosts share this machine's cores
    with testbed_job.testbed_with_ray(settings.hosts, settings.rates[0], max(1.0, cfg.cluster.cpus_per_stage),
                                      settings.start_timeout_s, log) as (tb, nodes, out["testbed"]):
        for rate in settings.rates:
            tb.set_rate(rate)
            bw = measure_bandwidth(tb, 0, 1, seconds=settings.bandwidth_seconds)
            log(f"[{tb.rate}] plain TCP host 0 -> host 1: {bw.mbit_per_s:.1f} Mbit/s")
            job = {
                "address": nodes.address, "rate": tb.rate, "settings": asdict(settings),
                "overrides": run_overrides(settings) + list(TESTBED_OVERRIDES)
                + [f"cluster.address={nodes.address}", f"run_dir={tb.work_dir}/run"],
                "profile": profile, "opt_s": out["profile"]["opt_s"] if profile is not None else None,
                "speeds": out.get("codec_speeds_Bps"), "edge_width": out.get("edge_width"),
                "out": os.path.join(tb.work_dir, f"e2e-{tb.rate}.json"),
            }
            try:
                res = _run_driver(nodes, job, settings.run_timeout_s, progress)
            except E2EError as err:  # keep the rates done so far and go on: a driver failure ends only its rate
                out["errors"][tb.rate] = str(err)
                log(f"[{tb.rate}] failed, going on with the next rate: {err}")
                save(out | {"partial": True})
                continue
            out["rates"][tb.rate] = {"bandwidth_measured_mbit": bw.mbit_per_s, "probe": res.get("probe"),
                                     "seconds": res.get("seconds"), "load_average_end": list(os.getloadavg())}
            if res.get("plan") is not None:
                out["plans"][tb.rate] = res["plan"]
            target, rows = _finish_rows(res["runs"], settings, tb.rate, bw.mbit_per_s)
            out["targets"][tb.rate] = target
            out["rows"] += rows
            for r in rows:
                log(_row_line(r))
            v = verdict(rows, tb.rate)
            if v is not None:
                out["headline"][tb.rate] = v
                for line in headline_lines(v):
                    log(line)
            save(out | {"partial": True})
        if profile is not None and settings.host_calib_steps > 0 and out["rows"]:
            try:
                out["host_calibration"] = _calibrate_host(tb, nodes, settings, cfg, out, progress, log)
            except E2EError as err:
                out["errors"]["host calibration"] = str(err)
                log(f"[host calibration] failed; the rows keep their plain predictions: {err}")
    if profile is not None and out["rows"]:
        _add_host_predictions(out, cfg, log)
    out["seconds"] = time.perf_counter() - t_start
    out["load_average"]["end"] = list(os.getloadavg())  # the machines are shared: compute time varies with load
    return out


def _calibration_rates(settings: E2ESettings) -> tuple[str, ...]:
    """Where the host model is calibrated: unshaped links and the slowest benchmarked rate (one of them when the
    benchmark runs unshaped only)."""
    from layeredge_dist.testbed import parse_rate

    shaped = [r for r in settings.rates if parse_rate(r).rate_bps is not None]
    slowest = min(shaped, key=lambda r: parse_rate(r).rate_bps or 0.0) if shaped else None
    return ("unshaped",) + ((parse_rate(slowest).label,) if slowest is not None else ())


def _calibrate_host(tb: Any, nodes: Any, settings: E2ESettings, cfg: Any, out: dict[str, Any], progress: bool,
                    log: Callable[[str], None]) -> dict[str, Any]:
    """Fit the simulator's :class:`~layeredge_dist.plan.HostModel` on the testbed: ``fp32`` and ``strong`` for
    ``host_calib_steps`` steps each on unshaped links and at the slowest benchmarked rate, then
    :func:`~layeredge_dist.bench.simulator.fit_config_host` with the machine's cores shared by all hosts. These
    runs are only for the fit: every row of the benchmark is a separate run that the fitted model predicts. They
    run after the measured rates: calibration runs made right after the Ray nodes started measured 0-42 % slower
    than the same configuration on the same links minutes later (three benchmark runs, 2026-11-28)."""
    from dataclasses import replace

    from layeredge_dist.testbed.ray_nodes import TESTBED_OVERRIDES

    n = settings.host_calib_steps
    cal = replace(settings, configs=("fp32", "strong"), steps=n, eval_every=n, eval_batches=1, seeds=1)
    report: list[dict[str, Any]] = []
    for rate in _calibration_rates(settings):
        tb.set_rate(rate)
        log(f"[host calibration] fp32 and strong, {n} steps each at {tb.rate} ...")
        job = {"address": nodes.address, "rate": tb.rate, "settings": asdict(cal),
               "overrides": run_overrides(settings) + list(TESTBED_OVERRIDES)
               + [f"cluster.address={nodes.address}", f"run_dir={tb.work_dir}/run-calibration"],
               "profile": None, "opt_s": None, "speeds": None,
               "out": os.path.join(tb.work_dir, f"e2e-host-calibration-{tb.rate}.json")}
        res = _run_driver(nodes, job, settings.run_timeout_s, progress)
        for r in res["runs"]:
            report.append({"rate": tb.rate, "config": r["config"], "overrides": r["overrides"], "step_s": r["step_s"],
                           "probe": res["probe"], "stage_medians": r["stage_medians"]})
    cal_out = {"steps": n, "runs": report}
    _fit_calibration(cal_out, out, cfg, log)
    return cal_out


def _fit_calibration(cal: dict[str, Any], out: dict[str, Any], cfg: Any, log: Callable[[str], None]) -> None:
    """Fit the host model on the calibration runs ``cal["runs"]`` (rate, config, step seconds, probe) with the
    current simulator; sets ``cal["host"]`` and ``cal["max_rel_error"]``."""
    from layeredge_dist.bench.simulator import _cores, fit_config_host
    from layeredge_dist.config import with_overrides
    from layeredge_dist.plan import ModelProfile

    settings = out["settings"]
    runs = [(with_overrides(cfg, r.get("overrides") or _overrides(r["config"], settings)),
             _cluster_from_probe_dict(r["probe"], cfg.pipeline.stages, r["rate"]), r["step_s"]) for r in cal["runs"]]
    profile = ModelProfile.from_dict(out["profile"]["profile"])
    host, err = fit_config_host(runs, profile, out["profile"]["opt_s"], out["codec_speeds_Bps"],
                                out.get("host_cores") or _cores())
    measured = ", ".join(f"{r['config']} at {r['rate']} {r['step_s']:.3f} s" for r in cal["runs"])
    log(f"[host calibration] measured {measured}; host model: {host.describe()} (largest error on these runs "
        f"{err:.0%})")
    cal.update(host=host.to_dict(), max_rel_error=err)


def _overrides(name: str, s: dict[str, Any]) -> list[str]:
    """The codec overrides of the fixed configurations ``fp32``, ``bf16`` and ``strong`` (settings ``s``)."""
    if name == "strong":
        return [f"codecs.forward={s['strong_forward']}", f"codecs.backward={s['strong_backward']}"]
    if name in ("fp32", "bf16"):
        return [f"codecs.forward={name}", f"codecs.backward={name}"]
    raise ValueError(f"no fixed codecs for configuration {name!r}")


def repredict(result: dict[str, Any], log: Callable[[str], None] = lambda t: None) -> dict[str, Any]:
    """A saved ``bench e2e --json`` result with every host-model prediction recomputed by the current simulator
    from the stored measurements (calibration runs, rows, probes, profile, codec speeds): no testbed, no root.
    ValueError for a result without a profile or codec speeds (no plan configuration, or an older version)."""
    if not result.get("profile") or not result.get("codec_speeds_Bps"):
        raise ValueError("the result has no profile or codec speeds to predict from (run with the plan "
                         "configuration, by this version)")
    s = result["settings"]
    cfg = _base_config(E2ESettings(rates=tuple(s["rates"]), overrides=tuple(s["overrides"])))
    if result.get("host_calibration"):
        _fit_calibration(result["host_calibration"], result, cfg, log)
    _add_host_predictions(result, cfg, log)
    return result


def _add_host_predictions(out: dict[str, Any], cfg: Any, log: Callable[[str], None]) -> None:
    """Every row's step on host models (``prediction`` gets them): ``predicted_host_s`` / ``rel_error_host`` from
    the model fitted on the separate calibration runs (when there are any), and ``predicted_host_cv_s`` /
    ``rel_error_host_cv`` / ``host_cv`` from a model fitted on every *other* row (leave-one-out over all rates and
    configurations; :func:`~layeredge_dist.bench.simulator.cross_validated_hosts`)."""
    from layeredge_dist.bench.simulator import _cores, cross_validated_hosts, host_prediction
    from layeredge_dist.config import with_overrides
    from layeredge_dist.plan import HostModel, ModelProfile

    rows = [r for r in out["rows"] if r.get("prediction") is not None]
    runs = [(with_overrides(cfg, r["overrides"]),
             _cluster_from_probe_dict(out["rates"][r["bandwidth"]]["probe"], cfg.pipeline.stages, r["bandwidth"]),
             r["step_s"])
            for r in rows]
    profile = ModelProfile.from_dict(out["profile"]["profile"])
    opt, speeds = out["profile"]["opt_s"], out["codec_speeds_Bps"]
    cal = out.get("host_calibration")
    if cal:
        host = HostModel.from_dict(cal["host"])
        for r, (c, cluster, measured) in zip(rows, runs):
            pred = host_prediction(c, profile, opt, cluster, speeds, host)
            r["prediction"].update(predicted_host_s=pred, rel_error_host=(pred - measured) / measured,
                                   host=host.to_dict())
            log(f"  [{r['bandwidth']}] {r['config']}: measured {measured:.3f} s, host model {pred:.3f} s "
                f"({(pred - measured) / measured:+.0%})")
    if len(rows) < 2:
        return
    t0 = time.perf_counter()
    for r, (host, pred) in zip(rows, cross_validated_hosts(runs, profile, opt, speeds,
                                                           out.get("host_cores") or _cores())):
        r["prediction"].update(predicted_host_cv_s=pred, rel_error_host_cv=(pred - r["step_s"]) / r["step_s"],
                               host_cv=host.to_dict())
    log(f"leave-one-out host models over {len(rows)} runs: {time.perf_counter() - t0:.1f} s")


def _run_driver(nodes: Any, job: dict[str, Any], timeout_s: float, progress: bool) -> dict[str, Any]:
    """Run :func:`_driver_main` inside host 0 on ``job``; its progress goes to our stderr (unless quiet)."""
    from layeredge_dist.bench import testbed_job

    proc, log_path = testbed_job.spawn(nodes, __name__, job, f"e2e-driver-{job['rate']}", progress)
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        nodes.testbed.stop(proc)
        raise E2EError(f"the driver for {job['rate']} did not finish in {timeout_s:g} s") from None
    except BaseException:
        nodes.testbed.stop(proc)
        raise
    return testbed_job.result(job, rc, log_path, f"the driver for {job['rate']}", E2EError)


def _target(settings: E2ESettings, fp32_curve: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    """``{"loss", "source"}``: ``--target-loss``, else fp32's validation loss at its first evaluation at or after
    ``target_frac`` of the steps (the last one if none), else none (no fp32 run or curve)."""
    if settings.target_loss is not None:
        return {"loss": settings.target_loss, "source": "--target-loss"}
    if not fp32_curve:
        return {"loss": None, "source": "no fp32 run: no target"}
    want = settings.target_frac * settings.steps
    point = next((p for p in fp32_curve if p["step"] >= want - 1e-9), fp32_curve[-1])
    return {"loss": point["val_loss"], "source": f"fp32 at step {point['step']} "
            f"(first evaluation at or after {settings.target_frac:g} x {settings.steps} steps)"}


def _time_to_target(curve: Sequence[Mapping[str, Any]], loss: float | None) -> float | None:
    """Training seconds up to the first evaluation at or below ``loss``; None if none gets there (or no target)."""
    if loss is None:
        return None
    hit = next((p for p in curve if p["val_loss"] <= loss + 1e-12), None)
    return hit["train_s"] if hit is not None else None


def _finish_rows(runs: list[dict[str, Any]], settings: E2ESettings, rate: str,
                 measured_mbit: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The target of this rate and one row per configuration (time to target filled in).

    A run merged over seeds (:func:`~layeredge_dist.bench.replicates.merge`) is judged on its mean curve against
    the target from fp32's mean curve. Each of its ``replicates`` also gets the time to the target of fp32's run
    with the same seed, and its final loss's relative gap to that run (``final_gap_vs_fp32``). The row's
    ``final_gap_vs_fp32`` is the :func:`~layeredge_dist.bench.replicates.spread` of those paired gaps (None
    without fp32)."""
    fp32 = next((r for r in runs if r["config"] == "fp32"), None)
    target = _target(settings, fp32["val_curve"] if fp32 is not None else None)
    fp32_reps = (fp32.get("replicates") or [fp32]) if fp32 is not None else []
    rows = []
    for r in runs:
        reps = []
        for i, rep in enumerate(r.get("replicates") or []):
            ref = fp32_reps[i] if i < len(fp32_reps) else None  # fp32's run of the same seed
            own = _target(settings, ref["val_curve"] if ref is not None else None)["loss"]
            reps.append({**rep, "time_to_target_s": _time_to_target(rep["val_curve"], own),
                         "final_gap_vs_fp32": (rep["final_val_loss"] / ref["final_val_loss"] - 1.0
                                               if ref is not None else None)})
        gaps = [g["final_gap_vs_fp32"] for g in reps if g["final_gap_vs_fp32"] is not None]
        if not reps and fp32 is not None:
            gaps = [r["final_val_loss"] / fp32["final_val_loss"] - 1.0]
        rows.append({"bandwidth": rate, "bandwidth_measured_mbit": measured_mbit, **r,
                     **({"replicates": reps} if reps else {}),
                     "time_to_target_s": _time_to_target(r["val_curve"], target["loss"]),
                     "target_loss": target["loss"], "final_gap_vs_fp32": spread(gaps) if gaps else None})
    return target, rows


def _gap_cell(g: Mapping[str, Any] | None) -> str:
    """A row's final-loss gap to fp32: ``+1.0%``, or ``+1.0%±0.8`` (one standard error) over several seeds."""
    if g is None:
        return "-"
    return f"{g['mean']:+.1%}" + (f"±{g['se'] * 100:.1f}" if g["n"] > 1 else "")


def _row_line(r: dict[str, Any]) -> str:
    ttt = "-" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.1f} s"
    seeds = f" (mean of {len(r['seeds'])} seeds)" if len(r.get("seeds") or ()) > 1 else ""
    return (f"[{r['bandwidth']}] {r['config']:7s} step p50 {r['step_s']:.3f} s, time to target {ttt}, final val "
            f"{r['final_val_loss']:.4f}{seeds} ({_gap_cell(r.get('final_gap_vs_fp32'))} vs fp32), "
            f"{r['bytes_per_step'] / 1e6:.2f} MB/step, bits fwd {r['bits_fwd']:.2f} / bwd {r['bits_bwd']:.2f}")


def _prediction_cells(p: dict[str, Any] | None) -> str:
    if p is None:
        return f" {'-':>7s} {'-':>7s} {'-':>22s} {'-':>10s} {'-':>8s} {'-':>7s}"
    host = (f" {p['predicted_host_s']:10.3f} {p['rel_error_host']:+8.0%}" if "predicted_host_s" in p
            else f" {'-':>10s} {'-':>8s}")
    cv = f" {p['rel_error_host_cv']:+7.0%}" if "rel_error_host_cv" in p else f" {'-':>7s}"
    return f" {p['predicted_s']:7.3f} {p['rel_error']:+7.0%} {p['rel_error_stage_compute']:+22.0%}" + host + cv


def format_rows(result: dict[str, Any]) -> str:
    """The result as a text table plus the plan per rate."""
    lines = []
    for rate, info in result["rates"].items():
        probe = info.get("probe") or {}
        links = ", ".join(f"{k} {v['bandwidth_Bps'] * 8 / 1e6:.1f} Mbit/s RTT {v['rtt_s'] * 1e3:.2f} ms"
                          for k, v in probe.items())
        lines.append(f"{rate}: plain TCP {info['bandwidth_measured_mbit']:.1f} Mbit/s; transport probe: {links}; "
                     f"target val loss {result['targets'][rate]['loss']} ({result['targets'][rate]['source']})")
        if rate in result["plans"]:
            plan = result["plans"][rate]
            lines.append(f"  plan: cuts {plan['cuts']}, codecs {json.dumps(plan['codecs'])}, predicted step "
                         f"{plan.get('step_time_s', float('nan')):.3f} s")
            if plan.get("verification"):
                from layeredge_dist.pipeline.planning import Verification

                v = plan["verification"]
                lines.append(f"  candidates trained {v['trial']['steps']} steps in-process (gap to exact edges):")
                lines += ["    " + t for t in Verification.from_dict(v).lines()]
    head = (f"{'bandwidth':10s} {'config':8s} {'step p50 s':>10s} {'to target s':>11s} {'final val':>9s} "
            f"{'loss vs fp32':>12s} {'MB/step':>8s} {'bits fwd':>8s} {'bits bwd':>8s} {'step x':>8s} {'sim s':>7s} "
            f"{'sim err':>7s} {'sim(stage compute) err':>22s} {'sim host s':>10s} {'host err':>8s} {'cv err':>7s}")
    load = result.get("load_average") or {}
    if load.get("start") and load.get("end"):
        lines.append(f"load average (1 min) {load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at the end "
                     "(shared machine: compute, and so step time, varies with it)")
    lines += ["", head, "-" * len(head)]
    fp32 = {r["bandwidth"]: r["step_s"] for r in result["rows"] if r["config"] == "fp32"}
    for r in result["rows"]:
        ttt = "-" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.1f}"
        speed = f"{fp32[r['bandwidth']] / r['step_s']:.2f}x" if r["bandwidth"] in fp32 else "-"
        lines.append(f"{r['bandwidth']:10s} {r['config']:8s} {r['step_s']:10.3f} {ttt:>11s} "
                     f"{r['final_val_loss']:9.4f} {_gap_cell(r.get('final_gap_vs_fp32')):>12s} "
                     f"{r['bytes_per_step'] / 1e6:8.3f} {r['bits_fwd']:8.2f} "
                     f"{r['bits_bwd']:8.2f} {speed:>8s}" + _prediction_cells(r.get("prediction")))
    lines.append("sim: the simulator's predicted step from the in-process profile and the probed links; sim(stage "
                 "compute): the same with the stages' own measured compute; sim host: on the host model calibrated "
                 "by separate runs after the rates (shared cores, codecs on the stage threads, software overheads); "
                 "cv: the host model fitted on all the other rows (leave-one-out); "
                 "err = (predicted - measured) / measured")
    seeds = {len(r.get("seeds") or ()) for r in result["rows"]}
    if max(seeds, default=0) > 1:
        lines.append(f"every configuration trained once per seed ({max(seeds)} seeds); a row's figures are the mean "
                     "over its seeds (time to target on the mean curve against the target from fp32's mean curve); "
                     "loss vs fp32: mean ± one standard error of the gaps paired by seed")
    cal = result.get("host_calibration")
    if cal:
        from layeredge_dist.plan import HostModel

        lines.append(f"host model: {HostModel.from_dict(cal['host']).describe()}, fitted on "
                     + ", ".join(f"{r['config']} at {r.get('rate', 'unshaped')} {r['step_s']:.3f} s"
                                 for r in cal["runs"])
                     + f" ({cal['steps']} steps each; largest fit error {cal['max_rel_error']:.0%})")
    for v in (result.get("headline") or {}).values():
        lines += headline_lines(v)
    lines += [f"FAILED {what}: {err}" for what, err in (result.get("errors") or {}).items()]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- the driver


def _driver_main() -> None:
    """Entry of the driver subprocess (inside host 0): run every configuration of one rate, write the JSON."""
    from layeredge_dist.bench.testbed_job import driver_main

    driver_main(drive)


def drive(job: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Connect to the testbed's Ray cluster and train every configuration of ``job`` (see :func:`run_e2e`)."""
    from layeredge_dist.config import RunConfig, reseeded, with_overrides
    from layeredge_dist.pipeline.cluster import connect

    s = job["settings"]
    cfg = with_overrides(RunConfig(), job["overrides"])
    rate = job["rate"]
    out: dict[str, Any] = {"rate": rate, "runs": [], "plan": None, "probe": None}
    with connect(address=job["address"], timeout_s=float(s["start_timeout_s"])):
        cluster = None
        chosen: dict[str, list[str]] = {}  # configuration -> its codec (and cuts) overrides, the same for every seed
        replicates: dict[str, list[dict[str, Any]]] = {name: [] for name in s["configs"]}
        n_seeds = int(s.get("seeds", 1))
        for k in range(n_seeds):  # seeds outermost: a drift in the machine's load hits every configuration alike
            seeded = reseeded(cfg, k)
            for name in s["configs"]:
                if name in chosen:
                    overrides = chosen[name]
                elif name != "plan":
                    overrides = chosen[name] = _overrides(name, s)
                else:
                    if cluster is None:
                        cluster, out["probe"] = _probe_cluster(cfg, int(s["probe_bytes"]), log)
                    plan, verification = _choose_plan(job["profile"], cfg, cluster, s, log, job.get("speeds"))
                    out["plan"] = plan.to_dict() | {"step_time_s": plan.step_time_s,
                                                     "total_sensitivity": plan.total_sensitivity,
                                                     "verification": verification}
                    overrides = chosen[name] = list(plan.overrides())
                c = with_overrides(seeded, overrides)
                log(f"[{rate}] {name}" + (f" (seed {k + 1} of {n_seeds}: data.seed {c.data.seed}, model.seed "
                                          f"{c.model.seed})" if n_seeds > 1 else "")
                    + f": training {s['steps']} steps (fwd {c.codecs.forward}, bwd {c.codecs.backward}"
                    + (f", edges {dict((e, dict(v)) for e, v in c.codecs.edges.items())}" if c.codecs.edges else "")
                    + f", cuts {list(c.pipeline.cuts) if c.pipeline.cuts is not None else 'even'}) ...")
                run, probe = _train_one(c, s, probe=cluster is None, probe_bytes=int(s["probe_bytes"]), log=log)
                run.update(overrides=overrides, seed={"data": c.data.seed, "model": c.model.seed})
                if probe is not None:
                    cluster, out["probe"] = _cluster_from_probe(probe, c.pipeline.stages), _probe_dict(probe)
                replicates[name].append(run)
        out["runs"] = [{"config": name, **merge(runs, WARMUP_STEPS)} for name, runs in replicates.items()]
        if job["profile"] is not None and cluster is not None:
            _add_predictions(out["runs"], cfg, job, _cluster_from_probe_dict(out["probe"], cfg.pipeline.stages, rate),
                             s, log)
    return out


def _add_predictions(runs: list[dict[str, Any]], cfg: Any, job: dict[str, Any], cluster: Any, s: dict[str, Any],
                     log: Callable[[str], None]) -> None:
    """The simulator's step time for every run (its cuts and codecs, the probed links) next to the measured one:
    ``prediction`` = :func:`layeredge_dist.bench.simulator.predict_config` (in-process profile as is, scaled
    for the cores, and with the stages' own measured compute; the host models come at the end, in
    :func:`_add_host_predictions`). Codec speeds: ``job["speeds"]`` (measured in-process next to the profile),
    else measured here."""
    from layeredge_dist.bench.simulator import _cores, config_codecs, predict_config
    from layeredge_dist.config import with_overrides
    from layeredge_dist.pipeline import planning
    from layeredge_dist.plan import ModelProfile

    profile = ModelProfile.from_dict(job["profile"])
    configs = {r["config"]: with_overrides(cfg, r["overrides"]) for r in runs}
    used = sorted({"fp32"} | {spec for c in configs.values() for sides in config_codecs(c).values()
                              for spec in sides.values()})
    speeds = dict(job.get("speeds") or {})
    missing = [u for u in used if u not in speeds]
    if missing:
        speeds.update(planning.measure_speeds(missing, max(profile.elements), width=job.get("edge_width")))
    for r in runs:
        c = configs[r["config"]]
        r["prediction"] = predict_config(c, profile, job["opt_s"], cluster, speeds, r["stage_medians"],
                                         r["step_s"], _cores())
        p = r["prediction"]
        log(f"  [{job['rate']}] {r['config']}: measured {r['step_s']:.3f} s, predicted {p['predicted_s']:.3f} s "
            f"({p['rel_error']:+.0%}), cores-scaled {p['predicted_cores_s']:.3f} s ({p['rel_error_cores']:+.0%}), "
            f"with the stages' measured compute {p['predicted_stage_compute_s']:.3f} s "
            f"({p['rel_error_stage_compute']:+.0%})")


def _probe_dict(probe: dict[tuple[int, int], Any]) -> dict[str, dict[str, float]]:
    return {f"s{a}->s{b}": {"bandwidth_Bps": p.bandwidth_Bps, "rtt_s": p.rtt_s} for (a, b), p in probe.items()}


def _cluster_from_probe_dict(probe: dict[str, dict[str, float]], stages: int, rate: str | None = None) -> Any:
    """The ClusterSpec of :func:`_probe_dict`'s form: each link's probed bandwidth, one-way latency RTT / 2, and
    -- given the testbed ``rate`` it was shaped to -- the depth of its ``tc tbf`` bucket (0 when unshaped), which
    lets a message smaller than the bucket pass at line speed after an idle gap; a star (every host has one port
    on the testbed's switch, which its outgoing / incoming messages share)."""
    from layeredge_dist.plan import ClusterSpec, LinkSpec
    from layeredge_dist.testbed import parse_rate

    burst = float(parse_rate(rate).burst_bytes) if rate is not None else 0.0
    return ClusterSpec(stages, tuple(LinkSpec(probe[f"s{k}->s{k + 1}"]["bandwidth_Bps"],
                                              probe[f"s{k}->s{k + 1}"]["rtt_s"] / 2, burst)
                                     for k in range(stages - 1)), star=True)


def _cluster_from_probe(probe: dict[tuple[int, int], Any], stages: int) -> Any:
    return _cluster_from_probe_dict(_probe_dict(probe), stages)


def _probe_cluster(cfg: Any, probe_bytes: int, log: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    """Probe the links with a short-lived pipeline (only when the plan comes before any other run)."""
    from layeredge_dist.pipeline import setup
    from layeredge_dist.pipeline.driver import Pipeline

    with Pipeline(setup.stage_spec(cfg), setup.placement(cfg)) as pipe:
        probe = pipe.probe_links(probe_bytes)
    return _cluster_from_probe(probe, cfg.pipeline.stages), _probe_dict(probe)


def _choose_plan(profile_dict: dict[str, Any] | None, cfg: Any, cluster: Any, s: dict[str, Any],
                 log: Callable[[str], None], speeds: Any = None) -> tuple[Any, dict[str, Any] | None]:
    """The planner's plan for the probed ``cluster`` and, with ``verify_steps`` and a budget, what the trial
    verification compared (:meth:`~layeredge_dist.pipeline.planning.Verification.to_dict`, else None);
    ``speeds``: the codec speeds measured on the real tensor size next to the profile (None: the built-in 64 MiB
    table, several times too fast for small tensors)."""
    from layeredge_dist.pipeline import planning
    from layeredge_dist.plan import ModelProfile

    if profile_dict is None:
        raise E2EError("the plan configuration needs a profile")
    profile = ModelProfile.from_dict(profile_dict)
    candidates = list(dict.fromkeys([*s["candidates"], *s["backward_candidates"]]))
    verification = None
    if s.get("verify_steps", 0) and s["budget"] is not None:
        verify = planning.trial_verifier(cfg, int(s["calib_steps"]), int(s["verify_steps"]), int(s["trial_batches"]),
                                         log=log, seeds=int(s.get("verify_seeds", 1)))
        plan, base, ver = planning.choose_verified_plan(profile, cfg.pipeline.stages, cluster, candidates,
                                                        budget=s["budget"], verify=verify,
                                                        schedule=cfg.pipeline.schedule, speeds=speeds)
        verification = ver.to_dict()
        for line in ver.lines():
            log("  " + line)
    else:
        plan, base = planning.choose_plan(profile, cfg.pipeline.stages, cluster, candidates, budget=s["budget"],
                                          schedule=cfg.pipeline.schedule, speeds=speeds)
    log(f"  plan for {cluster.describe()}: cuts {list(plan.cuts)}, codecs {plan.codecs_dict()}, predicted step "
        f"{plan.step_time_s:.3f} s (fp32 {base['fp32'].step_time_s:.3f} s), total sensitivity "
        f"{plan.total_sensitivity:.4g} (budget {s['budget']})")
    return plan, verification


def _train_one(cfg: Any, s: dict[str, Any], probe: bool, probe_bytes: int,
               log: Callable[[str], None]) -> tuple[dict[str, Any], Any]:
    """Train one configuration on a fresh pipeline; returns its figures (and the link probe when asked)."""
    from layeredge_dist.bench.simulator import stage_medians
    from layeredge_dist.pipeline import setup
    from layeredge_dist.pipeline.driver import Pipeline
    from layeredge_dist.pipeline.train import Events, LoopConfig, train

    curve: list[dict[str, float]] = []
    clock = {"train_s": 0.0, "t0": time.perf_counter()}

    reports: list[Any] = []

    class _Ev(Events):
        def step(self, step: int, loss: float, result: Any) -> None:
            clock["train_s"] += result.seconds
            reports.append(result.reports)

        def evaluated(self, step: int, val_loss: float) -> None:
            curve.append({"step": step, "train_s": clock["train_s"], "wall_s": time.perf_counter() - clock["t0"],
                          "val_loss": val_loss})

    steps = int(s["steps"])
    links = None
    with Pipeline(setup.stage_spec(cfg), setup.placement(cfg)) as pipe:
        if probe:
            links = pipe.probe_links(probe_bytes)
            log("  links: " + ", ".join(f"s{a}->s{b} {p.bandwidth_Bps * 8 / 1e6:.1f} Mbit/s (RTT "
                                        f"{p.rtt_s * 1e3:.2f} ms)" for (a, b), p in links.items()))
        clock["t0"] = time.perf_counter()
        res = train(pipe, setup.workload(cfg), LoopConfig(steps, eval_every=int(s["eval_every"]),
                                                          eval_batches=int(s["eval_batches"])), _Ev())
        stats = pipe.stats()
        placement = [{"stage": i["stage"], "node_ip": i["node_ip"]} for i in pipe.infos]
    steady = res.step_seconds[WARMUP_STEPS:] or res.step_seconds
    traffic = _traffic(stats, cfg.pipeline.stages, steps)
    run = {
        "step_s": statistics.median(steady), "step_s_mean": statistics.fmean(steady),
        "final_val_loss": curve[-1]["val_loss"] if curve else math.nan, "final_train_loss": res.losses[-1],
        "val_curve": curve, "train_s": clock["train_s"], "wall_s": res.wall_s,
        "codecs": {"forward": cfg.codecs.forward, "backward": cfg.codecs.backward,
                   "edges": {k: dict(v) for k, v in cfg.codecs.edges.items()}},
        "cuts": list(cfg.pipeline.cuts) if cfg.pipeline.cuts is not None else None,
        "placement": placement, "step_seconds": res.step_seconds, **traffic,
        "stage_medians": stage_medians(reports[WARMUP_STEPS:] or reports),
    }
    log(f"  step p50 {run['step_s']:.3f} s, final val {run['final_val_loss']:.4f}, "
        f"{run['bytes_per_step'] / 1e6:.3f} MB/step between stages, bits fwd {run['bits_fwd']:.2f} / bwd "
        f"{run['bits_bwd']:.2f}")
    return run, links


def _traffic(stats: Sequence[Any], stages: int, steps: int) -> dict[str, Any]:
    """Inter-stage traffic per training step from the senders' counters. Validation sends activations too; the
    gradients crossing a cut have the activation's shape and flow only in training, so training's forward bytes
    are the forward bits per element times the backward elements."""
    from layeredge_dist.types import Direction, TensorRole

    fwd: dict[str, list[int]] = {}  # "s0->s1" -> [elements, wire bytes]
    bwd: dict[str, list[int]] = {}
    for st in stats:
        if st.direction is not Direction.SEND:
            continue
        a, b = st.edge.src.index, st.edge.dst.index
        if a >= stages or b >= stages:
            continue  # the driver's host endpoint
        if st.role is TensorRole.ACTIVATION:
            acc = fwd.setdefault(f"s{a}->s{b}", [0, 0])
        elif st.role is TensorRole.GRADIENT:
            acc = bwd.setdefault(f"s{b}->s{a}", [0, 0])  # keyed by the activation edge it belongs to
        else:
            continue
        acc[0] += st.elements
        acc[1] += st.wire_bytes
    per_edge: dict[str, dict[str, float]] = {}
    for key in sorted(set(fwd) | set(bwd)):
        fe, fb = fwd.get(key, [0, 0])
        be, bb = bwd.get(key, [0, 0])
        bits_f = 8.0 * fb / fe if fe else 0.0
        per_edge[key] = {"forward": bits_f / 8.0 * be / steps, "backward": bb / steps,
                         "bits_fwd": bits_f, "bits_bwd": 8.0 * bb / be if be else 0.0,
                         "elements_per_step": be / steps}
    fe_all = sum(v[0] for v in fwd.values())
    fb_all = sum(v[1] for v in fwd.values())
    be_all = sum(v[0] for v in bwd.values())
    bb_all = sum(v[1] for v in bwd.values())
    return {
        "bits_fwd": 8.0 * fb_all / fe_all if fe_all else 0.0,
        "bits_bwd": 8.0 * bb_all / be_all if be_all else 0.0,
        "bytes_per_step": sum(e["forward"] + e["backward"] for e in per_edge.values()),
        "bytes_per_step_per_edge": per_edge,
    }


# --------------------------------------------------------------------------------------------- plot


def plot(result: dict[str, Any], path: str) -> str:
    """One PNG: a row per rate with validation loss vs cumulative training time per configuration (left; with
    several seeds the mean curve and the seeds' range as a band) and bytes per training step per edge and direction
    (right). Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = list(result["rates"])
    fig, axes = plt.subplots(len(rates), 2, figsize=(12, 3.8 * len(rates)), squeeze=False)
    for i, rate in enumerate(rates):
        rows = [r for r in result["rows"] if r["bandwidth"] == rate]
        ax = axes[i][0]
        for r in rows:
            xs = [p["train_s"] for p in r["val_curve"]]
            ys = [p["val_loss"] for p in r["val_curve"]]
            reps = r.get("replicates") or []
            seeds = f", mean of {len(reps)} seeds" if len(reps) > 1 else ""
            line, = ax.plot(xs, ys, marker="o", ms=3, label=f"{r['config']} (p50 {r['step_s']:.2f} s/step{seeds})")
            if len(reps) > 1:  # the seeds' range at each evaluation, at the mean curve's training time
                lo = [min(rep["val_curve"][k]["val_loss"] for rep in reps) for k in range(len(xs))]
                hi = [max(rep["val_curve"][k]["val_loss"] for rep in reps) for k in range(len(xs))]
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
        target = result["targets"].get(rate, {}).get("loss")
        if target is not None:
            ax.axhline(target, color="grey", ls="--", lw=0.8, label=f"target {target:.3f}")
        ax.set_title(f"{rate}: validation loss vs training time")
        ax.set_xlabel("cumulative training time (s, evaluation excluded)")
        ax.set_ylabel("validation loss (nats)")
        ax.legend(fontsize=8)
        ax = axes[i][1]
        edges = sorted({e for r in rows for e in r["bytes_per_step_per_edge"]})
        width = 0.8 / max(1, len(rows))
        for j, r in enumerate(rows):
            xs = [k + j * width for k in range(len(edges))]
            f = [r["bytes_per_step_per_edge"].get(e, {}).get("forward", 0.0) / 1e3 for e in edges]
            b = [r["bytes_per_step_per_edge"].get(e, {}).get("backward", 0.0) / 1e3 for e in edges]
            bars = ax.bar(xs, f, width, label=f"{r['config']} fwd")
            ax.bar(xs, b, width, bottom=f, color=bars.patches[0].get_facecolor(), alpha=0.45,
                   label=f"{r['config']} bwd")
        ax.set_xticks([k + width * (len(rows) - 1) / 2 for k in range(len(edges))], edges)
        ax.set_ylabel("kB per training step (solid fwd, light bwd)")
        ax.set_title(f"{rate}: bytes per step per edge")
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
