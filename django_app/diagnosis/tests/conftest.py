"""Fixtures for the web app's tests: a real exported bundle served from MODEL_DIR."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from diagnosis import inference
from pneumonia.package import app_venv
from tests.bundles import calibrated_model, make_bundle
from tests.conftest import SAMPLES, require_data

APP = Path(__file__).resolve().parents[2]
SIZE = 64
METRICS = {
    "threshold": 0.5,
    "accuracy": 0.9,
    "sensitivity": 0.96,
    "specificity": 0.81,
    "precision": 0.9,
    "f1": 0.93,
    "roc_auc": 0.95,
    "n": 316,
    "tp": 193,
    "fp": 22,
    "tn": 93,
    "fn": 8,
}


@pytest.fixture(scope="session")
def torch_model():
    return calibrated_model(SIZE)


@pytest.fixture(scope="session")
def bundle_dir(torch_model, tmp_path_factory):
    return make_bundle(torch_model, SIZE, tmp_path_factory.mktemp("served") / "bundle", METRICS)


@pytest.fixture(autouse=True)
def served_model(settings, bundle_dir):
    """Every test serves the test bundle; tests may point MODEL_DIR elsewhere and reset."""
    settings.MODEL_DIR = bundle_dir
    inference.reset()
    yield
    inference.reset()


@pytest.fixture(scope="session")
def heroku_venv() -> Path:
    """A venv with only django_app/requirements.txt, as Heroku's Python buildpack makes it."""
    return app_venv(APP, APP.parent / ".cache")


@pytest.fixture(scope="session")
def samples() -> list:
    require_data()
    return sorted(SAMPLES.rglob("*.jpeg"))


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


PASSWORD = "Ch3st-xray-check!"


@pytest.fixture
def make_user(db):
    from django.contrib.auth import get_user_model

    def make(username: str, staff: bool = False):
        return get_user_model().objects.create_user(
            username=username, password=PASSWORD, is_staff=staff
        )

    return make


@pytest.fixture
def clinician(make_user):
    return make_user("dr_ada")


@pytest.fixture
def other_clinician(make_user):
    return make_user("dr_bob")


@pytest.fixture
def staff(make_user):
    return make_user("head_nurse", staff=True)


def logged_in(user):
    """A test client with a session for ``user`` and a fresh API token as its bearer."""
    from django.test import Client

    from diagnosis.models import ApiToken

    _, raw = ApiToken.issue(user, "tests")
    client = Client(headers={"Authorization": f"Bearer {raw}"})
    client.force_login(user)
    return client


@pytest.fixture(autouse=True)
def feedback_storage(settings, tmp_path):
    """Consented images go to a fresh folder per test."""
    settings.FEEDBACK_STORAGE = str(tmp_path / "feedback-images")
    return tmp_path / "feedback-images"


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """A real PACS (tests/orthanc.py), shared by the tests of the DICOMweb paths."""
    from tests.orthanc import running_orthanc

    with running_orthanc(tmp_path_factory.mktemp("pacs")) as server:
        yield server


from tests.conftest import s3_server  # noqa: E402,F401,F811  (a real S3 endpoint: moto_server)


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):  # noqa: F811 (the fixture imported above)
    """A fresh bucket on the local S3 endpoint, with the AWS_* variables boto3 reads."""
    import secrets

    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    name = f"feedback-{secrets.token_hex(4)}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name
