"""The scheduled drift check (``python -m pneumonia.monitor``) against the real app (Django's
live server, the drift bundle) and the GitHub stand-in (tests/fake_github.py, HTTPS): one
"Model drift" issue, opened on an alert, updated without duplicates, closed when the signals
are ok again; Slack told of each change; errors that say what to fix."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from diagnosis.drift import DISTRIBUTIONS
from diagnosis.models import ApiToken, Prediction
from diagnosis.tests.conftest import METRICS, SIZE
from diagnosis.tests.test_drift import record
from pneumonia import monitor
from tests.bundles import make_bundle
from tests.conftest import free_port
from tests.fake_github import FakeGitHub

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="session")
def bundle_dir(torch_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("drift-check") / "bundle"
    return make_bundle(torch_model, SIZE, out, METRICS, guard=True, reference=30)


@pytest.fixture(scope="module")
def github(tmp_path_factory):
    fake = FakeGitHub(tmp_path_factory.mktemp("github"))
    yield fake
    fake.close()


class Slack(BaseHTTPRequestHandler):
    received: list[str] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        Slack.received.append(
            json.loads(self.rfile.read(int(self.headers["Content-Length"])))["text"]
        )
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def environment(github, monkeypatch, live_server, staff):
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Slack)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _, token = ApiToken.issue(staff, "drift check")
    for name, value in {
        "GITHUB_API_URL": github.api_url,
        "GITHUB_REPOSITORY": f"{github.owner}/{github.repo}",
        "GITHUB_TOKEN": github.token,
        "REQUESTS_CA_BUNDLE": str(github.ca),
        "XRAY_APP_URL": live_server.url,
        "XRAY_MONITOR_TOKEN": token,
        "SLACK_WEBHOOK_URL": f"http://127.0.0.1:{server.server_port}/hook",
    }.items():
        monkeypatch.setenv(name, value)
    Slack.received.clear()
    yield
    server.shutdown()


def served_version(bundle_dir) -> str:
    return json.loads((bundle_dir / "model.json").read_text())["version"]


def like_the_reference(user, bundle_dir, n: int) -> None:
    """``n`` predictions whose inputs and answers are the reference's own, in turn."""
    manifest = json.loads((bundle_dir / "model.json").read_text())
    ref = manifest["reference"]
    for i in range(n):
        k = i % ref["images"]
        values = {name: ref[name][k] for name in DISTRIBUTIONS}
        label = "PNEUMONIA" if values["probability"] >= manifest["threshold"] else "NORMAL"
        record(user, manifest["version"], values, label=label)


def test_one_issue_opened_updated_and_closed(
    environment, github, clinician, bundle_dir, live_server, capsys
):
    assert monitor.main([]) == 0  # no traffic: no state, nothing to do
    assert not github.issues and "nothing to do" in capsys.readouterr().out

    version = served_version(bundle_dir)
    for _ in range(200):  # dark images, all answered 0.6: brightness and share far off
        record(clinician, version, {"probability": 0.6, "brightness": 0.2, "contrast": 0.2})
    assert monitor.main([]) == 0
    (issue,) = github.issues
    assert issue.title == "Model drift" and issue.state == "open"
    assert "**State: alert**" in issue.body and "| brightness | alert |" in issue.body
    assert f"({live_server.url}/monitoring)" in issue.body
    assert "consented, labelled cases await export" in issue.body
    assert len(Slack.received) == 1 and "Model drift: alert" in Slack.received[0]

    assert monitor.main([]) == 0  # the same alert: the issue updated, nothing new
    assert len(github.issues) == 1 and not github.comments_on(issue.number)
    assert len(Slack.received) == 1

    like_the_reference(clinician, bundle_dir, 200)
    assert monitor.main([]) == 0
    assert issue.state == "closed" and "Every signal is ok again" in (
        github.comments_on(issue.number)[-1].body
    )
    assert "every signal ok again" in Slack.received[-1]
    assert "closed issue" in capsys.readouterr().out

    Prediction.objects.all().delete()
    for _ in range(200):
        record(clinician, version, {"probability": 0.6, "brightness": 0.2, "contrast": 0.2})
    assert monitor.main([]) == 0  # drift again: a new issue, the closed one stays closed
    assert [i.state for i in github.issues] == ["closed", "open"]


def test_errors_say_what_to_fix(environment, monkeypatch, clinician, capsys):
    monkeypatch.setenv("XRAY_MONITOR_TOKEN", "not-a-token")
    assert monitor.main([]) == 1
    assert "XRAY_MONITOR_TOKEN is not a valid staff API token" in capsys.readouterr().err
    _, token = ApiToken.issue(clinician, "not staff")
    monkeypatch.setenv("XRAY_MONITOR_TOKEN", token)
    assert monitor.main([]) == 1
    assert "answered 403" in capsys.readouterr().err
    monkeypatch.delenv("XRAY_MONITOR_TOKEN")
    assert monitor.main([]) == 1
    assert "add_clinician monitor --staff" in capsys.readouterr().err
    monkeypatch.delenv("XRAY_APP_URL")
    assert monitor.main([]) == 1
    assert "XRAY_APP_URL" in capsys.readouterr().err
    monkeypatch.setenv("XRAY_MONITOR_TOKEN", token)
    monkeypatch.setenv("XRAY_APP_URL", "http://127.0.0.1:9")  # nothing listens there
    assert monitor.main([]) == 1
    assert "unreachable" in capsys.readouterr().err
