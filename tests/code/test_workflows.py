"""The GitHub Actions workflows: actionlint (with shellcheck) clean, and the project's rules."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pneumonia import runner as pneumonia_runner
from tests.conftest import BIN, REPO

CLOUD_ENV = {"CML_REPO_TOKEN": "t", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
ACTION_FILES = [*WORKFLOWS, *sorted((REPO / ".github" / "actions").rglob("action.yml"))]


def load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def test_there_are_the_five_workflows():
    assert {p.stem for p in WORKFLOWS} == {"ci", "retrain", "pr-review", "deploy", "monitor"}


def test_actionlint_with_shellcheck_is_clean():
    if not shutil.which("shellcheck"):
        pytest.fail("shellcheck is needed for the run: scripts (`make system-deps`)")
    result = subprocess.run(
        [str(BIN / "actionlint"), "-shellcheck", shutil.which("shellcheck")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_finds_nothing_of_medium_or_high_severity():
    result = subprocess.run(
        [str(BIN / "zizmor"), "--offline", "--min-severity", "medium", ".github/"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_auditor_finds_no_secret_outside_an_environment_and_no_kept_credential():
    """The auditor persona's findings on secrets and credentials, and the pedantic one's
    unpinned images: none left, unless the line carries a justified ignore comment."""
    for persona, audits in (
        ("auditor", {"secrets-outside-env", "artipacked"}),
        ("pedantic", {"unpinned-images"}),
    ):
        result = subprocess.run(
            [
                str(BIN / "zizmor"),
                "--offline",
                f"--persona={persona}",
                "--format",
                "json",
                ".github/",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        found = [f for f in json.loads(result.stdout or "[]") if f["ident"] in audits]
        assert not found, [(f["ident"], f["locations"][0]["symbolic"]["key"]) for f in found]
    for path in WORKFLOWS:
        lines = path.read_text().splitlines()
        for before, line in zip(["", *lines], lines, strict=False):
            if "zizmor: ignore[" in line:
                after = line.split("]", 1)[1].strip()
                assert after or before.strip().startswith("#"), f"no reason given: {line}"


def test_the_push_token_reaches_the_push_steps_only():
    steps = load(REPO / ".github/workflows/retrain.yml")["jobs"]["retrain"]["steps"]
    using = [s.get("name", s.get("uses")) for s in steps if "RETRAIN_PR_TOKEN" in str(s)]
    assert using == [
        "Commit the new model's records to a retrain/ branch",
        "Open the pull request with the report; close older retrain pull requests",
    ]
    for workflow in WORKFLOWS:
        for job in load(workflow)["jobs"].values():
            assert "secrets." not in str(job.get("env", {})) or "environment" in job, workflow


@pytest.mark.parametrize("path", ACTION_FILES, ids=lambda p: p.parent.name + "/" + p.stem)
def test_every_action_is_pinned_to_a_commit_with_its_version(path):
    for line in path.read_text().splitlines():
        match = re.search(r"uses:\s*(\S+)(.*)", line)
        if not match or match[1].startswith("./"):
            continue
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", match[1]), line
        assert re.fullmatch(r"\s+#\s*v\d+(\.\d+)*", match[2]), f"no version comment: {line}"


def test_dependabot_updates_actions_and_pip():
    config = yaml.safe_load((REPO / ".github" / "dependabot.yml").read_text())
    assert {u["package-ecosystem"] for u in config["updates"]} >= {"github-actions", "pip"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_no_checkout_keeps_git_credentials(path):
    """The retrain job pushes with RETRAIN_PR_TOKEN given to that one command."""
    for name, job in load(path)["jobs"].items():
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout@"):
                keeps = (step.get("with") or {}).get("persist-credentials", True)
                assert keeps is False and "token" not in step["with"], (path.stem, name)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_least_privilege_and_timeouts(path):
    workflow = load(path)
    assert workflow["permissions"] == {"contents": "read"}, "read-only default for every job"
    for name, job in workflow["jobs"].items():
        assert "timeout-minutes" in job, f"{name} has no timeout"
        for scope, level in (job.get("permissions") or {}).items():
            assert level in ("read", "write", "none") and job["permissions"] != "write-all"
            if level == "write":
                assert (path.stem, name, scope) in {
                    ("pr-review", "gate", "pull-requests"),
                    ("monitor", "monitor", "issues"),
                }


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_untrusted_inputs_reach_scripts_only_through_env(path):
    for job in load(path)["jobs"].values():
        for step in job["steps"]:
            script = step.get("run", "")
            assert not re.search(r"\$\{\{\s*(github\.event|inputs)\.", script), step


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_every_project_command_the_workflows_call_exists(path):
    for module in set(re.findall(r"python3? -m (pneumonia\.\w+)", path.read_text())):
        assert callable(importlib.import_module(module).main), module


def test_retrain_runs_daily_and_on_demand_with_typed_inputs():
    workflow = load(REPO / ".github/workflows/retrain.yml")
    assert workflow["on"]["schedule"][0]["cron"]
    inputs = workflow["on"]["workflow_dispatch"]["inputs"]
    assert inputs["force"]["type"] == "boolean" and inputs["epochs"]["type"] == "string"
    assert inputs["reason"]["type"] == "string"
    assert inputs["runner"]["type"] == "choice" and inputs["runner"]["default"] == "cpu"
    assert inputs["runner"]["options"] == ["cpu", "self-hosted-gpu", "cloud-gpu"]


def test_retrain_trains_on_the_runner_the_runner_job_chose():
    jobs = load(REPO / ".github/workflows/retrain.yml")["jobs"]
    choose = jobs["runner"]["steps"][-1]
    assert "python3 -m pneumonia.runner --runner" in choose["run"]
    assert choose["env"]["RUNNER"] == "${{ inputs.runner || 'cpu' }}"  # schedule: the CPU
    assert jobs["retrain"]["needs"] == "runner"
    assert jobs["retrain"]["runs-on"] == "${{ fromJSON(needs.runner.outputs.labels) }}"
    setup = next(s for s in jobs["retrain"]["steps"] if s.get("uses") == "./.github/actions/setup")
    assert "with" not in setup  # one lock for every runner, CPU or GPU
    for option in load(REPO / ".github/workflows/retrain.yml")["on"]["workflow_dispatch"]["inputs"][
        "runner"
    ]["options"]:
        assert pneumonia_runner.choose(option, CLOUD_ENV).labels  # every option is handled


def test_the_setup_action_installs_the_lock_with_the_python_of_python_version():
    steps = load(REPO / ".github/actions/setup/action.yml")["runs"]["steps"]
    python = steps[0]["with"]
    assert python["python-version-file"] == ".python-version" and "python-version" not in python
    assert python["cache-dependency-path"] == "requirements-dev.txt"  # the lock, not the inputs
    install = next(s for s in steps if s.get("name", "").startswith("Install"))
    assert install["run"].strip() == "make install" and "env" not in install  # no extra index
    makefile = (REPO / "Makefile").read_text()
    assert "LOCK := requirements-dev.txt" in makefile
    assert "pip install -q --require-hashes --no-deps -r $(LOCK)" in makefile
    assert "PYTHON ?= python$(shell cat .python-version)" in makefile


def test_ci_audits_the_locks_for_known_vulnerabilities():
    steps = load(REPO / ".github/workflows/ci.yml")["jobs"]["test"]["steps"]
    runs = [s.get("run", "") for s in steps]
    assert runs.index("make lint") < runs.index("make audit") < runs.index("make test")
    assert "pip-audit --strict" in (REPO / "Makefile").read_text()  # a package not audited fails


def test_deploys_never_overlap_and_follow_what_is_served():
    workflow = load(REPO / ".github/workflows/deploy.yml")
    assert workflow["concurrency"]["cancel-in-progress"] is False
    text = (REPO / ".github/workflows/deploy.yml").read_text()
    assert "pneumonia.release --base live" in text and "pneumonia.heroku" in text
    assert "pneumonia.promote" in text and "if: always()" in text
    assert "HEAD^1" not in text, "compared with what is live, never with the previous commit"
    steps = workflow["jobs"]["deploy"]["steps"]
    names = [s.get("run", "") for s in steps]
    check = next(i for i, r in enumerate(names) if "pneumonia.promote --check" in r)
    build = next(i for i, r in enumerate(names) if "pneumonia.heroku" in r)
    assert check < build, "MLflow is checked before anything goes live"
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0, "the live commit must be in the history"
    assert '--commit "$GITHUB_SHA"' in text, "the slug names its commit for /health"
    assert "herokuapp.com" not in text, "the app's URL comes from the Platform API (web_url)"


def test_pr_review_posts_one_updated_comment_labels_and_gates():
    workflow = load(REPO / ".github/workflows/pr-review.yml")
    steps = workflow["jobs"]["gate"]["steps"]
    scripts = "\n".join(s.get("run", "") for s in steps)
    assert "cml comment update" in scripts and "--watermark-title" in scripts
    assert "pneumonia.github label-verdict" in scripts
    assert steps[-1]["run"].endswith("python -m pneumonia.gate --pull --base origin/main --root pr")
    assert not any("artifact" in s.get("uses", "") for s in steps), "nothing leaves the runner"
    assert "dvc repro" not in scripts, "reviewing a pull request never trains"


def test_pr_review_runs_mains_code_and_reads_the_pull_request_as_data():
    """On pull_request_target the workflow, the setup action, the gate and the report are
    main's; the pull request's commit is checked out only by pneumonia.evidence, into pr/, and
    every step that touches it reads it (--root pr, dvc in pr/ with main's DVC config)."""
    workflow = load(REPO / ".github/workflows/pr-review.yml")
    assert set(workflow["on"]) == {"pull_request_target"}
    steps = workflow["jobs"]["gate"]["steps"]
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout@"))
    assert "ref" not in checkout["with"] and "repository" not in checkout["with"], "main's"
    assert checkout["with"]["persist-credentials"] is False
    runs = [s.get("run", "") for s in steps]
    (evidence,) = [r for r in runs if "pneumonia.evidence" in r]
    assert '--sha "$PR_SHA"' in evidence and "--into pr" in evidence
    order = [i for i, r in enumerate(runs) if "pneumonia.evidence" in r or "--root pr" in r]
    assert order[0] == runs.index(evidence) and len(order) == 3, "laid out before it is read"
    for step in steps:
        script = step.get("run", "")
        if "dvc pull" in script:
            assert step.get("working-directory") == "pr", "the pull request's data version"
        for word in ("make ", "pip install", "pytest", "python -m pneumonia.train"):
            assert word not in script, f"nothing of the pull request's runs: {script!r}"
    text = (REPO / ".github/workflows/pr-review.yml").read_text()
    assert "head.sha }}" in text and "head.ref" not in text, "the commit, never a branch name"


def test_retrain_shows_dvc_pull_and_dvc_repro_and_closes_older_prs():
    steps = load(REPO / ".github/workflows/retrain.yml")["jobs"]["retrain"]["steps"]
    runs = [s.get("run", "") for s in steps]
    assert any("dvc pull" in r for r in runs) and any("dvc repro" in r for r in runs)
    assert any("pneumonia.github open-retrain-pr" in r for r in runs)
