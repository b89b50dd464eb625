"""A catalogue of inputs that are not chest X-rays, and how a bundle's guard decides on them.

The export stage measures the share of it the served model refuses (``model.json``,
``guard.refused.not_chest_xray``) and ``bench/guard.py`` prints it group by group. Built from
what installed packages ship and from synthetic images: scikit-image's and matplotlib's sample
images (photographs, a text page, microscopy, a retina, the Shepp-Logan phantom, an MRI
slice...) as colour originals and in grayscale at radiograph size, cropped, rotated and
inverted; rendered text pages; flat, gradient, noise and chessboard images; and, from real
X-ray files the caller gives, JPEGs that lost their second half and 32 x 32 copies. The same
seed gives the same catalogue, byte for byte.
"""

from __future__ import annotations

import gzip
import io
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

from pneumonia.serving import Bundle, InvalidImage, NotAChestXray

XRAY_SIDE = 1400  # grayscale variants are scaled up to about a radiograph's size
XRAY_FILES = 20  # real X-ray files made into truncated and tiny copies

Groups = dict[str, list[tuple[str, bytes]]]


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    """``image`` as a file of format ``fmt`` (PNG at the fastest compression by default)."""
    if fmt == "PNG":
        options.setdefault("compress_level", 1)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def package_images() -> dict[str, Image.Image]:
    """The sample images scikit-image and matplotlib install with themselves (RGB)."""
    import matplotlib
    import skimage

    images = {}
    skimage_data = Path(skimage.__file__).parent / "data"
    for path in sorted(skimage_data.glob("*")):
        if path.suffix in (".png", ".jpg"):
            images[f"skimage {path.stem}"] = Image.open(path)
    faces = np.load(skimage_data / "lfw_subset.npy")[:20]
    for i, face in enumerate(faces):
        images[f"skimage face {i}"] = Image.fromarray((face * 255).astype(np.uint8))
    samples = Path(matplotlib.get_data_path()) / "sample_data"
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
        images[f"matplotlib {name}"] = Image.open(samples / name)
    with gzip.open(samples / "s1045.ima.gz") as f:
        mri = np.frombuffer(f.read(), np.uint16).reshape(256, 256)
    images["matplotlib MRI slice"] = Image.fromarray((mri / mri.max() * 255).astype(np.uint8))
    return {name: image.convert("RGB") for name, image in images.items()}


def as_xray_sized_gray(image: Image.Image) -> Image.Image:
    gray = ImageOps.grayscale(image)
    scale = XRAY_SIDE / max(gray.size)
    return gray.resize((round(gray.width * scale), round(gray.height * scale)))


def text_page(seed: int) -> Image.Image:
    """An A4 page at 150 dpi of random report words."""
    rng = np.random.default_rng(seed)
    words = ["patient", "report", "chest", "radiograph", "findings", "the", "of", "lung", "no"]
    page = Image.new("L", (1240, 1754), 255)
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=int(rng.integers(18, 40)))
    text = " ".join(rng.choice(words, 400))
    for row, line in enumerate(textwrap.wrap(text, 60)[:40]):
        draw.text((80, 80 + row * 42), line, fill=0, font=font)
    return page


