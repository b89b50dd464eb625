"""The "is this a chest X-ray?" guard: fitted by the export stage, applied by the bundle."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from pneumonia.catalogue import not_chest_xrays, refused_share
from pneumonia.export import fit_guard, jpeg_files
from pneumonia.serving import Bundle, Guard, NotAChestXray, read_image
from tests.bundles import EXPORT_PARAMS, calibrated_model, make_bundle, real_images
from tests.conftest import DATASET, require_data

SIZE = 64
PARAMS = replace(EXPORT_PARAMS.guard, components=4)


def gaussian(n: int, seed: int, dims: int = 16) -> np.ndarray:
    """Features of a known distribution: unit variance in 4 directions, 0.01 elsewhere."""
    rng = np.random.default_rng(seed)
    scale = np.r_[np.ones(4), np.full(dims - 4, 0.1)]
    return rng.normal(size=(n, dims)) * scale + 3.0


def test_fit_guard_learns_the_distribution_and_sets_the_threshold_on_validation():
    section = fit_guard(gaussian(4000, 0), gaussian(1000, 1), PARAMS)
    guard = Guard.from_manifest(section)
    assert np.allclose(guard.mean, 3.0, atol=0.05)
    assert np.allclose(sorted(guard.variances), 1.0, atol=0.1)  # the 4 wide directions
    assert guard.residual_variance == pytest.approx(0.01, rel=0.1)
    fresh = guard.distance(gaussian(1000, 2))
    assert np.mean(fresh) == pytest.approx(1.0, abs=0.1)  # per dimension: ~1 in distribution
    assert np.mean(fresh > guard.threshold) < 0.02  # quantile 0.995 of validation
    assert section["threshold"] == pytest.approx(
        np.quantile(guard.distance(gaussian(1000, 1)), 0.995)
    )
    # a point off the thin directions by 1 (10 of their standard deviations) is far out
    off = gaussian(1, 3)
    off[0, 10] += 1.0
    assert guard.distance(off)[0] > guard.threshold
    assert section["fitted_on"] == {
        "train_images": 4000,
        "validation_images": 1000,
        "validation_quantile": PARAMS.quantile,
    }


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    out = tmp_path_factory.mktemp("guarded") / "bundle"
    metrics = {"threshold": 0.5, "accuracy": 0.9, "sensitivity": 0.9, "specificity": 0.9}
    return Bundle(make_bundle(calibrated_model(SIZE, "per_image"), SIZE, out, metrics, guard=True))


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_the_bundle_carries_its_guard_and_what_it_refuses(guarded):
    manifest = json.loads((guarded.onnx_path.parent / "model.json").read_text())
    section = manifest["guard"]
    assert section["fitted_on"]["train_images"] == 80
    assert len(section["mean"]) == 512
    assert len(section["components"]) == EXPORT_PARAMS.guard.components
    refused = section["refused"]
    assert refused["validation"] <= 1 / 16  # the 0.995 quantile of 16 images: at most one
    assert refused["test"] is None  # make_bundle gives export no test split


def test_export_measures_the_guard_on_the_catalogue_of_other_images(guarded):
    section = json.loads((guarded.onnx_path.parent / "model.json").read_text())["guard"]
    # the catalogue's damaged and tiny X-ray copies come from the validation images export had
    groups = not_chest_xrays(jpeg_files(real_images("val", 8, SIZE), "validation image"))
    assert len(groups["real X-rays shrunk to 32 x 32"]) == 16
    share, count = refused_share(guarded, groups)
    assert section["catalogue_images"] == count > 250
    assert section["refused"]["not_chest_xray"] == share
    # whatever the model, the cheap checks refuse flat images and 32 x 32 copies, and damaged
    # files are unreadable: a share below theirs would mean the measure skipped inputs
    sure = ("synthetic: flat", "real X-rays shrunk to 32 x 32")
    sure += ("X-ray JPEGs that lost their second half",)
    assert share >= sum(len(groups[g]) for g in sure) / count


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("uniform grey", "uniform"),
        ("all black", "uniform"),
        ("colour photograph", "colour"),
        ("32 x 32 X-ray", "too_small"),
    ],
)
def test_cheap_checks_refuse_without_a_probability(guarded, name, reason):
    require_data()
    xray = Image.open(sorted((DATASET / "test" / "NORMAL").iterdir())[0]).convert("L")
    rng = np.random.default_rng(0)
    images = {
        "uniform grey": Image.new("L", (600, 500), 128),
        "all black": Image.new("L", (600, 500), 0),
        "colour photograph": Image.fromarray(
            (rng.random((300, 400, 3)) * [255, 120, 40]).astype(np.uint8)
        ),
        "32 x 32 X-ray": xray.resize((32, 32)),
    }
    with pytest.raises(NotAChestXray, match="does not look like a chest X-ray") as caught:
        guarded.predict_bytes(encoded(images[name]))
    assert caught.value.reason == reason


def test_real_xrays_pass_and_a_feature_outlier_is_refused(guarded):
    require_data()
    answered = 0
    for path in sorted((DATASET / "test" / "PNEUMONIA").iterdir())[:8]:
        try:
            guarded.predict_bytes(path.read_bytes())
            answered += 1
        except NotAChestXray:
            pass
    assert answered >= 7  # the threshold is the validation images' 0.995 quantile
    # The same bundle with a threshold below every distance refuses by the features.
    strict = Bundle.from_parts(
        guarded.onnx_path,
        {**guarded.manifest, "guard": {**guarded.manifest["guard"], "threshold": 0.0}},
    )
    image = read_image(sorted((DATASET / "test" / "PNEUMONIA").iterdir())[0].read_bytes())
    with pytest.raises(NotAChestXray) as caught:
        strict.predict(image)
    assert caught.value.reason == "unlike_training"


def test_a_bundle_without_a_guard_answers_everything(tmp_path):
    metrics = {"threshold": 0.5, "accuracy": 0.9, "sensitivity": 0.9, "specificity": 0.9}
    bundle = Bundle(make_bundle(calibrated_model(SIZE), SIZE, tmp_path / "b", metrics))
    assert bundle.guard is None
    assert 0 <= bundle.predict(Image.new("L", (600, 500), 128)).probability <= 1


def test_contrast_of_the_prepared_images_is_what_the_cheap_check_sees():
    images = real_images("test", 4, SIZE)
    assert (images.reshape(8, -1).std(axis=1) / 255 > EXPORT_PARAMS.guard.min_contrast).all()
