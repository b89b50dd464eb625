"""Peak memory of one worker per hostile upload (issue 14): a catalogue of worst cases, each
run in a fresh process that is what a gunicorn worker holds (Django set up, the bundle loaded
and warmed up), then decoded and predicted as the upload view does. Bound: 300 MB per worker.

    python -m bench.upload_memory [--bundle models/bundle] [--quick]   (from the repository root:
                                                                   the files come from tests/)

Prints one table row per case: what it is, its size on the wire, the outcome (the message of a
refusal), the worker's RSS before the upload and its peak while handling it (VmHWM, reset
after the model is loaded).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from pneumonia.config import SAMPLES_DIR
from tests.hostile_files import (
    DeflatedExplicitVRLittleEndian,
    deflated_bomb,
    dicom,
    encode,
    ramp16,
)

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


def deflated_ramp(rows: int, cols: int) -> bytes:
    return dicom(rows, cols, ramp16(rows, cols).tobytes(), DeflatedExplicitVRLittleEndian)


def catalogue(quick: bool) -> list[tuple[str, bytes]]:
    ramp = ramp16(4096, 4096)
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
            dicom(2048, 2048, ramp[::2, ::2].copy().tobytes()),
        ),
        ("16-bit PNG 7999 x 7999", encode(Image.new("I;16", (7999, 7999)), "PNG")),
        ("16-bit PNG 4090 x 4090 (accepted)", encode(Image.fromarray(ramp[:4090, :4090]), "PNG")),
        ("RGBA PNG 7999 x 7999", encode(Image.new("RGBA", (7999, 7999)), "PNG")),
        (
            "RGBA PNG 2890 x 2890 (accepted)",
            encode(Image.new("RGBA", (2890, 2890), (90,) * 4), "PNG"),
        ),
        ("8-bit PNG 7999 x 7999", encode(Image.new("L", (7999, 7999), 128), "PNG")),
        ("8-bit PNG 5700 x 5700 (accepted)", encode(Image.new("L", (5700, 5700), 128), "PNG")),
        ("CMYK JPEG 7999 x 7999", encode(Image.new("CMYK", (7999, 7999), (9, 9, 9, 9)), "JPEG")),
        ("RGB JPEG 7999 x 7999", encode(Image.new("RGB", (7999, 7999), (90, 90, 90)), "JPEG")),
        (
            "progressive grayscale JPEG 7999 x 7999",
            encode(Image.new("L", (7999, 7999), 128), "JPEG", progressive=True),
        ),
        (
            "progressive RGB JPEG 7999 x 7999 (4:4:4)",
            encode(
                Image.new("RGB", (7999, 7999), (90, 100, 110)),
                "JPEG",
                progressive=True,
                subsampling=0,
            ),
        ),
        (
            "progressive grayscale JPEG 4096 x 4096 (accepted)",
            encode(Image.new("L", (4096, 4096), 128), "JPEG", progressive=True),
        ),
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
