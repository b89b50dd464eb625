"""The benchmarks still run (quick mode; no time is judged here: see docs/benchmarks.md)."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest

from pneumonia.model import save_checkpoint
from pneumonia.prepared import PreparedSplit, write_split
from tests.bundles import calibrated_model, make_bundle, real_images
from tests.conftest import REPO, copy_subset, require_data, run, tool_env

pytestmark = pytest.mark.slow
METRICS = {
    "threshold": 0.5,
    "accuracy": 0.9,
    "sensitivity": 0.95,
    "specificity": 0.8,
    "precision": 0.9,
    "f1": 0.9,
    "roc_auc": 0.9,
    "n": 10,
    "tp": 5,
    "fp": 1,
    "tn": 3,
    "fn": 1,
}


def test_training_step_benchmark_runs():
    require_data()  # it trains on the shared dataset
    result = run([sys.executable, "bench/train_step.py", "--quick"], REPO, tool_env())
    assert "| baseline: fp32, decode JPEGs every step |" in result.stdout
    assert "1.00x |" in result.stdout and "native bf16:" in result.stdout
    for row in ("data loader workers", "torch.compile of the fp32", "1 thread"):
        assert f"{row}" in result.stdout, row
    assert "GFLOP/s fp32 peak" in result.stdout and re.search(
        r"\| \d+% \| [\d.]+ \|$", result.stdout, re.M
    )
    fp32 = run(
        [sys.executable, "bench/train_step.py", "--quick", "--no-bf16", "--no-compile"],
        REPO,
        tool_env(),
    )
    variant_rows = [line for line in fp32.stdout.splitlines() if line.startswith("| ")]
    assert len(variant_rows) > 3 and not any("bf16" in line for line in variant_rows)
    peak = run([sys.executable, "-m", "bench.peak", "--sizes", "64"], REPO, tool_env())
    assert re.search(r"^\| 1 \| \d+ \| \d+% \|$", peak.stdout, re.M), peak.stdout
    assert "| 64 px |" in peak.stdout


def test_seed_study_runs_and_scores_each_choice_and_the_ensembles(tmp_path):
    data = copy_subset(tmp_path / "chest_xray", {"train": 12, "val": 4, "test": 4})
    out = tmp_path / "not-made-yet" / "seeds.json"
    command = [
        sys.executable,
        "bench/seeds.py",
        "--quick",
        "--data",
        str(data),
        "--seeds",
        "1",
        "2",
        "--precisions",
        "fp32",
        "bf16",
        "--jobs",
        "2",
        "--prepared",
        str(tmp_path / "prepared"),
        "--out",
        str(out),
    ]
    result = run(command, REPO, tool_env())
    header = "| precision | seeds | best_val_loss | last | last_flip | last_bn_target |"
    assert header in result.stdout
    study = json.loads(out.read_text())
    runs = study["runs"]
    assert sorted((r["precision"], r["seed"]) for r in runs) == [
        ("bf16", 1),
        ("bf16", 2),
        ("fp32", 1),
        ("fp32", 2),
    ]
    reported = {"accuracy", "sensitivity", "specificity", "roc_auc", "ece"}
    for r in runs:
        for choice in ("best_val_loss", "last", "last_flip", "last_bn_target"):
            assert 0.0 <= r["test"][choice]["accuracy"] <= 1.0
            assert set(r["test"][choice]) == reported
        assert len(r["logits"]["test_flip"]) == 8  # 4 test images per class
    ensembles = study["ensembles"]
    assert [(e["precision"], e["flip"], e["seeds"]) for e in ensembles] == [
        ("fp32", False, 2),
        ("fp32", True, 2),
        ("bf16", False, 2),
        ("bf16", True, 2),
    ]
    # the approaches' tables: validation figures from the runs' logits and the kept split
    summary = tmp_path / "summary.json"
    tables = [sys.executable, "bench/approaches_table.py", str(out.parent), "--json", str(summary)]
    shown = run([*tables, "--prepared", str(tmp_path / "prepared")], REPO, tool_env()).stdout
    assert "| seeds | last |" in shown and "| seeds | ensemble of 2 |" in shown
    approach = json.loads(summary.read_text())["seeds"]
    assert len(approach["runs"]) == 4 and "logits" not in approach["runs"][0]
    for r in approach["runs"]:
        assert 0.0 <= r["validation"]["roc_auc"] <= 1.0 and r["validation"]["nll"] > 0
    # an ensemble of one seed is that seed's model
    single = [*command[:5], "--seeds", "1", "--precisions", "fp32", "--out", str(out)]
    run(single, REPO, tool_env())
    one = json.loads(out.read_text())
    assert one["ensembles"][0]["test"] == pytest.approx(one["runs"][0]["test"]["last"], abs=1e-4)
    # --distill: then a student per seed, taught by the ensemble of the runs
    distill = [*command[:5], "--seeds", "1", "2", "--precisions", "fp32", "--distill"]
    shown = run([*distill, "--out", str(out)], REPO, tool_env()).stdout
    assert "Students distilled from the ensemble" in shown
    study = json.loads(out.read_text())
    assert [r["seed"] for r in study["students"]] == [101, 102]
    for student in study["students"]:
        assert set(student["test"]["last"]) == reported
        assert all(student["logits"]["test"] != r["logits"]["test"] for r in study["runs"])
    shown = run([*tables, "--prepared", str(tmp_path / "prepared")], REPO, tool_env()).stdout
    assert "| seeds: students | last |" in shown
    students = json.loads(summary.read_text())["seeds: students"]
    assert [r["seed"] for r in students["runs"]] == [101, 102] and students["ensembles"] == []
    # a backbone pre-trained without labels (SimCLR), then the seed study from it
    backbone = tmp_path / "ssl" / "backbone.pth"
    ssl = [sys.executable, "bench/ssl_pretrain.py", "--quick", "--out", str(backbone)]
    run([*ssl, "--prepared", str(tmp_path / "prepared")], REPO, tool_env())
    assert json.loads(backbone.with_suffix(".json").read_text())["epochs"] == 2
    from_ssl = [*single[:-2], "--weights", str(backbone), "--out", str(out)]
    run(from_ssl, REPO, tool_env())
    study = json.loads(out.read_text())
    assert study["train"]["weights"] == str(backbone)
    # the same seed from random init (`one`) trains another model
    assert study["runs"][0]["logits"]["test"] != one["runs"][0]["logits"]["test"]
    # --equalize: the same seed on histogram-equalised images trains another model
    run([*single[:-2], "--equalize", "--out", str(out)], REPO, tool_env())
    equalized = json.loads(out.read_text())
    assert equalized["equalize"] is True and one["equalize"] is False
    assert equalized["runs"][0]["logits"]["test"] != one["runs"][0]["logits"]["test"]
    # --ema: moving averages of the weights, scored from the same run, with validation figures
    run([*single[:-2], "--ema", "0.5", "0.9", "--out", str(out)], REPO, tool_env())
    averaged = json.loads(out.read_text())["runs"][0]
    assert set(averaged["test"]["ema_0.5"]) == set(averaged["test"]["ema_0.9"]) == reported
    assert averaged["logits"]["val_ema_0.5"] != averaged["logits"]["val_ema_0.9"]
    assert averaged["logits"]["test_ema_0.9"] != averaged["logits"]["test"]
    shown = run([*tables, "--prepared", str(tmp_path / "prepared")], REPO, tool_env()).stdout
    assert re.search(r"\| seeds \| ema_0\.9 \| [01]\.\d{4} \| \d+\.\d{4} \|", shown), shown
    assert set(json.loads(summary.read_text())["seeds"]["runs"][0]["validation_of"]) == {
        "ema_0.5",
        "ema_0.9",
    }


def write_prepared(folder, size: int, splits=("train", "test")) -> None:
    """Tiny prepared splits of real images, as the prepare stage writes them."""
    folder.mkdir()
    for split in splits:
        images = real_images(split, 4, size)
        names = [f"{split}{i}.jpeg" for i in range(len(images))]
        split_data = PreparedSplit(images, np.array([0] * 4 + [1] * 4), names, names)
        write_split(split_data, folder, split)


def test_inference_and_web_benchmarks_run(tmp_path):
    model = calibrated_model(64)
    save_checkpoint(model, tmp_path / "model.pt", 64, "none")
    bundle = make_bundle(model, 64, tmp_path / "bundle", METRICS)
    write_prepared(tmp_path / "prepared", 64)
    command = [
        sys.executable,
        "bench/inference.py",
        "--quick",
        "--model",
        str(tmp_path / "model.pt"),
        "--prepared",
        str(tmp_path / "prepared"),
    ]
    inference = run([*command, "--bundle", str(bundle)], REPO, tool_env())
    assert "| torch eager (fp32, 2 threads) |" in inference.stdout
    assert "| onnxruntime float (served), 1 thread (as served) |" in inference.stdout
    assert "| onnxruntime INT8, 1 thread (as served) |" in inference.stdout
    assert "GFLOP per image" in inference.stdout and "share of fp32 peak" in inference.stdout
    assert "| onnxruntime INT8 | " in inference.stdout  # its test accuracy
    profile = run(
        [sys.executable, "bench/request_profile.py", "--quick", "--bundle", str(bundle)],
        REPO,
        tool_env(),
    )
    assert "| onnxruntime call (1 thread) |" in profile.stdout and "| **sum** |" in profile.stdout
    web = run(
        [sys.executable, "bench/web.py", "--quick", "--bundle", str(bundle)], REPO, tool_env()
    )
    assert "(0 errors," in web.stdout and "| installed app (venv + app + model) |" in web.stdout
    assert "| 32 anonymous clients stalling 10.4 MiB bodies | 32 answered 401 within" in web.stdout
    memory = run(
        [sys.executable, "-m", "bench.upload_memory", "--quick", "--bundle", str(bundle)],
        REPO,
        tool_env(),
    )
    assert "refused: The image has 30000x30000 pixels" in memory.stdout
    assert "inflates to more than" in memory.stdout and "(bound 300 MB)" in memory.stdout


def test_pacs_benchmark_finds_every_result_in_orthanc(tmp_path):
    """bench.pacs with the real Orthanc and the packaged app: each row's studies all answered."""
    bundle = make_bundle(calibrated_model(64), 64, tmp_path / "bundle", METRICS, guard=True)
    command = [sys.executable, "-m", "bench.pacs", "--quick", "--bundle", str(bundle)]
    done = run(command, REPO, tool_env(BENCH_SIDE="512"))
    rows = re.findall(r"^\| ([^|]+) \| (\d+) \| (\d+) \| [\d.]+ \| [\d.]+ \|", done.stdout, re.M)
    assert len(rows) == 7, done.stdout
    assert all(int(n) == int(answered) == 4 for _, n, answered in rows), done.stdout
    assert "pull, a running `pacs_worker --poll 0.5`, 4 stored at once" in done.stdout


