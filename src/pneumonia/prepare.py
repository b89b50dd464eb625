"""Stage ``prepare``: validate the images, split by patient, cache decoded arrays.

Output, per split, ``data/prepared/{split}_images.npy`` (N x S x S uint8, grayscale) and
``data/prepared/{split}.npz`` with ``labels`` (index into ``config.LABELS``), ``files`` (paths
relative to the dataset root) and ``patients``; plus ``metrics/data.json`` with the counts and
every rejected file and why. Images are streamed through files on disk, never held together in
memory, so memory stays flat as the dataset grows (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pneumonia import config
from pneumonia.data import ImageRecord, content_hash, list_images
from pneumonia.params import ParamsError
from pneumonia.params import load as load_params
from pneumonia.prepared import (
    PreparedSplit,
    images_path,
    load_split,
    open_images,
    write_metadata,
)
from pneumonia.serving import InvalidImage, read_image
from pneumonia.serving import resize as resize_image


class EmptySplitError(RuntimeError):
    """A split has no usable image of some class: nothing sensible can be trained or measured."""


@dataclass
class PrepareReport:
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    rejected: list[dict[str, str]] = field(default_factory=list)
    duplicates_dropped: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "counts": self.counts,
            "fingerprints": self.fingerprints,
            "total": sum(sum(c.values()) for c in self.counts.values()),
            "rejected_count": len(self.rejected),
            "rejected": self.rejected,
            "duplicates_dropped_count": len(self.duplicates_dropped),
            "duplicates_dropped": self.duplicates_dropped,
        }


def in_validation(group_key: str, val_fraction: float, seed: int) -> bool:
    """Deterministic, stable assignment of a patient group to the validation split.

    A hash rather than a shuffle: adding new patients never moves existing ones between train
    and validation, so successive data versions stay comparable.
    """
    digest = hashlib.sha256(f"{seed}:{group_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


class _Groups:
    """Union-find over image indices: same patient or same bytes -> same group."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        self.parent[self.find(i)] = self.find(j)


def assign_splits(
    records: list[ImageRecord], hashes: list[str], val_fraction: float, seed: int
) -> tuple[list[str | None], list[dict[str, str]]]:
    """Final split of each record (``None`` = dropped) and the list of dropped duplicates.

    - Images of one patient, and byte-identical images, form one group; a group never straddles
      two splits.
    - The official test split is kept as is; a train/val image identical to a test image is
      dropped (it would leak test data into training).
    - A group touching the official val folder goes to validation; any other train group goes to
      validation with probability ``val_fraction``, by a stable hash of its patient ids.
    - Byte-identical copies inside one split are kept once.
    """
    groups = _Groups(len(records))
    first_by_key: dict[tuple[str, ...], int] = {}
    for i, (record, digest) in enumerate(zip(records, hashes, strict=True)):
        # The official release numbers patients per split: test's person100 is not train's
        # person100 (in all 71 such pairs the infection type differs), so patient ids link
        # images only within test or within train+val. Identical bytes link across everything.
        scope = record.split if record.split in ("test", config.SITE_SPLIT) else "train"
        for key in (("patient", scope, record.patient), ("hash", digest)):
            if key in first_by_key:
                groups.union(i, first_by_key[key])
            else:
                first_by_key[key] = i

    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(records)):
        members[groups.find(i)].append(i)

    split_of: list[str | None] = [None] * len(records)
    dropped: list[dict[str, str]] = []
    for indices in members.values():
        official = {records[i].split for i in indices}
        if "test" in official:
            target_for_train = None
        elif "val" in official:
            target_for_train = "val"
        else:
            key = min(records[i].patient for i in indices)
            target_for_train = "val" if in_validation(key, val_fraction, seed) else "train"
        for i in indices:
            if records[i].split == config.SITE_SPLIT:
                # Calibration cases must be new to the model: none identical to its own images.
                if official == {config.SITE_SPLIT}:
                    split_of[i] = config.SITE_SPLIT
                else:
                    reason = "identical to an image of the train, val or test split"
                    dropped.append({"file": _rel(records[i]), "reason": reason})
                continue
            split_of[i] = "test" if records[i].split == "test" else target_for_train
            if split_of[i] is None:
                dropped.append(
                    {"file": _rel(records[i]), "reason": "identical to an image in test"}
                )

    seen: dict[tuple[str, str], int] = {}
    for i, digest in enumerate(hashes):
        split = split_of[i]
        if split is None:
            continue
        if (split, digest) in seen:
            first = records[seen[(split, digest)]]
            dropped.append({"file": _rel(records[i]), "reason": f"identical to {_rel(first)}"})
            split_of[i] = None
        else:
            seen[(split, digest)] = i
    return split_of, dropped


def _rel(record: ImageRecord) -> str:
    return f"{record.split}/{record.label}/{record.path.name}"


