"""Online re-planning: every N training steps re-measure the links, ask the planner for the fastest codec per
edge and direction within the accuracy budget, and switch when it predicts a clear gain.

The :class:`Controller` is a training-loop :class:`~layeredge_dist.pipeline.train.Events` sink, so it runs
between two steps: a switch (:meth:`Pipeline.set_codecs`) takes effect at a step boundary on every stage. Every
frame names its codec and receivers decode what the header says, so no frame is ever decoded with the wrong
codec, even while stages switch one after another. Each decision is logged, kept in :attr:`Controller.decisions`
and, with metrics, exported (codec switches, plan info, link bandwidth, error budget).

The accuracy side comes from the model profile's calibrated sensitivities (``layeredge plan`` measures them);
the online part is the network: bandwidth and RTT per link from :meth:`Pipeline.probe_links`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from layeredge_dist.metrics import Metrics
from layeredge_dist.plan import ClusterSpec, LinkSpec, ModelProfile, min_time_under_budget, predict
from layeredge_dist.stage import EdgeCodecs, edge
from layeredge_dist.transport import ProbeResult
from layeredge_dist.types import TensorRole

from .driver import CallResult, Pipeline
from .train import Events

Links = Mapping[tuple[int, int], ProbeResult]


@dataclass(frozen=True)
class ControllerConfig:
    """When and how the controller re-plans. ``budget``: total sensitivity allowed (None: no accuracy limit);
    ``min_gain``: switch only when the predicted step time drops by at least this fraction."""

    every: int = 50
    candidates: tuple[str, ...] = ("fp32", "bf16", "int8", "int4")
    budget: float | None = None
    min_gain: float = 0.05
    probe_bytes: int = 4 << 20

    def __post_init__(self) -> None:
        if self.every < 1 or not 0 <= self.min_gain < 1 or not self.candidates:
            raise ValueError(f"controller: need every >= 1, 0 <= min_gain < 1 and candidates, got {self}")


@dataclass(frozen=True)
class Decision:
    """One re-plan: measured bandwidth per link (bytes/s), predicted step time now and with the best plan (s),
    the best plan's codecs, and whether the pipeline switched to it."""

    step: int
    bandwidth_Bps: tuple[float, ...]
    current_s: float
    best_s: float
    codecs: Mapping[str, Mapping[str, str]]
    switched: bool
    switches: Mapping[str, tuple[str, str]] = field(default_factory=dict)


def current_codecs(pipe: Pipeline) -> dict[str, dict[str, str]]:
    """The pipeline's codec per cut and direction in ``codecs.edges`` shape (every cut listed)."""
    codecs = pipe.base.codecs
    return {str(edge(s, s + 1)): {"forward": codecs.spec_for(edge(s, s + 1), TensorRole.ACTIVATION),
                                  "backward": codecs.spec_for(edge(s + 1, s), TensorRole.GRADIENT)}
            for s in range(pipe.num_stages - 1)}


class Controller(Events):
    """Re-plans every ``config.every`` steps. ``measure`` returns the links (default: the pipeline's probes; tests
    and what-if drills may inject their own); ``log`` receives one line per decision."""

    def __init__(self, pipe: Pipeline, profile: ModelProfile, config: ControllerConfig = ControllerConfig(),
                 metrics: Metrics | None = None, measure: Callable[[], Links] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        if pipe.base.chunks != 1:
            raise ValueError("the controller plans chunks == 1 pipelines only")
        self.pipe = pipe
        self.profile = profile
        self.config = config
        self.metrics = metrics
        self.measure = measure or (lambda: pipe.probe_links(config.probe_bytes))
        self.log = log or (lambda line: None)
        self.decisions: list[Decision] = []

    def step(self, step: int, loss: float, result: CallResult) -> None:
        if step % self.config.every == 0:
            self.replan(step)

    def cluster(self, links: Links) -> ClusterSpec:
        """The measured links as the planner's cluster (one-way latency = RTT / 2)."""
        p = self.pipe.num_stages
        return ClusterSpec(p, tuple(LinkSpec(links[(k, k + 1)].bandwidth_Bps, links[(k, k + 1)].rtt_s / 2)
                                    for k in range(p - 1)))

    def replan(self, step: int) -> Decision:
        """Measure, plan, and switch when the predicted gain is at least ``min_gain``."""
        cfg, base = self.config, self.pipe.base
        links = self.measure()
        cluster = self.cluster(links)
        now_codecs = current_codecs(self.pipe)
        kw = {"schedule": base.schedule, "microbatches": base.microbatches}
        now = predict(self.profile, base.cuts, now_codecs, cluster, **kw)  # type: ignore[arg-type]
        best = min_time_under_budget(self.profile, base.cuts, cluster, cfg.candidates, cfg.budget, **kw)  # type: ignore[arg-type]
        gain = 1.0 - best.prediction.step_time_s / now.step_time_s if now.step_time_s > 0 else 0.0
        plan = {e: dict(d) for e, d in best.codecs.items()}
        switch = gain >= cfg.min_gain and plan != now_codecs
        switches: dict[str, tuple[str, str]] = {}
        if switch:
            switches = self.pipe.set_codecs(EdgeCodecs(base.codecs.forward, base.codecs.backward, plan))
        decision = Decision(step, tuple(links[(k, k + 1)].bandwidth_Bps for k in range(self.pipe.num_stages - 1)),
                            now.step_time_s, best.prediction.step_time_s, plan, switch, switches)
        self.decisions.append(decision)
        self._export(decision, links)
        bw = ", ".join(f"{b / 1e6:.0f} MB/s" for b in decision.bandwidth_Bps)
        self.log(f"step {step}: links {bw}; predicted {now.step_time_s * 1e3:.0f} ms now, "
                 f"{best.prediction.step_time_s * 1e3:.0f} ms with {plan}"
                 + (f" -> switched {switches}" if switch else " (kept)"))
        return decision

    def _export(self, decision: Decision, links: Links) -> None:
        if self.metrics is None:
            return
        for (src, dst), r in links.items():
            self.metrics.link(f"s{src}", f"s{dst}", bandwidth_Bps=r.bandwidth_Bps, rtt_s=r.rtt_s)
        for e, dirs in decision.codecs.items():
            for direction, spec in dirs.items():
                if decision.switched:
                    self.metrics.plan_codec(e, direction, spec)


def switch_steps(decisions: Sequence[Decision]) -> list[int]:
    """Steps at which the controller switched codecs."""
    return [d.step for d in decisions if d.switched]
