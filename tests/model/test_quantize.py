"""The INT8 bundle: built from real images, loadable as it is served, close to the float model,
and never half-written."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from pneumonia.config import LABELS
from pneumonia.export import export
from pneumonia.params import ExportParams
from pneumonia.prepared import PreparedSplit
from pneumonia.quantize import (
    QUANTIZED_OPS,
    QuantizeError,
    calibration_sample,
    main,
    quantize_bundle,
    standardisation_nodes,
)
from pneumonia.serving import Bundle
from tests.bundles import (
    BUNDLE_METRICS,
    EXPORT_PARAMS,
    calibrated_model,
    make_bundle,
    real_images,
)

SIZE = 64
METRICS = BUNDLE_METRICS


@pytest.fixture(scope="module")
def float_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("float") / "bundle"
    return make_bundle(calibrated_model(SIZE, "per_image"), SIZE, out, METRICS)


@pytest.fixture(scope="module")
def int8_bundle(float_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "bundle"
    quantize_bundle(float_bundle, out, real_images("train", 16, SIZE))
    return out


def test_int8_bundle_loads_and_is_smaller(float_bundle, int8_bundle):
    manifest = json.loads((int8_bundle / "model.json").read_text())
    original = json.loads((float_bundle / "model.json").read_text())
    assert manifest["quantization"]["calibration_images"] == 32
    assert manifest["quantization"]["float_onnx_sha256"] == original["onnx_sha256"]
    assert manifest["onnx_sha256"] != original["onnx_sha256"]
    assert manifest["version"] == manifest["onnx_sha256"][:12]
    new = ("quantization", "onnx_sha256", "version")
    assert {k: v for k, v in manifest.items() if k not in new} == {
        k: v for k, v in original.items() if k not in new
    }, "labels, input, threshold and calibration must stay those of the float model"
    size_int8 = (int8_bundle / "model.onnx").stat().st_size
    assert size_int8 < 0.35 * (float_bundle / "model.onnx").stat().st_size
    Bundle(int8_bundle)  # checks the sha256


def test_int8_outputs_follow_the_float_model_on_unseen_images(float_bundle, int8_bundle):
    images = real_images("test", 10, SIZE)  # not the calibration images
    float_logits, float_features = Bundle(float_bundle).run(images)
    int8_logits, int8_features = Bundle(int8_bundle).run(images)
    assert int8_features.shape == float_features.shape
    margin = lambda logits: logits[:, 1] - logits[:, 0]  # noqa: E731
    assert margin(float_logits).std() > 1e-3, "degenerate model: the comparison proves nothing"
    assert np.corrcoef(margin(float_logits), margin(int8_logits))[0, 1] > 0.95
    assert not np.array_equal(float_logits, int8_logits), "the INT8 model must differ: quantised"


def test_int8_graph_quantises_the_residual_path_and_keeps_the_standardisation_float(
    int8_bundle,
):
    import onnx

    graph = onnx.load(int8_bundle / "model.onnx").graph
    dequantized = {out for n in graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    standardisation = set(standardisation_nodes(graph))
    float_ops = {n.op_type for n in graph.node if n.name in standardisation}
    assert {"ReduceMean", "Sqrt", "Div"} <= float_ops, "the standardisation was not found"
    for node in graph.node:
        if node.name in standardisation:
            assert not set(node.input) & dequantized, f"{node.name} of the standardisation is INT8"
    path = [n for n in graph.node if n.op_type in QUANTIZED_OPS and n.name not in standardisation]
    # The quantiser folds a ReLU that follows a convolution into its output range.
    assert {"Conv", "Add", "MaxPool"} <= {n.op_type for n in path}
    assert sum(n.op_type == "Add" for n in path) == 8, "ResNet18 has 8 residual additions"
    for node in path:
        activations = [i for i in node.input[: 1 if node.op_type == "Conv" else None] if i]
        assert set(activations) <= dequantized, f"{node.op_type} {node.name} runs in float"


def test_calibration_sample_takes_both_classes_reproducibly():
    labels = np.array([0] * 30 + [1] * 70)
    images = np.arange(100, dtype=np.uint8)[:, None, None].repeat(4, 1).repeat(4, 2)
    sample = calibration_sample(images, labels, 20)
    assert len(sample) == 20
    assert (sample[:, 0, 0] < 30).sum() == 10, "half of the sample from each class"
    assert np.array_equal(sample, calibration_sample(images, labels, 20))
    with pytest.raises(QuantizeError, match="empty"):
        calibration_sample(images[:0], labels[:0], 20)


def test_wrong_calibration_size_fails_and_leaves_the_old_output(float_bundle, tmp_path):
    out = tmp_path / "bundle-int8"
    out.mkdir()
    (out / "keep.txt").write_text("previous bundle")
    with pytest.raises(QuantizeError, match=f"N x {SIZE} x {SIZE}"):
        quantize_bundle(float_bundle, out, real_images("train", 2, SIZE * 2))
    assert (out / "keep.txt").read_text() == "previous bundle"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle-int8"], "no temporary folder left"


def test_command_without_prepared_data_says_what_to_run(
    float_bundle, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr("pneumonia.config.PREPARED_DIR", tmp_path / "nothing")
    assert main(["--bundle", str(float_bundle), "--out", str(tmp_path / "out")]) == 1
    assert "dvc repro prepare" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _split(n: int) -> PreparedSplit:
    images = real_images("test", n, SIZE)
    labels = np.array([LABELS.index("NORMAL")] * n + [LABELS.index("PNEUMONIA")] * n)
    names = [f"img{i}.jpeg" for i in range(2 * n)]
    return PreparedSplit(images=images, labels=labels, files=names, patients=names)


def _int8_params(max_drop: float) -> ExportParams:
    return replace(EXPORT_PARAMS, quantize="int8", max_accuracy_drop=max_drop)


def test_export_serves_int8_and_records_its_test_accuracy(tmp_path):
    model = calibrated_model(SIZE, "per_image")
    test = _split(8)
    metrics = {**METRICS, "accuracy": 0.75}
    out = tmp_path / "bundle"
    manifest, probability = export(
        model,
        SIZE,
        test.images[:4],
        metrics,
        metrics,
        _int8_params(1.0),
        "none",
        out,
        calibration=real_images("train", 8, SIZE),
        test_split=test,
    )
    quantized = manifest["quantization"]
    bundle = Bundle(out)
    predicted = bundle.probabilities(test.images) >= bundle.threshold
    expected = float(np.mean(predicted == (test.labels == bundle.positive)))
    assert quantized["test_accuracy"] == pytest.approx(expected, abs=1e-6)
    assert quantized["test_accuracy_float"] == 0.75
    assert quantized["test_accuracy_drop"] == pytest.approx(0.75 - expected, abs=1e-6)
    assert quantized["test_images"] == 16 and quantized["calibration_images"] == 16
    assert np.array_equal(probability, bundle.probabilities(test.images)), "the served model's"
    assert manifest["parity"]["logits"] <= 1e-4, "the float graph was checked before quantising"
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx"]
    assert (out / "model.onnx").stat().st_size < 0.35 * 4 * 11.2e6  # ResNet18: 11.2M weights


def test_export_refuses_an_int8_model_that_loses_accuracy(tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "model.json").write_text("the deployed bundle")
    metrics = {**METRICS, "accuracy": 1.0}  # no INT8 model of this net reaches it
    with pytest.raises(QuantizeError, match="export.quantize: none"):
        export(
            calibrated_model(SIZE, "per_image"),
            SIZE,
            real_images("test", 2, SIZE),
            metrics,
            metrics,
            _int8_params(0.005),
            "none",
            out,
            calibration=real_images("train", 4, SIZE),
            test_split=_split(8),
        )
    assert [p.name for p in out.iterdir()] == ["model.json"]
    assert (out / "model.json").read_text() == "the deployed bundle"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"], "no staging folder left"
