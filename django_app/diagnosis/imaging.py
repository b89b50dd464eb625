"""Turning an upload into the grayscale image the model reads: JPEG, PNG or DICOM.

Every way an upload can be wrong ends in ``UnreadableImage`` with a message for the person who
sent it; nothing else escapes to the view.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 32
MAX_PIXELS = 64_000_000


class UnreadableImage(ValueError):
    """The upload is not an X-ray image we can read; ``str()`` is safe to show to the user."""


def read_upload(data: bytes) -> Image.Image:
    """Decode an uploaded file (by content, not by name) into an upright 8-bit grayscale image."""
    if not data:
        raise UnreadableImage("The file is empty. Choose a chest X-ray image (JPEG, PNG or DICOM).")
    image = _read_dicom(data) if _is_dicom(data) else _read_picture(data)
    if min(image.size) < MIN_SIDE:
        raise UnreadableImage(
            f"The image is only {image.size[0]}x{image.size[1]} pixels, too small to assess. "
            "Upload the full-resolution X-ray."
        )
    return image


def _is_dicom(data: bytes) -> bool:
    return len(data) > 132 and data[128:132] == b"DICM"


def _read_picture(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as probe:
                fmt, (width, height) = probe.format, probe.size
            if fmt not in ("JPEG", "MPO", "PNG"):
                raise UnreadableImage(
                    f"This is a {fmt} file. Upload a chest X-ray as JPEG, PNG or DICOM (.dcm)."
                )
            if width * height > MAX_PIXELS:
                raise UnreadableImage(
                    f"The image has {width}x{height} pixels, more than any X-ray. "
                    "Upload the original radiograph."
                )
            image = Image.open(io.BytesIO(data))
            image.load()
        except UnreadableImage:
            raise
        except UnidentifiedImageError:
            raise UnreadableImage(
                "This file is not an image we can read (is it a PDF or a document?). "
                "Upload a chest X-ray as JPEG, PNG or DICOM (.dcm)."
            ) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise UnreadableImage("The image has too many pixels to be an X-ray.") from None
        except (OSError, SyntaxError, ValueError):
            raise UnreadableImage(
                "The image file is damaged or incomplete (truncated upload?). Try again with "
                "the original file."
            ) from None
    return _to_gray(ImageOps.exif_transpose(image))


def _to_gray(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return Image.fromarray(_window_to_uint8(np.asarray(image, dtype=np.float64)))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return image.convert("L")


def _window_to_uint8(values: np.ndarray, low: float | None = None, high: float | None = None):
    low = float(values.min()) if low is None else low
    high = float(values.max()) if high is None else high
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return np.round((np.clip(values, low, high) - low) / (high - low) * 255).astype(np.uint8)


def _read_dicom(data: bytes) -> Image.Image:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for bad or unsupported files
        raise UnreadableImage(
            "This DICOM file could not be read (damaged, or a compression we do not support). "
            "Export the image as uncompressed DICOM, PNG or JPEG."
        ) from exc
    if pixels.ndim != 2:
        raise UnreadableImage("This DICOM file holds several frames or colour data, not one X-ray.")
    rows, cols = pixels.shape
    if rows * cols > MAX_PIXELS:
        raise UnreadableImage("The DICOM image has too many pixels to be an X-ray.")
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        values = apply_voi_lut(values, ds, index=0).astype(np.float64)
    gray = _window_to_uint8(values)
    if getattr(ds, "PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        gray = 255 - gray  # MONOCHROME1: high values are dark
    return Image.fromarray(gray)
