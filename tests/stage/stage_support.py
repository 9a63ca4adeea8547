"""Run a pipeline's stages in threads of this process, over real gRPC servers on loopback (no Ray)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch

from layeredge_dist.model import ModelSpec, Workload, split_batch
from layeredge_dist.stage import EdgeCodecs, Host, OptimizerSpec, Stage, StageSpec
from layeredge_dist.transport import TransportConfig


class ThreadedPipeline:
    """``num_stages`` Stage objects plus a Host, wired over loopback gRPC (or the TCP data path)."""

    def __init__(self, model: ModelSpec, cuts: Sequence[int], num_stages: int, schedule: str = "1f1b",
                 microbatches: int = 4, chunks: int = 1, codecs: EdgeCodecs = EdgeCodecs(),
                 optimizer: OptimizerSpec = OptimizerSpec("sgd", lr=0.1),
                 transport: TransportConfig = TransportConfig(), timeout_s: float = 30.0,
                 metrics: bool = False, extra: Mapping[str, object] | None = None) -> None:
        base = StageSpec(0, num_stages, model, tuple(cuts), schedule, microbatches, chunks, codecs, optimizer,
                         transport, timeout_s, metrics=metrics)
        base = replace(base, **dict(extra or {}))  # type: ignore[arg-type]  # TypeError for an unknown field
        self.stages = [Stage(replace(base, index=s)) for s in range(num_stages)]
        self.host = Host(num_stages, transport, timeout_s=timeout_s)
        peers = {s.spec.index: s.address for s in self.stages} | {num_stages: self.host.address}
        for stage in self.stages:
            stage.connect(peers)
        self.host.connect(self.stages[0].address, self.stages[-1].address)
        self.microbatches = microbatches
        self.seq = 0

    def call(self, batch: tuple[torch.Tensor, dict[str, torch.Tensor]], mode: str = "train") -> list[torch.Tensor]:
        """One pipeline call; returns the last stage's results per micro-batch. Re-raises a stage's error."""
        self.seq += 1
        inputs, sides = split_batch(batch, self.microbatches)
        errors: list[BaseException] = []

        def run(stage: Stage) -> None:
            try:
                stage.run_step(self.seq, sides, mode)  # type: ignore[arg-type]
            except BaseException as err:  # noqa: BLE001 - handed to the caller
                errors.append(err)
                for other in self.stages:
                    other.abort(self.seq)
                self.host.abort(self.seq)

        threads = [threading.Thread(target=run, args=(s,)) for s in self.stages]
        for t in threads:
            t.start()
        out: list[torch.Tensor] = []
        try:
            self.host.send_inputs(self.seq, inputs)
            out = self.host.collect(self.seq, self.microbatches)
        except BaseException as err:  # noqa: BLE001 - a stage's own error, if any, is the better report
            errors.append(err)
        for t in threads:
            t.join(60)
        if errors:
            for stage in self.stages:
                stage.reset()
            self.host.reset()
            raise errors[0]
        return out

    def train(self, workload: Workload, steps: int) -> list[float]:
        """Mean loss per step over ``steps`` training calls."""
        return [float(torch.stack(self.call(workload.batch(s))).mean()) for s in range(steps)]

    def close(self) -> None:
        for stage in self.stages:
            stage.close()
        self.host.close()
