"""Importance benchmark: does channel importance find the channels a cut can lose?

In one run, in this process: the demo model (the run config's model and cuts) is trained ``--train-steps`` steps
as the pipeline would; channel importance of the activation crossing each cut is measured on calibration
batches (Taylor ``E|a_c g_c|`` and activation L2); then on held-out validation batches the loss is measured with
``--fraction`` of that cut's channels removed (zeroed where the tensor crosses the cut, which is what pruning the
edge removes from the wire) chosen (a) by least Taylor importance, (b) by least activation norm, (c) at random
(``--random-draws`` draws, mean and spread), against (d) nothing removed. The target: pruning by importance
loses less validation loss than pruning at random.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence

import torch

from layeredge_dist.bench import output
from layeredge_dist.config import RunConfig, with_overrides

DEMO = ("data.batch_size=8", "data.context=128", "pipeline.microbatches=4")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``layeredge bench importance``."""
    p.add_argument("--train-steps", type=int, default=150, help="in-process training steps first (default 150)")
    p.add_argument("--fraction", type=float, default=0.5, help="share of a cut's channels removed (default 0.5)")
    p.add_argument("--calib-batches", type=int, default=8, help="batches that measure importance (default 8)")
    p.add_argument("--eval-batches", type=int, default=16, help="held-out batches that measure the loss (default 16)")
    p.add_argument("--random-draws", type=int, default=5, help="random channel sets per cut (default 5)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a run config field (see layeredge train --help)")


def _loss_with_mask(parts: Sequence[torch.nn.Module], batches: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]],
                    cut: int, keep: torch.Tensor | None) -> float:
    """Mean loss over ``batches`` with the activation crossing ``cut`` multiplied by ``keep`` (channels, last dim)."""
    total = 0.0
    with torch.no_grad():
        for x, side in batches:
            h = x
            for i, part in enumerate(parts):
                h = part(h, side)
                if i == cut and keep is not None:
                    h = h * keep  # (B, T, C) * (C,)
            total += float(parts[-1].loss(h, side))  # type: ignore[operator]
    return total / len(batches)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; exit code 2 for bad arguments."""
    if not 0 < args.fraction < 1 or args.random_draws < 1 or min(args.calib_batches, args.eval_batches) < 1:
        print("error: need 0 < --fraction < 1 and positive batch and draw counts", file=sys.stderr)
        return 2
    from layeredge_dist.measure import ChannelAccumulator, least_important
    from layeredge_dist.model import split_batch, train_chain
    from layeredge_dist.pipeline.profile import trained_partitions

    cfg = with_overrides(RunConfig(), list(DEMO) + list(args.overrides))
    log = output.progress(args)
    log(f"training {args.train_steps} steps in-process ...")
    parts, workload, losses = trained_partitions(cfg, args.train_steps)
    batches = workload.val_batches(args.calib_batches + args.eval_batches)
    calib, held_out = batches[:args.calib_batches], batches[args.calib_batches:]
    n_cuts = len(parts) - 1
    accs = [ChannelAccumulator() for _ in range(n_cuts)]
    for part in parts:
        part.eval()
    for x, side in calib:  # activations and their gradients at every cut, as the pipeline computes them
        xs, sides = split_batch((x, side), cfg.pipeline.microbatches)
        step = train_chain(parts, xs, sides)
        for k in range(n_cuts):
            for a, g in zip(step.activations[k], step.gradients[k]):
                accs[k].add(a, g)
    for part in parts:
        part.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for k in range(n_cuts):
        scores = accs[k].result()
        c = scores.taylor.numel()
        drop = int(round(args.fraction * c))

        def keep_without(idx: torch.Tensor) -> torch.Tensor:
            keep = torch.ones(c)
            keep[idx] = 0.0
            return keep

        base = _loss_with_mask(parts, held_out, k, None)
        by_taylor = _loss_with_mask(parts, held_out, k, keep_without(least_important(scores.taylor, drop)))
        by_norm = _loss_with_mask(parts, held_out, k, keep_without(least_important(scores.l2, drop)))
        rand = [_loss_with_mask(parts, held_out, k, keep_without(torch.randperm(c, generator=gen)[:drop]))
                for _ in range(args.random_draws)]
        rows.append({"cut": k, "channels": c, "removed": drop, "loss_unpruned": base, "loss_taylor": by_taylor,
                     "loss_l2": by_norm, "loss_random_mean": statistics.mean(rand),
                     "loss_random_min": min(rand), "loss_random_std": statistics.pstdev(rand),
                     "taylor_beats_random": by_taylor < min(rand)})
        log(f"cut {k}: done")
    doc = {"train_steps": args.train_steps, "final_train_loss": losses[-1] if losses else None,
           "fraction": args.fraction, "cuts": rows, "config": list(DEMO) + list(args.overrides)}
    if output.emit(doc, args):
        return 0
    print(f"validation loss with {args.fraction:.0%} of a cut's channels removed (demo model, {args.train_steps} "
          f"training steps, {args.eval_batches} held-out batches)")
    print(f"{'cut':>3s} {'channels':>8s} {'unpruned':>9s} {'taylor':>9s} {'act norm':>9s} {'random (mean ± sd, min)':>26s}")
    for r in rows:
        print(f"{r['cut']:>3d} {r['channels']:>8d} {r['loss_unpruned']:9.4f} {r['loss_taylor']:9.4f} "
              f"{r['loss_l2']:9.4f} {r['loss_random_mean']:9.4f} ± {r['loss_random_std']:.4f}, "
              f"{r['loss_random_min']:.4f}" + ("   taylor < every random draw" if r["taylor_beats_random"] else ""))
    return 0
