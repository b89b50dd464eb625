"""MLflow tracking and provenance (git commit, data version) shared by the stages.

One pipeline execution is one MLflow run: ``train`` starts it and records its id in
``models/mlflow_run.json``; ``evaluate`` and ``export`` log into the same run.
``MLFLOW_TRACKING_URI`` selects a hosted server; by default a SQLite store under ``.mlflow/``.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from pneumonia import config

EXPERIMENT_NAME = os.environ.get("MLFLOW_EXPERIMENT_NAME", "pneumonia")
REGISTERED_MODEL_NAME = os.environ.get("MLFLOW_REGISTERED_MODEL_NAME", "pneumonia-resnet18")
CANDIDATE_ALIAS = "challenger"  # every new version; the deploy job moves "production"


class TrackingUnavailableError(RuntimeError):
    """The configured MLflow server cannot be reached: results would be lost silently."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", "").strip() or _default_uri()


def _default_uri() -> str:
    return f"sqlite:///{config.MLFLOW_DIR / 'mlflow.db'}"


def connect():
    """The ``mlflow`` module, pointed at the tracking server (checked reachable) and the
    project's experiment."""
    import mlflow  # slow import: only the stages that log pay for it

    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    else:
        config.MLFLOW_DIR.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(EXPERIMENT_NAME) is None:
        # The default store keeps its artifacts beside it, not in the current directory.
        local = uri == _default_uri()
        artifacts = (config.MLFLOW_DIR / "artifacts").as_uri() if local else None
        mlflow.create_experiment(EXPERIMENT_NAME, artifact_location=artifacts)
    mlflow.set_experiment(EXPERIMENT_NAME)
    return mlflow


# A hosted server (and a fresh one on a loaded machine) can take tens of seconds for its first
# store read: wait this long in all, with growing per-request limits, before giving up.
SERVER_WAIT_SECONDS = 120.0
FIRST_REQUEST_TIMEOUT = 10.0
RETRIED_STATUS = (502, 503, 504)  # a proxy in front of a server that is still starting


def _check_server(uri: str, budget: float = SERVER_WAIT_SECONDS) -> None:
    """Fail with the fix instead of MLflow's minutes of retries: the server must answer, and
    accept the credentials (an authenticated read), before anything is logged or registered.

    A request that times out or gets 502/503/504 is retried with a growing limit until
    ``budget`` seconds have passed (a cold server); a refused connection, an unknown host or
    refused credentials fail at once."""
    base = uri.rstrip("/")
    _wait_for(uri, urllib.request.Request(base + "/health"), "GET /health", budget)
    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/experiments/search?max_results=1", headers=_auth_headers()
    )
    try:
        _wait_for(uri, request, "an authenticated GET /api/2.0/mlflow/experiments/search", budget)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            names = (
                "MLFLOW_TRACKING_TOKEN"
                if os.environ.get("MLFLOW_TRACKING_TOKEN")
                else "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD"
            )
            raise TrackingUnavailableError(
                f"MLflow server {uri} refused the credentials (HTTP {exc.code}): fix {names} "
                "(repository secrets in CI). Nothing was logged."
            ) from None
        raise TrackingUnavailableError(
            f"MLflow server {uri} answered HTTP {exc.code} to an authenticated read"
        ) from None


def _timed_out(exc: BaseException) -> bool:
    reason = getattr(exc, "reason", exc)
    return isinstance(reason, TimeoutError) or "timed out" in str(reason)


def _wait_for(uri: str, request: urllib.request.Request, what: str, budget: float) -> None:
    """Send ``request`` until it answers 2xx, retrying timeouts and 502/503/504 within
    ``budget`` seconds; raise the last HTTPError for other statuses, and
    TrackingUnavailableError (naming the request, the attempts and the time) otherwise."""
    started = time.monotonic()
    limit, attempt = FIRST_REQUEST_TIMEOUT, 0
    while True:
        attempt += 1
        left = budget - (time.monotonic() - started)
        timeout = max(1.0, min(limit, left))
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
            return
        except urllib.error.HTTPError as exc:
            if exc.code not in RETRIED_STATUS:
                raise
            problem = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            if not _timed_out(exc):
                raise TrackingUnavailableError(
                    f"MLflow server {uri} (MLFLOW_TRACKING_URI) is not reachable: {exc}. Start "
                    "it, fix the URI and credentials (MLFLOW_TRACKING_USERNAME/PASSWORD or "
                    "TOKEN), or unset MLFLOW_TRACKING_URI to log to the local store in .mlflow/."
                ) from exc
            problem = f"timed out after {timeout:.0f} s"
        elapsed = time.monotonic() - started
        if elapsed + 1.0 >= budget:
            raise TrackingUnavailableError(
                f"MLflow server {uri}: {what} {problem} (attempt {attempt}, {elapsed:.0f} s of "
                f"the {budget:.0f} s the job waits for a starting server). Check that the "
                "server and its database are up, then run the job again."
            )
        time.sleep(min(2.0**attempt, max(0.0, budget - elapsed - 1.0)))
        limit = min(limit * 2, 60.0)


