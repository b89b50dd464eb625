"""DICOMweb with a real PACS: Debian's Orthanc (tests/orthanc.py) pushes studies to the app
(STOW-RS) or the worker follows its change feed (WADO-RS), and the result objects the app
stores back are read from Orthanc as a viewer would (dicomweb-client), by pydicom, and by
dciodvfy (dicom3tools)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from django.core.management import call_command
from django.db import connection
from django.test import Client

from diagnosis import dicomweb, pacs
from diagnosis.models import DicomInstance, PacsSite, Prediction, Refusal
from diagnosis.tests.conftest import APP, METRICS, SIZE, logged_in
from tests.bundles import make_bundle
from tests.hostile_files import deflated_bomb, dicom
from tests.orthanc import PATIENT, radiograph


@pytest.fixture(scope="session")
def bundle_dir(torch_model, tmp_path_factory):
    """The served test bundle with its guard, which refuses what is not a chest X-ray."""
    return make_bundle(
        torch_model, SIZE, tmp_path_factory.mktemp("pacs-model") / "b", METRICS, guard=True
    )


def make_site(orthanc, name: str = "ward-pacs") -> tuple[PacsSite, str]:
    out = io.StringIO()
    call_command(
        "add_pacs_site",
        name,
        dicomweb_url=orthanc.dicomweb,
        orthanc_url=orthanc.url,
        stdout=out,
    )
    token = re.search(r"shown once\): (\S+)", out.getvalue())[1]
    return PacsSite.objects.get(name=name), token


@pytest.fixture
def site(db, orthanc):
    return make_site(orthanc)


@pytest.fixture(scope="session")
def xrays(samples, bundle_dir):
    """Sample X-rays the guarded test model answers for once made DICOM (it refuses some)."""
    from pneumonia import serving

    model, answered = serving.Bundle(bundle_dir), []
    for path in samples:
        try:
            model.predict(serving.read_image(radiograph(path)))
        except serving.NotAChestXray:
            continue
        answered.append(path)
    assert len(answered) >= 6, "the test model refuses most samples"
    return answered[:6]


def stow(token: str, instances: list[bytes], path: str = "/dicomweb/studies"):
    body, content_type = dicomweb.join_related(instances)
    client = Client(headers={"Authorization": f"Bearer {token}"})
    return client.post(path, body, content_type=content_type)


def viewer(orthanc) -> DICOMwebClient:
    return DICOMwebClient(url=orthanc.dicomweb.rstrip("/"))


def result_series(orthanc, study_uid: str) -> list[pydicom.Dataset]:
    """The app's result objects in ``study_uid``, as Orthanc serves them."""
    client = viewer(orthanc)
    found = []
    for series in client.search_for_series(study_uid):
        if series.get("00080060", {}).get("Value") == ["OT"]:
            uid = series["0020000E"]["Value"][0]
            found += client.retrieve_series(study_uid, uid)
    return found


def uids(data: bytes) -> tuple[str, str, str]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def assert_valid_dicom(ds: pydicom.Dataset, tmp_path) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy is not installed: run `sudo make system-deps` (dicom3tools)")
    path = tmp_path / "result.dcm"
    ds.save_as(path)
    checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    errors = [line for line in checked.stderr.splitlines() if line.startswith("Error")]
    assert not errors, checked.stderr


