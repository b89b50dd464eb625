"""The prepare stage's output: one ``.npz`` per split (decoded, resized uint8 images, labels,
file names, patient ids). The stages that read it import only this module, so a change to the
image decoding reruns ``prepare`` (whose outputs then change or not), not the training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumonia import config


@dataclass
class PreparedSplit:
    images: np.ndarray  # uint8 N x S x S
    labels: np.ndarray  # class index per image (config.LABELS)
    files: list[str]
    patients: list[str]


def write_split(split: PreparedSplit, path: Path) -> None:
    np.savez(
        path,
        images=split.images,
        labels=split.labels,
        files=np.array(split.files),
        patients=np.array(split.patients),
    )


def load_split(name: str, prepared_dir: Path | None = None) -> PreparedSplit:
    """Read one split written by the prepare stage."""
    with np.load((prepared_dir or config.PREPARED_DIR) / f"{name}.npz") as npz:
        return PreparedSplit(
            images=npz["images"],
            labels=npz["labels"],
            files=npz["files"].tolist(),
            patients=npz["patients"].tolist(),
        )