def _auth_headers() -> dict[str, str]:
    """The credentials MLflow's client sends: a bearer token, or basic auth."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = (os.environ.get(f"MLFLOW_TRACKING_{k}") for k in ("USERNAME", "PASSWORD"))
    if user and password:
        encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {encoded}"}
    return {}


def git_info(root: Path | None = None) -> dict[str, Any]:
    """Commit, branch and whether the work tree has uncommitted changes (``None`` if no git)."""
    root = root or config.ROOT

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError):
            return None
        return result.stdout.strip()

    status = git("status", "--porcelain", "--untracked-files=no")
    commit = git("rev-parse", "HEAD")
    return {
        # The commit of the tree this model is built from: the repository's HEAD, never what
        # a CI variable says (GITHUB_SHA names the commit that triggered the workflow).
        "commit": commit,
        "branch": _branch(git, commit),
        "dirty": bool(status) if status is not None else None,
    }


def _branch(git, commit: str | None) -> str | None:
    """The branch being built. HEAD is detached under `dvc exp run` (the experiment's
    baseline commit names it) and in GitHub's pull request checkouts (GITHUB_HEAD_REF names
    it, when GITHUB_SHA is this commit)."""
    branch = git("symbolic-ref", "--short", "-q", "HEAD")
    if branch:
        return branch
    if commit and os.environ.get("GITHUB_SHA") == commit:
        ci_branch = os.environ.get("GITHUB_HEAD_REF") or os.environ.get("GITHUB_REF_NAME")
        if ci_branch:
            return ci_branch
    baseline = os.environ.get("DVC_EXP_BASELINE_REV") or commit
    names = (
        git("branch", "--points-at", baseline, "--format=%(refname:short)") if baseline else None
    )
    candidates = [n for n in (names or "").splitlines() if n and not n.startswith("(")]
    return candidates[0] if candidates else "detached"


def data_version(dvc_file: Path | None = None) -> dict[str, Any]:
    """The dataset version recorded in ``chest_xray.dvc``: its md5, file count and size."""
    dvc_file = dvc_file or config.DATA_DVC_FILE
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
    out = outs[0]
    return {"md5": out.get("md5"), "nfiles": out.get("nfiles"), "size": out.get("size")}


def trigger() -> str:
    """What started this pipeline run: RETRAIN_TRIGGER, else the GitHub event, else local."""
    return os.environ.get("RETRAIN_TRIGGER") or os.environ.get("GITHUB_EVENT_NAME") or "local"


def start_run(params: dict[str, Any]) -> str:
    """Open the pipeline's MLflow run, log params and provenance tags; return its id."""
    mlflow = connect()
    git = git_info()
    data = data_version()
    tags = {
        "git.commit": git["commit"] or "unknown",
        "git.branch": git["branch"] or "unknown",
        "git.dirty": str(git["dirty"]),
        "data.md5": data["md5"] or "unknown",
        "data.nfiles": str(data["nfiles"]),
        "trigger": trigger(),
    }
    if os.environ.get("RETRAIN_REASON", "").strip():  # the retrain workflow's `reason` input
        tags["reason"] = os.environ["RETRAIN_REASON"].strip()[:500]
    with mlflow.start_run(tags=tags) as run:
        mlflow.log_params(flatten_params(params))
        run_id = run.info.run_id
    config.RUN_FILE.parent.mkdir(parents=True, exist_ok=True)
    config.RUN_FILE.write_text(
        json.dumps({"run_id": run_id, "tracking_uri": _public_uri(tracking_uri())}, indent=2)
    )
    return run_id


@contextmanager
def resume_run() -> Iterator[Any]:
    """Re-open the run that ``train`` started (the ``mlflow`` module is yielded)."""
    mlflow = connect()
    run_id = json.loads(config.RUN_FILE.read_text())["run_id"]
    with mlflow.start_run(run_id=run_id):
        yield mlflow


def _public_uri(uri: str) -> str:
    """The URI without credentials or this machine's paths, for files that end up in git or the
    bundle (the default store is named relative to the repository)."""
    if uri == _default_uri():
        return "sqlite:///.mlflow/mlflow.db"
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return uri


def flatten_params(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested parameter sections as dotted keys: ``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = value
    return flat
