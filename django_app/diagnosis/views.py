"""Pages (upload, result, model card), the JSON API and /health."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.dateparse import parse_date
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from diagnosis import monitoring
from diagnosis.accounts import api_error, api_login_required
from diagnosis.charts import bar_chart, line_chart
from diagnosis.feedback import (
    FeedbackRefused,
    find_prediction,
    give_feedback,
    hold_image,
    visible_predictions,
)
from diagnosis.held import hold
from diagnosis.inference import Result, get_model, read_upload
from diagnosis.models import LABEL_CHOICES, ApiToken, Prediction
from pneumonia.serving import BundleError, InvalidImage

logger = logging.getLogger(__name__)

FIELD = "image"
CASE_REFERENCE_MAX = 40


class UploadError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _predict_upload(request: HttpRequest, source: str) -> tuple[Result, Prediction]:
    """Validate the multipart upload in ``request``, run the model on it and record the
    prediction (not the image) for ``request.user``."""
    limit = settings.MAX_UPLOAD_BYTES
    if "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
        # WSGI gives Django no body without a length: say that, not "no file received".
        raise UploadError(
            411, "length_required", "Send the file with a Content-Length header, not chunked."
        )
    if int(request.META.get("CONTENT_LENGTH") or 0) > limit + 64 * 1024:
        raise UploadError(413, "too_large", f"The file is larger than {limit // 2**20} MB.")
    upload = request.FILES.get(FIELD)
    if upload is None:
        raise UploadError(400, "no_file", "No file received: choose an X-ray image to upload.")
    if upload.size > limit:
        raise UploadError(413, "too_large", f"The file is larger than {limit // 2**20} MB.")
    case_reference = " ".join(request.POST.get("case_reference", "").split())
    if len(case_reference) > CASE_REFERENCE_MAX:
        raise UploadError(
            400,
            "case_reference_too_long",
            f"The case reference has {len(case_reference)} "
            f"characters; {CASE_REFERENCE_MAX} at most.",
        )
    data = upload.read()
    upload.close()
    try:
        gray = read_upload(data)
    except InvalidImage as exc:
        raise UploadError(400, "unreadable_image", str(exc)) from None
    try:
        model = get_model()
    except BundleError:
        raise UploadError(
            503, "model_unavailable", "The model is not available right now."
        ) from None
    result = model.predict_image(gray)
    prediction = Prediction.objects.create(
        user=request.user,
        source=source,
        model_version=model.version,
        model_sha256=model.sha256,
        label=result.label,
        probability=result.probability,
        threshold=result.threshold,
        image_sha256=hashlib.sha256(data).hexdigest(),
        case_reference=case_reference,
        image_width=gray.info["source_size"][0],
        image_height=gray.info["source_size"][1],
    )
    hold_image(prediction, result.original_png)  # metadata-free, for consent within the hour
    # Log the outcome only: no file name, no image, nothing that could identify a patient.
    logger.info("prediction %s p=%.3f model=%s", result.label, result.probability, model.version)
    return result, prediction


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


@require_http_methods(["GET", "POST"])
def upload(request: HttpRequest) -> HttpResponse:
    """GET: the landing page (public), with the upload form for signed-in clinicians.
    POST: predict and show the result, with the feedback form."""
    if request.method == "GET" or not request.user.is_authenticated:
        if request.method == "POST":
            return redirect(f"{reverse('login')}?next={reverse('upload')}")
        return render(request, "diagnosis/upload.html")
    try:
        result, prediction = _predict_upload(request, "web")
    except UploadError as exc:
        return render(request, "diagnosis/upload.html", {"error": exc.message}, status=exc.status)
    return render(
        request,
        "diagnosis/result.html",
        {
            "result": result,
            "prediction": prediction,
            "percent": round(result.probability * 100, 1),
            "threshold_percent": round(result.threshold * 100, 1),
            "original_uri": _data_uri(result.original_png, "image/png"),
            "heatmap_uri": _data_uri(result.heatmap_jpeg, "image/jpeg"),
            "labels": [value for value, _ in LABEL_CHOICES],
            "hold_minutes": settings.FEEDBACK_HOLD_SECONDS // 60,
        },
    )


def _history_filters(request: HttpRequest):
    """(queryset, filter values, error) from ?label=&date_from=&date_to=&user= ."""
    queryset = visible_predictions(request.user)
    keys = ("label", "date_from", "date_to", "user", "case")
    values = {k: request.GET.get(k, "").strip() for k in keys}
    if values["case"]:
        queryset = queryset.filter(case_reference__icontains=values["case"])
    if values["label"]:
        if values["label"] not in dict(LABEL_CHOICES):
            return queryset.none(), values, f"Unknown label {values['label']!r}."
        queryset = queryset.filter(label=values["label"])
    for key, lookup in (
        ("date_from", "created_at__date__gte"),
        ("date_to", "created_at__date__lte"),
    ):
        if values[key]:
            try:
                day = parse_date(values[key])
            except ValueError:
                day = None
            if day is None:
                return queryset.none(), values, f"{values[key]!r} is not a date (YYYY-MM-DD)."
            queryset = queryset.filter(**{lookup: day})
    if values["user"] and request.user.is_staff:
        queryset = queryset.filter(user__username=values["user"])
    return queryset, values, None


def _page(request: HttpRequest, queryset):
    paginator = Paginator(queryset, settings.HISTORY_PAGE_SIZE)
    return paginator.get_page(request.GET.get("page"))


@login_required
@require_GET
def history(request: HttpRequest) -> HttpResponse:
    queryset, values, error = _history_filters(request)
    page = _page(request, queryset)
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "diagnosis/history.html",
        {
            "page": page,
            "filters": values,
            "error": error,
            "query": query.urlencode(),
            "labels": [value for value, _ in LABEL_CHOICES],
        },
        status=400 if error else 200,
    )


@login_required
@require_GET
def prediction_detail(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        prediction = find_prediction(request.user, pk)
    except FeedbackRefused:
        raise Http404("no such prediction") from None
    return render(
        request,
        "diagnosis/prediction.html",
        {
            "prediction": prediction,
            "labels": [value for value, _ in LABEL_CHOICES],
            "hold_minutes": settings.FEEDBACK_HOLD_SECONDS // 60,
        },
    )


@login_required
@require_POST
def feedback(request: HttpRequest, pk: int) -> HttpResponse:
    label = request.POST.get("true_label", "")
    if request.POST.get("verdict") == "confirm":
        try:
            label = find_prediction(request.user, pk).label
        except FeedbackRefused:
            raise Http404("no such prediction") from None
    try:
        give_feedback(request.user, pk, label, request.POST.get("consent") == "on")
    except FeedbackRefused as exc:
        if exc.status == 404:
            raise Http404("no such prediction") from None
        return render(
            request,
            "diagnosis/error.html",
            {
                "title": "Feedback not recorded",
                "message": exc.message,
                "back": reverse("prediction", args=[pk]),
            },
            status=exc.status,
        )
    messages.success(request, "Thank you: your feedback was recorded.")
    return redirect("prediction", pk=pk)


@login_required
@require_http_methods(["GET", "POST"])
def tokens(request: HttpRequest) -> HttpResponse:
    """The user's API tokens: create (the secret is shown once) and revoke."""
    new_token = None
    if request.method == "POST":
        if request.POST.get("action") == "create":
            _, new_token = ApiToken.issue(request.user, request.POST.get("name", "").strip())
        elif request.POST.get("action") == "revoke":
            token_id = request.POST.get("id", "")
            token = ApiToken.objects.filter(
                user=request.user, pk=int(token_id) if token_id.isdigit() else 0
            )
            if not token.exists():
                raise Http404("no such token")
            token.get().revoke()
            messages.success(request, "The token was revoked.")
            return redirect("tokens")
        else:
            return render(request, "diagnosis/error.html", {"title": "Bad request"}, status=400)
    return render(
        request,
        "diagnosis/tokens.html",
        {
            "tokens": request.user.api_tokens.all(),
            "new_token": new_token,
        },
    )


