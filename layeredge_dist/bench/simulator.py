"""Simulator benchmark: the planner's predicted step time against the step time measured on a real pipeline.

In one run, on the demo model (byte-level GPT, 3 stages, one per node of a local 3-node Ray cluster on
127.0.0.1, ``connect(None, 3, ...)``):

1. the model's profile is measured in this process (:func:`layeredge_dist.pipeline.planning.measure`: per-block
   forward / backward time per micro-batch with ONE torch thread, parameter bytes, activation elements, the
   sensitivity of ``--codecs`` at every boundary after ``--calib-steps`` training steps), plus the optimizer time
   per block and the encode / decode speed of every codec used on a tensor of the real micro-batch size;
2. a real pipeline is started and :meth:`Pipeline.probe_links` measures every link's bandwidth and RTT; the
   :class:`~layeredge_dist.plan.ClusterSpec` the simulator gets has those bandwidths and a one-way latency of
   RTT / 2 per message;
3. for each configuration -- fp32 edges with 1F1B, fp32 with GPipe, uniform int8 with 1F1B and the plan the
   planner chooses under ``--budget`` (total sensitivity; its cuts and per-edge codecs) -- the pipeline runs
   ``--warmup`` + ``--steps`` training steps and the median measured step time is compared with
   :func:`layeredge_dist.plan.predict` of the same cuts, codecs, schedule and micro-batches.

The links are whatever loopback gives (unshaped, typically GB/s); the testbed with shaped links (100 Mbit/s - 1
Gbit/s in network namespaces) comes later, and there the network share of the step is what the simulator must get
right. On loopback the step is compute-bound, so this benchmark mostly checks the compute and schedule model.

CPU contention: the simulator assumes each stage has its own core. On the 2-core development machines the 3 stage
processes (plus the driver and Ray) share 2 cores, so compute stretches whenever more stages than cores are busy.
Every row therefore also reports a ``cores`` correction: the block (and optimizer) times scaled by
``stages / cores`` when ``stages > cores`` (``--cores``, default: the CPUs this process may run on; a fraction
such as ``1.3`` stands for cores shared with other work), which assumes every stage is always busy (an upper
bound: 1F1B/GPipe bubbles leave stages idle). Both predictions and their relative errors ``(predicted - measured)
/ measured`` are reported; neither models Ray's per-call task dispatch or the driver's own work. To separate the
schedule-and-link model from the compute times, a third prediction replays the same schedule and link model with
the forward / backward / optimizer seconds the stages themselves reported in the measured steps
(``predicted_stage_compute_s``) and ``compute_slowdown`` is their ratio to the in-process profile's; the load
average of the machine before and after is recorded too (the development machines are shared).

JSON: ``{"rows": [{"bandwidth", "config", "predicted_s", "measured_s", "rel_error", "predicted_cores_s",
"rel_error_cores", ...}], ...}``.

``--testbed`` (root) measures on shaped links instead: a 3-host testbed (network namespaces, ``tc tbf``), one
stage per host, for every rate of ``--rates`` (default 100mbit,1gbit,unshaped) fp32, bf16, the planner's plan
(for the probed links, within ``--budget`` one-shot sensitivity) and a strong fixed configuration (int4/rht
forward, ef(int8) backward), ``--steps`` measured steps each after 3 warm-up steps -- the runs of ``layeredge
bench e2e`` made short. The testbed's hosts share this machine's cores, so the simulator predicts with a
:class:`~layeredge_dist.plan.HostModel` (cores shared by all stages, codecs on the stage threads, per-message
and per-step overhead, a compute scale) fitted on separate runs after the measured ones (fp32 and the strong
configuration, ``--host-calib-steps`` steps each, on unshaped links and at the slowest rate); every row is a
different run, predicted, not fitted. Its rows: ``predicted_s`` / ``rel_error`` from that host model, ``predicted_plain_s`` /
``rel_error_plain`` from the plain replay (a core per stage, codecs beside the link), ``predicted_stage_compute_s``
with the stages' own measured compute, ``predicted_cv_s`` / ``rel_error_cv`` from a host model fitted on all the
other rows (leave-one-out: more data for the fit, which averages a shared machine's run-to-run noise, each
prediction still out of sample).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from layeredge_dist.bench import output
from layeredge_dist.config import ConfigError, RunConfig, with_overrides

DEMO = ("data.batch_size=8", "data.context=128", "pipeline.microbatches=4", "pipeline.stages=3",
        "pipeline.schedule=1f1b", "train.eval_every=0")
DEFAULT_CODECS = "fp16,bf16,int8,int4,int2"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``layeredge bench simulator``."""
    p.add_argument("--steps", type=int, default=10, help="measured training steps per configuration (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured steps first (default 2)")
    p.add_argument("--budget", type=float, default=0.05,
                   help="accuracy budget (total sensitivity) of the planned configuration (default 0.05)")
    p.add_argument("--codecs", default=DEFAULT_CODECS, help=f"planner candidates (default {DEFAULT_CODECS})")
    p.add_argument("--calib-steps", type=int, default=20, help="in-process training steps before measuring")
    p.add_argument("--calib-batches", type=int, default=2, help="calibration batches for sensitivity (default 2)")
    p.add_argument("--reps", type=int, default=7, help="timed repetitions per block in the profile (default 7)")
    p.add_argument("--cores", type=float, default=None,
                   help="CPU cores for the contention correction (default: CPUs this process may use)")
    p.add_argument("--nodes", type=int, default=3, help="local Ray nodes (default 3: one per stage)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a run config field (see layeredge train --help)")
    p.add_argument("--testbed", action="store_true",
                   help="measure on a shaped 3-host testbed (root) at --rates instead of a local cluster; predict "
                   "with a host model calibrated on separate runs")
    p.add_argument("--rates", default="100mbit,1gbit,unshaped",
                   help="with --testbed: link rates, comma-separated (default 100mbit,1gbit,unshaped)")
    p.add_argument("--hosts", type=int, default=3, help="with --testbed: emulated hosts (default 3)")
    p.add_argument("--host-calib-steps", type=int, default=15,
                   help="with --testbed: steps of each host-model calibration run (default 15; 0 = plain "
                   "predictions only)")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _measure_steps(cfg: RunConfig, steps: int, warmup: int, probe: bool) -> dict[str, Any]:
    """Median step time of ``steps`` training steps (after ``warmup``) of a fresh pipeline; with ``probe``, also
    the link probe results."""
    from layeredge_dist.pipeline import setup
    from layeredge_dist.pipeline.driver import Pipeline

    work = setup.workload(cfg)
    with Pipeline(setup.stage_spec(cfg), setup.placement(cfg)) as pipe:
        for k in range(warmup):
            pipe.call(work.batch(k), "train")
        links = pipe.probe_links() if probe else None
        times = []
        stage_t: list[list[Any]] = []
        for k in range(warmup, warmup + steps):
            res = pipe.call(work.batch(k), "train")
            times.append(res.seconds)
            stage_t.append(res.reports)
    per_stage = stage_medians(stage_t)
    return {"step_s": times, "median_s": statistics.median(times), "stages": per_stage, "links": links}


