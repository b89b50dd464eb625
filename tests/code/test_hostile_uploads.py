"""Uploads are hostile until proven otherwise: what a file declares is checked from its headers
before anything is decoded, and every bad file is an ``InvalidImage`` with a message to act on
(the web app answers 400 with it). Peak memory per case: bench/upload_memory.py."""

from __future__ import annotations

import resource

import numpy as np
import pytest
from PIL import Image

from pneumonia.serving import MAX_DECODED_BYTES, WORKING_SIDE, InvalidImage, read_image
from tests.conftest import SAMPLES, require_data
from tests.hostile_files import (
    DeflatedExplicitVRLittleEndian,
    deflated_bomb,
    dicom,
    encode,
    ramp16,
)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_dicom_declaring_a_huge_image_is_refused_from_its_header():
    data = dicom(30000, 30000, pixel_bytes=b"\0" * 128)  # a few bytes of pixels, 1.8 GB declared
    before = peak_rss_mb()
    with pytest.raises(InvalidImage, match="30000x30000 pixels, more than any X-ray"):
        read_image(data)
    assert peak_rss_mb() - before < 50


def test_a_deflated_dicom_that_inflates_beyond_the_bound_is_refused_before_inflating():
    data = deflated_bomb(8000, 6000)  # 96 MB inflated
    assert len(data) < 200_000
    before = peak_rss_mb()
    with pytest.raises(InvalidImage, match=r"inflates to more than \d+ MB"):
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


@pytest.mark.parametrize("descriptor", [[256, 0, 8], [4096, 0, 16], [0, 0, 16]])
def test_a_voi_lut_shorter_than_its_descriptor_is_a_clear_refusal(descriptor):
    """10 entries where the descriptor says 256 or 4096 (0 means 65536): pydicom's
    apply_voi_lut raised struct.error, a 500 on the web and the API."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    lut = Dataset()
    lut.LUTDescriptor = descriptor
    lut.LUTData = np.arange(10, dtype=np.uint16).tobytes()
    with pytest.raises(InvalidImage, match="VOI LUT settings are invalid"):
        read_image(dicom(64, 64, VOILUTSequence=Sequence([lut])))


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

    ramp = ramp16(2890, 2890).tobytes()
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("read_image stalled on a deflated file"))
    signal.alarm(60)
    try:
        for _ in range(10):
            data = dicom(2890, 2890, pixel_bytes=ramp, syntax=DeflatedExplicitVRLittleEndian)
            assert read_image(data).size == (2890, 2890)
    finally:
        signal.alarm(0)


def test_a_large_progressive_jpeg_is_refused_from_its_header():
    """Reduced-scale decoding does not help a progressive JPEG: libjpeg buffers every DCT
    coefficient at full size (7999 x 7999 grayscale: 122 MB; colour with 4:2:0 chroma: 183 MB)."""
    for mode, needed in (("L", 122), ("RGB", 183)):
        colour = 128 if mode == "L" else (90, 100, 110)
        data = encode(Image.new(mode, (7999, 7999), colour), "JPEG", progressive=True)
        before = peak_rss_mb()
        with pytest.raises(InvalidImage, match=f"progressive JPEG of 7999x7999.* {needed} MB"):
            read_image(data, max_side=WORKING_SIDE)
        assert peak_rss_mb() - before < 50, "refused before decoding"
    # The same image as a baseline JPEG is decoded at reduced scale, as before.
    baseline = encode(Image.new("L", (7999, 7999), 128), "JPEG")
    assert max(read_image(baseline, max_side=WORKING_SIDE).size) < 2 * WORKING_SIDE


def test_a_progressive_jpeg_within_the_bound_is_read():
    data = encode(Image.new("L", (4096, 3000), 128), "JPEG", progressive=True)
    image = read_image(data, max_side=WORKING_SIDE)
    assert image.info["source_size"] == (4096, 3000) and image.mode == "L"


@pytest.mark.parametrize("kept", [0.5, 0.8, 0.95])
def test_a_real_xray_cut_short_with_an_end_marker_is_refused(kept):
    """libjpeg decodes a cut JPEG whose end marker was appended without an error, the missing
    rows flat grey: that is no X-ray to answer on."""
    require_data()
    original = max(sorted(SAMPLES.rglob("*.jpeg"))[:10], key=lambda p: p.stat().st_size)
    data = original.read_bytes()
    cut = data[: int(len(data) * kept)] + b"\xff\xd9"
    with pytest.raises(InvalidImage, match=r"incomplete: its bottom \d+% is one flat grey"):
        read_image(cut, max_side=WORKING_SIDE)
    assert read_image(data, max_side=WORKING_SIDE).info["format"] == "JPEG"


def test_thin_borders_and_blank_images_are_not_called_truncated():
    """The dataset's widest border (7% black at the bottom) is read; a blank image is left to
    the guard (refused as uniform there, with its own message)."""
    gray = np.full((400, 300), 90, np.uint8)
    gray[:, ::2] = 110  # texture: every row varies
    gray[-28:] = 0  # a 7% black border
    assert read_image(encode(Image.fromarray(gray), "JPEG", quality=100)).size == (300, 400)
    assert read_image(encode(Image.new("L", (300, 400), 128), "JPEG")).size == (300, 400)
