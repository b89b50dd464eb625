"""Reading the dataset: image files per split and class, patient ids, content hashes.

Images are decoded by ``pneumonia.serving`` (``read_image`` + ``resize``), the module the web
app serves with, so what the model sees at training time is what it sees in production.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from pneumonia.config import IMAGE_SUFFIXES, LABELS, SITE_SPLIT, SPLITS
from pneumonia.serving import read_image


@dataclass(frozen=True)
class ImageRecord:
    """One image of the dataset on disk."""

    path: Path
    split: str
    label: str

    @property
    def patient(self) -> str:
        return patient_id(self.path.name)


_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+$", re.IGNORECASE),
    re.compile(r"^(NORMAL2-IM-\d+)-\d+$", re.IGNORECASE),
    re.compile(r"^(IM-\d+)-\d+$", re.IGNORECASE),
)


def patient_id(file_name: str) -> str:
    """Patient id encoded in an official file name; otherwise the stem (one image, one patient).

    ``person1000_bacteria_2931.jpeg`` -> ``person1000``; ``IM-0115-0001.jpeg`` -> ``IM-0115``;
    ``NORMAL2-IM-1427-0001.jpeg`` -> ``NORMAL2-IM-1427``.
    """
    stem = Path(file_name).stem
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return stem


def content_hash(data: bytes) -> str:
    """sha256 hex digest of a file's bytes: the identity used for duplicate detection."""
    return hashlib.sha256(data).hexdigest()


def load_image(path: Path) -> Image.Image:
    """Read and validate one image file, as the served model does (``serving.read_image``)."""
    return read_image(Path(path).read_bytes())


def list_images(root: Path) -> list[ImageRecord]:
    """Every image under ``root/{split}/{label}/`` (the optional ``site`` folder too), sorted by
    path; other folders are ignored."""
    records = []
    for split in (*SPLITS, SITE_SPLIT):
        for label in LABELS:
            folder = Path(root) / split / label
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                    records.append(ImageRecord(path=path, split=split, label=label))
    return records
