"""The served model's path from file bytes to a probability and a heat map, without torch.

One module for the pipeline and the web app: ``prepare`` decodes the training images with
``read_image``, ``evaluate`` calibrates with ``calibrated_probability``, ``export`` checks the
ONNX graph against torch through ``Bundle``, the gate scores with it, and ``package.py`` copies
this file into the Heroku slug as ``pneumonia/serving.py``, where the app imports it. So it
imports nothing of the project and only numpy and Pillow at the top (onnxruntime and pydicom
when first needed), all of them in ``django_app/requirements.txt``.

Uploads are hostile until proven otherwise: sizes, bit depths, frames and compression are read
from the headers and checked against ``MAX_DECODED_BYTES`` before anything is decoded, large
JPEGs are decoded at reduced scale (progressive ones counted by their coefficient buffers, which
no scale reduces), and pixel conversions run in bands, so that one upload
costs a bounded amount of memory whatever it declares (bench/upload_memory.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

ACCEPTED_FORMATS = {"JPEG", "MPO", "PNG"}  # MPO: JPEG as written by many phone cameras
MIN_SIDE = 32  # smaller carries no diagnostic information at our input sizes
MAX_PIXELS = 64_000_000  # ~8000 x 8000; larger is a decompression bomb, not an X-ray
# The largest decoded raster (all channels, all bits) one image may need: 8-bit grayscale up to
# 33 megapixels, 16-bit up to 16 (4096 x 4096), RGB 11, RGBA 8; DICOM counts twice (pydicom
# holds the pixel data and the array). Keeps a worker under 300 MB: bench/upload_memory.py.
MAX_DECODED_BYTES = 32 * 2**20
BAND_ROWS = 256  # rows converted at a time where floats are needed
_BYTES_PER_PIXEL = {
    "1": 1,
    "L": 1,
    "P": 1,
    "LA": 2,
    "PA": 2,
    "La": 2,
    "RGB": 3,
    "YCbCr": 3,
    "LAB": 3,
    "HSV": 3,
    "RGBA": 4,
    "RGBa": 4,
    "RGBX": 4,
    "CMYK": 4,
    "I": 4,
    "F": 4,
    "I;16": 2,
    "I;16B": 2,
    "I;16L": 2,
    "I;16N": 2,
}
_DICOM_UNCOMPRESSED = {
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian (retired, still seen)
}
_DICOM_DEFLATED = "1.2.840.10008.1.2.1.99"
WORKING_SIDE = 1024  # the app decodes large JPEGs to no less: display 512 px, model 224 px
FORMATS_HINT = "Upload a chest X-ray as JPEG, PNG or DICOM (.dcm)."
# A JPEG cut short decodes with its missing rows in flat grey: a band of one value at the bottom
# this tall (a fraction of the height) is refused as truncated; one of black or white only when
# much taller (real images have thin borders: the dataset's widest is 7% of the height).
MID_GREY = (16, 239)
TRUNCATED_GREY_BAND = 0.02
TRUNCATED_ANY_BAND = 0.25


class InvalidImage(ValueError):
    """The bytes are not an X-ray image we can read; ``str()`` says why, for the person who
    sent it, and never contains the file's content."""


class NotAChestXray(InvalidImage):
    """The file is an image, but not one like the chest X-rays the model learned from: no
    probability is given. ``reason`` names the check that refused it."""

    def __init__(self, reason: str, detail: str):
        super().__init__(
            f"This does not look like a chest X-ray ({detail}), so the model gives no answer."
            " Upload a frontal chest radiograph (JPEG, PNG or DICOM)."
        )
        self.reason = reason


