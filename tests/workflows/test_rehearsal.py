"""The four workflows' YAML, executed for real by act (host mode, offline), scenario by scenario,
against local counterparts: a bare git repository as origin, moto_server as the DVC S3 remote, a
real `mlflow server` run as hosted ones are (basic auth, PostgreSQL store, served artifacts: the
jobs must pass the credentials), a Heroku Platform API stand-in whose releases really run the
packaged app (its web_url), and a GitHub REST stand-in that the report comment (CML, built from
its source) and the pull request calls (pneumonia.github) talk to. Training uses tiny
parameters (16 + 3 + 5 images per class, 64 px, 1 epoch, random init).

The scenarios build on each other, in this order: a data drop with no model yet opens the first
retrain pull request (and closes an older one); its review posts one report comment, updated in
place by a second push; merging it deploys the first champion (smoke test through web_url,
MLflow production alias); a scheduled run with nothing new stays green without a pull request;
a calibration-only change fails the gate (same decisions: no gain) and is labelled; a new data
drop opens a pull request whose report says the data changed; merges of an
app-only change (deployed with the current model), of a docs-only change (nothing deployed) and
of a broken app (smoke test fails, rolled back to the running release); a cancelled model
deploy caught up by the next push; then two pull requests as a fork opens them, without the
repository's secrets: a docs change passes ci, saying what it skipped, and a model change is left
to a maintainer (the gate's status and comment say so).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    BIN,
    DATASET,
    MLFLOW_PASSWORD,
    MLFLOW_USER,
    REPO,
    TINY_PARAMS,
    copy_subset,
    free_port,
    tool_env,
)
from tests.fake_github import FakeGitHub
from tests.fake_heroku import AppHost, FakeHeroku
from tests.fake_osv import FakeOsv
from tests.postgres import database_url
from tests.workflows.kit import KitMissing, prepare

pytestmark = pytest.mark.slow

OWNER_REPO = "local/pneumonia"
BUCKET = "pneumonia-xray-dvc"  # .dvc/config's remote
APP = "pneumonia-rehearsal"
SECRET = "rehearsal-" + "x" * 24  # long: act masks secrets in its log
PARAMS = {
    **TINY_PARAMS,
    # The rehearsal's models are tiny and its test split 10 images: the sensitivity floor is
    # tested in tests/e2e/test_gate_rehearsal.py; here the release flow is what is checked.
    "gate": {**TINY_PARAMS["gate"], "min_sensitivity": 0.0},
}


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)}: {result.stderr}")
    return result.stdout.strip()


class Rehearsal:
    """The project as a team would have it: origin, a maintainer's clone, and the services."""

    def __init__(
        self,
        work: Path,
        kit: dict,
        s3: str,
        mlflow: str,
        github: FakeGitHub,
        heroku: FakeHeroku,
        smoke_token: str,
    ):
        self.work, self.kit, self.s3, self.mlflow = work, kit, s3, mlflow
        self.github, self.heroku, self.smoke_token = github, heroku, smoke_token
        self.origin = work / "origin.git"
        self.clone = work / "maintainer"
        self.runs = 0
        self.env = tool_env(
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ENDPOINT_URL_S3=s3,
            MLFLOW_TRACKING_URI=mlflow,
            MLFLOW_TRACKING_USERNAME=MLFLOW_USER,
            MLFLOW_TRACKING_PASSWORD=MLFLOW_PASSWORD,
        )

    def sh(self, *cmd: str, cwd: Path | None = None) -> str:
        result = subprocess.run(
            cmd, cwd=cwd or self.clone, env=self.env, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)}:\n{result.stdout[-3000:]}\n{result.stderr}")
        return result.stdout

    def create(self) -> None:
        """The repository's files (this work tree), tiny data and parameters, no model yet."""
        root = self.clone
        listed = git(REPO, "ls-files", "-co", "--exclude-standard", "-z").split("\0")
        skip = ("dvc.lock", "metrics/", "models/", "samples.dvc")
        for name in filter(None, listed):
            if name.startswith(skip) or not (REPO / name).is_file():
                continue
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
        copy_subset(root / "data" / "chest_xray", {"train": 16, "val": 3, "test": 5})
        params = yaml.safe_load((root / "params.yaml").read_text())
        for section, values in PARAMS.items():
            params[section].update(values)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        installed = "requirements-dev.txt pyproject.toml .python-version"  # the Makefile's stamp
        digest = hashlib.sha256(b"".join((root / n).read_bytes() for n in installed.split()))
        if not (REPO / ".venv" / f".installed-{digest.hexdigest()[:16]}").exists():
            # The jobs' `make install` would install into this venv: never from a test.
            pytest.fail("the venv does not match the development lock: run `make install` first")
        git(root, "init", "-q", "-b", "main")
        git(root, "config", "user.email", "maintainer@example.invalid")
        git(root, "config", "user.name", "maintainer")
        self.sh(str(BIN / "dvc"), "commit", "-f", "-q", "chest_xray.dvc")
        git(root, "add", "-A")
        git(root, "commit", "-qm", "Rehearsal project: tiny data, no model yet")
        # make install finds the venv installed; act copies the link (.gitignore has .venv/, a
        # folder pattern), and the maintainer's commits leave it out
        (root / ".venv").symlink_to(REPO / ".venv")
        with open(root / ".git" / "info" / "exclude", "a") as f:
            f.write("/.venv\n")
        import boto3

        boto3.client(
            "s3",
            endpoint_url=self.s3,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket=BUCKET)
        self.sh(str(BIN / "dvc"), "push", "-q", "chest_xray.dvc")
        git(self.work, "init", "-q", "--bare", "-b", "main", str(self.origin))
        git(root, "remote", "add", "origin", str(self.origin))
        git(root, "push", "-q", "-u", "origin", "main")

    def commit_and_push(self, message: str, branch: str = "main") -> str:
        git(self.clone, "add", "-A")
        git(self.clone, "commit", "-qm", message)
        git(self.clone, "push", "-q", "origin", f"HEAD:{branch}")
        return git(self.clone, "rev-parse", "HEAD")

    def merge(self, branch: str) -> str:
        """Merge a pull request's branch into main as GitHub's merge button does."""
        git(self.clone, "fetch", "-q", "origin")
        git(self.clone, "checkout", "-q", "main")
        git(self.clone, "reset", "-q", "--hard", "origin/main")
        git(self.clone, "merge", "-q", "--no-ff", "-m", f"Merge {branch}", f"origin/{branch}")
        git(self.clone, "push", "-q", "origin", "main")
        self.sh(str(BIN / "dvc"), "checkout", "-q", "--allow-missing")
        return git(self.clone, "rev-parse", "HEAD")

    def act(
        self,
        workflow: str,
        event: str,
        ref: str,
        payload: dict,
        env: dict[str, str] | None = None,
        secrets_kept_out: tuple[str, ...] = (),
        more_secrets: dict[str, str] | None = None,
        variables: dict[str, str] | None = None,
    ) -> tuple[int, str]:
        """Run one workflow under act in a fresh clone of origin at ``ref``; ``env`` is added
        to the job's environment, the secrets named in ``secrets_kept_out`` are not given (as
        GitHub gives none to a fork's pull request), ``more_secrets`` and ``variables`` are
        added to the repository's."""
        self.runs += 1
        run = self.work / "runs" / f"{self.runs:02d}-{workflow}"
        git(self.work, "clone", "-q", str(self.origin), str(run))
        git(run, "checkout", "-q", ref)
        (run / ".venv").symlink_to(REPO / ".venv")
        event_file = run.parent / f"{self.runs:02d}-event.json"
        repository = {
            "name": "pneumonia",
            "full_name": OWNER_REPO,
            "default_branch": "main",
            "owner": {"login": "local"},
        }
        event_file.write_text(json.dumps({**payload, "repository": repository}))
        command = [
            str(self.kit["act"]),
            event,
            "-W",
            f".github/workflows/{workflow}.yml",
            "-e",
            str(event_file),
            *self.kit["args"],
            "--cache-server-path",
            str(self.work / "act-cache-server"),
            "--cache-server-addr",
            "127.0.0.1",
            "--github-instance",
            self.github.host,
            "--env",
            f"GITHUB_REPOSITORY={OWNER_REPO}",
            "--env",
            f"GITHUB_RUN_ID={100 + self.runs}",
            "--env",
            f"AWS_ENDPOINT_URL_S3={self.s3}",
            "--env",
            "AWS_DEFAULT_REGION=us-east-1",
            "--env",
            f"HEROKU_API_URL={self.heroku.url}",
            "--env",
            f"REQUESTS_CA_BUNDLE={self.github.ca}",
            "--env",
            f"NODE_EXTRA_CA_CERTS={self.github.ca}",
            "--env",
            f"CML_COMMENT_PUBLISH_URL={self.github.url}/_asset",
            "--env",
            "ITERATIVE_DO_NOT_TRACK=1",
            "--env",
            "NODE_OPTIONS=--no-experimental-fetch",
            "--env",
            "PYTHONPATH=src",  # the code of this checkout, not the venv's editable one
            "--var",
            f"HEROKU_APP_NAME={APP}",
        ]
        given = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "MLFLOW_TRACKING_URI": self.mlflow,
            "MLFLOW_TRACKING_USERNAME": MLFLOW_USER,
            "MLFLOW_TRACKING_PASSWORD": MLFLOW_PASSWORD,
            "GITHUB_TOKEN": self.github.token,
            "RETRAIN_PR_TOKEN": self.github.token,
            "HEROKU_API_KEY": self.heroku.api_key,
            "HEROKU_SMOKE_TEST_TOKEN": self.smoke_token,
            "SLACK_WEBHOOK_URL": "",
        }
        for name, value in {**given, **(more_secrets or {})}.items():
            if name not in secrets_kept_out:
                command += ["-s", f"{name}={value}"]
        for name, value in (variables or {}).items():
            command += ["--var", f"{name}={value}"]
        for name, value in (env or {}).items():
            command += ["--env", f"{name}={value}"]
        # nothing of this process's own reaches the job (host mode): no AWS keys of the fixtures,
        # and no make state (`make test PYTEST_ARGS=...` exports it in MAKEFLAGS, which would
        # override the job's own PYTEST_ARGS in its `make test`)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("GITHUB_", "RUNNER_", "AWS_", "MLFLOW_"))
            and k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")
        }
        result = subprocess.run(
            command,
            cwd=run,
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=1200,
        )
        log = result.stdout + result.stderr
        (run.parent / f"{self.runs:02d}-{workflow}.log").write_text(log)
        return result.returncode, log


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def kit():
    try:
        return prepare()
    except KitMissing as exc:
        pytest.skip(f"the workflow rehearsal needs local copies of the actions: {exc}")


