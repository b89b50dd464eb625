"""The served model in the app: ``pneumonia.serving`` (decoding, the ONNX bundle, calibration,
the class activation map: the same module the pipeline uses, copied into the slug by
``pneumonia.package``) plus what only the pages need: display copies and the heat-map overlay.
The model is loaded once per process and reused.
"""

from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from PIL import Image

from pneumonia import serving

logger = logging.getLogger(__name__)

DISPLAY_SIDE = 512  # images shown on the result page are at most this wide or high


@dataclass
class Result:
    label: str
    probability: float  # of PNEUMONIA
    threshold: float
    original_png: bytes  # the upload as the clinician sees it (downscaled for display), lossless
    heatmap_jpeg: bytes  # class activation map blended over it, for viewing only
    guard_distance: float | None  # what drift monitoring compares (serving.Prediction)
    brightness: float
    contrast: float


class ServedModel(serving.Bundle):
    """The bundle with what the pages add: a display copy and the heat map over it."""

    def __init__(self, bundle_dir: Path):
        super().__init__(bundle_dir, threads=1)  # one request per worker; gunicorn scales out

    def predict_image(self, gray: Image.Image) -> Result:
        prediction = self.predict(gray)
        display = display_copy(gray)
        return Result(
            label=prediction.label,
            probability=prediction.probability,
            threshold=prediction.threshold,
            original_png=to_png(display),
            heatmap_jpeg=to_jpeg(overlay(display, prediction.heat_map(display.size))),
            guard_distance=prediction.guard_distance,
            brightness=prediction.brightness,
            contrast=prediction.contrast,
        )


def display_copy(gray: Image.Image) -> Image.Image:
    """The image at most DISPLAY_SIDE wide or high, aspect kept (no full-size copy first)."""
    width, height = gray.size
    if max(width, height) <= DISPLAY_SIDE:
        return gray
    scale = DISPLAY_SIDE / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return gray.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def read_upload(data: bytes) -> Image.Image:
    """An upload as the grayscale image the model reads (``serving.InvalidImage`` if it is not
    one); large JPEGs are decoded at reduced scale, never below ``serving.WORKING_SIDE``."""
    return serving.read_image(data, max_side=serving.WORKING_SIDE)


# A perceptually ordered dark-to-bright ramp (approximates "inferno"): low evidence stays dark
# and translucent, high evidence is bright yellow.
_RAMP = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float32
)


def _overlay_tables(levels: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Colour (levels x 3) and opacity (levels) of each evidence level, as uint8."""
    evidence = np.linspace(0.0, 1.0, levels, dtype=np.float32)
    position = evidence * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    frac = (position - low)[:, None]
    colour = _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac
    opacity = 0.15 + 0.5 * evidence
    return np.round(colour).astype(np.uint8), np.round(opacity * 255).astype(np.uint8)


# Looked up per pixel instead of computed in float: 256 evidence levels are finer than the
# map itself (a 7 x 7 feature map upsampled), and the overlay took 4x less time (~10 -> 2.6 ms
# at 512 px; bench/request_profile.py).
_COLOUR, _OPACITY = _overlay_tables()


def overlay(gray: Image.Image, cam: np.ndarray) -> Image.Image:
    """Blend a colour-coded ``cam`` over the grayscale image; opacity grows with the evidence."""
    level = np.round(np.clip(cam, 0.0, 1.0) * 255).astype(np.uint8)
    colour = Image.fromarray(_COLOUR[level])
    return Image.composite(colour, gray.convert("RGB"), Image.fromarray(_OPACITY[level]))


def to_png(image: Image.Image) -> bytes:
    """PNG of the pixels only: rebuilt from the pixel array, so nothing of the upload's metadata
    (EXIF, ICC profile, text) can be carried over; this copy is what feedback may keep."""
    # zlib level 1: measured 37 ms instead of 177 ms for the two images of a result, for files
    # 10-15% larger; at level 6 encoding cost four times the model itself.
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def to_jpeg(image: Image.Image) -> bytes:
    """JPEG (quality 90) of the pixels only, for the heat map: a picture to look at, never kept
    for training; 0.5 ms and ~30 KB instead of 10 ms and ~215 KB as a PNG at 512 px."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


_model: ServedModel | None = None
_lock = threading.Lock()


def get_model() -> ServedModel:
    """The process's model, loaded on first use; raises ``serving.BundleError``."""
    global _model
    if _model is None:
        with _lock:
            if _model is None:
                _model = ServedModel(Path(settings.MODEL_DIR))
    return _model


def reset() -> None:
    """Forget the loaded model (tests switch MODEL_DIR)."""
    global _model
    with _lock:
        _model = None


def warm_up() -> None:
    """Load the model at process start and run it once on a blank input, so that the first
    clinician waits for neither and onnxruntime's buffers are sized before serving; a missing
    bundle is logged, and /health reports it."""
    try:
        model = get_model()
    except serving.BundleError as exc:
        logger.error("model not loaded: %s", exc)
        return
    # The model itself, not predict_image: the guard would refuse a blank image.
    model.run(np.zeros((1, model.size, model.size), np.uint8))


def model_context(request) -> dict[str, Any]:
    """Template context: the model's card, or why there is none."""
    try:
        model = get_model()
    except serving.BundleError as exc:
        return {"model": None, "model_error": str(exc)}
    refused = (model.manifest.get("guard") or {}).get("refused") or {}
    percent = {split: 100 * share for split, share in refused.items() if share is not None}
    return {"model": model, "card": model.manifest, "guard_refused": percent}
