"""Security settings: CSRF, headers, production checks, secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

from tests.postgres import database_url

APP = Path(__file__).resolve().parents[2]  # django_app/

pytestmark = pytest.mark.django_db


def production_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL"))}
    env.update(
        DJANGO_SETTINGS_MODULE="xrayweb.settings",
        DJANGO_SECRET_KEY="prod-like-" + "k3y" * 20,
        ALLOWED_HOSTS="pneumonia-xray.herokuapp.com",
        DATABASE_URL=database_url(scheme="postgres"),
        PYTHONPATH=str(APP),
        FEEDBACK_STORAGE="s3://feedback-bucket/images",
    )
    env.update(extra)
    return env


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=APP, env=env, capture_output=True, text=True
    )


def test_check_deploy_is_clean_with_production_settings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_warns_when_feedback_images_would_stay_on_the_dyno():
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env=production_env(FEEDBACK_STORAGE="/app/feedback"),
    )
    assert result.returncode != 0 and "diagnosis.W001" in result.stderr + result.stdout
    assert "FEEDBACK_STORAGE=s3://" in result.stderr + result.stdout


def test_missing_secret_key_is_a_clear_error():
    env = production_env()
    env.pop("DJANGO_SECRET_KEY")
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in result.stderr and "DJANGO_DEBUG=1" in result.stderr


def test_debug_mode_runs_without_a_secret_and_production_never_shows_debug_pages():
    env = production_env(DJANGO_DEBUG="1")
    env.pop("DJANGO_SECRET_KEY")
    assert manage("check", env=env).returncode == 0
    probe = "from django.conf import settings; print(settings.DEBUG)"
    result = manage("shell", "-c", probe, env=production_env())
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_form_posts_need_the_csrf_token(samples, clinician):
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(clinician)
    with open(samples[0], "rb") as f:
        response = strict.post("/", {"image": f})
    assert response.status_code == 403
    page = strict.get("/")
    token = page.cookies["csrftoken"].value
    with open(samples[0], "rb") as f:
        ok = strict.post("/", {"image": f, "csrfmiddlewaretoken": token})
    assert ok.status_code == 200


def test_security_headers_on_every_page(client):
    for path in ("/", "/model", "/health"):
        response = client.get(path)
        csp = response["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["X-Frame-Options"] == "DENY"
        assert response["Referrer-Policy"] == "same-origin"


def test_behind_herokus_proxy_https_gets_hsts_and_http_is_redirected(settings):
    settings.SECURE_SSL_REDIRECT = True
    client = Client()
    plain = client.get("/health")
    assert plain.status_code == 301 and plain["Location"].startswith("https://")
    secure = client.get("/health", headers={"x-forwarded-proto": "https"})
    assert secure.status_code in (200, 503)
    assert "max-age=31536000" in secure["Strict-Transport-Security"]


def test_pages_use_no_external_resources(client):
    for path in ("/", "/model"):
        html = client.get(path).content.decode()
        assert "http://" not in html and "https://" not in html and "//cdn" not in html