@pytest.fixture(scope="module")
def github(tmp_path_factory):
    work = tmp_path_factory.mktemp("github")
    fake = FakeGitHub(work, git_dir=None)
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def heroku(tmp_path_factory):
    """The Platform API stand-in, its releases running as a dyno on PostgreSQL; yields it with
    the API token of a smoke-test account (made as the README tells staff to)."""
    import psycopg

    from pneumonia.package import app_venv, copy_app

    work = tmp_path_factory.mktemp("heroku")
    database = f"rehearsal_{secrets.token_hex(4)}"
    admin = database_url()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    host = AppHost(
        work / "slugs",
        app_venv(REPO / "django_app", REPO / ".cache"),
        {
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
            "ALLOWED_HOSTS": "localhost,127.0.0.1",
            "DJANGO_SSL_REDIRECT": "0",
            "DATABASE_URL": database_url(database, scheme="postgres"),
            # consented images: one place for every release and for export_feedback
            "FEEDBACK_STORAGE": str(work / "feedback-images"),
        },
        free_port(),
    )
    code = work / "app"  # the app as on a dyno (with pneumonia/serving.py), no bundle needed
    copy_app(REPO / "django_app", code)
    host.manage(code, "migrate", "--noinput")
    made = host.manage(
        code,
        "add_clinician",
        "smoke-test",
        "--password-stdin",
        "--api-token",
        "deploy",
        stdin="Rehearsal-Smoke-2026\n",
    )
    token = made.split("store it now): ")[1].strip()
    fake = FakeHeroku(APP, api_key=SECRET, host=host)
    fake.code = code  # where staff's manage.py commands run, against the live database
    # A hospital system's account (real traffic) and the drift check's staff account
    fake.tokens = {}
    for name, extra in (("ward-system", []), ("monitor", ["--staff"])):
        made = host.manage(
            code,
            "add_clinician",
            name,
            "--password-stdin",
            *extra,
            "--api-token",
            "rehearsal",
            stdin="Rehearsal-Account-2026\n",
        )
        fake.tokens[name] = made.split("store it now): ")[1].strip()
    try:
        yield fake, token
    finally:
        fake.close()
        host.stop()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture(scope="module")
