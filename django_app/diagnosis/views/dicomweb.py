"""STOW-RS for a hospital's PACS: ``POST /dicomweb/studies[/{study}]`` with a PACS site's API
token (``manage.py add_pacs_site``). Each instance is classified once (``diagnosis.pacs``) and
acknowledged in the Store Instances Response; one the model does not read is acknowledged with
a warning and recorded as skipped, with the reason."""

from __future__ import annotations

import logging

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from diagnosis import dicomweb, pacs
from diagnosis.accounts import api_error, api_login_required
from diagnosis.models import PacsSite

logger = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"


@csrf_exempt  # token auth only: no cookie
@api_login_required
def stow(request: HttpRequest, study: str | None = None) -> JsonResponse:
    if request.method != "POST":
        response = api_error(405, "method_not_allowed", "Use POST (STOW-RS).")
        response["Allow"] = "POST"
        return response
    site = PacsSite.objects.filter(user=request.user).first()
    if site is None:
        return api_error(
            403,
            "not_a_pacs_site",
            "This token is not a PACS site's: see `manage.py add_pacs_site`.",
        )
    limit = settings.MAX_UPLOAD_BYTES + 1024 * 1024  # what the ASGI bound lets through
    length = request.META.get("CONTENT_LENGTH") or ""
    if length.isdigit() and int(length) > limit:
        return api_error(413, "too_large", _too_large(limit))
    body = request.read(limit + 1)  # the ASGI server has it spooled; never more than this
    if len(body) > limit:
        return api_error(413, "too_large", _too_large(limit))
    try:
        parts = dicomweb.split_related(
            body, request.META.get("CONTENT_TYPE", ""), settings.DICOMWEB_MAX_INSTANCES
        )
    except dicomweb.DicomWebError as exc:
        logger.info("pacs %s: STOW-RS request refused: %s", site.name, exc.message)
        return api_error(exc.status, "bad_stow_request", exc.message)
    acknowledged, failed = [], []
    for part in parts:
        data = bytes(part)
        try:
            received = pacs.receive(site, data, study=study)
        except pacs.Unacceptable as exc:
            failed.append(pacs.response_entry(exc.header, None, exc))
            logger.info("pacs %s: instance refused: %s", site.name, exc)
            continue
        acknowledged.append(pacs.response_entry(None, received, None))
    status = 200 if not failed else 202 if acknowledged else 409
    answer = dicomweb.store_response(acknowledged, failed, None)
    return JsonResponse(answer, status=status, content_type=DICOM_JSON)


def _too_large(limit: int) -> str:
    return (
        f"The request is larger than {limit // 2**20} MB: send fewer instances per request "
        '(Orthanc: "StowMaxSize" in its "DicomWeb" section).'
    )
