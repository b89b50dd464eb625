"""Pages (upload, result, model card), the JSON API and /health."""

from __future__ import annotations

import base64
import logging
import secrets

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

from diagnosis.imaging import UnreadableImage, read_upload
from diagnosis.inference import ModelUnavailable, Result, get_model

logger = logging.getLogger(__name__)

FIELD = "image"


class UploadError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _predict_upload(request: HttpRequest) -> Result:
    """Validate the multipart upload in ``request`` and run the model on it."""
    limit = settings.MAX_UPLOAD_BYTES
    if int(request.META.get("CONTENT_LENGTH") or 0) > limit + 64 * 1024:
        raise UploadError(413, "too_large", f"The file is larger than {limit // 2**20} MB.")
    upload = request.FILES.get(FIELD)
    if upload is None:
        raise UploadError(400, "no_file", "No file received: choose an X-ray image to upload.")
    if upload.size > limit:
        raise UploadError(413, "too_large", f"The file is larger than {limit // 2**20} MB.")
    data = upload.read()
    upload.close()
    try:
        gray = read_upload(data)
    except UnreadableImage as exc:
        raise UploadError(400, "unreadable_image", str(exc)) from None
    try:
        model = get_model()
    except ModelUnavailable:
        raise UploadError(
            503, "model_unavailable", "The model is not available right now."
        ) from None
    result = model.predict(gray)
    # Log the outcome only: no file name, no image, nothing that could identify a patient.
    logger.info("prediction %s p=%.3f model=%s", result.label, result.probability, model.version)
    return result


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


@require_http_methods(["GET", "POST"])
def upload(request: HttpRequest) -> HttpResponse:
    """GET: the upload form. POST: the result page (rendered at once: nothing is stored)."""
    if request.method == "GET":
        return render(request, "diagnosis/upload.html")
    try:
        result = _predict_upload(request)
    except UploadError as exc:
        return render(request, "diagnosis/upload.html", {"error": exc.message}, status=exc.status)
    return render(
        request,
        "diagnosis/result.html",
        {
            "result": result,
            "percent": round(result.probability * 100, 1),
            "threshold_percent": round(result.threshold * 100, 1),
            "original_uri": _data_uri(result.original_png),
            "heatmap_uri": _data_uri(result.heatmap_png),
        },
    )


@require_GET
def model_card(request: HttpRequest) -> HttpResponse:
    status = 200
    try:
        get_model()
    except ModelUnavailable:
        status = 503
    return render(request, "diagnosis/model_card.html", status=status)


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    try:
        model = get_model()
    except ModelUnavailable as exc:
        return JsonResponse(
            {"status": "error", "model_loaded": False, "error": str(exc)}, status=503
        )
    return JsonResponse(
        {
            "status": "ok",
            "model_loaded": True,
            "model": model.manifest.get("name"),
            "version": model.version,
            "sha256": model.sha256,
            "data_version": model.manifest.get("data", {}).get("md5"),
            "git_commit": model.manifest.get("git", {}).get("commit"),
        }
    )


def api_error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


@csrf_exempt  # no cookie-based auth on the API, so no CSRF exposure
def api_predictions(request: HttpRequest) -> JsonResponse:
    """POST /api/v1/predictions (multipart, field ``image``): the prediction as JSON."""
    if request.method != "POST":
        response = api_error(405, "method_not_allowed", "Use POST with a multipart 'image' file.")
        response["Allow"] = "POST"
        return response
    try:
        result = _predict_upload(request)
    except UploadError as exc:
        return api_error(exc.status, exc.code, exc.message)
    model = get_model()
    token = secrets.token_urlsafe(18)
    cache.set(f"heatmap:{token}", result.heatmap_png)
    return JsonResponse(
        {
            "label": result.label,
            "probability": round(result.probability, 6),
            "threshold": result.threshold,
            "model": {
                "name": model.manifest.get("name"),
                "version": model.version,
                "sha256": model.sha256,
            },
            "heatmap_url": request.build_absolute_uri(reverse("heatmap", args=[token])),
            "heatmap_expires_in_seconds": settings.CACHES["default"]["TIMEOUT"],
        },
        status=200,
    )


@require_GET
def heatmap(request: HttpRequest, token: str) -> HttpResponse:
    png = cache.get(f"heatmap:{token}")
    if png is None:
        return api_error(404, "not_found", "This heat map does not exist or has expired.")
    response = HttpResponse(png, content_type="image/png")
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
    """No templates here: whatever failed must not be able to fail the error page too."""
    if _wants_json(request):
        return api_error(500, "server_error", "Something went wrong on our side.")
    return HttpResponse(SERVER_ERROR_HTML, status=500)


def bad_request(request: HttpRequest, exception=None) -> HttpResponse:
    if _wants_json(request):
        return api_error(400, "bad_request", "The request could not be understood.")
    return render(request, "diagnosis/error.html", {"title": "Bad request"}, status=400)
