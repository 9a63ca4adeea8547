"""Pipeline benchmark: the stage runtime on a real local Ray cluster against single-process training.

In one run, on the demo workload (byte-level GPT, stdlib source, 3 stages on 3 local Ray nodes, 1F1B):

- **codecs**: train ``--steps`` steps with each of ``--codecs`` on every cut (activations and gradients), same
  seed and batches, and report the validation loss at the end, its gap to the first codec (fp32) and the step
  time (p50). With ``--seeds N`` every codec is trained from N model/data seeds and the gap is reported as mean
  and standard deviation of the paired per-seed gaps (training noise at 200 steps is of the same order as the
  gaps of good codecs, so one seed cannot tell them apart);
- **single process**: the same model, batches, micro-batching and optimizer in this process with one torch
  thread (what each stage actor gets): validation loss (equal to the fp32 pipeline's up to float rounding) and
  step time, so ``pipeline / single`` is the cost of splitting the model across processes;
- **hop**: per-hop overhead of a 64 KiB activation: forward-only calls through 1 and through 3 stages of
  identity layers (no compute), ``(p50(3 stages) - p50(1 stage)) / 2`` (encode, frame, send, receive, decode,
  schedule), both with one Ray task per call and stage and with the stages' serving loops (no Ray per call);
- **memory** per stage of the fp32 run (parameters, optimizer state, peak saved activations, RSS);
- **measurement cost**: step time with nothing exported vs counters only (Prometheus exporters, sampled codec
  error, stage times) vs counters plus the online proxy of three candidate codecs on every step, interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from typing import Any

import torch

from layeredge_dist.bench import output
from layeredge_dist.config import RunConfig, with_overrides

DEMO = ("data.batch_size=8", "data.context=128", "pipeline.microbatches=4", "pipeline.schedule=1f1b",
        "train.eval_every=0")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``layeredge bench pipeline``."""
    p.add_argument("--steps", type=int, default=200, help="training steps per codec (default 200)")
    p.add_argument("--codecs", default="fp32,bf16,int8", help="codecs to compare, fp32 first (default fp32,bf16,int8)")
    p.add_argument("--eval-batches", type=int, default=16, help="validation batches at the end (default 16)")
    p.add_argument("--seeds", type=int, default=1, help="model/data seeds per codec, paired gaps (default 1)")
    p.add_argument("--nodes", type=int, default=3, help="local Ray nodes (default 3: one per stage)")
    p.add_argument("--hop-calls", type=int, default=300, help="calls per hop measurement (default 300)")
    p.add_argument("--hop-kib", type=int, default=64, help="activation size of the hop measurement (default 64)")
    p.add_argument("--overhead-steps", type=int, default=40,
                   help="steps per run of the measurement-overhead comparison, 0 skips it (default 40)")
    p.add_argument("--overhead-rounds", type=int, default=3, help="interleaved rounds of that comparison (default 3)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a run config field (see layeredge train --help)")


def _single_process(cfg: RunConfig, steps: int, eval_batches: int) -> dict[str, float]:
    """Train the native model like the pipeline does (micro-batch accumulation, same optimizer), 1 thread."""
    from layeredge_dist.model import build_reference, family_for, split_batch
    from layeredge_dist.pipeline import setup

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec = setup.stage_spec(cfg)
        work = setup.workload(cfg)
        native = build_reference(model=spec.model)
        family = family_for(spec.model.family, spec.model.config)
        opt = spec.optimizer.build(list(native.parameters()))
        m = spec.microbatches
        times = []
        for step in range(steps):
            t0 = time.perf_counter()
            inputs, sides = split_batch(work.batch(step), m)
            for x, side in zip(inputs, sides):
                (family.native_loss(native, x, side) / m).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
        native.eval()
        with torch.no_grad():
            val = [float(family.native_loss(native, x, s)) for x, s in work.val_batches(eval_batches)]
        return {"val_loss": sum(val) / len(val), "step_s_p50": statistics.median(times[3:] or times)}
    finally:
        torch.set_num_threads(threads)


