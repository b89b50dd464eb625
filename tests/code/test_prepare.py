"""Patient-grouped splitting and the prepare stage's handling of bad data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pneumonia.data import ImageRecord, content_hash, list_images
from pneumonia.prepare import EmptySplitError, assign_splits, in_validation, prepare
from tests.conftest import DATASET, copy_subset, require_data


def records_for(names: list[tuple[str, str, str]]) -> list[ImageRecord]:
    return [
        ImageRecord(path=Path(f"/x/{s}/{label}/{n}"), split=s, label=label) for s, label, n in names
    ]


def test_real_train_patients_never_straddle_train_and_val():
    require_data()
    records = [r for r in list_images(DATASET) if r.split in ("train", "val")]
    hashes = [content_hash(r.path.read_bytes()) for r in records]
    split_of, _ = assign_splits(records, hashes, val_fraction=0.15, seed=42)
    splits_per_patient: dict[str, set] = {}
    for record, split in zip(records, split_of, strict=True):
        if split is not None:
            splits_per_patient.setdefault(record.patient, set()).add(split)
    assert len(splits_per_patient) > 1000
    assert all(len(s) == 1 for s in splits_per_patient.values())
    val_share = sum(s == {"val"} for s in splits_per_patient.values()) / len(splits_per_patient)
    assert 0.12 < val_share < 0.20  # about val_fraction of patients (plus the official 16)


def test_identical_images_are_linked_and_kept_once():
    records = records_for(
        [
            ("train", "PNEUMONIA", "person1_bacteria_1.jpeg"),
            ("train", "PNEUMONIA", "person2_bacteria_2.jpeg"),  # same bytes as person1's
            ("train", "PNEUMONIA", "person2_bacteria_3.jpeg"),
            ("train", "NORMAL", "IM-0001-0001.jpeg"),  # same bytes as a test image
            ("test", "NORMAL", "IM-0500-0001.jpeg"),
        ]
    )
    hashes = ["a", "a", "b", "t", "t"]
    split_of, dropped = assign_splits(records, hashes, val_fraction=0.5, seed=0)
    # person1 and person2 are one group: same split for all three of their images...
    assert split_of[0] in ("train", "val") and split_of[2] == split_of[0]
    # ...but the duplicate bytes are kept once; the copy of a test image is dropped.
    assert split_of[1] is None and split_of[3] is None and split_of[4] == "test"
    assert {d["file"] for d in dropped} == {
        "train/PNEUMONIA/person2_bacteria_2.jpeg",
        "train/NORMAL/IM-0001-0001.jpeg",
    }


def test_same_patient_number_in_test_and_train_is_not_linked():
    records = records_for(
        [
            ("train", "PNEUMONIA", "person5_virus_1.jpeg"),
            ("test", "PNEUMONIA", "person5_bacteria_9.jpeg"),
        ]
    )
    split_of, dropped = assign_splits(records, ["a", "b"], val_fraction=0.5, seed=0)
    assert split_of[1] == "test" and split_of[0] in ("train", "val") and not dropped


def test_validation_assignment_is_stable_as_patients_are_added():
    before = {f"person{i}": in_validation(f"person{i}", 0.2, seed=7) for i in range(500)}
    # Adding patients changes nothing for the existing ones (a hash, not a shuffle).
    after = {f"person{i}": in_validation(f"person{i}", 0.2, seed=7) for i in range(1000)}
    assert all(after[p] == v for p, v in before.items())
    assert 0.15 < sum(after.values()) / len(after) < 0.25


def test_prepare_reports_bad_files_and_continues(small_dataset):
    bad = small_dataset / "train" / "NORMAL"
    (bad / "notes.jpeg").write_text("not an image")
    good = sorted(bad.iterdir())[0]
    (bad / "truncated.jpeg").write_bytes(good.read_bytes()[:2000])
    splits, report = prepare(
        small_dataset,
        image_size=32,
        val_fraction=0.2,
        seed=1,
        out_dir=small_dataset.parent / "prepared",
    )
    assert {r["file"] for r in report.rejected} == {
        "train/NORMAL/notes.jpeg",
        "train/NORMAL/truncated.jpeg",
    }
    total = sum(len(s.labels) for s in splits.values())
    assert total == 60 - len(report.duplicates_dropped)
    assert splits["train"].images.shape[1:] == (32, 32) and splits["train"].images.dtype == np.uint8
    assert set(splits["test"].files) == {
        f"test/{p.parent.name}/{p.name}" for p in (small_dataset / "test").rglob("*.jpeg")
    }


def test_empty_split_is_fatal_with_a_clear_message_and_keeps_the_previous_output(small_dataset):
    out = small_dataset.parent / "prepared"
    before, _ = prepare(small_dataset, image_size=32, val_fraction=0.2, seed=1, out_dir=out)
    written = {p.name: p.read_bytes() for p in out.iterdir()}
    for path in (small_dataset / "test" / "NORMAL").iterdir():
        path.write_bytes(b"%PDF-1.4 renamed")
    with pytest.raises(EmptySplitError, match="split 'test' has no usable NORMAL image.*ingest"):
        prepare(small_dataset, image_size=32, val_fraction=0.2, seed=1, out_dir=out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == written
    assert sorted(p.name for p in small_dataset.parent.iterdir()) == ["chest_xray", "prepared"]


def test_prepared_images_are_memory_mapped_not_loaded(small_dataset):
    splits, _ = prepare(
        small_dataset, image_size=32, val_fraction=0.2, seed=1, out_dir=small_dataset.parent / "p"
    )
    for split in splits.values():
        assert isinstance(split.images, np.memmap) and not split.images.flags.writeable
    assert sorted(p.name for p in (small_dataset.parent / "p").iterdir()) == [
        f"{s}{suffix}" for s in ("test", "train", "val") for suffix in (".npz", "_images.npy")
    ]


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(EmptySplitError, match="dvc pull"):
        prepare(tmp_path / "nothing", 32, val_fraction=0.2, seed=1, out_dir=tmp_path / "p")


def test_official_val_folder_goes_to_validation(tmp_path):
    data = copy_subset(tmp_path / "d", {"train": 10, "val": 2, "test": 2})
    splits, _ = prepare(data, image_size=32, val_fraction=0.01, seed=1, out_dir=tmp_path / "p")
    official_val = {f"val/{p.parent.name}/{p.name}" for p in (data / "val").rglob("*.jpeg")}
    assert official_val <= set(splits["val"].files)
    shutil.rmtree(data)


def test_no_progress_bar_is_written_where_stderr_is_not_a_terminal(small_dataset, capfd):
    """A CI log gets lines, not thousands of carriage-returned bar updates."""
    prepare(
        small_dataset,
        image_size=32,
        val_fraction=0.2,
        seed=1,
        out_dir=small_dataset.parent / "prepared",
    )
    err = capfd.readouterr().err
    assert "img/s" not in err and "\r" not in err


def add_site(dataset: Path, per_class: int = 3) -> list[str]:
    """A site folder: later test images (not in the subset) as a hospital's own cases."""
    names = []
    for label in ("NORMAL", "PNEUMONIA"):
        folder = dataset / "site" / label
        folder.mkdir(parents=True)
        for path in sorted((DATASET / "test" / label).iterdir())[-per_class:]:
            shutil.copy(path, folder / f"fb-{path.name}")
            names.append(f"site/{label}/fb-{path.name}")
    return names