def rehearsal(
    kit, github, heroku, s3_server, mlflow_auth_server, tmp_path_factory, monkeypatch_module
):
    fake_heroku, token = heroku
    work = tmp_path_factory.mktemp("rehearsal")
    # This process reads the server too (MlflowClient in the assertions): as the pipeline user.
    monkeypatch_module.setenv("MLFLOW_TRACKING_USERNAME", MLFLOW_USER)
    monkeypatch_module.setenv("MLFLOW_TRACKING_PASSWORD", MLFLOW_PASSWORD)
    project = Rehearsal(work, kit, s3_server, mlflow_auth_server, github, fake_heroku, token)
    project.create()
    github.git_dir = project.origin
    return project


def remote_has(rehearsal: Rehearsal, md5: str) -> bool:
    """Whether the DVC remote (moto) holds the object with this md5 (a .dir listing too)."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=rehearsal.s3,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    key = f"chest-xray/files/md5/{md5[:2]}/{md5[2:]}"
    return s3.list_objects_v2(Bucket=BUCKET, Prefix=key)["KeyCount"] > 0


def bundle_md5(lock_text: str) -> str:
    lock = yaml.safe_load(lock_text)
    return next(o["md5"] for o in lock["stages"]["export"]["outs"] if o["path"] == "models/bundle")


def health(url: str) -> dict:
    with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=10) as response:
        return json.loads(response.read())


def pull_request_event(rehearsal, number: int, head: str, sha: str, fork: bool = False) -> dict:
    """A pull request's event: from a branch of the repository, or opened from someone's fork."""
    main = git(rehearsal.work, "--git-dir", str(rehearsal.origin), "rev-parse", "main")
    pull = {
        "number": number,
        "head": {"ref": head, "sha": sha},
        "base": {"ref": "main", "sha": main},
    }
    if fork:
        pull["head"]["repo"] = {"fork": True, "full_name": "someone/pneumonia"}
        pull["user"] = {"login": "someone"}
    return {"number": number, "pull_request": pull}


def review(rehearsal, number: int, head: str, sha: str, fork: bool = False) -> tuple[int, str]:
    """pr-review as GitHub runs it on pull_request_target: main's workflow and code at main's
    commit, the pull request's commit only as refs/pull/N/head on origin."""
    git(
        rehearsal.work,
        "--git-dir",
        str(rehearsal.origin),
        "update-ref",
        f"refs/pull/{number}/head",
        sha,
    )
    main = git(rehearsal.work, "--git-dir", str(rehearsal.origin), "rev-parse", "main")
    payload = pull_request_event(rehearsal, number, head, sha, fork)
    return rehearsal.act("pr-review", "pull_request_target", main, payload)


