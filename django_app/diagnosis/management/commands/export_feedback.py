"""manage.py export_feedback OUT_DIR

Writes the consented, labelled feedback images not exported before to a new folder under
OUT_DIR (NORMAL/ and PNEUMONIA/ inside), ready for `python -m pneumonia.ingest FOLDER`, and
records the export so that no image is exported twice. Prints the folder, or says that there is
nothing new (exit status 0 either way).
"""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from diagnosis.export import export_to_folder
from diagnosis.storage import StorageUnavailable


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("out_dir", type=Path)

    def handle(self, *args, out_dir: Path, **options):
        try:
            export, folder = export_to_folder(out_dir, created_by="command")
        except StorageUnavailable as exc:
            raise CommandError(f"{exc}; nothing was exported, run the command again") from None
        except OSError as exc:
            raise CommandError(
                f"cannot write under {out_dir}: {exc}; nothing was exported"
            ) from None
        if export is None:
            self.stdout.write("nothing to export: no consented feedback since the last export")
            return
        self.stdout.write(f"exported {export.image_count} images to {folder}")
        self.stdout.write(f"next: python -m pneumonia.ingest {folder}")