def test_quantization_benchmark_compares_the_operator_sets(tmp_path):
    model = calibrated_model(64)
    save_checkpoint(model, tmp_path / "model.pt", 64, "none")
    bundle = make_bundle(model, 64, tmp_path / "bundle", METRICS)
    write_prepared(tmp_path / "prepared", 64, ("train", "val", "test"))
    result = run(
        [sys.executable, "-m", "bench.quantization", "--quick", "--bundle", str(bundle)]
        + ["--model", str(tmp_path / "model.pt"), "--prepared", str(tmp_path / "prepared")],
        REPO,
        tool_env(),
    )
    rows = {}
    for line in result.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[0] != "model" and not cells[0].startswith("---"):
            rows[cells[0]] = int(cells[4])  # Quantize/DequantizeLinear nodes run
    before, now = rows["INT8, convolutions only (before)"], rows["INT8, the residual path (now)"]
    assert rows["float"] == 0 and 0 < now < before, rows
    assert "| INT8, the residual path (now) | test |" in result.stdout
    assert not list(REPO.glob("*profile*.json")), "profiler traces left in the repository"


def test_guard_benchmark_measures_both_rates(tmp_path):
    bundle = make_bundle(calibrated_model(64), 64, tmp_path / "bundle", METRICS, guard=True)
    out = tmp_path / "guard.json"
    command = [sys.executable, "-m", "bench.guard", "--quick", "--bundle", str(bundle)]
    result = run([*command, "--out", str(out)], REPO, tool_env())
    assert "**Real chest X-rays**" in result.stdout and "**Not chest X-rays**" in result.stdout
    decisions = json.loads(out.read_text())
    flat = dict(decisions["catalogue"]["synthetic: flat"])
    assert set(flat.values()) == {"uniform"}  # what the cheap check must catch, whatever model
    shipped = dict(decisions["catalogue"]["package images, as shipped"])
    assert shipped["skimage astronaut"] == "colour"
    assert {r for _, r in decisions["catalogue"]["real X-rays shrunk to 32 x 32"]} == {"too_small"}
    assert len(decisions["xrays"]["full-size originals (samples/)"]) == 6