def test_a_site_folder_becomes_its_own_split_never_trained_on(small_dataset):
    names = add_site(small_dataset)
    # a site case identical to a training image is dropped: calibration cases must be new
    train_image = sorted((small_dataset / "train" / "NORMAL").iterdir())[0]
    shutil.copy(train_image, small_dataset / "site" / "NORMAL" / "fb-copy.jpeg")
    out = small_dataset.parent / "p"
    splits, report = prepare(small_dataset, 32, 0.2, seed=1, out_dir=out)
    assert sorted(splits["site"].files) == sorted(names)
    assert report.counts["site"] == {"NORMAL": 3, "PNEUMONIA": 3}
    assert "site" in report.fingerprints
    assert {
        "file": "site/NORMAL/fb-copy.jpeg",
        "reason": "identical to an image of the train, val or test split",
    } in report.duplicates_dropped
    for split in ("train", "val", "test"):
        assert not set(splits[split].files) & set(names)


def test_a_site_folder_without_both_classes_is_refused(small_dataset):
    add_site(small_dataset)
    shutil.rmtree(small_dataset / "site" / "PNEUMONIA")
    with pytest.raises(
        EmptySplitError, match=r"split 'site' has no usable PNEUMONIA.*chest_xray/site/"
    ):
        prepare(small_dataset, 32, 0.2, seed=1, out_dir=small_dataset.parent / "p")


def test_without_a_site_folder_there_is_no_site_split(small_dataset):
    splits, report = prepare(small_dataset, 32, 0.2, seed=1, out_dir=small_dataset.parent / "p")
    assert set(splits) == {"train", "val", "test"} and "site" not in report.counts
