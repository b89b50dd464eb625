"""Uploads that are not chest X-rays: refused with a clear message and no probability, and the
refusal kept in the history (issue 15), with a bundle whose guard the export stage fitted."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from diagnosis import inference
from diagnosis.models import Prediction, Refusal
from diagnosis.tests.conftest import METRICS, SIZE, encode, logged_in
from tests.bundles import make_bundle

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="session")
def bundle_dir(torch_model, tmp_path_factory):
    """Here the served test bundle has its guard (conftest's served_model serves it)."""
    out = tmp_path_factory.mktemp("guarded") / "bundle"
    return make_bundle(torch_model, SIZE, out, METRICS, guard=True)


def photo() -> bytes:
    rng = np.random.default_rng(1)
    return encode(Image.fromarray((rng.random((300, 400, 3)) * 255).astype(np.uint8)), "JPEG")


def grey() -> bytes:
    return encode(Image.new("L", (800, 600), 128), "PNG")


def post(client, url: str, data: bytes, case: str = ""):
    image = SimpleUploadedFile("upload.jpeg", data, content_type="image/jpeg")
    return client.post(url, {"image": image, "case_reference": case})


def test_the_page_refuses_a_colour_photo_and_the_history_shows_it(clinician):
    client = logged_in(clinician)
    page = post(client, "/", photo(), case="bed 4")
    assert page.status_code == 422
    text = page.content.decode()
    assert "does not look like a chest X-ray" in text and "colour image" in text
    assert "%" not in text.split("does not look like")[1].split("</")[0]  # no probability
    assert Prediction.objects.count() == 0
    refusal = Refusal.objects.get()
    assert (refusal.user, refusal.reason, refusal.source) == (clinician, "colour", "web")
    assert refusal.case_reference == "bed 4" and (refusal.image_width, refusal.image_height) == (
        400,
        300,
    )
    history = client.get("/history").content.decode()
    assert 'id="refusals"' in history and "a colour image" in history and "bed 4" in history


def test_the_api_refuses_with_a_code_and_the_refusal_id(clinician):
    client = logged_in(clinician)
    response = post(client, "/api/v1/predictions", grey())
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "not_a_chest_xray" and "nearly uniform" in error["message"]
    assert error["refusal"] == {"id": Refusal.objects.get().pk, "reason": "uniform"}
    assert "probability" not in response.json()


def test_a_real_xray_is_still_answered(clinician, samples):
    client = logged_in(clinician)
    response = post(client, "/api/v1/predictions", samples[0].read_bytes())
    assert response.status_code == 200, response.content
    assert 0 <= response.json()["probability"] <= 1 and Refusal.objects.count() == 0


def test_others_see_only_their_own_refusals_staff_see_all(make_user):
    ada, bob, staff = make_user("ada"), make_user("bob"), make_user("lead", staff=True)
    post(logged_in(ada), "/", grey(), case="ada-case")
    assert "ada-case" not in logged_in(bob).get("/history").content.decode()
    assert "ada-case" in logged_in(staff).get("/history").content.decode()


def test_the_model_card_says_what_the_guard_refuses(clinician):
    card = logged_in(clinician).get("/model").content.decode()
    assert 'id="guard"' in card and "Real chest X-rays refused" in card
    assert "validation split" in card
    assert "% of the test split" not in card  # this bundle was exported without one
    catalogue = inference.get_model().manifest["guard"]
    shown = f"{100 * catalogue['refused']['not_chest_xray']:.1f}% of a catalogue of"
    assert f"Images that are not chest X-rays refused: {shown} {catalogue['catalogue_images']}" in (
        card
    )


def test_a_bundle_exported_before_the_catalogue_shows_only_its_xray_rates(
    clinician, bundle_dir, settings, tmp_path
):
    """The champion on main was exported before export measured the catalogue: its card says
    nothing of it rather than a blank rate."""
    older = tmp_path / "bundle"
    shutil.copytree(bundle_dir, older)
    manifest = json.loads((older / "model.json").read_text())
    del manifest["guard"]["catalogue_images"], manifest["guard"]["refused"]["not_chest_xray"]
    (older / "model.json").write_text(json.dumps(manifest))
    settings.MODEL_DIR = older
    inference.reset()
    card = logged_in(clinician).get("/model").content.decode()
    inference.reset()
    assert "Real chest X-rays refused" in card and "not chest X-rays refused" not in card


def test_the_worker_warm_up_does_not_trip_the_guard():
    inference.warm_up()  # a blank input: the guard would refuse it as an upload
    assert inference.get_model().guard is not None
