"""Export consented, labelled feedback images as a folder the pipeline's ingest accepts:

    <out>/feedback-<UTC time>/{NORMAL,PNEUMONIA}/fb-<content hash>.png

Each image is exported once: an export is recorded (``DatasetExport``) and its feedback rows
point at it, in the same transaction that follows the folder's atomic rename. An export that
stops half-way leaves no folder under the final name and no record, so it can simply be run
again. (Stopped between the rename and the commit, the next export repeats those images in a
new folder; ingest skips them as exact duplicates.)
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from django.db import transaction
from django.utils import timezone

from diagnosis.models import DatasetExport, Feedback
from diagnosis.storage import image_store

PARTIAL_PREFIX = ".partial-"


def pending_feedback(queryset=None):
    """Consented feedback with a stored image, not exported yet (locked until commit)."""
    queryset = Feedback.objects.all() if queryset is None else queryset
    return (
        queryset.select_for_update(of=("self",))
        .filter(consent=True, exported_in__isnull=True)
        .exclude(image_name="")
        .order_by("pk")
    )


def _export_name() -> str:
    name = "feedback-" + timezone.now().strftime("%Y%m%dT%H%M%S")
    suffix, candidate = 1, name
    while DatasetExport.objects.filter(name=candidate).exists():
        suffix += 1
        candidate = f"{name}-{suffix}"
    return candidate


def member_path(feedback: Feedback) -> str:
    """The image's place in the export: class folder / name from its content hash."""
    return f"{feedback.true_label}/fb-{feedback.image_name.removesuffix('.png')[:32]}.png"


def _record(name: str, created_by: str, exported: list[Feedback]) -> DatasetExport:
    """Record the export and mark its feedback, so nothing is exported twice."""
    export = DatasetExport.objects.create(
        name=name, created_by=created_by, image_count=len(exported)
    )
    Feedback.objects.filter(pk__in=[f.pk for f in exported]).update(exported_in=export)
    return export


def export_to_folder(out_dir: Path, created_by: str) -> tuple[DatasetExport | None, Path | None]:
    """Write everything pending to a new folder under ``out_dir``; (record, folder) or
    (None, None) when there is nothing new."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(PARTIAL_PREFIX + "*"):  # left by an export that was killed
        shutil.rmtree(stale, ignore_errors=True)
    store = image_store()
    with transaction.atomic():
        pending = list(pending_feedback())
        if not pending:
            return None, None
        name = _export_name()
        staging = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=out_dir))
        try:
            for feedback in pending:
                target = staging / member_path(feedback)
                target.parent.mkdir(exist_ok=True)
                with open(target, "wb") as f:
                    f.write(store.get(feedback.image_name))
                    f.flush()
                    os.fsync(f.fileno())
            final = out_dir / name
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        export = _record(name, created_by, pending)
    return export, final


def export_to_zip(created_by: str, queryset=None) -> tuple[DatasetExport | None, bytes]:
    """The same export as a zip archive (the admin's download): one folder, as above."""
    store = image_store()
    with transaction.atomic():
        pending = list(pending_feedback(queryset))
        if not pending:
            return None, b""
        name = _export_name()
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
            for feedback in pending:  # PNGs are compressed already
                archive.writestr(f"{name}/{member_path(feedback)}", store.get(feedback.image_name))
        export = _record(name, created_by, pending)
    return export, buffer.getvalue()
