"""The web app's code in a benchmark's own process, on a fresh SQLite database (the login
throttle and drift benchmarks drive it directly, without a server)."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setup_django(folder: Path) -> None:
    """Django set up on `folder`/db.sqlite3, migrated; quick hashing, no collectstatic."""
    sys.path[:0] = [str(ROOT / "django_app"), str(ROOT)]
    os.environ["DATABASE_URL"] = f"sqlite:///{folder / 'db.sqlite3'}"
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-" + "x" * 50)
    os.environ["DJANGO_SSL_REDIRECT"] = "0"
    os.environ["DJANGO_SETTINGS_MODULE"] = "xrayweb.settings"
    import logging

    import django

    django.setup()
    logging.getLogger("django.request").setLevel(logging.ERROR)  # each 429 is a warning
    warnings.filterwarnings("ignore", message="No directory at")  # no collectstatic here
    from django.conf import settings
    from django.core.management import call_command

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed only
    settings.ALLOWED_HOSTS = ["testserver"]
    settings.STORAGES = {  # no collectstatic: pages render from the app's static folder
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    call_command("migrate", verbosity=0)
