"""Online re-planning: every N training steps re-measure the links, ask the planner for the fastest codec per
edge and direction within the accuracy budget, and switch when it predicts a clear gain.

The :class:`Controller` is a training-loop :class:`~layeredge_dist.pipeline.train.Events` sink, so it runs
between two steps: a switch (:meth:`Pipeline.set_codecs`) takes effect at a step boundary on every stage. Every
frame names its codec and receivers decode what the header says, so no frame is ever decoded with the wrong
codec, even while stages switch one after another. Each decision is logged, kept in :attr:`Controller.decisions`
and, with metrics, exported (codec switches, plan info, link bandwidth, error budget).

The accuracy side comes from the model profile's calibrated sensitivities (``layeredge plan`` measures them);
the online part is the network: bandwidth and RTT per link from :meth:`Pipeline.probe_links`, and the compute: the
profile's block times are scaled so that the simulator reproduces the median step of the last interval with the
running codecs and the links just probed (:func:`calibrate_compute`), because stages sharing cores run slower than
the idle-core profile says and the gain of compressing would be overrated.
"""

from __future__ import annotations

import math
import statistics
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
    ``min_gain``: switch only when the predicted step time drops by at least this fraction; ``probe_repeats``:
    probes per link and re-plan, the fastest one counts (see :func:`best_of`); ``calibrate``: scale the profile's
    compute so that the prediction for the running codecs matches the measured median step of the last interval
    (see :func:`calibrate_compute`) before planning."""

    every: int = 50
    candidates: tuple[str, ...] = ("fp32", "bf16", "int8", "int4")
    budget: float | None = None
    min_gain: float = 0.05
    probe_bytes: int = 4 << 20
    probe_repeats: int = 2
    calibrate: bool = True

    def __post_init__(self) -> None:
        if self.every < 1 or not 0 <= self.min_gain < 1 or not self.candidates or self.probe_repeats < 1:
            raise ValueError(f"controller: need every >= 1, 0 <= min_gain < 1, candidates and probe_repeats >= 1, "
                             f"got {self}")


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
    measured_s: float | None = None  # median step of the interval before this re-plan
    compute_scale: float = 1.0  # factor applied to the profile's compute (1.0: not calibrated)


#: Range of the compute calibration factor: beyond it the profile describes another model, not a busier core.
SCALE_RANGE = (0.05, 50.0)


def calibrate_compute(profile: ModelProfile, measured_s: float, predict_at: Callable[[ModelProfile], float],
                      lo: float = SCALE_RANGE[0], hi: float = SCALE_RANGE[1]) -> float:
    """The factor ``f`` for the profile's compute (:meth:`ModelProfile.with_compute_scaled`) at which
    ``predict_at(scaled profile)`` equals ``measured_s`` (seconds), by bisection (the prediction grows with
    ``f``); clamped to ``[lo, hi]``, e.g. ``lo`` when even compute-free steps would take longer than measured
    (the network model is pessimistic). The profile is measured in-process on an idle core; the stages share
    cores with each other and other work (on the 2-core machines 3 stages ran 1.3-3x slower than the profile),
    which made the controller overrate the network's share and switch for gains that did not come."""
    if not measured_s > 0:
        return 1.0
    if predict_at(profile.with_compute_scaled(lo)) >= measured_s:
        return lo
    if predict_at(profile.with_compute_scaled(hi)) <= measured_s:
        return hi
    for _ in range(40):  # log-space bisection: 40 halvings of a 1000x range
        mid = math.sqrt(lo * hi)
        if predict_at(profile.with_compute_scaled(mid)) < measured_s:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


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
        self.measure = measure or (lambda: best_of([pipe.probe_links(config.probe_bytes)
                                                    for _ in range(config.probe_repeats)]))
        self.log = log or (lambda line: None)
        self.decisions: list[Decision] = []
        self._seconds: list[float] = []  # step times since the last re-plan

    def step(self, step: int, loss: float, result: CallResult) -> None:
        self._seconds.append(result.seconds)
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
        seconds, self._seconds = self._seconds, []
        measured = statistics.median(seconds[1:] or seconds) if seconds else None  # the first may carry a switch
        profile, scale = self.profile, 1.0
        if cfg.calibrate and measured is not None:
            scale = calibrate_compute(self.profile, measured, lambda p: predict(
                p, base.cuts, now_codecs, cluster, **kw).step_time_s)  # type: ignore[arg-type]
            profile = self.profile.with_compute_scaled(scale)
        now = predict(profile, base.cuts, now_codecs, cluster, **kw)  # type: ignore[arg-type]
        best = min_time_under_budget(profile, base.cuts, cluster, cfg.candidates, cfg.budget, **kw)  # type: ignore[arg-type]
        gain = 1.0 - best.prediction.step_time_s / now.step_time_s if now.step_time_s > 0 else 0.0
        plan = {e: dict(d) for e, d in best.codecs.items()}
        switch = gain >= cfg.min_gain and plan != now_codecs
        switches: dict[str, tuple[str, str]] = {}
        if switch:
            switches = self.pipe.set_codecs(EdgeCodecs(base.codecs.forward, base.codecs.backward, plan))
        decision = Decision(step, tuple(links[(k, k + 1)].bandwidth_Bps for k in range(self.pipe.num_stages - 1)),
                            now.step_time_s, best.prediction.step_time_s, plan, switch, switches, measured, scale)
        self.decisions.append(decision)
        self._export(decision, links)
        bw = ", ".join(f"{b / 1e6:.0f} MB/s" for b in decision.bandwidth_Bps)
        self.log(f"step {step}: links {bw}; "
                 + (f"measured {measured * 1e3:.0f} ms (compute x{scale:.2f}); " if measured is not None else "")
                 + f"predicted {now.step_time_s * 1e3:.0f} ms now, "
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


def best_of(rounds: Sequence[Links]) -> dict[tuple[int, int], ProbeResult]:
    """Per link, the probe with the highest bandwidth among ``rounds`` (at least one; the links of the first).

    A shaped link caps the rate; every disturbance only lowers a reading: other processes on a shared host's cores
    (the probe is a Python gRPC stream), a fresh channel's HTTP/2 flow-control window still growing. On the
    testbed (tc tbf at 1 Gbit/s, load average 5-20 on 2 cores) a single probe read 278-295 Mbit/s at a run's first
    re-plan and made the controller compress a 1 Gbit/s link; the fastest of two read 535-951 Mbit/s in 21 of 22
    re-plans (`layeredge bench control`).
    """
    return {link: max((r[link] for r in rounds), key=lambda p: p.bandwidth_Bps) for link in rounds[0]}


def switch_steps(decisions: Sequence[Decision]) -> list[int]:
    """Steps at which the controller switched codecs."""
    return [d.step for d in decisions if d.switched]
