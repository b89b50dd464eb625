"""The dataset goes to an S3 remote and comes back byte for byte (moto_server on loopback)."""

from __future__ import annotations

import hashlib
import shutil

import boto3
import pytest

from tests.conftest import REPO, TINY_PARAMS, copy_subset, make_repo, run, tool_env

pytestmark = pytest.mark.slow


def digests(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_push_wipe_pull_gives_the_same_bytes(tmp_path, s3_server):
    dataset = copy_subset(tmp_path / "chest_xray", {"train": 5, "val": 2, "test": 3})
    repo = make_repo(tmp_path / "repo", dataset, TINY_PARAMS)
    # The repo's own .dvc/config (default remote "storage" on S3), pointed at the local endpoint
    # the way the README says: bucket/prefix and endpoint in config.local, keys in the env.
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    env = tool_env(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket="e2e-bucket")
    run(["dvc", "remote", "modify", "--local", "storage", "url", "s3://e2e-bucket/xray"], repo, env)
    run(["dvc", "remote", "modify", "--local", "storage", "endpointurl", s3_server], repo, env)
    assert "testing" not in (repo / ".dvc" / "config").read_text()

    data = repo / "data" / "chest_xray"
    before = digests(data)
    run(["dvc", "push"], repo, env)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="e2e-bucket")["Contents"]]
    assert len(keys) >= len(before) and all(k.startswith("xray/") for k in keys)

    shutil.rmtree(data)
    shutil.rmtree(repo / ".dvc" / "cache")
    run(["dvc", "pull", "chest_xray.dvc"], repo, env)
    assert digests(data) == before
    assert "up to date" in run(["dvc", "status", "chest_xray.dvc"], repo, env).stdout


def test_missing_credentials_fail_with_the_remote_named(tmp_path, s3_server):
    dataset = copy_subset(tmp_path / "chest_xray", {"train": 2, "val": 1, "test": 1})
    repo = make_repo(tmp_path / "repo", dataset, TINY_PARAMS)
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    env = tool_env(AWS_SHARED_CREDENTIALS_FILE="/nonexistent", AWS_CONFIG_FILE="/nonexistent")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        env.pop(key, None)
    run(["dvc", "remote", "modify", "--local", "storage", "endpointurl", s3_server], repo, env)
    result = run(["dvc", "push"], repo, env, check=False)
    assert result.returncode != 0
    assert "credentials" in (result.stdout + result.stderr).lower()
