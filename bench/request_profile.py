"""Where one prediction request's time goes inside the web app: each step of the view's work,
timed in-process with the app's own functions on the full-size sample JPEGs (median over the
samples and rounds, one thread as a gunicorn worker runs it).

    python bench/request_profile.py [--bundle models/bundle] [--rounds 3]

Steps: decode (read_upload: JPEG/PNG/DICOM to grayscale), model input (resize, normalise), the
onnxruntime call, display copy (thumbnail <= 512 px), class activation map, overlay, and the two
encodings (PNG of the display copy, JPEG of the heat map). What bench/web.py measures beyond
their sum is the framework, the database (history row, held image, heat map in the cache) and
HTTP.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The web app is a folder, not an installed package: its modules are imported from there.
sys.path.insert(0, str(ROOT / "django_app"))

from pneumonia.config import SAMPLES_DIR as SAMPLES  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "bundle")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one round on 3 images")
    args = parser.parse_args()
    os.environ["DJANGO_SETTINGS_MODULE"] = "xrayweb.settings"  # production, even under pytest
    os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(50))  # settings insist
    os.environ["MODEL_DIR"] = str(args.bundle)
    import django

    django.setup()
    from diagnosis.inference import (
        DISPLAY_SIDE,
        ServedModel,
        overlay,
        read_upload,
        to_jpeg,
        to_png,
    )
    from PIL import Image

    from pneumonia.serving import class_activation_map, resize

    model = ServedModel(args.bundle)
    files = sorted(SAMPLES.rglob("*.jpeg"))
    if args.quick:
        files, args.rounds = files[:3], 1
    uploads = [f.read_bytes() for f in files]
    steps: dict[str, list[float]] = {}
    recording = [False]  # the first round warms up and is not recorded

    def timed(name, call, *a):
        started = time.perf_counter()
        out = call(*a)
        if recording[0]:
            steps.setdefault(name, []).append((time.perf_counter() - started) * 1000)
        return out

    def thumbnail(gray):
        display = gray.copy()
        display.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), Image.Resampling.BILINEAR)
        return display

    for round_ in range(args.rounds + 1):
        recording[0] = round_ > 0
        for data in uploads:
            gray = timed("decode (read_upload)", read_upload, data)
            x = timed(
                "model input (resize, normalise)",
                lambda g: model.preprocess(resize(g, model.size)[None]),
                gray,
            )
            _, features = timed(
                "onnxruntime call (1 thread)",
                model.session.run,
                ["logits", "features"],
                {"image": x},
            )
            display = timed("display copy (thumbnail)", thumbnail, gray)
            cam = timed(
                "activation map",
                class_activation_map,
                features[0],
                model.class_weight,
                display.size,
            )
            heat = timed("overlay", overlay, display, cam)
            timed("PNG of the display copy", to_png, display)
            timed("JPEG of the heat map", to_jpeg, heat)
    served = "INT8" if "quantization" in model.manifest else "float"
    print(
        f"{len(uploads)} full-size sample JPEGs x {args.rounds} rounds, {served} model, "
        "median per step:\n"
    )
    print("| step | median (ms) | share |\n|---|---:|---:|")
    medians = {name: statistics.median(times) for name, times in steps.items()}
    total = sum(medians.values())
    for name, ms in medians.items():
        print(f"| {name} | {ms:.1f} | {ms / total:.0%} |")
    print(f"| **sum** | **{total:.1f}** | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
