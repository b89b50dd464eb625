"""How a served bundle behaves, beyond its test accuracy: the gate's behavioural checks.

Made-With-ML's three kinds of model-behaviour tests, run on the bundle itself (the one the gate
would ship, through the serving code) and ruled on with ``params.yaml``'s ``gate.behaviour``:

- **invariance**: each test image is changed in a way that must not change the diagnosis (a
  small rotation either way, brighter and darker, JPEG re-encoding, the same pixels as a 16-bit
  PNG and as a DICOM file); the share of images whose decision flips must stay within
  ``max_flip_rate`` for each change. The answers come from file bytes, decoded as uploads are.
- **directional**: the input guard must refuse ``pneumonia.catalogue``'s inputs that are not
  chest X-rays (photographs, documents, synthetic images, truncated and tiny X-rays): at least
  ``min_refused`` of them, measured here, not read from the bundle's manifest.
- **minimum functionality**: the known easy cases, the test images the champion answers right
  with at least ``easy_confidence`` of calibrated probability for the true class; the
  challenger may get at most ``max_easy_errors`` of them (a share) wrong. A first champion has
  no known easy cases, and the check says so.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from pneumonia.catalogue import encode, not_chest_xrays, refused_share
from pneumonia.serving import WORKING_SIDE, Bundle, InvalidImage, read_image, resize

Change = Callable[[Image.Image], bytes]
XRAY_COPIES = 20  # test files the catalogue turns into truncated and tiny copies


def dicom_file(image: Image.Image) -> bytes:
    """The 8-bit grayscale ``image`` as an uncompressed DICOM file (12 bits stored, as many
    radiographs are), with no patient data."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = np.asarray(image, np.uint16) * 16
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def png16_file(image: Image.Image) -> bytes:
    """The 8-bit grayscale ``image`` as a 16-bit PNG of the same picture (x 257)."""
    pixels = np.asarray(image, np.uint16) * 257
    return encode(Image.fromarray(pixels))  # uint16: mode I;16


def changes(params: Any) -> dict[str, Change]:
    """name -> a change that must not alter the diagnosis (image -> file bytes)."""
    degrees, brightness = params.rotation_deg, params.brightness

    def rotated(angle: float) -> Change:
        return lambda im: encode(im.rotate(angle, Image.Resampling.BILINEAR, fillcolor=0))

    def lit(factor: float) -> Change:
        return lambda im: encode(ImageEnhance.Brightness(im).enhance(factor))

    return {
        f"rotated +{degrees:g} degrees": rotated(degrees),
        f"rotated -{degrees:g} degrees": rotated(-degrees),
        f"{brightness:.0%} brighter": lit(1 + brightness),
        f"{brightness:.0%} darker": lit(1 - brightness),
        f"re-encoded as JPEG quality {params.jpeg_quality}": lambda im: encode(
            im, "JPEG", quality=params.jpeg_quality
        ),
        "as a 16-bit PNG": png16_file,
        "as a DICOM file": dicom_file,
    }


def answers(bundle: Bundle, files: list[bytes]) -> np.ndarray:
    """Calibrated probability per file, decoded as an upload is (without the guard, whose
    refusals the directional check judges); NaN for a file that cannot be read."""
    out = np.full(len(files), np.nan)
    side = max(WORKING_SIDE, 2 * bundle.size)
    for start in range(0, len(files), 64):
        batch, where = [], []
        for i, data in enumerate(files[start : start + 64], start):
            try:
                batch.append(resize(read_image(data, max_side=side), bundle.size))
                where.append(i)
            except InvalidImage:
                pass
        if batch:
            out[where] = bundle.probabilities(np.stack(batch))
    return out