@login_required
@require_GET
def monitoring_page(request: HttpRequest) -> HttpResponse:
    if not request.user.is_staff:
        raise PermissionDenied("staff only")
    try:
        days = min(max(int(request.GET.get("days", 30)), 2), 365)
    except ValueError:
        days = 30
    summary = monitoring.summarize(days)
    labels = [d.strftime("%m-%d") for d in summary.days]
    bins = [f"{i / 10:.1f}" for i in range(10)]
    versions = [a.model_version for a in summary.agreement]
    return render(
        request,
        "diagnosis/monitoring.html",
        {
            "summary": summary,
            "days": days,
            "volume_chart": bar_chart(
                "Predictions per day", labels, summary.per_day, "day (UTC)", "predictions"
            ),
            "share_chart": line_chart(
                "Share predicted PNEUMONIA per day",
                labels,
                summary.pneumonia_share,
                "day (UTC)",
                "share PNEUMONIA",
            ),
            "histogram_chart": bar_chart(
                "Predictions by probability of pneumonia",
                bins,
                summary.histogram,
                "probability of pneumonia (bin start)",
                "predictions",
            ),
            "agreement_chart": bar_chart(
                "Agreement with clinician feedback per model version",
                versions,
                [a.rate for a in summary.agreement],
                "model version",
                "share agreed",
                y_format=".0%",
                y_max=1.0,
            ),
        },
    )


