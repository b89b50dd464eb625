"""Files that uploads are tested with: DICOM written by pydicom (with a lying header, deflated,
windowed, without preamble) and a deflate bomb written without holding its pixels. Shared by
the tests and bench/upload_memory.py (run as ``python -m bench.upload_memory``)."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

__all__ = ["DeflatedExplicitVRLittleEndian", "deflated_bomb", "dicom", "encode", "ramp16"]


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def ramp16(rows: int, cols: int) -> np.ndarray:
    """A 12-bit horizontal ramp, as uint16."""
    return np.tile(np.linspace(0, 4095, cols), (rows, 1)).astype(np.uint16)


def dicom(
    rows: int = 64,
    cols: int = 64,
    pixel_bytes: bytes | None = None,
    syntax=ExplicitVRLittleEndian,
    preamble: bool = True,
    photometric: str = "MONOCHROME2",
    **elements,
) -> bytes:
    """A 16-bit (12 stored) DICOM file; ``pixel_bytes`` (default: a ramp) may disagree with
    Rows x Columns, as a lying header does."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.PatientName = "Test^Patient"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = ramp16(rows, cols).tobytes() if pixel_bytes is None else pixel_bytes
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    return data if preamble else data[132:]


def deflated_bomb(rows: int, cols: int) -> bytes:
    """A deflated DICOM of ``rows`` x ``cols`` 16-bit zeros, written without holding them:
    a few hundred KB on the wire, rows * cols * 2 bytes inflated."""
    head = dicom(rows, cols, b"", DeflatedExplicitVRLittleEndian)
    start = 132 + 12 + int.from_bytes(head[140:144], "little")  # after the file meta group
    plain = zlib.decompress(head[start:], -zlib.MAX_WBITS)
    size = rows * cols * 2
    prefix = plain[: plain.rindex(b"\xe0\x7f\x10\x00")]  # (7FE0,0010) Pixel Data
    prefix += b"\xe0\x7f\x10\x00OW\0\0" + size.to_bytes(4, "little")
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(prefix)]
    chunk = b"\0" * (1 << 22)
    for _ in range(size // len(chunk)):
        parts.append(compressor.compress(chunk))
    parts.append(compressor.compress(b"\0" * (size % len(chunk))) + compressor.flush())
    return head[:start] + b"".join(parts)
