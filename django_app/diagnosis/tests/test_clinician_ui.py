"""What a clinician hit: consent before the verdict, verdict buttons that look different,
charts that say what they show, and an optional case reference to find a case again."""

from __future__ import annotations

import re
from pathlib import Path

from diagnosis.models import Prediction
from diagnosis.tests.conftest import logged_in


def upload(client, samples, **fields):
    with open(samples[0], "rb") as f:
        return client.post("/", {"image": f, **fields})


def test_consent_comes_before_the_verdict_buttons_which_look_different(clinician, samples):
    html = upload(logged_in(clinician), samples).content.decode()
    form = html[html.index('id="feedback-form"') :]
    assert form.index('id="consent"') < form.index('id="confirm"')
    confirm = re.search(r'<button[^>]*id="confirm"[^>]*>', form).group(0)
    correct = re.search(r'<button[^>]*id="correct-\w+"[^>]*>', form).group(0)
    assert 'class="verdict-confirm"' in confirm and 'class="verdict-correct"' in correct
    css = (Path(__file__).parents[1] / "static" / "diagnosis" / "app.css").read_text()
    assert ".verdict-confirm {" in css and ".verdict-correct {" in css


def test_every_monitoring_chart_has_a_title_and_named_axes(staff, clinician, samples):
    upload(logged_in(clinician), samples)
    html = logged_in(staff).get("/monitoring").content.decode()
    charts = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    assert len(charts) == 4
    for chart in charts:
        title = re.search(r'class="chart-title">([^<]+)<', chart).group(1)
        x_axis = re.search(r'class="x-axis">([^<]+)<', chart).group(1)
        y_axis = re.search(r'class="y-axis">([^<]+)<', chart).group(1)
        assert title and x_axis and y_axis, chart[:200]


def test_an_optional_case_reference_finds_the_case_again(clinician, samples):
    client = logged_in(clinician)
    page = client.get("/").content.decode()
    assert 'name="case_reference"' in page and "Never a patient's name" in page
    upload(client, samples, case_reference="  ACC 2026-0042 ")
    upload(client, samples)  # none: it is never required
    stored = Prediction.objects.order_by("pk")
    assert [p.case_reference for p in stored] == ["ACC 2026-0042", ""]
    found = client.get("/history", {"case": "acc 2026"}).content.decode()
    assert "ACC 2026-0042" in found and found.count('href="/predictions/') == 1
    api = client.get(f"/api/v1/predictions/{stored[0].pk}").json()
    assert api["case_reference"] == "ACC 2026-0042"


def test_a_too_long_case_reference_is_refused_before_anything_is_stored(clinician, samples):
    response = upload(logged_in(clinician), samples, case_reference="x" * 41)
    assert response.status_code == 400 and "40 at most" in response.content.decode()
    assert not Prediction.objects.exists()


def test_the_result_and_the_prediction_page_name_the_case_and_read_as_percentages(
    clinician, samples
):
    client = logged_in(clinician)
    result = upload(client, samples, case_reference="ACC-7").content.decode()
    assert 'id="case-reference">Case ACC-7<' in result
    prediction = Prediction.objects.get()
    page = client.get(f"/predictions/{prediction.pk}").content.decode()
    assert '<dd id="case-reference">ACC-7</dd>' in page
    percent = round(prediction.probability * 100, 1)
    threshold = round(prediction.threshold * 100, 1)
    shown = re.search(r'<dd id="probability">([^<]+)</dd>', page).group(1)
    assert shown.startswith(f"{percent}% (decision threshold {threshold}%: {prediction.label} ")
    assert f"{prediction.threshold:.3f}" not in page, "no bare fraction beside the percentage"


def test_the_history_says_whether_the_clinician_agreed(clinician, samples):
    client = logged_in(clinician)
    upload(client, samples)
    upload(client, samples)
    first, second = Prediction.objects.order_by("pk")
    client.post(f"/predictions/{first.pk}/feedback", {"verdict": "confirm"})
    other = "NORMAL" if second.label == "PNEUMONIA" else "PNEUMONIA"
    client.post(f"/predictions/{second.pk}/feedback", {"true_label": other})
    cells = re.findall(r"<tr><td><a[^>]*>(\d+)</a>.*?<td>([^<]*)</td></tr>", _history(client))
    assert dict(cells) == {str(first.pk): "agreed", str(second.pk): f"corrected to {other}"}


def _history(client) -> str:
    return client.get("/history").content.decode()


def test_the_upload_form_knows_the_limit_and_its_error_has_a_place(clinician):
    page = logged_in(clinician).get("/").content.decode()
    assert f'data-max-bytes="{10 * 2**20}"' in page
    assert re.search(r'<div class="error" role="alert" id="upload-error" hidden>', page)
