"""The gate's statistics against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pneumonia.gate import bootstrap_interval, mcnemar_exact, paired_comparison


@pytest.mark.parametrize(
    ("fixed", "broken", "expected"),
    [
        (0, 0, 1.0),
        (2, 0, 0.5),  # 2 * (1/2)^2
        (5, 0, 0.0625),  # 2 * (1/2)^5
        (6, 1, 0.125),  # 2 * (1 + 7) / 2^7
        (10, 10, 1.0),
        (1, 9, 0.021484375),  # 2 * (1 + 10) / 2^10
    ],
)
def test_exact_mcnemar_by_hand(fixed, broken, expected):
    assert mcnemar_exact(fixed, broken) == pytest.approx(expected)
    assert mcnemar_exact(broken, fixed) == pytest.approx(expected)


def test_paired_comparison_counts_flips_and_brackets_the_difference():
    champion = np.array([True] * 80 + [False] * 20)
    challenger = champion.copy()
    challenger[80:95] = True  # 15 fixed
    challenger[:3] = False  # 3 broken
    result = paired_comparison(challenger, champion, resamples=2000)
    assert (result["n"], result["fixed"], result["broken"]) == (100, 15, 3)
    assert result["accuracy_difference"] == pytest.approx(0.12)
    assert result["mcnemar_p"] == pytest.approx(mcnemar_exact(15, 3)) and result["mcnemar_p"] < 0.01
    low, high = result["bootstrap_ci95"]
    assert 0 < low < 0.12 < high < 0.25


def test_bootstrap_of_identical_models_is_zero_and_reproducible():
    same = np.array([True, False] * 50)
    assert bootstrap_interval(same, same, 500) == (0.0, 0.0)
    rng = np.random.default_rng(1)
    a, b = rng.random(300) < 0.9, rng.random(300) < 0.85
    assert bootstrap_interval(a, b, 700) == bootstrap_interval(a, b, 700)


def test_bootstrap_memory_is_chunked_for_large_test_sets():
    rng = np.random.default_rng(2)
    a, b = rng.random(200_000) < 0.9, rng.random(200_000) < 0.9
    low, high = bootstrap_interval(a, b, 40)  # 40 x 200k would be 8 GB as one int64 array
    assert -0.01 < low <= high < 0.01
