"""The GitHub Actions workflows: actionlint (with shellcheck) clean, and the project's rules."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import BIN, REPO

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))


def load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def test_there_are_the_four_workflows():
    assert {p.stem for p in WORKFLOWS} == {"ci", "retrain", "pr-review", "deploy"}


def test_actionlint_with_shellcheck_is_clean():
    if not shutil.which("shellcheck"):
        pytest.fail("shellcheck is needed for the run: scripts (`make system-deps`)")
    result = subprocess.run([str(BIN / "actionlint"), "-shellcheck", shutil.which("shellcheck")],
                            cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_least_privilege_and_timeouts(path):
    workflow = load(path)
    assert workflow["permissions"] == {"contents": "read"}, "read-only default for every job"
    for name, job in workflow["jobs"].items():
        assert "timeout-minutes" in job, f"{name} has no timeout"
        for scope, level in (job.get("permissions") or {}).items():
            assert level in ("read", "write", "none") and job["permissions"] != "write-all"
            if level == "write":
                assert (path.stem, name, scope) in {("pr-review", "report", "pull-requests")}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_untrusted_inputs_reach_scripts_only_through_env(path):
    for job in load(path)["jobs"].values():
        for step in job["steps"]:
            script = step.get("run", "")
            assert not re.search(r"\$\{\{\s*(github\.event|inputs)\.", script), step


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_every_project_command_the_workflows_call_exists(path):
    for module in set(re.findall(r"python -m (pneumonia\.\w+)", path.read_text())):
        assert callable(importlib.import_module(module).main), module


def test_retrain_runs_daily_and_on_demand_with_typed_inputs():
    workflow = load(REPO / ".github/workflows/retrain.yml")
    assert workflow["on"]["schedule"][0]["cron"]
    inputs = workflow["on"]["workflow_dispatch"]["inputs"]
    assert inputs["force"]["type"] == "boolean" and inputs["epochs"]["type"] == "string"
    assert inputs["reason"]["type"] == "string"


def test_deploys_never_overlap_and_the_gate_decides():
    workflow = load(REPO / ".github/workflows/deploy.yml")
    assert workflow["concurrency"]["cancel-in-progress"] is False
    text = (REPO / ".github/workflows/deploy.yml").read_text()
    assert "pneumonia.gate --base HEAD^1" in text and "pneumonia.heroku" in text
    assert "pneumonia.promote" in text and "if: always()" in text


def test_pr_review_posts_one_updated_comment_and_gates_separately():
    workflow = load(REPO / ".github/workflows/pr-review.yml")
    report = "\n".join(s.get("run", "") for s in workflow["jobs"]["report"]["steps"])
    assert "cml comment update" in report and "--watermark-title" in report
    assert "setup-cml" not in (REPO / ".github/workflows/pr-review.yml").read_text()
    gate = "\n".join(s.get("run", "") for s in workflow["jobs"]["gate"]["steps"])
    assert "python -m pneumonia.gate --base origin/main" in gate