def branches(rehearsal) -> str:
    """The retrain/ branches on the rehearsal's origin."""
    return git(rehearsal.work, "--git-dir", str(rehearsal.origin), "branch", "--list", "retrain/*")


def retrain_pull(github: FakeGitHub):
    return [p for p in github.pulls if p.head.startswith("retrain/") and p.state == "open"]


STATE: dict = {}  # what one scenario leaves for the next (they run in file order)


def test_data_drop_without_a_model_opens_the_first_retrain_pr(rehearsal, github):
    # An older retrain pull request is still open: the new one supersedes it.
    git(rehearsal.clone, "push", "-q", "origin", "main:retrain/20261120-1")
    older = github.add_pull("retrain/20261120-1", git(rehearsal.clone, "rev-parse", "HEAD"))
    code, log = rehearsal.act("retrain", "schedule", "main", {"schedule": "17 3 * * *"})
    assert code == 0, log[-6000:]
    assert "Retraining (out of date: " in log and "dvc repro" in log
    (pr,) = retrain_pull(github)
    assert pr.number != older and github.pull(older).state == "closed"
    assert f"Superseded by #{pr.number}" in github.comments_on(older)[0].body
    assert "## Model report" in pr.body and "first champion" in pr.body
    assert pr.labels == [], "the first champion passes the gate"
    branch_lock = git(
        rehearsal.work, "--git-dir", str(rehearsal.origin), "show", f"{pr.head}:dvc.lock"
    )
    assert remote_has(rehearsal, bundle_md5(branch_lock)), "the new bundle is in the DVC remote"
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=rehearsal.mlflow)
    version = client.get_model_version_by_alias("pneumonia-resnet18", "challenger")
    assert client.get_run(version.run_id).data.tags["trigger"] == "schedule"
    STATE["pr"] = pr


def test_pr_review_posts_one_report_comment_updated_in_place(rehearsal, github):
    pr = STATE["pr"]
    code, log = review(rehearsal, pr.number, pr.head, pr.head_sha)
    assert code == 0, log[-6000:]
    (comment,) = github.comments_on(pr.number)
    assert "## Model report" in comment.body and "CML watermark" in comment.body
    assert "first champion" in comment.body
    # main's gate checked the bundle's behaviour (the tiny rehearsal's limits cannot fail it)
    assert "### Behaviour of the served bundle" in comment.body
    assert "| invariance: as a DICOM file |" in comment.body
    assert "inputs that are not chest X-rays" in log
    # A second push to the pull request (a note in the README): the same comment is updated.
    git(rehearsal.clone, "fetch", "-q", "origin")
    git(rehearsal.clone, "checkout", "-q", "-B", pr.head, f"origin/{pr.head}")
    with open(rehearsal.clone / "README.md", "a") as f:
        f.write("\nRetrained by the rehearsal.\n")
    sha = rehearsal.commit_and_push("README: note", branch=pr.head)
    pr.head_sha = sha
    code, log = review(rehearsal, pr.number, pr.head, sha)
    assert code == 0, log[-6000:]
    assert len(github.comments_on(pr.number)) == 1
    posts = [e for e in github.log if e.startswith(f"POST /api/v3/repos/{OWNER_REPO}/issues/")]
    patches = [
        e for e in github.log if e.startswith("PATCH /api/v3/repos/local/pneumonia/issues/c")
    ]
    assert len(posts) == 2 and len(patches) == 1  # the superseded note, the report; one update


def test_merging_the_first_model_deploys_it(rehearsal, github, heroku):
    fake, _ = heroku
    pr = STATE["pr"]
    merged = rehearsal.merge(pr.head)
    github.pull(pr.number).state = "closed"
    code, log = rehearsal.act("deploy", "push", merged, {"ref": "refs/heads/main", "after": merged})
    assert code == 0, log[-6000:]
    assert "nothing built from a commit is live on Heroku yet" in log, "the first release"
    served = json.loads((rehearsal.clone / "metrics/served.json").read_text())
    assert health(fake.web_url)["sha256"] == served["model"]["onnx_sha256"], "live app, web_url"
    assert health(fake.web_url)["commit"] == merged, "the release names its commit"
    assert fake.rollbacks == [] and fake.releases[-1]["current"]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=rehearsal.mlflow)
    production = client.get_model_version_by_alias("pneumonia-resnet18", "production")
    assert production.tags["onnx_sha256"] == served["model"]["onnx_sha256"]
    STATE["releases"] = len(fake.releases)
    STATE["production"] = production.version


