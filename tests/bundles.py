"""Real serving bundles for tests, exported by the pipeline's own code."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pneumonia.data import load_image
from pneumonia.export import export
from pneumonia.model import build_model, to_input
from pneumonia.params import load as load_params
from pneumonia.prepared import PreparedSplit
from pneumonia.serving import resize
from tests.conftest import DATASET, REPO, require_data

# params.yaml's export section, with a float model: quick to export and exact to compare.
EXPORT_PARAMS = replace(load_params(REPO / "params.yaml").export, quantize="none")
# What the evaluate stage writes about calibration when none is fitted (scale 1, bias 0).
UNCALIBRATED = {"calibration": "none", "calibration_scale": 1.0, "calibration_bias": 0.0}
# The metrics a hand-made test bundle records (its threshold is what the manifest must carry).
BUNDLE_METRICS = {
    "threshold": 0.42,
    "accuracy": 0.9,
    "sensitivity": 0.95,
    "specificity": 0.8,
    **UNCALIBRATED,
}


def real_images(split: str, n: int, size: int) -> np.ndarray:
    """The first ``n`` NORMAL and ``n`` PNEUMONIA images of a split, resized, uint8."""
    require_data()
    paths = (
        sorted((DATASET / split / "NORMAL").iterdir())[:n]
        + sorted((DATASET / split / "PNEUMONIA").iterdir())[:n]
    )
    return np.stack([resize(load_image(p), size) for p in paths])


def calibrated_model(size: int, input_norm: str = "fixed") -> torch.nn.Module:
    """A ResNet18 (random init, seed 0) whose BatchNorm statistics come from real X-rays, so its
    activations have a realistic scale; a fresh init's statistics would make parity trivial."""
    torch.manual_seed(0)
    model = build_model("none", input_norm)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(to_input(torch.from_numpy(real_images("train", 16, size))))
    return model.eval()


def reference_split(n: int, size: int) -> PreparedSplit:
    """The first ``n`` NORMAL and ``n`` PNEUMONIA test images as a prepared split."""
    files = [
        str(p.relative_to(DATASET))
        for label in ("NORMAL", "PNEUMONIA")
        for p in sorted((DATASET / "test" / label).iterdir())[:n]
    ]
    labels = np.array([0] * n + [1] * n)
    return PreparedSplit(real_images("test", n, size), labels, files, files)


def make_bundle(
    model: torch.nn.Module,
    size: int,
    out: Path,
    metrics: dict,
    guard: bool = False,
    reference: int = 0,
) -> Path:
    """Export ``model`` as a float bundle; ``guard``: with the "is this a chest X-ray?" guard
    fitted on 80 real training images, its threshold on the 16 official validation images;
    ``reference``: with a drift reference measured on that many NORMAL and PNEUMONIA test
    images (``reference_split``)."""
    metrics = {**UNCALIBRATED, **metrics}
    fit = (real_images("train", 40, size), real_images("val", 8, size)) if guard else None
    check = real_images("test", 4, size)
    split = reference_split(reference, size) if reference else None
    export(
        model,
        size,
        check,
        metrics,
        metrics,
        EXPORT_PARAMS,
        "none",
        out,
        test_split=split,
        guard_images=fit,
    )
    return out