def synthetic(rng: np.random.Generator) -> dict[str, Image.Image]:
    """Flat, gradient, noise, text, chessboard and ellipse images at radiograph size."""
    h, w = 1200, 1400
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w]).reshape(2, 1, 1)
    found: dict[str, Image.Image] = {}
    for level in (0, 32, 64, 96, 128, 160, 192, 224, 255):
        found[f"flat {level}"] = Image.new("L", (w, h), level)
    for name, ramp in {
        "gradient horizontal": x,
        "gradient vertical": y,
        "gradient diagonal": (x + y) / 2,
        "gradient radial": 1 - np.hypot(x - 0.5, y - 0.5) / 0.71,
        "gradient radial inverted": np.hypot(x - 0.5, y - 0.5) / 0.71,
    }.items():
        found[name] = Image.fromarray((ramp * 255).astype(np.uint8))
    for i in range(3):
        found[f"noise uniform {i}"] = Image.fromarray(rng.integers(0, 256, (h, w), np.uint8))
        gauss = np.clip(rng.normal(128, 40, (h, w)), 0, 255).astype(np.uint8)
        found[f"noise gaussian {i}"] = Image.fromarray(gauss)
        clouds = Image.fromarray(rng.integers(0, 256, (h // 40, w // 40), np.uint8))
        found[f"noise clouds {i}"] = clouds.resize((w, h), Image.Resampling.BICUBIC)
        found[f"noise colour {i}"] = Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8))
        found[f"text page {i}"] = text_page(i)
    for square in (40, 150):
        board = ((np.indices((h, w)) // square).sum(axis=0) % 2 * 255).astype(np.uint8)
        found[f"chessboard {square}"] = Image.fromarray(board)
    shapes = Image.new("L", (w, h), 20)
    draw = ImageDraw.Draw(shapes)
    for _ in range(30):
        x0, y0 = rng.integers(0, w - 200), rng.integers(0, h - 200)
        box = [int(x0), int(y0), int(x0 + rng.integers(50, 200)), int(y0 + rng.integers(50, 200))]
        draw.ellipse(box, fill=int(rng.integers(60, 255)))
    found["ellipses"] = shapes
    found["ellipses blurred"] = shapes.filter(ImageFilter.GaussianBlur(12))
    return found


def not_chest_xrays(xrays: list[tuple[str, bytes]], quick: bool = False) -> Groups:
    """group -> [(name, file bytes)] of inputs that are not chest X-rays; ``xrays`` (name, file
    bytes) are real X-ray files, the first ``XRAY_FILES`` of which become truncated and tiny
    copies. ``quick``: a few inputs per group (tests)."""
    rng = np.random.default_rng(0)
    groups: Groups = defaultdict(list)
    photos = package_images()
    if quick:
        photos = dict(list(photos.items())[:4])
    for name, image in photos.items():
        gray = as_xray_sized_gray(image)
        groups["package images, as shipped"].append((name, encode(image, "JPEG")))
        groups["package images, grayscale, radiograph size"].append((name, encode(gray)))
        groups["package images, grayscale, inverted"].append((name, encode(ImageOps.invert(gray))))
        crop = gray.crop(
            (gray.width // 4, gray.height // 4, 3 * gray.width // 4, 3 * gray.height // 4)
        )
        groups["package images, grayscale, centre crop"].append((name, encode(crop, "JPEG")))
        groups["package images, grayscale, rotated 90"].append(
            (name, encode(gray.transpose(Image.Transpose.ROTATE_90)))
        )
    made = synthetic(rng)
    if quick:
        made = dict(list(made.items())[:6])
    for name, image in made.items():
        group = "synthetic: " + name.split()[0] + (" page" if name.startswith("text") else "")
        groups[group].append((name, encode(image, "JPEG" if image.mode == "RGB" else "PNG")))
    for name, data in xrays[: 4 if quick else XRAY_FILES]:
        groups["X-ray JPEGs that lost their second half"].append((name, data[: len(data) // 2]))
        tiny = Image.open(io.BytesIO(data)).convert("L").resize((32, 32))
        groups["real X-rays shrunk to 32 x 32"].append((name, encode(tiny)))
    return dict(groups)


def decide(bundle: Bundle, data: bytes) -> str:
    """``answered``, or why ``bundle`` refused the file ``data`` (``unreadable`` when it cannot
    be decoded): as an upload is decided."""
    try:
        bundle.predict_bytes(data)
    except NotAChestXray as exc:
        return exc.reason
    except InvalidImage:
        return "unreadable"
    return "answered"


def refused_share(bundle: Bundle, groups: Groups) -> tuple[float, int]:
    """(share of every input of ``groups`` that ``bundle`` does not answer, how many inputs)."""
    decisions = [decide(bundle, data) for items in groups.values() for _, data in items]
    return sum(d != "answered" for d in decisions) / max(len(decisions), 1), len(decisions)
