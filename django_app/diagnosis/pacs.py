"""Chest radiographs from a hospital's PACS, and the answer back into it.

``receive`` is the one path of an instance, whether the PACS pushed it (STOW-RS,
``views/dicomweb.py``) or the worker fetched it (``manage.py pacs_worker``): its header is read
within the upload bounds, it is recorded once per SOP Instance UID (a resend gets the record it
already has), only frontal chest CR/DX images are classified, and a Secondary Capture with the
heat map and the answer burnt in (or, for an image the model will not answer for, a note saying
why) is stored back in the same study with STOW-RS.

The patient's identifiers are copied from the instance into the result object in memory, so
that the PACS files it with the study; the database keeps UIDs, the outcome and the prediction,
and the logs name neither patient nor study.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from PIL import Image, ImageDraw, ImageFont

from diagnosis import dicomweb, metrics
from diagnosis.inference import Result, get_model
from diagnosis.models import DicomInstance, PacsSite, Prediction, Refusal
from pneumonia import serving

logger = logging.getLogger(__name__)

CHEST_MODALITIES = {"CR", "DX"}
FRONTAL_VIEWS = {"PA", "AP"}
DISCLAIMER = "AI decision support, not a diagnosis"
RESULT_SERIES_NUMBER = 9001
RESULT_SERIES_DESCRIPTION = f"Pneumonia AI: {DISCLAIMER}"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
# Identifiers the result object shares with its source (in memory only), so that the PACS files
# it with the patient and the study.
PATIENT_AND_STUDY = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


class Unacceptable(Exception):
    """An instance that cannot even be recorded (no header, no SOP Instance UID)."""

    def __init__(self, message: str, failure: int = dicomweb.CANNOT_UNDERSTAND, header=None):
        super().__init__(message)
        self.failure, self.header = failure, header


def read_header(data: bytes):
    """The instance's data set without its pixels, read within the bounds uploads have
    (``Unacceptable`` if it is not DICOM or names no instance)."""
    import pydicom

    if not serving._is_dicom(data):
        raise Unacceptable("not a DICOM instance")
    preamble = len(data) > 132 and data[128:132] == b"DICM"
    try:
        if serving._DICOM_DEFLATED.encode() in data[:2048]:
            serving._check_inflated_size(data, preamble)  # before pydicom inflates it all
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=not preamble)
    except serving.InvalidImage as exc:
        raise Unacceptable(str(exc), dicomweb.OUT_OF_RESOURCES) from None
    except Exception:  # pydicom raises many types for damaged files
        raise Unacceptable("the DICOM header could not be read") from None
    if not _uid(header, "SOPInstanceUID"):
        raise Unacceptable("the instance has no SOP Instance UID")
    return header


def _uid(ds, keyword: str) -> str:
    value = str(getattr(ds, keyword, "") or "").strip()
    return value if len(value) <= 64 and value.replace(".", "").isdigit() else ""


def skip_reason(header) -> str | None:
    """Why the instance is not one the model reads (None: a frontal chest radiograph)."""
    modality = str(getattr(header, "Modality", "") or "").upper()
    if modality not in CHEST_MODALITIES:
        return f"modality {modality[:16] or 'missing'}: only CR and DX radiographs are read"
    body_part = str(getattr(header, "BodyPartExamined", "") or "").upper()
    view = str(getattr(header, "ViewPosition", "") or "").upper()
    if body_part and body_part != "CHEST":
        return f"body part {body_part[:16]}: only chest radiographs are read"
    if view and view not in FRONTAL_VIEWS:
        return f"view position {view[:16]}: only frontal (PA or AP) views are read"
    if not body_part and not view:
        return "neither BodyPartExamined nor ViewPosition says this is a chest radiograph"
    return None


@dataclass
class Received:
    record: DicomInstance
    repeated: bool  # the PACS had sent this instance before


def receive(site: PacsSite, data: bytes, study: str | None = None) -> Received:
    """Record, classify and answer one instance from ``site`` (``Unacceptable`` if it cannot
    be recorded, or is not of ``study`` where one is named). A resent instance is not
    classified again; a result object the PACS has not acknowledged yet is sent again."""
    header = read_header(data)
    if study is not None and _uid(header, "StudyInstanceUID") != study:
        raise Unacceptable("the instance is not of the study the request names", header=header)
    existing = DicomInstance.objects.filter(
        site=site, sop_instance_uid=_uid(header, "SOPInstanceUID")
    ).first()
    if existing is not None:
        if existing.result_pending:
            deliver(site, existing, header, data)
        return Received(existing, repeated=True)
    try:
        record, result = _classify(site, header, data)
    except IntegrityError:  # the same instance, sent twice at once: the other one recorded it
        record = DicomInstance.objects.get(
            site=site, sop_instance_uid=_uid(header, "SOPInstanceUID")
        )
        return Received(record, repeated=True)
    logger.info(
        "pacs %s: instance %s: %s", site.name, record.pk, record.outcome
    )  # the record's id: no UID or patient data in the log
    if record.result_sop_instance_uid:
        deliver(site, record, header, data, result)
    return Received(record, repeated=False)


def _classify(site: PacsSite, header, data: bytes) -> tuple[DicomInstance, Result | None]:
    fields = {
        "site": site,
        "sop_instance_uid": _uid(header, "SOPInstanceUID"),
        "sop_class_uid": _uid(header, "SOPClassUID"),
        "study_instance_uid": _uid(header, "StudyInstanceUID"),
        "series_instance_uid": _uid(header, "SeriesInstanceUID"),
    }
    reason = skip_reason(header)
    if reason is not None:
        with transaction.atomic():
            return DicomInstance.objects.create(
                outcome=DicomInstance.SKIPPED, reason=reason, **fields
            ), None
    from pydicom.uid import generate_uid

    results = {"result_series_uid": generate_uid(), "result_sop_instance_uid": generate_uid()}
    try:
        gray = serving.read_image(data, max_side=serving.WORKING_SIDE)
    except serving.InvalidImage as exc:
        with transaction.atomic():
            record = DicomInstance.objects.create(
                outcome=DicomInstance.UNREADABLE, reason=str(exc)[:300], **fields, **results
            )
        metrics.count_refusal("unreadable_image")
        return record, None
    model = get_model()
    width, height = gray.info["source_size"]
    upload = {
        "user": site.user,
        "source": "pacs",
        "model_version": model.version,
        "image_sha256": hashlib.sha256(data).hexdigest(),
        "image_width": width,
        "image_height": height,
    }
    try:
        result = model.predict_image(gray)
    except serving.NotAChestXray as exc:
        with transaction.atomic():
            refusal = Refusal.objects.create(reason=exc.reason, **upload)
            record = DicomInstance.objects.create(
                outcome=DicomInstance.REFUSED,
                reason=str(exc)[:300],
                refusal=refusal,
                **fields,
                **results,
            )
        metrics.count_refusal("not_a_chest_xray", exc.reason)
        return record, None
    with transaction.atomic():
        prediction = Prediction.record(result, model.sha256, **upload)
        record = DicomInstance.objects.create(
            outcome=DicomInstance.CLASSIFIED, prediction=prediction, **fields, **results
        )
    metrics.count_prediction(prediction)
    return record, result


def deliver(
    site: PacsSite, record: DicomInstance, header, data: bytes, result: Result | None = None
) -> bool:
    """Store the record's result object in the site's PACS; True once it acknowledged it.
    A failure is kept on the record (``result_error``) and retried on the next resend or by
    ``manage.py pacs_worker``."""
    if record.outcome == DicomInstance.CLASSIFIED and result is None:
        # Sent again: the same answer, recomputed (the model is deterministic; no image kept)
        result = get_model().predict_image(serving.read_image(data, max_side=serving.WORKING_SIDE))
    try:
        dicomweb.stow(
            site.dicomweb_url, site.authorization, [result_object(header, record, result)]
        )
    except dicomweb.DicomWebError as exc:
        record.result_error = exc.message[:300]
        record.save(update_fields=["result_error"])
        logger.warning("pacs %s: instance %s: result not stored: %s", site.name, record.pk, exc)
        return False
    record.result_stored_at, record.result_error = timezone.now(), ""
    record.save(update_fields=["result_stored_at", "result_error"])
    return True


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's own: no system font on the dyno


def answer_lines(record: DicomInstance, result: Result | None) -> list[str]:
    """What the result object says, first line first."""
    model = get_model()
    lines = [DISCLAIMER.upper()]
    if result is not None:
        lines.append(
            f"{result.label}: probability of pneumonia {result.probability:.2f} "
            f"(threshold {result.threshold:.2f})"
        )
        lines.append("Heat map: where the model looked, not a finding")
    else:
        lines.append("No AI result for this image")
        lines.append(record.reason[:120])
    lines.append(f"Model {model.manifest.get('name', 'pneumonia')} {model.version}")
    return lines


def result_picture(record: DicomInstance, result: Result | None) -> Image.Image:
    """The heat map over the image (the display copy the app shows) with the answer above it,
    or the note alone, as RGB."""
    lines = answer_lines(record, result)
    picture = None
    if result is not None:
        picture = Image.open(io.BytesIO(result.heatmap_jpeg)).convert("RGB")
    width = max(picture.width if picture is not None else 0, 768)
    size = max(14, width // 40)
    banner = Image.new("RGB", (width, (size + 8) * len(lines) + 16), (0, 0, 0))
    draw = ImageDraw.Draw(banner)
    for i, line in enumerate(lines):
        colour = (255, 210, 0) if i == 0 else (255, 255, 255)
        draw.text((10, 8 + i * (size + 8)), line, fill=colour, font=_font(size))
    if picture is None:
        return banner
    whole = Image.new("RGB", (width, banner.height + picture.height))
    whole.paste(banner, (0, 0))
    whole.paste(picture, ((width - picture.width) // 2, banner.height))
    return whole


def result_object(header, record: DicomInstance, result: Result | None) -> bytes:
    """The Secondary Capture the PACS shows beside the study: new series and instance (the
    record's UIDs, so that a resend replaces rather than duplicates), the source referenced."""
    import numpy as np
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    picture = np.asarray(result_picture(record, result))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = record.result_sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    for keyword in PATIENT_AND_STUDY:
        if keyword in header:
            setattr(ds, keyword, header[keyword].value)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        if keyword not in ds:  # type 2 in the Patient module: present, may be empty
            setattr(ds, keyword, "")
    for keyword in ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID"):
        if keyword not in ds:
            setattr(ds, keyword, "")
    if "AccessionNumber" not in ds:
        ds.AccessionNumber = ""
    now = timezone.now()
    ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE, record.result_sop_instance_uid
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.Modality = "OT"
    ds.SeriesInstanceUID = record.result_series_uid
    ds.SeriesNumber = RESULT_SERIES_NUMBER
    ds.SeriesDescription = RESULT_SERIES_DESCRIPTION
    ds.BodyPartExamined = "CHEST"
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    ds.ConversionType = "WSD"  # workstation: made by software
    ds.Manufacturer = "pneumonia-mlops"
    ds.SoftwareVersions = get_model().version[:64]
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "YES"
    ds.DerivationDescription = f"{DISCLAIMER}. {answer_lines(record, result)[1]}"[:1024]
    ds.ImageComments = DISCLAIMER
    source = pydicom.Dataset()
    source.ReferencedSOPClassUID = record.sop_class_uid or SECONDARY_CAPTURE
    source.ReferencedSOPInstanceUID = record.sop_instance_uid
    ds.SourceImageSequence = [source]
    referenced_series = pydicom.Dataset()
    referenced_series.SeriesInstanceUID = record.series_instance_uid
    referenced_series.ReferencedInstanceSequence = [source]
    ds.ReferencedSeriesSequence = [referenced_series]
    ds.PatientOrientation = ""
    ds.Rows, ds.Columns = picture.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if result is not None:  # the heat map was a JPEG (quality 90) on its way here
        ds.LossyImageCompression, ds.LossyImageCompressionMethod = "01", "ISO_10918_1"
    else:
        ds.LossyImageCompression = "00"
    ds.PixelData = picture.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def response_entry(header_or_none, received: Received | None, failure: Unacceptable | None):
    """One instance's line of the STOW-RS response (``dicomweb.store_response``)."""
    if received is not None:
        record = received.record
        warning = (
            None if record.outcome == DicomInstance.CLASSIFIED else dicomweb.ELEMENTS_DISCARDED
        )
        return {
            "class_uid": record.sop_class_uid,
            "instance_uid": record.sop_instance_uid,
            "warning": warning,
        }
    return {
        "class_uid": _uid(header_or_none, "SOPClassUID") if header_or_none is not None else "",
        "instance_uid": _uid(header_or_none, "SOPInstanceUID")
        if header_or_none is not None
        else "",
        "failure": failure.failure if failure else dicomweb.PROCESSING_FAILURE,
    }


def _retry_pending(site: PacsSite) -> int:
    """Result objects the PACS did not acknowledge (it was down): sent again, the instance
    retrieved with WADO-RS (no image is kept here). Returns how many were stored."""
    stored = 0
    pending = DicomInstance.objects.filter(site=site, result_stored_at__isnull=True).exclude(
        result_sop_instance_uid=""
    )
    for record in pending:
        data = dicomweb.retrieve(
            site.dicomweb_url,
            site.authorization,
            record.study_instance_uid,
            record.series_instance_uid,
            record.sop_instance_uid,
            settings.MAX_UPLOAD_BYTES,
        )
        record = receive(site, data).record
        stored += record.result_stored_at is not None
    return stored


def fetch_new_instance(site: PacsSite, orthanc_id: str) -> Received | None:
    """One instance of Orthanc's change feed: a CR or DX image retrieved with WADO-RS and
    received; None for an instance of another modality (the app's own results among them)."""
    root = site.orthanc_url.rstrip("/")
    instance = dicomweb.get_json(f"{root}/instances/{orthanc_id}", site.authorization)
    series = dicomweb.get_json(f"{root}/series/{instance['ParentSeries']}", site.authorization)
    modality = str(series["MainDicomTags"].get("Modality", "")).upper()
    if modality not in CHEST_MODALITIES:
        return None
    sop = instance["MainDicomTags"]["SOPInstanceUID"]
    known = DicomInstance.objects.filter(site=site, sop_instance_uid=sop).first()
    if known is not None and not known.result_pending:
        return Received(known, repeated=True)  # not even retrieved again
    study = dicomweb.get_json(f"{root}/studies/{series['ParentStudy']}", site.authorization)
    try:
        data = dicomweb.retrieve(
            site.dicomweb_url,
            site.authorization,
            study["MainDicomTags"]["StudyInstanceUID"],
            series["MainDicomTags"]["SeriesInstanceUID"],
            sop,
            settings.MAX_UPLOAD_BYTES,
        )
    except dicomweb.DicomWebError as exc:
        if exc.status != 413:
            raise
        logger.warning("pacs %s: change feed: an instance was not retrieved: %s", site.name, exc)
        return None
    return receive(site, data)


def follow_changes(site: PacsSite, batch: int = 100) -> int:
    """Deal with the site's Orthanc change feed from where it was left to its current end;
    returns how many changes were read. The position is saved after each change, so that a
    worker stopped at any point resumes there; an instance met again is not classified again
    (SOP Instance UID), so nothing is lost or done twice."""
    if not site.orthanc_url:
        raise dicomweb.DicomWebError(f"the PACS site {site.name!r} has no Orthanc URL to follow")
    _retry_pending(site)
    read = 0
    while True:
        page = dicomweb.get_json(
            f"{site.orthanc_url.rstrip('/')}/changes?since={site.changes_seen}&limit={batch}",
            site.authorization,
        )
        for change in page.get("Changes", []):
            if change.get("ChangeType") == "NewInstance":
                try:
                    fetch_new_instance(site, change["ID"])
                except Unacceptable as exc:
                    logger.info(
                        "pacs %s: change %s: not received: %s", site.name, change["Seq"], exc
                    )
            site.changes_seen = change["Seq"]
            site.save(update_fields=["changes_seen"])
            read += 1
        if page.get("Done", True) or not page.get("Changes"):
            return read
