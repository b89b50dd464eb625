"""A pull request's commit laid out as data for the base branch's gate (pneumonia.evidence)."""

from __future__ import annotations

import subprocess

import pytest

from pneumonia.evidence import EvidenceError, lay_out


def git(cwd, *args) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def project(tmp_path):
    """A bare origin with main and a pull request (refs/pull/7/head) that points DVC's remote
    elsewhere, and a full checkout of main."""
    origin, work = tmp_path / "origin.git", tmp_path / "author"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    git(tmp_path, "init", "-q", "-b", "main", str(work))
    git(work, "config", "user.email", "a@example.invalid")
    git(work, "config", "user.name", "a")
    (work / ".dvc").mkdir()
    (work / ".dvc" / "config").write_text(
        "[core]\n    remote = s3\n['remote \"s3\"']\n    url = s3://project\n"
    )
    (work / "metrics.json").write_text('{"accuracy": 0.9}\n')
    git(work, "add", "-A")
    git(work, "commit", "-qm", "main")
    git(work, "push", "-q", str(origin), "main")
    git(work, "switch", "-q", "-c", "pr")
    (work / ".dvc" / "config").write_text("['remote \"s3\"']\n    url = s3://attacker\n")
    (work / ".dvc" / "config.local").write_text("[core]\n    remote = s3\n")
    (work / "metrics.json").write_text('{"accuracy": 0.99}\n')
    git(work, "add", "-f", "-A")
    git(work, "commit", "-qm", "a better model, it says")
    git(work, "push", "-q", str(origin), "pr:refs/pull/7/head")
    checkout = tmp_path / "checkout"
    git(tmp_path, "clone", "-q", str(origin), str(checkout))
    return checkout, git(work, "rev-parse", "HEAD"), git(work, "rev-parse", "main")


def test_the_pull_request_is_laid_out_beside_main_with_mains_dvc_config(project, tmp_path):
    checkout, head, main = project
    into = lay_out(checkout, 7, head, "main", checkout / "pr")
    assert git(into, "rev-parse", "HEAD") == head
    assert git(into, "rev-parse", "origin/main") == main, "the gate's --base origin/main"
    assert (into / "metrics.json").read_text() == '{"accuracy": 0.99}\n', "its files, as data"
    config = (into / ".dvc" / "config").read_text()
    assert "s3://project" in config and "attacker" not in config
    assert (
        (into / ".dvc" / "config.local")
        .read_text()
        .strip()
        .endswith(str((checkout / ".dvc" / "cache").resolve()))
    ), "the base's cache, and not the pull request's config.local"
    assert git(checkout, "status", "--porcelain", "--untracked-files=no") == "", "main untouched"
    lay_out(checkout, 7, head, "main", checkout / "pr")  # again: replaces the folder


def test_a_stale_or_malformed_head_is_refused(project):
    checkout, head, main = project
    with pytest.raises(EvidenceError, match="newer push"):
        lay_out(checkout, 7, main, "main", checkout / "pr")
    with pytest.raises(EvidenceError, match="40-digit"):
        lay_out(checkout, 7, "HEAD", "main", checkout / "pr")
    with pytest.raises(EvidenceError, match="refs/pull/8/head"):
        lay_out(checkout, 8, head, "main", checkout / "pr")
