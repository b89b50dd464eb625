"""The app's own preprocessing and inference agree with the training code."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diagnosis.inference import ServedModel, get_model, read_upload
from pneumonia.data import load_image
from pneumonia.model import predict_logits
from pneumonia.serving import (
    Bundle,
    InvalidImage,
    class_activation_map,
    positive_probability,
    resize,
)
from tests.hostile_files import dicom

SIZE = 64


def test_app_probabilities_equal_the_training_code_on_real_samples(
    torch_model, bundle_dir, samples
):
    """The parity the issue asks for: full-size uploads, app path vs torch path, within 1e-3."""
    served = ServedModel(bundle_dir)
    app, train = [], []
    for path in samples:
        app.append(served.predict(read_upload(path.read_bytes())).probability)
        gray = resize(load_image(path), SIZE)[None]
        train.append(float(positive_probability(predict_logits(torch_model, gray))[0]))
    assert len(app) == len(samples) >= 40
    assert np.abs(np.array(app) - np.array(train)).max() < 1e-3
    assert np.std(app) > 1e-3  # a constant model would make the comparison empty


def test_the_app_serves_with_the_pipelines_serving_module(bundle_dir, tmp_path):
    """One source: the app imports pneumonia.serving, here from src/ and in the slug from the
    copy that pneumonia.package puts there, byte for byte the same file."""
    from diagnosis import inference
    from pneumonia import package, serving

    assert inference.serving is serving and inference.ServedModel.__mro__[1] is serving.Bundle
    package.package_app(package.APP_DIR, bundle_dir, tmp_path / "slug")
    shipped = tmp_path / "slug" / "pneumonia" / "serving.py"
    assert shipped.read_bytes() == Path(serving.__file__).read_bytes()
    assert not (tmp_path / "slug" / "pneumonia" / "train.py").exists()


def test_prediction_carries_label_threshold_and_images(samples):
    result = get_model().predict_image(read_upload(samples[0].read_bytes()))
    assert result.label in ("NORMAL", "PNEUMONIA") and result.threshold == 0.5
    assert (result.label == "PNEUMONIA") == (result.probability >= 0.5)
    original = Image.open(io.BytesIO(result.original_png))
    heatmap = Image.open(io.BytesIO(result.heatmap_jpeg))
    assert original.format == "PNG" and original.mode == "L" and max(original.size) <= 512
    assert heatmap.format == "JPEG" and heatmap.mode == "RGB" and heatmap.size == original.size


def test_overlay_tables_match_the_colour_ramp_formula():
    """The per-pixel lookup gives what the float formula gives, within rounding."""
    from diagnosis.inference import _RAMP, overlay

    cam = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (8, 1))
    gray = Image.fromarray(np.full((8, 64), 120, np.uint8))
    position = cam * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    frac = (position - low)[..., None]
    colour = _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac
    alpha = (0.15 + 0.5 * cam)[..., None]
    expected = 120 * (1 - alpha) + colour * alpha
    got = np.asarray(overlay(gray, cam), np.float32)
    assert np.abs(got - expected).max() <= 3.0
    assert got[0, 0].sum() < got[0, -1].sum(), "more evidence is brighter"


def test_activation_map_peaks_where_the_evidence_is():
    features = np.zeros((2, 4, 4), np.float32)
    features[0, 3, 0] = 5.0  # evidence at the bottom-left
    cam = class_activation_map(features, np.array([1.0, 0.0], np.float32), (40, 40))
    assert cam.shape == (40, 40) and cam.max() == pytest.approx(1.0, abs=0.05)
    row, col = np.unravel_index(np.argmax(cam), cam.shape)
    assert row >= 30 and col <= 10


def dicom_bytes(pixels: np.ndarray, photometric: str, window: tuple[int, int] | None = None):
    rows, cols = pixels.shape
    extra = {"WindowCenter": window[0], "WindowWidth": window[1]} if window else {}
    return dicom(rows, cols, pixels.astype(np.uint16).tobytes(), photometric=photometric, **extra)


def test_dicom_monochrome2_and_monochrome1_read_the_same_picture(samples):
    gray = np.asarray(Image.open(samples[0]).convert("L"), np.float64)
    twelve_bit = np.round(gray / 255 * 4095)
    mono2 = np.asarray(read_upload(dicom_bytes(twelve_bit, "MONOCHROME2")), np.float64)
    mono1 = np.asarray(read_upload(dicom_bytes(4095 - twelve_bit, "MONOCHROME1")), np.float64)
    assert np.abs(mono2 - mono1).max() <= 1  # MONOCHROME1 is inverted back
    assert np.abs(mono2 - gray).mean() < 2  # and both are the original picture


def test_dicom_window_is_applied():
    ramp = np.tile(np.linspace(0, 4095, 256), (64, 1))
    windowed = np.asarray(read_upload(dicom_bytes(ramp, "MONOCHROME2", window=(2048, 1024))))
    # Below the window (< 1536) is black, above (> 2560) white.
    assert windowed[:, :80].max() == 0 and windowed[:, 180:].min() == 255


def test_damaged_dicom_is_refused_politely():
    data = dicom_bytes(np.zeros((64, 64)), "MONOCHROME2")
    with pytest.raises(InvalidImage, match="DICOM file could not be read"):
        read_upload(data[: len(data) // 2])


def test_the_bundles_calibration_is_applied(torch_model, tmp_path, samples):
    """model.json's calibration turns logits into calibrated probabilities, in the app and in
    the pipeline's serving code alike."""
    from diagnosis.tests.conftest import METRICS
    from pneumonia.evaluate import calibrated_probability
    from tests.bundles import make_bundle

    calibration = {"calibration": "platt", "calibration_scale": 0.4, "calibration_bias": 1.5}
    bundle = make_bundle(torch_model, SIZE, tmp_path / "b", {**METRICS, **calibration})
    served, plain = ServedModel(bundle), get_model()
    assert (served.scale, served.bias) == (0.4, 1.5) and (plain.scale, plain.bias) == (1.0, 0.0)
    for path in samples[:6]:
        gray = read_upload(path.read_bytes())
        logits = predict_logits(torch_model, resize(load_image(path), SIZE)[None])
        expected = float(calibrated_probability(logits, 0.4, 1.5)[0])
        assert served.predict(gray).probability == pytest.approx(expected, abs=1e-3)
        assert Bundle(bundle).predict_bytes(path.read_bytes()).probability == pytest.approx(
            served.predict(gray).probability, abs=1e-6
        )
        uncalibrated = float(positive_probability(logits)[0])
        assert abs(expected - uncalibrated) > 0.05  # the calibration really changes the answer
    manifest = Bundle(bundle).manifest["calibration"]
    assert manifest["method"] == "platt" and manifest["fitted_on"] == "validation"


