"""The served model: the exported ONNX bundle, run with onnxruntime (no torch on the dyno).

Everything about preprocessing (input size, normalisation, labels, threshold) is read from the
bundle's ``model.json``; the session is created once per process and reused.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from PIL import Image

logger = logging.getLogger(__name__)

DISPLAY_SIDE = 512  # images shown on the result page are at most this wide or high


class ModelUnavailable(RuntimeError):
    """No usable bundle at MODEL_DIR; the message says what is wrong."""


@dataclass
class Result:
    label: str
    probability: float  # of PNEUMONIA
    threshold: float
    original_png: bytes  # the upload as the clinician sees it (downscaled for display), lossless
    heatmap_jpeg: bytes  # class activation map blended over it, for viewing only


class ServedModel:
    def __init__(self, bundle_dir: Path):
        import onnxruntime as ort

        manifest_path, onnx_path = bundle_dir / "model.json", bundle_dir / "model.onnx"
        if not manifest_path.is_file() or not onnx_path.is_file():
            raise ModelUnavailable(
                f"No model bundle in {bundle_dir}: set MODEL_DIR to a folder with model.onnx and "
                "model.json (the pipeline's models/bundle)."
            )
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        self.sha256 = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
        if self.sha256 != self.manifest.get("onnx_sha256"):
            raise ModelUnavailable(
                f"{onnx_path} does not match model.json (sha256 {self.sha256[:12]}..., expected "
                f"{str(self.manifest.get('onnx_sha256'))[:12]}...): redeploy the bundle."
            )
        spec = self.manifest["input"]
        self.size = int(spec["size"])
        self.mean = np.asarray(spec["mean"], np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(spec["std"], np.float32).reshape(1, 3, 1, 1)
        self.labels: list[str] = list(self.manifest["labels"])
        self.positive = self.labels.index(self.manifest["positive_label"])
        self.threshold = float(self.manifest["threshold"])
        # Calibrated probability: sigmoid(scale * logit margin + bias), fitted on validation by
        # the pipeline (scale 1, bias 0 is the plain softmax).
        calibration = self.manifest.get("calibration", {})
        self.scale = float(calibration.get("scale", 1.0))
        self.bias = float(calibration.get("bias", 0.0))
        self.class_weight = np.asarray(self.manifest["cam"]["head_weight"], np.float32)[
            self.positive
        ]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one request per worker thread; gunicorn scales out
        self.session = ort.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", self.sha256[:12]))

    def model_input(self, gray: Image.Image) -> np.ndarray:
        """Grayscale image -> normalised 1 x 3 x S x S float input, as in training."""
        pixels = np.array(gray.resize((self.size, self.size), Image.Resampling.BILINEAR))
        x = pixels.astype(np.float32)[None, None] / 255.0
        return (np.repeat(x, 3, axis=1) - self.mean) / self.std

    def probability(self, gray: Image.Image) -> tuple[float, np.ndarray]:
        """PNEUMONIA probability and the feature map (K x h x w) of one image."""
        logits, features = self.session.run(
            ["logits", "features"], {"image": self.model_input(gray)}
        )
        margin = float(logits[0, self.positive]) - float(logits[0, 1 - self.positive])
        z = self.scale * margin + self.bias
        return 0.5 * (1.0 + math.tanh(z / 2)), features[0]  # sigmoid(z) without overflow

    def predict(self, gray: Image.Image) -> Result:
        probability, features = self.probability(gray)
        label = self.labels[self.positive if probability >= self.threshold else 1 - self.positive]
        display = gray.copy()
        display.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), Image.Resampling.BILINEAR)
        cam = activation_map(features, self.class_weight, display.size)
        return Result(
            label=label,
            probability=probability,
            threshold=self.threshold,
            original_png=to_png(display),
            heatmap_jpeg=to_jpeg(overlay(display, cam)),
        )


def activation_map(features: np.ndarray, weight: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Class activation map (head-weighted feature sum, ReLU), scaled to [0, 1] at ``size``."""
    cam = np.maximum(np.tensordot(weight, features, axes=1), 0.0).astype(np.float32)
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else cam
    resized = Image.fromarray(cam).resize(size, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


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
    """The process's model, loaded on first use; raises ``ModelUnavailable``."""
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
    """Load the model at process start and run it once on a blank image, so that the first
    clinician waits for neither and onnxruntime's buffers are sized before serving; a missing
    bundle is logged, and /health reports it."""
    try:
        model = get_model()
    except ModelUnavailable as exc:
        logger.error("model not loaded: %s", exc)
        return
    model.predict(Image.new("L", (model.size, model.size)))


def model_context(request) -> dict[str, Any]:
    """Template context: the model's card, or why there is none."""
    try:
        model = get_model()
    except ModelUnavailable as exc:
        return {"model": None, "model_error": str(exc)}
    return {"model": model, "card": model.manifest}