def test_a_study_pushed_by_orthanc_is_answered_in_the_same_study(
    transactional_db, orthanc, live_server, xrays, tmp_path
):
    """Orthanc's own STOW-RS client sends a stored study to the app with the site's token; the
    Secondary Capture it gets back sits in the same study, beside the image, and is valid."""
    site, token = make_site(orthanc, "push-pacs")
    source = radiograph(xrays[-1])
    study_uid, series_uid, sop_uid = uids(source)
    stored = orthanc.store(source)
    orthanc.request(
        "PUT",
        "dicom-web/servers/xray",
        {
            "Url": f"{live_server.url}/dicomweb/",
            "HttpHeaders": {"Authorization": f"Bearer {token}"},
            "ChunkedTransfers": False,  # sizes in the header, checked before reading
        },
    )
    orthanc.request("POST", "dicom-web/servers/xray/stow", {"Resources": [stored["ParentStudy"]]})

    record = DicomInstance.objects.get(site=site, sop_instance_uid=sop_uid)
    assert record.outcome == "classified" and record.result_stored_at is not None
    assert record.prediction.source == "pacs" and record.prediction.user == site.user
    (result,) = result_series(orthanc, study_uid)
    assert result.SOPClassUID == pacs.SECONDARY_CAPTURE
    assert result.SOPInstanceUID == record.result_sop_instance_uid != sop_uid
    assert result.SeriesInstanceUID not in (series_uid, "")
    assert (result.PatientName, result.PatientID) == (PATIENT["PatientName"], PATIENT["PatientID"])
    assert result.AccessionNumber == PATIENT["AccessionNumber"]
    assert result.SourceImageSequence[0].ReferencedSOPInstanceUID == sop_uid
    assert pacs.DISCLAIMER in result.SeriesDescription and result.BurnedInAnnotation == "YES"
    label = record.prediction.label
    assert f"{label}: probability of pneumonia {record.prediction.probability:.2f}" in (
        result.DerivationDescription
    )
    assert result.pixel_array.ndim == 3 and result.pixel_array.shape[2] == 3
    assert_valid_dicom(result, tmp_path)


def test_a_resend_is_answered_from_the_record_and_classified_once(site, orthanc, xrays):
    _, token = site
    source = radiograph(xrays[0])
    study_uid, _, sop_uid = uids(source)
    first, second = stow(token, [source]), stow(token, [source])
    assert first.status_code == second.status_code == 200, first.content
    assert first.json() == second.json()
    (entry,) = first.json()["00081199"]["Value"]
    assert entry["00081155"]["Value"] == [sop_uid] and "00081196" not in entry
    assert Prediction.objects.filter(source="pacs").count() == 1
    assert DicomInstance.objects.count() == 1
    assert len(result_series(orthanc, study_uid)) == 1


@pytest.mark.parametrize(
    ("elements", "reason"),
    [
        ({"modality": "CT"}, "modality CT"),
        ({"body_part": "KNEE"}, "body part KNEE"),
        ({"view": "LL"}, "view position LL"),
        ({"body_part": None, "view": None}, "neither BodyPartExamined nor ViewPosition"),
    ],
)
def test_instances_the_model_does_not_read_are_acknowledged_and_recorded_as_skipped(
    site, orthanc, xrays, elements, reason
):
    _, token = site
    source = radiograph(xrays[0], **elements)
    answer = stow(token, [source])
    assert answer.status_code == 200, answer.content
    (entry,) = answer.json()["00081199"]["Value"]
    assert entry["00081196"]["Value"] == [dicomweb.ELEMENTS_DISCARDED]
    (record,) = DicomInstance.objects.all()
    assert record.outcome == "skipped" and reason in record.reason
    assert not Prediction.objects.exists() and record.result_sop_instance_uid == ""
    assert result_series(orthanc, uids(source)[0]) == []


def test_an_image_the_guard_refuses_gets_a_note_and_no_probability(site, orthanc, xrays):
    _, token = site
    import numpy as np

    flat = np.full((256, 256), 1000, np.uint16).tobytes()
    source = dicom(
        256,
        256,
        flat,
        Modality="CR",
        BodyPartExamined="CHEST",
        StudyInstanceUID=pydicom.uid.generate_uid(),
        SeriesInstanceUID=pydicom.uid.generate_uid(),
    )
    answer = stow(token, [source])
    assert answer.status_code == 200, answer.content
    (record,) = DicomInstance.objects.all()
    assert record.outcome == "refused" and record.refusal.reason == "uniform"
    assert not Prediction.objects.exists()
    (note,) = result_series(orthanc, uids(source)[0])
    assert "No AI result for this image" in note.DerivationDescription
    assert "probability" not in note.DerivationDescription


