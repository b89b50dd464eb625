"""Every malformed request is a clear 4xx, never a 500; the pages for what still goes wrong
(a server error, a stale form) are the app's own and lead back into it."""

from __future__ import annotations

import json
import logging

import pytest
from django.test import Client
from django.urls import path
from xrayweb.urls import handler500
from xrayweb.urls import urlpatterns as app_urls

from diagnosis.models import ApiToken
from diagnosis.tests.conftest import PASSWORD, logged_in


@pytest.mark.parametrize(
    ("method", "url", "data"),
    [
        ("post", "/account/login", {"username": "dr\x00ada", "password": PASSWORD}),
        ("get", "/history?user=dr\x00ada", None),
        ("get", "/history?label=\x00", None),
        ("post", "/account/tokens", {"action": "create", "name": "laptop\x00"}),
        ("get", "/api/v1/heatmaps/abc\x00def.jpg", None),
    ],
)
def test_a_nul_byte_anywhere_is_a_400(method, url, data, staff):
    client = logged_in(staff)
    client.raise_request_exception = False
    response = getattr(client, method)(url, data) if data else getattr(client, method)(url)
    assert response.status_code == 400


@pytest.mark.parametrize(
    "cookie",
    [
        'sessionid="abcdefgh\\000ijklmnop"',
        "sessionid=abcdefgh\x00ijklmnop",
        "sessionid=" + "a" * 300,
    ],
)
def test_a_session_cookie_django_never_issued_is_no_session(cookie, db):
    """A NUL in the session key reached PostgreSQL and failed there: an unauthenticated 500."""
    client = Client(raise_request_exception=False)
    for page in ("/", "/history", "/account/login"):
        response = client.get(page, HTTP_COOKIE=cookie)
        assert response.status_code in (200, 302), (page, response.status_code)


def test_a_forwarded_address_that_is_no_address_is_no_500(clinician, settings):
    """Behind the proxy, a 400-character last X-Forwarded-For entry gave a 500; such requests
    are throttled together, apart from real addresses."""
    from diagnosis.accounts import NOT_AN_ADDRESS, client_address

    settings.BEHIND_PROXY = True
    client = Client(raise_request_exception=False)
    forged = "203.0.113.9, " + "9" * 400
    response = client.post(
        "/account/login",
        {"username": "dr_ada", "password": "wrong"},
        HTTP_X_FORWARDED_FOR=forged,
    )
    assert response.status_code in (200, 400, 429), response.status_code

    class Request:
        META = {"HTTP_X_FORWARDED_FOR": forged, "REMOTE_ADDR": "10.0.0.1"}

    assert client_address(Request) == NOT_AN_ADDRESS
    Request.META = {"HTTP_X_FORWARDED_FOR": "x, 2001:DB8::1", "REMOTE_ADDR": "10.0.0.1"}
    assert client_address(Request) == "2001:db8::1"


def test_revoking_a_token_with_a_non_numeric_id_is_a_404(clinician):
    client = logged_in(clinician)
    client.raise_request_exception = False
    response = client.post("/account/tokens", {"action": "revoke", "id": "abc"})
    assert response.status_code == 404
    assert ApiToken.objects.filter(user=clinician, revoked_at__isnull=True).count() == 1


