"""History: what each prediction records, pagination and filters, on pages and the API."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.utils import timezone

from diagnosis import inference
from diagnosis.models import Prediction
from diagnosis.tests.conftest import logged_in

pytestmark = pytest.mark.django_db


def test_a_prediction_records_who_when_model_label_and_image_hash_not_the_image(clinician, samples):
    client = logged_in(clinician)
    data = samples[2].read_bytes()
    before = timezone.now()
    with open(samples[2], "rb") as f:
        body = client.post("/api/v1/predictions", {"image": f}).json()
    p = Prediction.objects.get(pk=body["id"])
    model = inference.get_model()
    assert p.user == clinician and p.source == "api" and p.created_at >= before
    assert (p.model_version, p.model_sha256) == (model.version, model.sha256)
    assert p.label == body["label"] and p.probability == pytest.approx(body["probability"])
    assert p.image_sha256 == hashlib.sha256(data).hexdigest()
    from PIL import Image

    assert (p.image_width, p.image_height) == Image.open(samples[2]).size
    # Nothing in the row can hold an image.
    fields = {f.name: f.get_internal_type() for f in Prediction._meta.get_fields() if f.concrete}
    assert "BinaryField" not in fields.values()
    with open(samples[2], "rb") as f:
        page = client.post("/", {"image": f})
    assert page.status_code == 200
    assert Prediction.objects.filter(user=clinician, source="web").count() == 1


def make_predictions(user, n: int, start=None, label_every: int = 3):
    start = start or timezone.now() - timedelta(days=n)
    return Prediction.objects.bulk_create(
        Prediction(
            user=user,
            source="api",
            model_version="v1",
            model_sha256="0" * 64,
            label="PNEUMONIA" if i % label_every == 0 else "NORMAL",
            probability=i / n,
            threshold=0.5,
            image_sha256=f"{i:064x}",
            image_width=100,
            image_height=100,
            created_at=start + timedelta(days=i),
        )
        for i in range(n)
    )


def test_history_is_paginated_newest_first(clinician):
    make_predictions(clinician, 30)
    client = logged_in(clinician)
    first = client.get("/history").content.decode()
    assert "30 predictions" in first and "Page 1 of 2" in first
    assert first.count("<tr><td><a href=") == 25
    newest = Prediction.objects.filter(user=clinician).order_by("-created_at").first()
    assert first.index(f'/predictions/{newest.pk}"') < first.index("</tbody>")
    second = client.get("/history?page=2").content.decode()
    assert second.count("<tr><td><a href=") == 5 and 'rel="prev"' in second
    api = client.get("/api/v1/predictions").json()
    assert api["count"] == 30 and api["pages"] == 2 and len(api["results"]) == 25
    assert api["results"][0]["id"] == newest.pk and api["previous"] is None
    rest = client.get(api["next"].split("testserver", 1)[1]).json()
    assert len(rest["results"]) == 5 and rest["next"] is None


def test_history_filters_by_label_and_date(clinician):
    rows = make_predictions(clinician, 30)
    client = logged_in(clinician)
    pneumonia = client.get("/api/v1/predictions?label=PNEUMONIA").json()
    assert pneumonia["count"] == 10
    assert {r["label"] for r in pneumonia["results"]} == {"PNEUMONIA"}
    day = rows[10].created_at.date()
    ranged = client.get(
        f"/api/v1/predictions?date_from={day}&date_to={day + timedelta(days=4)}"
    ).json()
    assert sorted(r["id"] for r in ranged["results"]) == [r.pk for r in rows[10:15]]
    both = client.get(f"/history?label=PNEUMONIA&date_from={day}").content.decode()
    expected = sum(1 for r in rows[10:] if r.label == "PNEUMONIA")
    assert f"{expected} predictions" in both
    # The filters survive paging links.
    make_predictions(clinician, 60, label_every=1)
    page = client.get("/history?label=PNEUMONIA").content.decode()
    assert "label=PNEUMONIA&amp;page=2" in page


@pytest.mark.parametrize(
    "query, words",
    [
        ("label=COVID", "Unknown label"),
        ("date_from=yesterday", "not a date"),
        ("date_to=2026-13-45", "not a date"),
    ],
)
def test_bad_filters_are_explained(clinician, query, words):
    client = logged_in(clinician)
    api = client.get(f"/api/v1/predictions?{query}")
    assert api.status_code == 400 and words in api.json()["error"]["message"]
    page = client.get(f"/history?{query}")
    assert page.status_code == 400 and words in page.content.decode()


def test_staff_see_everyones_history_and_can_filter_by_clinician(clinician, other_clinician, staff):
    make_predictions(clinician, 4)
    make_predictions(other_clinician, 3)
    assert logged_in(clinician).get("/api/v1/predictions").json()["count"] == 4
    assert logged_in(other_clinician).get("/api/v1/predictions").json()["count"] == 3
    boss = logged_in(staff)
    assert boss.get("/api/v1/predictions").json()["count"] == 7
    assert boss.get("/api/v1/predictions?user=dr_bob").json()["count"] == 3
    # The user filter means nothing to non-staff: they still see only their own.
    assert logged_in(clinician).get("/api/v1/predictions?user=dr_bob").json()["count"] == 4
