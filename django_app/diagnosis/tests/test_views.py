"""Pages and the JSON API with real uploads, good and bad, through the form and the API."""

from __future__ import annotations

import io
import os
import tempfile

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from diagnosis import inference
from diagnosis.tests.conftest import encode

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(clinician):
    """Signed in, and carrying the clinician's API token: pages and API both answer."""
    from diagnosis.tests.conftest import logged_in

    return logged_in(clinician)


def upload(name: str, data: bytes, content_type: str = "image/jpeg") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type=content_type)


def sample_bytes(samples, i=0) -> bytes:
    return samples[i].read_bytes()


def bad_inputs(samples) -> dict[str, tuple[str, bytes, int, str]]:
    """name -> (file name, bytes, expected status, words the message must contain)."""
    jpeg = sample_bytes(samples)
    pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="500" height="500"><rect/></svg>'
    bomb = encode(Image.new("1", (9000, 9000)), "PNG", optimize=True)
    return {
        "empty": ("xray.jpg", b"", 400, "empty"),
        "not an image": ("xray.jpg", b"hello, this is text" * 50, 400, "not an image"),
        "truncated jpeg": ("xray.jpg", jpeg[: len(jpeg) // 3], 400, "damaged or incomplete"),
        "pdf renamed .jpg": ("scan.jpg", pdf, 400, "PDF or a document"),
        "svg renamed .jpg": ("scan.jpg", svg, 400, "not an image"),
        "over 10 MB": ("big.jpg", jpeg + b"\0" * (10 * 2**20), 413, "larger than 10 MB"),
        "decompression bomb": ("bomb.png", bomb, 400, "more than any X-ray"),
        "tiny 10x10": ("tiny.png", encode(Image.new("L", (10, 10), 128), "PNG"), 400, "too small"),
        "gif": ("x.gif", encode(Image.new("L", (64, 64)), "GIF"), 400, "GIF"),
    }


def good_variants(samples) -> dict[str, bytes]:
    """Uploads that are odd but valid X-rays: each must be predicted."""
    gray = Image.open(samples[0]).convert("L")
    sixteen = np.asarray(gray, np.uint16) * 257
    exif = Image.Exif()
    exif[0x0112] = 8
    return {
        "16-bit png": encode(Image.fromarray(sixteen), "PNG"),
        "cmyk jpeg": encode(gray.convert("CMYK"), "JPEG"),
        "rgba png": encode(gray.convert("RGBA"), "PNG"),
        "rgb jpeg": encode(gray.convert("RGB"), "JPEG"),
        "exif-rotated jpeg": encode(gray.rotate(-90, expand=True), "JPEG", exif=exif),
    }


def test_upload_page_has_a_form_with_csrf(client):
    page = client.get("/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'enctype="multipart/form-data"' in html and "csrfmiddlewaretoken" in html
    assert "Decision support, not a diagnosis" in html and 'accept=".jpg' in html


def test_form_upload_of_a_real_xray_shows_the_result(client, samples):
    page = client.post("/", {"image": upload("x.jpeg", sample_bytes(samples))})
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="label">NORMAL<' in html or 'id="label">PNEUMONIA<' in html
    assert html.count("data:image/png;base64,") == 1  # the original, lossless
    assert html.count("data:image/jpeg;base64,") == 1  # the heat map
    assert ('id="heatmap-folded"' in html) == ('id="label">NORMAL<' in html)
    assert "sensitivity 0.960" in html and "specificity 0.810" in html
    assert "Decision support, not a diagnosis" in html


@pytest.mark.parametrize("label", ["PNEUMONIA", "NORMAL"])
def test_the_heat_map_is_shown_for_pneumonia_and_folded_away_for_normal(label):
    """A NORMAL answer's map of pneumonia evidence points at nothing (its peak lies outside the
    chest for most normal images: docs/model-quality.md): folded, with the reason."""
    from types import SimpleNamespace

    from django.template.loader import render_to_string

    html = render_to_string(
        "diagnosis/result.html",
        {
            "result": SimpleNamespace(label=label),
            "prediction": SimpleNamespace(pk=7, label=label, user_id=None),
            "model": {"version": "abc"},
            "card": {"created_at": "2026-11-26", "metrics": {"test": {}}},
            "percent": 50.0,
            "threshold_percent": 40.0,
            "original_uri": "data:image/png;base64,AA==",
            "heatmap_uri": "data:image/jpeg;base64,AA==",
        },
    )
    assert html.count('id="heatmap"') == 1
    folded = html.split('id="heatmap-folded"', 1)
    if label == "PNEUMONIA":
        assert len(folded) == 1 and "brighter = more evidence for pneumonia" in html
    else:
        assert "<details>" in folded[1] and 'id="heatmap"' in folded[1]
        assert "marks no finding" in html and "brighter = more evidence" not in html


BAD = [
    "empty",
    "not an image",
    "truncated jpeg",
    "pdf renamed .jpg",
    "svg renamed .jpg",
    "over 10 MB",
    "decompression bomb",
    "tiny 10x10",
    "gif",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_uploads_get_a_friendly_message_on_the_form(client, samples, case):
    name, data, status, words = bad_inputs(samples)[case]
    page = client.post("/", {"image": upload(name, data)})
    assert page.status_code == status
    html = page.content.decode()
    assert 'role="alert"' in html and words in html
    assert "Traceback" not in html and "Exception" not in html


@pytest.mark.parametrize("case", BAD)
def test_bad_uploads_get_a_json_4xx_from_the_api(client, samples, case):
    name, data, status, words = bad_inputs(samples)[case]
    response = client.post("/api/v1/predictions", {"image": upload(name, data)})
    assert response.status_code == status
    body = response.json()
    assert words in body["error"]["message"] and body["error"]["code"]


@pytest.mark.parametrize(
    "case", ["16-bit png", "cmyk jpeg", "rgba png", "rgb jpeg", "exif-rotated jpeg"]
)
def test_odd_but_valid_images_are_predicted_like_the_original(client, samples, case):
    data = good_variants(samples)[case]
    reference = client.post(
        "/api/v1/predictions", {"image": upload("a.jpeg", sample_bytes(samples))}
    )
    response = client.post("/api/v1/predictions", {"image": upload("b.png", data)})
    assert response.status_code == 200, response.content
    # Re-encoding changes pixels slightly; the answer must stay essentially the same.
    assert response.json()["probability"] == pytest.approx(
        reference.json()["probability"], abs=0.05
    )
    form = client.post("/", {"image": upload("b.png", data)})
    assert form.status_code == 200 and 'id="label">' in form.content.decode()


def test_api_returns_the_prediction_and_a_working_heatmap_link(client, samples):
    response = client.post(
        "/api/v1/predictions", {"image": upload("x.jpeg", sample_bytes(samples, 3))}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["label"] in ("NORMAL", "PNEUMONIA") and 0 <= body["probability"] <= 1
    assert body["threshold"] == 0.5 and (body["label"] == "PNEUMONIA") == (
        body["probability"] >= 0.5
    )
    model = inference.get_model()
    assert body["model"] == {
        "name": model.manifest["name"],
        "version": model.version,
        "sha256": model.sha256,
    }
    path = body["heatmap_url"].split("testserver", 1)[1]
    heatmap = client.get(path)
    assert heatmap.status_code == 200 and heatmap["Content-Type"] == "image/jpeg"
    shown = Image.open(io.BytesIO(heatmap.content))
    assert shown.format == "JPEG" and shown.mode == "RGB" and not shown.info.get("exif")
    assert heatmap["Cache-Control"] == "private, no-store"
    assert client.get("/api/v1/heatmaps/not-a-token.jpg").json()["error"]["code"] == "not_found"


def test_api_errors_are_json(client):
    assert client.put("/api/v1/predictions").status_code == 405
    assert client.put("/api/v1/predictions").json()["error"]["code"] == "method_not_allowed"
    missing = client.post("/api/v1/predictions", {})
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "no_file"
    unknown = client.get("/api/v1/nothing-here")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_health_reports_the_loaded_model(client, bundle_dir):
    body = client.get("/health").json()
    manifest = inference.get_model().manifest
    assert body["status"] == "ok" and body["model_loaded"] is True
    assert body["sha256"] == manifest["onnx_sha256"] and body["version"] == manifest["version"]


def test_model_card_shows_data_version_metrics_and_limits(client):
    html = client.get("/model").content.decode()
    manifest = inference.get_model().manifest
    assert manifest["data"]["md5"] in html and manifest["onnx_sha256"] in html
    assert "Intended use" in html and "Limits" in html and "0.810" in html


def test_without_a_bundle_the_app_says_so_and_refuses_predictions(
    client, settings, tmp_path, samples
):
    settings.MODEL_DIR = tmp_path / "no-bundle"
    inference.reset()
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["model_loaded"] is False
    assert client.get("/model").status_code == 503
    api = client.post("/api/v1/predictions", {"image": upload("x.jpeg", sample_bytes(samples))})
    assert api.status_code == 503 and api.json()["error"]["code"] == "model_unavailable"
    assert "not available" in client.get("/").content.decode()


def test_uploads_never_touch_the_disk(client, samples, settings):
    assert settings.FILE_UPLOAD_HANDLERS == [
        "django.core.files.uploadhandler.MemoryFileUploadHandler"
    ]
    before = set(os.listdir(tempfile.gettempdir()))
    for i in range(3):
        client.post("/", {"image": upload("x.jpeg", sample_bytes(samples, i))})
        client.post("/api/v1/predictions", {"image": upload("x.jpeg", sample_bytes(samples, i))})
    assert set(os.listdir(tempfile.gettempdir())) - before == set()


def test_dicom_upload_through_the_form_and_the_api(client, samples):
    from diagnosis.tests.test_inference import dicom_bytes

    gray = np.asarray(Image.open(samples[0]).convert("L"), np.float64)
    data = dicom_bytes(4095 - np.round(gray / 255 * 4095), "MONOCHROME1")
    reference = client.post(
        "/api/v1/predictions", {"image": upload("a.jpeg", sample_bytes(samples))}
    )
    api = client.post(
        "/api/v1/predictions", {"image": upload("scan.dcm", data, "application/dicom")}
    )
    assert api.status_code == 200
    assert api.json()["probability"] == pytest.approx(reference.json()["probability"], abs=0.05)
    form = client.post("/", {"image": upload("scan.dcm", data, "application/dicom")})
    assert form.status_code == 200 and 'id="label">' in form.content.decode()
