"""Image decoding and validation, patient ids."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pneumonia.data import list_images, patient_id
from pneumonia.serving import InvalidImage, read_image, resize
from tests.conftest import DATASET, SAMPLES, require_data


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def real_jpeg() -> bytes:
    require_data()
    return sorted((DATASET / "test" / "NORMAL").iterdir())[0].read_bytes()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("person1000_bacteria_2931.jpeg", "person1000"),
        ("person1003_virus_1685.jpeg", "person1003"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
        ("3f2a9c.jpeg", "3f2a9c"),  # unknown pattern: one image, one patient
    ],
)
def test_patient_id(name, expected):
    assert patient_id(name) == expected


def test_decodes_a_real_xray_to_grayscale(real_jpeg):
    image = read_image(real_jpeg)
    assert image.info["format"] == "JPEG" and image.mode == "L" and image.size == (224, 224)


def test_truncated_jpeg_is_rejected(real_jpeg):
    with pytest.raises(InvalidImage, match="corrupt or truncated"):
        read_image(real_jpeg[: len(real_jpeg) // 2])


def test_text_file_named_jpeg_is_rejected():
    with pytest.raises(InvalidImage, match="not an image"):
        read_image(b"patient report, not an image\n" * 20)


def test_pdf_renamed_jpg_is_rejected():
    pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    with pytest.raises(InvalidImage, match="not an image"):
        read_image(pdf)


def test_gif_is_rejected_by_content():
    with pytest.raises(InvalidImage, match="GIF image; only JPEG, PNG and DICOM"):
        read_image(encode(Image.new("L", (64, 64)), "GIF"))


def test_empty_file_is_rejected():
    with pytest.raises(InvalidImage, match="empty"):
        read_image(b"")


def test_tiny_image_is_rejected():
    with pytest.raises(InvalidImage, match="too small"):
        read_image(encode(Image.new("L", (10, 10)), "PNG"))


def test_decompression_bomb_is_rejected():
    # A 1-bit 9000 x 9000 PNG is ~10 KB on disk and 81 Mpx once decoded.
    bomb = encode(Image.new("1", (9000, 9000)), "PNG", optimize=True)
    assert len(bomb) < 200_000
    with pytest.raises(InvalidImage, match="more than any X-ray|too many pixels"):
        read_image(bomb)


def test_16_bit_png_uses_its_full_range():
    ramp = np.linspace(1000, 5000, 64 * 64).reshape(64, 64).astype(np.uint16)
    image = read_image(encode(Image.fromarray(ramp), "PNG"))
    values = np.asarray(image)
    assert image.mode == "L" and values.min() == 0 and values.max() == 255


def test_rgba_drops_alpha_and_cmyk_converts():
    rgba = Image.new("RGBA", (64, 64), (200, 200, 200, 255))
    assert np.asarray(read_image(encode(rgba, "PNG"))).mean() == pytest.approx(200, abs=1)
    cmyk = Image.new("CMYK", (64, 64), (0, 0, 0, 0))  # no ink: white
    assert np.asarray(read_image(encode(cmyk, "JPEG"))).mean() > 250


def test_exif_orientation_is_applied():
    wide = Image.new("L", (120, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    image = read_image(encode(wide, "JPEG", exif=exif))
    assert image.size == (60, 120)


def test_full_size_samples_decode_and_resize():
    require_data()
    paths = sorted(SAMPLES.rglob("*.jpeg"))
    assert len(paths) >= 40
    for path in paths[:6]:
        image = read_image(path.read_bytes())
        array = resize(image, 64)
        assert array.shape == (64, 64) and array.dtype == np.uint8 and array.std() > 5


def test_list_images_reads_the_official_layout(small_dataset):
    records = list_images(small_dataset)
    assert len(records) == 2 * (20 + 4 + 6)
    assert {r.split for r in records} == {"train", "val", "test"}
    assert all(r.path.parent.name == r.label for r in records)


@pytest.mark.parametrize("fmt", ["PNG", "DICOM"])
def test_the_decoded_image_says_what_the_file_was(fmt, real_jpeg):
    from tests.hostile_files import dicom, encode

    image = read_image(real_jpeg)
    data = encode(image, "PNG") if fmt == "PNG" else dicom(64, 64)
    assert read_image(data).info["format"] == fmt
