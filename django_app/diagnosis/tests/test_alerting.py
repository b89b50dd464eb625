"""Alerts end to end, with the real components: the packaged app under gunicorn (a bundle with
its guard and drift reference), Debian's Prometheus scraping /metrics with a staff token and
evaluating monitoring/rules.yml, and Debian's Alertmanager with monitoring/alertmanager.yml
delivering to a local Slack-style webhook and a local SMTP server (aiosmtpd). In-distribution
traffic raises nothing; inverted X-rays raise the drift alert, which reaches both. Every query
of the Grafana dashboard is run against that Prometheus.

Only what a test cannot wait for is changed in the repository's files: the rules' ``for:``
durations, the scrape and evaluation intervals, the addresses and the secrets' files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from PIL import Image, ImageOps

from diagnosis.tests.conftest import METRICS, SIZE, encode
from diagnosis.tests.running import HTTPS, REPO, get, multipart_image, running_app
from tests.bundles import make_bundle
from tests.conftest import DATASET, free_port, stop, wait_http

pytestmark = pytest.mark.slow

MONITORING = REPO / "monitoring"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
REFERENCE = 30  # NORMAL and PNEUMONIA test images each in the bundle's reference


class Webhook(BaseHTTPRequestHandler):
    """Records what Alertmanager's Slack receiver posts (Slack's incoming-webhook format)."""

    received: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Webhook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def webhook():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/services/T000/B000/XXXX"
    server.shutdown()


@pytest.fixture(scope="module")
def smtp():
    from aiosmtpd.controller import Controller

    class Inbox:
        messages: list = []

        async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
            Inbox.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
            return "250 OK"

    controller = Controller(Inbox(), hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, Inbox.messages
    controller.stop()


def started(command: list[str], log: Path, ready: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        command, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_http(ready, proc, timeout=120)
    except RuntimeError:
        stop(proc)
        raise RuntimeError(log.read_text()[-3000:]) from None
    return proc


@pytest.fixture(scope="module")
def stack(heroku_venv, torch_model, webhook, smtp, tmp_path_factory):
    if not (Path(PROMETHEUS).exists() and Path(ALERTMANAGER).exists()):
        pytest.fail("Debian's prometheus and prometheus-alertmanager are needed: make system-deps")
    work = tmp_path_factory.mktemp("alerting")
    bundle = make_bundle(torch_model, SIZE, work / "bundle", METRICS, guard=True, reference=30)
    with running_app(heroku_venv, bundle, work) as app:
        secrets = work / "secrets"
        secrets.mkdir()
        (secrets / "slack_webhook_url").write_text(webhook)
        (secrets / "xray_metrics_token").write_text(app["staff_token"])

        manager = yaml.safe_load((MONITORING / "alertmanager.yml").read_text())
        controller, _ = smtp
        manager["global"].update(
            smtp_smarthost=f"127.0.0.1:{controller.port}",
            smtp_require_tls=False,  # aiosmtpd on loopback speaks neither TLS nor AUTH
            slack_api_url_file=str(secrets / "slack_webhook_url"),
        )
        for key in ("smtp_auth_username", "smtp_auth_password_file"):
            manager["global"].pop(key)
        manager["route"].update(group_wait="1s", group_interval="1s")
        (work / "alertmanager.yml").write_text(yaml.safe_dump(manager))
        am_port = free_port()
        alertmanager = started(
            [
                ALERTMANAGER,
                f"--config.file={work / 'alertmanager.yml'}",
                f"--storage.path={work / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
            ],
            work / "alertmanager.log",
            f"http://127.0.0.1:{am_port}/-/ready",
        )

        rules = (MONITORING / "rules.yml").read_text()
        (work / "rules.yml").write_text(re.sub(r"(?m)^(\s+for:) \S+$", r"\1 0s", rules))
        config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(work / "rules.yml")]
        config["alerting"]["alertmanagers"][0]["static_configs"] = [
            {"targets": [f"127.0.0.1:{am_port}"]}
        ]
        (job,) = config["scrape_configs"]
        job.update(scheme="http")  # the router's TLS is not part of the dyno
        job["authorization"]["credentials_file"] = str(secrets / "xray_metrics_token")
        job["static_configs"] = [{"targets": [f"127.0.0.1:{app['port']}"]}]
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom_port = free_port()
        prometheus = started(
            [
                PROMETHEUS,
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            work / "prometheus.log",
            f"http://127.0.0.1:{prom_port}/-/ready",
        )
        try:
            yield {**app, "prometheus": f"http://127.0.0.1:{prom_port}", "work": work}
        finally:
            stop(prometheus)
            stop(alertmanager)


def query(stack: dict, expr: str) -> dict:
    url = f"{stack['prometheus']}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    answer = json.loads(get(url)[2])
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]


def firing(stack: dict) -> list[dict]:
    alerts = json.loads(get(f"{stack['prometheus']}/api/v1/alerts")[2])["data"]["alerts"]
    return [a for a in alerts if a["state"] == "firing"]


def wait_for(predicate, what: str, stack: dict, timeout: float = 180):
    """Poll until ``predicate()`` is truthy; a loaded machine may take long, never forever."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    logs = {
        n: (stack["work"] / n).read_text()[-1500:] for n in ("prometheus.log", "alertmanager.log")
    }
    raise AssertionError(f"no {what} within {timeout} s; firing: {firing(stack)}; logs: {logs}")