@require_GET
def model_card(request: HttpRequest) -> HttpResponse:
    status = 200
    try:
        get_model()
    except BundleError:
        status = 503
    return render(request, "diagnosis/model_card.html", status=status)


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
    # Public: status and the model's identity (the deploy's smoke test compares the sha256);
    # provenance (data version, git commit) is on the model card.
    return JsonResponse(
        {"status": "ok", "model_loaded": True, "version": model.version, "sha256": model.sha256}
    )


def _prediction_json(request: HttpRequest, prediction: Prediction) -> dict:
    feedback = getattr(prediction, "feedback", None)
    return {
        "id": prediction.pk,
        "created_at": prediction.created_at.isoformat(),
        "user": prediction.user.get_username(),
        "source": prediction.source,
        "case_reference": prediction.case_reference,
        "label": prediction.label,
        "probability": round(prediction.probability, 6),
        "threshold": prediction.threshold,
        "model": {"version": prediction.model_version, "sha256": prediction.model_sha256},
        "image": {
            "sha256": prediction.image_sha256,
            "width": prediction.image_width,
            "height": prediction.image_height,
        },
        "feedback": None
        if feedback is None
        else {
            "true_label": feedback.true_label,
            "consent": feedback.consent,
            "agrees": feedback.agrees,
            "created_at": feedback.created_at.isoformat(),
        },
        "feedback_url": request.build_absolute_uri(reverse("api_feedback", args=[prediction.pk])),
    }


@csrf_exempt  # token auth only: no cookie, so no CSRF exposure
@api_login_required
def api_predictions(request: HttpRequest) -> JsonResponse:
    """POST (multipart, field ``image``): predict and record. GET: the caller's history,
    newest first, 25 a page, filters ``label``, ``date_from``, ``date_to`` (and ``user``
    for staff)."""
    if request.method == "GET":
        queryset, _, error = _history_filters(request)
        if error:
            return api_error(400, "bad_filter", error)
        page = _page(request, queryset)
        link = lambda n: request.build_absolute_uri(f"?{_with_page(request, n)}")  # noqa: E731
        return JsonResponse(
            {
                "count": page.paginator.count,
                "page": page.number,
                "pages": page.paginator.num_pages,
                "next": link(page.next_page_number()) if page.has_next() else None,
                "previous": link(page.previous_page_number()) if page.has_previous() else None,
                "results": [_prediction_json(request, p) for p in page.object_list],
            }
        )
    if request.method != "POST":
        response = api_error(
            405,
            "method_not_allowed",
            "Use POST with a multipart 'image' file, or GET for your history.",
        )
        response["Allow"] = "GET, POST"
        return response
    try:
        result, prediction = _predict_upload(request, "api")
    except UploadError as exc:
        return api_error(exc.status, exc.code, exc.message)
    token = secrets.token_urlsafe(18)
    hold(f"heatmap:{token}", (request.user.pk, result.heatmap_jpeg))
    return JsonResponse(
        {
            **_prediction_json(request, prediction),
            "model": {
                "name": get_model().manifest.get("name"),
                "version": prediction.model_version,
                "sha256": prediction.model_sha256,
            },
            "heatmap_url": request.build_absolute_uri(reverse("heatmap", args=[token])),
            "heatmap_expires_in_seconds": settings.CACHES["default"]["TIMEOUT"],
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
        return api_error(405, "method_not_allowed", "Use GET.")
    try:
        return JsonResponse(_prediction_json(request, find_prediction(request.user, pk)))
    except FeedbackRefused as exc:
        return api_error(exc.status, exc.code, exc.message)


@csrf_exempt
@api_login_required
def api_feedback(request: HttpRequest, pk: int) -> JsonResponse:
    """POST JSON ``{"true_label": "NORMAL"|"PNEUMONIA", "consent": false}``."""
    if request.method != "POST":
        return api_error(405, "method_not_allowed", "Use POST with a JSON body.")
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
    return JsonResponse(_prediction_json(request, prediction), status=201)


@csrf_exempt
@api_login_required
@require_GET
def heatmap(request: HttpRequest, token: str) -> HttpResponse:
    held = cache.get(f"heatmap:{token}")
    if held is None or held[0] != request.user.pk:
        return api_error(404, "not_found", "This heat map does not exist or has expired.")
    response = HttpResponse(held[1], content_type="image/jpeg")
    response["Cache-Control"] = "private, no-store"
    return response


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
            },
        )
    except Exception:  # noqa: BLE001 - the last resort must not fail
        html = SERVER_ERROR_HTML
    return HttpResponse(html, status=500)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """A form older than the session (signed in again in another tab, or the page left open
    overnight): say so in the app and lead back to the same page."""
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
