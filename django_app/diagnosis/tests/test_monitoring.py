"""The staff monitoring page: the numbers behind the charts, and the charts themselves."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from diagnosis import monitoring
from diagnosis.models import Feedback, Prediction
from diagnosis.tests.conftest import logged_in

pytestmark = pytest.mark.django_db


def predict(user, when, label, probability, version="v1", synthetic=False):
    return Prediction.objects.create(
        user=user,
        synthetic=synthetic,
        source="web",
        model_version=version,
        model_sha256="0" * 64,
        label=label,
        probability=probability,
        threshold=0.5,
        image_sha256="1" * 64,
        image_width=10,
        image_height=10,
        created_at=when,
    )


def test_summary_counts_volume_share_histogram_and_agreement(clinician):
    now = timezone.now()
    today = timezone.localdate()
    a = predict(clinician, now, "PNEUMONIA", 0.95)
    b = predict(clinician, now, "NORMAL", 0.05)
    c = predict(clinician, now - timedelta(days=2), "PNEUMONIA", 0.55, version="v2")
    predict(clinician, now - timedelta(days=40), "PNEUMONIA", 0.99)  # outside the window
    Feedback.objects.create(prediction=a, true_label="PNEUMONIA", consent=False)  # agrees
    Feedback.objects.create(prediction=b, true_label="PNEUMONIA", consent=False)  # disagrees
    Feedback.objects.create(prediction=c, true_label="PNEUMONIA", consent=False)  # agrees

    s = monitoring.summarize(days=7, today=today)
    assert s.days[-1] == today and len(s.per_day) == 7 and s.total == 3
    assert s.per_day[-1] == 2 and s.per_day[-3] == 1 and s.per_day[-2] == 0
    assert s.pneumonia_share[-1] == 0.5 and s.pneumonia_share[-3] == 1.0
    assert s.pneumonia_share[-2] is None
    assert s.histogram[0] == 1 and s.histogram[5] == 1 and s.histogram[9] == 1
    rates = {v.model_version: (v.feedback, v.agreed) for v in s.agreement}
    assert rates == {"v1": (2, 1), "v2": (1, 1)}


def test_monitoring_page_draws_the_four_charts_as_inline_svg(clinician, staff):
    predict(clinician, timezone.now(), "PNEUMONIA", 0.8)
    html = logged_in(staff).get("/monitoring?days=7").content.decode()
    for chart in ("chart-volume", "chart-share", "chart-histogram", "chart-agreement"):
        section = html.split(f'id="{chart}"')[1].split("</figure>")[0]
        assert "<svg" in section and "</svg>" in section, chart
    assert "The last 7 days: 1 prediction." in html
    assert "<script" not in html.split("<main")[1] and "style=" not in html.split("<main")[1]


def test_chart_labels_are_escaped(clinician, staff):
    p = predict(clinician, timezone.now(), "NORMAL", 0.1, version="<script>x</script>")
    Feedback.objects.create(prediction=p, true_label="NORMAL", consent=False)
    html = logged_in(staff).get("/monitoring").content.decode()
    assert "<script>x</script>" not in html and "&lt;script&gt;x&lt;/script&gt;" in html


def test_synthetic_predictions_stay_out_of_every_chart_and_are_counted_apart(clinician, staff):
    """The deploy's smoke test predicts on every release: none of it is drift."""
    now = timezone.now()
    real = predict(clinician, now, "NORMAL", 0.1)
    smoke = predict(staff, now, "PNEUMONIA", 0.97, synthetic=True)
    Feedback.objects.create(prediction=real, true_label="NORMAL", consent=False)
    Feedback.objects.create(prediction=smoke, true_label="NORMAL", consent=False)
    s = monitoring.summarize(days=7)
    assert s.total == 1 and s.synthetic == 1
    assert s.pneumonia_share[-1] == 0.0 and sum(s.histogram) == 1 and s.histogram[1] == 1
    assert [(v.feedback, v.agreed) for v in s.agreement] == [(1, 1)]
    html = logged_in(staff).get("/monitoring?days=7").content.decode()
    assert "1 prediction" in html and "and 1 synthetic, from smoke tests" in html


@pytest.mark.django_db(transaction=True)
def test_the_release_marks_the_documented_smoke_test_account_and_its_past_uploads():
    """Production's smoke-test account predates the flag: the migration puts it in the group
    and marks what it already uploaded, so the monitoring page is right from that release."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate([("diagnosis", "0005_held_item")])
    old = MigrationExecutor(connection).loader.project_state([("diagnosis", "0005_held_item")])
    OldPrediction = old.apps.get_model("diagnosis", "Prediction")  # noqa: N806
    smoke = get_user_model().objects.create_user("smoke-test", password="x")
    clinician = get_user_model().objects.create_user("dr_old", password="x")
    fields = dict(
        source="api",
        model_version="v0",
        model_sha256="0" * 64,
        label="NORMAL",
        probability=0.2,
        threshold=0.5,
        image_sha256="1" * 64,
        image_width=9,
        image_height=9,
    )
    OldPrediction.objects.create(user_id=smoke.pk, **fields)
    OldPrediction.objects.create(user_id=clinician.pk, **fields)
    executor = MigrationExecutor(connection)
    executor.migrate(latest)
    marked = dict(Prediction.objects.values_list("user__username", "synthetic"))
    assert marked == {"smoke-test": True, "dr_old": False}
    assert smoke.groups.filter(name="synthetic traffic").exists()
    assert not clinician.groups.exists()
