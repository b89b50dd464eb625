"""A real PACS for the tests: Debian's Orthanc with its DICOMweb plugin, configured by
pacs/orthanc.json, on 127.0.0.1 (its DICOM listener off, remote HTTP access refused), with a
storage folder of its own; stopped by PID."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import free_port, stop

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "pacs" / "orthanc.json"
BINARY = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


class Orthanc:
    def __init__(self, url: str):
        self.url = url  # its REST root
        self.dicomweb = url + "dicom-web/"

    def request(self, method: str, path: str, body=None, content_type="application/json"):
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path.lstrip("/"),
            data=data,
            method=method,
            headers={"Content-Type": content_type} if data is not None else {},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = response.read()
        return json.loads(answer) if answer[:1] in (b"{", b"[") else answer

    def store(self, dicom: bytes) -> dict:
        """Store one instance through Orthanc's REST API, as a modality's C-STORE would."""
        return self.request("POST", "instances", dicom, "application/dicom")

    def clear(self) -> None:
        for patient in self.request("GET", "patients"):
            self.request("DELETE", f"patients/{patient}")

    def last_change(self) -> int:
        return self.request("GET", "changes?last")["Last"]


# Made-up patient details: what a real instance carries, and what must never reach the
# app's database or logs.
PATIENT = {
    "PatientName": "Testperson^Alexandra",
    "PatientID": "PID-7734215",
    "PatientBirthDate": "19580214",
    "PatientSex": "F",
    "AccessionNumber": "ACC-55120",
}


def radiograph(
    image_path: Path,
    study_uid: str | None = None,
    modality: str = "CR",
    body_part: str | None = "CHEST",
    view: str | None = "PA",
    side: int = 256,
    **elements,
) -> bytes:
    """A test image as a hospital's DICOM instance: 12-bit MONOCHROME2, Computed Radiography
    Image Storage (DX: Digital X-Ray), with patient and study details."""
    import io

    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1"}.get(
        modality,
        "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage for anything else
    )
    gray = Image.open(image_path).convert("L")
    gray.thumbnail((side, side))
    pixels = np.asarray(gray, np.uint16) * 16
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    for keyword, value in PATIENT.items():
        setattr(ds, keyword, value)
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20261201", "101500", "1"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, 1
    if body_part:
        ds.BodyPartExamined = body_part
    if view:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@contextmanager
def running_orthanc(workdir: Path) -> Iterator[Orthanc]:
    if not Path(BINARY).exists():
        pytest.fail("Orthanc is not installed: run `sudo make system-deps` (Debian's orthanc)")
    port = free_port()
    storage = workdir / "orthanc-storage"
    storage.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ORTHANC_STORAGE": str(storage), "ORTHANC_HTTP_PORT": str(port)}
    log = open(workdir / "orthanc.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [BINARY, str(CONFIG)], env=env, stdout=log, stderr=log, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                urllib.request.urlopen(url + "system", timeout=5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "Orthanc did not start: " + (workdir / "orthanc.log").read_text()[-2000:]
                    ) from None
                time.sleep(0.2)
        yield Orthanc(url)
    finally:
        stop(process)
        log.close()