def prepare(
    raw_dir: Path, image_size: int, val_fraction: float, seed: int, out_dir: Path
) -> tuple[dict[str, PreparedSplit], PrepareReport]:
    """Validate, group-split and decode the dataset under ``raw_dir`` into ``out_dir``; return
    the splits as written (images memory-mapped) and the report.

    ``out_dir`` is replaced only once every split is complete: an error (an empty split, a full
    disk) leaves the previous output as it was.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"prepare.val_fraction must be between 0 and 1, got {val_fraction}")
    report = PrepareReport()
    records = list_images(raw_dir)
    if not records:
        raise EmptySplitError(
            f"no images under {raw_dir}: expected {{train,val,test}}/{{NORMAL,PNEUMONIA}}/*.jpeg "
            "(run `dvc pull`, or see the README for getting the dataset)"
        )
    partial = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        _prepare_into(partial, records, image_size, val_fraction, seed, report)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    written = [*config.SPLITS, *([config.SITE_SPLIT] if config.SITE_SPLIT in report.counts else [])]
    return {split: load_split(split, out_dir) for split in written}, report


def _prepare_into(
    folder: Path,
    records: list[ImageRecord],
    image_size: int,
    val_fraction: float,
    seed: int,
    report: PrepareReport,
) -> None:
    good: list[ImageRecord] = []
    hashes: list[str] = []
    decoded = open_images(folder / "decoded.npy", len(records), image_size)
    # disable=None: a bar on a terminal only; a log gets the one summary line of main()
    for record in tqdm(records, desc="prepare: decode", unit="img", file=sys.stderr, disable=None):
        data = record.path.read_bytes()
        try:
            image = read_image(data)
        except InvalidImage as exc:
            report.rejected.append({"file": _rel(record), "reason": str(exc)})
            continue
        decoded[len(good)] = resize_image(image, image_size)
        good.append(record)
        hashes.append(content_hash(data))

    split_of, report.duplicates_dropped = assign_splits(good, hashes, val_fraction, seed)

    site = [config.SITE_SPLIT] if config.SITE_SPLIT in split_of else []
    for split in (*config.SPLITS, *site):
        idx = np.array([i for i, s in enumerate(split_of) if s == split], dtype=np.int64)
        counts = Counter(good[i].label for i in idx)
        report.counts[split] = {label: counts.get(label, 0) for label in config.LABELS}
        missing = [label for label in config.LABELS if counts.get(label, 0) == 0]
        if missing:
            raise EmptySplitError(
                f"split '{split}' has no usable {' or '.join(missing)} image "
                f"({len(report.rejected)} file(s) rejected in all: {_summary(report.rejected)}). "
                f"Add valid images under data/chest_xray/{split}/<CLASS>/ "
                "with `python -m pneumonia.ingest` and run again."
            )
        images = open_images(images_path(folder, split), len(idx), image_size)
        for start in range(0, len(idx), 1024):
            images[start : start + 1024] = decoded[idx[start : start + 1024]]
        images.flush()
        del images
        report.fingerprints[split] = split_fingerprint([(_rel(good[i]), hashes[i]) for i in idx])
        labels = np.array([config.LABELS.index(good[i].label) for i in idx], dtype=np.int64)
        patients = [good[i].patient for i in idx]
        write_metadata(folder, split, labels, [_rel(good[i]) for i in idx], patients)
    del decoded
    (folder / "decoded.npy").unlink()


def split_fingerprint(items: list[tuple[str, str]]) -> str:
    """sha256 over a split's (file, content hash) pairs: equal fingerprints, same images."""
    digest = hashlib.sha256()
    for name, content in sorted(items):
        digest.update(f"{name}\0{content}\n".encode())
    return digest.hexdigest()


def _summary(rejected: list[dict[str, str]], limit: int = 3) -> str:
    if not rejected:
        return "none"
    shown = "; ".join(f"{r['file']}: {r['reason']}" for r in rejected[:limit])
    return shown + (f"; and {len(rejected) - limit} more" if len(rejected) > limit else "")


def write_report(report: PrepareReport, data_json: Path) -> None:
    data_json.parent.mkdir(parents=True, exist_ok=True)
    data_json.write_text(json.dumps(report.as_dict(), indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    try:
        params = load_params().prepare
        _, report = prepare(
            config.RAW_DIR, params.image_size, params.val_fraction, params.seed, config.PREPARED_DIR
        )
    except (EmptySplitError, ParamsError) as exc:
        print(f"prepare: error: {exc}", file=sys.stderr)
        return 1
    write_report(report, config.METRICS_DIR / "data.json")
    for rejected in report.rejected:
        print(f"prepare: rejected {rejected['file']}: {rejected['reason']}", file=sys.stderr)
    print(
        "prepare: "
        + ", ".join(f"{s} {sum(c.values())} ({c})" for s, c in report.counts.items())
        + f"; rejected {len(report.rejected)}, duplicates dropped {len(report.duplicates_dropped)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