def test_a_result_the_pacs_could_not_take_is_stored_by_the_next_resend(site, orthanc, xrays):
    site, token = site
    reachable = site.dicomweb_url
    site.dicomweb_url = "http://127.0.0.1:9/dicom-web/"  # nothing listens there
    site.save()
    source = radiograph(xrays[1])
    assert stow(token, [source]).status_code == 200  # the instance itself was taken
    record = DicomInstance.objects.get()
    assert record.result_stored_at is None and "could not be reached" in record.result_error

    site.dicomweb_url = reachable
    site.save()
    assert stow(token, [source]).status_code == 200
    record.refresh_from_db()
    assert record.result_stored_at is not None and record.result_error == ""
    assert len(result_series(orthanc, uids(source)[0])) == 1
    assert Prediction.objects.count() == 1


def test_hostile_stow_requests_get_clear_answers(site, clinician, settings, xrays):
    pacs_site, token = site
    good = radiograph(xrays[0])
    body, content_type = dicomweb.join_related([good])
    anonymous = Client().post("/dicomweb/studies", body, content_type=content_type)
    assert anonymous.status_code == 401
    not_a_site = logged_in(clinician).post("/dicomweb/studies", body, content_type=content_type)
    assert not_a_site.status_code == 403 and "PACS site" in not_a_site.json()["error"]["message"]
    form = Client(headers={"Authorization": f"Bearer {token}"}).post(
        "/dicomweb/studies", {"image": io.BytesIO(good)}
    )
    assert form.status_code == 415 and "multipart/related" in form.json()["error"]["message"]
    out = io.StringIO()
    call_command("add_pacs_site", pacs_site.name, "--new-token", stdout=out)
    renewed = re.search(r"shown once\): (\S+)", out.getvalue())[1]
    pacs_site.user.api_tokens.get(hint=token[:10]).revoke()
    assert stow(token, [good]).status_code == 401  # revoked in the admin
    token = renewed

    settings.DICOMWEB_MAX_INSTANCES = 2
    many = stow(token, [good] * 3)
    assert many.status_code == 413 and "StowMaxInstances" in many.json()["error"]["message"]
    settings.MAX_UPLOAD_BYTES = 512 * 1024  # the request may have 1 MB more: its envelope
    large = stow(token, [radiograph(xrays[0], side=2000)])  # 2-8 MB
    assert large.status_code == 413 and "StowMaxSize" in large.json()["error"]["message"]
    settings.MAX_UPLOAD_BYTES = 10 * 2**20

    pdf = b"%PDF-1.7\n" + b"0" * 4000
    answer = stow(token, [pdf, deflated_bomb(20000, 20000)])
    assert answer.status_code == 409, answer.content
    failures = [e["00081197"]["Value"][0] for e in answer.json()["00081198"]["Value"]]
    assert failures == [dicomweb.CANNOT_UNDERSTAND, dicomweb.OUT_OF_RESOURCES]

    chest = {"Modality": "CR", "BodyPartExamined": "CHEST"}
    frames = dicom(64, 64, NumberOfFrames=2, **chest)
    other_study = stow(token, [good], path="/dicomweb/studies/1.2.3.4")
    assert other_study.status_code == 409
    mixed = stow(token, [frames, good])
    assert mixed.status_code == 200, mixed.content
    unreadable = DicomInstance.objects.get(outcome="unreadable")
    assert "several frames" in unreadable.reason
    assert DicomInstance.objects.filter(outcome="classified").count() == 1


