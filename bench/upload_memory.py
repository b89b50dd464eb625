"""Peak memory of one worker per hostile upload (issue 14): a catalogue of worst cases, each
run in a fresh process that is what a gunicorn worker holds (Django set up, the bundle loaded
and warmed up), then decoded and predicted as the upload view does. Bound: 300 MB per worker.

    python bench/upload_memory.py [--bundle models/bundle] [--quick]

Prints one table row per case: what it is, its size on the wire, the outcome (the message of a
refusal), the worker's RSS before the upload and its peak while handling it (VmHWM, reset
after the model is loaded).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from pneumonia.config import SAMPLES_DIR

ROOT = Path(__file__).resolve().parents[1]
BOUND_MB = 300

WORKER = """
import json, sys
import django
django.setup()
from diagnosis.inference import get_model, read_upload, warm_up
from pneumonia.serving import InvalidImage
warm_up()
def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":")) / 1024
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current RSS: loading the model is not counted
data = open(sys.argv[1], "rb").read()
try:
    result = get_model().predict_image(read_upload(data))
    outcome = f"{result.label} p={result.probability:.3f}"
except InvalidImage as exc:
    outcome = "refused: " + str(exc)
del data
peak = status("VmHWM")
print(json.dumps({"before": before, "peak": peak, "outcome": outcome}))
"""


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def dicom(rows, cols, pixel_bytes, syntax=ExplicitVRLittleEndian, **elements) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixel_bytes
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def deflated_bomb(rows: int, cols: int) -> bytes:
    """A deflated DICOM of ``rows`` x ``cols`` 16-bit zeros, written without holding them."""
    head = dicom(rows, cols, b"", DeflatedExplicitVRLittleEndian)
    start = 132 + 12 + int.from_bytes(head[140:144], "little")
    plain = zlib.decompress(head[start:], -zlib.MAX_WBITS)
    size = rows * cols * 2
    prefix = plain[: plain.rindex(b"\xe0\x7f\x10\x00")]
    prefix += b"\xe0\x7f\x10\x00OW\0\0" + size.to_bytes(4, "little")
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(prefix)]
    chunk = b"\0" * (1 << 22)
    for _ in range(size // len(chunk)):
        parts.append(compressor.compress(chunk))
    parts.append(compressor.compress(b"\0" * (size % len(chunk))) + compressor.flush())
    return head[:start] + b"".join(parts)


def deflated_ramp(rows: int, cols: int) -> bytes:
    ramp = np.tile(np.linspace(0, 4095, cols), (rows, 1)).astype(np.uint16)
    return dicom(rows, cols, ramp.tobytes(), DeflatedExplicitVRLittleEndian)


def catalogue(quick: bool) -> list[tuple[str, bytes]]:
    ramp16 = np.tile(np.linspace(0, 4095, 4096), (4096, 1)).astype(np.uint16)
    cases = [
        (
            "DICOM declaring 30000 x 30000 (1.8 GB), 128 bytes of pixels",
            dicom(30000, 30000, b"\0" * 128),
        ),
        ("deflated DICOM, 20000 x 20000 zeros (800 MB inflated)", deflated_bomb(20000, 20000)),
        (
            "multi-frame DICOM, 2 x 2048 x 2048",
            dicom(2048, 2048, b"\0" * (2048 * 2048 * 4), NumberOfFrames=2),
        ),
        ("deflated DICOM 2890 x 2890 16-bit (accepted)", deflated_ramp(2890, 2890)),
        (
            "DICOM 2048 x 2048 16-bit, uncompressed (accepted)",
            dicom(2048, 2048, ramp16[::2, ::2].copy().tobytes()),
        ),
        ("16-bit PNG 7999 x 7999", encode(Image.new("I;16", (7999, 7999)), "PNG")),
        ("16-bit PNG 4090 x 4090 (accepted)", encode(Image.fromarray(ramp16[:4090, :4090]), "PNG")),
        ("RGBA PNG 7999 x 7999", encode(Image.new("RGBA", (7999, 7999)), "PNG")),
        (
            "RGBA PNG 2890 x 2890 (accepted)",
            encode(Image.new("RGBA", (2890, 2890), (90,) * 4), "PNG"),
        ),
        ("8-bit PNG 7999 x 7999", encode(Image.new("L", (7999, 7999), 128), "PNG")),
        ("8-bit PNG 5700 x 5700 (accepted)", encode(Image.new("L", (5700, 5700), 128), "PNG")),
        ("CMYK JPEG 7999 x 7999", encode(Image.new("CMYK", (7999, 7999), (9, 9, 9, 9)), "JPEG")),
        ("RGB JPEG 7999 x 7999", encode(Image.new("RGB", (7999, 7999), (90, 90, 90)), "JPEG")),
    ]
    samples = sorted(SAMPLES_DIR.rglob("*.jpeg"))
    if samples:
        largest = max(samples, key=lambda p: p.stat().st_size)
        cases.append((f"largest full-size sample ({largest.name})", largest.read_bytes()))
    return cases[:3] if quick else cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "bundle")
    parser.add_argument("--quick", action="store_true", help="three cases only")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if not (args.bundle / "model.json").is_file():
        print(f"no bundle at {args.bundle}: run the pipeline first (make retrain)", file=sys.stderr)
        return 1
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "xrayweb.settings",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "MODEL_DIR": str(args.bundle.resolve()),
    }
    rows, worst = [], 0.0
    print("| case | file | outcome | RSS before (MB) | peak RSS (MB) |\n|---|---:|---|---:|---:|")
    with tempfile.TemporaryDirectory() as scratch:
        for name, data in catalogue(args.quick):
            path = Path(scratch) / "upload"
            path.write_bytes(data)
            result = subprocess.run(
                [sys.executable, "-c", WORKER, str(path)],
                cwd=ROOT / "django_app",  # python -c imports from here: the app, as gunicorn does
                env=env,
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                print(result.stderr, file=sys.stderr)
                return 1
            row = {"case": name, "bytes": len(data), **json.loads(result.stdout.splitlines()[-1])}
            rows.append(row)
            worst = max(worst, row["peak"])
            outcome = row["outcome"]
            outcome = outcome if len(outcome) < 90 else outcome[:87] + "..."
            size = (
                f"{len(data) / 2**20:.2f} MB" if len(data) > 2**20 else f"{len(data) / 1024:.0f} KB"
            )
            print(f"| {name} | {size} | {outcome} | {row['before']:.0f} | {row['peak']:.0f} |")
    print(f"\nworst peak {worst:.0f} MB (bound {BOUND_MB} MB)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if worst <= BOUND_MB else 1


if __name__ == "__main__":
    sys.exit(main())
