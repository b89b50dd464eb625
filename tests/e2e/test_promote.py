"""MLflow promotion of a deployed bundle, against a real `mlflow server` on loopback."""

from __future__ import annotations

import secrets
import sys

import pytest
import torch

from tests.bundles import calibrated_model, make_bundle
from tests.conftest import run, tool_env

pytestmark = pytest.mark.slow
METRICS = {"threshold": 0.5, "accuracy": 0.9, "sensitivity": 0.95, "specificity": 0.8}


def promote(bundle, env):
    return run(
        [sys.executable, "-m", "pneumonia.promote", "--bundle", str(bundle), "--app", "xray-test"],
        bundle.parent,
        env,
    )


def test_promotion_moves_the_production_alias(tmp_path, mlflow_server):
    from mlflow import MlflowClient

    name = f"pneumonia-promote-{secrets.token_hex(3)}"
    env = tool_env(MLFLOW_TRACKING_URI=mlflow_server, MLFLOW_REGISTERED_MODEL_NAME=name)
    model = calibrated_model(32)
    first = make_bundle(model, 32, tmp_path / "a" / "bundle", METRICS)
    with torch.no_grad():
        model.fc.bias += 1.0
    second = make_bundle(model, 32, tmp_path / "b" / "bundle", METRICS)
    client = MlflowClient(tracking_uri=mlflow_server)

    out = promote(first, env).stdout
    assert f"{name} v1 is now 'production' (registered now)" in out
    v1 = client.get_model_version_by_alias(name, "production")
    assert v1.version == "1" and v1.tags["heroku_app"] == "xray-test" and "deployed_at" in v1.tags

    again = promote(first, env).stdout  # idempotent: same version, nothing registered
    assert f"{name} v1 is now 'production'" in again and "registered now" not in again
    assert len(client.search_model_versions(f"name='{name}'")) == 1

    out = promote(second, env).stdout
    assert f"{name} v2 is now 'production' (registered now), replacing v1" in out
    assert client.get_model_version_by_alias(name, "production").version == "2"
    assert "replaced_at" in client.get_model_version(name, "1").tags


def test_same_onnx_with_another_calibration_is_another_version(tmp_path, mlflow_server):
    """The served identity (ONNX, calibration, threshold, ...) picks the version: a bundle that
    shares the ONNX file with a registered one but serves another threshold is not it."""
    import json
    import shutil

    name = f"pneumonia-identity-{secrets.token_hex(3)}"
    env = tool_env(MLFLOW_TRACKING_URI=mlflow_server, MLFLOW_REGISTERED_MODEL_NAME=name)
    first = make_bundle(calibrated_model(32), 32, tmp_path / "a" / "bundle", METRICS)
    other = tmp_path / "b" / "bundle"
    shutil.copytree(first, other)
    manifest = json.loads((other / "model.json").read_text())
    manifest["threshold"] = 0.7  # same model.onnx, another decision threshold
    (other / "model.json").write_text(json.dumps(manifest))
    promote(first, env)
    out = promote(other, env).stdout
    assert f"{name} v2 is now 'production' (registered now)" in out
    assert f"{name} v1 is now 'production'" in promote(first, env).stdout


def test_unreachable_tracking_server_is_a_clear_failure(tmp_path):
    from tests.conftest import free_port

    bundle = make_bundle(calibrated_model(32), 32, tmp_path / "bundle", METRICS)
    env = tool_env(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")
    result = run(
        [sys.executable, "-m", "pneumonia.promote", "--bundle", str(bundle)],
        tmp_path,
        env,
        check=False,
    )
    assert result.returncode == 1 and "is not reachable" in result.stderr
