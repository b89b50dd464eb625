"""The staff monitoring page: the numbers behind the charts, and the charts themselves."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from diagnosis import monitoring
from diagnosis.models import Feedback, Prediction
from diagnosis.tests.conftest import logged_in

pytestmark = pytest.mark.django_db


def predict(user, when, label, probability, version="v1"):
    return Prediction.objects.create(
        user=user,
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
