"""A cheap online proxy of how much the loss changes when an edge is compressed, from what a pipeline computes.

In training, the activation ``a`` (B, ...) crossing a cut is sent forward and its gradient ``g = dL/da`` comes
back from the receiving stage in backward. With the reconstruction ``â = decode(encode(a))`` for a codec:

- ``delta_taylor = sum(g * (â - a))`` is the first-order Taylor estimate of ``L(â) - L(a)`` for that micro-batch
  (signed; exact to O(|â - a|²)). Its scale is that of the loss the gradient came from: a pipeline that scales
  the loss by ``1 / micro-batches`` gets gradients, and so Taylor values, scaled the same way.
- ``taylor_sq_mean = E_b[(sum_{non-batch} g_b * (a_b - â_b))²]``: the squared per-sample Taylor term, averaged
  over samples: a sign-free measure of sensitivity that is stable across micro-batches.
- backward direction (compressing the gradient itself): ``rel_mse = E[||g - ĝ||²] / E[||g||²]`` with
  ``ĝ = decode(encode(g))`` (sums over all micro-batches, then the ratio).

Stateful specs (``ef(...)``, ``delta(...)``) are evaluated with a fresh state per call, i.e. as their inner
codec on a first step (see :mod:`layeredge_dist.measure._codec`); randomized codecs draw from a generator seeded
by ``(seed, call index)``.

Cost per :meth:`ProxyAccumulator.add`: one encode + decode of ``a`` and of ``g`` per codec and a few elementwise
ops; no extra forward or backward pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..model.chain import train_chain
from ..model.partition import Partition
from ._codec import call_seed, load_codec, roundtrip


def relative_error(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """``||x - x̂|| / ||x||`` (Frobenius, in float64); 0 when both are zero, inf when only ``x`` is zero.

    Raises ValueError when the shapes differ.
    """
    if tuple(x.shape) != tuple(x_hat.shape):
        raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(x_hat.shape)}")
    xd = x.detach().to(torch.float64)
    num = float(torch.linalg.vector_norm(xd - x_hat.detach().to(torch.float64)))
    den = float(torch.linalg.vector_norm(xd))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def taylor_delta(a: torch.Tensor, g: torch.Tensor, a_hat: torch.Tensor) -> float:
    """First-order estimate of ``L(â) - L(a)``: ``sum(g * (â - a))`` (float64, signed)."""
    _check_pair(a, g)
    _check_pair(a, a_hat)
    d = a_hat.detach().to(torch.float64) - a.detach().to(torch.float64)
    return float((g.detach().to(torch.float64) * d).sum())


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"activation and gradient shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")


def _per_sample(t: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B, rest); a 0-d tensor is one sample of one element."""
    return t.reshape(1, 1) if t.dim() == 0 else t.reshape(t.shape[0], -1)


@dataclass(frozen=True)
class ProxyValue:
    """Proxy of one codec on one edge, over the micro-batches seen (see the module docstring for definitions).

    Attributes:
        spec: the codec spec as given.
        taylor_abs_mean: mean over micro-batches of ``|sum(g * (â - a))|``.
        taylor_sq_mean: mean over samples of ``(sum_{non-batch} g * (a - â))²``.
        rel_mse: backward direction, ``sum ||g - ĝ||² / sum ||g||²`` (0 when every gradient was zero).
        bits_per_element: exact payload bits per element of the activation encodings (element-weighted mean).
        taylor_mean: mean over micro-batches of the signed ``sum(g * (â - a))``.
        act_rel_mse: forward direction, ``sum ||a - â||² / sum ||a||²``.
        grad_bits_per_element: exact payload bits per element of the gradient encodings.
        micro_batches, samples: how many ``add`` calls and samples went in.
    """

    spec: str
    taylor_abs_mean: float
    taylor_sq_mean: float
    rel_mse: float
    bits_per_element: float
    taylor_mean: float
    act_rel_mse: float
    grad_bits_per_element: float
    micro_batches: int
    samples: int


class _Sums:
    __slots__ = ("taylor", "taylor_abs", "taylor_sq", "samples", "calls", "a_err", "a_norm", "g_err", "g_norm",
                 "a_bits", "a_numel", "g_bits", "g_numel")

    def __init__(self) -> None:
        self.taylor = self.taylor_abs = self.taylor_sq = 0.0
        self.a_err = self.a_norm = self.g_err = self.g_norm = 0.0
        self.a_bits = self.g_bits = 0.0
        self.samples = self.calls = self.a_numel = self.g_numel = 0


