"""manage.py pacs_worker SITE [--once] [--poll SECONDS]

Follows the site's Orthanc change feed: each new CR or DX instance is retrieved with WADO-RS,
classified once and answered in the PACS (diagnosis.pacs). Resumes where it stopped; --once
deals with the feed up to its current end and exits (for a scheduler).
"""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError

from diagnosis import dicomweb
from diagnosis.models import PacsSite
from diagnosis.pacs import follow_changes


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("site")
        parser.add_argument("--once", action="store_true")
        parser.add_argument("--poll", type=float, default=5.0, help="seconds between polls")

    def handle(self, *args, site, once, poll, **options):
        found = PacsSite.objects.filter(name=site).first()
        if found is None:
            raise CommandError(f"No PACS site {site!r}: add it with `manage.py add_pacs_site`.")
        if not found.orthanc_url:
            raise CommandError(f"The PACS site {site!r} has no Orthanc URL to follow.")
        while True:
            try:
                read = follow_changes(found)
            except dicomweb.DicomWebError as exc:
                if once:
                    raise CommandError(str(exc)) from None
                self.stderr.write(f"pacs_worker: {exc}; trying again in {poll:g} s")
                read = 0
            if once:
                self.stdout.write(f"pacs_worker: {read} changes read, at {found.changes_seen}")
                return
            time.sleep(poll)
