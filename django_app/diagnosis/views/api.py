"""The JSON API (bearer tokens) and the public health check."""

from __future__ import annotations

import json
import logging
import secrets

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from diagnosis import drift, metrics
from diagnosis.accounts import api_error, api_login_required, token_user
from diagnosis.feedback import (
    FeedbackRefused,
    find_prediction,
    give_feedback,
)
from diagnosis.held import held, hold
from diagnosis.inference import get_model
from diagnosis.openapi import spec
from diagnosis.views.common import (
    UploadError,
    history_filters,
    page_of,
    predict_upload,
    prediction_json,
)
from pneumonia.serving import BundleError

logger = logging.getLogger(__name__)


def method_not_allowed(allowed: str, message: str) -> JsonResponse:
    """405 in the API's error format, with the Allow header the spec names."""
    response = api_error(405, "method_not_allowed", message)
    response["Allow"] = allowed
    return response


@csrf_exempt  # GET only, no cookie read: any other method is 405, not a CSRF refusal
@require_GET
def openapi(request: HttpRequest) -> JsonResponse:
    """The API's OpenAPI 3.1 description (public: it holds no data)."""
    return JsonResponse(spec(request.build_absolute_uri("/").rstrip("/") or "/"))


@csrf_exempt  # as above
@require_GET
def metrics_endpoint(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics (diagnosis.metrics), for staff only: a staff API token (what a
    Prometheus scrape sends as its bearer token) or a staff session."""
    if not settings.PROMETHEUS_METRICS:
        return HttpResponse(
            "Metrics are off here (PROMETHEUS_METRICS=0).\n", status=404, content_type="text/plain"
        )
    user = token_user(request) or request.user
    if not user.is_authenticated:
        response = HttpResponse(
            "Send a staff API token: 'Authorization: Bearer <token>'.\n",
            status=401,
            content_type="text/plain",
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if not (user.is_active and user.is_staff):
        return HttpResponse("Metrics are for staff.\n", status=403, content_type="text/plain")
    body, content_type = metrics.exposition()
    response = HttpResponse(body, content_type=content_type)
    response["Cache-Control"] = "no-store"
    return response


@csrf_exempt
@api_login_required
def api_drift(request: HttpRequest) -> JsonResponse:
    """The served model's drift signals (diagnosis.drift), for staff: what the scheduled check
    (``python -m pneumonia.monitor``) reads."""
    if request.method != "GET":
        return method_not_allowed("GET", "Use GET.")
    if not request.user.is_staff:
        return api_error(403, "staff_only", "The drift signals are for staff tokens.")
    report = drift.served_report()
    if report is None:
        return api_error(503, "model_unavailable", "The model is not available right now.")
    return JsonResponse(
        drift.report_json(report, request.build_absolute_uri(reverse("monitoring")))
    )


@csrf_exempt  # as above
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    try:
        model = get_model()
    except BundleError:
        # Public: no paths or build details; the worker's log says what is wrong.
        return JsonResponse(
            {"status": "error", "model_loaded": False, "error": "The model is not loaded."},
            status=503,
        )
    # Public: status, the model's identity and the release's source commit (the deploy's smoke
    # test waits for both); the model's provenance (data version, git commit) is on its card.
    return JsonResponse(
        {
            "status": "ok",
            "model_loaded": True,
            "version": model.version,
            "sha256": model.sha256,
            "commit": settings.RELEASE_COMMIT,
        }
    )


@csrf_exempt  # token auth only: no cookie, so no CSRF exposure
@api_login_required
def api_predictions(request: HttpRequest) -> JsonResponse:
    """POST (multipart, field ``image``): predict and record. GET: the caller's history,
    newest first, 25 a page, filters ``label``, ``date_from``, ``date_to`` (and ``user``
    for staff)."""
    if request.method == "GET":
        queryset, _, error = history_filters(request)
        if error:
            return api_error(400, "bad_filter", error)
        number = request.GET.get("page", "1")
        if not (number.isascii() and number.isdigit() and int(number) >= 1):
            return api_error(400, "bad_page", f"{number!r} is not a page number (1, 2, ...).")
        page = page_of(request, queryset)
        link = lambda n: request.build_absolute_uri(f"?{_with_page(request, n)}")  # noqa: E731
        return JsonResponse(
            {
                "count": page.paginator.count,
                "page": page.number,
                "pages": page.paginator.num_pages,
                "next": link(page.next_page_number()) if page.has_next() else None,
                "previous": link(page.previous_page_number()) if page.has_previous() else None,
                "results": [prediction_json(request, p) for p in page.object_list],
            }
        )
    if request.method != "POST":
        return method_not_allowed(
            "GET, POST", "Use POST with a multipart 'image' file, or GET for your history."
        )
    try:
        result, prediction = predict_upload(request, "api")
    except UploadError as exc:
        if exc.refusal is None:
            return api_error(exc.status, exc.code, exc.message)
        refusal = {"id": exc.refusal.pk, "reason": exc.refusal.reason}
        return api_error(exc.status, exc.code, exc.message, refusal=refusal)
    token = secrets.token_urlsafe(18)
    hold(f"heatmap:{token}", request.user.pk, result.heatmap_jpeg, settings.HEATMAP_HOLD_SECONDS)
    return JsonResponse(
        {
            **prediction_json(request, prediction),
            "model": {
                "name": get_model().manifest.get("name"),
                "version": prediction.model_version,
                "sha256": prediction.model_sha256,
            },
            "heatmap_url": request.build_absolute_uri(reverse("heatmap", args=[token])),
            "heatmap_expires_in_seconds": settings.HEATMAP_HOLD_SECONDS,
            "image_held_for_consent_seconds": settings.FEEDBACK_HOLD_SECONDS,
        },
        status=200,  # 200, not 201: the answer is the prediction; kept for v1 clients
    )


def _with_page(request: HttpRequest, number: int) -> str:
    query = request.GET.copy()
    query["page"] = str(number)
    return query.urlencode()


@csrf_exempt
@api_login_required
def api_prediction(request: HttpRequest, pk: int) -> JsonResponse:
    if request.method != "GET":
        return method_not_allowed("GET", "Use GET.")
    try:
        return JsonResponse(prediction_json(request, find_prediction(request.user, pk)))
    except FeedbackRefused as exc:
        return api_error(exc.status, exc.code, exc.message)


@csrf_exempt
@api_login_required
def api_feedback(request: HttpRequest, pk: int) -> JsonResponse:
    """POST JSON ``{"true_label": "NORMAL"|"PNEUMONIA", "consent": false}``."""
    if request.method != "POST":
        return method_not_allowed("POST", "Use POST with a JSON body.")
    try:
        body = json.loads(request.body or b"{}")
        if not isinstance(body, dict):
            raise ValueError
    except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
        return api_error(
            400, "bad_json", 'Send a JSON object: {"true_label": "NORMAL", "consent": false}.'
        )
    consent = body.get("consent", False)
    if not isinstance(consent, bool):
        return api_error(400, "bad_consent", "'consent' must be true or false.")
    try:
        give_feedback(request.user, pk, body.get("true_label"), consent)
    except FeedbackRefused as exc:
        return api_error(exc.status, exc.code, exc.message)
    prediction = find_prediction(request.user, pk)
    return JsonResponse(prediction_json(request, prediction), status=201)


@csrf_exempt
@api_login_required
def heatmap(request: HttpRequest, token: str) -> HttpResponse:
    if request.method != "GET":
        return method_not_allowed("GET", "Use GET.")
    jpeg = held(f"heatmap:{token}", request.user.pk)
    if jpeg is None:
        return api_error(404, "not_found", "This heat map does not exist or has expired.")
    response = HttpResponse(jpeg, content_type="image/jpeg")
    response["Cache-Control"] = "private, no-store"
    return response