def _stage_compute_prediction(profile: Any, cuts: tuple[int, ...], codecs: Any, cluster: Any, cfg: RunConfig,
                              speeds: Any, stages: list[dict[str, float]], opt: list[float]) -> tuple[float, float]:
    """The simulator's step with the stages' own measured compute (median forward / backward / optimizer seconds
    per step from their reports, per micro-batch for the schedule) and the same link model; and the ratio of that
    compute to the in-process profile's (forward + backward + optimizer, summed over stages)."""
    from layeredge_dist.plan.simulator import PipelineModel, resolve_codecs
    from layeredge_dist.schedule import simulate

    m = cfg.pipeline.microbatches
    model = PipelineModel(profile, cuts, cluster, schedule=cfg.pipeline.schedule, microbatches=m, speeds=speeds)
    act, grad = model.comm_times(resolve_codecs(codecs, model.num_stages))
    fwd = [s["forward_s"] / m for s in stages]
    bwd = [s["backward_s"] / m for s in stages]
    opt_meas = [s["optimizer_s"] for s in stages]
    step = simulate(model.build_schedule(), fwd, bwd, act, grad, opt_meas, True).step_time
    prof = sum(m * (f + b) for f, b in zip(model.fwd, model.bwd)) + sum(opt)
    meas = sum(s["forward_s"] + s["backward_s"] + s["optimizer_s"] for s in stages)
    return step, meas / prof if prof > 0 else float("nan")


