"""``layeredge prune``: shrink the edges of the run config's model, recover by fine-tuning, report what it cost.

In this process (no Ray): the baseline is the run's newest matching checkpoint, or it is trained first
(``--train-steps``, default ``train.steps``). At every cut ``--cut-rank`` of the channels stay on the wire: removed
by weight surgery where the architecture allows it (a ``sequential`` cut between Linear [+ activation] and Linear),
otherwise (a residual stream, e.g. the demo byte GPT, where no channel can be removed) through a learned low-rank
projection ``d -> r -> d`` at the cut, PCA-initialised. ``--weight-sparsity`` / ``--weight-method`` prune weights
inside the partitions (magnitude, Taylor, 2:4; masks kept through fine-tuning). Then ``--finetune-steps`` steps of
the run's optimizer; the unpruned model is fine-tuned the same steps on the same batches for a fair comparison.
The report: bytes per edge and step before / after, validation loss before pruning, after pruning, after
fine-tuning and of the unpruned model fine-tuned alike, and the bytes of shipping every stage's pruned weights
(int8 / int4, sparse) to another process over the edge transport. Written: ``<out>/model.safetensors`` and
``<out>/pruned.yaml``; ``layeredge train --config <out>/pruned.yaml`` trains the pruned model on Ray.
``--finetune-on pipeline`` runs the recovery fine-tuning itself on the run's Ray pipeline (the pruned weights
pushed to the stage actors over the edge transport, checksums verified) instead of in this process.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from layeredge_dist.config import ConfigError

from .pipeline_cmd import add_common, resolve_config

#: The demo's data settings (as ``layeredge run``), unless a --config file is given.
DEMO = ("data.batch_size=8", "data.context=128", "pipeline.microbatches=4")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``layeredge prune``."""
    p = sub.add_parser("prune", help="prune the edges (channels at the cuts, weights), fine-tune, report the cost",
                       description=__doc__)
    add_common(p)
    p.add_argument("--cut-rank", type=float, default=0.5,
                   help="fraction of a cut's channels kept on the wire, in (0, 1] (default 0.5)")
    p.add_argument("--init", choices=("pca", "channels"), default="pca",
                   help="projection init: pca (top principal directions) or channels (most important channels)")
    p.add_argument("--mlp-hidden", type=float, default=0.0,
                   help="fraction of transformer MLP hidden units removed by Taylor importance (default 0)")
    p.add_argument("--weight-sparsity", type=float, default=0.0, help="per-tensor weight sparsity (default 0)")
    p.add_argument("--weight-method", default="magnitude", help="magnitude | taylor | 2:4 (default magnitude)")
    p.add_argument("--finetune-steps", type=int, default=200, help="fine-tuning steps after pruning (default 200)")
    p.add_argument("--finetune-lr", type=float, default=None, help="fine-tuning learning rate (default train.lr)")
    p.add_argument("--projection-lr-scale", type=float, default=0.1,
                   help="learning rate of cut projections while fine-tuning, times the fine-tuning lr; 0 = frozen "
                   "(default 0.1)")
    p.add_argument("--train-steps", type=int, default=None,
                   help="baseline training steps when no checkpoint matches (default train.steps)")
    p.add_argument("--no-checkpoint", action="store_true",
                   help="train the baseline even if a checkpoint or a cached baseline matches")
    p.add_argument("--calib-batches", type=int, default=8, help="calibration batches (default 8)")
    p.add_argument("--eval-batches", type=int, default=16, help="held-out validation batches (default 16)")
    p.add_argument("--curve", default="",
                   help="rank fractions for the accuracy-vs-compression curve, e.g. 1,0.75,0.5,0.25 (default none)")
    p.add_argument("--weight-codec", default="int8", help="codec of shipped weights, e.g. int8, int4 (default int8)")
    p.add_argument("--sparse-codec", default=None, help="codec of the kept values of pruned weights (default: "
                   "--weight-codec)")
    p.add_argument("--ship", choices=("process", "thread", "none"), default="process",
                   help="where the weight receiver runs: another process (default), a thread, or no shipping")
    p.add_argument("--finetune-on", choices=("local", "pipeline"), default="local",
                   help="fine-tune the pruned model in this process (default) or through the Ray pipeline of the "
                   "run config (its weights pushed to the stages; needs --projection-lr-scale 1 and no weight "
                   "pruning)")
    p.add_argument("--push-codec", default="fp32",
                   help="codec of the weights pushed to the pipeline with --finetune-on pipeline (default fp32)")
    p.add_argument("--out", default=None, help="output directory (default <run_dir>/pruned)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``layeredge prune``; exit code 2 for bad arguments, 1 when the job fails."""
    try:
        cfg = resolve_config(args, DEMO)
        from layeredge_dist.pipeline.prune_run import PruneOptions

        curve = tuple(float(v) for v in args.curve.split(",") if v.strip())
        opts = PruneOptions(cut_rank=args.cut_rank, init=args.init, mlp_hidden=args.mlp_hidden,
                            weight_sparsity=args.weight_sparsity, weight_method=args.weight_method,
                            finetune_steps=args.finetune_steps, finetune_lr=args.finetune_lr,
                            projection_lr_scale=args.projection_lr_scale,
                            train_steps=args.train_steps, calib_batches=args.calib_batches,
                            eval_batches=args.eval_batches, curve=curve, weight_codec=args.weight_codec,
                            sparse_codec=args.sparse_codec, ship=args.ship, out_dir=args.out,
                            use_checkpoint=not args.no_checkpoint, finetune_on=args.finetune_on,
                            push_codec=args.push_codec)
    except (ConfigError, OSError, ValueError) as err:
        print(f"layeredge: {err}", file=sys.stderr)
        return 2
    from layeredge_dist.codecs import CodecError
    from layeredge_dist.pipeline.prune_run import run as prune

    log = (lambda t: None) if args.json else (lambda t: print(t, file=sys.stderr, flush=True))
    try:
        report = prune(cfg, opts, log)
    except (CodecError, ValueError, RuntimeError, TimeoutError) as err:
        print(f"layeredge: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, default=str))
    else:
        print(format_report(report))
    return 0


def _mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.3f}"


def format_report(r: Mapping[str, Any]) -> str:
    """The report as text tables."""
    lines = [f"model {r['model']['family']} cut at {r['model']['cuts']}; baseline: {r['baseline']['source']} "
             f"({r['baseline']['steps']} steps)", "", "edges (per training step, forward + backward):"]
    lines.append(f"{'edge':8s} {'channels':>10s} {'fp32 MB before':>15s} {'after':>8s} {'wire MB before':>15s} "
                 f"{'after':>8s} {'saved':>6s}  action")
    reasons: list[str] = []
    for e in r["edges"]:
        lines.append(f"{e['edge']:8s} {e['channels_before']:>4d} ->{e['channels_after']:>4d} "
                     f"{_mb(e['fp32_bytes_per_step_before']):>15s} {_mb(e['fp32_bytes_per_step_after']):>8s} "
                     f"{_mb(e['wire_bytes_per_step_before']):>15s} {_mb(e['wire_bytes_per_step_after']):>8s} "
                     f"{e['bytes_saved_fraction']:>6.0%}  {e['action']}")
        if not e["prunable"] and e["reason"] not in reasons:
            reasons.append(e["reason"])
    lines += [f"no channel can be removed at {', '.join(x['edge'] for x in r['edges'] if x['reason'] == why)}: {why}"
              for why in reasons]
    loss = r["loss"]
    lines += ["", "validation loss:",
              f"  before pruning            {loss['baseline']:.4f}",
              f"  after pruning the cuts    {loss['after_cut_pruning']:.4f}",
              f"  after all pruning         {loss['after_pruning']:.4f}",
              f"  after {r['finetune']['steps']} fine-tuning steps {loss['finetuned']:.4f}",
              f"  unpruned, same extra steps {loss['unpruned_finetuned']:.4f}  "
              f"(gap {loss['gap_vs_unpruned_finetuned']:+.2%})"]
    ft = r["finetune"].get("pipeline")
    if ft:
        lines.append(f"  fine-tuned on the Ray pipeline ({ft['nodes']} node(s), {ft['train_seconds']:.1f} s); "
                     f"pruned weights pushed as {ft['push']['codec']}: {_mb(ft['push']['raw_bytes'])} MB -> "
                     f"{_mb(ft['push']['wire_bytes'])} MB on the wire; pipeline validation loss "
                     f"{ft['val_loss_pipeline']:.4f}")
    if r.get("weights"):
        w = r["weights"]
        lines.append(f"weights: {w['method']} on {w['tensors']} tensors, sparsity {w['sparsity_masked']:.1%} of the "
                     f"masked tensors ({w['sparsity_all']:.1%} of all parameters)")
    if r.get("curve"):
        lines += ["", "accuracy vs compression (projection / channel removal at every cut):",
                  f"{'rank':>6s} {'edge MB/step':>13s} {'val loss':>9s} {'fine-tuned':>11s} {'gap':>7s}"]
        for c in r["curve"]:
            lines.append(f"{c['rank_fraction']:>6.2f} {_mb(c['edge_bytes_per_step']):>13s} {c['val_loss']:>9.4f} "
                         f"{c['val_loss_finetuned']:>11.4f} {c['gap_vs_unpruned_finetuned']:>+7.2%}")
    t = r["transfer"]
    lines += ["", f"weight transfer ({t['codec']}, sparse values {t['sparse_codec']}):"]
    for s in t["stages"]:
        extra = (f", wire {_mb(s['wire_bytes'])} MB in {s['seconds']:.3f} s, checksums verified"
                 if "wire_bytes" in s else "")
        lines.append(f"  stage {s['stage']}: fp32 {_mb(s['raw_bytes'])} MB -> {_mb(s['wire_payload_bytes'])} MB "
                     f"({s['ratio']:.2f}x){extra}")
    o = r["outputs"]
    if "error" in o:
        lines += ["", f"pruned model not written: {o['error']}"]
    else:
        lines += ["", f"pruned model: {o['weights']}", f"config: {o['config']}",
                  f"train it on Ray: {o['train_command']}"]
    return "\n".join(lines)
