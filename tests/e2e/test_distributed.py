"""Data-parallel training for real: `dvc repro train` with `train.processes: 2` starts two
processes through torchrun (DDP over gloo on the CPU, as on a multi-GPU runner with NCCL)."""

from __future__ import annotations

import csv
import json

import pytest

from pneumonia.model import load_checkpoint
from tests.conftest import TINY_PARAMS, copy_subset, make_repo, run, tool_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    work = tmp_path_factory.mktemp("ddp")
    dataset = copy_subset(work / "chest_xray", {"train": 24, "val": 4, "test": 4})
    params = {**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "epochs": 2, "processes": 2}}
    repo = make_repo(work / "repo", dataset, params)
    result = run(["dvc", "repro", "train"], repo, tool_env(), timeout=900)
    return repo, result


def test_two_processes_train_one_model(two_processes):
    repo, result = two_processes
    # Only the main process reports: one line per epoch, not one per process.
    assert result.stderr.count("epoch 1:") == 1 and result.stderr.count("epoch 2:") == 1
    model, size = load_checkpoint(repo / "models/model.pt")
    assert size == TINY_PARAMS["prepare"]["image_size"] and not model.training
    summary = json.loads((repo / "metrics/train.json").read_text())
    assert summary["epochs_run"] == 2 and summary["kept_epoch"] == 2
    with open(repo / "metrics/train_history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(0 < float(r["train_loss"]) < 5 and 0 < float(r["val_loss"]) < 5 for r in rows)


def test_one_mlflow_run_with_one_value_per_epoch(two_processes):
    repo, _ = two_processes
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / '.mlflow' / 'mlflow.db'}")
    experiments = client.search_experiments()
    runs = [r for e in experiments for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1
    run_id = json.loads((repo / "models/mlflow_run.json").read_text())["run_id"]
    assert runs[0].info.run_id == run_id
    assert runs[0].data.tags["train.processes_used"] == "2"
    assert runs[0].data.tags["train.device_used"] == "cpu"
    history = client.get_metric_history(run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2]
