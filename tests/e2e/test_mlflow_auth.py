"""The pipeline against an MLflow server run as hosted ones are (basic-auth app, PostgreSQL
backend store, artifacts served by the server): with the right credentials it logs, registers
and moves the aliases; with a wrong password it stops within seconds, naming the secret to fix,
and leaves nothing behind on the server."""

from __future__ import annotations

import json
import sys
import time

import pytest

from tests.conftest import (
    MLFLOW_PASSWORD,
    MLFLOW_USER,
    TINY_PARAMS,
    copy_subset,
    make_repo,
    run,
    tool_env,
)

pytestmark = pytest.mark.slow
PARAMS = {**TINY_PARAMS, "prepare": {"image_size": 32}}


def client_for(url, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", MLFLOW_USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", MLFLOW_PASSWORD)
    return MlflowClient(tracking_uri=url)


def test_right_credentials_log_register_and_move_the_aliases(
    tmp_path, mlflow_auth_server, monkeypatch
):
    dataset = copy_subset(tmp_path / "chest_xray", {"train": 12, "val": 3, "test": 4})
    repo = make_repo(tmp_path / "repo", dataset, PARAMS)
    env = tool_env(
        MLFLOW_TRACKING_URI=mlflow_auth_server,
        MLFLOW_TRACKING_USERNAME=MLFLOW_USER,
        MLFLOW_TRACKING_PASSWORD=MLFLOW_PASSWORD,
        MLFLOW_REGISTERED_MODEL_NAME="pneumonia-auth",
    )
    run(["dvc", "repro"], repo, env)
    out = run([sys.executable, "-m", "pneumonia.promote", "--bundle", "models/bundle"], repo, env)
    assert "pneumonia-auth v1 is now 'production'" in out.stdout
    client = client_for(mlflow_auth_server, monkeypatch)
    challenger = client.get_model_version_by_alias("pneumonia-auth", "challenger")
    production = client.get_model_version_by_alias("pneumonia-auth", "production")
    assert challenger.version == production.version == "1"
    run_id = json.loads((repo / "models/mlflow_run.json").read_text())["run_id"]
    assert client.get_run(run_id).info.user_id == MLFLOW_USER
    # artifacts go through the server (--serve-artifacts): the bundle is downloadable there
    assert "bundle/model.json" in {a.path for a in client.list_artifacts(run_id, "bundle")}


def test_a_wrong_password_stops_fast_naming_the_secret(tmp_path, mlflow_auth_server, monkeypatch):
    dataset = copy_subset(tmp_path / "chest_xray", {"train": 12, "val": 3, "test": 4})
    repo = make_repo(tmp_path / "repo", dataset, PARAMS)
    client = client_for(mlflow_auth_server, monkeypatch)
    runs_before = len(client.search_runs(client.search_experiments()[0].experiment_id))
    env = tool_env(
        MLFLOW_TRACKING_URI=mlflow_auth_server,
        MLFLOW_TRACKING_USERNAME=MLFLOW_USER,
        MLFLOW_TRACKING_PASSWORD="not-the-password",
        MLFLOW_REGISTERED_MODEL_NAME="pneumonia-refused",
    )
    run(["dvc", "repro", "prepare"], repo, env)
    started = time.monotonic()
    result = run(["dvc", "repro", "train"], repo, env, check=False)
    assert result.returncode != 0 and time.monotonic() - started < 60
    assert "refused the credentials (HTTP 401)" in result.stderr + result.stdout
    assert "MLFLOW_TRACKING_PASSWORD" in result.stderr + result.stdout
    assert not (repo / "models" / "mlflow_run.json").exists(), "no run recorded"
    experiments = client.search_experiments()
    assert len(client.search_runs(experiments[0].experiment_id)) == runs_before
    assert client.search_registered_models("name='pneumonia-refused'") == []
