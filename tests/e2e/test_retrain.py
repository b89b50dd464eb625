"""The retraining job's decision: run the pipeline when something changed, else end at once."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import TINY_PARAMS, copy_subset, make_repo, run, tool_env

pytestmark = pytest.mark.slow


def check(repo, *args, outputs):
    env = tool_env(GITHUB_OUTPUT=str(outputs / "out"), GITHUB_STEP_SUMMARY=str(outputs / "sum"))
    for name in ("out", "sum"):
        (outputs / name).write_text("")
    result = run([sys.executable, "-m", "pneumonia.retrain", *args], repo, env)
    lines = result.stdout.strip().splitlines()
    return lines, (outputs / "out").read_text(), (outputs / "sum").read_text()


def test_retrain_only_when_something_changed(tmp_path):
    dataset = copy_subset(tmp_path / "chest_xray", {"train": 12, "val": 3, "test": 4})
    repo = make_repo(tmp_path / "repo", dataset, {**TINY_PARAMS, "prepare": {"image_size": 32}})
    outputs = tmp_path

    lines, gh_out, summary = check(repo, "--reason", "first run", outputs=outputs)
    assert len(lines) == 1 and lines[0].startswith("Retraining (out of date: ")
    assert "Reason: first run" in lines[0] and "prepare" in lines[0]
    assert gh_out == "changed=true\n" and summary.startswith("Retraining")
    assert not (repo / "metrics").exists(), "deciding runs nothing"
    run(["dvc", "repro"], repo, tool_env())
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "model"], repo)

    lines, gh_out, summary = check(repo, outputs=outputs)
    assert len(lines) == 1 and lines[0].startswith("Nothing changed (data ")
    assert gh_out == "changed=false\n" and "no retraining" in summary

    lines, gh_out, _ = check(repo, "--set", "train.epochs=2", outputs=outputs)
    assert "parameters train.epochs=2" in lines[0] and gh_out == "changed=true\n"
    lines, gh_out, _ = check(repo, "--force", outputs=outputs)
    assert lines[0].startswith("Retraining (forced)") and gh_out == "changed=true\n"

    (repo / "params.yaml").write_text(
        (repo / "params.yaml").read_text().replace("lr: 0.001", "lr: 0.002")
    )
    lines, gh_out, _ = check(repo, outputs=outputs)
    assert "out of date: " in lines[0] and "train" in lines[0] and gh_out == "changed=true\n"


def test_bad_override_is_refused(tmp_path):
    result = run(
        [sys.executable, "-m", "pneumonia.retrain", "--set", "epochs"],
        tmp_path,
        tool_env(),
        check=False,
    )
    assert result.returncode == 2 and "KEY=VALUE" in result.stderr
