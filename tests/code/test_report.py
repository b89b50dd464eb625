"""The PR report's line on the served model."""

from __future__ import annotations

import json

from pneumonia.report import served_model


def test_served_model_line_for_float_int8_and_no_bundle(tmp_path):
    assert served_model(tmp_path / "missing") is None
    (tmp_path / "model.onnx").write_bytes(b"\0" * 2**20)
    (tmp_path / "model.json").write_text(json.dumps({"version": "abc123"}))
    assert served_model(tmp_path) == "Served model: float32 ONNX, 1.0 MiB, version `abc123`."
    quantization = {"test_accuracy": 0.9, "test_accuracy_float": 0.91,
                    "test_decisions_changed": 3, "test_images": 316}  # fmt: skip
    (tmp_path / "model.json").write_text(
        json.dumps({"version": "abc123", "quantization": quantization})
    )
    line = served_model(tmp_path)
    assert line.startswith("Served model: INT8 ONNX, 1.0 MiB")
    assert "test accuracy 0.9000 (trained model 0.9100), 3 of 316 test decisions" in line
