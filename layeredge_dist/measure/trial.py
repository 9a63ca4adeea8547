"""Training-calibrated sensitivity: what a codec on the cuts costs after a short stretch of real training.

The one-shot estimators (:mod:`.sensitivity`, :mod:`.proxy`) measure how much *one* compressed tensor changes the
loss or the gradient. Training compounds errors over many steps: a biased backward codec, or a forward codec
whose noise the model cannot average out, can stall training although its one-shot loss change is tiny (seen on
the demo: ``int2`` forward passed a one-shot budget of 0.05 nats and then trained 0.3-0.4 nats worse); error
feedback (``ef(...)``) helps over steps but scores exactly like its inner codec in one shot.

:func:`trial_losses` measures that directly, in this process: from the same starting weights, ``steps``
optimizer steps with exact edges, then for each direction and codec the same steps on the same batches with the
codec on every cut in that direction only (the other direction exact; forward codecs also in the validation
forward, as the pipeline evaluates), and the validation loss at the end of each. The gap to the exact run
(nats) is the codec's training sensitivity for that direction; :meth:`TrialResult.gap` returns it.

:func:`plan_losses` trains whole plans instead: per plan its own codec at each boundary, forward and backward at
once, so that what a planner predicts by adding per-codec gaps can be checked against the combination itself.

Cost: ``(1 + directions x codecs) x steps`` training steps of the whole model in this process (``(1 + plans) x
steps`` for :func:`plan_losses`). Pure torch: no pipeline, transport or Ray (layer rank 3).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..codecs.stateful import DeltaCodec, ErrorFeedback
from ..model import Partition
from ..model.family import Side
from ..model.chain import stage_backward, stage_forward
from ._codec import AnyCodec, call_seed, load_codec

#: One step's micro-batches: (inputs, side inputs), as :func:`~layeredge_dist.model.split_batch` returns them.
MicroBatches = tuple[Sequence[torch.Tensor], Sequence[Side]]
DIRECTIONS = ("forward", "backward")


def finite_or_none(v: float) -> float | None:
    """``v``, or None when it is not finite (a diverged run's loss in JSON)."""
    return v if math.isfinite(v) else None


@dataclass(frozen=True)
class TrialResult:
    """Validation losses (nats) after ``steps`` training steps: ``exact`` with exact edges and ``losses[direction]
    [spec]`` with ``spec`` on every cut in ``direction``; ``train_losses`` likewise, the mean training loss of the
    last ``min(steps, 10)`` steps (a non-finite value means training diverged)."""

    steps: int
    exact: float
    losses: Mapping[str, Mapping[str, float]]
    exact_train: float
    train_losses: Mapping[str, Mapping[str, float]]

    def gap(self, direction: str, spec: str) -> float:
        """Validation-loss gap of ``spec`` in ``direction`` to the exact run (nats; ``inf`` when it diverged).
        KeyError for a pair that was not measured."""
        v = self.losses[direction][spec]
        return v - self.exact if math.isfinite(v) else math.inf

    def to_dict(self) -> dict[str, object]:
        """Plain data (JSON-compatible; non-finite losses as None)."""
        def plain(table: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float | None]]:
            return {d: {s: finite_or_none(v) for s, v in per.items()} for d, per in table.items()}
        return {"steps": self.steps, "exact": self.exact, "exact_train": self.exact_train,
                "losses": plain(self.losses), "train_losses": plain(self.train_losses)}


class _EdgeCodec:
    """A codec applied at every cut like the stage endpoints apply it: stateful wrappers keep one state per
    (cut, micro-batch slot), randomized codecs get a seeded generator per call."""

    def __init__(self, spec: str | None, seed: int) -> None:
        self.codec: AnyCodec | None = load_codec(spec) if spec is not None else None
        self.seed = seed
        self.states: dict[Hashable, object] = {}
        self.calls = 0

    def __call__(self, x: torch.Tensor, key: Hashable) -> torch.Tensor:
        c = self.codec
        if c is None:
            return x
        self.calls += 1
        gen = torch.Generator(device=x.device)
        gen.manual_seed(call_seed(self.seed, self.calls, "trial"))
        if isinstance(c, ErrorFeedback):
            st = self.states.get(key)
            if st is None:
                st = self.states[key] = c.new_state()
            y = c.decode(c.encode(x, st, generator=gen))  # type: ignore[arg-type]
        elif isinstance(c, DeltaCodec):
            send = self.states.get(("send", key))
            if send is None:
                send = self.states[("send", key)] = c.new_state()
                self.states[("recv", key)] = c.new_state()
            enc = c.encode(x, send, key, generator=gen)  # type: ignore[arg-type]
            y = c.decode(enc, self.states[("recv", key)], key)  # type: ignore[arg-type]
        else:
            y = c.decode(c.encode(x, generator=gen))
        return y.reshape(x.shape).to(x.dtype)


