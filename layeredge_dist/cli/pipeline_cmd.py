"""``layeredge run | train | verify | infer``: the stage runtime from the command line.

A run is described by a YAML or TOML file (``--config``) mapped onto frozen dataclasses; flags override it,
``--set PATH=VALUE`` overrides any field. Without ``--address`` an embedded Ray cluster is started on
127.0.0.1 (``--nodes N`` gives it N nodes) and stopped at the end; with ``--address`` the run joins an existing
cluster (see ``layeredge cluster up``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from layeredge_dist.config import ConfigError, RunConfig, dump_yaml, format_help, load_config, with_overrides

#: Shortcut flags: (flag, config path, type, help).
_SHORTCUTS: tuple[tuple[str, str, type, str], ...] = (
    ("--steps", "train.steps", int, "optimizer steps"),
    ("--stages", "pipeline.stages", int, "pipeline stages (one Ray actor each)"),
    ("--schedule", "pipeline.schedule", str, "gpipe | 1f1b | interleaved"),
    ("--microbatches", "pipeline.microbatches", int, "micro-batches per step (divides data.batch_size)"),
    ("--codec-forward", "codecs.forward", str, "codec of activations on every cut, e.g. fp32, bf16, int8"),
    ("--codec-backward", "codecs.backward", str, "codec of activation-gradients on every cut"),
    ("--address", "cluster.address", str, "join this Ray cluster (host:port or auto) instead of an embedded one"),
    ("--nodes", "cluster.nodes", int, "embedded cluster: Ray nodes on 127.0.0.1"),
    ("--run-dir", "run_dir", str, "where checkpoints, the resolved config and summary.json go"),
)


def add_common(p: argparse.ArgumentParser, shortcuts: bool = True) -> None:
    """``--config``, ``--set`` and the shortcut flags; the epilog lists every config field."""
    p.add_argument("--config", metavar="FILE", help="run description (.yaml/.yml/.toml); default: built-in defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override one config field (repeatable), e.g. --set model.config.d_model=64")
    if shortcuts:
        for flag, path, typ, text in _SHORTCUTS:
            p.add_argument(flag, type=typ, default=None, metavar=path.split(".")[-1].upper(),
                           help=f"{text} (= --set {path}=...)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    p.epilog = "configuration fields:\n" + format_help()
    p.formatter_class = argparse.RawDescriptionHelpFormatter


def resolve_config(args: argparse.Namespace, defaults: Sequence[str] = ()) -> RunConfig:
    """File, then command defaults, then shortcut flags, then ``--set``; ConfigError on a bad value."""
    cfg = load_config(args.config) if args.config else load_config(None)
    overrides = list(defaults) if not args.config else []
    for flag, path, _typ, _text in _SHORTCUTS:
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            overrides.append(f"{path}={value}")
    return with_overrides(cfg, overrides + list(args.overrides))


class _Progress:
    """Progress of a training run on stderr: a live line on a terminal, a log line every N steps otherwise."""

    def __init__(self, total: int, tokens_per_step: int, log_every: int, quiet: bool) -> None:
        self.total = total
        self.tokens = tokens_per_step
        self.log_every = log_every
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.recent: list[float] = []
        self.val = ""

    def step(self, step: int, loss: float, seconds: float) -> None:
        if self.quiet:
            return
        self.recent = (self.recent + [seconds])[-20:]
        per_step = statistics.median(self.recent)
        eta = per_step * (self.total - step)
        line = (f"[{step:>{len(str(self.total))}}/{self.total}] loss {loss:.3f}{self.val} | "
                f"{self.tokens / per_step:,.0f} tok/s | {per_step:.2f} s/step | eta {eta:.0f} s")
        if self.tty:
            width = 28
            done = int(width * step / self.total)
            print(f"\r{'#' * done}{'.' * (width - done)} {line}", end="", file=sys.stderr, flush=True)
            if step == self.total:
                print(file=sys.stderr)
        elif step % self.log_every == 0 or step == self.total:
            print(line, file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        if not self.quiet:
            print(("\n" if self.tty else "") + text, file=sys.stderr, flush=True)


def _saved_config(args: argparse.Namespace, defaults: Sequence[str], filename: str) -> RunConfig | None:
    """The resolved run config, also written to ``<run_dir>/<filename>``; None (after printing why) when the
    config is invalid or unreadable."""
    try:
        cfg = resolve_config(args, defaults)
    except (ConfigError, OSError) as err:
        print(f"layeredge: config error: {err}", file=sys.stderr)
        return None
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / filename).write_text(dump_yaml(cfg))
    return cfg


def _train(args: argparse.Namespace, defaults: Sequence[str]) -> int:
    cfg = _saved_config(args, defaults, "config.yaml")
    if cfg is None:
        return 2
    from layeredge_dist.pipeline import setup
    from layeredge_dist.pipeline.cluster import ClusterError, connect

    run_dir = Path(cfg.run_dir)
    spec = setup.stage_spec(cfg)
    workload = setup.workload(cfg)
    ckpt = cfg.train.checkpoint_dir or str(run_dir / "checkpoints")
    stages = cfg.pipeline.stages
    cpus = cfg.cluster.cpus_per_stage * math.ceil(stages / max(1, cfg.cluster.nodes))
    log = (lambda text: None) if args.json else (lambda text: print(text, file=sys.stderr, flush=True))
    try:
        with connect(cfg.cluster.address, cfg.cluster.nodes, max(cpus, cfg.cluster.cpus_per_stage),
                     cfg.cluster.gpus_per_stage * math.ceil(stages / max(1, cfg.cluster.nodes)),
                     cfg.cluster.start_timeout_s) as info:
            from layeredge_dist.pipeline.driver import Pipeline, StageFailure
            from layeredge_dist.pipeline.report import format_memory, format_traffic, traffic_rows
            from layeredge_dist.pipeline.train import Events, LoopConfig, train

            log(f"cluster {info.address}: {info.num_nodes} node(s){' (embedded)' if info.embedded else ''}; "
                f"model {spec.model.family} cut at {list(spec.cuts)} into {stages} stages; schedule "
                f"{spec.schedule}, {spec.microbatches} micro-batches; codecs fwd {spec.codecs.forward} / bwd "
                f"{spec.codecs.backward}")
            progress = _Progress(cfg.train.steps, cfg.data.batch_size * cfg.data.context, cfg.train.log_every,
                                 args.json)

            curves: dict[str, list[tuple[float, float]]] = {"train": [], "val": []}
            clock = {"t0": 0.0}  # when the first step began

            class _Ev(Events):
                def step(self, step: int, loss: float, result: Any) -> None:
                    progress.step(step, loss, result.seconds)
                    if not curves["train"]:
                        clock["t0"] = time.perf_counter() - result.seconds
                    curves["train"].append((time.perf_counter() - clock["t0"], loss))

                def evaluated(self, step: int, val_loss: float) -> None:
                    progress.val = f" (val {val_loss:.3f})"
                    curves["val"].append((time.perf_counter() - clock["t0"], val_loss))

                def failed(self, step: int, error: StageFailure, resume_step: int) -> None:
                    progress.note(f"step {step + 1}: {error}; resuming from the checkpoint after step {resume_step}")

            loop = LoopConfig(cfg.train.steps, cfg.train.eval_every, cfg.train.eval_batches,
                              cfg.train.checkpoint_every, ckpt, cfg.train.resume,
                              probe_every=cfg.metrics.probe_every)
            with Pipeline(spec, setup.placement(cfg)) as pipe, contextlib.ExitStack() as stack:
                for i in pipe.infos:
                    log(f"  stage {i['stage']}: node {i['node_ip']} ({i['node_id'][:8]}), pid {i['pid']}, "
                        f"{i['device']}, edge server {i['address']}"
                        + (f", metrics {i['metrics']}" if i.get("metrics") else ""))
                events: Events = _Ev()
                if cfg.metrics.port is not None:
                    from layeredge_dist.pipeline.observe import Observer
                    from layeredge_dist.pipeline.train import EventChain

                    observer = Observer(cfg.name, pipe, cfg.data.batch_size * cfg.data.context, cfg.metrics.port,
                                        sd_path=run_dir / "prometheus" / "targets.json")
                    stack.callback(observer.close)
                    events = EventChain(events, observer)
                    log(f"  metrics: {observer.exporter.url} (driver); file SD {observer.sd_path}")
                if cfg.control.profile is not None:
                    from layeredge_dist.pipeline.controller import Controller, ControllerConfig
                    from layeredge_dist.pipeline.train import EventChain
                    from layeredge_dist.plan import ModelProfile

                    c = cfg.control
                    profile = ModelProfile.from_json(Path(c.profile).read_text())
                    controller = Controller(pipe, profile, ControllerConfig(c.every, tuple(c.candidates), c.budget,
                                                                            c.min_gain), log=progress.note)
                    events = EventChain(events, controller)
                    log(f"  online re-planning every {c.every} steps from {c.profile} (budget {c.budget})")
                result = train(pipe, workload, loop, events)
                stats = pipe.stats()
                memory = pipe.memory()
                proxies = pipe.proxy_values()
    except (ClusterError, StageFailure, ValueError) as err:
        print(f"layeredge: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    steady = result.step_seconds[min(3, len(result.step_seconds) - 1):] or result.step_seconds
    p50 = statistics.median(steady) if steady else float("nan")
    summary = {
        "run_dir": str(run_dir), "start_step": result.start_step, "steps_done": result.steps_done,
        "final_loss": result.losses[-1] if result.losses else None,
        "val_losses": [{"step": s, "loss": v} for s, v in result.val_losses],
        "step_seconds_p50": p50, "tokens_per_s": cfg.data.batch_size * cfg.data.context / p50 if steady else None,
        "wall_s": result.wall_s, "failures": result.failures, "resumed_from": result.resumed_from,
        "traffic": traffic_rows(stats), "memory": memory, "proxies": proxies,
    }
    try:
        from layeredge_dist.pipeline.report import plot_run

        summary["plot"] = plot_run(str(run_dir / "report.png"), curves["train"], curves["val"], summary["traffic"],
                                   max(1, result.steps_done - result.start_step), stages,
                                   f"{spec.model.family} in {stages} stages, codecs fwd {spec.codecs.forward} / bwd "
                                   f"{spec.codecs.backward}")
    except ImportError as err:
        log(f"no plot: matplotlib is not installed ({err})")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    if args.json:
        print(json.dumps(summary, default=str))
        return 0
    print(f"\n{result.steps_done} steps in {result.wall_s:.1f} s (p50 {p50:.3f} s/step, "
          f"{summary['tokens_per_s'] or 0:,.0f} tokens/s); final train loss {summary['final_loss']}")
    for s, v in result.val_losses:
        print(f"  validation loss after {s} steps: {v:.4f}")
    print("\nper-edge traffic\n" + format_traffic(stats, stages))
    print("\nmemory per stage\n" + format_memory(memory))
    print(f"\nsummary: {run_dir / 'summary.json'}; checkpoints: {ckpt}"
          + (f"; plot (loss vs wall time, MB per step per edge): {summary['plot']}" if summary.get("plot") else ""))
    return 0


def run_train(args: argparse.Namespace) -> int:
    """``layeredge train``."""
    return _train(args, ())


#: The demo's settings: small enough to show progress on 2 CPU cores within a few minutes.
DEMO = ("train.steps=150", "train.eval_every=50", "train.checkpoint_every=50", "train.log_every=10",
        "data.batch_size=8", "data.context=128", "pipeline.microbatches=4")


def run_run(args: argparse.Namespace) -> int:
    """``layeredge run``; with ``--testbed RATE`` the same job as the driver inside host 0 of an emulated
    multi-host network shaped to RATE (``layeredge testbed run``: needs root)."""
    if args.testbed is None:
        return _train(args, DEMO)
    from layeredge_dist.cli import testbed_cmd

    cfg = _saved_config(args, DEMO, "testbed-config.yaml")  # the testbed adds --address and its own overrides
    if cfg is None:
        return 2
    path = Path(cfg.run_dir) / "testbed-config.yaml"
    tb_args = argparse.Namespace(rate=args.testbed, hosts=cfg.pipeline.stages, cpus_per_node=1.0,
                                 timeout=cfg.cluster.start_timeout_s, command="run",
                                 args=["--config", str(path)] + (["--json"] if args.json else []))
    return testbed_cmd.run_run(tb_args)


def run_verify(args: argparse.Namespace) -> int:
    """``layeredge verify``."""
    try:
        cfg = resolve_config(args, ("pipeline.microbatches=4", "data.batch_size=8", "data.context=32",
                                    "train.optimizer=sgd"))
        if args.model:
            cfg = with_overrides(cfg, [f"model.family={args.model}"])
    except (ConfigError, OSError) as err:
        print(f"layeredge: config error: {err}", file=sys.stderr)
        return 2
    from layeredge_dist.pipeline import setup
    from layeredge_dist.pipeline.cluster import ClusterError, connect

    schedules = [s.strip() for s in args.schedules.split(",") if s.strip()]
    stages = cfg.pipeline.stages
    try:
        specs = []
        for name in schedules:
            chunks = cfg.pipeline.chunks if name == "interleaved" else 1
            c = with_overrides(cfg, [f"pipeline.schedule={name}", f"pipeline.chunks={chunks}"]
                               + (["pipeline.cuts=null"] if chunks != cfg.pipeline.chunks else []))
            specs.append(setup.stage_spec(c))
        workload = setup.workload(cfg, synthetic=True)
        with connect(cfg.cluster.address, cfg.cluster.nodes,
                     cfg.cluster.cpus_per_stage * math.ceil(stages / max(1, cfg.cluster.nodes)), 0.0,
                     cfg.cluster.start_timeout_s):
            from layeredge_dist.pipeline.driver import StageFailure
            from layeredge_dist.pipeline.verify import verify

            try:
                agreements = verify(specs, workload, setup.placement(cfg))
            except StageFailure as err:
                print(f"layeredge: {err}", file=sys.stderr)
                return 1
    except (ClusterError, ConfigError, ValueError) as err:
        print(f"layeredge: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    worst = max(max(a.max_abs_loss_diff, a.max_abs_grad_diff) for a in agreements)
    ok = worst <= args.tolerance
    if args.json:
        print(json.dumps({"model": cfg.model.family, "stages": stages, "microbatches": cfg.pipeline.microbatches,
                          "codecs": {"forward": cfg.codecs.forward, "backward": cfg.codecs.backward},
                          "tolerance": args.tolerance, "ok": ok,
                          "schedules": {a.schedule: a.to_dict() for a in agreements}}))
    else:
        print(f"{cfg.model.family}: {stages} stages, {cfg.pipeline.microbatches} micro-batches, codecs "
              f"{cfg.codecs.forward}/{cfg.codecs.backward}; pipeline vs single process:")
        for a in agreements:
            print(f"  {a.schedule:12s} max |loss diff| {a.max_abs_loss_diff:.3g}   max |grad diff| "
                  f"{a.max_abs_grad_diff:.3g} (at {a.worst_grad})")
        print(("OK" if ok else "MISMATCH") + f": worst {worst:.3g} vs tolerance {args.tolerance:g}")
    return 0 if ok else 1


def add_arguments(sub: argparse._SubParsersAction) -> None:
    """Register run, train, verify and infer."""
    run = sub.add_parser("run", help="the demo: train the byte-level GPT in 3 stages on an embedded Ray cluster",
                         description="The main job: start an embedded Ray cluster on 127.0.0.1, cut the byte-level "
                         "GPT demo model into 3 stages (one actor each), train it on the Python standard library's "
                         "source with a progress line (loss, tokens/s), evaluate on held-out files, checkpoint, and "
                         "end with per-edge traffic and per-stage memory tables, summary.json and report.png (loss against wall "
                         "time, MB per training step per edge); --testbed RATE does the same on an emulated multi-host "
                         "network with shaped links. Demo defaults: "
                         + ", ".join(DEMO) + " (a --config file replaces them).")
    add_common(run)
    run.add_argument("--testbed", nargs="?", const="100mbit", default=None, metavar="RATE",
                     help="run on an emulated multi-host network instead (root): one network namespace and Ray node "
                     "per stage on a switch, every link shaped to RATE (100mbit if no value; 1gbit, unshaped, ...), "
                     "the driver inside host 0, everything torn down at the end; see cluster/testbed.md")
    run.set_defaults(func=run_run)
    train = sub.add_parser("train", help="train a model as a pipeline of stage actors (config file + overrides)",
                           description="Train the configured model as a pipeline of Ray stage actors; resumes from "
                           "the newest complete checkpoint in the run directory unless train.resume=false.")
    add_common(train)
    train.set_defaults(func=run_train)
    verify = sub.add_parser("verify", help="pipeline vs single process: largest loss and gradient differences",
                            description="Run one training step (forward and backward, no optimizer step) through "
                            "the stage actors and through a single-process copy of the same model on the same "
                            "batch, for each schedule, and report the largest absolute loss and gradient "
                            "differences. Exit code 1 when one exceeds --tolerance. Uses synthetic batches.")
    add_common(verify)
    verify.add_argument("--model", default=None, help="model family (byte_gpt, sequential, hf_gpt2, hf_bert); "
                        "its settings via --set model.config.KEY=VALUE")
    verify.add_argument("--schedules", default="gpipe,1f1b", help="comma-separated schedules (default gpipe,1f1b)")
    verify.add_argument("--tolerance", type=float, default=1e-5, help="largest acceptable difference (default 1e-5)")
    verify.set_defaults(func=run_verify)
    from . import infer_cmd

    infer_cmd.add_parser(sub)
