"""The PR gate, the report and the deploy plan, rehearsed in a real git repository with real
branches and real DVC: main holds a champion trained by `dvc repro`; each branch is one situation a
pull request (or a merge) can be in. The gate's verdict (exit status and JSON), the report's
markdown and the deploy plan are checked for each.

Rule paths (better, worse, equal, below the floor) edit the challenger's served record the way a
different model would change it; the re-scoring path trains a really different model."""

from __future__ import annotations

import csv
import json
import shutil
import sys

import numpy as np
import pytest
import yaml

from pneumonia.gate import mcnemar_exact
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


def branch(repo, name: str, base: str = "main") -> None:
    env = tool_env()
    run(["git", "checkout", "-q", "-f", base], repo, env)
    run(["git", "checkout", "-q", "-B", name], repo, env)
    run(["dvc", "checkout", "-q"], repo, env, check=False)


def commit(repo, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", message], repo)


def rows(repo) -> list[dict]:
    with open(repo / "metrics/served_test.csv") as f:
        return list(csv.DictReader(f))


def threshold(repo) -> float:
    return json.loads((repo / "metrics/served.json").read_text())["model"]["threshold"]


def correct(row: dict, t: float) -> bool:
    return (float(row["probability"]) >= t) == (row["label"] == "PNEUMONIA")


def as_new_model(repo, fix: int = 0, break_: int = 0, probability=None) -> list[dict]:
    """Make the work tree serve 'another model': a new identity, and per-image answers where
    ``fix`` of the champion's mistakes (pneumonia cases first) are now right and ``break_`` of
    its right answers wrong (or ``probability(row)`` for each row)."""
    record = json.loads((repo / "metrics/served.json").read_text())
    record["model"]["onnx_sha256"] = "0" * 64
    (repo / "metrics/served.json").write_text(json.dumps(record))
    t, table = record["model"]["threshold"], rows(repo)
    wrong = sorted((r for r in table if not correct(r, t)), key=lambda r: r["label"] != "PNEUMONIA")
    right = [r for r in table if correct(r, t)]
    for row in wrong[:fix] + right[:break_]:
        says_positive = (row["label"] == "PNEUMONIA") != correct(row, t)  # the other answer
        row["probability"] = "0.999999" if says_positive else "0.000001"
    if probability is not None:
        for row in table:
            row["probability"] = f"{probability(row):.6f}"
    with open(repo / "metrics/served_test.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["file", "label", "probability"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
    return table


def gate(repo, base: str = "main"):
    result = run(
        [sys.executable, "-m", "pneumonia.gate", "--base", base, "--json", "gate.json"],
        repo,
        tool_env(),
        check=False,
    )
    verdict = json.loads((repo / "gate.json").read_text()) if result.returncode in (0, 1) else None
    (repo / "gate.json").unlink(missing_ok=True)
    return result, verdict


def report(repo, base: str = "main") -> tuple[int, str]:
    result = run(
        [sys.executable, "-m", "pneumonia.report", "--base", base, "--out", "report.md"],
        repo,
        tool_env(),
        check=False,
    )
    text = (repo / "report.md").read_text()
    (repo / "report.md").unlink()
    return result.returncode, text


def plan(repo, tmp_path, base: str = "main") -> tuple[int, dict, str]:
    out, summary = tmp_path / "out", tmp_path / "summary"
    out.write_text("")
    summary.write_text("")
    env = tool_env(GITHUB_OUTPUT=str(out), GITHUB_STEP_SUMMARY=str(summary))
    result = run(
        [sys.executable, "-m", "pneumonia.release", "--base", base], repo, env, check=False
    )
    outputs = dict(line.split("=", 1) for line in out.read_text().splitlines())
    return result.returncode, outputs, summary.read_text()


def champion_accuracy(repo) -> float:
    return json.loads(run(["git", "show", "main:metrics/served.json"], repo).stdout)["test"][
        "accuracy"
    ]


def test_unchanged_model_passes_and_deploys_nothing_for_docs(repo, tmp_path):
    branch(repo, "docs-only")
    (repo / "README.md").write_text("a typo fixed\n")
    commit(repo, "docs")
    result, verdict = gate(repo)
    assert result.returncode == 0 and verdict["passed"] is True
    assert verdict["baseline"] == "model unchanged" and verdict["model_changed"] is False
    assert verdict["comparison"] is None
    code, text = report(repo)
    assert code == 0 and "**Gate: :white_check_mark: PASS** (champion: model unchanged)" in text
    code, outputs, summary = plan(repo, tmp_path)
    assert code == 0 and outputs["deploy"] == "false" and outputs["what"] == "none"
    assert "nothing to deploy" in summary


def test_a_refitted_guard_alone_passes_and_deploys_the_model(repo, tmp_path):
    """The guard decides which images get an answer, so it is part of the served identity; a
    change of the guard alone leaves every answer as it was, and ships."""
    branch(repo, "guard-refit")
    record = json.loads((repo / "metrics/served.json").read_text())
    assert record["model"]["guard"]["sha256"] and record["guard_refused"]["validation"] >= 0
    record["model"]["guard"] = {"threshold": 9.9, "sha256": "f" * 64}
    record["guard_refused"] = {"validation": 0.002, "test": 0.0}
    (repo / "metrics/served.json").write_text(json.dumps(record))
    commit(repo, "guard refitted")
    result, verdict = gate(repo)
    assert result.returncode == 0 and verdict["passed"] is True, result.stdout
    assert verdict["baseline"] == "guard changed, answers unchanged"
    assert verdict["model_changed"] is True and "0.2% of the validation images" in result.stdout
    code, outputs, _ = plan(repo, tmp_path)
    assert code == 0 and outputs["deploy"] == "true" and outputs["what"] == "model"


def test_app_change_deploys_the_app_with_the_current_model(repo, tmp_path):
    branch(repo, "app-fix")
    (repo / "django_app").mkdir(exist_ok=True)
    (repo / "django_app" / "Procfile").write_text("web: gunicorn xrayweb.wsgi\n")
    commit(repo, "app fix")
    code, outputs, _ = plan(repo, tmp_path)
    assert code == 0 and outputs["deploy"] == "true" and outputs["what"] == "app"
    assert "django_app/Procfile" in outputs["summary"]


def test_better_model_passes_with_the_paired_comparison(repo, tmp_path):
    branch(repo, "better")
    t = threshold(repo)
    missed = sum(not correct(r, t) for r in rows(repo) if r["label"] == "PNEUMONIA")
    fix = max(missed, 2)  # every pneumonia case right (sensitivity 1), at least 2 fixes
    assert sum(not correct(r, t) for r in rows(repo)) >= fix, "the tiny champion must err"
    table = as_new_model(repo, fix=fix)
    result, verdict = gate(repo)
    assert result.returncode == 0 and verdict["passed"] is True, result.stdout
    assert verdict["baseline"] == "served metrics on main"
    assert verdict["champion"]["accuracy"] == pytest.approx(champion_accuracy(repo))
    assert verdict["challenger"]["accuracy"] == pytest.approx(
        np.mean([correct(r, t) for r in table])
    )
    comparison = verdict["comparison"]
    assert comparison["fixed"] == fix and comparison["broken"] == 0
    p = 2 * 0.5**fix  # all discordant pairs one way: 2 * (1/2)^fix
    assert comparison["mcnemar_p"] == pytest.approx(p)
    low, high = comparison["bootstrap_ci95"]
    assert 0 <= low <= fix / len(table) <= high
    assert any("within noise" in r for r in verdict["reasons"]) == (p >= 0.05 or low <= 0)
    code, text = report(repo)
    assert code == 0 and "**Gate: :white_check_mark: PASS**" in text
    assert f"| fixed: the champion was wrong, this model is right | {fix} |" in text
    assert f"| exact McNemar p-value | {p:.3g} |" in text
    assert "Data unchanged" in text and "No parameter changed." in text
    assert "![ROC](./metrics/figures/roc.png)" in text
    commit(repo, "better model")
    code, outputs, _ = plan(repo, tmp_path)
    assert code == 0 and outputs["deploy"] == "true" and outputs["what"] == "model"


def test_a_gain_within_noise_fails_when_significance_is_required(repo):
    branch(repo, "strict-main")  # the rules come from the base branch
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["gate"]["require_significant_gain"] = True
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    commit(repo, "stricter gate")
    branch(repo, "significance", base="strict-main")
    t = threshold(repo)
    fix = max(sum(not correct(r, t) for r in rows(repo) if r["label"] == "PNEUMONIA"), 2)
    assert fix <= 5, "5 or fewer one-way flips are within noise: 2 * (1/2)^5 > 0.05"
    as_new_model(repo, fix=fix)
    result, verdict = gate(repo, base="strict-main")
    assert verdict["comparison"]["mcnemar_p"] == pytest.approx(2 * 0.5**fix)
    assert result.returncode == 1 and verdict["passed"] is False
    assert any("require_significant_gain" in r for r in verdict["reasons"])


def test_worse_model_fails_and_is_not_deployed(repo, tmp_path):
    branch(repo, "worse")
    as_new_model(repo, break_=1)
    result, verdict = gate(repo)
    assert result.returncode == 1 and verdict["passed"] is False
    assert verdict["comparison"]["broken"] == 1 and verdict["comparison"]["fixed"] == 0
    assert any("does not beat" in r for r in verdict["reasons"])
    assert "**Gate: :x: FAIL**" in report(repo)[1]
    (repo / "django_app").mkdir(exist_ok=True)
    (repo / "django_app" / "x.py").write_text("")
    commit(repo, "worse model and an app change")
    code, outputs, _ = plan(repo, tmp_path)
    assert code == 0 and outputs["deploy"] == "false" and outputs["what"] == "model"
    assert "does not pass the gate" in outputs["summary"]


def test_changed_model_with_equal_accuracy_fails(repo):
    branch(repo, "equal")
    as_new_model(repo)  # a new identity, the same answers
    result, verdict = gate(repo)
    assert result.returncode == 1 and "(+0.0000; must be > +0.0000)" in " ".join(verdict["reasons"])


def test_better_accuracy_below_the_sensitivity_floor_fails(repo):
    branch(repo, "insensitive")
    first_positive = []

    def answer(row):  # every image right but one pneumonia case missed
        positive = row["label"] == "PNEUMONIA"
        if positive and not first_positive:
            first_positive.append(row)
            return 0.000001
        return 0.999999 if positive else 0.000001

    as_new_model(repo, probability=answer)
    result, verdict = gate(repo)
    assert result.returncode == 1
    assert any("below the floor 0.9000" in r for r in verdict["reasons"])


def test_a_pull_request_cannot_loosen_its_own_gate(repo):
    branch(repo, "loosened")
    as_new_model(repo, break_=1)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["gate"]["min_accuracy_gain"] = -1.0  # "anything goes", says the pull request
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    result, verdict = gate(repo)
    assert result.returncode == 1 and verdict["rules"]["min_accuracy_gain"] == 0.0


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
    as_new_model(repo, probability=lambda row: 0.9 if row["label"] == "PNEUMONIA" else 0.1)
    result, verdict = gate(repo, base="empty-main")
    assert result.returncode == 0 and verdict["baseline"] == "none" and verdict["champion"] is None
    assert any("first champion" in r for r in verdict["reasons"])
    text = report(repo, base="empty-main")[1]
    assert "first champion" in text and "| Accuracy | - |" in text


@pytest.mark.parametrize(
    ("path", "content", "message"),
    [
        ("metrics/served.json", "{not json", "not valid JSON"),
        ("metrics/served.json", '{"version": "x"}', "identity"),
        ("metrics/served.json", None, "missing"),
        ("metrics/served_test.csv", "file,label,probability\na.jpeg,CAT,0.5\n", "line 2"),
        ("metrics/served_test.csv", None, "missing"),
    ],
)
def test_malformed_or_missing_challenger_records_fail_loudly(repo, path, content, message):
    branch(repo, "malformed")
    if content is None:
        (repo / path).unlink()
    else:
        (repo / path).write_text(content)
    result, _ = gate(repo)
    assert result.returncode == 2 and message in result.stderr
    code, text = report(repo)
    assert code == 2 and "ERROR" in text and message in text


def test_malformed_champion_record_fails_loudly(repo):
    branch(repo, "broken-main")
    record = json.loads((repo / "metrics/served.json").read_text())
    record["model"]["threshold"] = "high"
    (repo / "metrics/served.json").write_text(json.dumps(record))
    commit(repo, "broken record")
    branch(repo, "against-broken")
    result, _ = gate(repo, base="broken-main")
    assert result.returncode == 2 and "at broken-main" in result.stderr


def test_new_test_data_and_a_new_model_rescore_the_champion(repo, tmp_path):
    branch(repo, "new-test-data")
    env = tool_env()
    new = tmp_path / "new"
    for label in ("NORMAL", "PNEUMONIA"):
        (new / label).mkdir(parents=True)
        for path in sorted((DATASET / "test" / label).iterdir())[40:43]:
            shutil.copy(path, new / label / path.name)
    ingest = run([sys.executable, "-m", "pneumonia.ingest", str(new), "--split", "test"], repo, env)
    assert "test   NORMAL +3  PNEUMONIA +3" in ingest.stdout
    run(["dvc", "exp", "run", "-S", "train.seed=7"], repo, env)  # really another model
    old = json.loads(run(["git", "show", "main:metrics/served.json"], repo).stdout)
    result, verdict = gate(repo)
    assert result.returncode in (0, 1), result.stderr
    assert verdict["baseline"] == "re-scored on this test split"
    rescored, challenger = verdict["champion"], verdict["challenger"]
    assert rescored["n"] == challenger["n"] == old["test"]["n"] + 6
    assert rescored["threshold"] == pytest.approx(old["model"]["threshold"])  # the champion's own
    comparison = verdict["comparison"]
    assert comparison["n"] == challenger["n"]
    assert comparison["fixed"] - comparison["broken"] == round(
        (challenger["accuracy"] - rescored["accuracy"]) * challenger["n"]
    )
    assert comparison["mcnemar_p"] == pytest.approx(
        mcnemar_exact(comparison["fixed"], comparison["broken"])
    )
    assert "Data changed" in report(repo)[1]
