"""The served model's record, written by the export stage and read by the gate and the deploy:

- ``metrics/served.json``: the identity of the served model (what decides its answers: ONNX
  sha256, input, calibration, threshold, labels), its version and test metrics, and the
  fingerprint of the test split it was measured on;
- ``metrics/served_test.csv``: one row per test image: file name, true label, the served
  model's calibrated probability (names only, never an image).

Both are small and tracked by git, so any revision says which model it serves and how that model
answered each test image, without DVC or the images.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from pneumonia import config

SERVED_JSON = "metrics/served.json"
SERVED_TEST_CSV = "metrics/served_test.csv"
CSV_HEADER = ["file", "label", "probability"]


class MetricsError(RuntimeError):
    """A served record that cannot be trusted; the message names the file and the problem."""


def identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """What decides a bundle's answers. Two bundles with equal identities answer every image
    alike, whatever their provenance (commit, date, recorded metrics)."""
    calibration = manifest.get("calibration", {})
    return {
        "onnx_sha256": manifest["onnx_sha256"],
        "precision": "int8" if manifest.get("quantization") else "float32",
        "input": manifest["input"],
        "labels": manifest["labels"],
        "positive_label": manifest["positive_label"],
        "calibration": {k: calibration.get(k) for k in ("method", "scale", "bias")},
        "threshold": manifest["threshold"],
        "guard": guard_identity(manifest.get("guard")),
    }


GUARD_DECIDES = ("min_side", "min_contrast", "max_colour", "threshold", "mean", "components")
GUARD_DECIDES += ("variances", "residual_variance")


def guard_identity(section: dict[str, Any] | None) -> dict[str, Any] | None:
    """What decides the guard's refusals: its threshold, and a digest of the rest (the fitted
    distribution is thousands of numbers)."""
    if section is None:
        return None
    deciding = {k: section[k] for k in GUARD_DECIDES}
    canonical = json.dumps(deciding, sort_keys=True, separators=(",", ":"))
    return {
        "threshold": section["threshold"],
        "sha256": hashlib.sha256(canonical.encode()).hexdigest(),
    }


def without_guard(model: dict[str, Any]) -> dict[str, Any]:
    """A served identity without its guard: equal ones give the same answer to every image the
    guard lets through."""
    return {k: v for k, v in model.items() if k != "guard"}


def identity_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the served identity: the key of a registered model version (two bundles with
    the same ONNX file but another threshold or calibration are different models to serve)."""
    canonical = json.dumps(identity(manifest), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Predictions:
    """The served model's answers on a test split: file names, labels (1 = PNEUMONIA) and
    calibrated probabilities, in one order."""

    files: list[str]
    labels: np.ndarray
    probabilities: np.ndarray

    def correct(self, threshold: float) -> np.ndarray:
        return (self.probabilities >= threshold) == (self.labels == 1)


def predictions_csv(files: list[str], labels: np.ndarray, probabilities: np.ndarray) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for name, label, probability in zip(files, labels, probabilities, strict=True):
        writer.writerow([name, config.LABELS[int(label)], f"{float(probability):.6f}"])
    return out.getvalue()


def parse_predictions(raw: str | None, source: str) -> Predictions:
    """Read a ``served_test.csv``; every row must name a file, a known label and a probability
    in [0, 1]."""
    if raw is None:
        raise MetricsError(f"{source} is missing: run `dvc repro` (the export stage)")
    rows = list(csv.reader(io.StringIO(raw)))
    if not rows or rows[0] != CSV_HEADER:
        raise MetricsError(f"{source} must start with the header {','.join(CSV_HEADER)}")
    files, labels, probabilities = [], [], []
    for number, row in enumerate(rows[1:], start=2):
        try:
            name, label, probability = row
            value = float(probability)
            if label not in config.LABELS or not 0.0 <= value <= 1.0:
                raise ValueError
        except ValueError:
            raise MetricsError(
                f"{source} line {number}: expected file,{'|'.join(config.LABELS)},probability "
                f"in [0, 1], got {row!r}"
            ) from None
        files.append(name)
        labels.append(config.LABELS.index(label))
        probabilities.append(value)
    if not files:
        raise MetricsError(f"{source} lists no test image")
    return Predictions(files, np.asarray(labels), np.asarray(probabilities, np.float64))


def parse_record(raw: str | None, source: str) -> dict[str, Any]:
    """Read a ``served.json``: the model identity and the test data fingerprint are required."""
    if raw is None:
        raise MetricsError(f"{source} is missing: run `dvc repro` (the export stage)")
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise MetricsError(f"{source} is not valid JSON ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("model"), dict):
        raise MetricsError(f"{source} must hold an object with the served model's identity")
    threshold = record["model"].get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise MetricsError(f"{source}: model.threshold must be a number, got {threshold!r}")
    if not 0 <= threshold <= 1:
        raise MetricsError(f"{source}: model.threshold must be in [0, 1], got {threshold!r}")
    return record
