"""The PR gate, the report and the deploy plan, rehearsed in a real git repository with real
branches and real DVC: main holds a champion trained by `dvc repro`; each branch is one situation a
pull request (or a merge) can be in. The gate's verdict (exit status and JSON), the report's
markdown and the deploy plan are checked for each.

The command judges the bundle itself: a really retrained model (another seed) is re-scored and
its committed records checked against it, and each way of dressing up those records fails.
The rules (better, worse, equal, below the floor, significance, the base's rules) are applied by
``gate.judge`` to answers made up per case, as another model would give them: the command would
refuse such answers as not the bundle's."""

from __future__ import annotations

import csv
import json
import shutil
import sys

import numpy as np
import pytest
import yaml

from pneumonia import gate as gate_module
from pneumonia import report as report_module
from pneumonia.gate import mcnemar_exact
from pneumonia.served import Predictions, identity
from tests.conftest import DATASET, REPO, TINY_PARAMS, copy_subset, make_repo, run, tool_env

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
    # --force: a test that wrote over the bundle leaves it modified, and a plain checkout keeps
    # a modified output (it fails in a non-interactive shell) instead of restoring main's.
    run(["dvc", "checkout", "-f", "-q"], repo, env)


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


def as_new_model(repo, fix: int = 0, break_: int = 0, probability=None):
    """'Another model' as the rules see it: a new identity, and per-image answers where ``fix``
    of the champion's mistakes (pneumonia cases first) are now right and ``break_`` of its right
    answers wrong (or ``probability(row)`` for each row). Returns (record, answers, rows)."""
    record = json.loads((repo / "metrics/served.json").read_text())
    record["model"]["onnx_sha256"] = "0" * 64
    t, table = record["model"]["threshold"], rows(repo)
    wrong = sorted((r for r in table if not correct(r, t)), key=lambda r: r["label"] != "PNEUMONIA")
    right = [r for r in table if correct(r, t)]
    for row in wrong[:fix] + right[:break_]:
        says_positive = (row["label"] == "PNEUMONIA") != correct(row, t)  # the other answer
        row["probability"] = "0.999999" if says_positive else "0.000001"
    if probability is not None:
        for row in table:
            row["probability"] = f"{probability(row):.6f}"
    answers = Predictions(
        [r["file"] for r in table],
        np.array([int(r["label"] == "PNEUMONIA") for r in table]),
        np.array([float(r["probability"]) for r in table]),
    )
    return record, answers, table


def judged(repo, fix: int = 0, break_: int = 0, probability=None, base: str = "main"):
    """The verdict (as the JSON the command writes) of the base's rules on such a model."""
    record, answers, table = as_new_model(repo, fix, break_, probability)
    verdict = gate_module.judge(base, repo, record, answers)
    return verdict, verdict.as_dict(), table


def rendered(repo, verdict, monkeypatch, base: str = "main") -> str:
    monkeypatch.chdir(repo)
    return report_module.render(verdict, base, repo)


