"""With a lossy but deterministic codec on every cut, the Ray pipeline computes exactly what the in-process chain
computes with the same codec round trips: the same losses and, after several optimizer steps, the same weights.

So a compressed run that trains worse than fp32 does so because of the codec, not because of the runtime (1F1B
order, per-micro-batch error-feedback state, wire framing, the transport). Found while chasing the end-to-end
benchmark's spread of final losses: they come from the chaotic early training of the small demo model.
"""

from __future__ import annotations

import pytest
import torch

from layeredge_dist.config import RunConfig, with_overrides
from layeredge_dist.measure.trial import _EdgeCodec, _train
from layeredge_dist.model import build_partition, partition_specs, split_batch

SETS = ["model.config.n_layer=3", "model.config.d_model=32", "model.config.n_head=2", "model.config.context=32",
        "data.context=32", "data.batch_size=8", "data.corpus_bytes=400000", "pipeline.microbatches=4",
        "pipeline.stages=3", "pipeline.schedule=1f1b", "train.checkpoint_every=0", "train.resume=false",
        "cluster.start_timeout_s=60", "cluster.step_timeout_s=60"]


@pytest.mark.parametrize("fwd,bwd", [("int8", "int8"), ("int4", "ef(int8)")])
def test_pipeline_equals_in_process_chain_with_lossy_codecs(ray_cluster, fwd: str, bwd: str) -> None:  # type: ignore[no-untyped-def]
    from layeredge_dist.pipeline import setup
    from layeredge_dist.pipeline.driver import Pipeline

    cfg = with_overrides(RunConfig(), SETS + [f"codecs.forward={fwd}", f"codecs.backward={bwd}"])
    spec, work = setup.stage_spec(cfg), setup.workload(cfg)
    parts = [build_partition(p) for p in partition_specs(spec.model, tuple(spec.cuts))]
    steps = [split_batch(work.batch(k), spec.microbatches) for k in range(4)]
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # like a stage actor: the same reduction order
    try:
        f, b = _EdgeCodec(fwd, 0), _EdgeCodec(bwd, 1)  # one codec object serves both cuts, as in a trial
        want = _train(parts, spec.optimizer.build, steps, {0: f, 1: f}, {0: b, 1: b})
    finally:
        torch.set_num_threads(old)
    with Pipeline(spec, setup.placement(cfg)) as pipe:
        got = []
        for k in range(len(steps)):
            out = pipe.call(work.batch(k), "train").outputs
            got.append(sum(float(o) for o in out) / len(out))
        states = pipe.parameters()
    assert got == pytest.approx(want, rel=0, abs=1e-6)
    for part, state in zip(parts, states):
        mine = part.state_dict()
        for name, value in state.items():
            if name in mine:
                assert torch.allclose(mine[name], value, rtol=0, atol=1e-6), name
