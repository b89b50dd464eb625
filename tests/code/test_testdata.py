"""The ci job's test data step: pulled with the key pair; skipped with its reason only for the
pull requests GitHub gives no secrets (forks, Dependabot); a missing pair elsewhere is an error."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pneumonia.testdata import DataError, main, plan
from tests.conftest import REPO

KEYS = {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"}


def pull_request(tmp_path, fork: bool, login: str = "someone") -> dict[str, str]:
    event = {"pull_request": {"head": {"repo": {"fork": fork}}, "user": {"login": login}}}
    (tmp_path / "event.json").write_text(json.dumps(event))
    return {"GITHUB_EVENT_NAME": "pull_request", "GITHUB_EVENT_PATH": str(tmp_path / "event.json")}


def test_with_the_key_pair_the_data_is_pulled_whoever_opened_the_pull_request(tmp_path):
    assert plan({**KEYS, **pull_request(tmp_path, fork=True)}) is None
    assert plan({**KEYS, "GITHUB_EVENT_NAME": "push"}) is None


def test_a_fork_or_dependabot_without_secrets_skips_with_the_reason(tmp_path):
    assert "from a fork gets none" in plan(pull_request(tmp_path, fork=True))
    dependabot = plan(pull_request(tmp_path, fork=False, login="dependabot[bot]"))
    assert "Dependabot pull request gets only Dependabot's secrets" in dependabot
    assert "tests that need the dataset are skipped" in dependabot


@pytest.mark.parametrize("event", ["push", "schedule", "pull_request"])
def test_a_missing_key_pair_elsewhere_is_a_configuration_error(tmp_path, event):
    env = pull_request(tmp_path, fork=False) if event == "pull_request" else {}
    env["GITHUB_EVENT_NAME"] = event
    with pytest.raises(DataError, match="set the read-only pair in the repository's secrets"):
        plan({**env, "AWS_ACCESS_KEY_ID": "id"})  # half a pair is no pair


def test_the_skip_is_announced_and_handed_to_the_next_steps(tmp_path, monkeypatch, capsys):
    for name, value in pull_request(tmp_path, fork=True).items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GITHUB_ENV", str(tmp_path / "env"))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary"))
    assert main([]) == 0
    assert capsys.readouterr().out.startswith("::warning title=Test data skipped::no test data")
    (line,) = (tmp_path / "env").read_text().splitlines()
    assert line.startswith("PNEUMONIA_DATA_UNAVAILABLE=no test data from the DVC remote: a pull")
    assert "### Test data" in (tmp_path / "summary").read_text()
    monkeypatch.setenv("GITHUB_EVENT_NAME", "push")
    assert main([]) == 2


def test_the_suite_then_skips_what_needs_the_dataset_and_says_why(tmp_path):
    """The variable the step sets reaches the tests: those that need the dataset skip with its
    reason instead of failing on a missing folder; without it the same tests fail."""
    env = {"PATH": "/usr/bin:/bin", "PNEUMONIA_SHARED_DATA": str(tmp_path / "none")}
    test = "tests/code/test_data.py::test_decodes_a_real_xray_to_grayscale"
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", test]
    skipped = subprocess.run(
        command,
        cwd=REPO,
        env={**env, "PNEUMONIA_DATA_UNAVAILABLE": "no test data: a fork"},
        capture_output=True,
        text=True,
    )
    assert skipped.returncode == 0 and "SKIPPED [1]" in skipped.stdout, skipped.stdout
    assert "no test data: a fork" in skipped.stdout
    failed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert failed.returncode == 1 and "the real dataset is not at" in failed.stdout
