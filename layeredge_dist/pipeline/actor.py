"""The Ray actor that hosts one :class:`~layeredge_dist.stage.Stage` on its node.

The actor is a thin shell: it resolves the device (CUDA when Ray gave it a GPU, else CPU), builds the stage from
its :class:`~layeredge_dist.stage.StageSpec` (the partition is built here, on the stage's node, never pickled
from the driver), binds the stage's edge server to the node's IP and forwards calls. ``abort`` runs in a
separate concurrency group so it can interrupt a running ``run_step``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import ray
import torch

from layeredge_dist.model.family import Side
from layeredge_dist.stage import EdgeCodecs, Mode, Stage, StageSpec, StepReport
from layeredge_dist.transport import ProbeResult
from layeredge_dist.types import EdgeStats


def resolve_device(requested: str) -> str:
    """``auto`` -> ``cuda`` when this process was given a GPU and torch sees one, else ``cpu``."""
    if requested != "auto":
        return requested
    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


@ray.remote(concurrency_groups={"control": 2})
class StageActor:
    """One pipeline stage in its own process. Construction raises what :class:`Stage` raises."""

    def __init__(self, spec: StageSpec) -> None:
        self.spec = replace(spec, device=resolve_device(spec.device))
        self.node_ip = ray.util.get_node_ip_address()
        self.stage = Stage(self.spec, bind=self.node_ip)
        # one stop event per serving session: a stop that arrives after its loop ended (the loop failed first, or
        # this is a restarted instance) must not end the next session's loop
        self._stops: dict[int, threading.Event] = {}
        self._stops_lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        """Where this stage runs: address, node id and IP, pid, device, torch threads, steps done."""
        ctx = ray.get_runtime_context()
        return {"stage": self.spec.index, "address": self.stage.address, "node_id": ctx.get_node_id(),
                "node_ip": self.node_ip, "pid": os.getpid(), "device": self.spec.device,
                "threads": torch.get_num_threads(), "steps_done": self.stage.steps_done,
                "metrics": self.stage.metrics_target}

    def connect(self, peers: Mapping[int, str]) -> None:
        self.stage.connect(peers)

    def run_step(self, seq: int, sides: Sequence[Side], mode: Mode) -> StepReport:
        return self.stage.run_step(seq, sides, mode)

    @ray.method(concurrency_group="control")
    def abort(self, seq: int) -> None:
        self.stage.abort(seq)

    def _stop_event(self, session: int) -> threading.Event:
        with self._stops_lock:
            return self._stops.setdefault(session, threading.Event())

    def serve(self, session: int = 0) -> int:
        with self._stops_lock:  # forget stops of earlier sessions that came after their loops had ended
            for old in [k for k in self._stops if k < session]:
                del self._stops[old]
        stop = self._stop_event(session)  # a stop that arrived before the loop started ends it at once
        try:
            return self.stage.serve(stop)
        finally:
            with self._stops_lock:
                self._stops.pop(session, None)

    @ray.method(concurrency_group="control")
    def stop_serving(self, session: int = 0) -> None:
        self._stop_event(session).set()

    def reset(self, peers: Mapping[int, str]) -> None:
        self.stage.reset(peers)

    def set_codecs(self, codecs: EdgeCodecs) -> dict[str, tuple[str, str]]:
        return self.stage.set_codecs(codecs)

    def save_checkpoint(self, directory: str, step: int) -> str:
        return self.stage.save_checkpoint(directory, step)

    def load_checkpoint(self, directory: str, step: int) -> int:
        self.stage.load_checkpoint(directory, step)
        return self.stage.steps_done

    def receive_weights(self, seq: int) -> dict[str, Any]:
        """Receive and verify a weight push from the driver (held until :meth:`commit_weights`)."""
        return self.stage.receive_weights(seq)

    def commit_weights(self, seq: int) -> None:
        self.stage.commit_weights(seq)

    def discard_weights(self) -> None:
        self.stage.discard_weights()

    def parameters(self) -> list[dict[str, torch.Tensor]]:
        return self.stage.parameters()

    def gradients(self) -> list[dict[str, torch.Tensor]]:
        return self.stage.gradients()

    def zero_grad(self) -> None:
        self.stage.optimizer.zero_grad(set_to_none=True)

    @ray.method(concurrency_group="control")
    def probe(self, peer: int, probe_bytes: int) -> ProbeResult:
        return self.stage.probe(peer, probe_bytes)

    @ray.method(concurrency_group="control")
    def proxy_values(self) -> dict[str, dict[str, dict[str, float]]]:
        return self.stage.proxy_values()

    @ray.method(concurrency_group="control")
    def memory(self) -> dict[str, int]:
        return self.stage.memory()

    @ray.method(concurrency_group="control")
    def stats(self) -> list[EdgeStats]:
        return self.stage.stats()

    def close(self) -> None:
        self.stage.close()