def test_drift_benchmark_runs_the_apps_signals_over_simulated_days(tmp_path):
    bundle = make_bundle(calibrated_model(64), 64, tmp_path / "bundle", METRICS, reference=20)
    out = tmp_path / "drift.json"
    command = [sys.executable, "-m", "bench.drift", "--quick", "--bundle", str(bundle)]
    result = run([*command, "--out", str(out)], REPO, tool_env())
    assert "**False alarms**" in result.stdout and "**Detection delay**" in result.stdout
    found = json.loads(out.read_text())
    (run_,) = found["false_alarms"]
    assert run_["evaluations"] == 3 * 24 and run_["uploads"] > 0
    assert set(found["detection"]) == {
        "inverted",
        "low contrast",
        "brighter",
        "equalised",
        "blurred",
        "pneumonia ward",
    }
    pool = found["accuracy"]["in distribution"]
    assert 0 <= pool["real"] <= 1 and 0 <= pool["estimated"] <= 1
    assert found["accuracy"]["pneumonia ward"]["images"] < pool["images"]
    unguarded = tmp_path / "no-reference"
    make_bundle(calibrated_model(64), 64, unguarded, METRICS)
    refused = run(
        [sys.executable, "-m", "bench.drift", "--quick", "--bundle", str(unguarded)],
        REPO,
        tool_env(),
        check=False,
    )
    assert refused.returncode == 1 and "records no drift reference" in refused.stdout


