"""Settings, all from the environment (12-factor; Heroku config vars).

DJANGO_SECRET_KEY  required unless DJANGO_DEBUG=1
DJANGO_DEBUG       1 for local development only (never in production)
ALLOWED_HOSTS      comma-separated host names (default: localhost only)
DATABASE_URL       PostgreSQL in production; SQLite file in django_app/ by default
MODEL_DIR          the exported bundle (model.onnx + model.json)
FEEDBACK_STORAGE   where consented feedback images go: s3://bucket/prefix (credentials and
                   endpoint from the usual AWS_* variables) or a local folder (the default,
                   django_app/feedback_images; not for Heroku, whose disk is wiped on restart)
DJANGO_BEHIND_PROXY 1 on Heroku: take the client address from X-Forwarded-For (login throttle)
DATABASE_POOL_SIZE PostgreSQL connections per worker process at most (default 4)
PROMETHEUS_METRICS 0 turns the service metrics off: no timing middleware, no shared metrics
                   folder, /metrics answers 404 (the monitoring page and /api/v1/drift stay)
"""

import json
import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(int(default))).strip().lower() in ("1", "true", "yes", "on")


DEBUG = env_bool("DJANGO_DEBUG")
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. Set it to a long random string (on Heroku: "
            "`heroku config:set DJANGO_SECRET_KEY=$(python -c 'import secrets; "
            "print(secrets.token_urlsafe(50))')`), or set DJANGO_DEBUG=1 for local development."
        )
    SECRET_KEY = "insecure-development-key-only-used-with-DJANGO_DEBUG"

ALLOWED_HOSTS = [
    h.strip()
    for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")
    if h.strip()
]
CSRF_TRUSTED_ORIGINS = [f"https://{h.lstrip('.')}" for h in ALLOWED_HOSTS if h not in ("*",)]

# Where the served model lives: MODEL_DIR, else the bundle packaged beside the app (Heroku
# build), else the pipeline's output in the repository.
_packaged, _pipeline = BASE_DIR / "model", BASE_DIR.parent / "models" / "bundle"
MODEL_DIR = Path(os.environ.get("MODEL_DIR") or (_packaged if _packaged.is_dir() else _pipeline))


def _release_commit(path: Path) -> str | None:
    """The source commit the slug was packaged from (release.json, pneumonia.package); None
    when run from the repository."""
    try:
        commit = json.loads(path.read_text()).get("commit")
    except (OSError, ValueError, AttributeError):
        return None
    return commit if isinstance(commit, str) and commit else None


# /health reports it: the deploy's smoke test waits for the new release's commit.
RELEASE_COMMIT = _release_commit(BASE_DIR / "release.json")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "diagnosis",
]

PROMETHEUS_METRICS = env_bool("PROMETHEUS_METRICS", True)
MIDDLEWARE = [
    *(["diagnosis.middleware.MetricsMiddleware"] if PROMETHEUS_METRICS else []),  # first: it
    # times and counts every answer
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "diagnosis.middleware.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "diagnosis.middleware.RejectNulBytesMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# A stale form (signed in again in another tab) gets the app's own page, not Django's.
CSRF_FAILURE_VIEW = "diagnosis.views.errors.csrf_failure"

# Accounts: staff create clinicians (admin, or `manage.py add_clinician`); no self sign-up.
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "upload"
LOGOUT_REDIRECT_URL = "upload"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 10},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
SESSION_COOKIE_AGE = 8 * 3600  # a working shift
SESSION_ENGINE = "diagnosis.sessions"  # database sessions that refuse keys Django never issues
# The sign-in throttle (diagnosis.accounts): failures counted within a window of
# LOGIN_LOCKOUT_SECONDS, after which that counter starts again.
LOGIN_FAILURE_LIMIT = 5  # per (address, user name), and per trusted browser (device cookie)
LOGIN_FAILURE_LIMIT_PER_ADDRESS = 20  # per address across names, browsers never signed in there
LOGIN_FAILURE_LIMIT_PER_USER = 25  # per name across addresses, browsers never signed in there
LOGIN_LOCKOUT_SECONDS = 15 * 60
# Every sign-in (the app's page, the admin's) goes through the throttle: diagnosis.accounts.
AUTHENTICATION_BACKENDS = ["diagnosis.accounts.ThrottledBackend"]
BEHIND_PROXY = env_bool("DJANGO_BEHIND_PROXY")

# Feedback: the metadata-free display copy of each upload (at most 512 px) is held this long
# so that its clinician can consent to keep it; then it is gone (diagnosis.held).
FEEDBACK_HOLD_SECONDS = 30 * 60
HEATMAP_HOLD_SECONDS = 15 * 60  # the API's heat map behind its link, in the same table
HELD_PURGE_SECONDS = 60  # each web worker deletes expired held images this often
FEEDBACK_STORAGE = os.environ.get("FEEDBACK_STORAGE") or str(BASE_DIR / "feedback_images")
HISTORY_PAGE_SIZE = 25

ROOT_URLCONF = "xrayweb.urls"
WSGI_APPLICATION = "xrayweb.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "diagnosis.inference.model_context",
            ]
        },
    }
]

# Under ASGI every request runs in a thread of its own, so Django's persistent connections
# (CONN_MAX_AGE) are never reused and pile up until PostgreSQL refuses more (the web benchmark
# reached its 100 with 4 clients). PostgreSQL gets a pool per worker process instead, of at most
# DATABASE_POOL_SIZE connections (Heroku's smallest plans allow 20 in all); SQLite (local use)
# opens one per request.
DATABASES = {"default": dj_database_url.config(default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": int(os.environ.get("DATABASE_POOL_SIZE", "4")),
        "timeout": 30,  # a request waits this long for a free connection, then fails (500)
    }

# Nothing is cached across workers: held images have their own table (diagnosis.held), so
# Django's default per-process memory cache is all it needs.

# Uploads: at most 10 MB, kept in memory only (never written to a temporary file).
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# A PACS's STOW-RS request: within the same bound, at most this many instances (diagnosis.pacs
# reads one at a time; the bound on the body is the bound on memory).
DICOMWEB_MAX_INSTANCES = 20
REQUEST_BODY_SECONDS = 120  # a body still arriving after this is refused (408): xrayweb.asgi
# A body larger than this is read only for a signed-in user or a valid API token (401 before
# reading otherwise): anonymous clients cannot make the workers buffer uploads.
ANONYMOUS_BODY_BYTES = 64 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = MAX_UPLOAD_BYTES + 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
FILE_UPLOAD_HANDLERS = ["django.core.files.uploadhandler.MemoryFileUploadHandler"]

LANGUAGE_CODE = "en"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Security. Heroku terminates TLS at its router and says so in X-Forwarded-Proto.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = not DEBUG and env_bool("DJANGO_SSL_REDIRECT", True)
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_HTTPONLY = True
SECURE_HSTS_SECONDS = 0 if DEBUG else 31_536_000
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)

# Logs: requests and errors, never image content or file names from uploads.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"escape": {"()": "diagnosis.middleware.EscapeControlCharacters"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "filters": ["escape"]}},
    "root": {"handlers": ["console"], "level": os.environ.get("DJANGO_LOG_LEVEL", "INFO")},
}
