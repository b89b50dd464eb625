"""Settings for the app's tests: production settings plus a test secret and, unless
DATABASE_URL says otherwise, the test PostgreSQL server (tests/postgres.py: the local one, or a
throwaway one where none runs)."""

import os

from tests.postgres import database_url

os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-" + "x" * 50)
os.environ.setdefault("DATABASE_URL", database_url(scheme="postgres"))
os.environ.setdefault("DJANGO_SSL_REDIRECT", "0")  # the test client speaks plain HTTP

from xrayweb.settings import *  # noqa: E402,F403

# No collectstatic in tests: serve static files from the app folders.
STORAGES = {"staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}

# Password hashing is deliberately slow; tests create many users (production keeps PBKDF2).
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