def stage_medians(reports: Sequence[Sequence[Any]]) -> list[dict[str, float]]:
    """Per stage, the median over steps of the seconds its reports give (``reports[step]`` = one report per
    stage, any order; each with ``stage``, ``forward_s``, ``backward_s``, ``optimizer_s``, ``wait_s``,
    ``total_s``)."""
    ordered = [sorted(r, key=lambda x: x.stage) for r in reports]
    return [{f: statistics.median(float(getattr(r[s], f)) for r in ordered)
             for f in ("forward_s", "backward_s", "optimizer_s", "wait_s", "total_s")}
            for s in range(len(ordered[0]) if ordered else 0)]


def config_codecs(c: RunConfig) -> dict[str, dict[str, str]]:
    """Every edge's ``{"forward", "backward"}`` codec of run config ``c`` (per-edge overrides over the defaults)."""
    stages = c.pipeline.stages
    return {f"s{k}->s{k + 1}": {d: c.codecs.edges.get(f"s{k}->s{k + 1}", {}).get(d, getattr(c.codecs, d))
                                for d in ("forward", "backward")} for k in range(stages - 1)}


def _config_inputs(c: RunConfig, profile: Any, opt_blocks: Sequence[float]
                   ) -> tuple[tuple[int, ...], dict[str, dict[str, str]], list[float]]:
    """Cuts, codec per edge and direction, and optimizer seconds per stage of run config ``c``."""
    from layeredge_dist.pipeline import setup

    n = c.pipeline.stages
    cuts = tuple(setup.cuts(c, setup.model_spec(c)))
    bounds = (0, *cuts, profile.n_blocks)
    return cuts, config_codecs(c), [sum(opt_blocks[bounds[s]:bounds[s + 1]]) for s in range(n)]


def host_stepper(c: RunConfig, profile: Any, opt_blocks: Sequence[float], cluster: Any,
                 speeds: Any) -> Callable[[Any], float]:
    """``host -> step seconds`` of run config ``c`` on a :class:`~layeredge_dist.plan.HostModel` (shared cores,
    codecs on the stage threads, per-message and per-step overheads); the pipeline model is built once, so a fit
    over many host models only replays the schedule."""
    from layeredge_dist.plan import PipelineModel
    from layeredge_dist.plan.simulator import resolve_codecs

    cuts, codec_map, opt = _config_inputs(c, profile, opt_blocks)
    model = PipelineModel(profile, cuts, cluster, schedule=c.pipeline.schedule, microbatches=c.pipeline.microbatches,
                          speeds=speeds, opt_time_s=opt)
    pairs = resolve_codecs(codec_map, model.num_stages)
    return lambda host: model.host_step_time(pairs, host)


def host_prediction(c: RunConfig, profile: Any, opt_blocks: Sequence[float], cluster: Any, speeds: Any,
                    host: Any) -> float:
    """The simulator's step seconds for run config ``c`` on ``host`` (see :func:`host_stepper`)."""
    return host_stepper(c, profile, opt_blocks, cluster, speeds)(host)


def fit_config_host(runs: Sequence[tuple[RunConfig, Any, float]], profile: Any, opt_blocks: Sequence[float],
                    speeds: Any, cores: float) -> tuple[Any, float]:
    """Calibrate a :class:`~layeredge_dist.plan.HostModel` with ``cores`` shared cores on measured runs
    (``(run config, cluster, median step seconds)``): :func:`~layeredge_dist.plan.fit_host`. Returns the model
    and its largest relative error on those runs."""
    from layeredge_dist.plan import HostModel, fit_host

    steppers = [host_stepper(c, profile, opt_blocks, cl, speeds) for c, cl, _ in runs]
    return fit_host(lambda h: [step(h) for step in steppers], [m for _, _, m in runs], HostModel(cores))


def cross_validated_hosts(runs: Sequence[tuple[RunConfig, Any, float]], profile: Any, opt_blocks: Sequence[float],
                          speeds: Any, cores: float) -> list[tuple[Any, float]]:
    """Leave-one-out host models over measured runs ``(run config, cluster, median step seconds)``: per run, the
    :class:`~layeredge_dist.plan.HostModel` (``cores`` shared cores) fitted on all the other runs and its predicted
    step for this one (:func:`~layeredge_dist.plan.cross_validate_host`)."""
    from layeredge_dist.plan import HostModel, cross_validate_host

    steppers = [host_stepper(c, profile, opt_blocks, cl, speeds) for c, cl, _ in runs]
    return cross_validate_host(lambda i, h: steppers[i](h), [m for _, _, m in runs], HostModel(cores))


