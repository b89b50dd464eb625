"""Deploy notifications: job summary always, Slack only when its secret is set."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pneumonia.notify import notify


def test_summary_always_and_slack_when_configured(tmp_path, monkeypatch):
    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    assert notify("skipped", "not better than main") == ["job summary"]
    monkeypatch.setenv("SLACK_WEBHOOK_URL", f"http://127.0.0.1:{server.server_address[1]}/hook")
    assert notify("success", "deployed 57bf3a4dc978") == ["job summary", "slack"]
    server.shutdown()
    assert received == [{"text": ":white_check_mark: deploy success: deployed 57bf3a4dc978"}]
    assert "not better than main" in summary.read_text()


def test_the_run_link_is_added_on_a_runner(tmp_path, monkeypatch):
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.com")
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/pneumonia")
    monkeypatch.setenv("GITHUB_RUN_ID", "42")
    notify("success", "deployed")
    assert (tmp_path / "summary.md").read_text() == (
        "### Deploy\n\n:white_check_mark: deploy success: deployed "
        "(https://github.com/acme/pneumonia/actions/runs/42)\n"
    )


def test_unreachable_slack_does_not_fail_the_job(tmp_path, monkeypatch):
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "s.md"))
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    assert notify("failure", "smoke test failed") == ["job summary"]
