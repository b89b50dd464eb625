"""How well the served bundle's guard tells chest X-rays from everything else (issue 15).

    python -m bench.guard [--bundle models/bundle] [--out guard.json] [--quick]

Every input goes through ``Bundle.predict_bytes`` as an upload does (decode, cheap checks, the
feature distance). Two sets:

- **real chest X-rays**: every image of the shared data's train, val and test folders and the
  full-size originals in ``samples/``; the share refused should be <= 1 %;
- **a catalogue of what is not one**, built from what installed packages ship and from
  synthetic images: scikit-image's and matplotlib's sample images (photographs, a text page,
  microscopy, a retina, the Shepp-Logan phantom, an MRI slice...) as colour originals and in
  grayscale at radiograph size, cropped, rotated and inverted; rendered text pages; flat,
  gradient, noise and chessboard images; JPEG copies that lost their second half; tiny crops of
  real X-rays. The share refused should be >= 99 %.

Prints one table per set, by group; ``--out`` keeps every decision as JSON.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
import textwrap
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

from pneumonia.config import BUNDLE_DIR, SHARED_DATA_DIR
from pneumonia.serving import Bundle, InvalidImage, NotAChestXray

XRAY_SIDE = 1400  # grayscale variants are scaled up to about a radiograph's size


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def package_images() -> dict[str, Image.Image]:
    """The sample images scikit-image and matplotlib install with themselves."""
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


def catalogue(xrays: list[Path], quick: bool) -> dict[str, list[tuple[str, bytes]]]:
    """group -> [(name, file bytes)] of inputs that are not chest X-rays."""
    rng = np.random.default_rng(0)
    groups: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
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
    for path in xrays[: 4 if quick else 20]:
        data = path.read_bytes()
        groups["X-ray JPEGs that lost their second half"].append(
            (path.name, data[: len(data) // 2])
        )
        tiny = Image.open(io.BytesIO(data)).convert("L").resize((32, 32))
        groups["real X-rays shrunk to 32 x 32"].append((path.name, encode(tiny)))
    return groups


def decide(bundle: Bundle, data: bytes) -> str:
    """``answered``, or why the input was refused."""
    try:
        bundle.predict_bytes(data)
    except NotAChestXray as exc:
        return exc.reason
    except InvalidImage:
        return "unreadable"
    return "answered"


def real_xrays(quick: bool) -> dict[str, list[Path]]:
    dataset, samples = SHARED_DATA_DIR / "chest_xray", SHARED_DATA_DIR / "samples"
    groups = {
        f"shared data, {split}": sorted((dataset / split).rglob("*.jpeg"))
        for split in ("train", "val", "test")
    }
    groups["full-size originals (samples/)"] = sorted(samples.rglob("*.jpeg"))
    if quick:
        groups = {name: paths[:6] for name, paths in groups.items()}
    return groups


def table(title: str, rows: dict[str, Counter], wanted: str) -> list[str]:
    lines = [f"**{title}**", "", "| group | images | refused | reasons |", "|---|---:|---:|---|"]
    total, refused = 0, 0
    for group, counts in rows.items():
        n = sum(counts.values())
        no = n - counts["answered"]
        total, refused = total + n, refused + no
        reasons = ", ".join(f"{r} {c}" for r, c in counts.most_common() if r != "answered")
        lines.append(f"| {group} | {n} | {no} ({no / n:.1%}) | {reasons or '-'} |")
    lines.append(
        f"| **all** | **{total}** | **{refused} ({refused / max(total, 1):.2%})** | {wanted} |"
    )
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=BUNDLE_DIR)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="a few inputs per group (tests)")
    args = parser.parse_args(argv)
    bundle = Bundle(args.bundle)
    if bundle.guard is None:
        print(f"guard: {args.bundle} has no guard (exported before it existed)", file=sys.stderr)
        return 1
    decisions: dict[str, dict[str, list]] = {"xrays": {}, "catalogue": {}}
    xrays = real_xrays(args.quick)
    for group, paths in xrays.items():
        decisions["xrays"][group] = [(p.name, decide(bundle, p.read_bytes())) for p in paths]
    for group, items in catalogue(xrays["shared data, test"], args.quick).items():
        decisions["catalogue"][group] = [(name, decide(bundle, data)) for name, data in items]
    if args.out:
        args.out.write_text(json.dumps({"bundle": bundle.version, **decisions}, indent=1) + "\n")
    counted = {
        kind: {group: Counter(d for _, d in rows) for group, rows in groups.items()}
        for kind, groups in decisions.items()
    }
    print(f"bundle {bundle.version}, guard threshold {bundle.guard.threshold:.3f}\n")
    print("\n".join(table("Real chest X-rays", counted["xrays"], "target <= 1 %")))
    print("\n".join(table("Not chest X-rays", counted["catalogue"], "target >= 99 %")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
