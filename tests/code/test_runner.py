"""Choosing the retrain job's runner: CPU, a self-hosted GPU runner, or a CML cloud GPU."""

from __future__ import annotations

import ast
import json
import os
import stat
import subprocess
import sys

import pytest

from pneumonia import runner
from pneumonia.runner import RunnerError, choose
from tests.conftest import REPO

CLOUD_SECRETS = {
    "CML_REPO_TOKEN": "ghp_runner",
    "AWS_ACCESS_KEY_ID": "AKIA-test",
    "AWS_SECRET_ACCESS_KEY": "secret-test",
    "GITHUB_RUN_ID": "4242",
    "GITHUB_RUN_ATTEMPT": "2",
}


def test_cpu_and_self_hosted_gpu_need_nothing_started():
    assert choose("cpu", {}) == runner.Choice(["ubuntu-24.04"])
    gpu = choose("self-hosted-gpu", {})
    assert "gpu" in gpu.labels and "self-hosted" in gpu.labels
    assert gpu.launch is None


def test_cloud_gpu_launches_one_single_job_runner_with_a_label_of_this_run():
    choice = choose("cloud-gpu", {**CLOUD_SECRETS, "CML_CLOUD_TYPE": "g4dn.xlarge"})
    assert choice.labels == ["self-hosted", "cml-gpu-4242-2"]
    assert choice.launch[:3] == ["cml", "runner", "launch"]
    assert "--labels=cml-gpu-4242-2" in choice.launch and "--single" in choice.launch
    assert "--cloud-type=g4dn.xlarge" in choice.launch  # a repository variable overrides
    assert "--cloud-region=us-west" in choice.launch and "--cloud-spot" not in choice.launch
    assert "--cloud-spot" in choose("cloud-gpu", {**CLOUD_SECRETS, "CML_CLOUD_SPOT": "true"}).launch
    assert not any("secret" in arg or "ghp_" in arg for arg in choice.launch)


@pytest.mark.parametrize(
    "missing", ["CML_REPO_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
)
def test_cloud_gpu_without_a_secret_names_it(missing):
    env = {k: v for k, v in CLOUD_SECRETS.items() if k != missing}
    with pytest.raises(RunnerError, match=f"secrets {missing} .*nothing was started"):
        choose("cloud-gpu", env)
    with pytest.raises(RunnerError, match="cpu, self-hosted-gpu or cloud-gpu"):
        choose("tpu", CLOUD_SECRETS)


def run_runner(tmp_path, runner_name: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    output = tmp_path / "github_output"
    output.write_text("")
    return subprocess.run(
        [sys.executable, "-m", "pneumonia.runner", "--runner", runner_name],
        env={**env, "GITHUB_OUTPUT": str(output), "PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
    )


def outputs(tmp_path) -> dict[str, str]:
    text = (tmp_path / "github_output").read_text()
    return dict(line.split("=", 1) for line in text.splitlines())


def test_the_command_writes_the_job_outputs(tmp_path):
    result = run_runner(tmp_path, "cpu", {"PATH": os.environ["PATH"]})
    assert result.returncode == 0, result.stderr
    assert outputs(tmp_path) == {"labels": '["ubuntu-24.04"]'}


def fake_cml(tmp_path, exit_code: int):
    """A `cml` that records its arguments and token (the real one would call AWS and GitHub)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "cml"
    script.write_text(
        f'#!/bin/sh\necho "$@" > {tmp_path}/cml-args\necho "$REPO_TOKEN" > {tmp_path}/cml-token\n'
        f"exit {exit_code}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def test_cloud_gpu_runs_cml_with_the_token_then_writes_the_label(tmp_path):
    result = run_runner(tmp_path, "cloud-gpu", {**CLOUD_SECRETS, "PATH": fake_cml(tmp_path, 0)})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cml-args").read_text().startswith("runner launch --cloud=aws")
    assert (tmp_path / "cml-token").read_text().strip() == "ghp_runner"
    assert json.loads(outputs(tmp_path)["labels"]) == ["self-hosted", "cml-gpu-4242-2"]


def test_a_failed_launch_fails_the_job_without_outputs(tmp_path):
    result = run_runner(tmp_path, "cloud-gpu", {**CLOUD_SECRETS, "PATH": fake_cml(tmp_path, 3)})
    assert result.returncode == 1 and "cml runner launch failed" in result.stderr
    assert outputs(tmp_path) == {}


def test_missing_secret_fails_before_cml_runs(tmp_path):
    env = {k: v for k, v in CLOUD_SECRETS.items() if k != "CML_REPO_TOKEN"}
    result = run_runner(tmp_path, "cloud-gpu", {**env, "PATH": fake_cml(tmp_path, 0)})
    assert result.returncode == 1 and "CML_REPO_TOKEN" in result.stderr
    assert not (tmp_path / "cml-args").exists()


def test_the_module_needs_only_the_standard_library():
    """The workflow runs it with the runner's own python3, before anything is installed."""
    tree = ast.parse((REPO / "src/pneumonia/runner.py").read_text())
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
