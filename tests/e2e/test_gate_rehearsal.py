"""The PR gate and report, rehearsed in a real git repository with real branches and real DVC:
main holds a champion trained by `dvc repro`; each branch is one situation a pull request can be
in. The gate's verdict (exit status and JSON) and the report's markdown are checked for each."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from tests.conftest import DATASET, TINY_PARAMS, copy_subset, make_repo, run, tool_env

pytestmark = pytest.mark.slow

PARAMS = {**TINY_PARAMS, "prepare": {"image_size": 32}}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    work = tmp_path_factory.mktemp("rehearsal")
    dataset = copy_subset(work / "chest_xray", {"train": 16, "val": 3, "test": 5})
    root = make_repo(work / "repo", dataset, PARAMS)
    env = tool_env()
    run(["dvc", "repro"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "champion"], root, env)
    run(["git", "branch", "-M", "main"], root, env)
    return root


def branch(repo, name: str) -> None:
    env = tool_env()
    run(["git", "checkout", "-q", "-f", "main"], repo, env)
    run(["git", "checkout", "-q", "-B", name], repo, env)
    run(["dvc", "checkout", "-q"], repo, env, check=False)


def set_metrics(repo, **changes) -> dict:
    path = repo / "metrics" / "test.json"
    metrics = json.loads(path.read_text())
    metrics.update(changes)
    path.write_text(json.dumps(metrics))
    return metrics


def gate(repo, base: str = "main"):
    result = run([sys.executable, "-m", "pneumonia.gate", "--base", base, "--json", "gate.json"],
                 repo, tool_env(), check=False)  # fmt: skip
    verdict = json.loads((repo / "gate.json").read_text()) if result.returncode in (0, 1) else None
    (repo / "gate.json").unlink(missing_ok=True)
    return result, verdict


def report(repo, base: str = "main") -> tuple[int, str]:
    result = run([sys.executable, "-m", "pneumonia.report", "--base", base, "--out", "report.md"],
                 repo, tool_env(), check=False)  # fmt: skip
    text = (repo / "report.md").read_text()
    (repo / "report.md").unlink()
    return result.returncode, text


def champion(repo) -> dict:
    return json.loads(run(["git", "show", "main:metrics/test.json"], repo).stdout)


def test_better_model_passes(repo):
    branch(repo, "better")
    old = champion(repo)
    set_metrics(repo, accuracy=min(1.0, old["accuracy"] + 0.05), sensitivity=0.97)
    result, verdict = gate(repo)
    assert result.returncode == 0 and verdict["passed"] is True
    assert verdict["baseline"] == "metrics on main" and verdict["champion"] == old
    code, text = report(repo)
    assert code == 0 and "**Gate: :white_check_mark: PASS**" in text
    assert f"| Accuracy | {old['accuracy']:.4f} | {min(1.0, old['accuracy'] + 0.05):.4f} |" in text
    assert "Data unchanged" in text and "No parameter changed." in text
    assert "![ROC](./metrics/figures/roc.png)" in text
    manifest = json.loads((repo / "models/bundle/model.json").read_text())
    assert (
        f"Served model: INT8 ONNX, {(repo / 'models/bundle/model.onnx').stat().st_size / 2**20:.1f}"
        f" MiB, version `{manifest['version']}`: test accuracy "
        f"{manifest['quantization']['test_accuracy']:.4f}"
    ) in text


def test_worse_model_fails(repo):
    branch(repo, "worse")
    old = champion(repo)
    set_metrics(repo, accuracy=max(0.0, old["accuracy"] - 0.05), sensitivity=0.97)
    result, verdict = gate(repo)
    assert result.returncode == 1 and verdict["passed"] is False
    assert any("does not beat" in r for r in verdict["reasons"])
    assert "**Gate: :x: FAIL**" in report(repo)[1]


def test_equal_model_fails(repo):
    branch(repo, "equal")
    set_metrics(repo, sensitivity=0.97)  # accuracy unchanged
    result, verdict = gate(repo)
    assert result.returncode == 1 and "(+0.0000; must be > +0.0000)" in " ".join(verdict["reasons"])


def test_better_accuracy_below_the_sensitivity_floor_fails(repo):
    branch(repo, "insensitive")
    old = champion(repo)
    set_metrics(repo, accuracy=min(1.0, old["accuracy"] + 0.05), sensitivity=0.5)
    result, verdict = gate(repo)
    assert result.returncode == 1
    assert any("below the floor 0.9000" in r for r in verdict["reasons"])


def test_parameter_changes_are_reported(repo):
    branch(repo, "params")
    params = (repo / "params.yaml").read_text().replace("lr: 0.001", "lr: 0.0005")
    (repo / "params.yaml").write_text(params)
    text = report(repo)[1]
    assert "| `train.lr` | 0.001 | 0.0005 |" in text


def test_without_a_baseline_the_first_champion_passes(repo):
    env = tool_env()
    run(["git", "checkout", "-q", "-f", "main"], repo, env)
    run(["git", "checkout", "-q", "--orphan", "empty-main"], repo, env)
    run(["git", "rm", "-q", "-r", "--cached", "metrics"], repo, env)
    run(["git", "commit", "-qm", "no model yet"], repo, env)
    branch(repo, "first")
    set_metrics(repo, sensitivity=0.97)
    result, verdict = gate(repo, base="empty-main")
    assert result.returncode == 0 and verdict["baseline"] == "none" and verdict["champion"] is None
    assert any("first champion" in r for r in verdict["reasons"])
    text = report(repo, base="empty-main")[1]
    assert "first champion" in text and "| Accuracy | - |" in text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"accuracy": 0.9}', "lacks"),
        (None, "missing"),
    ],
)
def test_malformed_or_missing_challenger_metrics_fail_loudly(repo, content, message):
    branch(repo, "malformed")
    path = repo / "metrics" / "test.json"
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    result, _ = gate(repo)
    assert result.returncode == 2 and message in result.stderr
    code, text = report(repo)
    assert code == 2 and "ERROR" in text and message in text


def test_out_of_range_metric_fails_loudly(repo):
    branch(repo, "out-of-range")
    set_metrics(repo, specificity=1.7)
    result, _ = gate(repo)
    assert result.returncode == 2 and "specificity must be a number in [0, 1]" in result.stderr


def test_malformed_champion_metrics_fail_loudly(repo):
    env = tool_env()
    run(["git", "checkout", "-q", "-f", "main"], repo, env)
    run(["git", "checkout", "-q", "-B", "broken-main"], repo, env)
    (repo / "metrics" / "test.json").write_text('{"accuracy": "high"}')
    run(["git", "commit", "-qam", "broken metrics"], repo, env)
    branch(repo, "against-broken")
    result, _ = gate(repo, base="broken-main")
    assert result.returncode == 2 and "at broken-main" in result.stderr


def test_changed_test_data_rescores_the_champion_on_the_new_split(repo, tmp_path):
    branch(repo, "new-test-data")
    env = tool_env()
    new = tmp_path / "new"
    for label in ("NORMAL", "PNEUMONIA"):
        (new / label).mkdir(parents=True)
        for path in sorted((DATASET / "test" / label).iterdir())[40:43]:
            shutil.copy(path, new / label / path.name)
    ingest = run([sys.executable, "-m", "pneumonia.ingest", str(new), "--split", "test"], repo, env)
    assert "test   NORMAL +3  PNEUMONIA +3" in ingest.stdout
    run(["dvc", "repro"], repo, env)
    old = champion(repo)
    result, verdict = gate(repo)
    assert result.returncode in (0, 1), result.stderr
    assert verdict["baseline"] == "re-scored on this test split"
    rescored = verdict["champion"]
    assert rescored["n"] == verdict["challenger"]["n"] == old["n"] + 6
    assert rescored["threshold"] == pytest.approx(old["threshold"])  # the champion's own
    assert "Data changed" in report(repo)[1]
