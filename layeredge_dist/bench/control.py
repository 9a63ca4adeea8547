"""The online controller under a bandwidth drop, on a shaped 3-host testbed (root; see ``cluster/testbed.md``).

The demo model (byte-level GPT, 3 stages, 1F1B, one stage per host, the e2e bench's batch shape and testbed
overrides) trains ``--steps`` steps twice from the same seed on the same batches, with every link shaped to
``--rate-before`` (default 1gbit) at the start and switched to ``--rate-after`` (default 100mbit) after step
``--drop-step``:

a. ``off``: fixed fp32 edges, no controller;
b. ``on``: the same start, plus the online controller (:class:`layeredge_dist.pipeline.controller.Controller`):
   every ``--every`` steps it probes the links (``Pipeline.probe_links``), re-plans the codec per edge and direction
   with the model profile's sensitivities within ``--budget`` total sensitivity among ``--codecs``, and switches
   when the predicted step time drops by at least ``--min-gain`` (default 0.1, twice the controller's default:
   hysteresis against probe noise on a shared, loaded machine). Each re-plan probes every link twice and keeps the
   faster reading (``ControllerConfig.probe_repeats``).

With ``--rounds R`` the pair runs R times, alternating the order (off, on, then on, off, ...) so that the drift of
a shared machine's load hits both arms; step times are pooled over the rounds per phase.

The profile is measured in this process before the testbed starts (:func:`layeredge_dist.pipeline.planning.measure`
after ``--calib-steps`` training steps on ``--calib-batches`` calibration batches) and handed to the driver as a file.

The drop is synchronous with the training loop: the driver (inside host 0's namespace) runs an event sink after the
controller's; after step ``--drop-step`` it writes a request file and waits; this command (in the root namespace,
where ``tc -n`` reaches every namespace) changes the shaping of every link (``Testbed.set_rate``) and acknowledges;
training goes on. So the controller's re-plan at the drop step itself still sees the old rate, and the first
re-plan that can see the drop is the next one. The driver also writes one JSON line per step (step, seconds, loss)
to a progress file.

Reported: the step-time p50 before the drop (steps after the first 3), after the drop without the controller, after
the drop with the controller before and after its switch, the switch step, the number of re-plan intervals after
the drop it came in (``ceil((switch - drop) / every)``), the speed-up from switching (off's p50 after the drop over
on's p50 after the switch), the codecs before and after, and every decision (step, measured bandwidth per link,
predicted step now / with the best plan, chosen codecs, switched or not).

Targets (exit status 1 when one is missed): the controller switches within two re-plan intervals after the drop,
to codecs with fewer bits per element, and its step time after the switch is lower than without switching.
JSON: ``{"rounds": [{"off": ..., "on": ...}, ...], "summary": {...}, "targets": {...}, "settings": ..., ...}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from layeredge_dist.bench import output
from layeredge_dist.bench.e2e import DEMO

MODES = ("off", "on")
WARMUP_STEPS = 3
DEFAULT_CANDIDATES = ("fp32", "bf16", "int8", "int4")


@dataclass(frozen=True)
class ControlSettings:
    """What :func:`run_control` measures; see the module docstring. ``overrides`` are run-config ``--set`` strings
    applied after :data:`~layeredge_dist.bench.e2e.DEMO` (e.g. a smaller model)."""

    steps: int = 60
    every: int = 10
    drop_step: int = 20
    rate_before: str = "1gbit"
    rate_after: str = "100mbit"
    budget: float | None = 0.05
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    min_gain: float = 0.1
    max_intervals: int = 2
    rounds: int = 1
    calib_steps: int = 20
    calib_batches: int = 2
    hosts: int = 3
    overrides: tuple[str, ...] = ()
    probe_bytes: int = 4 << 20
    start_timeout_s: float = 180.0
    run_timeout_s: float = 1800.0
    drop_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.every < 1 or self.hosts < 2 or self.max_intervals < 1 or self.rounds < 1:
            raise ValueError("need every >= 1, hosts >= 2, max_intervals >= 1 and rounds >= 1")
        if not WARMUP_STEPS < self.drop_step < self.steps:
            raise ValueError(f"need {WARMUP_STEPS} < drop_step < steps, got drop_step {self.drop_step}, "
                             f"steps {self.steps}")
        if not self.candidates:
            raise ValueError("need at least one candidate codec")
        if not 0.0 <= self.min_gain < 1.0:
            raise ValueError(f"min_gain must be in [0, 1), got {self.min_gain}")


# --------------------------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``layeredge bench control``."""
    d = ControlSettings()
    p.add_argument("--steps", type=int, default=d.steps, help=f"training steps per run (default {d.steps})")
    p.add_argument("--every", type=int, default=d.every, help=f"steps between re-plans (default {d.every})")
    p.add_argument("--drop-step", type=int, default=d.drop_step,
                   help=f"the links slow down after this step (default {d.drop_step})")
    p.add_argument("--rate-before", default=d.rate_before, help=f"link rate at the start (default {d.rate_before})")
    p.add_argument("--rate-after", default=d.rate_after, help=f"link rate after the drop (default {d.rate_after})")
    p.add_argument("--budget", type=float, default=d.budget,
                   help=f"controller's accuracy budget, total measured sensitivity (default {d.budget}); "
                   "negative = no budget")
    p.add_argument("--codecs", default=",".join(d.candidates),
                   help=f"controller candidates (default {','.join(d.candidates)})")
    p.add_argument("--min-gain", type=float, default=d.min_gain,
                   help=f"switch only for at least this predicted gain (default {d.min_gain})")
    p.add_argument("--rounds", type=int, default=d.rounds,
                   help=f"pairs of runs, alternating off, on / on, off; step times pooled (default {d.rounds})")
    p.add_argument("--calib-steps", type=int, default=d.calib_steps,
                   help=f"in-process training steps before profiling (default {d.calib_steps})")
    p.add_argument("--calib-batches", type=int, default=d.calib_batches,
                   help=f"calibration batches for the profile's sensitivity (default {d.calib_batches})")
    p.add_argument("--hosts", type=int, default=d.hosts, help=f"emulated hosts (default {d.hosts})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a run config field (see layeredge train --help), e.g. model.config.n_layer=3")


