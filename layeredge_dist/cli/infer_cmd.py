"""``layeredge infer``: run requests through the stage chain.

Two modes: ``--prompt TEXT`` generates ``--bytes N`` bytes after the prompt (greedy unless ``--temperature``);
``--requests N`` serves N validation windows in batches of at most ``--max-batch`` and reports per-request
latency (p50, p95, max) and throughput. Weights come from the newest complete checkpoint in the run's
checkpoint directory when there is one (train first with ``layeredge run`` / ``train``), else the seeded
initialisation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from typing import Any

from layeredge_dist.config import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``infer``."""
    from .pipeline_cmd import DEMO, add_common

    p = sub.add_parser("infer", help="generate text or measure request latency through the stage chain",
                       description=__doc__)
    add_common(p)
    p.add_argument("--prompt", default=None, help="text to continue (byte-level models)")
    p.add_argument("--bytes", type=int, default=64, help="bytes to generate after --prompt (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
    p.add_argument("--requests", type=int, default=0, help="serve this many validation windows, report latency")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch the batcher forms (default 8)")
    p.add_argument("--rate", type=float, default=None, help="Poisson arrival rate, requests/s (default: all at once)")
    p.add_argument("--no-serve", action="store_true", help="one Ray task per call and stage instead of the "
                   "serving loops fed by the edge transport (slower; for comparison)")
    p.set_defaults(func=run_infer, demo_defaults=DEMO)


def _answer(pipe: Any, cfg: Any, args: argparse.Namespace, out: dict[str, object]) -> None:
    """Generate after --prompt and/or serve --requests; results into ``out``."""
    from layeredge_dist.pipeline import setup
    from layeredge_dist.pipeline.infer import generate, serve

    if args.prompt is not None:
        text = generate(pipe, args.prompt.encode(), args.bytes, cfg.data.context, args.temperature)
        out["prompt"] = args.prompt
        out["generated"] = text.decode("utf-8", errors="replace")
    if args.requests > 0:
        windows = [x for x, _ in setup.workload(cfg).val_batches(math.ceil(args.requests / cfg.data.batch_size))]
        reqs = [row for batch in windows for row in batch][: args.requests]
        out["latency"] = serve(pipe, reqs, args.max_batch, args.rate).to_dict()


def run_infer(args: argparse.Namespace) -> int:
    """``layeredge infer``."""
    from .pipeline_cmd import resolve_config

    if args.prompt is None and args.requests <= 0:
        print("layeredge infer: give --prompt TEXT or --requests N", file=sys.stderr)
        return 2
    try:
        cfg = resolve_config(args, args.demo_defaults)
    except (ConfigError, OSError) as err:
        print(f"layeredge: config error: {err}", file=sys.stderr)
        return 2
    from layeredge_dist.pipeline import setup
    from layeredge_dist.pipeline.cluster import ClusterError, connect
    from layeredge_dist.stage import read_manifest

    spec = setup.stage_spec(cfg)
    ckpt = cfg.train.checkpoint_dir or f"{cfg.run_dir}/checkpoints"
    stages = cfg.pipeline.stages
    out: dict[str, object] = {"checkpoint_step": None}
    try:
        with connect(cfg.cluster.address, cfg.cluster.nodes,
                     cfg.cluster.cpus_per_stage * math.ceil(stages / max(1, cfg.cluster.nodes)), 0.0,
                     cfg.cluster.start_timeout_s):
            from layeredge_dist.pipeline.driver import Pipeline, StageFailure

            with Pipeline(spec, setup.placement(cfg)) as pipe:
                manifest = read_manifest(ckpt)
                if manifest is not None:
                    problem = setup.Identity.of(spec).mismatch(manifest)
                    if problem:
                        raise ValueError(f"checkpoint {ckpt} does not fit this model: {problem}")
                    pipe.load_checkpoint(ckpt, int(manifest["step"]))
                    out["checkpoint_step"] = int(manifest["step"])
                elif not args.json:
                    print(f"(no checkpoint in {ckpt}: seeded initial weights)", file=sys.stderr)
                served = pipe.serving() if spec.chunks == 1 and not args.no_serve else contextlib.nullcontext()
                out["served"] = spec.chunks == 1 and not args.no_serve
                with served:
                    _answer(pipe, cfg, args, out)
    except (ClusterError, StageFailure, ValueError) as err:
        print(f"layeredge: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(out))
        return 0
    if "generated" in out:
        print(f"{out['prompt']}\033[1m{out['generated']}\033[0m" if sys.stdout.isatty()
              else f"{out['prompt']}{out['generated']}")
    if "latency" in out:
        lat = out["latency"]
        assert isinstance(lat, dict)
        print(f"{lat['requests']} requests in {lat['batches']} batches (mean {lat['mean_batch']:.1f}, max "
              f"{lat['max_batch']}): latency p50 {lat['p50_s'] * 1e3:.1f} ms, p95 {lat['p95_s'] * 1e3:.1f} ms, "
              f"max {lat['max_s'] * 1e3:.1f} ms; {lat['requests_per_s']:.1f} requests/s")
    return 0
