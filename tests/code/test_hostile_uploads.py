"""Uploads are hostile until proven otherwise: what a file declares is checked from its headers
before anything is decoded, and every bad file is an ``InvalidImage`` with a message to act on
(the web app answers 400 with it). Peak memory per case: bench/upload_memory.py."""

from __future__ import annotations

import io
import resource
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from pneumonia.serving import MAX_DECODED_BYTES, WORKING_SIDE, InvalidImage, read_image


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def dicom(
    rows: int = 64,
    cols: int = 64,
    pixel_bytes: bytes | None = None,
    syntax=ExplicitVRLittleEndian,
    preamble: bool = True,
    **elements,
) -> bytes:
    """A DICOM file; ``pixel_bytes`` may disagree with Rows x Columns (a lying header)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    if pixel_bytes is None:
        ramp = np.tile(np.linspace(0, 4095, cols), (rows, 1)).astype(np.uint16)
        pixel_bytes = ramp.tobytes()
    ds.PixelData = pixel_bytes
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    return data if preamble else data[132:]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_dicom_declaring_a_huge_image_is_refused_from_its_header():
    data = dicom(30000, 30000, pixel_bytes=b"\0" * 128)  # a few bytes of pixels, 1.8 GB declared
    before = peak_rss_mb()
    with pytest.raises(InvalidImage, match="30000x30000 pixels, more than any X-ray"):
        read_image(data)
    assert peak_rss_mb() - before < 50


def test_a_deflated_dicom_that_inflates_beyond_the_bound_is_refused_before_inflating():
    # 8000 x 6000 16-bit zeros: 96 MB inflated, 0.1 MB on the wire. The deflated data set is
    # written by hand (pydicom would need the 96 MB in memory to write it).
    head = dicom(8000, 6000, pixel_bytes=b"", syntax=DeflatedExplicitVRLittleEndian)
    assert len(head) < 4096
    start = 132 + 12 + int.from_bytes(head[140:144], "little")  # after the file meta group
    plain = zlib.decompress(head[start:], -zlib.MAX_WBITS)
    pixel_tag = plain.rindex(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data, OW, 32-bit length
    size = 8000 * 6000 * 2
    prefix = plain[:pixel_tag] + b"\xe0\x7f\x10\x00OW\0\0" + size.to_bytes(4, "little")
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(prefix)
    zeros = b"\0" * (1 << 20)
    for _ in range(size // len(zeros)):
        deflated += compressor.compress(zeros)
    deflated += compressor.flush()
    data = head[:start] + deflated
    assert len(data) < 200_000
    before = peak_rss_mb()
    with pytest.raises(InvalidImage, match=r"inflates to more than \d+ MB|needs \d+ MB decoded"):
        read_image(data)
    assert peak_rss_mb() - before < 50


def test_a_multi_frame_dicom_is_refused_before_decoding():
    with pytest.raises(InvalidImage, match="several frames"):
        read_image(dicom(64, 64, NumberOfFrames=2))


@pytest.mark.parametrize(
    ("elements", "message"),
    [
        ({"WindowCenter": 2048, "WindowWidth": 0}, "WindowWidth must be positive"),
        ({"WindowCenter": 2048, "WindowWidth": -10}, "WindowWidth must be positive"),
        ({"WindowCenter": 9999, "WindowWidth": 100}, "WindowCenter is 'abc.*not a number"),
        ({"RescaleSlope": 9999, "RescaleIntercept": 0}, "RescaleSlope is 'abc.*not a number"),
    ],
)
def test_bad_dicom_window_or_rescale_is_a_clear_refusal(elements, message):
    # pydicom refuses to write text into a number; a hostile file is written by something else
    data = dicom(64, 64, **elements).replace(b"9999", b"abc ")
    with pytest.raises(InvalidImage, match=message):
        read_image(data)


def test_a_dicom_without_its_preamble_is_read():
    with_preamble, without = dicom(64, 64), dicom(64, 64, preamble=False)
    assert not without.startswith(b"\0" * 128)
    assert np.array_equal(np.asarray(read_image(with_preamble)), np.asarray(read_image(without)))


def test_a_dicom_whose_pixels_disagree_with_its_header_is_refused():
    with pytest.raises(InvalidImage, match="DICOM file could not be read"):
        read_image(dicom(64, 64, pixel_bytes=b"\0" * 100))


def test_a_16_bit_png_too_large_to_decode_is_refused_from_its_header():
    data = encode(Image.new("I;16", (7000, 7000)), "PNG")  # 98 MB decoded, ~0.1 MB on the wire
    assert len(data) < 1_000_000
    before = peak_rss_mb()
    with pytest.raises(InvalidImage, match="too large to process.*8-bit grayscale"):
        read_image(data)
    assert peak_rss_mb() - before < 50


def test_an_rgba_png_too_large_to_decode_is_refused():
    with pytest.raises(InvalidImage, match="too large to process: 4200x4200 RGBA"):
        read_image(encode(Image.new("RGBA", (4200, 4200)), "PNG"))
    assert MAX_DECODED_BYTES < 4200 * 4200 * 4


def test_a_large_cmyk_jpeg_is_decoded_at_reduced_scale():
    data = encode(Image.new("CMYK", (7900, 7900), (0, 0, 0, 0)), "JPEG")
    image = read_image(data, max_side=WORKING_SIDE)
    assert image.mode == "L" and WORKING_SIDE <= max(image.size) < 2 * WORKING_SIDE
    assert image.info["source_size"] == (7900, 7900)
    assert np.asarray(image).mean() > 250  # CMYK (0,0,0,0) is white
    with pytest.raises(InvalidImage, match="too large to process"):
        read_image(data)  # at full size it would need 238 MB


def test_transparent_pixels_become_black_and_opaque_ones_keep_their_grey():
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., :3], rgba[:20, :, 3], rgba[20:, :, 3] = 200, 255, 0
    gray = np.asarray(read_image(encode(Image.fromarray(rgba), "PNG")))
    assert gray[:20].mean() == pytest.approx(200, abs=1) and gray[20:].max() == 0


def test_deflated_dicoms_within_the_bound_are_read_promptly():
    """The bounded inflate once stalled forever on some streams (a one-request denial of
    service); ten fresh files, each with its own UIDs and so its own deflate stream."""
    import signal

    ramp = np.tile(np.linspace(0, 4095, 2890), (2890, 1)).astype(np.uint16).tobytes()
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("read_image stalled on a deflated file"))
    signal.alarm(60)
    try:
        for _ in range(10):
            data = dicom(2890, 2890, pixel_bytes=ramp, syntax=DeflatedExplicitVRLittleEndian)
            assert read_image(data).size == (2890, 2890)
    finally:
        signal.alarm(0)
