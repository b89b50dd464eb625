"""The retraining job's decision: retrain when something changed, otherwise end at once."""

from __future__ import annotations

import sys

import pytest
import yaml

from tests.conftest import TINY_PARAMS, copy_subset, make_repo, run, tool_env

pytestmark = pytest.mark.slow


def retrain(repo, *args, outputs):
    env = tool_env(GITHUB_OUTPUT=str(outputs / "out"), GITHUB_STEP_SUMMARY=str(outputs / "sum"))
    for name in ("out", "sum"):
        (outputs / name).write_text("")
    result = run([sys.executable, "-m", "pneumonia.retrain", *args], repo, env)
    lines = result.stdout.strip().splitlines()  # the summary comes after dvc's own output
    return lines[-1], (outputs / "out").read_text(), (outputs / "sum").read_text(), len(lines)


def test_retrain_only_when_something_changed(tmp_path):
    dataset = copy_subset(tmp_path / "chest_xray", {"train": 12, "val": 3, "test": 4})
    repo = make_repo(tmp_path / "repo", dataset, {**TINY_PARAMS, "prepare": {"image_size": 32}})
    outputs = tmp_path

    out, gh_out, summary, _ = retrain(repo, "--reason", "first run", outputs=outputs)
    assert out.startswith("Retrained (out of date: ") and "Reason: first run" in out
    assert gh_out == "changed=true\n" and summary.startswith("Retrained")
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "model"], repo)

    out, gh_out, summary, printed = retrain(repo, outputs=outputs)
    assert out.startswith("Nothing changed (data ") and printed == 1  # one line, nothing else
    assert gh_out == "changed=false\n" and "no retraining" in summary

    out, gh_out, _, _ = retrain(repo, "--set", "train.epochs=2", outputs=outputs)
    assert "parameters train.epochs=2" in out and gh_out == "changed=true\n"
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["epochs"] == 2
    assert "epochs_run" in (repo / "metrics" / "train.json").read_text()


def test_bad_override_is_refused(tmp_path):
    result = run([sys.executable, "-m", "pneumonia.retrain", "--set", "epochs"], tmp_path,
                 tool_env(), check=False)  # fmt: skip
    assert result.returncode == 2 and "KEY=VALUE" in result.stderr
