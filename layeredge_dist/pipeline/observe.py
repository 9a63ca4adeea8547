"""Driver-side observability: the driver's Prometheus exporter, file service discovery of every exporter of the
run, and run-level metrics (step, loss, throughput, validation loss, restarts, stage health, links).

An :class:`Observer` is a training-loop :class:`~layeredge_dist.pipeline.train.Events` sink. The file-SD JSON
lists the driver and every stage exporter; it is rewritten whenever the pipeline is (re)wired, because a
restarted stage comes back on another port.
"""

from __future__ import annotations

import re
from pathlib import Path

from layeredge_dist.metrics import Metrics, start_exporter, write_file_sd
from layeredge_dist.transport import ProbeResult

from .driver import CallResult, Pipeline, StageFailure
from .train import Events


def run_label(name: str) -> str:
    """``name`` as a bounded metric label value: ``[A-Za-z0-9_.:-]``, at most 64 characters, starting with an
    alphanumeric character and not all digits."""
    clean = re.sub(r"[^A-Za-z0-9_.:\-]", "_", name)[:64].lstrip("_.:-") or "run"
    return f"run_{clean}"[:64] if clean.isdigit() else clean


class Observer(Events):
    """Metrics of one run on the driver. ``port`` 0 picks a free port; ``sd_path`` is where the file-SD JSON
    goes (None: not written). Raises OSError when the exporter cannot bind."""

    def __init__(self, run: str, pipe: Pipeline, tokens_per_step: int, port: int = 0, host: str | None = None,
                 sd_path: str | Path | None = None) -> None:
        self.run = run_label(run)
        self.pipe = pipe
        self.tokens_per_step = tokens_per_step
        self.metrics = Metrics()
        self.exporter = start_exporter(self.metrics, host or pipe.driver_ip, port)  # reachable like the driver
        self.sd_path = Path(sd_path) if sd_path is not None else None
        if self.sd_path is not None:
            self.sd_path.parent.mkdir(parents=True, exist_ok=True)
        self.wired()

    def targets(self) -> dict[str, str]:
        """Exporter ``host:port`` of the driver and of every stage that exports."""
        out = {"driver": self.exporter.target}
        for info in self.pipe.infos:
            if info.get("metrics"):
                out[f"stage{info['stage']}"] = info["metrics"]
        return out

    def wired(self) -> None:
        """After (re)wiring: every stage is up; the file-SD JSON names the current exporters."""
        for s in range(self.pipe.num_stages):
            self.metrics.stage_up(f"s{s}", True)
        if self.sd_path is not None:
            write_file_sd(self.sd_path, self.targets())

    def step(self, step: int, loss: float, result: CallResult) -> None:
        self.metrics.step(self.run, step, loss=loss, tokens_per_s=self.tokens_per_step / result.seconds
                          if result.seconds > 0 else None, step_s=result.seconds)

    def evaluated(self, step: int, val_loss: float) -> None:
        self.metrics.val_loss(self.run, val_loss)

    def down(self, error: StageFailure) -> None:
        if error.stage is not None:
            self.metrics.stage_up(f"s{error.stage}", False)

    def failed(self, step: int, error: StageFailure, resume_step: int) -> None:
        if error.stage is not None:
            self.metrics.restart(f"s{error.stage}")
        self.wired()  # the loop has recovered the pipeline: new ports for the restarted stage

    def probed(self, step: int, links: dict[tuple[int, int], ProbeResult]) -> None:
        for (src, dst), r in links.items():
            self.metrics.link(f"s{src}", f"s{dst}", bandwidth_Bps=r.bandwidth_Bps, rtt_s=r.rtt_s)

    def close(self) -> None:
        """Stop the exporter. Idempotent."""
        self.exporter.close()