def test_scaling_benchmark_measures_every_stage(tmp_path):
    require_data()
    out = tmp_path / "scaling.json"
    command = [sys.executable, "-m", "bench.scaling", "--quick", "--scales", "1", "2"]
    result = run([*command, "--out", str(out)], REPO, tool_env(), timeout=900)
    runs = json.loads(out.read_text())["runs"]
    assert [r["scale"] for r in runs] == [1, 2] and runs[1]["images"] == 2 * runs[0]["images"]
    for stage in ("prepare", "train", "evaluate", "export"):
        assert runs[0][stage]["seconds"] > 0 and runs[0][stage]["anon_mib"] > 0, stage
    assert "| 2x |" in result.stdout


def test_site_calibration_benchmark_compares_both_fits(tmp_path):
    model_path = tmp_path / "model.pt"
    save_checkpoint(calibrated_model(64), model_path, 64, "none")
    folder = tmp_path / "prepared"
    folder.mkdir()
    for split in ("val", "test"):
        images = real_images(split, 8, 64)
        names = [f"{split}-patient{i}.jpeg" for i in range(len(images))]
        labels = np.array([0] * 8 + [1] * 8)
        write_split(PreparedSplit(images, labels, names, names), folder, split)
    out = tmp_path / "site.json"
    command = [sys.executable, "-m", "bench.site_calibration", "--model", str(model_path)]
    command += ["--prepared", str(folder), "--splits", "6", "--out", str(out)]
    result = run(command, REPO, tool_env())
    assert "| validation |" in result.stdout and "| site |" in result.stdout
    results = json.loads(out.read_text())
    assert len(results["site"]) == len(results["validation"]) > 0
    assert set(results["site"][0]) == {"ece", "sensitivity", "specificity", "accuracy"}


def test_heatmap_benchmark_counts_peaks_outside_the_chest(tmp_path):
    from bench.heatmaps import peak_outside

    centre, corner = np.zeros((7, 7)), np.zeros((7, 7))
    centre[3, 3], corner[0, 0] = 1.0, 1.0
    assert not peak_outside(centre) and peak_outside(corner)
    bundle = make_bundle(calibrated_model(64), 64, tmp_path / "bundle", METRICS)
    write_prepared(tmp_path / "prepared", 64)
    command = [sys.executable, "-m", "bench.heatmaps", "--bundle", str(bundle)]
    result = run([*command, "--prepared", str(tmp_path / "prepared")], REPO, tool_env())
    assert "| all (8) |" in result.stdout and "| true PNEUMONIA (4) |" in result.stdout


def test_sign_in_throttle_benchmark_counts_guesses_and_lock_outs():
    """15 simulated minutes (one window): one address gets LOGIN_FAILURE_LIMIT guesses at a
    name, its owner's own browser is never locked out; the table is what docs/benchmarks.md
    shows."""
    result = run([sys.executable, "bench/login_throttle.py", "--minutes", "15"], REPO, tool_env())
    rows = {
        cells[0]: cells[1:]
        for line in result.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| Scenario")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert rows["one address guesses dr_ada, 1 try/s: dr_ada's own browser"] == ["5", "0 of 15"]
    assert rows["100 addresses guess dr_ada, 1 try/min each: her own browser"][1] == "0 of 15"
    assert rows["... dr_ada on a new browser at that address"][1] != "0 of 15"
    assert rows["... dr_bob on a new browser elsewhere"][1] == "0 of 15"
