"""The ingest command on good and bad files, in a real git + DVC repository."""

from __future__ import annotations

import shutil
import sys

import pytest
import yaml
from PIL import Image

from pneumonia.data import list_images
from pneumonia.ingest import apply_plan, plan_ingest
from tests.conftest import DATASET, TINY_PARAMS, make_repo, run, tool_env


def unused_images(label: str, n: int, skip: int = 100):
    """Real train images that the small test dataset (first 20 per class) does not contain."""
    return sorted((DATASET / "train" / label).iterdir())[skip : skip + n]


@pytest.fixture
def new_batch(tmp_path, small_dataset):
    """A folder of new images: 3 good, and one of each kind of bad file."""
    batch = tmp_path / "batch"
    for label in ("NORMAL", "PNEUMONIA"):
        (batch / label).mkdir(parents=True)
    good = unused_images("NORMAL", 2) + unused_images("PNEUMONIA", 1)
    for path in good:
        shutil.copy(path, batch / path.parent.name / path.name)
    existing = sorted((small_dataset / "train" / "PNEUMONIA").iterdir())[0]
    shutil.copy(existing, batch / "PNEUMONIA" / "renamed_copy.jpeg")  # duplicate by content
    (batch / "NORMAL" / "truncated.jpeg").write_bytes(good[0].read_bytes()[:3000])
    (batch / "NORMAL" / "notes.jpeg").write_text("clinical notes, not an image")
    (batch / "COVID").mkdir()
    shutil.copy(unused_images("NORMAL", 1, skip=200)[0], batch / "COVID" / "IM-9999-0001.jpeg")
    return batch, good


def test_plan_sorts_good_duplicate_and_bad_files(new_batch, small_dataset):
    batch, good = new_batch
    plan = plan_ingest(batch, small_dataset)
    assert sorted(p.source.name for p in plan.add) == sorted(p.name for p in good)
    assert [str(p) for p, _ in plan.duplicates] == ["PNEUMONIA/renamed_copy.jpeg"]
    reasons = {str(p): r for p, r in plan.rejected}
    assert set(reasons) == {"NORMAL/truncated.jpeg", "NORMAL/notes.jpeg", "COVID/IM-9999-0001.jpeg"}
    assert "truncated" in reasons["NORMAL/truncated.jpeg"]
    assert "not an image" in reasons["NORMAL/notes.jpeg"]
    assert "class folder" in reasons["COVID/IM-9999-0001.jpeg"]


def test_new_image_of_a_known_patient_joins_that_patients_split(tmp_path, small_dataset):
    # IM-xxxx patients of the official val folder: a new image of one must go to val.
    val_image = sorted((small_dataset / "val" / "NORMAL").iterdir())[0]
    patient = val_image.name.rsplit("-", 1)[0]
    batch = tmp_path / "b" / "NORMAL"
    batch.mkdir(parents=True)
    image = Image.open(val_image).convert("L").rotate(3)
    image.save(batch / f"{patient}-0099.jpeg", quality=90)
    plan = plan_ingest(tmp_path / "b", small_dataset)
    assert [str(p.target) for p in plan.add] == [f"val/NORMAL/{patient}-0099.jpeg"]


def test_png_is_stored_as_jpeg_and_same_name_conflict_is_refused(tmp_path, small_dataset):
    batch = tmp_path / "b" / "PNEUMONIA"
    batch.mkdir(parents=True)
    source = unused_images("PNEUMONIA", 1)[0]
    Image.open(source).save(batch / "scan42.png")
    plan = plan_ingest(tmp_path / "b", small_dataset)
    apply_plan(plan, small_dataset)
    stored = small_dataset / "train" / "PNEUMONIA" / "scan42.jpeg"
    assert Image.open(stored).format == "JPEG"
    # Same name, different picture: refused, the stored file is untouched.
    before = stored.read_bytes()
    Image.open(unused_images("PNEUMONIA", 1, skip=300)[0]).save(batch / "scan42.png")
    again = plan_ingest(tmp_path / "b", small_dataset)
    assert not again.add and "already in train/PNEUMONIA" in again.rejected[0][1]
    assert stored.read_bytes() == before


