"""Drift signals (diagnosis.drift): real uploads against the served bundle's reference, the
states the thresholds give, what counts (the served model's real traffic only), and where they
show (the monitoring page, /metrics)."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone
from PIL import Image, ImageOps

from diagnosis import drift
from diagnosis.models import ApiToken, Feedback, Prediction, Refusal
from diagnosis.tests.conftest import METRICS, SIZE, encode, logged_in
from tests.bundles import make_bundle
from tests.conftest import DATASET

pytestmark = pytest.mark.django_db
REFERENCE = 30  # NORMAL and PNEUMONIA test images each


@pytest.fixture(scope="session")
def bundle_dir(torch_model, tmp_path_factory):
    """A served bundle with its guard and a drift reference (conftest's served_model)."""
    out = tmp_path_factory.mktemp("drift") / "bundle"
    return make_bundle(torch_model, SIZE, out, METRICS, guard=True, reference=REFERENCE)


@pytest.fixture(scope="session")
def manifest(bundle_dir) -> dict:
    return json.loads((bundle_dir / "model.json").read_text())


def reference_files() -> list:
    return [
        p
        for label in ("NORMAL", "PNEUMONIA")
        for p in sorted((DATASET / "test" / label).iterdir())[:REFERENCE]
    ]


def upload(client: Client, data: bytes) -> int:
    file = SimpleUploadedFile("x.png", data, content_type="image/png")
    return client.post("/api/v1/predictions", {"image": file}).status_code


def api(user) -> Client:
    _, raw = ApiToken.issue(user, "drift tests")
    return Client(headers={"Authorization": f"Bearer {raw}"})


def record(user, version: str, values: dict, when=None, synthetic=False, label=None) -> Prediction:
    probability = values.get("probability", 0.5)
    return Prediction.objects.create(
        user=user,
        synthetic=synthetic,
        source="api",
        model_version=version,
        model_sha256="0" * 64,
        label=label or ("PNEUMONIA" if probability >= 0.5 else "NORMAL"),
        probability=probability,
        threshold=0.5,
        guard_distance=values.get("guard_distance"),
        brightness=values.get("brightness"),
        contrast=values.get("contrast"),
        image_sha256="1" * 64,
        image_width=256,
        image_height=256,
        created_at=when or timezone.now(),
    )


def by_name(report: drift.Report) -> dict[str, drift.Signal]:
    return {s.name: s for s in report.signals}


def test_the_app_records_what_the_export_measured_for_the_same_images(clinician, manifest):
    """Parity of monitoring: the export's reference and the app's records of an upload of the
    same test file agree, so a difference between them is the traffic's, not the code's."""
    reference = manifest["reference"]
    assert reference["images"] == 2 * REFERENCE - round(reference["refused"] * 2 * REFERENCE)
    assert len(reference["probability"]) == len(reference["brightness"]) == reference["images"]
    assert reference["refused"] == pytest.approx(manifest["guard"]["refused"]["test"])
    client = api(clinician)
    answered = [upload(client, path.read_bytes()) == 200 for path in reference_files()]
    assert sum(answered) == reference["images"]
    recorded = list(Prediction.objects.order_by("id"))
    for name in ("probability", "guard_distance", "brightness", "contrast"):
        ours = [getattr(p, name) for p in recorded]
        assert np.allclose(ours, reference[name], atol=2e-4), name
    estimate = np.mean(
        [p.probability if p.label == "PNEUMONIA" else 1 - p.probability for p in recorded]
    )
    assert estimate == pytest.approx(reference["estimated_accuracy"], abs=1e-4)

    report = drift.served_report()
    assert report.reference_images == reference["images"] and report.predictions == len(recorded)
    signals = by_name(report)
    for name in drift.DISTRIBUTIONS:  # the very images (the reference keeps 4 decimals)
        assert signals[name].state == "ok" and signals[name].p_value > 0.99, signals[name]
    assert signals["pneumonia_share"].state == "ok"
    assert signals["estimated_accuracy"].state == "ok"
    assert signals["agreement"].state is None  # no clinician has said anything yet


def test_inverted_xrays_raise_the_alert(clinician):
    """Another kind of image (negatives of the same X-rays): the guard refuses many, and the
    features of those it lets through lie farther from the training images'. Brightness and
    contrast cannot see this shift (an X-ray's mean is near 0.5 either way)."""
    client = api(clinician)
    for path in reference_files():
        upload(client, encode(ImageOps.invert(Image.open(path).convert("L")), "PNG"))
    signals = by_name(drift.served_report())
    states = {name: signal.state for name, signal in signals.items()}
    assert states["guard_distance"] == "alert" and states["refusal_rate"] == "alert", states
    assert Refusal.objects.count() > 0.1 * 2 * REFERENCE


def test_states_follow_the_thresholds(clinician, manifest):
    rng = np.random.default_rng(0)
    version = "v-test"
    reference = {
        "images": 400,
        "refused": 0.0,
        "pneumonia_share": 0.5,
        "estimated_accuracy": 0.9,
        "accuracy": 0.9,
        "probability": rng.uniform(0, 1, 400).round(4).tolist(),
        "guard_distance": rng.gamma(4, 0.25, 400).round(4).tolist(),
        "brightness": rng.normal(0.5, 0.05, 400).round(4).tolist(),
        "contrast": rng.normal(0.2, 0.02, 400).round(4).tolist(),
    }
    for _ in range(drift.MIN_PREDICTIONS - 1):
        record(clinician, version, {"probability": float(rng.uniform(0, 1))})
    assert all(s.state is None for s in drift.report(version, reference).signals)

    Prediction.objects.all().delete()
    same = [
        {
            "probability": float(rng.choice([0.05, 0.95])),  # confident: estimated 95% right
            "guard_distance": float(rng.gamma(4, 0.25)),
            "brightness": float(rng.normal(0.5, 0.05)),
            "contrast": float(rng.normal(0.2, 0.02)),
        }
        for _ in range(drift.WINDOW)
    ]
    for values in same:
        record(clinician, version, values)
    signals = by_name(drift.report(version, reference))
    assert signals["brightness"].state == "ok" and signals["contrast"].state == "ok"
    assert signals["guard_distance"].state == "ok" and signals["pneumonia_share"].state == "ok"
    assert signals["estimated_accuracy"].state == "ok"
    assert signals["probability"].state == "alert"  # two spikes are not a uniform distribution

    # Darker images, all the same probability 0.6 (estimated 60% right, 30 points down):
    for _ in range(drift.WINDOW):
        record(clinician, version, {"probability": 0.6, "brightness": 0.4, "contrast": 0.2})
    signals = by_name(drift.report(version, reference))
    assert signals["brightness"].state == "alert" and signals["pneumonia_share"].state == "alert"
    assert signals["estimated_accuracy"].state == "alert"
    assert signals["estimated_accuracy"].value == pytest.approx(0.6)
    assert signals["guard_distance"].state is None  # recorded for none of the window's

    # Only the window counts: older predictions, other versions and synthetic traffic don't.
    old = timezone.now() - timedelta(days=1)
    for values in same:
        record(clinician, version, values, when=old)
        record(clinician, "v-other", values)
        record(clinician, version, values, synthetic=True)
    assert by_name(drift.report(version, reference))["brightness"].state == "alert"
    report = drift.report(version, reference)
    assert report.predictions == drift.WINDOW and report.worst == "alert"


def test_refusals_and_clinicians_disagreeing_are_signals(clinician, make_user):
    version = "v-test"
    reference = {"refused": 0.0, "accuracy": 0.9, "pneumonia_share": 0.5, "images": 100}
    predictions = [
        record(clinician, version, {"probability": p}) for p in [0.9, 0.1] * (drift.WINDOW // 2)
    ]
    signals = by_name(drift.report(version, reference))
    assert signals["refusal_rate"].state == "ok" and signals["refusal_rate"].value == 0
    assert signals["refusal_rate"].reference == drift.MIN_REFUSAL_SHARE
    fields = {"source": "api", "model_version": version, "image_sha256": "1" * 64}
    for _ in range(10):  # 10 refusals beside 200 predictions: 4.8%, against at least 1%
        Refusal.objects.create(
            user=clinician, reason="unlike_training", image_width=1, image_height=1, **fields
        )
    assert by_name(drift.report(version, reference))["refusal_rate"].state == "alert"

    for p in predictions[: drift.MIN_FEEDBACK]:  # 90% agree, as the test split's accuracy
        truth = p.label if p.pk % 10 else ("NORMAL" if p.label == "PNEUMONIA" else "PNEUMONIA")
        Feedback.objects.create(prediction=p, true_label=truth, consent=False)
    assert by_name(drift.report(version, reference))["agreement"].state == "ok"
    for p in predictions[drift.MIN_FEEDBACK : 3 * drift.MIN_FEEDBACK]:  # all corrected
        Feedback.objects.create(
            prediction=p,
            true_label="NORMAL" if p.label == "PNEUMONIA" else "PNEUMONIA",
            consent=True,
            image_name=f"{p.pk:064x}.png",
        )
    report = drift.report(version, reference)
    assert by_name(report)["agreement"].state == "alert" and report.feedback == 60
    assert report.feedback_ready == 40 and not report.retrain_ready


def test_a_bundle_without_a_reference_has_values_but_no_states(clinician):
    for p in [0.9, 0.1] * 50:
        record(clinician, "v-old", {"probability": p, "brightness": 0.5})
    report = drift.report("v-old", None)
    assert report.reference_images is None and report.worst is None
    assert all(s.state is None for s in report.signals)
    assert "no reference" in by_name(report)["brightness"].detail


def test_the_monitoring_page_and_the_metrics_show_the_states(clinician, staff, manifest):
    client = api(clinician)
    for path in reference_files():
        upload(client, path.read_bytes())
    html = logged_in(staff).get("/monitoring").content.decode()
    table = html.split('id="drift"')[1].split("</table>")[0]
    assert '<tr id="signal-brightness"><td>brightness</td><td class="state-ok">ok</td>' in table
    assert f"against the {manifest['reference']['images']} test images" in html

    from prometheus_client.parser import text_string_to_metric_families

    _, raw = ApiToken.issue(staff, "prometheus")
    body = Client(headers={"Authorization": f"Bearer {raw}"}).get("/metrics").content.decode()
    states = {
        s.labels["signal"]: s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
        if s.name == "xray_drift_state"
    }
    assert states["brightness"] == 0 and "agreement" not in states  # no feedback: no state
    assert set(states) <= set(drift.SIGNALS)


def test_the_tests_p_values_are_scipy_stats_own():
    from scipy.stats import binomtest, ks_2samp

    rng = np.random.default_rng(1)
    for shift in np.linspace(0, 1, 41):
        for n in (30, 57, 200):
            a, b = rng.normal(0, 1, 200), rng.normal(shift, 1, n)
            statistic, p = drift.ks_test(a.tolist(), b.tolist())
            theirs = ks_2samp(a, b, method="asymp")
            assert statistic == pytest.approx(theirs.statistic, rel=1e-12)
            if theirs.pvalue > 1e-3:
                assert p == pytest.approx(theirs.pvalue, rel=0.07), (shift, n)
            else:
                assert p < 2e-3, (shift, n, p, theirs.pvalue)
    for hits, n, p in ((0, 200, 0.01), (10, 210, 0.01), (18, 60, 0.9), (120, 200, 0.5)):
        for alternative in ("less", "greater"):
            expected = binomtest(hits, n, p, alternative).pvalue
            assert drift.binomial_test(hits, n, p, alternative) == pytest.approx(expected)
        # the smaller tail doubled: at most twice scipy's (which adds the other tail's cases
        # no likelier than the observed), and never far below it
        two_sided, theirs = drift.binomial_test(hits, n, p, "two-sided"), binomtest(hits, n, p)
        assert 0.9 * theirs.pvalue <= two_sided <= 2 * theirs.pvalue + 1e-12


def test_a_guard_that_refuses_everything_is_an_alert(clinician):
    """No prediction at all to date a window by: every refusal of the version counts."""
    fields = {"source": "api", "model_version": "v-test", "image_sha256": "1" * 64}
    for _ in range(drift.MIN_PREDICTIONS):
        Refusal.objects.create(
            user=clinician, reason="unlike_training", image_width=1, image_height=1, **fields
        )
    report = drift.report("v-test", {"refused": 0.0, "images": 100})
    assert report.predictions == 0 and report.refusals == drift.MIN_PREDICTIONS
    assert by_name(report)["refusal_rate"].state == "alert" and report.worst == "alert"


def test_the_api_gives_staff_the_report(clinician, staff, manifest):
    client = api(clinician)
    for path in reference_files()[:5]:
        upload(client, path.read_bytes())
    assert Client().get("/api/v1/drift").status_code == 401
    refused = client.get("/api/v1/drift")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "staff_only"
    answer = api(staff).get("/api/v1/drift")
    assert answer.status_code == 200
    body = answer.json()
    expected = drift.report_json(drift.served_report(), "http://testserver/monitoring")
    assert body == json.loads(json.dumps(expected))
    assert body["window"]["predictions"] == 5 and body["state"] is None  # too little traffic
    assert body["reference_images"] == manifest["reference"]["images"]
    assert [s["name"] for s in body["signals"]] == list(drift.SIGNALS)
