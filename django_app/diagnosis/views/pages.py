"""The pages clinicians and staff use in a browser."""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from diagnosis import drift, monitoring
from diagnosis.charts import bar_chart, line_chart
from diagnosis.feedback import (
    FeedbackRefused,
    find_prediction,
    give_feedback,
    visible_refusals,
)
from diagnosis.inference import get_model
from diagnosis.models import LABEL_CHOICES, ApiToken
from diagnosis.views.common import (
    UploadError,
    data_uri,
    history_filters,
    page_of,
    predict_upload,
)
from pneumonia.serving import BundleError

logger = logging.getLogger(__name__)

REFUSALS_SHOWN = 20  # the history page lists the latest refused uploads


def upload_page(request: HttpRequest, error: str = "", status: int = 200) -> HttpResponse:
    """The upload form; the browser checks the file's size against the limit before sending."""
    context = {"error": error, "max_upload_bytes": settings.MAX_UPLOAD_BYTES}
    return render(request, "diagnosis/upload.html", context, status=status)


@require_http_methods(["GET", "POST"])
def upload(request: HttpRequest) -> HttpResponse:
    """GET: the landing page (public), with the upload form for signed-in clinicians.
    POST: predict and show the result, with the feedback form."""
    if request.method == "GET" or not request.user.is_authenticated:
        if request.method == "POST":
            return redirect(f"{reverse('login')}?next={reverse('upload')}")
        return upload_page(request)
    try:
        result, prediction = predict_upload(request, "web")
    except UploadError as exc:
        return upload_page(request, exc.message, exc.status)
    return render(
        request,
        "diagnosis/result.html",
        {
            "result": result,
            "prediction": prediction,
            "percent": round(result.probability * 100, 1),
            "threshold_percent": round(result.threshold * 100, 1),
            "original_uri": data_uri(result.original_png, "image/png"),
            "heatmap_uri": data_uri(result.heatmap_jpeg, "image/jpeg"),
            "labels": [value for value, _ in LABEL_CHOICES],
            "hold_minutes": settings.FEEDBACK_HOLD_SECONDS // 60,
        },
    )


@login_required
@require_GET
def history(request: HttpRequest) -> HttpResponse:
    queryset, values, error = history_filters(request)
    page = page_of(request, queryset)
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
            "refusals": visible_refusals(request.user)[:REFUSALS_SHOWN],
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
            "percent": round(prediction.probability * 100, 1),
            "threshold_percent": round(prediction.threshold * 100, 1),
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
            "drift": drift.served_report(),
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
