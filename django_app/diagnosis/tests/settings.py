"""Settings for the app's tests: production settings plus a test secret and, unless
DATABASE_URL says otherwise, the test PostgreSQL server (tests/postgres.py: the local one, or a
throwaway one where none runs)."""

import os
from pathlib import Path

from tests.postgres import database_url

os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-" + "x" * 50)
os.environ.setdefault("DATABASE_URL", database_url(scheme="postgres"))
os.environ.setdefault("DJANGO_SSL_REDIRECT", "0")  # the test client speaks plain HTTP

from xrayweb.settings import *  # noqa: E402,F403

# No collectstatic in tests: serve static files from the app folders.
STORAGES = {"staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}

# Password hashing is deliberately slow; tests create many users (production keeps PBKDF2).
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Django tests SQLite in memory with a shared cache, where a table another connection is using is
# "locked" at once instead of waited for: threads (the purger, parallel sign-ins) then failed by
# chance. A file next to the configured one behaves as the local SQLite the app really runs on.
_database = DATABASES["default"]  # noqa: F405
if _database["ENGINE"] == "django.db.backends.sqlite3" and _database["NAME"] != ":memory:":
    _file = Path(_database["NAME"])
    _database.setdefault("TEST", {})["NAME"] = str(_file.with_name(f"test_{_file.name}"))
