"""Weight transfer benchmark: how many bytes a partition's weights cost on the wire, and what they lose.

The demo model (the run config's model; ``--train-steps`` steps of in-process training first, so the weights have
trained distributions) is encoded whole with :func:`~layeredge_dist.prune.transfer.encode_state` in each variant:

  fp32                      lossless baseline (the ratio reference)
  bf16                      cast
  int8                      blockwise absmax, block 128: per-block max error <= absmax / 255 (target <= absmax/127)
  int4                      blockwise absmax, block 128: per-block max error <= absmax / 15
  int4+50%magnitude         every weight matrix 50 % magnitude-pruned; kept values int4, positions as a bitmap
                            (or Elias-Fano when cheaper)
  int8+2:4                  every weight matrix 2:4-pruned along its input dimension; kept values int8,
                            positions as 3-bit pattern ids per group of 4

Per variant: payload bytes (manifest included) and the ratio against fp32, encode / decode seconds, the per-block
max error relative to the block's absmax in the codec's own blocks of 128 (the quantization error alone: for pruned
tensors over the kept values, whose positions travel exactly), the relative L2 error of the whole model against the
original (pruning included), the validation loss of the model with the
decoded weights (``--eval-batches``), and the transfer over loopback: each variant shipped from an Endpoint here to
an Endpoint in another process (``--ship``) over the edge transport with ``TensorRole.WEIGHT``; wire bytes (frame
headers and stream overhead included) and seconds until the receiver verified every XXH3 checksum of the decoded
tensors. Targets: int8 >= 3.8x fewer bytes than fp32 with per-block max error <= absmax / 127; int4 + 50 % sparsity
>= 10x.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from layeredge_dist.bench import output
from layeredge_dist.config import RunConfig, with_overrides

DEMO = ("data.batch_size=8", "data.context=128", "pipeline.microbatches=4")
#: (name, dense codec, mask method or None, sparsity)
VARIANTS: tuple[tuple[str, str, str | None, float], ...] = (
    ("fp32", "fp32", None, 0.0),
    ("bf16", "bf16", None, 0.0),
    ("int8", "int8", None, 0.0),
    ("int4", "int4", None, 0.0),
    ("int4+50%magnitude", "int4", "magnitude", 0.5),
    ("int8+2:4", "int8", "2:4", 0.5),
)
#: Targets checked in the report: (variant, minimum ratio vs fp32, largest per-block error / absmax or None).
TARGETS = (("int8", 3.8, 1.0 / 127), ("int4+50%magnitude", 10.0, None))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``layeredge bench weights``."""
    p.add_argument("--train-steps", type=int, default=50, help="in-process training steps first (default 50)")
    p.add_argument("--eval-batches", type=int, default=4, help="held-out batches for the loss (default 4; 0 = skip)")
    p.add_argument("--ship", choices=("process", "thread", "none"), default="process",
                   help="weight receiver in another process (default), a thread, or no transfer")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a run config field (see layeredge train --help)")


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _loss(part: torch.nn.Module, state: dict[str, torch.Tensor], batches: Sequence[Any]) -> float | None:
    if not batches:
        return None
    from layeredge_dist.prune import val_loss

    model = copy.deepcopy(part)
    model.load_state_dict(state)
    return val_loss([model], batches)  # type: ignore[list-item]


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; exit code 2 for bad arguments."""
    if args.train_steps < 0 or args.eval_batches < 0:
        print("error: --train-steps and --eval-batches must be >= 0", file=sys.stderr)
        return 2
    from layeredge_dist.model import PartitionSpec, build_partition, merge_state_dicts, split_state_dict
    from layeredge_dist.pipeline.profile import trained_partitions
    from layeredge_dist.pipeline.prune_run import ship_states
    from layeredge_dist.prune import TransferPolicy, apply_masks, decode_state, encode_state, prune_masks
    from layeredge_dist.prune.transfer import block_error, summary

    cfg = with_overrides(RunConfig(), list(DEMO) + list(args.overrides))
    log = output.progress(args)
    log(f"training {args.train_steps} steps in-process ...")
    try:
        parts, workload, _ = trained_partitions(cfg, args.train_steps)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    model = parts[0].spec.model
    native = merge_state_dicts(model, parts[0].spec.cuts, [p.state_dict() for p in parts])
    whole = build_partition(PartitionSpec(model, (), 0), split_state_dict(model, (), native)[0])
    original = {k: v.detach().clone() for k, v in whole.state_dict().items()}
    batches = workload.val_batches(args.eval_batches) if args.eval_batches else []
    base_loss = _loss(whole, original, batches)
    numel = sum(v.numel() for v in original.values())
    rows, bundles = [], []
    fp32_bytes = None
    for name, codec, method, sparsity in VARIANTS:
        log(f"{name} ...")
        masks: dict[str, torch.Tensor] = {}
        target = original
        if method is not None:
            pruned = copy.deepcopy(whole)
            masks = prune_masks(pruned, method, sparsity=sparsity)
            apply_masks(pruned, masks)
            target = {k: v.detach().clone() for k, v in pruned.state_dict().items()}
        bundle, enc_s = _timed(lambda: encode_state(target, TransferPolicy(codec), masks=masks))
        decoded, dec_s = _timed(lambda: decode_state(bundle))
        s = summary(bundle)
        if fp32_bytes is None:
            fp32_bytes = s["raw_bytes"]
        # errors in the codec's own blocks: of the kept values (in order) for pruned tensors, of the tensor otherwise
        errs = [block_error(target[k][masks[k]], decoded[k][masks[k]]) if k in masks else
                block_error(target[k], decoded[k]) for k in target if target[k].is_floating_point()]
        assert all(bool((decoded[k][~mk] == 0).all()) for k, mk in masks.items()), "pruned weights must stay zero"
        diff = sum(float((decoded[k].double() - original[k].double()).pow(2).sum()) for k in original
                   if original[k].is_floating_point())
        norm = sum(float(original[k].double().pow(2).sum()) for k in original if original[k].is_floating_point())
        rows.append({
            "variant": name, "codec": codec, "pruning": method, "sparsity": sparsity if method else 0.0,
            "pruned_tensors": len(masks), "raw_bytes": s["raw_bytes"], "payload_bytes": s["wire_payload_bytes"],
            "manifest_bytes": s["manifest_bytes"], "index_bytes": s["index_bytes"],
            "index_formats": s["index_formats"], "ratio_vs_fp32": fp32_bytes / s["wire_payload_bytes"],
            "bits_per_weight": 8.0 * s["wire_payload_bytes"] / numel,
            "max_block_error_rel_absmax": max(e["max_rel_to_absmax"] for e in errs),
            "max_abs_error": max(e["max_abs"] for e in errs),
            "rel_l2_vs_original": (diff / norm) ** 0.5 if norm else 0.0,
            "encode_s": enc_s, "decode_verify_s": dec_s,
            "val_loss": _loss(whole, decoded, batches),
        })
        bundles.append(bundle)
    if args.ship != "none":
        log(f"shipping {len(bundles)} variants over the edge transport ({args.ship}) ...")
        for row, res in zip(rows, ship_states(bundles, args.ship)):
            row.update(transfer_s=res["seconds"], wire_bytes=res["wire_bytes"], frames=res["frames"],
                       verified=res["ok"])
    by_name = {r["variant"]: r for r in rows}
    targets = []
    for name, min_ratio, max_err in TARGETS:
        r = by_name[name]
        ok = r["ratio_vs_fp32"] >= min_ratio and (max_err is None or r["max_block_error_rel_absmax"] <= max_err)
        targets.append({"variant": name, "min_ratio": min_ratio, "max_block_error_rel_absmax": max_err,
                        "ratio": r["ratio_vs_fp32"], "error": r["max_block_error_rel_absmax"], "met": ok})
    doc = {"model": {"family": model.family, "parameters": numel, "tensors": len(original)},
           "train_steps": args.train_steps, "val_loss_fp32": base_loss, "variants": rows, "targets": targets,
           "ship": args.ship, "config": list(DEMO) + list(args.overrides)}
    if output.emit(doc, args):
        return 0
    print(f"weights of {model.family} ({numel:,} parameters, {len(original)} tensors, {args.train_steps} training "
          f"steps); val loss fp32 {base_loss if base_loss is None else round(base_loss, 4)}")
    print(f"{'variant':>18s} {'payload MB':>10s} {'ratio':>6s} {'bits/w':>6s} {'blk err/absmax':>14s} "
          f"{'rel L2':>8s} {'val loss':>8s} {'enc s':>6s} {'dec s':>6s} {'wire MB':>8s} {'xfer s':>7s}")
    for r in rows:
        vl = "-" if r["val_loss"] is None else f"{r['val_loss']:.4f}"
        wire = f"{r['wire_bytes'] / 1e6:.3f}" if "wire_bytes" in r else "-"
        xfer = f"{r['transfer_s']:.3f}" if "transfer_s" in r else "-"
        print(f"{r['variant']:>18s} {r['payload_bytes'] / 1e6:>10.3f} {r['ratio_vs_fp32']:>6.2f} "
              f"{r['bits_per_weight']:>6.2f} {r['max_block_error_rel_absmax']:>14.5f} {r['rel_l2_vs_original']:>8.4f} "
              f"{vl:>8s} {r['encode_s']:>6.2f} {r['decode_verify_s']:>6.2f} {wire:>8s} {xfer:>7s}")
    for t in targets:
        err = "" if t["max_block_error_rel_absmax"] is None else (
            f", block error {t['error']:.5f} <= {t['max_block_error_rel_absmax']:.5f}")
        print(f"target {t['variant']}: ratio {t['ratio']:.2f} >= {t['min_ratio']}{err}: "
              f"{'met' if t['met'] else 'NOT met'}")
    return 0