def run(args: argparse.Namespace) -> int:
    """``layeredge bench control``: 0 when the targets are met, 1 when one is missed or a run fails, 2 for bad
    arguments."""
    from layeredge_dist.testbed import TestbedError, parse_rate

    try:
        settings = ControlSettings(
            steps=args.steps, every=args.every, drop_step=args.drop_step, rate_before=args.rate_before,
            rate_after=args.rate_after, budget=None if args.budget is not None and args.budget < 0 else args.budget,
            candidates=tuple(c.strip() for c in args.codecs.split(",") if c.strip()), min_gain=args.min_gain,
            calib_steps=args.calib_steps, calib_batches=args.calib_batches, hosts=args.hosts,
            rounds=args.rounds, overrides=tuple(args.overrides))
        _base_config(settings)
        parse_rate(settings.rate_before)
        parse_rate(settings.rate_after)
    except ValueError as err:
        print(f"layeredge bench control: {err}", file=sys.stderr)
        return 2
    log = output.progress(args)

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        result = run_control(settings, log=log, progress=not args.json)
    except (TestbedError, ControlError) as err:
        print(f"layeredge bench control: {err}", file=sys.stderr)
        return 1
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if not output.emit(result, args):
        print(format_result(result))
    return 0 if result["targets"]["met"] else 1


# --------------------------------------------------------------------------------------------- orchestration


class ControlError(RuntimeError):
    """A driver run on the testbed failed; the message carries its last output."""


def _base_config(settings: ControlSettings) -> Any:
    from layeredge_dist.config import ConfigError, RunConfig, with_overrides

    try:
        return with_overrides(RunConfig(), list(DEMO) + list(settings.overrides))
    except ConfigError as err:
        raise ValueError(f"config error: {err}") from err


