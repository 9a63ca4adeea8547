"""How training converges with a codec at every cut, in one process (no Ray, no transport).

The run config's model is cut as the pipeline cuts it; every step runs the micro-batches through the chain of
partitions (``stage_forward`` / ``stage_backward``, as the stage runtime does), with ``--pair FWD|BWD``: the
forward codec applied to each activation and the backward codec to each activation-gradient at every cut
(error-feedback state per cut and micro-batch slot, as the runtime keeps it). Validation loss on held-out batches
every ``--every`` steps; one JSON line per pair. Used for the codec table under "End to end on shaped links" in
docs/benchmarks.md::

    python examples/codec_convergence.py --steps 200 --set model.config.n_layer=3 --set model.config.d_model=64 \\
        --set model.config.n_head=2 --set data.batch_size=32 --pair "fp32|fp32" --pair "int3/rht|int4/rht/sr"
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Hashable

import torch

from layeredge_dist.codecs import parse_any
from layeredge_dist.codecs.stateful import ErrorFeedback
from layeredge_dist.config import RunConfig, with_overrides
from layeredge_dist.model import build_partition, partition_specs, split_batch
from layeredge_dist.model.chain import stage_backward, stage_forward
from layeredge_dist.pipeline import setup

DEMO = ("data.batch_size=8", "data.context=128", "pipeline.microbatches=4", "pipeline.stages=3")
RoundTrip = Callable[[torch.Tensor, Hashable], torch.Tensor]


def round_trip(spec: str, seed: int = 1234) -> RoundTrip:
    """``x -> decode(encode(x))`` for ``spec`` (``fp32``: identity); error feedback keeps a state per key."""
    if spec == "fp32":
        return lambda t, key: t
    codec = parse_any(spec)
    gen = torch.Generator().manual_seed(seed)
    if isinstance(codec, ErrorFeedback):
        states: dict[Hashable, object] = {}

        def ef(t: torch.Tensor, key: Hashable) -> torch.Tensor:
            state = states.setdefault(key, codec.new_state())
            return codec.decode(codec.encode(t, state, generator=gen)).reshape(t.shape).to(t.dtype)
        return ef
    return lambda t, key: codec.decode(codec.encode(t, generator=gen)).reshape(t.shape).to(t.dtype)


def train(cfg: RunConfig, fwd: str, bwd: str, steps: int, every: int, eval_batches: int) -> list[tuple[int, float]]:
    """Validation loss every ``every`` steps of training ``cfg``'s model with ``fwd`` / ``bwd`` at the cuts."""
    spec = setup.stage_spec(cfg)
    work = setup.workload(cfg)
    parts = [build_partition(p) for p in partition_specs(spec.model, tuple(spec.cuts))]
    opt = spec.optimizer.build([p for part in parts for p in part.parameters() if p.requires_grad])
    enc_f, enc_b = round_trip(fwd), round_trip(bwd)
    val = work.val_batches(eval_batches)
    m = spec.microbatches
    curve = []

    def val_loss() -> float:
        for part in parts:
            part.eval()
        total = 0.0
        with torch.no_grad():
            for batch in val:
                xs, sides = split_batch(batch, 1)
                h = xs[0]
                for s, part in enumerate(parts):
                    h = part(h, sides[0])
                    if s < len(parts) - 1:
                        h = enc_f(h, ("val", s))
                total += float(parts[-1].loss(h, sides[0]))
        for part in parts:
            part.train()
        return total / len(val)

    for step in range(steps):
        xs, sides = split_batch(work.batch(step), m)
        opt.zero_grad(set_to_none=True)
        saved: list[list[object]] = [[] for _ in parts]
        for i, (x, side) in enumerate(zip(xs, sides)):
            h = x
            for s, part in enumerate(parts):
                h, state = stage_forward(part, h, side, train=True, loss_scale=1.0 / m)
                saved[s].append(state)
                if s < len(parts) - 1:
                    h = enc_f(h, (s, i))
        for i in range(m):
            g = None
            for s in reversed(range(len(parts))):
                g = stage_backward(saved[s][i], g)
                if s > 0:
                    g = enc_b(g, (s, i))
        opt.step()
        if (step + 1) % every == 0:
            curve.append((step + 1, round(val_loss(), 4)))
    return curve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=150, help="training steps per pair (default 150)")
    p.add_argument("--every", type=int, default=25, help="steps between validations (default 25)")
    p.add_argument("--eval-batches", type=int, default=8, help="validation batches (default 8)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="run config override after the demo's batch shape")
    p.add_argument("--pair", action="append", required=True, metavar="FWD|BWD",
                   help="forward and backward codec, e.g. 'int4/rht|ef(int8)'; repeat for more pairs")
    args = p.parse_args()
    torch.set_num_threads(1)
    # train.steps first: a cosine lr schedule (--set train.lr_schedule=cosine) decays over the pairs' steps
    cfg = with_overrides(RunConfig(), [*DEMO, f"train.steps={args.steps}", *args.overrides])
    for pair in args.pair:
        fwd, _, bwd = pair.partition("|")
        t0 = time.perf_counter()
        curve = train(cfg, fwd, bwd or fwd, args.steps, args.every, args.eval_batches)
        print(json.dumps({"forward": fwd, "backward": bwd or fwd, "curve": curve,
                          "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