#: Measurement settings compared for their cost: nothing exported; counters (Prometheus exporter, sampled codec
#: error, stage times); counters plus the online proxy of three candidate codecs on every step.
OVERHEAD_MODES: dict[str, tuple[str, ...]] = {
    "off": (),
    "counters": ("metrics.port=0",),
    "proxy": ("metrics.port=0", "metrics.proxy_every=1", "metrics.proxy_codecs=[int8, int4, int2]"),
}


def _overhead(cfg: RunConfig, steps: int, rounds: int) -> dict[str, float]:
    """Step time p50 per measurement mode, runs interleaved in rounds; ratios against ``off``."""
    from layeredge_dist.pipeline import setup
    from layeredge_dist.pipeline.driver import Pipeline
    from layeredge_dist.pipeline.train import LoopConfig, train

    times: dict[str, list[float]] = {m: [] for m in OVERHEAD_MODES}
    for _ in range(rounds):
        for mode, overrides in OVERHEAD_MODES.items():
            c = with_overrides(cfg, list(overrides))
            with Pipeline(setup.stage_spec(c), setup.placement(c)) as pipe:
                res = train(pipe, setup.workload(c), LoopConfig(steps, eval_every=-1))
                times[mode] += res.step_seconds[3:]
    p50 = {m: statistics.median(t) for m, t in times.items()}
    return {**{f"{m}_step_s_p50": v for m, v in p50.items()},
            **{f"{m}_vs_off": v / p50["off"] for m, v in p50.items() if m != "off"}}


