"""What the pages and the API share: taking an upload, filtering the history, JSON of a
prediction."""

from __future__ import annotations

import base64
import hashlib
import logging

from django.conf import settings
from django.core.paginator import Paginator
from django.http import HttpRequest
from django.urls import reverse
from django.utils.dateparse import parse_date

from diagnosis import metrics
from diagnosis.feedback import (
    hold_image,
    visible_predictions,
)
from diagnosis.inference import Result, get_model, read_upload
from diagnosis.models import LABEL_CHOICES, Prediction, Refusal, is_synthetic
from pneumonia.serving import BundleError, InvalidImage, NotAChestXray

logger = logging.getLogger(__name__)


FIELD = "image"
CASE_REFERENCE_MAX = 40


class UploadError(Exception):
    def __init__(self, status: int, code: str, message: str, refusal: Refusal | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.refusal = refusal  # recorded in the history: an image the model gave no answer to


def predict_upload(request: HttpRequest, source: str) -> tuple[Result, Prediction]:
    """Validate the multipart upload in ``request``, run the model on it and record the
    prediction (not the image) for ``request.user``; counted in diagnosis.metrics."""
    try:
        result, prediction = _predict_upload(request, source)
    except UploadError as exc:
        metrics.count_refusal(exc.code, exc.refusal.reason if exc.refusal else None)
        raise
    metrics.count_prediction(prediction)
    return result, prediction


def _predict_upload(request: HttpRequest, source: str) -> tuple[Result, Prediction]:
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
    width, height = gray.info["source_size"]
    upload_fields = {
        "user": request.user,
        "synthetic": is_synthetic(request.user),
        "source": source,
        "model_version": model.version,
        "image_sha256": hashlib.sha256(data).hexdigest(),
        "case_reference": case_reference,
        "image_width": width,
        "image_height": height,
    }
    try:
        result = model.predict_image(gray)
    except NotAChestXray as exc:
        refusal = Refusal.objects.create(reason=exc.reason, **upload_fields)
        logger.info("refused: %s model=%s", exc.reason, model.version)
        raise UploadError(422, "not_a_chest_xray", str(exc), refusal) from None
    prediction = Prediction.record(result, model.sha256, **upload_fields)
    hold_image(prediction, result.original_png)  # metadata-free, for consent within the hour
    # Log the outcome only: no file name, no image, nothing that could identify a patient.
    logger.info("prediction %s p=%.3f model=%s", result.label, result.probability, model.version)
    return result, prediction


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def history_filters(request: HttpRequest):
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


def page_of(request: HttpRequest, queryset):
    paginator = Paginator(queryset, settings.HISTORY_PAGE_SIZE)
    return paginator.get_page(request.GET.get("page"))


def prediction_json(request: HttpRequest, prediction: Prediction) -> dict:
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
