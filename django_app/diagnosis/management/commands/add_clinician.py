"""manage.py add_clinician USERNAME [--email E] [--staff] [--synthetic] [--api-token NAME]

Creates an account (the password is asked twice, or read from stdin with --password-stdin, and
checked by Django's password validators). --api-token also issues a token and prints it once.
"""

from __future__ import annotations

import getpass
import sys

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from diagnosis.models import SYNTHETIC_GROUP, ApiToken


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--email", default="")
        parser.add_argument(
            "--staff",
            action="store_true",
            help="may see all predictions, the monitoring page and the admin",
        )
        parser.add_argument(
            "--synthetic",
            action="store_true",
            help="an account for machines (the deploy's smoke test): its uploads are kept out "
            "of the monitoring page and labelled synthetic in the metrics",
        )
        parser.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password from the first line of stdin",
        )
        parser.add_argument("--api-token", metavar="NAME", help="also issue an API token")

    def handle(
        self, *args, username, email, staff, synthetic, password_stdin, api_token, **options
    ):
        User = get_user_model()
        if User.objects.filter(username=username).exists():
            raise CommandError(f"A user named {username!r} exists already.")
        if password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = getpass.getpass("Password: ")
            if password != getpass.getpass("Password (again): "):
                raise CommandError("The two passwords differ; nothing was created.")
        candidate = User(username=username, email=email)
        try:
            validate_password(password, candidate)
        except ValidationError as exc:
            raise CommandError("Password refused: " + " ".join(exc.messages)) from None
        user = User.objects.create_user(
            username=username, email=email, password=password, is_staff=staff
        )
        if synthetic:
            user.groups.add(Group.objects.get_or_create(name=SYNTHETIC_GROUP)[0])
        kind = ("staff " if staff else "") + ("synthetic " if synthetic else "")
        self.stdout.write(f"created {kind}user {user.username}")
        if api_token:
            _, raw = ApiToken.issue(user, api_token)
            self.stdout.write(f"API token (shown once, store it now): {raw}")