def predict_config(c: RunConfig, profile: Any, opt_blocks: Sequence[float], cluster: Any, speeds: Any,
                   stages: list[dict[str, float]], measured_s: float, cores: float) -> dict[str, Any]:
    """Predicted step times of run config ``c`` (its cuts, codecs, schedule, micro-batches) against
    ``measured_s``: from the in-process ``profile`` as is, scaled by ``stages / cores`` when there are fewer
    cores than stages, and with the stages' own measured compute (``stages``: :func:`stage_medians`).
    Relative errors are ``(predicted - measured) / measured``."""
    from layeredge_dist.plan import predict

    n = c.pipeline.stages
    cuts, codec_map, opt = _config_inputs(c, profile, opt_blocks)
    factor = max(1.0, n / cores)
    preds = {tag: predict(profile.with_compute_scaled(f), cuts, codec_map, cluster, c.pipeline.schedule,
                          c.pipeline.microbatches, speeds=speeds, opt_time_s=[o * f for o in opt],
                          method="simulate").step_time_s
             for tag, f in (("", 1.0), ("_cores", factor))}
    stage_pred, slowdown = _stage_compute_prediction(profile, cuts, codec_map, cluster, c, speeds, stages, opt)
    return {
        "cuts": list(cuts), "codecs": codec_map, "schedule": c.pipeline.schedule,
        "predicted_s": preds[""], "measured_s": measured_s, "rel_error": (preds[""] - measured_s) / measured_s,
        "predicted_cores_s": preds["_cores"], "rel_error_cores": (preds["_cores"] - measured_s) / measured_s,
        "predicted_stage_compute_s": stage_pred,
        "rel_error_stage_compute": (stage_pred - measured_s) / measured_s, "compute_slowdown": slowdown,
    }


def _testbed_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """``bench e2e`` rows as simulator rows: the host model's prediction first (the plain one when there is no
    host model), then the plain replay's and the stage-compute one."""
    rows = []
    for r in result["rows"]:
        p = r.get("prediction")
        if p is None:
            continue
        host = "predicted_host_s" in p
        rows.append({
            "bandwidth": r["bandwidth"], "config": r["config"],
            "predicted_s": p["predicted_host_s"] if host else p["predicted_s"], "measured_s": r["step_s"],
            "rel_error": p["rel_error_host"] if host else p["rel_error"],
            "predicted_plain_s": p["predicted_s"], "rel_error_plain": p["rel_error"],
            "predicted_stage_compute_s": p["predicted_stage_compute_s"],
            "rel_error_stage_compute": p["rel_error_stage_compute"], "compute_slowdown": p["compute_slowdown"],
            "predicted_cv_s": p.get("predicted_host_cv_s"), "rel_error_cv": p.get("rel_error_host_cv"),
            "cuts": p["cuts"], "codecs": p["codecs"], "bandwidth_measured_mbit": r["bandwidth_measured_mbit"],
            "measured_step_s": r["step_seconds"], "measured_stages": r["stage_medians"],
        })
    return rows


