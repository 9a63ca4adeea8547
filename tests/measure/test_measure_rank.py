"""Rank correlations against hand-computed values."""

from __future__ import annotations

import math

import pytest

from layeredge_dist.measure import kendall_tau, rankdata, spearman


def test_rankdata_averages_ties() -> None:
    assert rankdata([10, 20, 20, 30]) == [1.0, 2.5, 2.5, 4.0]
    assert rankdata([3, 1, 2]) == [3.0, 1.0, 2.0]
    assert rankdata([5, 5, 5]) == [2.0, 2.0, 2.0]


def test_spearman_perfect_and_reversed() -> None:
    xs = [0.1, 0.5, 2.0, 7.0, 100.0]
    assert spearman(xs, [1, 2, 3, 4, 5]) == pytest.approx(1.0)
    assert spearman(xs, [x ** 3 for x in xs]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman(xs, [5, 4, 3, 2, 1]) == pytest.approx(-1.0)


def test_spearman_ties() -> None:
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 2, 3, 4]: cov 4.5, var_x 4.5, var_y 5
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))  # one side constant: undefined


def test_spearman_hand_example() -> None:
    # IQ vs hours of TV (the textbook example): sum d^2 = 194, rho = 1 - 6 * 194 / (10 * 99) = -29/165
    iq = [106, 86, 100, 101, 99, 103, 97, 113, 112, 110]
    tv = [7, 0, 27, 50, 28, 29, 20, 12, 6, 17]
    assert spearman(iq, tv) == pytest.approx(-29 / 165, abs=1e-12)


def test_kendall_tau() -> None:
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)  # one discordant pair of six
    # tau-b with a tie in x: 5 concordant, 0 discordant, 1 tie -> 5 / sqrt(5 * 6)
    assert kendall_tau([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / math.sqrt(30))


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        kendall_tau([1], [1, 2])
    with pytest.raises(ValueError):
        spearman([1, float("nan")], [1, 2])
    assert math.isnan(spearman([1], [2]))