def invariance(bundle: Bundle, files: list[bytes], params: Any) -> dict[str, Any]:
    """Per change: how many of ``files`` (test images) get the other decision."""
    original = answers(bundle, files)
    readable = ~np.isnan(original)
    decided = original >= bundle.threshold
    images = [read_image(data) for data, ok in zip(files, readable, strict=True) if ok]
    results = {}
    for name, change in changes(params).items():
        changed = np.full(len(files), np.nan)
        changed[readable] = answers(bundle, [change(image) for image in images])
        # an image the change made unreadable counts as flipped: the upload got no answer
        flipped = readable & (np.isnan(changed) | ((changed >= bundle.threshold) != decided))
        n = int(readable.sum())
        rate = float(flipped.sum() / n) if n else 0.0
        shift = np.abs(changed - original)[readable & ~np.isnan(changed)]
        results[name] = {
            "flipped": int(flipped.sum()),
            "n": n,
            "rate": rate,
            "mean_probability_change": float(shift.mean()) if len(shift) else 0.0,
            "passed": rate <= params.max_flip_rate,
        }
    return results


def directional(bundle: Bundle, xrays: list[tuple[str, bytes]], params: Any) -> dict[str, Any]:
    """The share of the catalogue of non-chest-X-rays the bundle's guard refuses."""
    if bundle.guard is None:
        return {"refused": 0.0, "n": 0, "passed": False, "guard": False}
    share, n = refused_share(bundle, not_chest_xrays(xrays[:XRAY_COPIES]))
    return {"refused": share, "n": n, "passed": share >= params.min_refused, "guard": True}


def easy_cases(
    labels: np.ndarray,
    champion: tuple[np.ndarray, float],
    challenger: tuple[np.ndarray, float],
    params: Any,
    positive: int = 1,
) -> dict[str, Any]:
    """The champion's confident right answers (probability of the true class at least
    ``easy_confidence``) and how many of them the challenger gets wrong; each model is given as
    (calibrated probabilities, threshold)."""
    truth = labels == positive
    (champion_p, champion_threshold), (challenger_p, challenger_threshold) = champion, challenger
    sure = np.where(truth, champion_p, 1 - champion_p) >= params.easy_confidence
    sure &= (champion_p >= champion_threshold) == truth
    wrong = sure & ((challenger_p >= challenger_threshold) != truth)
    n = int(sure.sum())
    rate = float(wrong.sum() / n) if n else 0.0
    return {
        "n": n,
        "wrong": int(wrong.sum()),
        "rate": rate,
        "passed": rate <= params.max_easy_errors,
    }


def bundle_checks(bundle_dir: Path, files: list[Path], params: Any) -> dict[str, Any]:
    """Invariance and directional checks of the bundle in ``bundle_dir`` on the test image
    files ``files``."""
    bundle = Bundle(bundle_dir)
    data = [path.read_bytes() for path in files]
    return {
        "invariance": invariance(bundle, data, params),
        "directional": directional(
            bundle, [(p.name, d) for p, d in zip(files, data, strict=True)], params
        ),
    }


def verdict_lines(behaviour: dict[str, Any], params: Any) -> tuple[bool, list[str]]:
    """(every check passed, one reason per check) for the gate's verdict."""
    passed, reasons = True, []
    for name, result in (behaviour.get("invariance") or {}).items():
        ok = result["passed"]
        passed &= ok
        reasons.append(
            f"invariance, {name}: {result['flipped']} of {result['n']} test decisions flipped "
            f"({result['rate']:.1%}; {'within' if ok else 'above'} the limit "
            f"{params.max_flip_rate:.1%})"
        )
    direction = behaviour.get("directional")
    if direction is not None:
        passed &= direction["passed"]
        if not direction["guard"]:
            reasons.append("directional: the bundle has no input guard, so it answers anything")
        else:
            reasons.append(
                f"directional: the guard refuses {direction['refused']:.1%} of "
                f"{direction['n']} inputs that are not chest X-rays (must be at least "
                f"{params.min_refused:.1%})"
            )
    easy = behaviour.get("easy")
    if easy is None:
        reasons.append("minimum functionality: no champion, so no known easy cases yet")
    else:
        passed &= easy["passed"]
        reasons.append(
            f"minimum functionality: {easy['wrong']} of the champion's {easy['n']} easy test "
            f"cases (at least {params.easy_confidence:.0%} sure and right) answered wrong "
            f"({easy['rate']:.1%}; at most {params.max_easy_errors:.1%} allowed)"
        )
    return passed, reasons
