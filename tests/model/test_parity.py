"""The exported bundle computes what the torch model computes, from the same file bytes."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from pneumonia.export import ParityError, export
from pneumonia.model import predict_logits
from pneumonia.serving import (
    WORKING_SIDE,
    Bundle,
    BundleError,
    class_activation_map,
    positive_probability,
    read_image,
    resize,
    sha256_file,
)
from tests.bundles import BUNDLE_METRICS, EXPORT_PARAMS, calibrated_model, make_bundle
from tests.bundles import real_images as _real_images
from tests.conftest import SAMPLES, require_data

SIZE = 64
PARAMS = EXPORT_PARAMS
METRICS = BUNDLE_METRICS


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return calibrated_model(SIZE)


@pytest.fixture(scope="module")
def bundle_dir(model, tmp_path_factory):
    return make_bundle(model, SIZE, tmp_path_factory.mktemp("bundle") / "bundle", METRICS)


def real_images(split: str, n: int) -> np.ndarray:
    return _real_images(split, n, SIZE)


def test_onnx_runtime_matches_torch_on_real_images(model, bundle_dir):
    images = real_images("test", 10)
    bundle = Bundle(bundle_dir)
    torch_prob = positive_probability(predict_logits(model, images))
    onnx_prob = bundle.probabilities(images)
    assert np.abs(torch_prob - onnx_prob).max() < 1e-4
    assert torch_prob.std() > 1e-3, "degenerate model: parity would prove nothing"
    logits, features = bundle.run(images)
    assert logits.shape == (20, 2) and features.shape == (20, 512, 2, 2)


def test_manifest_describes_the_bundle(bundle_dir):
    manifest = json.loads((bundle_dir / "model.json").read_text())
    assert manifest["onnx_sha256"] == sha256_file(bundle_dir / "model.onnx")
    assert manifest["labels"] == ["NORMAL", "PNEUMONIA"]
    assert manifest["input"]["size"] == SIZE and len(manifest["input"]["mean"]) == 3
    assert manifest["threshold"] == 0.42 and manifest["metrics"]["test"] == METRICS
    assert manifest["parity"]["logits"] < 1e-4 and manifest["parity"]["images"] == 8
    assert np.asarray(manifest["cam"]["head_weight"]).shape == (2, 512)
    assert manifest["data"]["md5"].endswith(".dir")
    assert len(manifest["git"]["commit"]) == 40


def test_serving_from_file_bytes_matches_training_preprocessing(model, bundle_dir):
    """Full-size originals as a clinician uploads them (grayscale and RGB, any size): ONNX
    Runtime from file bytes gives torch's probability on the same decoded image."""
    require_data()
    bundle = Bundle(bundle_dir)
    paths = sorted(SAMPLES.rglob("*.jpeg"))
    for path in paths:
        served = bundle.predict_bytes(path.read_bytes())
        decoded = read_image(path.read_bytes(), max_side=WORKING_SIDE)
        reference = positive_probability(predict_logits(model, resize(decoded, SIZE)[None]))[0]
        assert served.probability == pytest.approx(float(reference), abs=1e-4), path.name
        expected = "PNEUMONIA" if served.probability >= 0.42 else "NORMAL"
        assert served.label == expected and served.threshold == 0.42
        cam = served.heat_map((SIZE, SIZE))
        assert cam.shape == (SIZE, SIZE) and 0 <= cam.min() <= cam.max() <= 1


def test_reduced_scale_decoding_changes_the_model_input_by_less_than_a_grey_level():
    """Large JPEG uploads are decoded at 1/2-1/8 scale (bounded memory); what the model sees
    at 224 px stays what a full decode gives, within rounding."""
    require_data()
    reduced = 0
    for path in sorted(SAMPLES.rglob("*.jpeg")):
        data = path.read_bytes()
        full, fast = read_image(data), read_image(data, max_side=WORKING_SIDE)
        reduced += fast.size != full.size
        difference = np.abs(resize(full, 224).astype(int) - resize(fast, 224).astype(int))
        assert difference.mean() < 1.0 and np.percentile(difference, 99) <= 3, path.name
    assert reduced > 0, "some samples are large enough to be decoded at reduced scale"


def test_class_activation_map_is_the_head_weighted_feature_sum():
    features = np.zeros((3, 2, 2), np.float32)
    features[0, 0, 0], features[1, 1, 1], features[2, 0, 1] = 4.0, 2.0, 5.0
    weight = np.array([0.5, 1.0, -1.0], np.float32)
    cam = class_activation_map(features, weight, size=2)
    # 0.5*4 = 2 at (0,0), 1*2 = 2 at (1,1), -5 -> 0 at (0,1); scaled by the peak (2).
    np.testing.assert_allclose(cam, [[1.0, 0.0], [0.0, 1.0]], atol=1e-6)


def test_tampered_bundle_is_refused(bundle_dir, tmp_path):
    copy = tmp_path / "bundle"
    copy.mkdir()
    (copy / "model.json").write_bytes((bundle_dir / "model.json").read_bytes())
    (copy / "model.onnx").write_bytes((bundle_dir / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(BundleError, match="sha256"):
        Bundle(copy)
    with pytest.raises(BundleError, match="missing"):
        Bundle(tmp_path / "nowhere")


def test_parity_failure_writes_no_bundle(model, tmp_path):
    strict = replace(PARAMS, parity_tolerance=-1.0)  # nothing passes
    out = tmp_path / "bundle"
    with pytest.raises(ParityError, match="not exporting"):
        export(model, SIZE, real_images("test", 2), METRICS, METRICS, strict, "none", out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_per_image_standardisation_is_exported_inside_the_graph(tmp_path):
    """train.input_norm=per_image lives in the network, so ONNX Runtime with the unchanged
    serving preprocessing still computes what torch computes, and ignores exposure changes."""
    model = calibrated_model(SIZE, "per_image")
    bundle = Bundle(make_bundle(model, SIZE, tmp_path / "b", METRICS))
    images = real_images("test", 6)
    expected = positive_probability(predict_logits(model, images))
    assert np.abs(bundle.probabilities(images) - expected).max() < 1e-4
    darker = (images.astype(np.float32) * 0.7 + 20).round().astype(np.uint8)
    assert np.abs(bundle.probabilities(darker) - bundle.probabilities(images)).max() < 0.02