def run_control(settings: ControlSettings, log: Callable[[str], None] = lambda t: None,
                progress: bool = True) -> dict[str, Any]:
    """Measure the profile, bring up the testbed and Ray, run ``off`` then ``on`` (each with the drop), tear down;
    returns ``{"rounds", "summary", "targets", "settings", "profile", "testbed", "load_average", "seconds"}``."""
    from layeredge_dist.bench import testbed_job
    from layeredge_dist.pipeline import planning
    from layeredge_dist.testbed.netns import require_tools
    from layeredge_dist.testbed.ray_nodes import TESTBED_OVERRIDES

    require_tools()
    t_start = time.perf_counter()
    cfg = _base_config(settings)
    out: dict[str, Any] = {"settings": asdict(settings), "rounds": [], "demo": list(DEMO),
                           "load_average": {"start": list(os.getloadavg())}}
    log(f"profiling {cfg.model.family} in-process (1 thread): {settings.calib_steps} training steps, "
        f"{settings.calib_batches} calibration batches, codecs {', '.join(settings.candidates)} ...")
    t0 = time.perf_counter()
    meas = planning.measure(cfg, settings.calib_batches, settings.calib_steps, settings.candidates, optimizer=True)
    profile_json = meas.profile.to_json()
    out["profile"] = {"seconds": time.perf_counter() - t0, "name": meas.profile.name,
                      "n_blocks": meas.profile.n_blocks, "profile": meas.profile.to_dict()}
    with testbed_job.testbed_with_ray(settings.hosts, settings.rate_before, max(1.0, cfg.cluster.cpus_per_stage),
                                      settings.start_timeout_s, log) as (tb, nodes, out["testbed"]):
        profile_path = os.path.join(tb.work_dir, "profile.json")
        with open(profile_path, "w") as f:
            f.write(profile_json)
        for rnd in range(settings.rounds):
            out["rounds"].append({})
            for mode in (MODES if rnd % 2 == 0 else MODES[::-1]):  # off, on, on, off, ...: drift hits both arms
                tb.set_rate(settings.rate_before)
                tag = f"{mode}-{rnd}"
                job = {
                    "address": nodes.address, "mode": mode, "settings": asdict(settings), "profile": profile_path,
                    "overrides": list(DEMO) + list(settings.overrides) + list(TESTBED_OVERRIDES)
                    + [f"cluster.address={nodes.address}", f"run_dir={tb.work_dir}/run-{tag}",
                       "codecs.forward=fp32", "codecs.backward=fp32"],
                    "out": os.path.join(tb.work_dir, f"control-{tag}.json"),
                    "progress": os.path.join(tb.work_dir, f"control-{tag}.progress"),
                    "drop_request": os.path.join(tb.work_dir, f"control-{tag}.drop"),
                    "drop_ack": os.path.join(tb.work_dir, f"control-{tag}.drop-ack"),
                }
                log(f"[{tag}] training {settings.steps} steps at {tb.rate}, drop to {settings.rate_after} after step "
                    f"{settings.drop_step}" + (f", controller every {settings.every} steps" if mode == "on" else ""))
                res = _run_driver(tb, nodes, job, settings, progress, log)
                res["load_average_end"] = list(os.getloadavg())
                out["rounds"][-1][mode] = res
    out["summary"], out["targets"] = summarize(out["rounds"], settings)
    out["seconds"] = time.perf_counter() - t_start
    out["load_average"]["end"] = list(os.getloadavg())
    return out


def _run_driver(tb: Any, nodes: Any, job: dict[str, Any], settings: ControlSettings, progress: bool,
                log: Callable[[str], None]) -> dict[str, Any]:
    """Run :func:`_driver_main` inside host 0; switch the links' rate when it asks (after the drop step)."""
    from layeredge_dist.bench import testbed_job

    dropped_at: float | None = None
    proc, log_path = testbed_job.spawn(nodes, __name__, job, f"control-driver-{job['mode']}", progress)
    try:
        deadline = time.monotonic() + settings.run_timeout_s
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise ControlError(f"the {job['mode']} driver did not finish in {settings.run_timeout_s:g} s")
            if dropped_at is None and os.path.exists(job["drop_request"]):
                t0 = time.perf_counter()
                tb.set_rate(settings.rate_after)
                dropped_at = time.time()
                with open(job["drop_ack"] + ".tmp", "w") as f:
                    f.write(tb.rate)
                os.replace(job["drop_ack"] + ".tmp", job["drop_ack"])
                log(f"[{job['mode']}] step {settings.drop_step}: links switched to {tb.rate} "
                    f"({(time.perf_counter() - t0) * 1e3:.0f} ms)")
            time.sleep(0.05)
        rc = proc.returncode
    except BaseException:
        tb.stop(proc)
        raise
    if rc == 0 and dropped_at is None:
        raise ControlError(f"the {job['mode']} driver never asked for the drop")
    return testbed_job.result(job, rc, log_path, f"the {job['mode']} driver", ControlError)


