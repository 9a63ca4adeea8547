"""The online controller on a real 3-stage pipeline: it keeps fp32 on a fast link and switches to a smaller codec
within one re-plan interval after the link slows down; training goes on across the switch.

The link measurements are injected (this machine has no shaped links: that is the testbed's job); the pipeline,
the planner and the switch are real.
"""

from __future__ import annotations

import torch

from layeredge_dist.model import ByteGPTConfig, byte_gpt_spec
from layeredge_dist.model.workload import SyntheticWorkload
from layeredge_dist.plan import ModelProfile
from layeredge_dist.stage import OptimizerSpec, StageSpec, edge
from layeredge_dist.transport import ProbeResult, TransportConfig
from layeredge_dist.types import Direction, TensorRole


def test_controller_switches_after_the_link_slows(ray_cluster) -> None:  # type: ignore[no-untyped-def]
    from layeredge_dist.pipeline.controller import Controller, ControllerConfig, switch_steps
    from layeredge_dist.pipeline.driver import Pipeline, Placement
    from layeredge_dist.pipeline.train import LoopConfig, train

    model = byte_gpt_spec(ByteGPTConfig(context=16, d_model=32, n_layer=3, n_head=2), seed=2)
    spec = StageSpec(0, 3, model, (1, 2), "1f1b", 4, optimizer=OptimizerSpec("sgd", lr=0.05),
                     transport=TransportConfig(token="t", tcp_data_path=True), recv_timeout_s=30.0)
    elements = 2 * 16 * 32  # (B/M, T, C) per micro-batch
    sens = {b: {d: {"bf16": 1e-4, "int8": 2e-4, "int4": 5.0} for d in ("forward", "backward")} for b in (0, 1)}
    profile = ModelProfile.uniform(3, 0.002, 0.004, elements, sensitivity=sens, micro_batches=4)
    fast, slow = ProbeResult(1e-4, 125e6, (1e-4,), 1), ProbeResult(1e-3, 1.25e6, (1e-3,), 1)  # 1 Gbit/s, 10 Mbit/s
    seen: list[int] = []

    def measure() -> dict[tuple[int, int], ProbeResult]:
        seen.append(len(seen))
        link = fast if len(seen) <= 2 else slow  # re-plans at steps 2 and 4 see 1 Gbit/s, from step 6 10 Mbit/s
        return {(0, 1): link, (1, 2): link}

    with Pipeline(spec, Placement(start_timeout_s=60, step_timeout_s=60)) as pipe:
        ctl = Controller(pipe, profile, ControllerConfig(every=2, candidates=("fp32", "bf16", "int8", "int4"),
                                                         budget=1e-3), measure=measure)
        result = train(pipe, SyntheticWorkload(model, 8, 16, seed=0), LoopConfig(8, eval_every=-1), ctl)
        assert result.steps_done == 8 and all(torch.isfinite(torch.tensor(result.losses)))
        assert [d.switched for d in ctl.decisions] == [False, False, True, False]
        assert switch_steps(ctl.decisions) == [6]
        chosen = ctl.decisions[2].codecs
        assert chosen["s0->s1"]["forward"] in ("bf16", "int8") and "int4" not in str(chosen)  # within budget
        assert ctl.decisions[2].best_s < ctl.decisions[2].current_s * 0.95
        sent = {(str(s.edge), s.codec) for s in pipe.stats() if s.direction is Direction.SEND}
        assert ("s0->s1", "fp32") in sent and ("s0->s1", chosen["s0->s1"]["forward"]) in sent
        assert pipe.base.codecs.spec_for(edge(0, 1), TensorRole.ACTIVATION) == chosen["s0->s1"]["forward"]


def test_train_cli_runs_the_controller_from_a_profile(ray_cluster, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """`layeredge train --set control.profile=FILE` re-plans every N steps with real link probes."""
    from layeredge_dist.cli.main import main

    sens = {b: {d: {"bf16": 1e-4, "int8": 2e-4} for d in ("forward", "backward")} for b in (0, 1)}
    profile = ModelProfile.uniform(3, 0.002, 0.004, 2 * 32 * 32, sensitivity=sens, micro_batches=4)
    path = tmp_path / "profile.json"
    path.write_text(profile.to_json())
    code = main(["train", "--steps", "4", "--run-dir", str(tmp_path / "run"),
                 "--set", "model.config.n_layer=3", "--set", "model.config.d_model=32", "--set", "model.config.n_head=2",
                 "--set", "model.config.context=32", "--set", "data.context=32", "--set", "data.batch_size=8",
                 "--set", "data.corpus_bytes=300000", "--set", "train.checkpoint_every=0",
                 "--set", f"control.profile={path}", "--set", "control.every=2", "--set", "control.budget=0.001"])
    assert code == 0
    err = capsys.readouterr().err
    assert "step 2: links" in err and "step 4: links" in err  # two re-plans with measured links
