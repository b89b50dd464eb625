"""The PR report's lines on training, on the served model and on the test split's reuse."""

from __future__ import annotations

import json
import subprocess

from pneumonia.report import behaviour_lines, served_model, split_reuse, training


def test_served_model_line_for_float_int8_and_no_bundle(tmp_path):
    assert served_model(tmp_path / "missing") is None
    (tmp_path / "model.onnx").write_bytes(b"\0" * 2**20)
    (tmp_path / "model.json").write_text(json.dumps({"version": "abc123"}))
    assert served_model(tmp_path) == (
        "Served model: float32 ONNX, 1.0 MiB, version `abc123`. No guard: it answers every "
        "image, whatever it shows."
    )
    quantization = {
        "test_accuracy": 0.9,
        "test_accuracy_float": 0.91,
        "test_decisions_changed": 3,
        "test_images": 316,
    }
    guard = {"refused": {"validation": 0.0064, "test": 0.0032}}
    calibration = {"fitted_on": "site (158 images)"}
    manifest = {"version": "abc123", "quantization": quantization, "guard": guard}
    (tmp_path / "model.json").write_text(json.dumps({**manifest, "calibration": calibration}))
    line = served_model(tmp_path)
    assert line.startswith("Served model: INT8 ONNX, 1.0 MiB")
    assert "test accuracy 0.9000 (trained model 0.9100), 3 of 316 test decisions" in line
    assert "Probabilities calibrated on site (158 images)." in line
    assert "Its guard refuses 0.6% of validation, 0.3% of test X-rays as not chest X-rays." in line
    # a bundle exported since the catalogue was measured says that rate too
    guard["refused"]["not_chest_xray"], guard["catalogue_images"] = 0.9938, 323
    (tmp_path / "model.json").write_text(json.dumps({**manifest, "guard": guard}))
    assert served_model(tmp_path).endswith(
        "Its guard refuses 0.6% of validation, 0.3% of test X-rays as not chest X-rays, and "
        "99.4% of a catalogue of 323 images that are not chest X-rays."
    )


def test_training_line_names_the_kept_epoch_and_reads_older_summaries(tmp_path):
    path = tmp_path / "train.json"
    assert training(path) is None
    summary = {"epochs_run": 8, "kept_epoch": 8, "best_epoch": 4, "train_seconds": 600}
    path.write_text(json.dumps(summary))
    assert training(path) == (
        "Training: kept epoch 8 of 8 (lowest validation loss: epoch 4), 10.0 min."
    )
    # a summary written before train.select (main's, say) kept its best epoch
    path.write_text(json.dumps({"epochs_run": 8, "best_epoch": 6, "train_seconds": 60}))
    assert training(path).startswith(
        "Training: kept epoch 6 of 8 (lowest validation loss: epoch 6)"
    )


def test_split_reuse_counts_the_champions_chosen_on_the_same_test_data(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    def champion(test_data, message):
        (tmp_path / "metrics").mkdir(exist_ok=True)
        record = {"test_data": test_data, "version": message}
        (tmp_path / "metrics/served.json").write_text(json.dumps(record))
        git("add", "-A")
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)

    git("init", "-q", "-b", "main")
    assert split_reuse("main", tmp_path).endswith("records no fingerprint of its test data.")
    champion("a" * 64, "first champion, on the old split")
    champion("b" * 64, "data changed: a new test split")
    champion("b" * 64, "second champion on it")
    (tmp_path / "README").write_text("docs\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "docs")
    line = split_reuse("main", tmp_path)
    assert line.startswith("Test split `bbbbbbbbbbbb`: 2 champion(s) on `main` were chosen")
    assert "failed the gate looked at it too" in line
    record = json.loads((tmp_path / "metrics/served.json").read_text())
    record["test_data"] = "c" * 64  # a challenger scored on new test cases
    (tmp_path / "metrics/served.json").write_text(json.dumps(record))
    assert "new, no champion on `main` was chosen on it" in split_reuse("main", tmp_path)


def test_behaviour_table_shows_each_check_against_its_limit():
    rules = {"behaviour": {"max_flip_rate": 0.05, "min_refused": 0.95, "max_easy_errors": 0.01}}
    flip = {
        "flipped": 3,
        "n": 40,
        "rate": 0.075,
        "mean_probability_change": 0.0123,
        "passed": False,
    }
    behaviour = {
        "invariance": {"rotated +5 degrees": flip},
        "directional": {"refused": 0.99, "n": 323, "passed": True, "guard": True},
        "easy": {"n": 200, "wrong": 1, "rate": 0.005, "passed": True},
    }
    lines = behaviour_lines(behaviour, rules)
    assert lines[0] == "### Behaviour of the served bundle"
    assert (
        "| invariance: rotated +5 degrees | 3 of 40 decisions flipped (7.5%; mean probability "
        "change 0.0123) | at most 5.0% | :x: |"
    ) in lines
    directional = (
        "| directional: non-X-rays refused by the guard | 99.0% of 323 refused | at least 95.0% "
        "| :white_check_mark: |"
    )
    assert directional in lines
    assert any(line.startswith("| minimum functionality") and "1 of 200" in line for line in lines)
    assert behaviour_lines(None, rules) == []
    no_guard = {"directional": {"refused": 0.0, "n": 0, "passed": False, "guard": False}}
    assert "| no guard |" in behaviour_lines(no_guard, rules)[4]