def test_scheduled_run_with_nothing_new_opens_no_pr(rehearsal, github):
    before = len(github.pulls)
    code, log = rehearsal.act("retrain", "schedule", "main", {"schedule": "17 3 * * *"})
    assert code == 0, log[-6000:]
    assert "Nothing changed (data " in log and len(github.pulls) == before
    assert "retrain/" not in git(
        rehearsal.work,
        "--git-dir",
        str(rehearsal.origin),
        "branch",
        "--list",
        "retrain/*",
        "--contains",
        "main",
    )


def test_a_schedule_does_not_retry_inputs_whose_model_failed(rehearsal, github):
    """Main's inputs changed (a learning rate) and a retrain pull request from exactly these
    inputs failed the gate: the daily run names it and trains nothing."""
    from pneumonia.github import FAILED_LABEL
    from pneumonia.retrain import inputs_fingerprint

    params = rehearsal.clone / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("lr: 0.001", "lr: 0.0015", 1))
    rehearsal.commit_and_push("params: a learning rate to try")
    try:
        tried = github.add_pull("retrain/20261130-3", "c" * 40)
        record = json.dumps(
            {"inputs": inputs_fingerprint([], rehearsal.clone), "passed": False, "accuracy": 0.5}
        )
        github.pull(tried).body = f"report\n<!-- retrain-record: {record} -->"
        github.pull(tried).labels.append(FAILED_LABEL)
        github.pull(tried).state = "closed"
        before, pushed = len(github.pulls), branches(rehearsal)
        code, log = rehearsal.act("retrain", "schedule", "main", {"schedule": "17 3 * * *"})
        assert code == 0, log[-6000:]
        assert "Already tried" in log and f"#{tried}" in log and "force" in log, log[-6000:]
        assert len(github.pulls) == before, "no pull request opened"
        assert branches(rehearsal) == pushed, "no retrain branch pushed"
    finally:
        params.write_text(original)
        rehearsal.commit_and_push("params: back to the default learning rate")


