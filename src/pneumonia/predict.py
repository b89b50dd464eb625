"""Inference from the exported serving bundle with onnxruntime: no torch needed.

The bundle (``models/bundle/``) is ``model.onnx`` plus ``model.json``; every preprocessing fact
(input size, normalisation, labels, threshold) is read from ``model.json``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia.data import decode_image, resize


class BundleError(RuntimeError):
    """The serving bundle is missing, incomplete or does not match its manifest."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Prediction:
    label: str
    probability: float  # of the positive class
    threshold: float
    cam: np.ndarray  # H x W in [0, 1], evidence for the positive class, at the model's input size


class Bundle:
    """A loaded serving bundle: one onnxruntime session, reused for every prediction."""

    def __init__(self, bundle_dir: Path):
        import onnxruntime as ort

        bundle_dir = Path(bundle_dir)
        manifest_path, onnx_path = bundle_dir / "model.json", bundle_dir / "model.onnx"
        self.onnx_path = onnx_path
        for path in (manifest_path, onnx_path):
            if not path.is_file():
                raise BundleError(f"{path} is missing: run `dvc repro export` (or `dvc pull`)")
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        actual = sha256_file(onnx_path)
        if actual != self.manifest["onnx_sha256"]:
            raise BundleError(
                f"{onnx_path} has sha256 {actual}, model.json says {self.manifest['onnx_sha256']}:"
                " the bundle is inconsistent; export it again"
            )
        spec = self.manifest["input"]
        self.size = int(spec["size"])
        self.mean = np.asarray(spec["mean"], np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(spec["std"], np.float32).reshape(1, 3, 1, 1)
        self.labels: list[str] = self.manifest["labels"]
        self.positive = self.labels.index(self.manifest["positive_label"])
        self.threshold = float(self.manifest["threshold"])
        calibration = self.manifest.get("calibration", {})
        self.scale = float(calibration.get("scale", 1.0))
        self.bias = float(calibration.get("bias", 0.0))
        self.head_weight = np.asarray(self.manifest["cam"]["head_weight"], np.float32)
        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def preprocess(self, gray: np.ndarray) -> np.ndarray:
        """uint8 N x S x S grayscale -> the model's normalised float N x 3 x S x S input."""
        x = gray.astype(np.float32)[:, None] / 255.0
        return (np.repeat(x, 3, axis=1) - self.mean) / self.std

    def run(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw outputs (logits N x C, features N x K x h x w) for uint8 grayscale N x S x S."""
        logits, features = self.session.run(
            ["logits", "features"], {"image": self.preprocess(gray)}
        )
        return logits, features

    def probabilities(self, gray: np.ndarray) -> np.ndarray:
        """Calibrated positive-class probability per image of a uint8 grayscale batch."""
        return self.calibrated(self.run(gray)[0])

    def calibrated(self, logits: np.ndarray) -> np.ndarray:
        """Positive-class probability from logits, with the bundle's calibration."""
        return calibrated_probability(logits, self.scale, self.bias, self.positive)

    def predict_bytes(self, data: bytes) -> Prediction:
        """Decode, validate (``InvalidImageError`` for bad input) and predict one image file."""
        image, _ = decode_image(data)
        gray = resize(image, self.size)[None]
        logits, features = self.run(gray)
        probability = float(self.calibrated(logits)[0])
        positive = probability >= self.threshold
        label = self.labels[self.positive if positive else 1 - self.positive]
        cam = class_activation_map(features[0], self.head_weight[self.positive], self.size)
        return Prediction(label=label, probability=probability, threshold=self.threshold, cam=cam)


def logit_margin(logits: np.ndarray, positive: int) -> np.ndarray:
    """Positive-class logit minus the other one: softmax's positive probability is its sigmoid."""
    logits = np.asarray(logits, np.float64)
    return logits[:, positive] - logits[:, 1 - positive]


def calibrated_probability(logits: np.ndarray, scale: float, bias: float,
                           positive: int) -> np.ndarray:  # fmt: skip
    """sigmoid(scale * margin + bias): the served probability of the positive class (the
    evaluate stage fits ``scale`` and ``bias``; 1 and 0 give the plain softmax)."""
    z = scale * logit_margin(logits, positive) + bias
    return 0.5 * (1.0 + np.tanh(z / 2))  # sigmoid(z) without overflow


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of N x C logits."""
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def class_activation_map(features: np.ndarray, class_weight: np.ndarray, size: int) -> np.ndarray:
    """CAM (Zhou et al. 2016): head-weighted sum of the last feature maps, ReLU, scaled to [0, 1]
    and bilinearly upsampled to ``size`` x ``size``."""
    cam = np.maximum(np.tensordot(class_weight, features, axes=1), 0.0)
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else cam
    from PIL import Image

    return np.asarray(
        Image.fromarray(cam.astype(np.float32)).resize((size, size), Image.Resampling.BILINEAR),
        dtype=np.float32,
    ).clip(0.0, 1.0)
