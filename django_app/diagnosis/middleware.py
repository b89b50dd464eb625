"""Request and response guards and counters: the metrics of every answer, the
Content-Security-Policy header (Django 5.2 has no built-in
CSP) and the refusal of NUL bytes, which PostgreSQL cannot store or compare (a 500 otherwise)."""

import logging
import time

from django.conf import settings
from django.http.multipartparser import MultiPartParserError

METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


class MetricsMiddleware:
    """Counts and times every answer by URL pattern, method and status (diagnosis.metrics)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        from diagnosis import metrics

        started = time.perf_counter()
        response = self.get_response(request)
        route = metrics.route_of(request)
        metrics.LATENCY.labels(route).observe(time.perf_counter() - started)
        method = request.method if request.method in METHODS else "other"
        metrics.REQUESTS.labels(route, method, str(response.status_code)).inc()
        return response


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        response.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            # Pages of a signed-in clinician (results, history) stay out of every cache.
            response.setdefault("Cache-Control", "no-store")
        return response


class RejectNulBytesMiddleware:
    """400 for a NUL byte anywhere in the path, the query or a form field: no view, form or
    query ever sees one, whichever field it is in (login name, filters, token names...). A
    form body Django cannot parse is a 400 that says so, here where it is first read."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            has_nul = _has_nul(request)
        except MultiPartParserError:
            from diagnosis.views.errors import bad_multipart

            return bad_multipart(request)
        if has_nul:
            from diagnosis.views.errors import bad_request

            return bad_request(request)
        return self.get_response(request)


def _has_nul(request) -> bool:
    if "\x00" in request.path:
        return True
    fields = [request.GET]
    content_type = request.META.get("CONTENT_TYPE", "")
    length = request.META.get("CONTENT_LENGTH") or "0"
    # An oversized body is left to the view (413) rather than parsed here first.
    small = length.isdigit() and int(length) <= settings.MAX_UPLOAD_BYTES + 64 * 1024
    if (
        request.method == "POST"
        and small
        and content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data"))
    ):
        fields.append(request.POST)
    return any(
        "\x00" in key or any("\x00" in value for value in values)
        for query in fields
        for key, values in query.lists()
    )


class EscapeControlCharacters(logging.Filter):
    """Log records cannot start a new line: a ``%0a`` in a URL (logged decoded by Django's
    request logger) or a newline typed into a form would otherwise forge a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(ord(c) < 32 and c != "\t" for c in message):
            record.msg = "".join(
                c if ord(c) >= 32 or c == "\t" else f"\\x{ord(c):02x}" for c in message
            )
            record.args = None
        return True
