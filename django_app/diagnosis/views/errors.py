"""Error pages and answers: the app's own, JSON under /api/."""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.utils.http import url_has_allowed_host_and_scheme

from diagnosis.accounts import api_error

logger = logging.getLogger(__name__)


def _wants_json(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def not_found(request: HttpRequest, exception=None) -> HttpResponse:
    if _wants_json(request):
        return api_error(404, "not_found", "No such API route.")
    return render(request, "diagnosis/error.html", {"title": "Page not found"}, status=404)


SERVER_ERROR_HTML = (
    "<!doctype html><html lang=en><meta charset=utf-8><title>Something went wrong</title>"
    "<h1>Something went wrong</h1><p>Please try again. <a href=/>Back to the upload page</a></p>"
)


def server_error(request: HttpRequest) -> HttpResponse:
    """The app's page, rendered without the database (whatever failed may be the database);
    should even that fail, a plain page that still leads back."""
    if _wants_json(request):
        return api_error(500, "server_error", "Something went wrong on our side.")
    try:
        html = render_to_string(
            "diagnosis/error.html",
            {
                "title": "Something went wrong",
                "message": "This is our fault, not yours, and it has been logged. Please try"
                " again; if it keeps happening, tell the staff who run this service.",
                "plain": True,  # no request context: it must not claim "no model", "sign in"
            },
        )
    except Exception:  # noqa: BLE001 - the last resort must not fail
        html = SERVER_ERROR_HTML
    return HttpResponse(html, status=500)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """A form older than the session (signed in again in another tab, or the page left open
    overnight): say so in the app and lead back to the same page. Forms only POST: any other
    method refused here (PUT, DELETE, PROPFIND...) is one no page serves, a 501."""
    if request.method != "POST":
        return unknown_method(request)
    if _wants_json(request):
        return api_error(403, "csrf_failed", "Send the request with a valid CSRF token.")
    back = request.path if url_has_allowed_host_and_scheme(request.path, None) else "/"
    return render(
        request,
        "diagnosis/error.html",
        {
            "title": "This form had expired",
            "message": "You signed in again (perhaps in another tab) or the page was open for a"
            " long time, so this form was no longer valid and nothing was sent. Open the page"
            " again and repeat what you did.",
            "back": back,
        },
        status=403,
    )


def permission_denied(request: HttpRequest, exception=None) -> HttpResponse:
    if _wants_json(request):
        return api_error(403, "forbidden", "You may not do this.")
    return render(
        request,
        "diagnosis/error.html",
        {
            "title": "Not allowed",
            "message": "This page is for staff only.",
        },
        status=403,
    )


def bad_request(request: HttpRequest, exception=None) -> HttpResponse:
    if _wants_json(request):
        return api_error(400, "bad_request", "The request could not be understood.")
    return render(request, "diagnosis/error.html", {"title": "Bad request"}, status=400)


def bad_multipart(request: HttpRequest) -> HttpResponse:
    """A multipart/form-data body Django's parser refuses (no usable boundary, a part header
    over its limit, broken base64): say what to send instead of the generic page."""
    logger.warning("Refused a multipart/form-data body Django cannot parse: %s", request.path)
    message = (
        "The body was not valid multipart/form-data (for example, its boundary is missing or"
        " malformed). Upload the image with the form on the page, or let your HTTP client build"
        " the multipart body (curl -F image=@FILE); do not set the Content-Type header by hand."
    )
    if _wants_json(request):
        return api_error(400, "bad_multipart", message)
    return render(
        request, "diagnosis/error.html", {"title": "Bad request", "message": message}, status=400
    )


def unknown_method(request: HttpRequest) -> HttpResponse:
    """501 for a method no page serves (RFC 9110: one the server supports for no resource);
    the API's routes answer 405 with their Allow header themselves."""
    message = "This service does not implement that HTTP method; its pages take GET and POST."
    return render(
        request,
        "diagnosis/error.html",
        {"title": "Not implemented", "message": message},
        status=501,
    )
