"""The prepare stage's output, per split: ``{split}_images.npy`` (decoded, resized uint8 images,
N x S x S, read memory-mapped) and ``{split}.npz`` (labels, file names, patient ids). The stages
that read it import only this module, so a change to the image decoding reruns ``prepare``
(whose outputs then change or not), not the training.

The images are memory-mapped, not loaded: a stage's memory does not grow with the dataset
(docs/benchmarks.md, "Scaling with the data").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumonia import config


@dataclass
class PreparedSplit:
    images: np.ndarray  # uint8 N x S x S (a read-only memory map when loaded from disk)
    labels: np.ndarray  # class index per image (config.LABELS)
    files: list[str]
    patients: list[str]


def images_path(prepared_dir: Path, name: str) -> Path:
    return prepared_dir / f"{name}_images.npy"


def open_images(path: Path, count: int, size: int) -> np.memmap:
    """A new ``count`` x ``size`` x ``size`` uint8 array file, written through a memory map."""
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, size, size))


def write_metadata(
    prepared_dir: Path, name: str, labels: np.ndarray, files: list[str], patients: list[str]
) -> None:
    np.savez(
        prepared_dir / f"{name}.npz",
        labels=labels,
        files=np.array(files),
        patients=np.array(patients),
    )


def write_split(split: PreparedSplit, prepared_dir: Path, name: str) -> None:
    """Write a split held in memory (tests, benchmarks); the prepare stage streams instead."""
    images = open_images(images_path(prepared_dir, name), len(split.images), split.images.shape[-1])
    images[:] = split.images
    images.flush()
    del images
    write_metadata(prepared_dir, name, split.labels, split.files, split.patients)


def load_split(name: str, prepared_dir: Path | None = None) -> PreparedSplit:
    """Read one split written by the prepare stage (images memory-mapped, read-only)."""
    prepared_dir = prepared_dir or config.PREPARED_DIR
    with np.load(prepared_dir / f"{name}.npz") as npz:
        return PreparedSplit(
            images=np.load(images_path(prepared_dir, name), mmap_mode="r"),
            labels=npz["labels"],
            files=npz["files"].tolist(),
            patients=npz["patients"].tolist(),
        )