def test_no_patient_identifier_reaches_the_database_or_the_logs(site, xrays, caplog):
    _, token = site
    caplog.set_level("DEBUG")
    sources = [radiograph(xrays[0]), radiograph(xrays[1], modality="CT"), b"not dicom"]
    assert stow(token, sources).status_code == 202
    secrets = [v for v in PATIENT.values() if len(v) > 1]
    study_uids = [uids(s)[0] for s in sources[:2]]
    logged = caplog.text
    for value in secrets + study_uids:
        assert value not in logged
    rows = []
    for model in (DicomInstance, Prediction, Refusal, PacsSite):
        rows += [json.dumps(list(r), default=str) for r in model.objects.values_list()]
    stored = "\n".join(rows)
    assert rows and not [v for v in secrets if v in stored]
    assert "PatientName" not in {f.name for f in DicomInstance._meta.get_fields()}


def test_the_worker_answers_each_new_radiograph_of_the_feed_once(site, orthanc, xrays):
    site, _ = site
    studies = [radiograph(xrays[2]), radiograph(xrays[3]), radiograph(xrays[4], modality="CT")]
    for data in studies:
        orthanc.store(data)
    call_command("pacs_worker", site.name, "--once", stdout=io.StringIO())
    records = DicomInstance.objects.all()
    assert sorted(r.outcome for r in records) == ["classified", "classified"]
    for data in studies[:2]:
        assert len(result_series(orthanc, uids(data)[0])) == 1
    assert result_series(orthanc, uids(studies[2])[0]) == []  # a CT: not even retrieved

    call_command("pacs_worker", site.name, "--once", stdout=io.StringIO())  # its results
    site.refresh_from_db()
    assert site.changes_seen == orthanc.last_change()
    assert DicomInstance.objects.count() == 2 and Prediction.objects.count() == 2


def test_a_worker_killed_mid_batch_resumes_losing_and_repeating_nothing(
    transactional_db, orthanc, xrays, bundle_dir
):
    site, _ = make_site(orthanc, "restart-pacs")
    batch = [radiograph(path) for path in xrays for _ in range(2)]  # 12 new instances
    for data in batch:
        orthanc.store(data)
    database = connection.settings_dict
    if connection.vendor == "sqlite":  # the app suite also runs on SQLite (test_deploy.py)
        url = f"sqlite:///{database['NAME']}"
    else:
        url = (
            f"postgres://{database['USER']}:{database['PASSWORD'] or ''}@"
            f"{database['HOST'] or '127.0.0.1'}:{database['PORT'] or 5432}/{database['NAME']}"
        )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "diagnosis.tests.settings",
        "DATABASE_URL": url,
        "MODEL_DIR": str(bundle_dir),
        "PYTHONPATH": f"{APP.parent}{os.pathsep}{APP}",
    }
    command = [sys.executable, "manage.py", "pacs_worker", site.name]
    worker = subprocess.Popen([*command, "--poll", "0.2"], cwd=APP, env=env)
    try:
        deadline = time.monotonic() + 600
        while DicomInstance.objects.filter(site=site).count() < 3:
            assert worker.poll() is None and time.monotonic() < deadline, "the worker stopped"
            time.sleep(0.05)
        worker.send_signal(signal.SIGKILL)  # no chance to tidy up
        worker.wait()
    finally:
        if worker.poll() is None:
            worker.kill()
    assert DicomInstance.objects.filter(site=site).count() < len(batch)
    subprocess.run([*command, "--once"], cwd=APP, env=env, check=True, timeout=600)

    records = DicomInstance.objects.filter(site=site)
    assert sorted(r.sop_instance_uid for r in records) == sorted(uids(d)[2] for d in batch)
    assert all(r.outcome == "classified" for r in records)
    assert Prediction.objects.filter(user=site.user).count() == len(batch)
    for data in batch:
        (result,) = [
            r
            for r in result_series(orthanc, uids(data)[0])
            if r.SourceImageSequence[0].ReferencedSOPInstanceUID == uids(data)[2]
        ]
        assert (
            result.SOPInstanceUID
            == records.get(sop_instance_uid=uids(data)[2]).result_sop_instance_uid
        )