class ProxyAccumulator:
    """Evaluates every codec on the same ``(a, g)`` pairs and accumulates the proxies of one edge.

    Args:
        codec_specs: codec spec strings (parsed once; CodecError for a bad one, ValueError for duplicates).
        seed: seeds the generator of randomized codecs; call ``i`` uses ``call_seed(seed, i)``, the same as
            calibration batch ``i`` in :func:`~layeredge_dist.measure.sensitivity.edge_sensitivity`.
        backward: also encode the gradient for ``rel_mse`` (one more encode + decode per codec and call).
    """

    def __init__(self, codec_specs: Sequence[str], seed: int = 0, backward: bool = True) -> None:
        specs = list(codec_specs)
        if len(set(specs)) != len(specs):
            raise ValueError(f"duplicate codec specs in {specs}")
        self._codecs = {s: load_codec(s) for s in specs}
        self._sums = {s: _Sums() for s in specs}
        self.seed = seed
        self.backward = backward
        self.calls = 0

    @property
    def specs(self) -> tuple[str, ...]:
        """The codec specs, in the order given."""
        return tuple(self._codecs)

    def add(self, a: torch.Tensor, g: torch.Tensor) -> dict[str, float]:
        """Evaluate every codec on activation ``a`` (B, ...) and its gradient ``g`` (same shape).

        Returns this micro-batch's signed ``delta_taylor`` per spec. Raises ValueError when shapes differ,
        CodecError when a codec cannot carry ``a`` (e.g. an integer tensor).
        """
        _check_pair(a, g)
        a = a.detach()
        g = g.detach()
        ad = a.to(torch.float64)
        gd = g.to(torch.float64)
        ga = _per_sample(gd)
        a_norm = float((ad * ad).sum())
        g_norm = float((gd * gd).sum())
        batch = ga.shape[0]
        out: dict[str, float] = {}
        for spec, codec in self._codecs.items():
            s = self._sums[spec]
            a_hat, bits = roundtrip(codec, a, seed=call_seed(self.seed, self.calls, "a"))
            diff = a_hat.to(torch.float64) - ad  # (B, ...)
            per_sample = (ga * _per_sample(diff)).sum(dim=1)  # (B,)
            t = float(per_sample.sum())
            out[spec] = t
            s.taylor += t
            s.taylor_abs += abs(t)
            s.taylor_sq += float((per_sample * per_sample).sum())
            s.samples += batch
            s.calls += 1
            s.a_err += float((diff * diff).sum())
            s.a_norm += a_norm
            s.a_bits += bits * a.numel()
            s.a_numel += a.numel()
            if self.backward:
                g_hat, gbits = roundtrip(codec, g, seed=call_seed(self.seed, self.calls, "g"))
                gdiff = g_hat.to(torch.float64) - gd
                s.g_err += float((gdiff * gdiff).sum())
                s.g_norm += g_norm
                s.g_bits += gbits * g.numel()
                s.g_numel += g.numel()
        self.calls += 1
        return out

    def result(self) -> dict[str, ProxyValue]:
        """The proxies so far, by spec (NaN everywhere for a codec with no data yet)."""
        nan = float("nan")

        def ratio(num: float, den: float, n: int) -> float:
            if n == 0:
                return nan
            return num / den if den > 0 else (0.0 if num == 0 else math.inf)

        res: dict[str, ProxyValue] = {}
        for spec, s in self._sums.items():
            c = s.calls
            res[spec] = ProxyValue(
                spec=spec,
                taylor_abs_mean=s.taylor_abs / c if c else nan,
                taylor_sq_mean=s.taylor_sq / s.samples if s.samples else nan,
                rel_mse=ratio(s.g_err, s.g_norm, s.g_numel),
                bits_per_element=s.a_bits / s.a_numel if s.a_numel else nan,
                taylor_mean=s.taylor / c if c else nan,
                act_rel_mse=ratio(s.a_err, s.a_norm, s.a_numel),
                grad_bits_per_element=s.g_bits / s.g_numel if s.g_numel else nan,
                micro_batches=c,
                samples=s.samples,
            )
        return res


def chain_proxies(
    parts: Sequence[Partition],
    batches: Sequence[tuple[torch.Tensor, Mapping[str, torch.Tensor]]],
    codec_specs: Sequence[str],
    cut_indices: Sequence[int] | None = None,
    seed: int = 0,
) -> dict[int, dict[str, ProxyValue]]:
    """Proxies of every cut, computed the way a pipeline would: forward and backward each batch through the
    partitions (:func:`~layeredge_dist.model.chain.train_chain`, one micro-batch per batch, so ``g`` is the
    gradient of that batch's mean loss) and feed each cut's ``(a, g)`` to a :class:`ProxyAccumulator`.

    The partitions run in eval mode (restored afterwards) and their ``.grad`` fields are left as they were.
    Cost per batch: one forward and one backward of every stage, plus the codec round trips.
    Returns ``{cut index: {spec: ProxyValue}}``.
    """
    n_cuts = len(parts) - 1
    cuts = list(range(n_cuts)) if cut_indices is None else [int(k) for k in cut_indices]
    for k in cuts:
        if not 0 <= k < n_cuts:
            raise ValueError(f"cut index {k} out of range for {len(parts)} partitions")
    accs = {k: ProxyAccumulator(codec_specs, seed=seed) for k in cuts}
    params = [p for part in parts for p in part.parameters()]
    saved_grads = [p.grad for p in params]
    modes = [part.training for part in parts]
    try:
        for part in parts:
            part.eval()
        for x, side in batches:
            for p in params:
                p.grad = None
            step = train_chain(parts, [x], [dict(side)])
            for k in cuts:
                accs[k].add(step.activations[k][0], step.gradients[k][0])
    finally:
        for p, g in zip(params, saved_grads):
            p.grad = g
        for part, mode in zip(parts, modes):
            part.train(mode)
    return {k: acc.result() for k, acc in accs.items()}
