"""A fork's first run: main's records name a champion whose bundle is in no remote the fork can
read. Real git, real DVC and a real S3 endpoint (moto_server): the fork's own bucket holds the
data and what its retrain pushed, never the upstream's model. The gate judges the retrained
model as the first champion of that remote and says why; the deploy plan, with no bundle to ship,
gives one instruction; once the champion's bundle is in the remote it is the champion again."""

from __future__ import annotations

import json
import shutil
import sys
import uuid

import boto3
import pytest
import yaml

from pneumonia import gate as gate_module
from pneumonia.gate import FIRST_IN_REMOTE, MetricsError, locked_bundle_md5
from tests.conftest import REPO, TINY_PARAMS, copy_subset, make_repo, run, tool_env

pytestmark = pytest.mark.slow

PARAMS = {
    **TINY_PARAMS,
    "prepare": {"image_size": 32},
    "gate": {
        **TINY_PARAMS["gate"],
        "min_sensitivity": 0.0,
    },  # a 1-epoch model: the rules that need no champion pass
}
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def commit(repo, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", message], repo)


def python(repo, env, *args: str):
    return run([sys.executable, "-m", *args], repo, env, check=False)


@pytest.fixture(scope="module")
def fork(tmp_path_factory, s3_server):
    """(repo, env): main holds a champion that was never pushed to this fork's bucket; the
    branch ``retrain`` holds a model trained and pushed there, as the retrain workflow does."""
    work = tmp_path_factory.mktemp("fork")
    dataset = copy_subset(work / "chest_xray", {"train": 16, "val": 3, "test": 5})
    repo = make_repo(work / "repo", dataset, PARAMS)
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    bucket = f"fork-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server, **_boto(CREDENTIALS)).create_bucket(Bucket=bucket)
    env = tool_env(**CREDENTIALS)
    run(["dvc", "remote", "modify", "--local", "storage", "url", f"s3://{bucket}/x"], repo, env)
    run(["dvc", "remote", "modify", "--local", "storage", "endpointurl", s3_server], repo, env)
    run(["dvc", "repro"], repo, env)
    commit(repo, "the upstream's champion (its bundle is in the upstream's remote only)")
    run(["git", "branch", "-M", "main"], repo, env)
    run(["dvc", "push", "chest_xray.dvc"], repo, env)  # the fork's copy of the data
    run(["git", "checkout", "-q", "-b", "retrain"], repo, env)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["seed"] = 7
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro"], repo, env)
    run(["dvc", "push"], repo, env)
    commit(repo, "retrain: the fork's own model")
    return repo, env


def _boto(credentials: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": credentials["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": credentials["AWS_SECRET_ACCESS_KEY"],
        "region_name": credentials["AWS_DEFAULT_REGION"],
    }


def test_the_first_retrain_of_a_fork_is_judged_as_the_first_champion_of_its_remote(fork):
    repo, env = fork
    result = python(repo, env, "pneumonia.gate", "--pull", "--base", "main", "--json", "g.json")
    assert result.returncode == 0, result.stdout + result.stderr
    verdict = json.loads((repo / "g.json").read_text())
    assert verdict["baseline"] == FIRST_IN_REMOTE and verdict["champion"] is None
    assert "is not in this repository's DVC remote" in verdict["reasons"][0]
    assert "a fork starts without the upstream's models" in verdict["reasons"][0]
    assert "becomes the first champion" in result.stdout
    # without --pull nothing is asked of the remote: main's records are the champion's
    local = python(repo, env, "pneumonia.gate", "--base", "main", "--json", "g.json")
    assert json.loads((repo / "g.json").read_text())["baseline"] != FIRST_IN_REMOTE, local.stdout


def test_a_remote_that_cannot_be_asked_is_an_error_never_an_absent_champion(fork, monkeypatch):
    repo, _ = fork
    md5 = locked_bundle_md5(gate_module.git_show("main", "dvc.lock", repo))
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    with pytest.raises(MetricsError, match="cannot ask the DVC remote whether it holds"):
        gate_module.remote_holds(repo, md5)


def test_a_deploy_with_no_bundle_in_the_remote_says_to_retrain_first(fork, tmp_path):
    """The deploy job on the fork's main: `dvc pull --allow-missing models/bundle` finds nothing,
    and an app change (or a first deploy) would ship a model that is not there."""
    from pneumonia.release import check_servable, plan_against_live

    repo, env = fork
    clone = tmp_path / "runner"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    shutil.copy(repo / ".dvc" / "config.local", clone / ".dvc" / "config.local")
    run(["git", "checkout", "-q", "-b", "app-fix", "origin/main"], clone, env)
    (clone / "django_app").mkdir(exist_ok=True)
    (clone / "django_app" / "Procfile").write_text("web: gunicorn xrayweb.wsgi\n")
    commit(clone, "app fix")
    run(["dvc", "pull", "--allow-missing", "models/bundle"], clone, env)
    assert not (clone / "models/bundle/model.onnx").exists(), "the fork's bucket has no champion"
    result = python(clone, env, "pneumonia.release", "--base", "origin/main")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "the app changed" in result.stderr and "nothing to deploy" in result.stderr
    assert "run the retrain workflow" in result.stderr and "first champion" in result.stderr
    with pytest.raises(MetricsError, match="A fork starts without the upstream's models"):
        check_servable(plan_against_live(None, clone), clone)


def test_once_the_remote_holds_main_s_bundle_it_is_the_champion_again(fork):
    repo, env = fork
    run(["git", "checkout", "-q", "main"], repo, env)
    run(["dvc", "checkout", "-f", "-q"], repo, env)
    run(["dvc", "push"], repo, env)  # where it was trained, `dvc push` puts it back
    run(["git", "checkout", "-q", "retrain"], repo, env)
    run(["dvc", "checkout", "-f", "-q"], repo, env)
    result = python(repo, env, "pneumonia.gate", "--pull", "--base", "main", "--json", "g.json")
    verdict = json.loads((repo / "g.json").read_text())
    assert verdict["baseline"] == "served metrics on main", result.stdout
    assert verdict["champion"] is not None and verdict["comparison"] is not None