def test_ingest_command_adds_files_and_records_a_new_data_version(tmp_path, new_batch):
    batch, good = new_batch
    repo = make_repo(tmp_path / "repo", tmp_path / "chest_xray", TINY_PARAMS)
    data = repo / "data" / "chest_xray"
    before_md5 = yaml.safe_load((repo / "chest_xray.dvc").read_text())["outs"][0]["md5"]
    before_count = len(list_images(data))

    result = run(
        [sys.executable, "-m", "pneumonia.ingest", str(batch)], repo, tool_env(), check=False
    )
    assert result.returncode == 1, result.stderr  # rejected files make the exit status 1
    out = result.stdout
    assert "added 3 image(s)" in out and "train  NORMAL +2  PNEUMONIA +1" in out
    assert "skipped 1 duplicate" in out and "rejected 3 file(s)" in out
    assert "notes.jpeg: This file is not an image" in out

    assert len(list_images(data)) == before_count + 3
    for path in good:
        assert (data / "train" / path.parent.name / path.name).read_bytes() == path.read_bytes()
    assert not list((repo / "data").glob(".ingest-*")), "staging folder left behind"
    after = yaml.safe_load((repo / "chest_xray.dvc").read_text())["outs"][0]
    assert after["md5"] != before_md5 and after["nfiles"] == before_count + 3
    assert (
        run(["dvc", "status", "chest_xray.dvc"], repo, tool_env())
        .stdout.strip()
        .startswith("Data and pipelines are up to date")
    )

    # Running it again changes nothing: everything good is now a duplicate.
    again = run(
        [sys.executable, "-m", "pneumonia.ingest", str(batch)], repo, tool_env(), check=False
    )
    assert "added 0 image(s)" in again.stdout and "skipped 4 duplicate(s)" in again.stdout
    assert yaml.safe_load((repo / "chest_xray.dvc").read_text())["outs"][0] == after


def test_dry_run_writes_nothing(tmp_path, new_batch, small_dataset):
    batch, _ = new_batch
    before = sorted(p.name for p in small_dataset.rglob("*"))
    result = run(
        [
            sys.executable,
            "-m",
            "pneumonia.ingest",
            str(batch),
            "--data-dir",
            str(small_dataset),
            "--dry-run",
        ],
        tmp_path,
        tool_env(),
        check=False,
    )
    assert "would add 3 image(s)" in result.stdout
    assert sorted(p.name for p in small_dataset.rglob("*")) == before


def test_folder_without_files_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run(
        [sys.executable, "-m", "pneumonia.ingest", str(tmp_path / "empty")],
        tmp_path,
        tool_env(),
        check=False,
    )
    assert result.returncode == 2 and "no files" in result.stderr


def test_ids_link_images_only_within_the_namespace_ingested_into(tmp_path, small_dataset):
    """The public release numbers personNNN separately in train and test. A new training
    image named like a test patient stays in train (and is reported); the test split only
    grows with --split test."""
    test_patient = sorted((small_dataset / "test" / "PNEUMONIA").iterdir())[0].name.split("_")[0]
    for same_number in small_dataset.glob(f"train/*/{test_patient}_*"):
        same_number.unlink()  # in the real data person100 exists in both: keep it in test only
    train_patient = sorted((small_dataset / "train" / "PNEUMONIA").iterdir())[0].name.split("_")[0]
    batch = tmp_path / "b" / "PNEUMONIA"
    batch.mkdir(parents=True)
    sources = unused_images("PNEUMONIA", 2)
    shutil.copy(sources[0], batch / f"{test_patient}_bacteria_9001.jpeg")
    shutil.copy(sources[1], batch / f"{train_patient}_virus_9002.jpeg")

    plan = plan_ingest(tmp_path / "b", small_dataset)
    assert {str(p.target) for p in plan.add} == {
        f"train/PNEUMONIA/{test_patient}_bacteria_9001.jpeg",
        f"train/PNEUMONIA/{train_patient}_virus_9002.jpeg",
    }
    assert plan.counts()["test"] == {"NORMAL": 0, "PNEUMONIA": 0}
    assert [(str(p), "also in test" in r) for p, r in plan.other_namespace] == [
        (f"PNEUMONIA/{test_patient}_bacteria_9001.jpeg", True)
    ]

    into_test = plan_ingest(tmp_path / "b", small_dataset, "test")
    assert {str(p.target) for p in into_test.add} == {
        f"test/PNEUMONIA/{test_patient}_bacteria_9001.jpeg",
        f"test/PNEUMONIA/{train_patient}_virus_9002.jpeg",
    }
    assert [(str(p), "also in train" in r) for p, r in into_test.other_namespace] == [
        (f"PNEUMONIA/{train_patient}_virus_9002.jpeg", True)
    ]


def test_a_feedback_export_goes_to_the_site_split_even_for_known_patients(tmp_path, small_dataset):
    """--split site: a hospital's labelled cases, for calibration only; a name that matches a
    training patient is reported, never followed into train."""
    batch = tmp_path / "export"
    for label in ("NORMAL", "PNEUMONIA"):
        (batch / label).mkdir(parents=True)
    known = sorted((small_dataset / "train" / "PNEUMONIA").iterdir())[0]
    image = Image.open(known).convert("L").rotate(4)
    same_patient = known.name.split("_")[0] + "_bacteria_99999.jpeg"
    image.save(batch / "PNEUMONIA" / same_patient, quality=90)
    shutil.copy(unused_images("NORMAL", 1)[0], batch / "NORMAL" / "fb-0a1b2c.png")
    plan = plan_ingest(batch, small_dataset, "site")
    assert {p.target.parts[0] for p in plan.add} == {"site"}
    assert plan.counts()["site"] == {"NORMAL": 1, "PNEUMONIA": 1}
    assert [p.name for p, _ in plan.other_namespace] == [same_patient]
