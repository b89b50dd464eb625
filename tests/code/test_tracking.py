"""MLflow configuration and provenance helpers."""

from __future__ import annotations

import subprocess
import time

import pytest

from pneumonia import tracking
from tests.conftest import free_port


def test_unreachable_server_fails_fast_with_the_fix(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(tracking.TrackingUnavailableError, match="MLFLOW_TRACKING_URI"):
        tracking.start_run({"train": {"epochs": 1}})
    assert time.monotonic() - started < 15


def test_default_store_is_local_sqlite(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri().startswith("sqlite:///")
    assert tracking.tracking_uri().endswith("/.mlflow/mlflow.db")


def test_credentials_never_leave_the_process():
    assert tracking._public_uri("https://user:secret@mlflow.example.org") == (
        "https://mlflow.example.org"
    )
    assert tracking._public_uri("sqlite:///x/mlflow.db") == "sqlite:///x/mlflow.db"
    # the default local store: no absolute path of this machine in the committed run file
    assert tracking._public_uri(tracking._default_uri()) == "sqlite:///.mlflow/mlflow.db"


def test_data_version_comes_from_the_dvc_file(tmp_path):
    dvc_file = tmp_path / "chest_xray.dvc"
    dvc_file.write_text(
        "outs:\n- md5: abc.dir\n  size: 10\n  nfiles: 3\n  hash: md5\n  path: data/chest_xray\n"
    )
    assert tracking.data_version(dvc_file) == {"md5": "abc.dir", "nfiles": 3, "size": 10}


def test_trigger_prefers_explicit_then_github_event(monkeypatch):
    monkeypatch.delenv("RETRAIN_TRIGGER", raising=False)
    monkeypatch.delenv("GITHUB_EVENT_NAME", raising=False)
    assert tracking.trigger() == "local"
    monkeypatch.setenv("GITHUB_EVENT_NAME", "schedule")
    assert tracking.trigger() == "schedule"
    monkeypatch.setenv("RETRAIN_TRIGGER", "new-data")
    assert tracking.trigger() == "new-data"


def test_nested_params_are_flattened():
    flat = tracking.flatten_params({"train": {"lr": 0.001, "augment": {"hflip": 0.5}}})
    assert flat == {"train.lr": 0.001, "train.augment.hflip": 0.5}


def _repo(path):
    def git(*args):
        return subprocess.run(
            ["git", *args], cwd=path, check=True, capture_output=True, text=True
        ).stdout.strip()

    path.mkdir()
    git("init", "-q", "-b", "main")
    git(
        "-c",
        "user.email=t@example.invalid",
        "-c",
        "user.name=t",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "one",
    )
    return git


def test_recorded_commit_is_the_built_tree_whatever_ci_says(tmp_path, monkeypatch):
    git = _repo(tmp_path / "repo")
    head = git("rev-parse", "HEAD")
    monkeypatch.setenv("GITHUB_SHA", "f" * 40)  # a runner's trigger commit, not this tree
    monkeypatch.setenv("GITHUB_REF_NAME", "someone-else")
    info = tracking.git_info(tmp_path / "repo")
    assert info["commit"] == head and info["branch"] == "main" and info["dirty"] is False


def test_branch_of_a_detached_head(tmp_path, monkeypatch):
    git = _repo(tmp_path / "repo")
    head = git("rev-parse", "HEAD")
    git("checkout", "-q", "--detach")
    monkeypatch.delenv("GITHUB_SHA", raising=False)
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    assert tracking.git_info(tmp_path / "repo")["branch"] == "main"  # dvc exp run's case
    monkeypatch.setenv("GITHUB_SHA", head)
    monkeypatch.setenv("GITHUB_HEAD_REF", "retrain/20261126-1")  # a pull request checkout
    assert tracking.git_info(tmp_path / "repo")["branch"] == "retrain/20261126-1"
    git("branch", "-q", "-D", "main")
    monkeypatch.delenv("GITHUB_SHA")
    assert tracking.git_info(tmp_path / "repo")["branch"] == "detached"


class ColdServer:
    """A local HTTP server standing in for a starting MLflow: /health answers at once, the
    store read is slow (``slow`` requests sleep ``delay`` s) or answers ``statuses`` first."""

    def __init__(self, slow: int = 0, delay: float = 0.0, statuses: tuple[int, ...] = ()):
        import http.server
        import threading

        self.reads: list[float] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the stdlib's name)
                if self.path.startswith("/api/2.0/mlflow/experiments/search"):
                    server.reads.append(time.monotonic())
                    n = len(server.reads)
                    if n <= slow:
                        time.sleep(delay)
                    if n <= len(statuses):
                        self.send_response(statuses[n - 1])
                        self.end_headers()
                        return
                body = b'{"experiments": []}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def short_requests(monkeypatch):
    monkeypatch.setattr(tracking, "FIRST_REQUEST_TIMEOUT", 0.5)


def test_a_cold_store_read_is_retried_until_it_answers(short_requests):
    server = ColdServer(slow=2, delay=2.0)  # the first two reads outlast their limits
    try:
        tracking._check_server(server.url, budget=60)
    finally:
        server.close()
    assert len(server.reads) == 3


def test_a_starting_proxy_is_retried(short_requests):
    server = ColdServer(statuses=(503, 502))
    try:
        tracking._check_server(server.url, budget=60)
    finally:
        server.close()
    assert len(server.reads) == 3


def test_a_server_that_stays_cold_names_the_request_and_the_time(short_requests):
    server = ColdServer(slow=100, delay=3.0)
    started = time.monotonic()
    try:
        with pytest.raises(tracking.TrackingUnavailableError) as failure:
            tracking._check_server(server.url, budget=6)
    finally:
        server.close()
    message = str(failure.value)
    assert "experiments/search timed out after" in message and "of the 6 s" in message
    assert len(server.reads) >= 2 and time.monotonic() - started < 20


def test_refused_credentials_are_not_retried(short_requests):
    server = ColdServer(statuses=(401,))
    try:
        with pytest.raises(tracking.TrackingUnavailableError, match="refused the credentials"):
            tracking._check_server(server.url, budget=60)
    finally:
        server.close()
    assert len(server.reads) == 1
