"""The retrain job's inputs fingerprint: what it covers and what it leaves out."""

from __future__ import annotations

import shutil

import pytest

from pneumonia.retrain import inputs_fingerprint
from tests.conftest import REPO


@pytest.fixture
def tree(tmp_path):
    """The pipeline's definition, parameters, data version and code, as in the repository."""
    for name in ("dvc.yaml", "params.yaml", "chest_xray.dvc"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "training.py").write_text("# benchmark-only\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "test.json").write_text('{"accuracy": 0.9}\n')
    return tmp_path


def edit(path, old, new):
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_the_same_inputs_give_the_same_fingerprint(tree):
    first = inputs_fingerprint([], tree)
    assert len(first) == 16 and int(first, 16) >= 0
    assert inputs_fingerprint([], tree) == first


def test_what_a_run_starts_from_changes_it(tree):
    base = inputs_fingerprint([], tree)
    assert inputs_fingerprint(["train.epochs=3"], tree) != base, "an override"
    assert inputs_fingerprint(["train.epochs=10"], tree) == base, "an override to the same value"
    seen = {base}
    edit(tree / "src/pneumonia/train.py", '"""', '"""Edited. ')  # a stage's code
    seen.add(inputs_fingerprint([], tree))
    edit(tree / "params.yaml", "lr: 0.001", "lr: 0.002")  # a stage's parameter
    seen.add(inputs_fingerprint([], tree))
    edit(tree / "chest_xray.dvc", "md5: ", "md5: 0")  # a new data version
    seen.add(inputs_fingerprint([], tree))
    edit(tree / "dvc.yaml", "cmd: python -m pneumonia.train", "cmd: python -m pneumonia.train -v")
    seen.add(inputs_fingerprint([], tree))
    assert len(seen) == 5, "each change gave a fingerprint of its own"


def test_what_no_stage_reads_or_a_stage_produces_leaves_it(tree):
    base = inputs_fingerprint([], tree)
    (tree / "bench" / "training.py").write_text("# changed\n")  # benchmark-only code
    (tree / "metrics" / "test.json").write_text('{"accuracy": 0.5}\n')  # an output
    edit(tree / "params.yaml", "batch_size: 32 ", "batch_size: 32  ")  # layout, not values
    (tree / "src/pneumonia/github.py").write_text("# not a stage dependency\n")
    assert inputs_fingerprint([], tree) == base