def upload(stack: dict, data: bytes) -> int:
    body, content_type = multipart_image(data)
    headers = {
        "Authorization": f"Bearer {stack['clinician_token']}",
        "Content-Type": content_type,
        **HTTPS,
    }
    try:
        return get(f"{stack['url']}/api/v1/predictions", headers, body, timeout=60)[0]
    except Exception as exc:  # urllib raises HTTPError for the guard's 422
        return getattr(exc, "code", 0)


def scraped(stack: dict, predictions: int) -> bool:
    """Prometheus's latest scrape shows ``predictions`` in the drift window."""
    result = query(stack, 'xray_drift_window{kind="predictions"}')["result"]
    return bool(result) and float(result[0]["value"][1]) >= predictions


def test_drift_alerts_reach_slack_and_email_and_in_distribution_traffic_raises_none(
    stack, webhook, smtp
):
    _, inbox = smtp
    unseen = [  # test images that are not in the bundle's reference, in the same mix
        p
        for label in ("NORMAL", "PNEUMONIA")
        for p in sorted((DATASET / "test" / label).iterdir())[REFERENCE : 2 * REFERENCE]
    ]
    statuses = [upload(stack, path.read_bytes()) for path in unseen]
    answered = statuses.count(200)
    assert answered >= 0.9 * len(unseen), statuses
    wait_for(lambda: scraped(stack, answered), "scrape of the in-distribution traffic", stack)
    time.sleep(5)  # several evaluations of every rule on that window
    states = {
        r["metric"]["signal"]: float(r["value"][1])
        for r in query(stack, "xray_drift_state")["result"]
    }
    assert states and max(states.values()) < 2, states
    pages = [a for a in firing(stack) if a["labels"]["severity"] == "page"]
    assert not pages and not Webhook.received, pages
    assert not [m for _, m in inbox if "drifted" in m["Subject"]]

    shifted = [  # negatives of X-rays: another kind of image, twice the traffic so far
        p
        for label in ("NORMAL", "PNEUMONIA")
        for p in sorted((DATASET / "test" / label).iterdir())[: 2 * REFERENCE]
    ]
    for path in shifted:
        upload(stack, encode(ImageOps.invert(Image.open(path).convert("L")), "PNG"))

    def drift_signals() -> set[str]:
        alerts = [a for a in firing(stack) if a["labels"]["alertname"] == "XrayDrift"]
        signals = {a["labels"]["signal"] for a in alerts}
        return signals if {"guard_distance", "refusal_rate"} <= signals else set()

    # the guard refuses many of them (refusal_rate); the features of the rest lie farther
    # from the training images' (guard_distance); test_drift.py has the window's figures
    wait_for(drift_signals, "XrayDrift alerts for guard_distance and refusal_rate", stack)

    slack = wait_for(lambda: Webhook.received, "Slack message", stack)
    text = " ".join(f"{m.get('title', '')} {m.get('text', '')}" for m in slack)
    for message in slack:
        for attachment in message.get("attachments", []):
            text += f" {attachment.get('title', '')} {attachment.get('text', '')}"
    assert "FIRING: Production traffic has drifted" in text, slack
    assert re.search(r"Signal \w+ of model \w+ has been in the alert state", text), text
    assert "Not enough consented feedback for a retrain yet." in text

    def drift_mails():
        return [(to, m) for to, m in inbox if "Production traffic has drifted" in m["Subject"]]

    recipients, mail = wait_for(drift_mails, "e-mail", stack)[0]
    assert recipients == ["radiology-ml@example.org"]
    assert mail["Subject"].startswith("[xray firing] Production traffic has drifted")


def test_every_dashboard_query_runs_on_the_real_prometheus(stack):
    """monitoring/grafana/dashboard.json: each panel's queries parse and evaluate, and each
    panel shows something once traffic has come (the test above sent it)."""
    dashboard = json.loads((MONITORING / "grafana" / "dashboard.json").read_text())
    datasource = yaml.safe_load(
        (MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]["uid"]
    wait_for(lambda: scraped(stack, 1), "scrape with predictions", stack)
    empty = []
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource, panel["title"]
        results = [query(stack, target["expr"])["result"] for target in panel["targets"]]
        if not any(results):
            empty.append(panel["title"])
    assert not empty, f"panels with no data: {empty}"
