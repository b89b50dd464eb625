"""`dvc repro` end to end on a small real subset, tracked in a real MLflow server."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from pneumonia.data import load_image
from pneumonia.serving import Bundle, resize, sha256_file
from tests.conftest import SAMPLES, TINY_PARAMS, copy_subset, make_repo, run, tool_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repro(tmp_path_factory, mlflow_server):
    work = tmp_path_factory.mktemp("e2e")
    dataset = copy_subset(work / "chest_xray", {"train": 24, "val": 4, "test": 8})
    repo = make_repo(work / "repo", dataset, TINY_PARAMS)
    env = tool_env(
        MLFLOW_TRACKING_URI=mlflow_server, RETRAIN_TRIGGER="e2e-test", RETRAIN_REASON="new scanner"
    )
    result = run(["dvc", "repro"], repo, env)
    return repo, env, result


def test_every_stage_leaves_its_outputs(repro):
    repo, _, result = repro
    for stage in ("prepare", "train", "evaluate", "export"):
        assert f"Running stage '{stage}'" in result.stdout
    for path in (
        "data/prepared/train.npz",
        "data/prepared/train_images.npy",
        "data/prepared/val.npz",
        "data/prepared/val_images.npy",
        "data/prepared/test.npz",
        "data/prepared/test_images.npy",
        "models/model.pt",
        "models/mlflow_run.json",
        "models/bundle/model.onnx",
        "models/bundle/model.json",
        "metrics/data.json",
        "metrics/train.json",
        "metrics/train_history.csv",
        "metrics/val.json",
        "metrics/test.json",
        "metrics/plots/roc.csv",
        "metrics/plots/pr.csv",
        "metrics/plots/confusion.csv",
        "metrics/figures/roc.png",
        "metrics/figures/pr.png",
        "metrics/figures/confusion.png",
        "metrics/test_errors.csv",
        "metrics/served.json",
        "metrics/served_test.csv",
        "dvc.lock",
    ):
        assert (repo / path).is_file(), path
    assert (repo / "metrics/figures/roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_are_sane(repro):
    repo = repro[0]
    test = json.loads((repo / "metrics/test.json").read_text())
    val = json.loads((repo / "metrics/val.json").read_text())
    assert test["n"] == 16 and test["tp"] + test["fp"] + test["tn"] + test["fn"] == 16
    for key in ("accuracy", "precision", "sensitivity", "specificity", "f1", "roc_auc"):
        assert 0.0 <= test[key] <= 1.0, key
    assert test["threshold"] == val["threshold"]  # chosen on validation, applied to test
    assert val["sensitivity"] >= 0.95  # the min_sensitivity rule holds where it was fitted
    with open(repo / "metrics/plots/confusion.csv") as f:
        assert sum(1 for _ in csv.DictReader(f)) == 16
    data = json.loads((repo / "metrics/data.json").read_text())
    assert data["counts"]["test"] == {"NORMAL": 8, "PNEUMONIA": 8} and data["rejected_count"] == 0


def test_bundle_is_consistent_with_the_repo(repro):
    repo = repro[0]
    manifest = json.loads((repo / "models/bundle/model.json").read_text())
    assert manifest["onnx_sha256"] == sha256_file(repo / "models/bundle/model.onnx")
    dvc_out = yaml.safe_load((repo / "chest_xray.dvc").read_text())["outs"][0]
    assert manifest["data"]["md5"] == dvc_out["md5"]
    head = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    assert manifest["git"]["commit"] == head
    assert (
        manifest["threshold"] == json.loads((repo / "metrics/test.json").read_text())["threshold"]
    )
    quantized = manifest["quantization"]  # the default: the served model is INT8
    assert quantized["calibration_images"] == 16 and quantized["test_images"] == 16
    assert quantized["float_onnx_sha256"] != manifest["onnx_sha256"]
    assert manifest["version"] == manifest["onnx_sha256"][:12]
    assert 0 <= quantized["test_accuracy"] <= 1
    guard = manifest["guard"]  # fitted on this tiny model; how good it is: bench/guard.py
    val_counts = json.loads((repo / "metrics/data.json").read_text())["counts"]["val"]
    assert guard["fitted_on"]["validation_images"] == sum(val_counts.values())
    assert set(guard["refused"]) == {"validation", "test", "not_chest_xray"}
    assert guard["catalogue_images"] > 250 and 0 < guard["refused"]["not_chest_xray"] <= 1
    assert Bundle(repo / "models/bundle").guard is not None
    # The model behind the guard answers a full-size original (a 1-epoch model's guard,
    # fitted on a few images, may refuse it, as it should refuse what it does not know).
    unguarded = {k: v for k, v in manifest.items() if k != "guard"}
    bundle = Bundle.from_parts(repo / "models/bundle/model.onnx", unguarded)
    prediction = bundle.predict_bytes(sorted(SAMPLES.rglob("*.jpeg"))[0].read_bytes())
    assert prediction.label in ("NORMAL", "PNEUMONIA") and 0 <= prediction.probability <= 1


def test_the_served_record_is_the_bundle_on_every_test_image(repro):
    """metrics/served.json and served_test.csv (what the gate compares) say what the bundle
    answers: its identity, and its probability for each test image as served."""
    repo = repro[0]
    manifest = json.loads((repo / "models/bundle/model.json").read_text())
    record = json.loads((repo / "metrics/served.json").read_text())
    assert record["model"]["onnx_sha256"] == manifest["onnx_sha256"]
    assert record["model"]["precision"] == "int8" and record["version"] == manifest["version"]
    assert record["model"]["threshold"] == manifest["threshold"]
    data = json.loads((repo / "metrics/data.json").read_text())
    assert record["test_data"] == data["fingerprints"]["test"]
    with open(repo / "metrics/served_test.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == record["test"]["n"] == 16
    bundle = Bundle(repo / "models/bundle")
    images = np.stack(
        [resize(load_image(repo / "data/chest_xray" / row["file"]), bundle.size) for row in table]
    )
    served = bundle.probabilities(images)
    assert np.abs(served - np.array([float(r["probability"]) for r in table])).max() < 1e-5
    labels = np.array([r["label"] == "PNEUMONIA" for r in table])
    accuracy = np.mean((served >= bundle.threshold) == labels)
    assert record["test"]["accuracy"] == pytest.approx(accuracy)
    assert record["test"]["accuracy"] == pytest.approx(manifest["quantization"]["test_accuracy"])
    # What drift monitoring compares production with: those answers, of the images the
    # guard accepts, as the served (INT8) bundle gives them.
    reference = manifest["reference"]
    distance = bundle.guard.distance(bundle.run(images)[1])
    accepted = ~bundle.guard.uniform(images) & (distance <= bundle.guard.threshold)
    assert reference["images"] == accepted.sum() == len(reference["probability"])
    assert np.allclose(reference["probability"], served[accepted], atol=1e-4)
    assert np.allclose(reference["guard_distance"], distance[accepted], atol=1e-4)
    assert reference["pneumonia_share"] == pytest.approx(
        np.mean(served[accepted] >= bundle.threshold), abs=1e-6
    )


def test_mlflow_has_the_run_and_a_registered_version(repro):
    import mlflow
    from mlflow import MlflowClient

    repo, env, _ = repro
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    run_id = json.loads((repo / "models/mlflow_run.json").read_text())["run_id"]
    logged = client.get_run(run_id)
    assert (
        logged.data.params["train.epochs"] == "1"
        and logged.data.params["prepare.image_size"] == "64"
    )
    assert logged.data.tags["trigger"] == "e2e-test"
    assert logged.data.tags["reason"] == "new scanner"  # the workflow's `reason` input
    assert (
        logged.data.tags["data.md5"].endswith(".dir") and len(logged.data.tags["git.commit"]) == 40
    )
    for key in (
        "test_accuracy",
        "test_sensitivity",
        "test_specificity",
        "test_roc_auc",
        "validation_f1",
        "served_test_accuracy",
        "served_test_sensitivity",
    ):
        assert key in logged.data.metrics, key
    history = client.get_metric_history(run_id, "val_loss")
    assert [m.step for m in history] == [1]
    # the per-epoch curve holds one point per epoch: evaluate logs under validation_*
    assert [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == [1]
    assert logged.data.tags["git.branch"] != "HEAD"
    artifacts = {a.path for a in client.list_artifacts(run_id, "bundle")}
    assert {"bundle/model.onnx", "bundle/model.json"} <= artifacts
    assert "figures/roc.png" in {a.path for a in client.list_artifacts(run_id, "figures")}

    version = client.get_model_version_by_alias("pneumonia-resnet18", "challenger")
    assert version.run_id == run_id
    manifest = json.loads((repo / "models/bundle/model.json").read_text())
    assert version.tags["onnx_sha256"] == manifest["onnx_sha256"]
    # The registered ONNX model runs and agrees with the bundle.
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    onnx_model = mlflow.onnx.load_model("models:/pneumonia-resnet18@challenger")
    assert [o.name for o in onnx_model.graph.output] == ["logits", "features"]


def test_dvc_renders_the_plots_and_metrics(repro):
    repo, env, _ = repro
    plots = json.loads(run(["dvc", "plots", "show", "--json"], repo, env).stdout)["data"]
    for name in ("ROC", "Precision-recall", "Confusion matrix", "Training curves"):
        assert plots[name][0]["type"] == "vega", name
    assert {"metrics/figures/roc.png", "metrics/figures/confusion.png"} <= set(plots)
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], repo, env).stdout)
    shown = metrics[""]["data"]["metrics/test.json"]["data"]
    assert {"sensitivity", "specificity", "roc_auc"} <= set(shown)


def test_nothing_changed_means_nothing_runs(repro):
    repo, env, _ = repro
    again = run(["dvc", "repro"], repo, env)
    assert "Running stage" not in again.stdout
    status = run(["dvc", "status"], repo, env).stdout
    assert "up to date" in status


def test_default_local_store_and_param_override(tmp_path):
    """No MLFLOW_TRACKING_URI: the run lands in .mlflow/ of the repo; `dvc exp run -S` works."""
    dataset = copy_subset(tmp_path / "chest_xray", {"train": 16, "val": 3, "test": 4})
    repo = make_repo(tmp_path / "repo", dataset, {**TINY_PARAMS, "prepare": {"image_size": 32}})
    run(["dvc", "exp", "run", "-S", "evaluate.threshold_method=youden"], repo, tool_env())
    assert (repo / ".mlflow" / "mlflow.db").is_file()
    assert any((repo / ".mlflow" / "artifacts").rglob("model.json"))
    assert yaml.safe_load((repo / "params.yaml").read_text())["evaluate"]["threshold_method"] == (
        "youden"
    )
    assert np.isfinite(json.loads((repo / "metrics/test.json").read_text())["threshold"])
    run_file = json.loads((repo / "models/mlflow_run.json").read_text())  # committed to git
    assert run_file["tracking_uri"] == "sqlite:///.mlflow/mlflow.db", "no path of this machine"
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / '.mlflow' / 'mlflow.db'}")
    tags = client.get_run(run_file["run_id"]).data.tags
    assert tags["git.branch"] == "master" or tags["git.branch"] == "main", tags["git.branch"]


def test_site_calibration_is_a_pipeline_option(tmp_path):
    """Site cases added to data/chest_xray/site/ and `evaluate.calibrate_on: site`: the served
    probabilities are calibrated on them and model.json says so; the model is not retrained."""
    import shutil

    from tests.conftest import DATASET

    dataset = copy_subset(tmp_path / "chest_xray", {"train": 24, "val": 4, "test": 8})
    repo = make_repo(tmp_path / "repo", dataset, TINY_PARAMS)
    env = tool_env()
    run(["dvc", "repro"], repo, env)
    site = repo / "data" / "chest_xray" / "site"
    for label in ("NORMAL", "PNEUMONIA"):
        (site / label).mkdir(parents=True)
        for path in sorted((DATASET / "test" / label).iterdir())[-5:]:
            shutil.copy(path, site / label / f"fb-{path.name}")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"]["calibrate_on"] = "site"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run(["dvc", "repro"], repo, env)
    assert "Running stage 'prepare'" in result.stdout and "Running stage 'export'" in result.stdout
    assert "Running stage 'train'" not in result.stdout  # the site is not training data
    manifest = json.loads((repo / "models/bundle/model.json").read_text())
    assert manifest["calibration"]["fitted_on"] == "site (10 images)"
    val = json.loads((repo / "metrics/val.json").read_text())
    assert val["calibration_fitted_on"] == "site (10 images)"
    data = json.loads((repo / "metrics/data.json").read_text())
    assert data["counts"]["site"] == {"NORMAL": 5, "PNEUMONIA": 5}
    assert data["counts"]["test"] == {"NORMAL": 8, "PNEUMONIA": 8}  # the site is not test