#: Per boundary ``k`` (between ``parts[k]`` and ``parts[k + 1]``) the codec applied there; boundaries not in the
#: mapping pass their tensors exactly.
Edges = Mapping[int, _EdgeCodec]


def _val_loss(parts: Sequence[Partition], batches: Sequence[tuple[torch.Tensor, Side]], fwd: Edges) -> float:
    for p in parts:
        p.eval()
    total = 0.0
    with torch.no_grad():
        for i, (x, side) in enumerate(batches):
            h = x
            for s, part in enumerate(parts):
                h = part(h, side)
                if s in fwd:
                    h = fwd[s](h, ("val", s, i))
            total += float(parts[-1].loss(h, side))
    for p in parts:
        p.train()
    return total / len(batches)


def _train(parts: Sequence[Partition], make_optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
           step_batches: Sequence[MicroBatches], fwd: Edges, bwd: Edges) -> list[float]:
    """``len(step_batches)`` optimizer steps through the chain (GPipe order) with ``fwd[k]`` on the activation and
    ``bwd[k]`` on the gradient crossing boundary ``k`` (between partitions ``k`` and ``k + 1``); the losses."""
    params = [p for part in parts for p in part.parameters() if p.requires_grad]
    opt = make_optimizer(params)
    losses = []
    for xs, sides in step_batches:
        opt.zero_grad(set_to_none=True)
        m = len(xs)
        saved: list[list[object]] = [[] for _ in parts]
        total = 0.0
        for i, (x, side) in enumerate(zip(xs, sides)):
            h = x
            for s, part in enumerate(parts):
                h, state = stage_forward(part, h, side, train=True, loss_scale=1.0 / m)
                saved[s].append(state)
                if s in fwd:
                    h = fwd[s](h, (s, i))
            total += float(h)
        for i in range(m):
            g: torch.Tensor | None = None
            for s in reversed(range(len(parts))):
                g = stage_backward(saved[s][i], g)  # type: ignore[arg-type]
                if s > 0:
                    assert g is not None, f"stage {s} has a non-float input; it cannot pass a gradient back"
                    if s - 1 in bwd:
                        g = bwd[s - 1](g, (s - 1, i))
        losses.append(total / m)
        if not math.isfinite(losses[-1]):
            break
        opt.step()
    opt.zero_grad(set_to_none=True)
    return losses


def trial_losses(parts: Sequence[Partition],
                 make_optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
                 step_batches: Sequence[MicroBatches], val_batches: Sequence[tuple[torch.Tensor, Side]],
                 specs: Sequence[str] | Mapping[str, Sequence[str]], directions: Sequence[str] = DIRECTIONS,
                 seed: int = 0,
                 boundaries: Sequence[int] | None = None,
                 progress: Callable[[str], None] = lambda _t: None) -> TrialResult:
    """Train copies of ``parts`` (left unchanged) on ``step_batches`` once with exact edges and once per
    direction and codec spec; see the module docstring.

    Args:
        parts: every stage's partition of the model, in order (the starting weights).
        make_optimizer: a fresh optimizer for a list of parameters (the run's optimizer settings).
        step_batches: the micro-batches of each training step (its length is the trial's step count, >= 1).
        val_batches: held-out full batches ``(inputs, side)`` (>= 1), each evaluated as one micro-batch.
        specs: codec specs (``parse_any`` syntax; lossless ones are measured too, gap ~0), or a mapping
            direction -> specs to try different codecs per direction (``directions`` is then its keys).
        directions: ``forward`` and/or ``backward``.
        seed: seeds the randomized codecs.
        boundaries: where the codecs apply (boundary ``k`` lies between ``parts[k]`` and ``parts[k + 1]``); None
            = every boundary. Lets a chain cut at every block stand for a pipeline cut at fewer places.
        progress: called with a short line before each training run.

    Raises ValueError for empty inputs, an unknown direction or fewer than two partitions; CodecError for a bad
    spec.
    """
    _check_inputs(parts, step_batches, val_batches)
    per_dir = ({d: list(v) for d, v in specs.items()} if isinstance(specs, Mapping)
               else {d: list(specs) for d in directions})
    bad = [d for d in per_dir if d not in DIRECTIONS]
    if bad:
        raise ValueError(f"unknown direction(s) {bad}; expected forward and/or backward")
    at = frozenset(range(len(parts) - 1) if boundaries is None else boundaries)
    if not at or not all(0 <= k < len(parts) - 1 for k in at):
        raise ValueError(f"boundaries must be among 0..{len(parts) - 2} (and not empty), got {boundaries}")
    for spec in {s for v in per_dir.values() for s in v}:
        load_codec(spec)  # CodecError before any training
    runner = _Runner(parts, make_optimizer, step_batches, val_batches, seed)
    try:
        progress(f"trial: exact edges, {len(step_batches)} steps")
        exact, exact_train = runner.run({})
        losses: dict[str, dict[str, float]] = {}
        trains: dict[str, dict[str, float]] = {}
        for d, d_specs in per_dir.items():
            for spec in d_specs:
                progress(f"trial: {spec} {d}")
                pair = (spec, None) if d == "forward" else (None, spec)
                v, t = runner.run({k: pair for k in at})
                losses.setdefault(d, {})[spec] = v
                trains.setdefault(d, {})[spec] = t
    finally:
        runner.restore()
    return TrialResult(len(step_batches), exact, losses, exact_train, trains)


