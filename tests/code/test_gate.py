"""The gate's statistics against values worked out by hand."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pneumonia.gate import (
    MetricsError,
    bootstrap_interval,
    dvc_pull,
    mcnemar_exact,
    paired_comparison,
)


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


def test_a_failed_dvc_pull_says_what_dvc_said_or_its_exit_status(tmp_path):
    """`dvc pull -q` of an object no remote has prints nothing: the error still says why."""
    dvc = str(Path(sys.executable).with_name("dvc"))
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run([dvc, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "model.json").write_text("{}")
    subprocess.run([dvc, "add", "-q", "bundle"], cwd=tmp_path, check=True)
    (tmp_path / "remote").mkdir()  # a remote that never got the bundle: dvc -q says nothing
    subprocess.run([dvc, "remote", "add", "-d", "r", str(tmp_path / "remote")], cwd=tmp_path)
    shutil.rmtree(tmp_path / "bundle")
    shutil.rmtree(tmp_path / ".dvc" / "cache")
    with pytest.raises(MetricsError) as caught:
        dvc_pull(tmp_path, "bundle")
    message = str(caught.value)
    assert "`dvc pull bundle` failed (exit 1): the gate needs it" in message
    assert "a maintainer must retrain or push its model" in message
