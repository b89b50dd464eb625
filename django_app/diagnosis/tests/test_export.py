"""Export of consented feedback images into the training data: layout, once only, atomic, the
admin's zip, and the whole loop through the pipeline's ingest into a new data version."""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from django.core.management import CommandError, call_command

from diagnosis.models import DatasetExport, Feedback
from diagnosis.tests.conftest import logged_in
from diagnosis.tests.test_feedback import feedback_api, predict_api

pytestmark = pytest.mark.django_db


@pytest.fixture
def consented(clinician, samples):
    """Three predictions with feedback: two with consent (NORMAL, PNEUMONIA), one without."""
    client = logged_in(clinician)
    made = [predict_api(client, samples[i].read_bytes()) for i in range(3)]
    for m, label, consent in zip(
        made, ["NORMAL", "PNEUMONIA", "NORMAL"], [True, True, False], strict=True
    ):
        assert feedback_api(client, m["id"], true_label=label, consent=consent).status_code == 201
    return client


def export(out: Path) -> str:
    buffer = io.StringIO()
    call_command("export_feedback", str(out), stdout=buffer)
    return buffer.getvalue()


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_export_writes_the_ingest_layout_once(consented, tmp_path, samples, clinician):
    out = tmp_path / "exports"
    message = export(out)
    (folder,) = [p for p in out.iterdir()]
    assert f"exported 2 images to {folder}" in message and "pneumonia.ingest" in message
    files = files_under(folder)
    assert [f.split("/")[0] for f in files] == ["NORMAL", "PNEUMONIA"]
    assert all(f.split("/")[1].startswith("fb-") and f.endswith(".png") for f in files)
    record = DatasetExport.objects.get()
    assert record.name == folder.name and record.image_count == 2
    assert Feedback.objects.filter(exported_in=record).count() == 2

    assert "nothing to export" in export(out)  # nothing twice
    assert [p.name for p in out.iterdir()] == [folder.name]
    # New consent after the export: the next export holds only that one.
    made = predict_api(consented, samples[4].read_bytes())
    feedback_api(consented, made["id"], true_label="PNEUMONIA", consent=True)
    export(out)
    newest = max(out.iterdir(), key=lambda p: p.stat().st_mtime)
    assert len(files_under(newest)) == 1 and DatasetExport.objects.count() == 2


def test_an_export_that_fails_half_way_leaves_nothing_and_can_run_again(
    consented, tmp_path, feedback_storage
):
    out = tmp_path / "exports"
    second = Feedback.objects.filter(consent=True).order_by("pk")[1]
    kept = feedback_storage / second.image_name
    moved = tmp_path / "aside.png"
    kept.rename(moved)  # the store loses the second image: the export fails on it
    with pytest.raises(CommandError, match="nothing was exported"):
        export(out)
    assert list(out.iterdir()) == []  # no final folder, no partial one
    assert not DatasetExport.objects.exists()
    assert not Feedback.objects.filter(exported_in__isnull=False).exists()
    moved.rename(kept)
    assert "exported 2 images" in export(out)


def test_a_killed_exports_leftovers_are_cleared(consented, tmp_path):
    out = tmp_path / "exports"
    leftover = out / ".partial-abc123" / "NORMAL"
    leftover.mkdir(parents=True)
    (leftover / "fb-half.png").write_bytes(b"\x89PNG half")
    export(out)
    assert [p.name.startswith("feedback-") for p in out.iterdir()] == [True]


def test_staff_export_a_zip_from_the_admin(consented, staff, clinician, tmp_path):
    from django.test import Client

    admin = Client()
    admin.force_login(staff)
    ids = list(Feedback.objects.values_list("pk", flat=True))
    response = admin.post(
        "/admin/diagnosis/feedback/", {"action": "export_consented", "_selected_action": ids}
    )
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(response.content)).namelist()
    record = DatasetExport.objects.get()
    assert len(names) == 2 and all(n.startswith(f"{record.name}/") for n in names)
    assert record.created_by == "head_nurse"
    again = admin.post(
        "/admin/diagnosis/feedback/",
        {"action": "export_consented", "_selected_action": ids},
        follow=True,
    )
    assert "Nothing to export" in again.content.decode()
    # A clinician who is not staff cannot reach the action at all.
    plain = Client()
    plain.force_login(clinician)
    denied = plain.post(
        "/admin/diagnosis/feedback/", {"action": "export_consented", "_selected_action": ids}
    )
    assert denied.status_code == 302 and "/admin/login/" in denied["Location"]


@pytest.mark.slow
def test_feedback_to_export_to_ingest_makes_a_new_data_version(consented, tmp_path):
    """The loop: consented feedback -> export -> `python -m pneumonia.ingest` -> new
    chest_xray.dvc hash with the images in the training split."""
    from tests.conftest import copy_subset, make_repo, run, tool_env

    dataset = copy_subset(tmp_path / "chest_xray", {"train": 4, "val": 2, "test": 2})
    repo = make_repo(tmp_path / "repo", dataset, {})
    before = yaml.safe_load((repo / "chest_xray.dvc").read_text())["outs"][0]["md5"]
    export(tmp_path / "exports")
    (folder,) = list((tmp_path / "exports").iterdir())
    result = run(
        [sys.executable, "-m", "pneumonia.ingest", str(folder)], repo, tool_env(), check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    after = yaml.safe_load((repo / "chest_xray.dvc").read_text())["outs"][0]
    assert after["md5"] != before and after["nfiles"] == 4 * 2 + 2 * 2 + 2 * 2 + 2
    added = sorted(
        p.relative_to(repo / "data" / "chest_xray").as_posix()
        for p in (repo / "data" / "chest_xray").rglob("fb-*")
    )
    assert [a.rsplit("/", 1)[0] for a in added] == ["train/NORMAL", "train/PNEUMONIA"]
    # Exporting again adds nothing, and ingesting the same folder again adds nothing either.
    assert "nothing to export" in export(tmp_path / "exports")
    again = run(
        [sys.executable, "-m", "pneumonia.ingest", str(folder)], repo, tool_env(), check=False
    )
    assert yaml.safe_load((repo / "chest_xray.dvc").read_text())["outs"][0]["md5"] == after["md5"]
    assert again.returncode == 0