#: A plan as a trial applies it: per boundary ``k`` the (forward, backward) codec specs there (None = exact in
#: that direction); boundaries not listed pass both directions exactly.
BoundaryCodecs = Mapping[int, tuple[str | None, str | None]]


@dataclass(frozen=True)
class PlanTrialResult:
    """Validation losses (nats) after ``steps`` training steps: ``exact`` with exact edges and ``losses[i]`` with
    plan ``i``'s codecs on its boundaries in both directions at once; ``train_losses`` / ``exact_train`` the mean
    training loss of the last ``min(steps, 10)`` steps (non-finite: training diverged). A result over several
    seeds (:meth:`mean`) holds the means, and the single-seed results under ``replicates``."""

    steps: int
    exact: float
    losses: tuple[float, ...]
    exact_train: float
    train_losses: tuple[float, ...]
    replicates: tuple[PlanTrialResult, ...] = ()

    def gap(self, i: int) -> float:
        """Validation-loss gap of plan ``i`` to the exact run (nats; ``inf`` when it diverged): over several seeds
        the mean of the paired per-seed gaps, ``inf`` when any seed diverged."""
        v = self.losses[i]
        return v - self.exact if math.isfinite(v) else math.inf

    def gaps(self, i: int) -> tuple[float, ...]:
        """Plan ``i``'s gap in each seed (nats, as :meth:`gap`); one element for a single-seed result."""
        return tuple(r.gap(i) for r in self.replicates) if self.replicates else (self.gap(i),)

    @classmethod
    def mean(cls, results: Sequence[PlanTrialResult]) -> PlanTrialResult:
        """One result from trials of the same plans over several seeds: every loss is the mean over the seeds (a
        plan that diverged in any seed is diverged, ``inf``), so :meth:`gap` is the mean of the paired gaps, and
        ``replicates`` keeps the inputs. One result is returned as it is. ValueError for no results, or results
        of different step counts or numbers of plans."""
        if not results:
            raise ValueError("no trial results to average")
        if len(results) == 1:
            return results[0]
        if len({(r.steps, len(r.losses)) for r in results}) != 1:
            raise ValueError("trial results to average differ in steps or number of plans: "
                             f"{[(r.steps, len(r.losses)) for r in results]}")

        def avg(xs: Sequence[float]) -> float:
            return sum(xs) / len(xs) if all(math.isfinite(x) for x in xs) else math.inf

        n = len(results[0].losses)
        return cls(results[0].steps, avg([r.exact for r in results]),
                   tuple(avg([r.losses[i] for r in results]) for i in range(n)),
                   avg([r.exact_train for r in results]),
                   tuple(avg([r.train_losses[i] for r in results]) for i in range(n)), tuple(results))

    def to_dict(self) -> dict[str, object]:
        """Plain data (JSON-compatible; non-finite losses as None); ``replicates`` only over several seeds."""
        out: dict[str, object] = {"steps": self.steps, "exact": self.exact, "exact_train": self.exact_train,
                                  "losses": [finite_or_none(v) for v in self.losses],
                                  "train_losses": [finite_or_none(v) for v in self.train_losses]}
        if self.replicates:
            out["replicates"] = [r.to_dict() for r in self.replicates]
        return out


