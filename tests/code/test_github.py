"""The GitHub calls of the workflows against a local HTTPS stand-in of GitHub's REST API."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pneumonia.github import (
    FAILED_LABEL,
    GitHub,
    GitHubError,
    label_verdict,
    open_retrain_pr,
    retrain_record,
)
from tests.fake_github import FakeGitHub


@pytest.fixture(scope="module")
def github(tmp_path_factory):
    fake = FakeGitHub(tmp_path_factory.mktemp("github"))
    yield fake
    fake.close()


@pytest.fixture
def client(github, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(github.ca))
    github.pulls.clear()
    github.comments.clear()
    return GitHub(f"{github.owner}/{github.repo}", github.token, github.api_url)


def test_a_new_retrain_pr_closes_the_older_ones_and_only_those(github, client):
    older = github.add_pull("retrain/20261125-7", "a" * 40)
    human = github.add_pull("fix-typo", "b" * 40)
    pr, closed = open_retrain_pr(client, "retrain/20261126-8", "Retrained model", "report", True)
    assert closed == [older] and pr["number"] == 3 and github.pull(3).body.startswith("report")
    assert github.pull(older).state == "closed" and github.pull(human).state == "open"
    (note,) = github.comments_on(older)
    assert "Superseded by #3" in note.body and pr["html_url"] in note.body
    assert github.pull(3).labels == [], "a passing model gets no failure label"


def test_a_retrain_pr_records_its_reason_inputs_and_verdict(github, client):
    pr, _ = open_retrain_pr(
        client,
        "retrain/20261126-10",
        "Retrained",
        "report",
        True,
        accuracy=0.95,
        inputs="0123456789abcdef",
        reason="new scanner at site B",
    )
    body = github.pull(pr["number"]).body
    assert body.startswith("Reason: new scanner at site B\n") and "report" in body
    assert retrain_record(body) == {"inputs": "0123456789abcdef", "passed": True, "accuracy": 0.95}
    assert retrain_record("a body without a record") == {}


def test_a_failing_model_never_closes_a_better_one(github, client):
    """Ranked by (passed the gate, served test accuracy): the newer run closes an older one
    only when it is at least as good, and says which it left open."""

    def older(run, passed, accuracy):
        pr, _ = open_retrain_pr(
            client, f"retrain/20261124-{run}", "old", "report", passed, accuracy=accuracy
        )
        return pr["number"]

    passing, failing_high, failing_low = older(1, True, 0.94), older(2, False, 0.95), None
    assert github.pull(passing).state == "open", "a failing run left the passing one open"
    assert [c.body.startswith("Left open: #1") for c in github.comments_on(failing_high)] == [True]
    failing_low = older(3, False, 0.90)
    assert github.pull(failing_high).state == "open", "0.90 does not close 0.95"
    pr, closed = open_retrain_pr(
        client, "retrain/20261126-4", "new", "report", False, accuracy=0.95
    )
    assert closed == [failing_high, failing_low], "a failing 0.95 closes failing ones no better"
    assert github.pull(passing).state == "open"
    pr, closed = open_retrain_pr(client, "retrain/20261126-5", "new", "report", True, accuracy=0.94)
    assert closed == [passing, pr["number"] - 1], "passing and as good: closes all"
    assert "at least as good" in github.comments_on(passing)[-1].body


def test_a_failing_retrain_pr_is_labelled(github, client):
    pr, _ = open_retrain_pr(client, "retrain/20261126-9", "Retrained model", "report", False)
    assert github.pull(pr["number"]).labels == [FAILED_LABEL]
    with pytest.raises(GitHubError, match="retrain/"):
        open_retrain_pr(client, "feature", "x", "y", True)


def test_the_verdict_label_follows_the_gate(github, client):
    number = github.add_pull("model-change", "c" * 40)
    label_verdict(client, number, False)
    label_verdict(client, number, False)  # twice: still one label
    assert github.pull(number).labels == [FAILED_LABEL]
    label_verdict(client, number, True)
    assert github.pull(number).labels == []
    label_verdict(client, number, True)  # not there any more: fine
    assert f"DELETE /api/v3/repos/local/pneumonia/issues/{number}/labels/gate%3A%20failed" in (
        github.log
    )


def test_refused_credentials_and_missing_token_say_what_to_fix(github, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(github.ca))
    wrong = GitHub("local/pneumonia", "not-the-token", github.api_url)
    with pytest.raises(GitHubError, match="answered 401"):
        wrong.open_pull_requests()
    with pytest.raises(GitHubError, match="GITHUB_TOKEN"):
        GitHub("local/pneumonia", "", github.api_url)


def test_the_command_labels_from_the_gate_json(github, tmp_path, monkeypatch):
    github.pulls.clear()
    number = github.add_pull("model-change", "d" * 40)
    verdict = tmp_path / "gate.json"
    verdict.write_text(json.dumps({"passed": False}))
    env = {
        "PATH": "/usr/bin:/bin",
        "REQUESTS_CA_BUNDLE": str(github.ca),
        "GITHUB_API_URL": github.api_url,
        "GITHUB_REPOSITORY": "local/pneumonia",
        "GITHUB_TOKEN": github.token,
    }
    command = [
        sys.executable,
        "-m",
        "pneumonia.github",
        "label-verdict",
        "--pr",
        str(number),
        "--verdict",
        str(verdict),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0 and github.pull(number).labels == [FAILED_LABEL], result.stderr
    verdict.write_text("not json")  # no verdict (the gate errored): labelled as failed
    github.pull(number).labels.clear()
    subprocess.run(command, env=env, check=True, capture_output=True)
    assert github.pull(number).labels == [FAILED_LABEL]
