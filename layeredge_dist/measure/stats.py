"""Activation statistics of a tensor crossing a cut: scale, outliers, sparsity and tail weight.

:func:`activation_stats` summarises one tensor; :class:`StatsAccumulator` aggregates a stream of micro-batches
in O(1) memory (a handful of float64 scalars), merging central moments with the pairwise update of Chan et al.
/ Pébay, so the mean, RMS, kurtosis, sparsity and maxima equal those of the concatenated stream.

The one statistic that is *not* exactly that of the concatenation is ``outlier_ratio``: deciding whether
``|x| > k * rms`` needs the RMS, and the stream's RMS is unknown until the end. Each micro-batch is therefore
judged against its own RMS, and the ratio is the element-weighted mean of the per-batch ratios (for a single
tensor, :func:`activation_stats`, this is exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: Default outlier threshold, in multiples of the RMS.
OUTLIER_K = 6.0
#: Default sparsity threshold: an element counts as zero when ``|x| <= eps``.
SPARSITY_EPS = 0.0


@dataclass(frozen=True)
class ActivationStats:
    """Summary of the elements of a tensor (or a stream of them). Undefined values are NaN.

    Attributes:
        numel: number of elements seen.
        rms: ``sqrt(mean(x**2))``.
        absmax: ``max |x|``.
        mean_abs: ``mean |x|``.
        outlier_ratio: fraction of elements with ``|x| > outlier_k * rms`` (see the module note for streams).
        sparsity: fraction of elements with ``|x| <= eps``.
        kurtosis: Pearson kurtosis ``E[(x - mean)^4] / var^2`` (3 for a Gaussian, 1.8 for a uniform; NaN for a
            constant tensor), the tail weight that hurts absmax quantizers.
        mean: ``mean(x)``.
        std: population standard deviation.
        outlier_k, eps: the thresholds used.
    """

    numel: int
    rms: float
    absmax: float
    mean_abs: float
    outlier_ratio: float
    sparsity: float
    kurtosis: float
    mean: float
    std: float
    outlier_k: float = OUTLIER_K
    eps: float = SPARSITY_EPS

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-compatible dict (NaN becomes None)."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.__dict__.items()}


class StatsAccumulator:
    """Running :class:`ActivationStats` over micro-batches in O(1) memory.

    ``add(x)`` takes any tensor (integer tensors are read as floats); ``result()`` may be called at any time.
    NaN/Inf inputs are not filtered and propagate into the moments.
    """

    def __init__(self, outlier_k: float = OUTLIER_K, eps: float = SPARSITY_EPS) -> None:
        if outlier_k <= 0:
            raise ValueError(f"outlier_k must be > 0, got {outlier_k}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.outlier_k = float(outlier_k)
        self.eps = float(eps)
        self.n = 0
        self._mean = 0.0
        self._m2 = 0.0
        self._m3 = 0.0
        self._m4 = 0.0
        self._sum_abs = 0.0
        self._absmax = 0.0
        self._outliers = 0
        self._zeros = 0

    def add(self, x: torch.Tensor) -> StatsAccumulator:
        """Fold the elements of ``x`` into the running statistics; returns self (for chaining)."""
        x = x.detach()
        nb = x.numel()
        if nb == 0:
            return self
        xd = x.reshape(-1).to(torch.float64)
        mb = float(xd.mean())
        d = xd - mb
        d2 = d * d
        m2b = float(d2.sum())
        m3b = float((d2 * d).sum())
        m4b = float((d2 * d2).sum())
        ax = xd.abs()
        rms_b = math.sqrt(m2b / nb + mb * mb)
        self._outliers += int((ax > self.outlier_k * rms_b).sum())
        self._zeros += int((ax <= self.eps).sum())
        self._sum_abs += float(ax.sum())
        self._absmax = max(self._absmax, float(ax.max()))
        self._merge(nb, mb, m2b, m3b, m4b)
        return self

    def _merge(self, nb: int, mb: float, m2b: float, m3b: float, m4b: float) -> None:
        na = self.n
        if na == 0:
            self.n, self._mean, self._m2, self._m3, self._m4 = nb, mb, m2b, m3b, m4b
            return
        n = na + nb
        delta = mb - self._mean
        d2 = delta * delta
        m2a, m3a, m4a = self._m2, self._m3, self._m4
        self._mean = self._mean + delta * nb / n
        self._m2 = m2a + m2b + d2 * na * nb / n
        self._m3 = m3a + m3b + d2 * delta * na * nb * (na - nb) / (n * n) + 3.0 * delta * (na * m2b - nb * m2a) / n
        self._m4 = (m4a + m4b + d2 * d2 * na * nb * (na * na - na * nb + nb * nb) / (n ** 3)
                    + 6.0 * d2 * (na * na * m2b + nb * nb * m2a) / (n * n) + 4.0 * delta * (na * m3b - nb * m3a) / n)
        self.n = n

    def result(self) -> ActivationStats:
        """The statistics so far (all NaN but ``numel`` = 0 before any element)."""
        n = self.n
        nan = float("nan")
        if n == 0:
            return ActivationStats(0, nan, nan, nan, nan, nan, nan, nan, nan, self.outlier_k, self.eps)
        var = self._m2 / n
        rms = math.sqrt(max(var + self._mean * self._mean, 0.0))
        kurt = n * self._m4 / (self._m2 * self._m2) if self._m2 > 0 else nan
        return ActivationStats(
            numel=n, rms=rms, absmax=self._absmax, mean_abs=self._sum_abs / n, outlier_ratio=self._outliers / n,
            sparsity=self._zeros / n, kurtosis=kurt, mean=self._mean, std=math.sqrt(max(var, 0.0)),
            outlier_k=self.outlier_k, eps=self.eps,
        )


def activation_stats(x: torch.Tensor, outlier_k: float = OUTLIER_K, eps: float = SPARSITY_EPS) -> ActivationStats:
    """:class:`ActivationStats` of one tensor (computed in float64)."""
    return StatsAccumulator(outlier_k, eps).add(x).result()
