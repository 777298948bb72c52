"""The audit's Mann-Whitney U test, against hand-worked cases and scipy where installed."""

from __future__ import annotations

import random

import pytest

from plait.bench.rank_test import mann_whitney_less, ranks


def test_ranks_average_ties():
    assert ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]


def test_separated_samples_give_extreme_p_values():
    fast, slow = [1.0, 2.0, 3.0, 4.0, 5.0] * 4, [10.0, 11.0, 12.0, 13.0, 14.0] * 4
    r = mann_whitney_less(fast, slow)
    assert r.u == 400 and r.p_value < 1e-6
    assert mann_whitney_less(slow, fast).p_value > 1 - 1e-6
    assert mann_whitney_less([1.0] * 5, [1.0] * 5).p_value == 1.0
    with pytest.raises(ValueError):
        mann_whitney_less([], [1.0])


def test_same_distribution_p_values_are_roughly_uniform():
    rng = random.Random(0)
    ps = [
        mann_whitney_less([rng.random() for _ in range(30)], [rng.random() for _ in range(30)])
        for _ in range(400)
    ]
    small = sum(r.p_value < 0.05 for r in ps) / len(ps)
    assert 0.02 < small < 0.09  # about 5 % false positives at the 5 % level


def test_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(1)
    for _ in range(20):
        x = [round(rng.gauss(0, 1), 1) for _ in range(rng.randint(5, 40))]
        y = [round(rng.gauss(0.4, 1), 1) for _ in range(rng.randint(5, 40))]
        ref = stats.mannwhitneyu(x, y, alternative="less", method="asymptotic")
        got = mann_whitney_less(x, y)
        assert got.p_value == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-12)
        assert got.u == len(x) * len(y) - ref.statistic