def test_a_model_change_without_a_gain_fails_the_gate_and_is_labelled(rehearsal, github):
    git(rehearsal.clone, "checkout", "-q", "-B", "calibration", "main")
    params = yaml.safe_load((rehearsal.clone / "params.yaml").read_text())
    params["evaluate"]["calibration"] = "temperature"  # monotone: the same decisions
    (rehearsal.clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rehearsal.sh(str(BIN / "dvc"), "pull", "-q", "--allow-missing")
    rehearsal.sh(str(BIN / "dvc"), "repro")
    rehearsal.sh(str(BIN / "dvc"), "push", "-q")
    sha = rehearsal.commit_and_push("Temperature scaling instead of Platt", branch="calibration")
    number = github.add_pull("calibration", sha)
    code, log = review(rehearsal, number, "calibration", sha)
    assert code != 0, "the gate is the job's status"
    assert "gate: FAIL" in log and "(+0.0000; must be > +0.0000)" in log
    assert github.pull(number).labels == ["gate: failed"]
    (comment,) = github.comments_on(number)
    assert "**Gate: :x: FAIL**" in comment.body and "| exact McNemar p-value | 1 |" in comment.body
    git(rehearsal.clone, "checkout", "-q", "main")
    rehearsal.sh(str(BIN / "dvc"), "checkout", "-q", "--allow-missing")
    STATE["calibration"] = sha


def test_a_pull_request_cannot_pass_by_editing_its_records_or_the_gate(rehearsal, github):
    """The model of the failed pull request above, with every test answer rewritten to be right,
    served.json claiming accuracy 1.0, and a gate.py that always passes: main's gate judges the
    bundle and names the mismatch."""
    git(rehearsal.clone, "checkout", "-q", "-B", "tampered", STATE["calibration"])
    csv = rehearsal.clone / "metrics" / "served_test.csv"
    rows = csv.read_text().splitlines()
    right = [rows[0]]
    for row in rows[1:]:
        name, _, _ = row.split(",")
        label = name.split("/")[1]
        right.append(f"{name},{label},{0.99 if label == 'PNEUMONIA' else 0.01}")
    csv.write_text("\n".join(right) + "\n")
    served = rehearsal.clone / "metrics" / "served.json"
    record = json.loads(served.read_text())
    record["test"].update(accuracy=1.0, sensitivity=1.0, specificity=1.0)
    served.write_text(json.dumps(record, indent=2) + "\n")
    gate = rehearsal.clone / "src" / "pneumonia" / "gate.py"
    gate.write_text(
        gate.read_text()
        + "\n\ndef run_gate(base, root=None, pull=False):  # always pass\n"
        + "    return Verdict(True, UNCHANGED, ['trust me'])\n"
    )
    sha = rehearsal.commit_and_push("A perfect model, it says; and a friendlier gate", "tampered")
    number = github.add_pull("tampered", sha)
    code, log = review(rehearsal, number, "tampered", sha)
    git(rehearsal.clone, "checkout", "-q", "main")
    assert code != 0, "main's gate fails it: the job is red"
    assert "the records do not match the bundle" in log and "served_test.csv" in log, log[-6000:]
    assert "trust me" not in log, "the pull request's gate.py never ran"
    assert github.pull(number).labels == ["gate: failed"]
    (comment,) = github.comments_on(number)
    assert "**Gate: :x: FAIL**" in comment.body and "do not match the bundle" in comment.body


def test_a_new_data_drop_opens_a_pr_whose_report_says_so(rehearsal, github):
    new = rehearsal.work / "new-images"
    for label in ("NORMAL", "PNEUMONIA"):
        (new / label).mkdir(parents=True)
        for path in sorted((DATASET / "train" / label).iterdir())[40:43]:
            shutil.copy(path, new / label / path.name)
    git(rehearsal.clone, "checkout", "-q", "main")
    added = rehearsal.sh(str(BIN / "python"), "-m", "pneumonia.ingest", str(new))
    assert "train  NORMAL +3  PNEUMONIA +3" in added and "  test   NORMAL" not in added
    rehearsal.sh(str(BIN / "dvc"), "push", "-q", "chest_xray.dvc")
    rehearsal.commit_and_push("Data: 6 new training images")
    code, log = rehearsal.act("retrain", "schedule", "main", {"schedule": "17 3 * * *"})
    assert code == 0, log[-6000:]
    assert "Retraining (out of date: " in log and "prepare" in log
    (pr,) = retrain_pull(github)
    assert (
        pr.number != STATE["pr"].number and "Data changed: the base model was trained on" in pr.body
    )
    failed = "**Gate: :x: FAIL**" in pr.body  # a 1-epoch model: either verdict is possible
    assert pr.labels == (["gate: failed"] if failed else [])


def test_merging_an_app_change_deploys_the_app_with_the_current_model(rehearsal, heroku):
    fake, _ = heroku
    template = rehearsal.clone / "django_app/diagnosis/templates/diagnosis/base.html"
    template.write_text(template.read_text().replace("</footer>", "<!-- rehearsal --></footer>"))
    merged = rehearsal.commit_and_push("Web: a template fix")
    code, log = rehearsal.act("deploy", "push", merged, {"ref": "refs/heads/main", "after": merged})
    assert code == 0, log[-6000:]
    assert "the app changed (django_app/diagnosis/templates/diagnosis/base.html)" in log
    assert len(fake.releases) == STATE["releases"] + 1 and fake.rollbacks == []
    served = json.loads((rehearsal.clone / "metrics/served.json").read_text())
    assert health(fake.web_url)["sha256"] == served["model"]["onnx_sha256"]
    STATE["releases"] = len(fake.releases)
    from mlflow import MlflowClient

    # The unmerged calibration branch registered a version with the same ONNX file: production
    # stays on the version that serves main's bundle (its calibration and threshold).
    client = MlflowClient(tracking_uri=rehearsal.mlflow)
    production = client.get_model_version_by_alias("pneumonia-resnet18", "production")
    assert production.version == STATE["production"]


def test_merging_a_docs_change_deploys_nothing(rehearsal, heroku):
    fake, _ = heroku
    with open(rehearsal.clone / "README.md", "a") as f:
        f.write("\nA docs-only change.\n")
    merged = rehearsal.commit_and_push("README: a docs-only change")
    code, log = rehearsal.act("deploy", "push", merged, {"ref": "refs/heads/main", "after": merged})
    assert code == 0, log[-6000:]
    assert "neither the served model nor the app changed" in log and "nothing to deploy" in log
    assert len(fake.releases) == STATE["releases"]


def test_a_failed_smoke_test_rolls_back_to_the_running_release(rehearsal, heroku):
    fake, _ = heroku
    running = fake.releases[-1]["version"]
    procfile = rehearsal.clone / "django_app" / "Procfile"
    good = procfile.read_text()
    procfile.write_text(good.replace("gunicorn", "gunicorn --no-such-option", 1))
    merged = rehearsal.commit_and_push("Web: a broken Procfile")
    started = time.monotonic()
    code, log = rehearsal.act("deploy", "push", merged, {"ref": "refs/heads/main", "after": merged})
    assert code != 0 and "rolled back to release v" in log, log[-6000:]
    assert fake.releases[-1]["description"] == f"Rollback to v{running}"
    assert health(fake.web_url)["status"] == "ok", "the rolled-back release serves again"
    assert time.monotonic() - started < 900
    procfile.write_text(good)
    rehearsal.commit_and_push("Web: revert the broken Procfile")


def test_a_cancelled_model_deploy_is_caught_up_by_the_next_push(rehearsal, heroku):
    """A model merge whose deploy never ran (GitHub cancels a pending run when a newer one
    queues), then a docs merge: the docs push deploys the model, because the plan compares
    main with the release Heroku runs; the smoke test waits for that commit on /health.
    Re-running the model merge's deploy afterwards deploys nothing over the newer release."""
    from pneumonia.served import identity

    fake, _ = heroku
    manifest_path = rehearsal.clone / "models" / "bundle" / "model.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["guard"]["threshold"] = manifest["guard"]["threshold"] * 1.5
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    served = json.loads((rehearsal.clone / "metrics" / "served.json").read_text())
    served["model"] = identity(manifest)
    (rehearsal.clone / "metrics" / "served.json").write_text(json.dumps(served, indent=2) + "\n")
    rehearsal.sh(str(BIN / "dvc"), "commit", "-f", "-q", "export")
    rehearsal.sh(str(BIN / "dvc"), "push", "-q")
    model = rehearsal.commit_and_push("Guard refitted (its deploy is cancelled)")
    with open(rehearsal.clone / "README.md", "a") as f:
        f.write("\nA docs change after the model.\n")
    docs = rehearsal.commit_and_push("README: docs after the model")
    releases = len(fake.releases)
    code, log = rehearsal.act("deploy", "push", docs, {"ref": "refs/heads/main", "after": docs})
    assert code == 0, log[-6000:]
    assert "against the live release" in log and "the served model changed" in log, log[-6000:]
    assert len(fake.releases) == releases + 1 and health(fake.web_url)["commit"] == docs
    code, log = rehearsal.act("deploy", "push", model, {"ref": "refs/heads/main", "after": model})
    assert code == 0, log[-6000:]
    assert "never deployed over" in log and len(fake.releases) == releases + 1


def test_a_fork_pull_request_without_secrets_passes_ci_saying_what_it_skipped(rehearsal, github):
    """ci on a fork's docs change, with none of the repository's secrets: the data step says
    why it pulls nothing, the tests that need the dataset skip with that reason, the job is
    green; and main's pr-review passes it without touching the model."""
    git(rehearsal.clone, "checkout", "-q", "-B", "fork-docs", "main")
    with open(rehearsal.clone / "README.md", "a") as f:
        f.write("\nA typo fixed by a contributor.\n")
    sha = rehearsal.commit_and_push("README: a contributor's typo fix", branch="fork-docs")
    git(rehearsal.clone, "checkout", "-q", "main")
    number = github.add_pull("fork-docs", sha)
    selection = "-rs tests/code/test_testdata.py tests/code/test_data.py"
    osv = FakeOsv()  # `make audit` asks OSV about every locked package; this one knows none
    try:
        code, log = rehearsal.act(
            "ci",
            "pull_request",
            sha,
            pull_request_event(rehearsal, number, "fork-docs", sha, fork=True),
            # the suite's data-dependent part, not all of it
            env={"PYTEST_ARGS": selection, "OSV_URL": osv.url},
            secrets_kept_out=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
        )
    finally:
        osv.close()
    assert code == 0, log[-6000:]
    assert "No known vulnerabilities found" in log and len(osv.queries) > 200
    why = "a pull request from a fork gets none of the repository's secrets"
    assert "::warning title=Test data skipped::no test data from the DVC remote" in log
    assert why in log, log[-6000:]
    assert "SKIPPED" in log and f"{why}. The tests that need the dataset are skipped" in log
    assert " passed" in log and " failed" not in log, "the rest of the selection ran"
    code, log = review(rehearsal, number, "fork-docs", sha, fork=True)
    assert code == 0, log[-6000:]
    assert "gate: PASS" in log and github.pull(number).labels == []


def test_a_fork_pull_request_that_changes_the_model_is_left_to_a_maintainer(rehearsal, github):
    """A fork cannot push its bundle to the project's DVC remote: main's gate says a
    maintainer must retrain or push it, in the report comment and as a red check."""
    from pneumonia.served import identity

    git(rehearsal.clone, "checkout", "-q", "-B", "fork-model", "main")
    manifest_path = rehearsal.clone / "models" / "bundle" / "model.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["guard"]["threshold"] = manifest["guard"]["threshold"] * 0.5
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    served_path = rehearsal.clone / "metrics" / "served.json"
    served = json.loads(served_path.read_text())
    served["model"] = identity(manifest)
    served_path.write_text(json.dumps(served, indent=2) + "\n")
    rehearsal.sh(str(BIN / "dvc"), "commit", "-f", "-q", "export")  # no push: a fork can't
    sha = rehearsal.commit_and_push("A stricter guard, from a fork", branch="fork-model")
    git(rehearsal.clone, "checkout", "-q", "main")
    rehearsal.sh(str(BIN / "dvc"), "checkout", "-q", "--allow-missing")
    number = github.add_pull("fork-model", sha)
    code, log = review(rehearsal, number, "fork-model", sha, fork=True)
    assert code != 0, "a model nobody can check does not pass"
    assert "a maintainer must retrain or push its model" in log, log[-6000:]
    assert "failed ():" not in log, "dvc said nothing: its exit status says why"
    (comment,) = github.comments_on(number)
    assert "**Gate: :x: ERROR**" in comment.body
    assert "a maintainer must retrain or push its model" in comment.body
    assert github.pull(number).labels == ["gate: failed"]


def post_upload(fake: FakeHeroku, image: bytes) -> dict | None:
    """One upload to the live release from the hospital system's account: its prediction, or
    None where the guard refused it (422, recorded as a refusal)."""
    from diagnosis.tests.running import multipart_image

    body, content_type = multipart_image(image)
    request = urllib.request.Request(
        f"{fake.web_url}api/v1/predictions",
        data=body,
        headers={
            "Authorization": f"Bearer {fake.tokens['ward-system']}",
            "Content-Type": content_type,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        assert exc.code == 422, exc.read()[:300]
        return None


def drift_check(rehearsal: Rehearsal, fake: FakeHeroku) -> tuple[int, str]:
    """The scheduled monitor workflow against the live release, with the staff token."""
    return rehearsal.act(
        "monitor",
        "schedule",
        "main",
        {"schedule": "41 */3 * * *"},
        more_secrets={"XRAY_MONITOR_TOKEN": fake.tokens["monitor"]},
        variables={"XRAY_APP_URL": fake.web_url},
    )


def test_the_drift_check_keeps_one_issue_on_the_live_app(rehearsal, github, heroku):
    """The scheduled monitor workflow against the live release: inverted X-rays sent by a
    hospital system raise the alert, and the "Model drift" issue is opened once and updated,
    never duplicated."""
    from PIL import Image, ImageOps

    from tests.conftest import SAMPLES

    fake, _ = heroku
    for path in sorted(SAMPLES.rglob("*.jpeg"))[:40]:  # refused or answered: both count
        buffer = io.BytesIO()
        ImageOps.invert(Image.open(path).convert("L")).save(buffer, "PNG")
        post_upload(fake, buffer.getvalue())

    code, log = drift_check(rehearsal, fake)
    assert code == 0, log[-6000:]
    assert "monitor: alert: opened issue" in log, log[-3000:]
    (issue,) = [i for i in github.issues if i.title == "Model drift"]
    assert issue.state == "open" and "**State: alert**" in issue.body
    assert f"({fake.web_url}monitoring)" in issue.body and "| refusal_rate |" in issue.body
    code, log = drift_check(rehearsal, fake)
    assert code == 0 and f"monitor: alert: updated issue #{issue.number}" in log, log[-3000:]
    assert [i.title for i in github.issues] == ["Model drift"], "updated, not duplicated"


def test_consented_feedback_reaches_the_next_model_through_the_drift_issue(
    rehearsal, github, heroku
):
    """Clinicians confirm or correct 50 answers and consent: the drift issue says a retrain is
    possible, and the path it names works: export_feedback, ingest, dvc push, then the retrain
    workflow dispatched by hand opens a pull request on the new data."""
    fake, _ = heroku
    headers = {"Authorization": f"Bearer {fake.tokens['ward-system']}"}
    consented = {"NORMAL": 0, "PNEUMONIA": 0}
    for label in consented:
        for path in sorted((DATASET / "train" / label).iterdir())[60:200]:
            if consented[label] == 25:  # 25 of each, of those the tiny model answers
                break
            made = post_upload(fake, path.read_bytes())
            if made is None:
                continue
            verdict = json.dumps({"true_label": label, "consent": True}).encode()
            request = urllib.request.Request(
                made["feedback_url"],
                data=verdict,
                headers={**headers, "Content-Type": "application/json"},
            )
            urllib.request.urlopen(request, timeout=60).close()
            consented[label] += 1
    assert consented == {"NORMAL": 25, "PNEUMONIA": 25}

    code, log = drift_check(rehearsal, fake)
    assert code == 0, log[-6000:]
    open_issues = [i for i in github.issues if i.title == "Model drift" and i.state == "open"]
    assert len(open_issues) == 1, log[-3000:]
    (issue,) = open_issues
    assert "**50 consented, labelled cases are ready for retraining**" in issue.body

    out = rehearsal.work / "feedback-exports"
    said = fake.host.manage(fake.code, "export_feedback", str(out))
    assert "exported 50 images to" in said, said
    (folder,) = out.iterdir()
    git(rehearsal.clone, "checkout", "-q", "main")
    git(rehearsal.clone, "pull", "-q", "origin", "main")
    added = rehearsal.sh(str(BIN / "python"), "-m", "pneumonia.ingest", str(folder))
    assert "train  NORMAL +25  PNEUMONIA +25" in added, added
    rehearsal.sh(str(BIN / "dvc"), "push", "-q", "chest_xray.dvc")
    rehearsal.commit_and_push("Data: 50 clinician-labelled cases from the app's feedback")
    reason = "50 consented cases from clinicians (Model drift issue)"
    inputs = {"force": False, "epochs": "", "reason": reason, "runner": "cpu"}
    code, log = rehearsal.act("retrain", "workflow_dispatch", "main", {"inputs": inputs})
    assert code == 0, log[-6000:]
    pr = max(retrain_pull(github), key=lambda p: p.number)
    assert reason in pr.body and "Data changed: the base model was trained on" in pr.body