# --------------------------------------------------------------------------------------------- figures


def _p50(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _bits(codecs: dict[str, dict[str, str]], numel: int = 1 << 16) -> float:
    """Mean nominal bits per element over the edges and directions of ``codecs``."""
    from layeredge_dist.codecs import parse_any

    def bits(spec: str) -> float:
        c: Any = parse_any(spec)
        while not hasattr(c, "bits_per_element") and hasattr(c, "inner"):  # ef(...), delta(...): the inner codec
            c = c.inner
        return float(c.bits_per_element(numel))

    specs = [s for d in codecs.values() for s in d.values()]
    return statistics.fmean(bits(s) for s in specs) if specs else math.nan


def _phases(off: dict[str, Any], on: dict[str, Any], s: ControlSettings) -> dict[str, Any]:
    """One round's step times per phase (lists) and the controller's first switch at or after the drop."""
    d = s.drop_step
    sec_off, sec_on = off["step_seconds"], on["step_seconds"]  # index i = step i + 1
    decisions = on["decisions"]
    switch = next((x for x in decisions if x["switched"] and x["step"] >= d), None)
    sw = switch["step"] if switch else None
    codecs_before = on["codecs_initial"]
    if switch is not None:
        prev = [x for x in decisions if x["switched"] and x["step"] < sw]
        codecs_before = prev[-1]["codecs"] if prev else on["codecs_initial"]
    return {"before_off": sec_off[WARMUP_STEPS:d], "before_on": sec_on[WARMUP_STEPS:d], "after_drop_off": sec_off[d:],
            "after_drop_on_before_switch": sec_on[d:sw] if sw is not None else sec_on[d:],
            "after_switch_on": sec_on[sw:] if sw is not None else [],
            "switch_step": sw, "intervals": math.ceil((sw - d) / s.every) if sw is not None else None,
            "early": [x["step"] for x in decisions if x["switched"] and x["step"] < d],
            "codecs_before": codecs_before, "codecs_after": switch["codecs"] if switch else None}


PHASES = ("before_off", "before_on", "after_drop_off", "after_drop_on_before_switch", "after_switch_on")


def summarize(rounds: Sequence[dict[str, dict[str, Any]]], s: ControlSettings) -> tuple[dict[str, Any],
                                                                                        dict[str, Any]]:
    """The report's figures and the target verdicts from every round's two runs (``{"off", "on"}``): step-time
    p50 per phase over the steps of all rounds pooled; the switch targets must hold in every round."""
    ph = [_phases(r["off"], r["on"], s) for r in rounds]
    pooled = {k: [x for q in ph for x in q[k]] for k in PHASES}
    p = {k: _p50(v) for k, v in pooled.items()}
    # the speed-up compares like with like: only rounds whose controller switched after the drop
    ok = [q for q in ph if q["switch_step"] is not None] or ph
    p["after_drop_off_switched_rounds"] = _p50([x for q in ok for x in q["after_drop_off"]])
    p["before_off_switched_rounds"] = _p50([x for q in ok for x in q["before_off"]])
    p["before_on_switched_rounds"] = _p50([x for q in ok for x in q["before_on"]])
    p["before"] = _p50(pooled["before_off"] + pooled["before_on"])
    p["per_round"] = [{k: _p50(q[k]) for k in PHASES} for q in ph]
    speedup = (p["after_drop_off_switched_rounds"] / p["after_switch_on"]
               if p["after_drop_off_switched_rounds"] and p["after_switch_on"] else None)
    # the same ratio with each arm's step time relative to its own before the drop: the machine is shared and its
    # load drifts between the runs; this cancels the part of the drift that is common to a whole run
    norm = None
    if speedup is not None and p["before_off_switched_rounds"] and p["before_on_switched_rounds"]:
        norm = speedup * p["before_on_switched_rounds"] / p["before_off_switched_rounds"]
    intervals = [q["intervals"] for q in ph]
    worst = None if any(i is None for i in intervals) else max(intervals)
    bits_before = max(_bits(q["codecs_before"]) for q in ph)
    bits_after = None if any(q["codecs_after"] is None for q in ph) else max(_bits(q["codecs_after"]) for q in ph)
    summary = {"step_p50_s": p, "switch_step": ph[0]["switch_step"], "switch_steps": [q["switch_step"] for q in ph],
               "intervals_after_drop": worst, "intervals_per_round": intervals,
               "switches_before_drop": [q["early"] for q in ph], "speedup": speedup, "speedup_normalized": norm,
               "codecs_before": ph[0]["codecs_before"], "codecs_after": ph[0]["codecs_after"],
               "codecs_after_per_round": [q["codecs_after"] for q in ph],
               "bits_before": bits_before, "bits_after": bits_after,
               "final_codecs_on": [r["on"]["codecs_final"] for r in rounds],
               "final_loss": [{"off": r["off"]["losses"][-1], "on": r["on"]["losses"][-1]} for r in rounds]}
    targets = {
        "switch_within_intervals": {"want": f"<= {s.max_intervals} in every round", "got": worst,
                                    "met": worst is not None and worst <= s.max_intervals},
        "smaller_codecs": {"want": f"< {bits_before:.2f} bits/element", "got": bits_after,
                           "met": bits_after is not None and bits_after < bits_before},
        "faster_than_not_switching": {"want": "> 1.0x", "got": speedup, "met": speedup is not None and speedup > 1.0},
    }
    targets["met"] = all(t["met"] for t in targets.values() if isinstance(t, dict))
    return summary, targets


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def format_result(result: dict[str, Any]) -> str:
    """The result as text: settings line, step-time table, decisions, target verdicts."""
    s, sm, t = result["settings"], result["summary"], result["targets"]
    p = sm["step_p50_s"]
    load = result["load_average"]
    lines = [f"{s['steps']} steps, re-plan every {s['every']}, links {s['rate_before']} -> {s['rate_after']} after "
             f"step {s['drop_step']}; budget {s['budget']}, candidates {','.join(s['candidates'])}, min gain "
             f"{s['min_gain']}",
             f"load average (1 min) {load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at the end", ""]
    sw = sm["switch_step"]
    rows = [
        ("before the drop (steps 4.." + str(s["drop_step"]) + ")", p["before_off"], p["before_on"]),
        ("after the drop, before the switch", p["after_drop_off"], p["after_drop_on_before_switch"]),
        ("after the switch" + (f" (steps {sw + 1}..{s['steps']})" if sw is not None else ""), None,
         p["after_switch_on"]),
    ]
    head = f"{'step time p50 (s)':44s} {'controller off':>14s} {'controller on':>14s}"
    lines += [head, "-" * len(head)]
    for name, a, b in rows:
        lines.append(f"{name:44s} {_fmt(a):>14s} {_fmt(b):>14s}")
    lines.append("")
    if len(result["rounds"]) > 1:
        lines.append(f"{len(result['rounds'])} rounds, step times pooled; switch steps {sm['switch_steps']} "
                     f"({sm['intervals_per_round']} re-plan intervals after the drop)")
    lines.append(f"switch at step {sw} = {sm['intervals_after_drop']} re-plan interval(s) after the drop; speed-up "
                 f"from switching {_fmt(sm['speedup'], '.2f')}x (off after the drop / on after the switch)")
    lines.append(f"normalized to each run's own step time before the drop (load drift between the runs): "
                 f"{_fmt(sm.get('speedup_normalized'), '.2f')}x")
    lines.append(f"codecs before: {json.dumps(sm['codecs_before'])} ({sm['bits_before']:.1f} bits/element)")
    lines.append(f"codecs after:  {json.dumps(sm['codecs_after'])} ({_fmt(sm['bits_after'], '.1f')} bits/element)")
    if any(sm["switches_before_drop"]):
        lines.append(f"switched before the drop at steps {sm['switches_before_drop']} (per round)")
    lines.append("")
    lines.append("decisions (controller on):")
    for i, r in enumerate(result["rounds"]):
        for x in r["on"]["decisions"]:
            bw = ", ".join(f"{b * 8 / 1e6:.0f}" for b in x["bandwidth_Bps"])
            codecs = "; ".join(f"{e} {d['forward']}/{d['backward']}" for e, d in x["codecs"].items())
            where = f"round {i} " if len(result["rounds"]) > 1 else ""
            lines.append(f"  {where}step {x['step']:3d}: links {bw} Mbit/s; predicted {x['current_s'] * 1e3:.0f} ms "
                         f"now, {x['best_s'] * 1e3:.0f} ms with {codecs} -> {'SWITCHED' if x['switched'] else 'kept'}")
    lines.append("")
    for name, v in t.items():
        if isinstance(v, dict):
            got = v["got"] if not isinstance(v["got"], float) else f"{v['got']:.3f}"
            lines.append(f"target {name}: want {v['want']}, got {got}: {'met' if v['met'] else 'MISSED'}")
    lines.append("all targets met" if t["met"] else "TARGET MISSED")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- the driver


def _driver_main() -> None:
    """Entry of the driver subprocess (inside host 0): one run (``off`` or ``on``), writes the JSON."""
    from layeredge_dist.bench.testbed_job import driver_main

    driver_main(drive)


def drive(job: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Connect to the testbed's Ray cluster and train one run of ``job`` (see :func:`run_control`)."""
    from layeredge_dist.config import RunConfig, with_overrides
    from layeredge_dist.pipeline import setup
    from layeredge_dist.pipeline.cluster import connect
    from layeredge_dist.pipeline.controller import Controller, ControllerConfig, current_codecs
    from layeredge_dist.pipeline.driver import Pipeline
    from layeredge_dist.pipeline.train import EventChain, Events, LoopConfig, train
    from layeredge_dist.plan import ModelProfile

    s = job["settings"]
    cfg = with_overrides(RunConfig(), job["overrides"])
    steps, drop = int(s["steps"]), int(s["drop_step"])
    progress = open(job["progress"], "w", buffering=1)  # noqa: SIM115 - closed below

    class _Record(Events):
        def step(self, step: int, loss: float, result: Any) -> None:
            progress.write(json.dumps({"step": step, "seconds": result.seconds, "loss": loss}) + "\n")

    class _Drop(Events):
        """After the drop step: ask the orchestrator (root namespace) to reshape the links, wait for it."""

        def step(self, step: int, loss: float, result: Any) -> None:
            if step != drop:
                return
            with open(job["drop_request"], "w") as f:
                f.write(str(step))
            deadline = time.monotonic() + float(s["drop_timeout_s"])
            while not os.path.exists(job["drop_ack"]):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no acknowledgement of the rate change after {s['drop_timeout_s']} s")
                time.sleep(0.02)
            log(f"[{job['mode']}] after step {step}: links now {open(job['drop_ack']).read().strip()}")

    out: dict[str, Any] = {"mode": job["mode"], "decisions": []}
    try:
        with connect(address=job["address"], timeout_s=float(s["start_timeout_s"])), \
                Pipeline(setup.stage_spec(cfg), setup.placement(cfg)) as pipe:
            out["placement"] = [{"stage": i["stage"], "node_ip": i["node_ip"]} for i in pipe.infos]
            out["codecs_initial"] = current_codecs(pipe)
            controller = None
            events: list[Events] = [_Record()]
            if job["mode"] == "on":
                with open(job["profile"]) as f:
                    profile = ModelProfile.from_json(f.read())
                controller = Controller(pipe, profile, ControllerConfig(int(s["every"]), tuple(s["candidates"]),
                                                                        s["budget"], float(s["min_gain"]),
                                                                        int(s["probe_bytes"])), log=log)
                events.append(controller)
            events.append(_Drop())
            res = train(pipe, setup.workload(cfg), LoopConfig(steps, eval_every=-1), EventChain(*events))
            out["codecs_final"] = current_codecs(pipe)
    finally:
        progress.close()
    out["step_seconds"] = res.step_seconds
    out["losses"] = res.losses
    out["wall_s"] = res.wall_s
    if controller is not None:
        out["decisions"] = [{"step": d.step, "bandwidth_Bps": list(d.bandwidth_Bps), "current_s": d.current_s,
                             "best_s": d.best_s, "codecs": {e: dict(v) for e, v in d.codecs.items()},
                             "switched": d.switched, "switches": {k: list(v) for k, v in d.switches.items()}}
                            for d in controller.decisions]
    return out
