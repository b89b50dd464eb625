"""The retraining job's decision: run the pipeline when something changed, else end at once."""

from __future__ import annotations

import sys

import pytest

from pneumonia.github import FAILED_LABEL
from tests.conftest import TINY_PARAMS, copy_subset, make_repo, run, tool_env
from tests.fake_github import FakeGitHub

pytestmark = pytest.mark.slow


def check(repo, *args, outputs, **env):
    env = tool_env(
        GITHUB_OUTPUT=str(outputs / "out"), GITHUB_STEP_SUMMARY=str(outputs / "sum"), **env
    )
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
    assert gh_out.startswith("changed=true\ninputs=") and summary.startswith("Retraining")
    assert not (repo / "metrics").exists(), "deciding runs nothing"
    run(["dvc", "repro"], repo, tool_env())
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "model"], repo)

    lines, gh_out, summary = check(repo, outputs=outputs)
    assert len(lines) == 1 and lines[0].startswith("Nothing changed (data ")
    assert gh_out.startswith("changed=false\ninputs=") and "no retraining" in summary

    lines, gh_out, _ = check(repo, "--set", "train.epochs=2", outputs=outputs)
    assert "parameters train.epochs=2" in lines[0] and gh_out.startswith("changed=true\ninputs=")
    lines, gh_out, _ = check(repo, "--force", outputs=outputs)
    assert lines[0].startswith("Retraining (forced)") and gh_out.startswith("changed=true\ninputs=")

    (repo / "params.yaml").write_text(
        (repo / "params.yaml").read_text().replace("lr: 0.001", "lr: 0.002")
    )
    lines, gh_out, _ = check(repo, outputs=outputs)
    assert (
        "out of date: " in lines[0]
        and "train" in lines[0]
        and gh_out.startswith("changed=true\ninputs=")
    )
    assert "Earlier retrain pull requests not checked: no GITHUB_TOKEN" in lines[0]

    # These inputs were retrained once and the model failed the gate: the schedule does not
    # retry them (the pull request's record holds the fingerprint), force does.
    fingerprint = gh_out.split("inputs=")[1].strip()
    github = FakeGitHub(tmp_path / "github")
    try:
        access = {
            "GITHUB_TOKEN": github.token,
            "GITHUB_REPOSITORY": f"{github.owner}/{github.repo}",
            "GITHUB_API_URL": github.api_url,
            "REQUESTS_CA_BUNDLE": str(github.ca),
        }
        lines, gh_out, _ = check(repo, outputs=outputs, **access)
        assert gh_out.startswith("changed=true"), "no pull request tried these inputs yet"
        number = github.add_pull("retrain/20261201-5", "a" * 40)
        record = f'{{"inputs": "{fingerprint}", "passed": false, "accuracy": 0.9}}'
        github.pull(number).body = f"report\n<!-- retrain-record: {record} -->"
        lines, gh_out, _ = check(repo, outputs=outputs, **access)
        assert gh_out.startswith("changed=true"), "recorded but not labelled failed: retried"
        github.pull(number).labels.append(FAILED_LABEL)
        github.pull(number).state = "closed"
        lines, gh_out, summary = check(repo, outputs=outputs, **access)
        assert gh_out.startswith("changed=false") and lines[0].startswith("Already tried")
        assert f"#{number}" in lines[0] and "force" in lines[0] and "Already tried" in summary
        lines, gh_out, _ = check(repo, "--force", outputs=outputs, **access)
        assert gh_out.startswith("changed=true") and "forced" in lines[0]
        lines, gh_out, _ = check(repo, "--set", "train.epochs=2", outputs=outputs, **access)
        assert gh_out.startswith("changed=true"), "other inputs (an override) are new"
    finally:
        github.close()


def test_bad_override_is_refused(tmp_path):
    result = run(
        [sys.executable, "-m", "pneumonia.retrain", "--set", "epochs"],
        tmp_path,
        tool_env(),
        check=False,
    )
    assert result.returncode == 2 and "KEY=VALUE" in result.stderr
