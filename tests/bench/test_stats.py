"""Nearest-rank percentiles and medians."""

from __future__ import annotations

import pytest

from bench.results import element_median, ratio
from bench.stats import median, percentile, percentiles


def test_nearest_rank_percentiles_are_measured_values() -> None:
    values = list(range(100, 0, -1))  # 1..100, unordered
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7], 99) == 7
    assert percentiles([10, 20, 30, 40]) == {50: 20, 90: 40, 99: 40}


def test_percentile_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="not in"):
        percentile([1], 0)


def test_medians_and_ratios() -> None:
    assert median([3, 1, 2]) == 2
    assert element_median([(0.6, 0.4), (0.5, 0.5), (0.7, 0.3)]) == (0.6, 0.4)
    assert element_median([]) == ()
    assert ratio(3.0, 4.0) == 0.75
    assert ratio(None, 4.0) is None
    assert ratio(3.0, 0.0) is None
