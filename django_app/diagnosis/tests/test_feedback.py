"""Feedback: confirm or correct, consent to keep the image (metadata stripped, named by its
hash), and every refusal: unknown label, someone else's prediction, twice, consent too late."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from diagnosis.models import Feedback, HeldItem, Prediction
from diagnosis.tests.conftest import encode, logged_in

pytestmark = pytest.mark.django_db


def predict_api(client, data: bytes, name="x.jpeg", content_type="image/jpeg"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile(name, data, content_type=content_type)
    response = client.post("/api/v1/predictions", {"image": upload})
    assert response.status_code == 200, response.content
    return response.json()


def feedback_api(client, pid, **body):
    return client.post(f"/api/v1/predictions/{pid}/feedback", body, content_type="application/json")


def stored_files(folder):
    return sorted(folder.glob("*.png")) if folder.exists() else []


def test_confirming_through_the_result_page(clinician, samples, feedback_storage):
    client = logged_in(clinician)
    with open(samples[0], "rb") as f:
        page = client.post("/", {"image": f})
    html = page.content.decode()
    assert 'id="feedback-form"' in html and 'id="consent"' in html
    prediction = Prediction.objects.get(user=clinician)
    response = client.post(f"/predictions/{prediction.pk}/feedback", {"verdict": "confirm"})
    assert response.status_code == 302
    feedback = Feedback.objects.get(prediction=prediction)
    assert feedback.true_label == prediction.label and feedback.agrees and not feedback.consent
    assert feedback.image_name == "" and stored_files(feedback_storage) == []
    detail = client.get(f"/predictions/{prediction.pk}").content.decode()
    assert "agrees" in detail and 'id="feedback-form"' not in detail  # no second form
    assert not HeldItem.objects.filter(
        key=f"held-image:{prediction.pk}"
    ).exists()  # not needed any more: dropped


def test_correcting_with_consent_keeps_a_metadata_free_copy_named_by_its_hash(
    clinician, samples, feedback_storage
):
    client = logged_in(clinician)
    gray = Image.open(samples[1]).convert("L")
    exif = Image.Exif()
    exif[0x013B] = "Jane Doe"  # Artist
    exif[0x010E] = "PATIENT Jane Doe, born 2019-04-02, MRN 99887766"  # ImageDescription
    icc = b"\0\0\0\x30fake profile of Jane Doe's scanner" + b"\0" * 16
    data = encode(gray, "JPEG", exif=exif, quality=95, icc_profile=icc)
    assert data.count(b"Jane Doe") == 3 and "icc_profile" in Image.open(io.BytesIO(data)).info
    made = predict_api(client, data)
    wrong = "NORMAL" if made["label"] == "PNEUMONIA" else "PNEUMONIA"
    response = feedback_api(client, made["id"], true_label=wrong, consent=True)
    assert response.status_code == 201
    assert response.json()["feedback"] == {
        **response.json()["feedback"],
        "true_label": wrong,
        "consent": True,
        "agrees": False,
    }
    (stored,) = stored_files(feedback_storage)
    content = stored.read_bytes()
    assert stored.name == hashlib.sha256(content).hexdigest() + ".png"
    assert b"Jane Doe" not in content and b"99887766" not in content
    image = Image.open(io.BytesIO(content))
    assert image.format == "PNG" and image.mode == "L"
    assert not {"exif", "icc_profile", "dpi"} & set(image.info)
    assert max(image.size) <= 512  # the display copy, more than the model's 224 px
    # It is the X-ray: the same picture as the upload, scaled.
    original = np.asarray(gray.resize(image.size), np.float64)
    assert np.abs(np.asarray(image, np.float64) - original).mean() < 6
    assert Feedback.objects.get(prediction_id=made["id"]).image_name == stored.name


def test_dicom_tags_never_reach_the_stored_image(clinician, samples, feedback_storage):
    from diagnosis.tests.test_inference import dicom_bytes

    gray = np.asarray(Image.open(samples[0]).convert("L"), np.float64)
    data = dicom_bytes(np.round(gray / 255 * 4095), "MONOCHROME2")
    assert b"Test^Patient" in data
    client = logged_in(clinician)
    made = predict_api(client, data, "scan.dcm", "application/dicom")
    assert feedback_api(client, made["id"], true_label="NORMAL", consent=True).status_code == 201
    (stored,) = stored_files(feedback_storage)
    content = stored.read_bytes()
    assert b"Test^Patient" not in content and b"DICM" not in content
    assert Image.open(io.BytesIO(content)).format == "PNG"


@pytest.mark.parametrize("label", ["COVID", "", None, "normal", 1])
def test_unknown_labels_are_refused(clinician, samples, label):
    client = logged_in(clinician)
    made = predict_api(client, samples[0].read_bytes())
    response = feedback_api(client, made["id"], true_label=label)
    assert response.status_code == 400 and response.json()["error"]["code"] == "unknown_label"
    assert "NORMAL, PNEUMONIA" in response.json()["error"]["message"]
    page = client.post(f"/predictions/{made['id']}/feedback", {"true_label": "COVID"})
    assert page.status_code == 400 and "must be one of" in page.content.decode()
    assert not Feedback.objects.exists()


def test_feedback_twice_is_refused_and_the_first_stands(clinician, samples):
    client = logged_in(clinician)
    made = predict_api(client, samples[0].read_bytes())
    assert feedback_api(client, made["id"], true_label="NORMAL").status_code == 201
    again = feedback_api(client, made["id"], true_label="PNEUMONIA", consent=False)
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_given"
    page = client.post(f"/predictions/{made['id']}/feedback", {"true_label": "PNEUMONIA"})
    assert page.status_code == 409 and "already given" in page.content.decode()
    assert Feedback.objects.get().true_label == "NORMAL"


def test_consent_after_the_image_is_gone_is_refused_but_feedback_without_it_works(
    clinician, samples, feedback_storage
):
    client = logged_in(clinician)
    made = predict_api(client, samples[0].read_bytes())
    HeldItem.objects.filter(key=f"held-image:{made['id']}").delete()  # what the hold's timeout does
    late = feedback_api(client, made["id"], true_label="NORMAL", consent=True)
    assert late.status_code == 410 and late.json()["error"]["code"] == "image_expired"
    assert "without consent" in late.json()["error"]["message"]
    assert not Feedback.objects.exists() and stored_files(feedback_storage) == []
    assert feedback_api(client, made["id"], true_label="NORMAL").status_code == 201


def test_bad_feedback_bodies(clinician, samples):
    client = logged_in(clinician)
    made = predict_api(client, samples[0].read_bytes())
    url = f"/api/v1/predictions/{made['id']}/feedback"
    not_json = client.post(url, "label=NORMAL", content_type="application/json")
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "bad_json"
    consent = feedback_api(client, made["id"], true_label="NORMAL", consent="yes")
    assert consent.status_code == 400 and consent.json()["error"]["code"] == "bad_consent"
    missing = feedback_api(client, 999999, true_label="NORMAL")
    assert missing.status_code == 404
    assert client.get(url).status_code == 405


def test_a_failing_store_records_nothing(clinician, samples, settings, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the image folder should be")
    settings.FEEDBACK_STORAGE = str(blocker)
    client = logged_in(clinician)
    made = predict_api(client, samples[0].read_bytes())
    response = feedback_api(client, made["id"], true_label="NORMAL", consent=True)
    assert (
        response.status_code == 503
        and "nothing was recorded" in response.json()["error"]["message"]
    )
    assert not Feedback.objects.exists()
    assert HeldItem.objects.filter(
        key=f"held-image:{made['id']}"
    ).exists()  # so a retry can still consent


def test_consented_images_go_to_s3_and_come_back_for_export(
    clinician, samples, settings, s3_bucket, tmp_path
):
    import boto3

    settings.FEEDBACK_STORAGE = f"s3://{s3_bucket}/feedback"
    client = logged_in(clinician)
    made = predict_api(client, samples[0].read_bytes())
    assert feedback_api(client, made["id"], true_label="NORMAL", consent=True).status_code == 201
    name = Feedback.objects.get().image_name
    body = boto3.client("s3").get_object(Bucket=s3_bucket, Key=f"feedback/{name}")["Body"].read()
    assert hashlib.sha256(body).hexdigest() + ".png" == name
    # The export reads it back from S3.
    from diagnosis.export import export_to_folder

    record, folder = export_to_folder(tmp_path / "exports", created_by="test")
    (exported,) = folder.rglob("*.png")
    assert record.image_count == 1 and exported.read_bytes() == body
