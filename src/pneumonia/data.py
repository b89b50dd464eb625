"""Reading the dataset: image decoding and validation, patient ids, content hashes.

The same ``load_image`` + ``resize`` pair prepares training data and is mirrored by the serving
code, so what the model sees at training time is what it sees in production.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pneumonia.config import IMAGE_SUFFIXES, LABELS, SPLITS

# Formats we accept as X-ray images. Anything else (PDF, SVG, GIF...) is rejected by content,
# whatever its file name says.
ACCEPTED_FORMATS = {"JPEG", "MPO", "PNG"}  # MPO: JPEG as written by many phone cameras
MIN_SIDE = 32  # smaller than this carries no diagnostic information at our input sizes
MAX_PIXELS = 64_000_000  # ~8000x8000; larger is a decompression bomb, not an X-ray


class InvalidImageError(ValueError):
    """A file that is not a usable X-ray image; the message says why."""


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


def decode_image(data: bytes) -> tuple[Image.Image, str]:
    """Decode and validate image bytes; return the upright grayscale image and its format.

    Raises ``InvalidImageError`` with a reason a person can act on for anything that is not a
    complete JPEG or PNG of a plausible size.
    """
    if not data:
        raise InvalidImageError("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as probe:
                fmt = probe.format
                width, height = probe.size
            if fmt not in ACCEPTED_FORMATS:
                raise InvalidImageError(
                    f"{fmt or 'unknown'} image; only JPEG and PNG X-rays are accepted"
                )
            if width * height > MAX_PIXELS:
                raise InvalidImageError(
                    f"{width}x{height} pixels is larger than any X-ray ({MAX_PIXELS:,} max)"
                )
            if min(width, height) < MIN_SIDE:
                raise InvalidImageError(f"{width}x{height} pixels is too small (min {MIN_SIDE})")
            image = Image.open(io.BytesIO(data))
            image.load()  # a truncated or corrupt file fails here, not later in training
        except InvalidImageError:
            raise
        except UnidentifiedImageError:
            raise InvalidImageError("not an image (content is not a JPEG or PNG)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InvalidImageError("too many pixels (decompression bomb)") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise InvalidImageError(f"corrupt or truncated image ({exc})") from None
    return to_grayscale(ImageOps.exif_transpose(image)), fmt


def to_grayscale(image: Image.Image) -> Image.Image:
    """8-bit grayscale of any PIL mode: 16-bit is rescaled to its full range, alpha dropped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.round(scaled).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite on black: X-ray backgrounds are dark, and transparent pixels carry nothing.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("L")


def load_image(path: Path) -> Image.Image:
    """Read and validate one image file (see ``decode_image``)."""
    return decode_image(Path(path).read_bytes())[0]


def resize(image: Image.Image, size: int) -> np.ndarray:
    """Square ``size`` x ``size`` uint8 array, as the model sees it (bilinear, aspect squashed).

    The published dataset copies were squashed to a square too, so training and serving agree.
    """
    return np.array(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def list_images(root: Path) -> list[ImageRecord]:
    """Every image under ``root/{split}/{label}/``, sorted by path; other folders are ignored."""
    records = []
    for split in SPLITS:
        for label in LABELS:
            folder = Path(root) / split / label
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                    records.append(ImageRecord(path=path, split=split, label=label))
    return records