def write_rows(repo, table: list[dict]) -> None:
    with open(repo / "metrics/served_test.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["file", "label", "probability"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)


def gate(repo, base: str = "main", *extra: str):
    result = run(
        [sys.executable, "-m", "pneumonia.gate", "--base", base, "--json", "gate.json", *extra],
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


def refit_guard(repo) -> None:
    """A bundle whose guard was fitted again (another threshold), recorded as export records it:
    the manifest, served.json's identity and dvc.lock's md5 of the bundle."""
    manifest_path = repo / "models/bundle/model.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["guard"]["threshold"] = manifest["guard"]["threshold"] * 1.5
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    record = json.loads((repo / "metrics/served.json").read_text())
    record["model"] = identity(manifest)
    record["guard_refused"] = {"validation": 0.002, "test": 0.0}
    (repo / "metrics/served.json").write_text(json.dumps(record))
    run(["dvc", "commit", "-f", "-q", "export"], repo, tool_env())


def test_a_refitted_guard_alone_passes_and_deploys_the_model(repo, tmp_path):
    """The guard decides which images get an answer, so it is part of the served identity; a
    change of the guard alone leaves every answer as it was, and ships."""
    branch(repo, "guard-refit")
    refit_guard(repo)
    commit(repo, "guard refitted")
    result, verdict = gate(repo)
    assert result.returncode == 0 and verdict["passed"] is True, result.stdout
    assert verdict["baseline"] == "guard changed, answers unchanged"
    assert verdict["model_changed"] is True and "0.2% of validation images" in result.stdout
    code, outputs, _ = plan(repo, tmp_path)
    assert code == 0 and outputs["deploy"] == "true" and outputs["what"] == "model"


def test_a_bundle_that_is_not_the_recorded_one_fails(repo, tmp_path):
    """served.json copied from a good model over another bundle, or a bundle that is not the one
    dvc.lock names: the gate names the difference, and nothing is deployed."""
    branch(repo, "claims-another-guard")
    refit_guard(repo)
    record = json.loads((repo / "metrics/served.json").read_text())
    record["model"]["guard"]["threshold"] = 99.0  # says something the bundle does not
    (repo / "metrics/served.json").write_text(json.dumps(record))
    commit(repo, "a record that is not the bundle's")
    result, verdict = gate(repo)
    assert result.returncode == 1 and verdict["baseline"] == "the records do not match the bundle"
    assert "describes another model than models/bundle serves (differs in: guard)" in result.stdout
    code, outputs, _ = plan(repo, tmp_path)
    assert code == 0 and outputs["deploy"] == "false" and "does not pass" in outputs["summary"]
    branch(repo, "swapped-bundle")
    refit_guard(repo)
    commit(repo, "guard refitted")
    (repo / "models/bundle/model.onnx").write_bytes(b"not the exported graph")
    result, verdict = gate(repo)
    assert result.returncode == 1, result.stdout
    assert "but dvc.lock names" in result.stdout and "has sha256" in result.stdout


def test_the_deploy_follows_what_is_live_not_the_previous_commit(repo, tmp_path):
    """A model merge whose deploy was cancelled, then a docs merge: against the previous commit
    the docs deploy nothing and production stays behind for good; against the live release
    the model ships. An older commit never replaces a newer live one."""
    from pneumonia.gate import MetricsError
    from pneumonia.release import plan_against_live

    live = run(["git", "rev-parse", "main"], repo).stdout.strip()
    branch(repo, "missed-deploy")
    refit_guard(repo)
    commit(repo, "guard refitted (its deploy was cancelled)")
    model = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    (repo / "README.md").write_text("docs after the model\n")
    commit(repo, "docs")
    code, outputs, _ = plan(repo, tmp_path, "HEAD^1")
    assert code == 0 and outputs["deploy"] == "false", "the previous commit's view: nothing"
    caught_up = plan_against_live(live, repo)
    assert caught_up.deploy and caught_up.what == "model", caught_up.summary
    assert caught_up.summary.startswith(f"against the live release {live[:12]}: ")
    head = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    again = plan_against_live(head, repo)
    assert not again.deploy and again.what == "live" and "live already" in again.summary
    run(["git", "checkout", "-q", model], repo)  # an old deploy run re-run
    older = plan_against_live(head, repo)
    assert not older.deploy and older.what == "none" and "never deployed over" in older.summary
    first = plan_against_live(None, repo)
    assert first.deploy and "nothing built from a commit is live" in first.summary
    with pytest.raises(MetricsError, match="not in this checkout's history"):
        plan_against_live("0" * 40, repo)


def test_app_change_deploys_the_app_with_the_current_model(repo, tmp_path):
    branch(repo, "app-fix")
    (repo / "django_app").mkdir(exist_ok=True)
    (repo / "django_app" / "Procfile").write_text("web: gunicorn xrayweb.wsgi\n")
    commit(repo, "app fix")
    code, outputs, _ = plan(repo, tmp_path)
    assert code == 0 and outputs["deploy"] == "true" and outputs["what"] == "app"
    assert "django_app/Procfile" in outputs["summary"]


def test_a_lock_update_passes_as_model_unchanged_and_ships_the_app_lock(repo, tmp_path):
    """What a Dependabot pull request changes: the locks (and inputs). The gate passes it as
    "model unchanged"; the pipeline's lock alone deploys nothing, the app's lock deploys the app
    with the current model."""
    branch(repo, "lock-update")
    for name in ("requirements.in", "requirements.txt", "requirements-dev.txt"):
        shutil.copy2(REPO / name, repo / name)
    commit(repo, "the pipeline's lock")
    result, verdict = gate(repo)
    assert result.returncode == 0 and verdict["passed"] is True
    assert verdict["baseline"] == "model unchanged"
    code, outputs, _ = plan(repo, tmp_path)
    assert code == 0 and outputs["what"] == "none"
    (repo / "django_app").mkdir(exist_ok=True)
    shutil.copy2(REPO / "django_app/requirements.txt", repo / "django_app/requirements.txt")
    commit(repo, "the app's lock")
    result, verdict = gate(repo)
    assert result.returncode == 0 and verdict["baseline"] == "model unchanged"
    code, outputs, _ = plan(repo, tmp_path)
    assert code == 0 and outputs["what"] == "app"
    assert "django_app/requirements.txt" in outputs["summary"]


def test_better_model_passes_with_the_paired_comparison(repo, monkeypatch):
    branch(repo, "better")
    t = threshold(repo)
    missed = sum(not correct(r, t) for r in rows(repo) if r["label"] == "PNEUMONIA")
    fix = max(missed, 2)  # every pneumonia case right (sensitivity 1), at least 2 fixes
    assert sum(not correct(r, t) for r in rows(repo)) >= fix, "the tiny champion must err"
    result, verdict, table = judged(repo, fix=fix)
    assert verdict["passed"] is True, verdict["reasons"]
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
    text = rendered(repo, result, monkeypatch)
    assert "**Gate: :white_check_mark: PASS**" in text
    assert f"| fixed: the champion was wrong, this model is right | {fix} |" in text
    assert f"| exact McNemar p-value | {p:.3g} |" in text
    assert "Data unchanged" in text and "No parameter changed." in text
    assert "1 champion(s) on `main` were chosen on it before this decision" in text
    assert "![ROC](./metrics/figures/roc.png)" in text


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
    _, verdict, _ = judged(repo, fix=fix, base="strict-main")
    assert verdict["comparison"]["mcnemar_p"] == pytest.approx(2 * 0.5**fix)
    assert verdict["passed"] is False
    assert any("require_significant_gain" in r for r in verdict["reasons"])


def test_worse_model_fails(repo, monkeypatch):
    branch(repo, "worse")
    result, verdict, _ = judged(repo, break_=1)
    assert verdict["passed"] is False
    assert verdict["comparison"]["broken"] == 1 and verdict["comparison"]["fixed"] == 0
    assert any("does not beat" in r for r in verdict["reasons"])
    assert "**Gate: :x: FAIL**" in rendered(repo, result, monkeypatch)


def test_changed_model_with_equal_accuracy_fails(repo):
    branch(repo, "equal")
    _, verdict, _ = judged(repo)  # a new identity, the same answers
    assert verdict["passed"] is False
    assert "(+0.0000; must be > +0.0000)" in " ".join(verdict["reasons"])


def test_better_accuracy_below_the_sensitivity_floor_fails(repo):
    branch(repo, "insensitive")
    first_positive = []

    def answer(row):  # every image right but one pneumonia case missed
        positive = row["label"] == "PNEUMONIA"
        if positive and not first_positive:
            first_positive.append(row)
            return 0.000001
        return 0.999999 if positive else 0.000001

    _, verdict, _ = judged(repo, probability=answer)
    assert verdict["passed"] is False
    assert any("below the floor 0.9000" in r for r in verdict["reasons"])


def test_a_pull_request_cannot_loosen_its_own_gate(repo):
    branch(repo, "loosened")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["gate"]["min_accuracy_gain"] = -1.0  # "anything goes", says the pull request
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    _, verdict, _ = judged(repo, break_=1)
    assert verdict["passed"] is False and verdict["rules"]["min_accuracy_gain"] == 0.0


def test_a_retrained_model_is_judged_by_what_its_bundle_answers(repo, tmp_path):
    """A really different model (another seed): the gate re-scores its bundle and judges those
    answers; each way of dressing up its records is caught and named."""
    branch(repo, "retrained")
    run(["dvc", "exp", "run", "-S", "train.seed=11"], repo, tool_env())
    commit(repo, "retrained with another seed")
    result, verdict = gate(repo)
    assert result.returncode in (0, 1), result.stderr
    assert verdict["baseline"] == "served metrics on main", verdict["reasons"]
    served = json.loads((repo / "metrics/served.json").read_text())
    for key in ("accuracy", "sensitivity", "specificity", "tp", "fp", "tn", "fn"):
        assert verdict["challenger"][key] == pytest.approx(served["test"][key]), key
    honest = result.returncode
    code, outputs, _ = plan(repo, tmp_path)
    assert code == 0 and outputs["what"] == "model"
    assert outputs["deploy"] == ("true" if honest == 0 else "false")

    # 1. every answer made right in served_test.csv: caught, named, not deployed
    t = threshold(repo)
    table = rows(repo)
    for row in table:
        row["probability"] = "0.999999" if row["label"] == "PNEUMONIA" else "0.000001"
        assert (float(row["probability"]) >= t) == (row["label"] == "PNEUMONIA")
    write_rows(repo, table)
    commit(repo, "a better-looking served_test.csv")
    result, verdict = gate(repo)
    assert result.returncode == 1 and verdict["baseline"] == "the records do not match the bundle"
    assert "metrics/served_test.csv differs from what the bundle answers on" in result.stdout
    assert verdict["challenger"] is None and verdict["comparison"] is None
    code, text = report(repo)
    assert code == 0 and "**Gate: :x: FAIL**" in text and "differs from what the bundle" in text
    code, outputs, _ = plan(repo, tmp_path)
    assert code == 0 and outputs["deploy"] == "false"

    # 2. the hard cases left out of the list
    run(["git", "checkout", "-q", "HEAD~1", "--", "metrics/served_test.csv"], repo)
    table = rows(repo)
    kept = [r for r in table if correct(r, t)]
    write_rows(repo, kept if len(kept) < len(table) else table[1:])
    result, verdict = gate(repo)
    assert result.returncode == 1 and "leaves out" in result.stdout, result.stdout

    # 3. a record that claims another test split
    run(["git", "checkout", "-q", "HEAD~1", "--", "metrics/served_test.csv"], repo)
    record = json.loads((repo / "metrics/served.json").read_text())
    record["test_data"] = "f" * 64
    (repo / "metrics/served.json").write_text(json.dumps(record))
    result, verdict = gate(repo)
    assert result.returncode == 1 and "but data/chest_xray's test split is" in result.stdout
    run(["git", "checkout", "-q", "HEAD~1", "--", "metrics"], repo)


def knife_edge_copy(repo, out):
    """The repo's bundle with its threshold at the median margin of its test answers and the
    margin scaled 10,000 times: any small change of an image moves some decision."""
    from pneumonia.serving import Bundle

    shutil.copytree(repo / "models/bundle", out)
    table = rows(repo)
    bundle = Bundle(out)
    p = np.clip([float(r["probability"]) for r in table], 1e-9, 1 - 1e-9)
    margin = (np.log(p / (1 - p)) - bundle.bias) / bundle.scale
    manifest = json.loads((out / "model.json").read_text())
    manifest["calibration"] = {"method": "platt", "scale": 1e4, "bias": -1e4 * np.median(margin)}
    manifest["threshold"] = 0.5
    (out / "model.json").write_text(json.dumps(manifest))
    return out


def test_behaviour_of_the_bundle_is_ruled_on_by_the_bases_rules(repo, tmp_path, monkeypatch):
    """The behavioural checks run on the bundle the gate would ship, and the base's
    gate.behaviour decides: the project's own limits fail a knife-edge model that the
    accuracy rules pass."""
    branch(repo, "strict-behaviour")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    strict = yaml.safe_load((REPO / "params.yaml").read_text())["gate"]["behaviour"]
    params["gate"]["behaviour"] = strict
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    commit(repo, "the project's behavioural limits")
    branch(repo, "retrained-behaviour")
    run(["dvc", "exp", "run", "-S", "train.seed=12"], repo, tool_env())
    commit(repo, "retrained with another seed")
    n = len(rows(repo))
    for base in ("main", "strict-behaviour"):
        result, verdict = gate(repo, base)
        assert result.returncode in (0, 1), result.stderr
        found = verdict["behaviour"]
        assert verdict["rules"]["behaviour"]["max_flip_rate"] == (
            strict["max_flip_rate"] if base != "main" else 1.0
        )
        assert len(found["invariance"]) == 7
        assert all(r["n"] == n for r in found["invariance"].values())
        assert found["directional"]["guard"] and found["directional"]["n"] > 250
        assert found["easy"]["n"] <= n
        failed = [r for r in verdict["reasons"] if "above the limit" in r or "must be at" in r]
        failed += [r for r in verdict["reasons"] if "answered wrong" in r and "allowed" in r]
        checks = [*found["invariance"].values(), found["directional"], found["easy"]]
        if not all(c["passed"] for c in checks):
            assert verdict["passed"] is False, verdict["reasons"]
    _, text = report(repo, "strict-behaviour")
    assert (
        "### Behaviour of the served bundle" in text and "| invariance: as a DICOM file |" in text
    )

    # a model the accuracy rules pass, on a knife edge: the base's limits fail it
    branch(repo, "knife-edge", base="strict-behaviour")
    t = threshold(repo)
    missed = sum(not correct(r, t) for r in rows(repo) if r["label"] == "PNEUMONIA")
    record, answers, _ = as_new_model(repo, fix=max(missed, 2))  # as the better model above
    edge = knife_edge_copy(repo, tmp_path / "bundle")
    calm = gate_module.judge("strict-behaviour", repo, record, answers)
    assert calm.passed, calm.reasons
    assert "invariance and directional checks: not run (no bundle to check)" in calm.reasons
    verdict = gate_module.judge("strict-behaviour", repo, record, answers, bundle_dir=edge)
    assert verdict.passed is False
    flipped = [r for r in verdict.reasons if r.startswith("invariance, rotated") and "above" in r]
    assert flipped, verdict.reasons
    lenient = gate_module.judge("main", repo, record, answers, bundle_dir=edge)

    def measured(v):  # the same measurements; only the limits differ
        return {k: {**r, "passed": None} for k, r in v.behaviour["invariance"].items()}

    assert measured(lenient) == measured(verdict)
    assert lenient.passed, lenient.reasons
    assert ":x: |" in rendered(repo, verdict, monkeypatch, base="strict-behaviour")


def test_without_a_baseline_the_first_champion_passes(repo, monkeypatch):
    env = tool_env()
    run(["git", "checkout", "-q", "-f", "main"], repo, env)
    run(["git", "checkout", "-q", "--orphan", "empty-main"], repo, env)
    run(["git", "rm", "-q", "-r", "--cached", "metrics"], repo, env)
    run(["git", "commit", "-qm", "no model yet"], repo, env)
    branch(repo, "first")
    result, verdict = gate(repo, "empty-main")  # main's own champion, as the first one
    assert result.returncode in (0, 1) and verdict["baseline"] == "none", result.stderr
    assert verdict["champion"] is None and any("first champion" in r for r in verdict["reasons"])
    verdict, _, _ = judged(
        repo,
        probability=lambda row: 0.9 if row["label"] == "PNEUMONIA" else 0.1,
        base="empty-main",
    )
    assert verdict.passed and verdict.baseline == "none" and verdict.champion is None
    text = rendered(repo, verdict, monkeypatch, base="empty-main")
    assert "first champion" in text and "| Accuracy | - |" in text


def test_parameter_changes_are_reported(repo):
    branch(repo, "params")
    params = (repo / "params.yaml").read_text().replace("lr: 0.001", "lr: 0.0005")
    (repo / "params.yaml").write_text(params)
    text = report(repo)[1]
    assert "| `train.lr` | 0.001 | 0.0005 |" in text


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
