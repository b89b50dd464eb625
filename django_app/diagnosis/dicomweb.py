"""DICOMweb on the wire (PS3.18): ``multipart/related; type="application/dicom"`` bodies read
and written, the Store Instances Response in DICOM JSON, and the two requests the app makes to
a PACS: STOW-RS (a result object stored back) and WADO-RS (an instance retrieved).

Bodies are bounded before they are split: a part is a view into the body, never a copy."""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from email.message import Message

DICOM = "application/dicom"


class DicomWebError(Exception):
    """A request the app cannot take (``status``) or a PACS that did not answer as it should."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status, self.message = status, message


def _parameters(content_type: str) -> tuple[str, dict[str, str]]:
    header = Message()
    header["content-type"] = content_type
    params = {k.lower(): v for k, v in header.get_params()[1:]}
    return header.get_content_type(), params


def split_related(body: bytes, content_type: str, max_parts: int) -> list[memoryview]:
    """The DICOM parts of a ``multipart/related`` body (``DicomWebError`` if it is not one, a
    part is of another type, or it holds more than ``max_parts``)."""
    kind, params = _parameters(content_type)
    if kind != "multipart/related":
        raise DicomWebError(
            f'Send STOW-RS as multipart/related; type="{DICOM}", not {kind}.', status=415
        )
    declared = params.get("type", DICOM).lower()
    if declared != DICOM:
        raise DicomWebError(
            f"Only {DICOM} parts are accepted (type={declared!r}): send DICOM instances, not "
            "metadata and bulk data.",
            status=415,
        )
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise DicomWebError("The multipart/related body has no boundary parameter.")
    delimiter = b"--" + boundary.encode("latin-1")
    view = memoryview(body)
    start = body.find(delimiter)
    if start < 0:
        raise DicomWebError("The body holds no part delimited by its boundary.")
    parts: list[memoryview] = []
    position = start + len(delimiter)
    while True:
        if body[position : position + 2] == b"--":  # the closing delimiter
            break
        head_end = body.find(b"\r\n\r\n", position)
        end = body.find(b"\r\n" + delimiter, position)
        if head_end < 0 or end < 0 or head_end > end:
            raise DicomWebError("A part of the body is not terminated by the boundary.")
        headers = Message()
        for line in body[position:head_end].decode("latin-1").split("\r\n"):
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip()] = value.strip()
        part_type = headers.get_content_type() if headers.get("content-type") else DICOM
        if part_type != DICOM:
            raise DicomWebError(f"A part is {part_type}, not {DICOM}.", status=415)
        if len(parts) == max_parts:
            raise DicomWebError(
                f"The request holds more than {max_parts} instances: send fewer per request "
                '(Orthanc: "StowMaxInstances" in its "DicomWeb" section).',
                status=413,
            )
        parts.append(view[head_end + 4 : end])
        position = end + 2 + len(delimiter)
    if not parts:
        raise DicomWebError("The multipart/related body holds no DICOM instance.")
    return parts


def join_related(instances: list[bytes]) -> tuple[bytes, str]:
    """A ``multipart/related`` body of DICOM ``instances``; returns (body, content type)."""
    boundary = secrets.token_hex(16)
    chunks = []
    for data in instances:
        chunks += [f"--{boundary}\r\nContent-Type: {DICOM}\r\n\r\n".encode(), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="{DICOM}"; boundary={boundary}'


# Failure Reason (0008,1197) codes of PS3.4 Annex GG / PS3.18 used by the app.
PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
# Warning Reason (0008,1196): the instance was acknowledged but not classified.
ELEMENTS_DISCARDED = 0xB006


def store_response(acknowledged: list[dict], failed: list[dict], retrieve_url: str | None) -> dict:
    """The Store Instances Response Module as DICOM JSON. Each entry: ``class_uid``,
    ``instance_uid``, and ``warning`` (acknowledged) or ``failure`` (failed) codes."""

    def reference(entry: dict) -> dict:
        item = {
            "00081150": {"vr": "UI", "Value": [entry["class_uid"]]}
            if entry["class_uid"]
            else {"vr": "UI"},
            "00081155": {"vr": "UI", "Value": [entry["instance_uid"]]}
            if entry["instance_uid"]
            else {"vr": "UI"},
        }
        if entry.get("warning"):
            item["00081196"] = {"vr": "US", "Value": [entry["warning"]]}
        if entry.get("failure"):
            item["00081197"] = {"vr": "US", "Value": [entry["failure"]]}
        return item

    response: dict = {}
    if retrieve_url:
        response["00081190"] = {"vr": "UR", "Value": [retrieve_url]}
    if acknowledged:
        response["00081199"] = {"vr": "SQ", "Value": [reference(e) for e in acknowledged]}
    if failed:
        response["00081198"] = {"vr": "SQ", "Value": [reference(e) for e in failed]}
    return response


def _request(url: str, authorization: str, timeout: float, **kwargs) -> tuple[int, bytes, str]:
    headers = dict(kwargs.pop("headers", {}))
    if authorization:
        headers["Authorization"] = authorization
    request = urllib.request.Request(url, headers=headers, **kwargs)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()[:2000], exc.headers.get("Content-Type", "")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DicomWebError(f"the PACS at {url} could not be reached: {reason}", 502) from None


def stow(dicomweb_url: str, authorization: str, instances: list[bytes], timeout: float = 60):
    """Store ``instances`` in the PACS with STOW-RS (``DicomWebError`` unless all were)."""
    body, content_type = join_related(instances)
    url = dicomweb_url.rstrip("/") + "/studies"
    status, answer, _ = _request(
        url,
        authorization,
        timeout,
        data=body,
        method="POST",
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
    )
    if status != 200:
        detail = answer[:300].decode("utf-8", "replace")
        raise DicomWebError(f"STOW-RS to {url} answered {status}: {detail}", 502)
    try:
        failed = json.loads(answer or b"{}").get("00081198", {}).get("Value")
    except ValueError:
        failed = None
    if failed:
        raise DicomWebError(f"STOW-RS to {url} refused the result object: {failed}", 502)


def retrieve(
    dicomweb_url: str,
    authorization: str,
    study: str,
    series: str,
    instance: str,
    max_bytes: int,
    timeout: float = 60,
) -> bytes:
    """One instance with WADO-RS, as its DICOM file (``DicomWebError`` if it is larger than
    ``max_bytes`` or the PACS does not send it)."""
    url = f"{dicomweb_url.rstrip('/')}/studies/{study}/series/{series}/instances/{instance}"
    request = urllib.request.Request(url, headers={"Accept": f'multipart/related; type="{DICOM}"'})
    if authorization:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise DicomWebError(f"the instance is larger than {max_bytes // 2**20} MB", 413)
            body = response.read(max_bytes + 1)
            content_type = response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        raise DicomWebError(f"WADO-RS {url} answered {exc.code}", 502) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DicomWebError(f"the PACS at {url} could not be reached: {reason}", 502) from None
    if len(body) > max_bytes:
        raise DicomWebError(f"the instance is larger than {max_bytes // 2**20} MB", 413)
    (part,) = split_related(body, content_type, max_parts=1)
    return bytes(part)


def get_json(url: str, authorization: str, timeout: float = 30):
    """A JSON answer of the PACS's REST API (Orthanc's /changes, /instances/...)."""
    status, answer, _ = _request(
        url, authorization, timeout, headers={"Accept": "application/json"}
    )
    if status != 200:
        raise DicomWebError(f"{url} answered {status}", 502)
    return json.loads(answer)