def _hop(cfg: RunConfig, calls: int, kib: int) -> dict[str, float]:
    """p50 call time through 1 and 3 stages of identity layers with a ``kib`` KiB fp32 activation."""
    from layeredge_dist.model import ModelSpec
    from layeredge_dist.pipeline import setup
    from layeredge_dist.pipeline.driver import Pipeline

    n = kib * 1024 // 4
    model = ModelSpec("sequential", {"layers": [{"type": "Identity"}] * 3, "loss": "none"})
    x = torch.randn(1, n)  # (1, n): one micro-batch of kib KiB
    out: dict[str, float] = {}
    for stages, cuts in ((1, ()), (3, (1, 2))):
        base = replace(setup.stage_spec(cfg), model=model, num_stages=stages, cuts=cuts, microbatches=1,
                       schedule="gpipe", chunks=1)
        with Pipeline(base, setup.placement(cfg)) as pipe:
            for _ in range(20):
                pipe.call((x, {}), "infer")
            times = [pipe.call((x, {}), "infer").seconds for _ in range(calls)]
            with pipe.serving():
                for _ in range(20):
                    pipe.call((x, {}), "infer")
                served = [pipe.call((x, {}), "infer").seconds for _ in range(calls)]
        out[f"call_p50_us_{stages}_stages"] = statistics.median(times) * 1e6
        out[f"served_p50_us_{stages}_stages"] = statistics.median(served) * 1e6
    out["hop_p50_us"] = (out["call_p50_us_3_stages"] - out["call_p50_us_1_stages"]) / 2
    out["served_hop_p50_us"] = (out["served_p50_us_3_stages"] - out["served_p50_us_1_stages"]) / 2
    out["activation_bytes"] = n * 4
    return out


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; exit code 2 for bad arguments, 1 when the cluster or a stage fails."""
    codecs = [c for c in args.codecs.split(",") if c]
    if args.steps < 1 or not codecs or args.nodes < 1:
        print("error: need --steps >= 1, at least one codec and --nodes >= 1", file=sys.stderr)
        return 2
    cfg = with_overrides(RunConfig(), list(DEMO) + [f"train.steps={args.steps}"] + list(args.overrides))
    from layeredge_dist.pipeline import setup
    from layeredge_dist.pipeline.cluster import connect

    log = output.progress(args)
    results: dict[str, Any] = {"steps": args.steps, "codecs": {}, "config": list(DEMO) + list(args.overrides)}
    stages = cfg.pipeline.stages
    with connect(None, args.nodes, float(-(-stages // args.nodes)), 0.0, 120.0):
        from layeredge_dist.pipeline.driver import Pipeline
        from layeredge_dist.pipeline.train import LoopConfig, evaluate, train

        per_seed: dict[str, list[dict[str, Any]]] = {c: [] for c in codecs}
        for seed in range(args.seeds):
            for codec in codecs:
                c = with_overrides(cfg, [f"codecs.forward={codec}", f"codecs.backward={codec}",
                                         f"model.seed={seed}", f"data.seed={seed}"])
                log(f"seed {seed}: training {args.steps} steps with {codec} edges ...")
                with Pipeline(setup.stage_spec(c), setup.placement(c)) as pipe:
                    work = setup.workload(c)
                    res = train(pipe, work, LoopConfig(args.steps, eval_every=-1))
                    entry = {"val_loss": evaluate(pipe, work.val_batches(args.eval_batches)),
                             "final_train_loss": res.losses[-1],
                             "step_s_p50": statistics.median(res.step_seconds[3:] or res.step_seconds)}
                    if codec == codecs[0] and seed == 0:
                        entry["memory"] = pipe.memory()
                    per_seed[codec].append(entry)
        for codec in codecs:
            runs = per_seed[codec]
            gaps = [r["val_loss"] - f["val_loss"] for r, f in zip(runs, per_seed[codecs[0]])]
            results["codecs"][codec] = {
                "val_loss": statistics.mean(r["val_loss"] for r in runs), "per_seed": runs,
                "val_gap_vs_" + codecs[0]: statistics.mean(gaps),
                "val_gap_std": statistics.stdev(gaps) if len(gaps) > 1 else 0.0,
                "step_s_p50": statistics.median(r["step_s_p50"] for r in runs)}
        log("per-hop overhead ...")
        results["hop"] = _hop(cfg, args.hop_calls, args.hop_kib)
        if args.overhead_steps > 0:
            log("measurement overhead ...")
            results["measurement_overhead"] = _overhead(cfg, args.overhead_steps, args.overhead_rounds)
    log("single-process reference ...")
    results["single_process"] = _single_process(cfg, args.steps, args.eval_batches)
    ref = results["codecs"][codecs[0]]
    for entry in results["codecs"].values():
        entry["step_time_vs_single"] = entry["step_s_p50"] / results["single_process"]["step_s_p50"]
    if output.emit(results, args):
        return 0
    print(f"{args.steps} steps, 3 stages on {args.nodes} local Ray node(s), demo byte GPT; validation over "
          f"{args.eval_batches} batches; {args.seeds} seed(s)")
    print(f"{'edges':10s} {'val loss':>9s} {'gap':>9s} {'gap std':>8s} {'step p50 s':>11s} {'vs single':>10s}")
    for codec, e in results["codecs"].items():
        print(f"{codec:10s} {e['val_loss']:9.4f} {e['val_gap_vs_' + codecs[0]]:+9.4f} {e['val_gap_std']:8.4f} "
              f"{e['step_s_p50']:11.3f} {e['step_time_vs_single']:9.2f}x")
    sp = results["single_process"]
    seed0 = ref["per_seed"][0]["val_loss"]
    print(f"{'single':10s} {sp['val_loss']:9.4f} {sp['val_loss'] - seed0:+9.4f} {'':8s} {sp['step_s_p50']:11.3f}"
          f" {1.0:9.2f}x   (one process, one torch thread; seed 0, gap vs the seed-0 pipeline run)")
    hop = results["hop"]
    print(f"per-hop overhead, {hop['activation_bytes'] // 1024} KiB activation: p50 {hop['hop_p50_us']:.0f} us with "
          f"a Ray task per call and stage (call p50 {hop['call_p50_us_1_stages']:.0f} us through 1 stage, "
          f"{hop['call_p50_us_3_stages']:.0f} us through 3); serving loops: p50 {hop['served_hop_p50_us']:.0f} us "
          f"({hop['served_p50_us_1_stages']:.0f} / {hop['served_p50_us_3_stages']:.0f} us)")
    if "measurement_overhead" in results:
        o = results["measurement_overhead"]
        print(f"measurement cost, step time p50 vs nothing exported: counters {o['counters_vs_off']:.3f}x, "
              f"counters + online proxy of 3 codecs on every step {o['proxy_vs_off']:.3f}x")
    from layeredge_dist.pipeline.report import format_memory

    print("memory per stage (" + codecs[0] + " run, seed 0)\n" + format_memory(ref["per_seed"][0]["memory"]))
    return 0