def test_an_int8_bundle_is_served_like_the_float_one(bundle_dir, tmp_path, samples, client):
    """export.quantize: int8 (the default) ships a QDQ model: the app runs it unchanged, agrees
    with the pipeline's serving code on it, and its model card says what is served."""
    from pneumonia.quantize import quantize_bundle
    from tests.bundles import real_images

    int8 = tmp_path / "int8"
    quantize_bundle(bundle_dir, int8, real_images("train", 8, SIZE))
    served, pipeline, float_model = ServedModel(int8), Bundle(int8), ServedModel(bundle_dir)
    changed = []
    for path in samples[:8]:
        gray = read_upload(path.read_bytes())
        ours = served.predict(gray).probability
        assert ours == pytest.approx(
            pipeline.predict_bytes(path.read_bytes()).probability, abs=1e-6
        )
        changed.append(abs(ours - float_model.predict(gray).probability))
    assert 0 < max(changed) < 0.2, "quantised, yet close to the float model"
    result = served.predict_image(read_upload(samples[0].read_bytes()))
    assert Image.open(io.BytesIO(result.heatmap_jpeg)).mode == "RGB"
    from django.conf import settings

    from diagnosis import inference

    settings.MODEL_DIR = int8
    inference.reset()
    page = client.get("/model").content.decode()
    assert "INT8 (quantised convolutions)" in page and served.sha256 in page


def test_warm_up_loads_and_runs_the_model_or_logs_why_not(settings, tmp_path, caplog):
    from diagnosis import inference

    calls = []
    inference.warm_up()
    model = inference.get_model()
    run = model.session.run
    model.session = type("Counting", (), {"run": lambda s, *a: calls.append(1) or run(*a)})()
    inference.warm_up()  # the loaded model answers a blank image once more
    assert calls == [1]
    settings.MODEL_DIR = tmp_path / "missing"
    inference.reset()
    inference.warm_up()  # does not raise: /health reports the missing model
    assert "model not loaded" in caplog.text and "model.json is missing" in caplog.text


def test_serving_writes_nothing_under_home(bundle_dir, tmp_path, samples):
    """A worker (xrayweb.startup first, as both entry points do) leaves its home empty:
    onnxruntime's telemetry id and event store are not written anywhere."""
    import subprocess
    import sys

    code = (
        "import sys, xrayweb.startup; from pneumonia.serving import Bundle; "
        "print(Bundle(sys.argv[1]).predict_bytes(open(sys.argv[2], 'rb').read()).label)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(bundle_dir), str(samples[0])],
        cwd=Path(__file__).resolve().parents[2],  # django_app/, as gunicorn runs it
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("NORMAL", "PNEUMONIA")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == []
