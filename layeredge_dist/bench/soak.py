"""Soak: the demo pipeline trains and serves, alternately and continuously, for ``--minutes`` minutes.

An embedded Ray cluster on 127.0.0.1 (``--nodes N`` local Ray nodes; default 1) runs the byte-level GPT demo in
3 stage actors (1F1B, 4 micro-batches, batch 8 x 128 bytes, the TCP data path). One round is one training step
followed by ``--requests`` inference calls through the stages' serving loops (``Pipeline.serving()``, no Ray task
per request). Reported:

- **RSS** of every stage process and of the driver after the warm-up (``--warmup`` rounds) and at the end, with
  the growth in % (target: below 5 %);
- **errors**: stage failures (StageFailure; the pipeline is recovered and the soak goes on), frames the
  receivers rejected (``invalid_frames``) or refused (``unauthenticated``), stale frames dropped (left over from
  aborted calls) and stream errors, summed over the stages and the driver (target: 0);
- **time series**: per window of ``--window-s`` seconds, p50 / p99 of the training step time and of the
  inference latency, the number of steps and requests, and the stages' RSS.

``--json`` prints one JSON document; the exit status is 1 when a target is missed (RSS growth >= 5 % or any
error), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from layeredge_dist.bench import output
from layeredge_dist.config import RunConfig, with_overrides

#: The demo's shape (as ``layeredge bench pipeline``), on the TCP data path, without evaluation or checkpoints.
DEMO = ("data.batch_size=8", "data.context=128", "pipeline.microbatches=4", "pipeline.schedule=1f1b",
        "train.eval_every=0", "train.checkpoint_every=0", "transport.data_path=tcp")
RSS_TARGET_PCT = 5.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``layeredge bench soak``."""
    p.add_argument("--minutes", type=float, default=30.0, help="soak duration after the warm-up (default 30)")
    p.add_argument("--requests", type=int, default=4, help="inference calls after every training step (default 4)")
    p.add_argument("--warmup", type=int, default=10, help="rounds before the starting RSS is taken (default 10)")
    p.add_argument("--window-s", type=float, default=0.0,
                   help="seconds per reporting window (default: a tenth of the run, at least 30)")
    p.add_argument("--nodes", type=int, default=1, help="local Ray nodes (default 1; 3 puts one stage per node)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a run config field (see layeredge train --help)")


def _driver_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _stage_counters(actor: Any) -> dict[str, int]:
    """Runs inside a stage actor (``__ray_call__``): its receiver's counters and stale frames."""
    endpoint = actor.stage.endpoint
    counters = endpoint._server.counters.snapshot()  # noqa: SLF001 - read-only look at the stage's receiver
    return {k: counters[k] for k in ("invalid_frames", "unauthenticated", "stream_errors")} | {
        "stale_frames": endpoint.stale_frames}


def _counters(pipe: Any) -> dict[str, int]:
    """Error counters summed over the stages and the driver's endpoint."""
    import ray

    refs = [a.__ray_call__.options(concurrency_group="control").remote(_stage_counters) for a in pipe.actors]
    total: dict[str, int] = {"invalid_frames": 0, "unauthenticated": 0, "stream_errors": 0, "stale_frames": 0}
    host = pipe.host.endpoint
    parts = ray.get(refs, timeout=60) + [
        {k: host._server.counters.get(k) for k in ("invalid_frames", "unauthenticated", "stream_errors")}  # noqa: SLF001
        | {"stale_frames": host.stale_frames}]
    for part in parts:
        for k, v in part.items():
            total[k] += int(v)
    return total


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class _Window:
    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.steps: list[float] = []
        self.requests: list[float] = []

    def summary(self, t1: float, stage_rss: list[int], driver_rss: int) -> dict[str, Any]:
        return {"t0_s": round(self.t0, 1), "t1_s": round(t1, 1), "steps": len(self.steps),
                "step_s_p50": statistics.median(self.steps) if self.steps else None,
                "step_s_p99": _pct(self.steps, 0.99) if self.steps else None,
                "requests": len(self.requests),
                "infer_ms_p50": statistics.median(self.requests) * 1e3 if self.requests else None,
                "infer_ms_p99": _pct(self.requests, 0.99) * 1e3 if self.requests else None,
                "stage_rss_mib": [round(r / 2**20, 1) for r in stage_rss],
                "driver_rss_mib": round(driver_rss / 2**20, 1)}


def soak(cfg: RunConfig, minutes: float, requests: int, warmup: int, window_s: float,
         log: Any = lambda text: None) -> dict[str, Any]:
    """Run the soak on the Ray cluster this process is connected to; returns the report (see the module doc)."""
    from layeredge_dist.pipeline import setup
    from layeredge_dist.pipeline.driver import Pipeline, StageFailure

    work = setup.workload(cfg)
    failures: list[str] = []
    with Pipeline(setup.stage_spec(cfg), setup.placement(cfg)) as pipe:
        step = 0

        def round_(window: _Window | None) -> None:
            nonlocal step
            try:
                res = pipe.call(work.batch(step), "train")
                step += 1
                if window is not None:
                    window.steps.append(res.seconds)
                ids = work.batch(step)[0]
                with pipe.serving():
                    for _ in range(requests):
                        t0 = time.perf_counter()
                        pipe.call((ids, {}), "infer")
                        if window is not None:
                            window.requests.append(time.perf_counter() - t0)
            except StageFailure as err:
                failures.append(f"step {step}: {err}")
                log(f"stage failure at step {step}: {err}; recovering")
                pipe.recover()

        log(f"warm-up: {warmup} rounds ...")
        for _ in range(warmup):
            round_(None)
        counters0 = _counters(pipe)
        start_stage = [m["rss_bytes"] for m in pipe.memory()]
        start_driver = _driver_rss()
        t_start = time.monotonic()
        end = t_start + minutes * 60
        windows: list[dict[str, Any]] = []
        window = _Window(0.0)
        all_steps: list[float] = []
        all_requests: list[float] = []
        log(f"soak: {minutes:g} min, windows of {window_s:g} s; stage RSS at start "
            f"{[round(r / 2**20) for r in start_stage]} MiB, driver {start_driver / 2**20:.0f} MiB")
        while time.monotonic() < end:
            round_(window)
            now = time.monotonic() - t_start
            if now - window.t0 >= window_s or time.monotonic() >= end:
                w = window.summary(now, [m["rss_bytes"] for m in pipe.memory()], _driver_rss())
                windows.append(w)
                all_steps += window.steps
                all_requests += window.requests
                log(f"[{now / 60:5.1f} min] {w['steps']} steps p50 {w['step_s_p50'] or 0:.3f} s p99 "
                    f"{w['step_s_p99'] or 0:.3f} s | {w['requests']} requests p50 {w['infer_ms_p50'] or 0:.1f} ms "
                    f"p99 {w['infer_ms_p99'] or 0:.1f} ms | stage RSS {w['stage_rss_mib']} MiB, driver "
                    f"{w['driver_rss_mib']} MiB")
                window = _Window(now)
        end_stage = [m["rss_bytes"] for m in pipe.memory()]
        end_driver = _driver_rss()
        counters1 = _counters(pipe)
    errors = {k: counters1[k] - counters0[k] for k in counters0} | {"stage_failures": len(failures)}
    growth = [100.0 * (b - a) / a for a, b in zip(start_stage + [start_driver], end_stage + [end_driver])]
    ok = all(g < RSS_TARGET_PCT for g in growth) and not any(errors.values())
    return {
        "minutes": minutes, "steps": len(all_steps), "requests": len(all_requests), "requests_per_step": requests,
        "warmup_rounds": warmup, "window_s": window_s, "ok": ok, "rss_target_pct": RSS_TARGET_PCT,
        "rss": {"start_mib": {"stages": [round(r / 2**20, 1) for r in start_stage],
                              "driver": round(start_driver / 2**20, 1)},
                "end_mib": {"stages": [round(r / 2**20, 1) for r in end_stage], "driver": round(end_driver / 2**20, 1)},
                "growth_pct": {"stages": [round(g, 2) for g in growth[:-1]], "driver": round(growth[-1], 2)}},
        "errors": errors, "failures": failures[:20],
        "step_s": {"p50": statistics.median(all_steps) if all_steps else None, "p99": _pct(all_steps, 0.99)},
        "infer_ms": {"p50": statistics.median(all_requests) * 1e3 if all_requests else None,
                     "p99": _pct(all_requests, 0.99) * 1e3},
        "windows": windows,
    }


def run(args: argparse.Namespace) -> int:
    """Run the soak; exit code 2 for bad arguments, 1 when a target is missed or the cluster fails."""
    if args.minutes <= 0 or args.requests < 0 or args.warmup < 0 or args.nodes < 1:
        print("error: need --minutes > 0, --requests >= 0, --warmup >= 0 and --nodes >= 1", file=sys.stderr)
        return 2
    cfg = with_overrides(RunConfig(), list(DEMO) + list(args.overrides))
    window_s = args.window_s if args.window_s > 0 else max(30.0, args.minutes * 6.0)
    log = output.progress(args)
    from layeredge_dist.pipeline.cluster import ClusterError, connect
    from layeredge_dist.pipeline.driver import StageFailure

    stages = cfg.pipeline.stages
    try:
        with connect(None, args.nodes, float(-(-stages // args.nodes)), 0.0, 120.0):
            report = soak(cfg, args.minutes, args.requests, args.warmup, window_s, log)
    except (ClusterError, StageFailure) as err:
        print(f"layeredge: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    report["config"] = list(DEMO) + list(args.overrides)
    report["nodes"] = args.nodes
    if output.emit(report, args):
        return 0 if report["ok"] else 1
    r = report
    print(f"soak: {r['minutes']:g} min on {args.nodes} local Ray node(s): {r['steps']} training steps, "
          f"{r['requests']} inference requests ({r['requests_per_step']} per step, serving mode)")
    print(f"step time p50 {r['step_s']['p50']:.3f} s, p99 {r['step_s']['p99']:.3f} s; inference latency p50 "
          f"{r['infer_ms']['p50']:.1f} ms, p99 {r['infer_ms']['p99']:.1f} ms")
    print(f"{'window':>13s} {'steps':>6s} {'step p50':>9s} {'step p99':>9s} {'reqs':>5s} {'inf p50':>8s} "
          f"{'inf p99':>8s}  stage RSS MiB / driver")
    for w in r["windows"]:
        print(f"{w['t0_s']:6.0f}-{w['t1_s']:<6.0f} {w['steps']:6d} {w['step_s_p50'] or 0:9.3f} "
              f"{w['step_s_p99'] or 0:9.3f} {w['requests']:5d} {w['infer_ms_p50'] or 0:8.1f} "
              f"{w['infer_ms_p99'] or 0:8.1f}  {w['stage_rss_mib']} / {w['driver_rss_mib']}")
    g = r["rss"]["growth_pct"]
    print(f"RSS growth: stages {g['stages']} %, driver {g['driver']} % (target < {RSS_TARGET_PCT:g} %)")
    print(f"errors: {r['errors']}" + (f"; first failures: {r['failures'][:3]}" if r["failures"] else ""))
    print("OK" if r["ok"] else "TARGET MISSED")
    return 0 if r["ok"] else 1
