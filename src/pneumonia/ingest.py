"""Add a folder of new labelled X-rays to the DVC-tracked dataset.

    python -m pneumonia.ingest NEW_IMAGES/        # NEW_IMAGES/{NORMAL,PNEUMONIA}/*.jpeg|png

Each file is decoded and validated; exact duplicates (same bytes, or same name and bytes) of
images already in the dataset or earlier in the batch are skipped; a patient already in the
dataset gets the new image in the same split, new patients go to ``--split`` (train). Patients
are matched only within the namespace ingested into (train+val by default; test with
``--split test``; a hospital's calibration cases with ``--split site``): the public release
numbers ``personNNN`` separately in train and test, so the same id there names another child.
An id also found in the other namespace is reported, never
followed: the test split only grows when asked. Files are
written atomically (never half-copied), then ``dvc add data/chest_xray`` records the new data
version in ``chest_xray.dvc``. Bad files are listed with the reason; the exit status is 1 when any
file was rejected (the good ones are still added), 2 when nothing could be read at all.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pneumonia import config
from pneumonia.data import content_hash, list_images, patient_id
from pneumonia.serving import InvalidImage, read_image
from pneumonia.tools import tool

# val is carved out of train by the prepare stage; site holds a hospital's own labelled cases,
# for calibration only (docs/pipeline.md, "Calibrating on a site's cases")
NEW_PATIENT_SPLITS = ("train", "test", config.SITE_SPLIT)
# Patient ids link images only within one namespace (see the module docstring).
NAMESPACES = {"train": ("train", "val"), "test": ("test",), config.SITE_SPLIT: (config.SITE_SPLIT,)}


@dataclass
class Planned:
    source: Path
    target: Path  # relative to the dataset root: split/label/name.jpeg
    data: bytes


@dataclass
class IngestPlan:
    add: list[Planned] = field(default_factory=list)
    duplicates: list[tuple[Path, str]] = field(default_factory=list)
    rejected: list[tuple[Path, str]] = field(default_factory=list)
    # added, but their patient id also names a patient of the other namespace
    other_namespace: list[tuple[Path, str]] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        counter = Counter((p.target.parts[0], p.target.parts[1]) for p in self.add)
        return {
            split: {label: counter[(split, label)] for label in config.LABELS}
            for split in (*config.SPLITS, config.SITE_SPLIT)
        }


def _stored_bytes(data: bytes, fmt: str, image) -> bytes:
    """JPEGs are kept byte for byte; other formats become a quality-95 grayscale JPEG, because
    the dataset layout is ``*.jpeg``."""
    if fmt in ("JPEG", "MPO"):
        return data
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def plan_ingest(source: Path, data_dir: Path, new_patient_split: str = "train") -> IngestPlan:
    """Decide, without writing anything, what adding ``source`` to ``data_dir`` would do."""
    if new_patient_split not in NEW_PATIENT_SPLITS:
        raise ValueError(f"--split must be one of {NEW_PATIENT_SPLITS}, got {new_patient_split!r}")
    existing = list_images(data_dir)
    known_hashes = {content_hash(r.path.read_bytes()) for r in existing}
    namespace = NAMESPACES[new_patient_split]
    # Where each known patient of this namespace lives (train or val; or test).
    split_of_patient: dict[str, str] = {}
    for record in existing:
        if record.split in namespace:
            split_of_patient.setdefault(record.patient, record.split)
    elsewhere = {r.patient: r.split for r in existing if r.split not in namespace}

    plan = IngestPlan()
    files = sorted(p for p in Path(source).rglob("*") if p.is_file() and not p.name.startswith("."))
    for path in files:
        relative = path.relative_to(source)
        label = relative.parts[0].upper() if len(relative.parts) == 2 else None
        if label not in config.LABELS:
            plan.rejected.append(
                (relative, f"not in a class folder: put it under {' or '.join(config.LABELS)}/")
            )
            continue
        data = path.read_bytes()
        try:
            image = read_image(data)
        except InvalidImage as exc:
            plan.rejected.append((relative, str(exc)))
            continue
        digest = content_hash(data)
        stored = _stored_bytes(data, image.info["format"], image)
        if digest in known_hashes or content_hash(stored) in known_hashes:
            plan.duplicates.append((relative, "same content already in the dataset"))
            continue
        patient = patient_id(path.name)
        split = split_of_patient.get(patient, new_patient_split)
        target = Path(split, label, Path(path.name).stem + ".jpeg")
        if (data_dir / target).exists() or any(p.target == target for p in plan.add):
            plan.rejected.append(
                (relative, f"a different image named {target.name} is already in {target.parent}")
            )
            continue
        known_hashes.update({digest, content_hash(stored)})
        if patient not in split_of_patient and patient in elsewhere:
            plan.other_namespace.append(
                (
                    relative,
                    f"patient id {patient} is also in {elsewhere[patient]} (another child "
                    f"in the public naming): added to {split}, {elsewhere[patient]} left as it is",
                )
            )
        split_of_patient.setdefault(patient, split)
        plan.add.append(Planned(source=path, target=target, data=stored))
    return plan


def apply_plan(plan: IngestPlan, data_dir: Path) -> None:
    """Write the planned files: each is staged beside the dataset, then renamed into place."""
    if not plan.add:
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".ingest-", dir=data_dir.parent))
    try:
        for i, item in enumerate(plan.add):
            staged = staging / f"{i}.jpeg"
            with open(staged, "wb") as f:
                f.write(item.data)
                f.flush()
                os.fsync(f.fileno())
            (data_dir / item.target).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, data_dir / item.target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def dvc_add(data_dir: Path) -> None:
    """Record the new data version in ``chest_xray.dvc`` (and the DVC cache)."""
    subprocess.run([tool("dvc"), "add", str(data_dir)], cwd=config.ROOT, check=True)


def report(plan: IngestPlan, dry_run: bool) -> str:
    verb = "would add" if dry_run else "added"
    lines = [f"ingest: {verb} {len(plan.add)} image(s)"]
    for split, counts in plan.counts().items():
        if any(counts.values()):
            lines.append(f"  {split:5}  " + "  ".join(f"{k} +{v}" for k, v in counts.items()))
    if plan.other_namespace:
        lines.append(f"ingest: {len(plan.other_namespace)} id(s) also name a patient elsewhere")
        lines += [f"  {path}: {reason}" for path, reason in plan.other_namespace]
    lines.append(f"ingest: skipped {len(plan.duplicates)} duplicate(s)")
    lines += [f"  {path}: {reason}" for path, reason in plan.duplicates]
    lines.append(f"ingest: rejected {len(plan.rejected)} file(s)")
    lines += [f"  {path}: {reason}" for path, reason in plan.rejected]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="folder with NORMAL/ and PNEUMONIA/ subfolders")
    parser.add_argument("--data-dir", type=Path, default=config.RAW_DIR)
    parser.add_argument(
        "--split",
        default="train",
        choices=NEW_PATIENT_SPLITS,
        help="split for patients not yet in the dataset (default: train)",
    )
    parser.add_argument("--dry-run", action="store_true", help="report only, write nothing")
    parser.add_argument("--no-dvc", action="store_true", help="skip `dvc add` afterwards")
    args = parser.parse_args(argv)

    if not args.source.is_dir():
        print(f"ingest: error: {args.source} is not a folder", file=sys.stderr)
        return 2
    plan = plan_ingest(args.source, args.data_dir, args.split)
    if not plan.add and not plan.duplicates and not plan.rejected:
        print(f"ingest: error: no files under {args.source}", file=sys.stderr)
        return 2
    if not args.dry_run:
        apply_plan(plan, args.data_dir)
        if plan.add and not args.no_dvc:
            try:
                dvc_add(args.data_dir)
            except (OSError, subprocess.CalledProcessError) as exc:
                print(report(plan, dry_run=False))
                print(
                    f"ingest: error: the files are in {args.data_dir} but `dvc add` failed "
                    f"({exc}); run `dvc add {args.data_dir}` once the problem is fixed",
                    file=sys.stderr,
                )
                return 2
    print(report(plan, args.dry_run))
    if plan.add and not args.dry_run:
        print("ingest: next: `dvc push` and commit chest_xray.dvc; the next `dvc repro` retrains")
    return 1 if plan.rejected else 0


if __name__ == "__main__":
    sys.exit(main())