def test_feedback_json_nested_deeply_is_a_400(clinician, samples):
    client = logged_in(clinician)
    client.raise_request_exception = False
    with open(samples[0], "rb") as f:
        created = client.post("/api/v1/predictions", {"image": f})
    assert created.status_code == 200, created.content
    body = "[" * 100_000 + "]" * 100_000
    response = client.post(
        f"/api/v1/predictions/{created.json()['id']}/feedback",
        body,
        content_type="application/json",
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_json"


def boom(request):
    raise RuntimeError("a bug")


urlpatterns = [path("boom", boom), *app_urls]


@pytest.mark.urls("diagnosis.tests.test_errors")
def test_a_server_error_shows_the_apps_own_page(clinician, caplog):
    client = logged_in(clinician)
    client.raise_request_exception = False
    response = client.get("/boom")
    html = response.content.decode()
    assert response.status_code == 500 and handler500
    assert "app.css" in html and "Something went wrong" in html and 'href="/"' in html
    # rendered without the request: it must not claim there is no model or no account
    assert "No model loaded" not in html and "Sign in" not in html


def test_a_stale_csrf_token_shows_the_apps_page_and_leads_back(clinician, samples):
    client = Client(enforce_csrf_checks=True)
    client.force_login(clinician)
    form = client.get("/").content.decode()
    assert "csrfmiddlewaretoken" in form
    token = form.split('name="csrfmiddlewaretoken" value="')[1].split('"')[0]
    client.logout()
    client.post("/account/login", {"username": "dr_ada", "password": PASSWORD})  # another tab
    with open(samples[0], "rb") as f:
        response = client.post("/", {"image": f, "csrfmiddlewaretoken": token})
    html = response.content.decode()
    assert response.status_code == 403
    assert "This form had expired" in html and "app.css" in html and 'href="/"' in html
    assert "DEBUG" not in html and "CSRF verification failed" not in html


def test_no_log_line_can_be_forged_with_a_newline(settings):
    """Django escapes the request path itself; every other message (a name typed into a
    form, an upstream error) goes through the console handler's filter."""
    from diagnosis.middleware import EscapeControlCharacters

    assert settings.LOGGING["handlers"]["console"]["filters"] == ["escape"]
    record = logging.LogRecord(
        "diagnosis", logging.WARNING, __file__, 1, "name %s", ("a\nb",), None
    )
    EscapeControlCharacters().filter(record)
    assert record.getMessage() == "name a\\x0ab"


def test_the_api_answers_json_for_a_bad_json_body(clinician):
    client = logged_in(clinician)
    response = client.post(
        "/api/v1/predictions/1/feedback", "{not json", content_type="application/json"
    )
    assert response.status_code in (400, 404) and json.loads(response.content)


def test_health_tells_the_public_status_and_model_version_only(client, settings, tmp_path):
    from diagnosis import inference

    body = client.get("/health").json()
    assert set(body) == {"status", "model_loaded", "version", "sha256", "commit"}
    assert body["commit"] is None, "run from the repository: no release.json"
    settings.RELEASE_COMMIT = "b" * 40  # a packaged slug's (pneumonia.package --commit)
    assert client.get("/health").json()["commit"] == "b" * 40
    settings.MODEL_DIR = tmp_path / "missing"
    inference.reset()
    down = client.get("/health")
    assert down.status_code == 503 and str(tmp_path) not in down.content.decode()


def test_signed_in_pages_are_never_cached(clinician, client):
    assert client.get("/").get("Cache-Control") in (None, "")  # public landing page
    signed_in = logged_in(clinician)
    for url in ("/", "/history", "/account/tokens", "/model"):
        assert "no-store" in signed_in.get(url)["Cache-Control"], url


def test_a_chunked_api_upload_is_told_to_send_a_length(clinician):
    client = logged_in(clinician)
    response = client.generic(
        "POST",
        "/api/v1/predictions",
        b"",
        content_type="multipart/form-data; boundary=x",
        headers={"Transfer-Encoding": "chunked"},
    )
    assert response.status_code == 411 and response.json()["error"]["code"] == "length_required"


LONG_PART_HEADER = (
    b'--x\r\nContent-Disposition: form-data; name="image"; filename="'
    + b"a" * 2000
    + b'.jpg"\r\n\r\nJPEG\r\n--x--\r\n'
)


@pytest.mark.parametrize("url", ["/", "/api/v1/predictions"])
@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"--x\r\n\r\n--x--\r\n"),
        ("multipart/form-data; boundary=", b"--x\r\n\r\n--x--\r\n"),
        ("multipart/form-data; boundary=é", b"--x\r\n\r\n--x--\r\n"),
        ("multipart/form-data; boundary=x", LONG_PART_HEADER),  # over the parser's header limit
    ],
)
def test_a_multipart_body_django_cannot_parse_is_a_clear_400(
    clinician, caplog, url, content_type, body
):
    """Django's parser raises on such a body wherever the form is first read; the answer says
    what to send, and the log gets one line, not a traceback."""
    client = logged_in(clinician)
    client.raise_request_exception = False
    with caplog.at_level(logging.INFO):
        response = client.generic("POST", url, body, content_type=content_type)
    assert response.status_code == 400
    if url.startswith("/api/"):
        assert response.json()["error"]["code"] == "bad_multipart"
    else:
        assert "multipart/form-data" in response.content.decode()
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert any("multipart" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PROPFIND", "FOO"])
@pytest.mark.parametrize("url", ["/", "/history", "/account/login"])
def test_a_method_no_page_serves_is_a_501_not_a_stale_form(clinician, method, url):
    """CSRF refuses every unsafe method before the view's own 405: it must not be told as
    an expired form. (The API's routes are CSRF-exempt: 405 with Allow, test_openapi.py.)"""
    client = Client(enforce_csrf_checks=True)
    client.force_login(clinician)
    response = client.generic(method, url)
    assert response.status_code == 501
    body = response.content.decode()
    assert "This form had expired" not in body and "not implement" in body
