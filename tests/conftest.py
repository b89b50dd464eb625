"""Shared fixtures: small real subsets of the dataset, a throwaway copy of the repo, and real
local servers (``mlflow server``, ``moto_server`` as S3) started on 127.0.0.1 and stopped by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from pneumonia import config
from tests.postgres import database_url

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = config.SHARED_DATA_DIR
DATASET = SHARED_DATA / "chest_xray"
SAMPLES = SHARED_DATA / "samples"
BIN = Path(sys.executable).parent  # dvc, mlflow, moto_server of this venv

# What a copy of the repo needs to run the pipeline.
REPO_FILES = ("dvc.yaml", "params.yaml", "src", ".dvcignore")


def require_data() -> None:
    """Fail without the dataset; skip, with the reason, where CI could not have it
    (``PNEUMONIA_DATA_UNAVAILABLE``, set by ``pneumonia.testdata`` for a fork's pull request)."""
    unavailable = os.environ.get("PNEUMONIA_DATA_UNAVAILABLE")
    if unavailable and not DATASET.is_dir():
        pytest.skip(unavailable)
    if not DATASET.is_dir():
        pytest.fail(
            f"the real dataset is not at {DATASET}: put the shared data beside the repo "
            "(../shared/data) or set PNEUMONIA_SHARED_DATA",
            pytrace=False,
        )


def copy_subset(dest: Path, per_class: dict[str, int]) -> Path:
    """Copy the first N images of each class of each split (sorted by name) to ``dest``."""
    require_data()
    for split, n in per_class.items():
        for label in ("NORMAL", "PNEUMONIA"):
            folder = dest / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for path in sorted((DATASET / split / label).iterdir())[:n]:
                shutil.copy(path, folder / path.name)
    return dest


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    """~60 real images in the official layout."""
    return copy_subset(tmp_path / "chest_xray", {"train": 20, "val": 4, "test": 6})


def run(
    cmd: list[str],
    cwd: Path,
    env: dict | None = None,
    check: bool = True,
    timeout: float | None = None,
):
    result = subprocess.run(
        cmd, cwd=cwd, env=env or os.environ.copy(), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {result.returncode}\nstdout:\n{result.stdout[-4000:]}"
            f"\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


def tool_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: this venv's tools first on PATH, no hosted services."""
    env = os.environ.copy()
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    for key in (
        "MLFLOW_TRACKING_URI",
        "PNEUMONIA_ROOT",
        "GITHUB_EVENT_NAME",
        "RETRAIN_TRIGGER",
        "RETRAIN_REASON",
    ):
        env.pop(key, None)
    env.update(extra)
    return env


def make_repo(root: Path, dataset: Path, params: dict) -> Path:
    """A git + DVC repo at ``root`` with the pipeline, ``dataset`` under data/chest_xray tracked by
    a top-level chest_xray.dvc, and params.yaml updated with ``params`` (per stage section)."""
    root.mkdir(parents=True)
    for name in REPO_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy(src, root / name)
    merged = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in params.items():
        merged[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    shutil.copytree(dataset, root / "data" / "chest_xray")
    env = tool_env()
    run(["git", "init", "-q"], root, env)
    run(["git", "config", "user.email", "tests@example.invalid"], root, env)
    run(["git", "config", "user.name", "tests"], root, env)
    run(["dvc", "init", "-q"], root, env)
    (root / "chest_xray.dvc").write_text("outs:\n- path: data/chest_xray\n")
    run(["dvc", "commit", "-f", "-q", "chest_xray.dvc"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "test repo"], root, env)
    return root


TINY_PARAMS = {
    "prepare": {"image_size": 64},
    "train": {"weights": "none", "epochs": 1, "batch_size": 16},
    # The INT8 path runs, but a 1-epoch model's probabilities sit at the threshold, so that on
    # 16 test images one flipped decision is 6 points: the accuracy-drop rule is tested on its
    # own (tests/model/test_quantize.py).
    "export": {"parity_images": 8, "calibration_images": 16, "max_accuracy_drop": 1.0},
    # For the same reason the behavioural checks run but cannot fail there (a guard fitted on
    # 16 images refuses little of the catalogue): tests/code/test_behaviour.py and the
    # rehearsal's strict base (tests/e2e/test_gate_rehearsal.py) rule on them.
    "gate": {
        "behaviour": {
            **yaml.safe_load((REPO / "params.yaml").read_text())["gate"]["behaviour"],
            "max_flip_rate": 1.0,
            "min_refused": 0.0,
            "max_easy_errors": 1.0,
        }
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    """Stop a server started in its own process group, by PID."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def serve(
    cmd: list[str], health_url: str, workdir: Path, timeout: float = 120, **env: str
) -> Iterator[None]:
    """Run a server in its own process group until the block ends; its log goes to workdir."""
    with open(workdir / "server.log", "w") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=tool_env(**env),
        )
        try:
            wait_http(health_url, proc, timeout)
            yield
        finally:
            stop(proc)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 (SQLite backend, local artifacts); yields its URI."""
    work = tmp_path_factory.mktemp("mlflow-server")
    url = f"http://127.0.0.1:{free_port()}"
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        url.rsplit(":", 1)[1],
        "--backend-store-uri",
        f"sqlite:///{work / 'mlflow.db'}",
        "--artifacts-destination",
        str(work / "artifacts"),
        "--workers",
        "1",
    ]
    with serve(cmd, f"{url}/health", work):
        yield url


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[str]:
    """A real S3 endpoint on 127.0.0.1 (``moto_server``); yields its URL."""
    work = tmp_path_factory.mktemp("moto")
    port = free_port()
    cmd = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with serve(cmd, f"http://127.0.0.1:{port}/moto-api/", work, timeout=60):
        yield f"http://127.0.0.1:{port}"


MLFLOW_USER = "pipeline"
MLFLOW_PASSWORD = "pipeline-" + "p4ss" * 6  # long: never a guessable default


@pytest.fixture(scope="session")
def mlflow_auth_server(tmp_path_factory) -> Iterator[str]:
    """A real ``mlflow server`` run the way hosted ones are: the basic-auth app, a PostgreSQL
    backend store, artifacts served by the server; the user MLFLOW_USER (created through the
    admin API) may create experiments and models. Yields the URI."""
    import base64
    import json
    import secrets

    import psycopg

    work = tmp_path_factory.mktemp("mlflow-auth")
    database = f"mlflow_{secrets.token_hex(4)}"
    admin_db = database_url()
    with psycopg.connect(admin_db, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    admin_password = secrets.token_urlsafe(24)
    (work / "auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{work / 'auth.db'}\n"
        f"admin_username = admin\nadmin_password = {admin_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    url = f"http://127.0.0.1:{free_port()}"
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--app-name",
        "basic-auth",
        "--host",
        "127.0.0.1",
        "--port",
        url.rsplit(":", 1)[1],
        "--backend-store-uri",
        database_url(database, scheme="postgresql+psycopg"),
        "--serve-artifacts",
        "--artifacts-destination",
        str(work / "artifacts"),
        "--workers",
        "1",
    ]
    server_env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(work / "auth.ini"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }
    try:
        with serve(cmd, f"{url}/health", work, **server_env):
            credentials = base64.b64encode(f"admin:{admin_password}".encode()).decode()
            request = urllib.request.Request(
                f"{url}/api/2.0/mlflow/users/create",
                data=json.dumps({"username": MLFLOW_USER, "password": MLFLOW_PASSWORD}).encode(),
                headers={
                    "Authorization": f"Basic {credentials}",
                    "Content-Type": "application/json",
                },
            )
            with urllib.request.urlopen(request, timeout=30):
                pass
            # Warm the store (its first authenticated read is the slowest) before any test
            # times its own requests against it.
            user = base64.b64encode(f"{MLFLOW_USER}:{MLFLOW_PASSWORD}".encode()).decode()
            warm = urllib.request.Request(
                f"{url}/api/2.0/mlflow/experiments/search?max_results=1",
                headers={"Authorization": f"Basic {user}"},
            )
            with urllib.request.urlopen(warm, timeout=120):
                pass
            yield url
    finally:
        with psycopg.connect(admin_db, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
