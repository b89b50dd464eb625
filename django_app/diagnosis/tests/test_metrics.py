"""Service metrics (diagnosis.metrics): for staff only, in the Prometheus text format, and they
count what happened: requests by route and status, predictions by answer and model, refusals by
kind and reason, feedback, held uploads. Counters are process-wide, so each test compares
before and after. Under gunicorn's workers: test_deploy.py."""

from __future__ import annotations

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from diagnosis.models import ApiToken, Prediction
from diagnosis.tests.conftest import METRICS, SIZE, encode
from tests.bundles import make_bundle

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="session")
def bundle_dir(torch_model, tmp_path_factory):
    """A served bundle with its guard, so that refusals are real (conftest's served_model)."""
    out = tmp_path_factory.mktemp("guarded") / "bundle"
    return make_bundle(torch_model, SIZE, out, METRICS, guard=True)


def api(user) -> Client:
    _, raw = ApiToken.issue(user, "metrics tests")
    return Client(headers={"Authorization": f"Bearer {raw}"})


def scrape(client: Client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.content[:200]
    assert response["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_are_for_staff_only(clinician, staff):
    anonymous = Client().get("/metrics")
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"].startswith("Bearer")
    assert api(clinician).get("/metrics").status_code == 403
    session = Client()
    session.force_login(clinician)
    assert session.get("/metrics").status_code == 403
    session.force_login(staff)
    assert session.get("/metrics").status_code == 200
    assert api(staff).get("/metrics").status_code == 200


def test_metrics_can_be_turned_off(staff, settings, monkeypatch):
    """PROMETHEUS_METRICS=0: no timing middleware, no shared folder, /metrics is 404."""
    import json
    import os
    import runpy
    import subprocess
    import sys
    from pathlib import Path

    app = Path(__file__).resolve().parents[2]
    probe = (
        "import json, xrayweb.settings as s; print(json.dumps([s.PROMETHEUS_METRICS, "
        "'diagnosis.middleware.MetricsMiddleware' in s.MIDDLEWARE]))"
    )
    for value, expected in (("0", [False, False]), ("1", [True, True])):
        env = {"PATH": "/usr/bin:/bin", "DJANGO_DEBUG": "1", "PROMETHEUS_METRICS": value}
        out = subprocess.run(
            [sys.executable, "-c", probe], cwd=app, env=env, capture_output=True, text=True
        )
        assert json.loads(out.stdout) == expected, out.stderr
    settings.PROMETHEUS_METRICS = False
    answer = api(staff).get("/metrics")
    assert answer.status_code == 404 and b"PROMETHEUS_METRICS=0" in answer.content
    hooks = runpy.run_path(str(app / "gunicorn.conf.py"))
    monkeypatch.setenv("PROMETHEUS_METRICS", "0")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent/metrics")
    hooks["on_starting"](None)
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_they_count_predictions_refusals_feedback_and_requests(clinician, staff, samples):
    monitor, client = api(staff), api(clinician)
    before = scrape(monitor)
    with open(samples[0], "rb") as f:
        made = client.post("/api/v1/predictions", {"image": f}).json()
    grey = SimpleUploadedFile("grey.png", encode(Image.new("L", (800, 600), 128), "PNG"))
    assert client.post("/api/v1/predictions", {"image": grey}).status_code == 422
    pdf = SimpleUploadedFile("scan.jpg", b"%PDF-1.7 not an image")
    assert client.post("/api/v1/predictions", {"image": pdf}).status_code == 400
    url = f"/api/v1/predictions/{made['id']}/feedback"
    other = "NORMAL" if made["label"] == "PNEUMONIA" else "PNEUMONIA"
    given = client.post(url, {"true_label": other}, content_type="application/json")
    assert given.status_code == 201
    after = scrape(monitor)

    def grew(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    version = made["model"]["version"]
    labels = {"label": made["label"], "model_version": version, "source": "api"}
    assert grew("xray_predictions_total", traffic="real", **labels) == 1
    assert grew("xray_prediction_probability_count", model_version=version) == 1
    distance = Prediction.objects.get(pk=made["id"]).guard_distance  # what the guard measured
    assert grew("xray_guard_distance_count", model_version=version) == 1
    assert grew("xray_guard_distance_sum", model_version=version) == pytest.approx(distance)
    assert grew("xray_refusals_total", kind="guard", reason="uniform") == 1
    assert grew("xray_refusals_total", kind="format", reason="unreadable_image") == 1
    assert grew("xray_feedback_total", verdict="corrected", consent="no") == 1
    route = "api/v1/predictions"
    assert grew("xray_http_requests_total", route=route, method="POST", status="200") == 1
    assert grew("xray_http_requests_total", route=route, method="POST", status="422") == 1
    assert grew("xray_http_request_duration_seconds_count", route=route) == 3
    # held now: the heat map; the display copy went with the feedback (no consent)
    assert value(after, "xray_held_items") == 1


def test_unknown_paths_count_as_one_route(staff):
    monitor = api(staff)
    before = scrape(monitor)
    for n in range(3):
        Client().get(f"/no/such/page/{n}")
    after = scrape(monitor)
    labels = {"route": "unmatched", "method": "GET", "status": "404"}
    assert (
        value(after, "xray_http_requests_total", **labels)
        - value(before, "xray_http_requests_total", **labels)
        == 3
    )
    assert not any("no/such" in str(key) for key in after), "paths never become labels"


def test_a_synthetic_accounts_predictions_are_labelled_apart(staff, samples, monkeypatch):
    """The deploy's smoke-test account (add_clinician --synthetic): its predictions are
    recorded and counted as synthetic, and stay out of the probability histogram."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from diagnosis.models import Prediction

    out = io.StringIO()
    monkeypatch.setattr("sys.stdin", io.StringIO("Smoke-Signal-2026\n"))
    command = ["smoke-test", "--synthetic", "--password-stdin", "--api-token", "deploy"]
    call_command("add_clinician", *command, stdout=out)
    assert "created synthetic user smoke-test" in out.getvalue()
    raw = out.getvalue().split("store it now): ")[1].strip()
    smoke = Client(headers={"Authorization": f"Bearer {raw}"})
    monitor = api(staff)
    before = scrape(monitor)
    with open(samples[0], "rb") as f:
        made = smoke.post("/api/v1/predictions", {"image": f}).json()
    after = scrape(monitor)
    version = made["model"]["version"]
    labels = {"label": made["label"], "model_version": version, "source": "api"}
    assert (
        value(after, "xray_predictions_total", traffic="synthetic", **labels)
        - value(before, "xray_predictions_total", traffic="synthetic", **labels)
        == 1
    )
    for histogram in ("xray_prediction_probability_count", "xray_guard_distance_count"):
        assert value(after, histogram, model_version=version) == value(
            before, histogram, model_version=version
        )
    assert Prediction.objects.get(pk=made["id"]).synthetic
    user = get_user_model().objects.get(username="smoke-test")
    assert not user.is_staff and user.groups.filter(name="synthetic traffic").exists()