def plan_losses(parts: Sequence[Partition],
                make_optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
                step_batches: Sequence[MicroBatches], val_batches: Sequence[tuple[torch.Tensor, Side]],
                plans: Sequence[BoundaryCodecs], seed: int = 0,
                progress: Callable[[str], None] = lambda _t: None) -> PlanTrialResult:
    """Train copies of ``parts`` (left unchanged) on ``step_batches`` once with exact edges and once per plan,
    with every codec of the plan in place at once, forward and backward, as the pipeline would run it.

    :func:`trial_losses` scores one codec in one direction at a time and a planner adds those scores up; this
    measures the combination itself, so interactions show (unbiased gradient noise can offset what a lossy
    forward codec costs, or two codecs can compound). A plan whose every boundary uses the same codec in one
    direction reproduces :func:`trial_losses`' loss for that codec exactly (same calls, same seeds).

    Args:
        parts, make_optimizer, step_batches, val_batches, seed, progress: as for :func:`trial_losses`.
        plans: per plan, ``{boundary: (forward spec | None, backward spec | None)}``; an empty mapping is the
            exact run again.

    Raises ValueError for empty inputs, fewer than two partitions or a boundary outside ``0..len(parts) - 2``;
    CodecError for a bad spec (before any training).
    """
    _check_inputs(parts, step_batches, val_batches)
    for i, plan in enumerate(plans):
        bad = [k for k in plan if not 0 <= k < len(parts) - 1]
        if bad:
            raise ValueError(f"plan {i}: boundaries {bad} are not among 0..{len(parts) - 2}")
        for pair in plan.values():
            for spec in pair:
                if spec is not None:
                    load_codec(spec)  # CodecError before any training
    runner = _Runner(parts, make_optimizer, step_batches, val_batches, seed)
    try:
        progress(f"plan trial: exact edges, {len(step_batches)} steps")
        exact, exact_train = runner.run({})
        losses, trains = [], []
        for i, plan in enumerate(plans):
            progress(f"plan trial {i + 1}/{len(plans)}: " + ", ".join(
                f"boundary {k} {f or 'exact'} | {b or 'exact'}" for k, (f, b) in sorted(plan.items())))
            v, t = runner.run(plan)
            losses.append(v)
            trains.append(t)
    finally:
        runner.restore()
    return PlanTrialResult(len(step_batches), exact, tuple(losses), exact_train, tuple(trains))


def _check_inputs(parts: Sequence[Partition], step_batches: Sequence[MicroBatches],
                  val_batches: Sequence[tuple[torch.Tensor, Side]]) -> None:
    """ValueError unless there is a cut, a training step and a validation batch."""
    if len(parts) < 2:
        raise ValueError(f"a trial needs at least one cut (two partitions), got {len(parts)}")
    if not step_batches or not val_batches:
        raise ValueError("a trial needs at least one training step and one validation batch")


class _Runner:
    """One training run per call from the same starting weights (restored before each run and by
    :meth:`restore`)."""

    def __init__(self, parts: Sequence[Partition],
                 make_optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
                 step_batches: Sequence[MicroBatches], val_batches: Sequence[tuple[torch.Tensor, Side]],
                 seed: int) -> None:
        self.parts, self.make_optimizer = parts, make_optimizer
        self.step_batches, self.val_batches, self.seed = step_batches, val_batches, seed
        self.start = [copy.deepcopy(p.state_dict()) for p in parts]
        self.tail = max(1, min(len(step_batches), 10))

    def restore(self) -> None:
        for p, st in zip(self.parts, self.start):
            p.load_state_dict(st)

    def run(self, plan: BoundaryCodecs) -> tuple[float, float]:
        """(validation loss, mean training loss of the last steps) with ``plan``'s codecs; (inf, inf) when
        training diverged. One codec object per direction and spec serves every boundary that uses it (its
        call counter seeds the randomized codecs; stateful ones keep state per boundary and micro-batch)."""
        self.restore()
        losses = _train(self.parts, self.make_optimizer, self.step_batches, _edges(plan, 0, self.seed),
                        _edges(plan, 1, self.seed + 1))
        train = sum(losses[-self.tail:]) / len(losses[-self.tail:])
        if len(losses) < len(self.step_batches) or not math.isfinite(train):
            return math.inf, math.inf
        return _val_loss(self.parts, self.val_batches, _edges(plan, 0, self.seed + 2)), train


def _edges(plan: BoundaryCodecs, side: int, seed: int) -> dict[int, _EdgeCodec]:
    """``plan``'s codecs of one direction (``side`` 0 = forward, 1 = backward) per boundary, one shared
    :class:`_EdgeCodec` per spec."""
    shared: dict[str, _EdgeCodec] = {}
    out: dict[int, _EdgeCodec] = {}
    for k, pair in sorted(plan.items()):
        spec = pair[side]
        if spec is not None:
            if spec not in shared:
                shared[spec] = _EdgeCodec(spec, seed)
            out[k] = shared[spec]
    return out
