"""Schedule builders: pure functions ``(num_stages, num_microbatches) -> Schedule``.

- :func:`gpipe`: all forwards, then all backwards (Huang et al., 2019). Every stage holds all ``m`` micro-batches'
  activations at its peak. With ``training=False`` it is the inference schedule (forwards only).
- :func:`one_f_one_b`: PipeDream-Flush / 1F1B (Narayanan et al., 2021): stage ``s`` runs ``p - s - 1`` warm-up
  forwards, then alternates one forward and one backward, then drains. Same bubble as GPipe, but at most
  ``p - s`` micro-batches in flight on stage ``s``.
- :func:`interleaved_one_f_one_b`: Megatron-LM's interleaved 1F1B with ``v`` model chunks per stage; the bubble
  shrinks by ``v`` at the price of ``v`` times more cut crossings. Needs ``m`` to be a multiple of ``p``.

Receives are placed right before the compute that consumes them and sends right after the compute that
produces them.
"""

from __future__ import annotations

from .actions import Action, Backward, Forward, OptimizerStep, RecvAct, RecvGrad, SendAct, SendGrad
from .schedule import Schedule


def _check(num_stages: int, num_microbatches: int) -> None:
    if num_stages < 1 or num_microbatches < 1:
        raise ValueError(f"need >= 1 stage and >= 1 micro-batch, got {num_stages} and {num_microbatches}")


def _forward(stage: int, mb: int, chunk: int, p: int, v: int) -> list[Action]:
    """Receive (unless first virtual stage), forward, send (unless last virtual stage)."""
    k = chunk * p + stage
    out: list[Action] = []
    if k > 0:
        out.append(RecvAct(mb, (stage - 1) % p, chunk))
    out.append(Forward(mb, chunk))
    if k < p * v - 1:
        out.append(SendAct(mb, (stage + 1) % p, chunk))
    return out


def _backward(stage: int, mb: int, chunk: int, p: int, v: int) -> list[Action]:
    """Receive gradient (unless last virtual stage), backward, send gradient (unless first virtual stage)."""
    k = chunk * p + stage
    out: list[Action] = []
    if k < p * v - 1:
        out.append(RecvGrad(mb, (stage + 1) % p, chunk))
    out.append(Backward(mb, chunk))
    if k > 0:
        out.append(SendGrad(mb, (stage - 1) % p, chunk))
    return out


def gpipe(num_stages: int, num_microbatches: int, training: bool = True) -> Schedule:
    """GPipe: forwards of micro-batches 0..m-1, then their backwards in the same order, then the optimizer step.

    Raises ValueError for a count below 1.
    """
    _check(num_stages, num_microbatches)
    p, m = num_stages, num_microbatches
    stages: list[tuple[Action, ...]] = []
    for s in range(p):
        acts: list[Action] = []
        for mb in range(m):
            acts += _forward(s, mb, 0, p, 1)
        if training:
            for mb in range(m):
                acts += _backward(s, mb, 0, p, 1)
            acts.append(OptimizerStep())
        stages.append(tuple(acts))
    return Schedule("gpipe", p, m, tuple(stages), training=training)


def one_f_one_b(num_stages: int, num_microbatches: int) -> Schedule:
    """1F1B (PipeDream-Flush): warm-up forwards, steady one-forward-one-backward, cool-down backwards.

    Raises ValueError for a count below 1.
    """
    _check(num_stages, num_microbatches)
    p, m = num_stages, num_microbatches
    stages: list[tuple[Action, ...]] = []
    for s in range(p):
        warmup = min(p - s - 1, m)
        acts: list[Action] = []
        f = b = 0
        for _ in range(warmup):
            acts += _forward(s, f, 0, p, 1)
            f += 1
        while f < m:
            acts += _forward(s, f, 0, p, 1)
            f += 1
            acts += _backward(s, b, 0, p, 1)
            b += 1
        while b < m:
            acts += _backward(s, b, 0, p, 1)
            b += 1
        acts.append(OptimizerStep())
        stages.append(tuple(acts))
    return Schedule("1f1b", p, m, tuple(stages))


def interleaved_one_f_one_b(num_stages: int, num_microbatches: int, num_chunks: int = 2) -> Schedule:
    """Interleaved 1F1B with ``num_chunks`` model chunks per stage (Megatron-LM ordering).

    Forward unit ``k`` of a stage runs chunk ``(k // p) % v`` on micro-batch ``(k // (p v)) p + k % p``;
    backward units visit chunks in reverse. Stage ``s`` warms up with ``2 (p - s - 1) + (v - 1) p`` forwards.
    Raises ValueError unless ``num_microbatches`` is a positive multiple of ``num_stages``.
    """
    _check(num_stages, num_microbatches)
    p, m, v = num_stages, num_microbatches, num_chunks
    if v < 1:
        raise ValueError(f"need >= 1 chunk per stage, got {v}")
    if m % p:
        raise ValueError(f"interleaved 1F1B needs micro-batches ({m}) to be a multiple of stages ({p})")
    total = m * v

    def unit(k: int, backward: bool) -> tuple[int, int]:
        chunk = (k // p) % v
        mb = (k // (p * v)) * p + k % p
        return mb, (v - 1 - chunk) if backward else chunk

    stages: list[tuple[Action, ...]] = []
    for s in range(p):
        warmup = min(2 * (p - s - 1) + (v - 1) * p, total)
        acts: list[Action] = []
        for k in range(warmup):
            acts += _forward(s, *unit(k, False), p, v)
        for i in range(total - warmup):
            acts += _forward(s, *unit(warmup + i, False), p, v)
            acts += _backward(s, *unit(i, True), p, v)
        for i in range(total - warmup, total):
            acts += _backward(s, *unit(i, True), p, v)
        acts.append(OptimizerStep())
        stages.append(tuple(acts))
    return Schedule("interleaved-1f1b", p, m, tuple(stages), num_chunks=v)


BUILDERS = {"gpipe": gpipe, "1f1b": one_f_one_b}


def build(name: str, num_stages: int, num_microbatches: int) -> Schedule:
    """Build a schedule by name (``gpipe`` or ``1f1b``); raises ValueError naming the known ones otherwise."""
    try:
        return BUILDERS[name](num_stages, num_microbatches)
    except KeyError:
        raise ValueError(f"unknown schedule {name!r}; known: {', '.join(sorted(BUILDERS))}") from None
