"""``layeredge profile``: where the network time goes and what is safe to compress, per edge.

First a calibration in this process (no Ray): the configured model is cut as the run would cut it, trained
``--calib-steps`` steps with the run's optimizer, then on ``--calib-batches`` held-out batches every cut is
measured in both directions: elements and raw bytes per training step, wire bytes per step for each codec of
``--codecs`` (exact bits per element), the measured loss change when only that edge is compressed (mean ± standard
error, nats), the output KL, the gradient error of the backward direction, the cheap online proxy, activation
statistics and channel / weight importance, and the Spearman rank correlation of proxy vs. measurement.

Then, unless ``--no-pipeline``, the real pipeline on Ray (embedded cluster, or ``--address``): ``train.steps``
training steps (default 10 here) after one warm-up step, with per-edge bytes and transfer time per step, achieved
and probed link bandwidth, each edge's share of the step time, and per-stage forward / backward / idle time and
bubble fraction. ``--json`` prints everything as one JSON document; ``--plot PATH`` writes one PNG figure
(needs matplotlib, extra ``bench``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from layeredge_dist.config import ConfigError

#: Profile defaults (like ``run``'s demo settings; a --config file replaces them): pipeline steps and batch shape.
PROFILE_DEFAULTS = ("train.steps=10", "data.batch_size=8", "data.context=128", "pipeline.microbatches=4")
DEFAULT_CODECS = "fp16,bf16,int8,int4,int2,topk:0.1+int8"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``profile``."""
    from .pipeline_cmd import add_common

    p = sub.add_parser("profile", help="per edge: bytes, network time and what is safe to compress",
                       description=__doc__)
    add_common(p)
    p.add_argument("--codecs", default=DEFAULT_CODECS,
                   help=f"comma-separated codec specs to evaluate on every cut (default {DEFAULT_CODECS})")
    p.add_argument("--calib-batches", type=int, default=4, help="held-out calibration batches (default 4)")
    p.add_argument("--calib-steps", type=int, default=30,
                   help="training steps in-process before calibrating; 0 = seeded initial weights (default 30)")
    p.add_argument("--no-pipeline", action="store_true",
                   help="calibration only: no Ray, no pipeline timings")
    p.add_argument("--plot", metavar="PATH", default=None, help="also write one PNG figure of the profile here")
    p.set_defaults(func=run_profile)
    p.description = (p.description or "") + (
        "\nProfile defaults (replaced by a --config file): " + ", ".join(PROFILE_DEFAULTS)
        + "; --steps sets the pipeline's measured training steps.")


def run_profile(args: argparse.Namespace) -> int:
    """``layeredge profile``: 0 on success, 2 for a bad config or argument, 1 when a measurement fails."""
    from .pipeline_cmd import resolve_config

    try:
        cfg = resolve_config(args, PROFILE_DEFAULTS)
    except (ConfigError, OSError) as err:
        print(f"layeredge: config error: {err}", file=sys.stderr)
        return 2
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    if not codecs:
        print("layeredge profile: --codecs lists no codec", file=sys.stderr)
        return 2
    if args.calib_batches < 1 or args.calib_steps < 0:
        print("layeredge profile: --calib-batches must be >= 1 and --calib-steps >= 0", file=sys.stderr)
        return 2
    from layeredge_dist.codecs import CodecError
    from layeredge_dist.pipeline.profile import calibrate, format_profile, measure_pipeline, plot_profile

    log = (lambda text: None) if args.json else (lambda text: print(text, file=sys.stderr, flush=True))
    try:
        log(f"calibrating {cfg.model.family} in-process: {args.calib_steps} training steps, "
            f"{args.calib_batches} batches, codecs {', '.join(codecs)}")
        doc = calibrate(cfg, codecs, args.calib_batches, args.calib_steps)
        doc["pipeline"] = None
        if not args.no_pipeline:
            from layeredge_dist.pipeline.cluster import ClusterError, connect

            stages = cfg.pipeline.stages
            per_node = math.ceil(stages / max(1, cfg.cluster.nodes))
            try:
                with connect(cfg.cluster.address, cfg.cluster.nodes,
                             max(cfg.cluster.cpus_per_stage * per_node, cfg.cluster.cpus_per_stage),
                             cfg.cluster.gpus_per_stage * per_node, cfg.cluster.start_timeout_s) as info:
                    from layeredge_dist.pipeline.driver import StageFailure

                    log(f"cluster {info.address}: {info.num_nodes} node(s); {cfg.train.steps} pipeline steps")
                    try:
                        doc["pipeline"] = measure_pipeline(cfg, cfg.train.steps)
                    except StageFailure as err:
                        print(f"layeredge: StageFailure: {err}", file=sys.stderr)
                        return 1
            except ClusterError as err:
                print(f"layeredge: ClusterError: {err}", file=sys.stderr)
                return 1
    except (CodecError, ValueError) as err:
        print(f"layeredge: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    if args.plot:
        try:
            doc["plot"] = plot_profile(doc, args.plot)
        except (RuntimeError, OSError) as err:
            print(f"layeredge: {err}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(doc))
        return 0
    print(format_profile(doc))
    if args.plot:
        print(f"\nplot: {doc['plot']}")
    return 0
