"""manage.py add_pacs_site NAME --dicomweb-url URL [--orthanc-url URL] [--authorization-stdin]

Registers a hospital's PACS: an account of its own (no password: it signs in with its API token
only), where results are stored back (the PACS's DICOMweb root) and, for ``pacs_worker``, the
Orthanc REST root whose change feed it follows (from its current end: new studies, not the
archive). Prints the site's API token once: the PACS sends
it as 'Authorization: Bearer <token>' with its STOW-RS requests. --authorization-stdin reads the
Authorization header the PACS expects from the app (e.g. 'Basic ...') from stdin, never from the
command line. --new-token issues another token for an existing site (revoke the old one in
the admin).
"""

from __future__ import annotations

import sys

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from diagnosis import dicomweb
from diagnosis.models import ApiToken, PacsSite


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("name", help="a short name: letters, digits, - and _")
        parser.add_argument("--dicomweb-url", default="")
        parser.add_argument("--new-token", action="store_true")
        parser.add_argument("--orthanc-url", default="")
        parser.add_argument("--authorization-stdin", action="store_true")

    def handle(
        self, *args, name, dicomweb_url, orthanc_url, authorization_stdin, new_token, **options
    ):
        if new_token:
            site = PacsSite.objects.filter(name=name).first()
            if site is None:
                raise CommandError(f"No PACS site {name!r}.")
            _, raw = ApiToken.issue(site.user, f"PACS {name}")
            self.stdout.write(f"API token (shown once): {raw}")
            return
        if not dicomweb_url:
            raise CommandError("Name the PACS's DICOMweb root: --dicomweb-url URL.")
        authorization = sys.stdin.readline().strip() if authorization_stdin else ""
        User = get_user_model()
        username = f"pacs-{name}"
        if (
            PacsSite.objects.filter(name=name).exists()
            or User.objects.filter(username=username).exists()
        ):
            raise CommandError(f"A PACS site {name!r} (or a user {username!r}) exists already.")
        site = PacsSite(
            name=name,
            dicomweb_url=dicomweb_url,
            orthanc_url=orthanc_url,
            authorization=authorization,
        )
        try:
            site.full_clean(exclude=["user"])
        except ValidationError as exc:
            raise CommandError(f"Nothing was created: {exc.message_dict}") from None
        if orthanc_url:
            try:
                site.changes_seen = dicomweb.get_json(
                    orthanc_url.rstrip("/") + "/changes?last", authorization
                )["Last"]
            except (dicomweb.DicomWebError, KeyError, ValueError) as exc:
                raise CommandError(
                    f"Nothing was created: Orthanc's change feed at {orthanc_url} could not be"
                    f" read ({exc}). Check the URL and the Authorization header."
                ) from None
        user = User(username=username)
        user.set_unusable_password()
        user.save()
        site.user = user
        site.save()
        _, raw = ApiToken.issue(user, f"PACS {name}")
        self.stdout.write(f"Created PACS site {name!r} (account {username!r}).")
        self.stdout.write(f"API token (shown once): {raw}")