class BundleError(RuntimeError):
    """The serving bundle is missing, incomplete or does not match its manifest."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- decoding -----------------------------------------------------------------------------


def read_image(data: bytes, max_side: int | None = None) -> Image.Image:
    """Decode image bytes (JPEG, PNG or DICOM, by content) into an upright 8-bit grayscale
    image; ``InvalidImage`` for anything else.

    ``max_side``: the caller needs no more than this many pixels on the longer side, so a large
    JPEG may be decoded at 1/2, 1/4 or 1/8 scale (never below ``max_side``). ``None`` decodes at
    full size, as the pipeline does for its training images. ``image.info["source_size"]`` is
    the upright (width, height) of the image as stored in the file, ``image.info["format"]``
    what the content is (``DICOM``, ``JPEG``, ``PNG``...).
    """
    if not data:
        raise InvalidImage(f"The file is empty. {FORMATS_HINT}")
    if _is_dicom(data):
        image = _read_dicom(data)
        image.info["format"] = "DICOM"
    else:
        image = _read_picture(data, max_side)
    image.info.setdefault("source_size", image.size)
    return image


def resize(image: Image.Image, size: int) -> np.ndarray:
    """Square ``size`` x ``size`` uint8 array, as the model sees it (bilinear, aspect squashed,
    as the published dataset copies were)."""
    return np.array(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def _check_size(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise InvalidImage(
            f"The image has {width}x{height} pixels, more than any X-ray ({MAX_PIXELS:,} at"
            " most). Upload the original radiograph."
        )
    if min(width, height) < MIN_SIDE:
        raise InvalidImage(
            f"The image is only {width}x{height} pixels, too small to assess (at least"
            f" {MIN_SIDE} on each side). Upload the full-resolution X-ray."
        )


def _check_raster(width: int, height: int, bytes_per_pixel: float, what: str) -> None:
    needed = width * height * bytes_per_pixel
    if needed > MAX_DECODED_BYTES:
        raise InvalidImage(
            f"The image is too large to process: {width}x{height} {what} needs"
            f" {needed / 2**20:.0f} MB decoded, {MAX_DECODED_BYTES // 2**20} MB at most. Export"
            " it as an 8-bit grayscale PNG or JPEG, or at a lower resolution."
        )


def _check_progressive(image: Image.Image) -> None:
    """A progressive JPEG is decoded from a buffer of every component's DCT coefficients at
    full size (2 bytes each), whatever scale it is drafted to: count that from the header."""
    width, height = image.size
    sampling = [(h, v) for _, h, v, _ in getattr(image, "layer", [])] or [(1, 1)]
    h_max, v_max = max(h for h, _ in sampling), max(v for _, v in sampling)

    def blocks(pixels: int, factor: int, most: int) -> int:  # 8 x 8 blocks along one side
        return math.ceil(math.ceil(pixels * factor / most) / 8)

    needed = sum(blocks(width, h, h_max) * blocks(height, v, v_max) * 64 * 2 for h, v in sampling)
    if needed > MAX_DECODED_BYTES:
        raise InvalidImage(
            f"The image is too large to process: a progressive JPEG of {width}x{height} with"
            f" {len(sampling)} component(s) needs {needed / 2**20:.0f} MB to decode,"
            f" {MAX_DECODED_BYTES // 2**20} MB at most. Export it as a baseline (standard) JPEG"
            " or a PNG, or at a lower resolution."
        )


def _check_complete(image: Image.Image) -> None:
    """Refuse a JPEG whose scan stops early: libjpeg fills what is missing with flat grey (128)
    down to the bottom of the image as stored, and a cut file with an end marker appended
    decodes without an error. Real radiographs end in noise, or at most in a thin black or
    white border (the dataset's widest: 7% black), never in a band of one mid grey."""
    width, height = image.size
    last = np.asarray(image.crop((0, height - 1, width, height)).getchannel(0))
    if last.min() != last.max():
        return  # nearly every image: one row looked at
    value = int(last[0, 0])
    pixels = np.asarray(image.getchannel(0))
    flat = (pixels.min(axis=1) == value) & (pixels.max(axis=1) == value)
    if flat.all():
        return  # a blank image: the guard refuses it as uniform, saying so
    band = height - (int(np.flatnonzero(~flat)[-1]) + 1)
    grey = MID_GREY[0] <= value <= MID_GREY[1]
    if band >= max(4, height * (TRUNCATED_GREY_BAND if grey else TRUNCATED_ANY_BAND)):
        raise InvalidImage(
            f"The image is incomplete: its bottom {100 * band / height:.0f}% is one flat"
            f" {'grey' if grey else 'band'}, as a file cut short in the upload or export"
            " decodes. Upload the complete original file again."
        )


def _read_picture(data: bytes, max_side: int | None) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            fmt = image.format
            if fmt not in ACCEPTED_FORMATS:
                raise InvalidImage(
                    f"This is a {fmt} image; only JPEG, PNG and DICOM X-rays are accepted."
                    f" {FORMATS_HINT}"
                )
            _check_size(*image.size)
            if fmt in ("JPEG", "MPO") and image.info.get("progressive"):
                _check_progressive(image)
            stored = image.size
            if fmt in ("JPEG", "MPO") and max_side and max(image.size) >= 2 * max_side:
                # Decode at 1/2, 1/4 or 1/8 scale (never below max_side): the DCT does the
                # downsampling, at a fraction of the memory and time of a full decode.
                image.draft(image.mode, (max_side, max_side))
            mode = image.mode
            _check_raster(*image.size, _BYTES_PER_PIXEL.get(mode, 4), f"{mode} pixels")
            image.load()  # a truncated or corrupt file fails here, not later
        except InvalidImage:
            raise
        except UnidentifiedImageError:
            raise InvalidImage(
                f"This file is not an image (is it a PDF or a document?). {FORMATS_HINT}"
            ) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InvalidImage("The image has too many pixels to be an X-ray.") from None
        except (OSError, SyntaxError, ValueError):
            raise InvalidImage(
                "The image file is damaged or incomplete (corrupt or truncated upload?). Try"
                " again with the original file."
            ) from None
    if fmt in ("JPEG", "MPO"):
        _check_complete(image)
    scale = stored[0] / image.size[0]  # > 1 where decoded at reduced scale
    ImageOps.exif_transpose(image, in_place=True)  # not a copy: one raster at a time
    colour = colourfulness(image)
    gray = to_grayscale(image)
    gray.info["source_size"] = (round(gray.width * scale), round(gray.height * scale))
    gray.info["format"] = fmt
    gray.info["colour"] = colour
    return gray


def colourfulness(image: Image.Image) -> float:
    """Mean chroma (max - min of R, G, B) in [0, 1] of a small copy: about 0 for a radiograph,
    even one saved as RGB; 0.1 and more for colour photographs."""
    if image.mode not in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "P", "PA"):
        return 0.0
    side = max(image.size)
    size = (max(1, image.width * 64 // side), max(1, image.height * 64 // side))
    box = image.mode not in ("P", "PA")  # palette indices cannot be averaged
    small = image.resize(size, Image.Resampling.BOX if box else Image.Resampling.NEAREST)
    small = small.convert("RGB")
    rgb = np.asarray(small, dtype=np.int16)
    return float((rgb.max(axis=2) - rgb.min(axis=2)).mean() / 255.0)


def to_grayscale(image: Image.Image) -> Image.Image:
    """8-bit grayscale of any Pillow mode, without float copies of the whole image: 16-bit
    and float images are stretched to their full range, transparent pixels become black (X-ray
    backgrounds are dark)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image)
        image.close()
        return Image.fromarray(window_to_uint8(values))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    ):
        alpha = image.convert("RGBA") if image.mode in ("P", "PA") else image
        gray = alpha.convert("L")
        opacity = alpha.getchannel("A")
        return ImageChops.multiply(gray, opacity)  # L * A / 255: composited over black
    return image if image.mode == "L" else image.convert("L")


def window_to_uint8(
    values: np.ndarray, low: float | None = None, high: float | None = None
) -> np.ndarray:
    """Map ``values`` linearly from [low, high] (default: their range) to uint8, band by band."""
    low = float(values.min()) if low is None else low
    high = float(values.max()) if high is None else high
    out = np.zeros(values.shape, np.uint8)
    if high <= low:
        return out
    for start in range(0, values.shape[0], BAND_ROWS):
        band = values[start : start + BAND_ROWS].astype(np.float64)
        scaled = (np.clip(band, low, high) - low) / (high - low) * 255
        out[start : start + BAND_ROWS] = np.round(scaled)
    return out


def _is_dicom(data: bytes) -> bool:
    if len(data) > 132 and data[128:132] == b"DICM":
        return True
    # Without the 128-byte preamble: a file meta (group 0x0002) or identifying group 0x0008
    # element first, little endian, with an explicit VR or an implicit length.
    return len(data) > 8 and data[:2] in (b"\x02\x00", b"\x08\x00") and data[3:4] == b"\x00"


def _dicom_unreadable(detail: str = "") -> InvalidImage:
    return InvalidImage(
        "This DICOM file could not be read"
        + (f" ({detail})" if detail else " (damaged, or a compression we do not support)")
        + ". Export the image as uncompressed DICOM, PNG or JPEG."
    )


def _check_inflated_size(data: bytes, preamble: bool) -> None:
    """A deflated DICOM's data set is inflated step by step and counted, so that a small file
    declaring a huge image is refused before pydicom inflates all of it into memory."""
    start = 132 if preamble else 0
    if data[start : start + 6] != b"\x02\x00\x00\x00UL":  # (0002,0000) group length, UL
        raise _dicom_unreadable("its file meta information has no group length")
    body = data[start + 12 + int.from_bytes(data[start + 8 : start + 12], "little") :]
    inflater, total, limit = zlib.decompressobj(-zlib.MAX_WBITS), 0, MAX_DECODED_BYTES
    try:
        # 16 KB of input at a time: deflate expands at most ~1032:1, so no step holds more
        # than 17 MB. (Draining with max_length instead can stall on some streams.)
        for start in range(0, len(body), 1 << 14):
            total += len(inflater.decompress(body[start : start + (1 << 14)]))
            if total > limit or inflater.eof:
                break
    except zlib.error:
        raise _dicom_unreadable("its deflated data is damaged") from None
    if total > limit:
        raise InvalidImage(
            f"This DICOM file inflates to more than {limit // 2**20} MB, more than an X-ray"
            " needs. Export the image as uncompressed DICOM, PNG or JPEG."
        )


def _dicom_number(ds: Any, keyword: str, default: float | None = None) -> float | None:
    """A numeric DICOM element (the first of several values), or ``InvalidImage``."""
    if keyword not in ds:
        return default
    element = ds[keyword]
    try:
        value = element.value
        if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
            value = value[0] if len(value) else None
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raw = getattr(element, "value", b"")
        shown = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
        raise _dicom_unreadable(f"{keyword} is {shown.strip()[:20]!r}, not a number") from None
    if not np.isfinite(number):
        raise _dicom_unreadable(f"{keyword} is not a finite number")
    return number


def _read_dicom(data: bytes) -> Image.Image:
    import pydicom

    preamble = len(data) > 132 and data[128:132] == b"DICM"
    if _DICOM_DEFLATED.encode() in data[:2048]:
        _check_inflated_size(data, preamble)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=not preamble)
    except Exception:  # pydicom raises many types for damaged files
        raise _dicom_unreadable() from None
    syntax = str(getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", "") or "")
    if syntax and syntax not in _DICOM_UNCOMPRESSED | {_DICOM_DEFLATED}:
        raise _dicom_unreadable(f"compressed with transfer syntax {syntax[:64]}")
    rows, cols = _dicom_number(header, "Rows"), _dicom_number(header, "Columns")
    if not rows or not cols:
        raise _dicom_unreadable("it holds no image")
    rows, cols = int(rows), int(cols)
    frames = int(_dicom_number(header, "NumberOfFrames", 1) or 1)
    samples = int(_dicom_number(header, "SamplesPerPixel", 1) or 1)
    if frames != 1 or samples != 1:
        raise InvalidImage(
            "This DICOM file holds several frames or colour data, not one X-ray. Export the"
            " single radiograph."
        )
    _check_size(cols, rows)
    bits = int(_dicom_number(header, "BitsAllocated", 16) or 16)
    _check_raster(cols, rows, max(bits, 8) / 8 * 2, f"{bits}-bit DICOM pixels")
    width = _dicom_number(header, "WindowWidth")
    center = _dicom_number(header, "WindowCenter")
    if (width is None) != (center is None) or (width is not None and width <= 0):
        raise _dicom_unreadable("its window settings are invalid: WindowWidth must be positive")
    slope = _dicom_number(header, "RescaleSlope", 1.0)
    intercept = _dicom_number(header, "RescaleIntercept", 0.0)
    del header
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=not preamble)
            pixels = ds.pixel_array
    except Exception:
        raise _dicom_unreadable() from None
    if pixels.shape != (rows, cols):
        raise _dicom_unreadable("its pixel data does not match its Rows and Columns")
    has_lut = "VOILUTSequence" in ds
    gray = _dicom_to_uint8(pixels, ds, slope, intercept, center, width, has_lut)
    if getattr(ds, "PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        np.subtract(255, gray, out=gray)  # MONOCHROME1: high values are dark
    return Image.fromarray(gray)


def _dicom_to_uint8(pixels, ds, slope, intercept, center, width, has_lut) -> np.ndarray:
    """Modality rescale, then the window (or the VOI LUT), then the result's full range to
    uint8: band by band, so the float copies stay small."""
    from pydicom.pixels import apply_voi_lut

    def transformed(band: np.ndarray) -> np.ndarray:
        values = band.astype(np.float64) * slope + intercept
        if has_lut or center is not None:
            values = np.asarray(apply_voi_lut(values, ds, index=0), np.float64)
        return values

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about float input to a VOI LUT
            low, high = np.inf, -np.inf
            for start in range(0, pixels.shape[0], BAND_ROWS):
                values = transformed(pixels[start : start + BAND_ROWS])
                low, high = min(low, float(values.min())), max(high, float(values.max()))
            out = np.zeros(pixels.shape, np.uint8)
            for start in range(0, pixels.shape[0], BAND_ROWS):
                values = transformed(pixels[start : start + BAND_ROWS])
                out[start : start + BAND_ROWS] = window_to_uint8(values, low, high)
    except MemoryError:
        raise
    except Exception:  # every pydicom LUT and window step is hostile input (struct.error, ...)
        raise _dicom_unreadable("its rescale, window or VOI LUT settings are invalid") from None
    return out


# --- the model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Guard:
    """ "Is this a chest X-ray?", fitted by the export stage on the training images (model.json,
    ``guard``). Cheap checks first (too small, colour, nearly uniform), then the distance of the
    network's pooled features from the training images': a Gaussian in the top principal
    components plus an isotropic residual, per feature dimension (about 1 for a training image),
    refused above the threshold chosen on validation images."""

    min_side: int
    min_contrast: float  # standard deviation of the model's input pixels, in [0, 1]
    max_colour: float  # ``colourfulness``
    threshold: float
    mean: np.ndarray  # K
    components: np.ndarray  # k x K, orthonormal rows
    variances: np.ndarray  # k
    residual_variance: float

    @classmethod
    def from_manifest(cls, section: dict[str, Any]) -> Guard:
        return cls(
            min_side=int(section["min_side"]),
            min_contrast=float(section["min_contrast"]),
            max_colour=float(section["max_colour"]),
            threshold=float(section["threshold"]),
            mean=np.asarray(section["mean"], np.float64),
            components=np.asarray(section["components"], np.float64),
            variances=np.asarray(section["variances"], np.float64),
            residual_variance=float(section["residual_variance"]),
        )

    def image_refusal(self, image: Image.Image, gray: np.ndarray) -> NotAChestXray | None:
        """The cheap checks on the decoded ``image`` and its model input ``gray``."""
        width, height = image.info.get("source_size", image.size)
        if min(width, height) < self.min_side:
            detail = f"{width}x{height} pixels is far smaller than a radiograph"
            return NotAChestXray("too_small", detail)
        if float(image.info.get("colour", 0.0)) > self.max_colour:
            return NotAChestXray("colour", "it is a colour image")
        if self.uniform(gray[None])[0]:
            return NotAChestXray("uniform", "the image is nearly uniform")
        return None

    def uniform(self, gray: np.ndarray) -> np.ndarray:
        """Per image of a uint8 batch N x S x S: nearly uniform (pixel std below the bound)."""
        return gray.reshape(len(gray), -1).std(axis=1) / 255.0 < self.min_contrast

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Per-dimension distance of each image's features (N x K x h x w, or N x K pooled)."""
        pooled = features.mean(axis=(2, 3)) if features.ndim == 4 else features
        centred = np.asarray(pooled, np.float64) - self.mean
        projected = centred @ self.components.T
        residual = centred - projected @ self.components
        inside = (projected**2 / self.variances).sum(axis=1)
        return (inside + (residual**2).sum(axis=1) / self.residual_variance) / len(self.mean)

    def feature_refusal(self, distance: float) -> NotAChestXray | None:
        """The refusal of an image whose features lie ``distance`` from the training images'."""
        if distance > self.threshold:
            return NotAChestXray("unlike_training", "it is unlike the radiographs the model knows")
        return None


def image_statistics(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brightness and contrast (pixel mean and standard deviation, in [0, 1]) of each image of
    a uint8 batch N x S x S as the model reads it: what drift monitoring compares, with no
    model involved."""
    flat = gray.reshape(len(gray), -1).astype(np.float64) / 255.0
    return flat.mean(axis=1), flat.std(axis=1)


@dataclass
class Prediction:
    label: str
    probability: float  # calibrated, of the positive class
    threshold: float
    features: np.ndarray  # K x h x w, the last convolutional feature map
    class_weight: np.ndarray  # K, the head's weights of the positive class
    # What drift monitoring compares with the bundle's reference (model.json, ``reference``):
    guard_distance: float | None  # ``Guard.distance`` of the features (None: no guard)
    brightness: float  # ``image_statistics`` of the model's input
    contrast: float

    def heat_map(self, size: tuple[int, int]) -> np.ndarray:
        """Class activation map for the positive class at ``size`` (width, height), in [0, 1]."""
        return class_activation_map(self.features, self.class_weight, size)


class Bundle:
    """A loaded serving bundle (``model.onnx`` + ``model.json``): one onnxruntime session,
    reused; every preprocessing fact (size, normalisation, labels, calibration, threshold)
    comes from the manifest."""

    def __init__(self, bundle_dir: Path, threads: int | None = None):
        bundle_dir = Path(bundle_dir)
        manifest_path, onnx_path = bundle_dir / "model.json", bundle_dir / "model.onnx"
        for path in (manifest_path, onnx_path):
            if not path.is_file():
                raise BundleError(
                    f"{path} is missing: run `dvc repro export` (or `dvc pull`), or point the"
                    " app's MODEL_DIR at a folder with model.onnx and model.json"
                )
        self._load(onnx_path, json.loads(manifest_path.read_text()), threads)

    @classmethod
    def from_parts(cls, onnx_path: Path, manifest: dict[str, Any]) -> Bundle:
        """A bundle whose manifest is not written yet (the export stage checks it first)."""
        bundle = cls.__new__(cls)
        bundle._load(Path(onnx_path), manifest, None)
        return bundle

    def _load(self, onnx_path: Path, manifest: dict[str, Any], threads: int | None) -> None:
        import onnxruntime as ort

        ort.disable_telemetry_events()
        self.onnx_path, self.manifest = onnx_path, manifest
        self.sha256 = sha256_file(onnx_path)
        if self.sha256 != manifest.get("onnx_sha256"):
            raise BundleError(
                f"{onnx_path} has sha256 {self.sha256[:12]}..., model.json says"
                f" {str(manifest.get('onnx_sha256'))[:12]}...: the bundle is inconsistent;"
                " export or deploy it again"
            )
        spec = manifest["input"]
        self.size = int(spec["size"])
        self.mean = np.asarray(spec["mean"], np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(spec["std"], np.float32).reshape(1, 3, 1, 1)
        self.labels: list[str] = list(manifest["labels"])
        self.positive = self.labels.index(manifest["positive_label"])
        self.threshold = float(manifest["threshold"])
        self.scale = float(manifest["calibration"]["scale"])
        self.bias = float(manifest["calibration"]["bias"])
        self.class_weight = np.asarray(manifest["cam"]["head_weight"], np.float32)[self.positive]
        # Bundles exported before the guard existed have none: they answer every image.
        self.guard = Guard.from_manifest(manifest["guard"]) if "guard" in manifest else None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", self.sha256[:12]))

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
        """The bundle's calibrated positive-class probability from logits (N x 2)."""
        return calibrated_probability(logits, self.scale, self.bias, self.positive)

    def predict(self, image: Image.Image) -> Prediction:
        """Label, calibrated probability and heat-map inputs for one grayscale image;
        ``NotAChestXray`` where the bundle's guard refuses it."""
        gray = resize(image, self.size)
        refusal = self.guard and self.guard.image_refusal(image, gray)
        if refusal:
            raise refusal
        logits, features = self.run(gray[None])
        distance = float(self.guard.distance(features)[0]) if self.guard else None
        refusal = self.guard and self.guard.feature_refusal(distance)
        if refusal:
            raise refusal
        brightness, contrast = image_statistics(gray[None])
        probability = float(calibrated_probability(logits, self.scale, self.bias, self.positive)[0])
        positive = probability >= self.threshold
        return Prediction(
            label=self.labels[self.positive if positive else 1 - self.positive],
            probability=probability,
            threshold=self.threshold,
            features=features[0],
            class_weight=self.class_weight,
            guard_distance=distance,
            brightness=float(brightness[0]),
            contrast=float(contrast[0]),
        )

    def predict_bytes(self, data: bytes) -> Prediction:
        """Decode (``InvalidImage`` for bad input) and predict one image file."""
        return self.predict(read_image(data, max_side=max(WORKING_SIDE, 2 * self.size)))


def logit_margin(logits: np.ndarray, positive: int) -> np.ndarray:
    """Positive-class logit minus the other one: softmax's positive probability is its sigmoid."""
    logits = np.asarray(logits, np.float64)
    return logits[:, positive] - logits[:, 1 - positive]


def calibrated_probability(
    logits: np.ndarray, scale: float, bias: float, positive: int
) -> np.ndarray:
    """sigmoid(scale * margin + bias): the served probability of the positive class (the
    evaluate stage fits ``scale`` and ``bias``; 1 and 0 give the plain softmax)."""
    z = scale * logit_margin(logits, positive) + bias
    return 0.5 * (1.0 + np.tanh(z / 2))  # sigmoid(z) without overflow


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of N x C logits."""
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def positive_probability(logits: np.ndarray, positive: int = 1) -> np.ndarray:
    """Uncalibrated softmax probability of class ``positive`` (PNEUMONIA is 1) from logits."""
    return softmax(logits)[:, positive]


def class_activation_map(
    features: np.ndarray, class_weight: np.ndarray, size: int | tuple[int, int]
) -> np.ndarray:
    """CAM (Zhou et al. 2016): head-weighted sum of the last feature maps, ReLU, scaled to
    [0, 1] and bilinearly upsampled to ``size`` (a side, or (width, height))."""
    cam = np.maximum(np.tensordot(class_weight, features, axes=1), 0.0).astype(np.float32)
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else cam
    size = (size, size) if isinstance(size, int) else tuple(size)
    resized = Image.fromarray(cam).resize(size, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