def _run_testbed(args: argparse.Namespace, log: Callable[[str], None]) -> int:
    """``--testbed``: the short e2e runs on shaped links, reported as predicted vs measured step times."""
    from layeredge_dist.bench.e2e import WARMUP_STEPS, E2EError, E2ESettings, run_e2e
    from layeredge_dist.plan import HostModel
    from layeredge_dist.testbed import TestbedError, parse_rate

    steps = WARMUP_STEPS + args.steps
    try:
        settings = E2ESettings(
            rates=tuple(r.strip() for r in args.rates.split(",") if r.strip()), steps=steps, eval_every=steps,
            eval_batches=1, budget=args.budget, trial_steps=0, calib_steps=args.calib_steps,
            calib_batches=args.calib_batches, hosts=args.hosts, overrides=tuple(args.overrides),
            host_calib_steps=args.host_calib_steps)
        for r in settings.rates:
            parse_rate(r)
    except ValueError as err:
        print(f"layeredge bench simulator: {err}", file=sys.stderr)
        return 2
    try:
        result = run_e2e(settings, log=log, progress=not args.json)
    except (TestbedError, E2EError) as err:
        print(f"layeredge bench simulator: {err}", file=sys.stderr)
        return 1
    out = {"rows": _testbed_rows(result), "host_calibration": result.get("host_calibration"),
           "rates": result["rates"], "plans": result["plans"], "codec_speeds_Bps": result.get("codec_speeds_Bps"),
           "testbed": result.get("testbed"), "load_average": result["load_average"], "seconds": result["seconds"],
           "steps": args.steps, "warmup": WARMUP_STEPS}
    if output.emit(out, args):
        return 0
    cal = out["host_calibration"]
    if cal:
        print(f"host model: {HostModel.from_dict(cal['host']).describe()}; fitted on separate runs "
              + ", ".join(f"{r['config']} at {r['rate']} {r['step_s']:.3f} s" for r in cal["runs"]))
    head = (f"{'bandwidth':10s} {'config':8s} {'predicted s':>11s} {'measured s':>10s} {'rel err':>8s} "
            f"{'plain s':>8s} {'rel err':>8s} {'stage compute s':>15s} {'rel err':>8s} {'cv err':>7s}")
    print(head)
    print("-" * len(head))
    for r in out["rows"]:
        print(f"{r['bandwidth']:10s} {r['config']:8s} {r['predicted_s']:11.4f} {r['measured_s']:10.4f} "
              f"{r['rel_error']:+8.1%} {r['predicted_plain_s']:8.4f} {r['rel_error_plain']:+8.1%} "
              f"{r['predicted_stage_compute_s']:15.4f} {r['rel_error_stage_compute']:+8.1%} "
              + (f"{r['rel_error_cv']:+7.1%}" if r["rel_error_cv"] is not None else f"{'-':>7s}"))
    print("predicted: the simulator on the calibrated host model; plain: a core per stage, codecs beside the link; "
          "stage compute: the plain replay fed the stages' measured compute; cv: the host model fitted on all the "
          "other rows (leave-one-out); rel err = (predicted - measured) / "
          f"measured; load average {out['load_average']['start'][0]:.2f} -> {out['load_average']['end'][0]:.2f}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; exit code 2 for bad arguments, 1 when the cluster or a stage fails."""
    if args.steps < 1 or args.warmup < 0 or args.nodes < 1 or args.calib_batches < 1 or args.calib_steps < 0:
        print("error: need --steps >= 1, --warmup >= 0, --nodes >= 1, --calib-batches >= 1, --calib-steps >= 0",
              file=sys.stderr)
        return 2
    if args.testbed:
        return _run_testbed(args, output.progress(args))
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    try:
        cfg = with_overrides(RunConfig(), list(DEMO) + list(args.overrides))
    except ConfigError as err:
        print(f"layeredge: config error: {err}", file=sys.stderr)
        return 2
    if cfg.pipeline.schedule not in ("gpipe", "1f1b") or cfg.pipeline.chunks != 1:
        print("error: the simulator benchmark runs gpipe / 1f1b without interleaving", file=sys.stderr)
        return 2
    from layeredge_dist.pipeline import planning
    from layeredge_dist.pipeline.cluster import ClusterError, connect
    from layeredge_dist.plan import ClusterSpec, LinkSpec, format_bandwidth

    log = output.progress(args)
    load0 = list(os.getloadavg())
    cores = args.cores or _cores()
    stages = cfg.pipeline.stages
    factor = max(1.0, stages / cores)
    t0 = time.perf_counter()
    log(f"measuring the profile in-process (1 thread): {args.calib_steps} training steps, {args.calib_batches} "
        f"calibration batches, codecs {', '.join(codecs)}")
    meas = planning.measure(cfg, args.calib_batches, args.calib_steps, codecs, reps=args.reps, optimizer=True)
    profile = meas.profile
    numel = max(profile.elements)
    out: dict[str, Any] = {"model": profile.name, "stages": stages, "microbatches": profile.micro_batches,
                           "cores": cores, "cores_factor": factor, "budget": args.budget,
                           "profile": profile.to_dict(), "opt_s_per_block": list(meas.opt_s),
                           "profile_seconds": meas.seconds, "links": "loopback, unshaped", "rows": []}
    configs: list[tuple[str, list[str]]] = [
        ("fp32 1f1b", ["pipeline.schedule=1f1b"]),
        ("fp32 gpipe", ["pipeline.schedule=gpipe"]),
        ("int8 1f1b", ["pipeline.schedule=1f1b", "codecs.forward=int8", "codecs.backward=int8"]),
    ]
    try:
        with connect(None, args.nodes, float(-(-stages // args.nodes)), 0.0, 120.0):
            from layeredge_dist.pipeline.driver import StageFailure

            measured: dict[str, dict[str, Any]] = {}
            cluster = None
            plan = None
            i = 0
            while i < len(configs):
                name, overrides = configs[i]
                c = with_overrides(cfg, overrides)
                log(f"{name}: {args.warmup} + {args.steps} training steps on the pipeline ...")
                try:
                    measured[name] = _measure_steps(c, args.steps, args.warmup, probe=cluster is None)
                except StageFailure as err:
                    print(f"layeredge: StageFailure ({name}): {err}", file=sys.stderr)
                    return 1
                if cluster is None:
                    probes = measured[name]["links"]
                    links = tuple(LinkSpec(probes[(k, k + 1)].bandwidth_Bps, probes[(k, k + 1)].rtt_s / 2)
                                  for k in range(stages - 1))
                    cluster = ClusterSpec(stages, links)
                    out["cluster"] = cluster.to_dict()
                    out["bandwidth"] = ", ".join(f"s{k}->s{k + 1} {format_bandwidth(lk.bandwidth_Bps)} (RTT "
                                                 f"{2 * lk.latency_s * 1e3:.2f} ms)" for k, lk in enumerate(links))
                    plan, _ = planning.choose_plan(profile, stages, cluster, codecs, budget=args.budget,
                                                   schedule=cfg.pipeline.schedule)
                    configs.append((f"plan@{args.budget:g} {plan.schedule}", plan.overrides()))
                    out["plan"] = plan.to_dict()
                measured[name]["overrides"] = overrides
                i += 1
    except ClusterError as err:
        print(f"layeredge: ClusterError: {err}", file=sys.stderr)
        return 1
    assert cluster is not None
    used = {"fp32", "int8"} | ({c for sides in plan.codecs.values() for c in sides.values()} if plan else set())
    speeds = planning.measure_speeds(sorted(used), numel)
    out["codec_speeds_Bps"] = {k: list(v) for k, v in speeds.items()}
    for name, m in measured.items():
        c = with_overrides(cfg, m["overrides"])
        out["rows"].append({"bandwidth": out["bandwidth"], "config": name,
                            **predict_config(c, profile, list(meas.opt_s), cluster, speeds, m["stages"],
                                             m["median_s"], cores),
                            "measured_step_s": m["step_s"], "measured_stages": m["stages"]})
    out["seconds"] = time.perf_counter() - t0
    out["load_average"] = {"start": load0, "end": list(os.getloadavg())}
    if output.emit(out, args):
        return 0
    print(f"{profile.name}: {stages} stages on {args.nodes} local Ray node(s), {profile.micro_batches} micro-batches;"
          f" links {out['bandwidth']} (loopback, unshaped; shaped links come with the testbed)")
    print(f"profile measured in-process with 1 thread; {cores} core(s) for {stages} stage processes: cores "
          f"correction x{factor:.2f}")
    head = (f"{'config':22s} {'predicted s':>12s} {'measured s':>11s} {'rel err':>8s} {'pred (cores) s':>15s} "
            f"{'rel err':>8s} {'pred (stage compute) s':>23s} {'rel err':>8s} {'compute x':>10s}")
    print(head)
    for r in out["rows"]:
        print(f"{r['config']:22s} {r['predicted_s']:12.4f} {r['measured_s']:11.4f} {r['rel_error']:+8.1%} "
              f"{r['predicted_cores_s']:15.4f} {r['rel_error_cores']:+8.1%} {r['predicted_stage_compute_s']:23.4f} "
              f"{r['rel_error_stage_compute']:+8.1%} {r['compute_slowdown']:10.2f}")
    print("rel err = (predicted - measured) / measured; the simulator assumes one core per stage; cores: compute "
          "scaled by stages / cores (every stage always busy: an upper bound); stage compute: the same schedule and "
          "link model fed the compute seconds the stages reported (compute x: their ratio to the in-process "
          f"profile); load average {load0[0]:.2f} at the start, {out['load_average']['end'][0]:.2f} at the end")
    return 0
