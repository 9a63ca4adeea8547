"""Activation statistics: known tensors, and streaming aggregation equal to the one-shot figures."""

from __future__ import annotations

import math

import pytest
import torch

from layeredge_dist.measure import ActivationStats, StatsAccumulator, activation_stats


def test_zeros_are_fully_sparse() -> None:
    s = activation_stats(torch.zeros(4, 8))
    assert s.numel == 32
    assert s.sparsity == 1.0
    assert s.rms == 0.0 and s.absmax == 0.0 and s.mean_abs == 0.0
    assert s.outlier_ratio == 0.0
    assert math.isnan(s.kurtosis)  # undefined for a constant tensor
    assert s.to_dict()["kurtosis"] is None


def test_one_percent_outliers_at_100x() -> None:
    g = torch.Generator().manual_seed(0)
    n = 100_000
    x = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)  # (N,) of +-1
    idx = torch.randperm(n, generator=g)[: n // 100]
    x[idx] *= 100.0
    s = activation_stats(x.reshape(100, 1000))
    # rms = sqrt(0.99 + 0.01 * 1e4) ~ 10.05, so the 6-rms threshold (~60) catches exactly the 100s
    assert s.rms == pytest.approx(math.sqrt(0.99 + 100.0), rel=1e-12)
    assert s.outlier_ratio == pytest.approx(0.01, abs=1e-12)
    assert s.absmax == 100.0
    assert s.sparsity == 0.0
    # a Gaussian tensor has practically no 6-sigma values and kurtosis ~3
    gauss = activation_stats(torch.randn(200_000, generator=g))
    assert gauss.outlier_ratio < 1e-4
    assert gauss.kurtosis == pytest.approx(3.0, abs=0.1)
    assert activation_stats(torch.rand(200_000, generator=g)).kurtosis == pytest.approx(1.8, abs=0.05)


def test_hand_computed_values() -> None:
    s = activation_stats(torch.tensor([1.0, -2.0, 3.0, -4.0]))
    assert s.rms == pytest.approx(math.sqrt(30 / 4))
    assert s.absmax == 4.0
    assert s.mean_abs == 2.5
    assert s.mean == -0.5
    # deviations 1.5, -1.5, 3.5, -3.5: var = 29/4, m4 = 310.25/4
    assert s.std == pytest.approx(math.sqrt(29 / 4))
    assert s.kurtosis == pytest.approx((310.25 / 4) / (29 / 4) ** 2)
    sparse = activation_stats(torch.tensor([0.0, 1e-4, -1e-4, 1.0]), eps=1e-3)
    assert sparse.sparsity == 0.75
    assert activation_stats(torch.tensor([0.0, 1e-4, -1e-4, 1.0])).sparsity == 0.25


def test_accumulator_matches_one_shot() -> None:
    g = torch.Generator().manual_seed(1)
    chunks = [torch.randn(8, 16, 32, generator=g) * (1 + i) + i for i in range(5)]  # shifting mean and scale
    acc = StatsAccumulator()
    for c in chunks:
        acc.add(c)
    got = acc.result()
    whole = torch.cat([c.reshape(-1) for c in chunks]).to(torch.float64)
    m = whole.mean()
    d = whole - m
    assert got.numel == whole.numel()
    assert got.mean == pytest.approx(float(m), rel=1e-10)
    assert got.rms == pytest.approx(float(whole.pow(2).mean().sqrt()), rel=1e-10)
    assert got.std == pytest.approx(float(d.pow(2).mean().sqrt()), rel=1e-10)
    assert got.kurtosis == pytest.approx(float(d.pow(4).mean() / d.pow(2).mean() ** 2), rel=1e-9)
    assert got.mean_abs == pytest.approx(float(whole.abs().mean()), rel=1e-10)
    assert got.absmax == pytest.approx(float(whole.abs().max()))
    one = activation_stats(torch.cat([c.reshape(-1) for c in chunks]))
    assert got.kurtosis == pytest.approx(one.kurtosis, rel=1e-9)
    # O(1) memory: the accumulator holds scalars only, however many batches went in
    assert all(isinstance(v, (int, float)) for v in vars(acc).values())


def test_empty_and_bad_arguments() -> None:
    r = StatsAccumulator().add(torch.empty(0)).result()
    assert isinstance(r, ActivationStats) and r.numel == 0 and math.isnan(r.rms)
    with pytest.raises(ValueError):
        StatsAccumulator(outlier_k=0)
    with pytest.raises(ValueError):
        StatsAccumulator(eps=-1)
    ints = activation_stats(torch.tensor([0, 2, -2]))
    assert ints.sparsity == pytest.approx(1 / 3) and ints.absmax == 2.0
