"""The model gate: does this work tree serve a model that should replace the base branch's?

    python -m pneumonia.gate --base origin/main [--json gate.json]

The gate judges models, not pull requests. It first asks whether the served model changed: the
identity in ``metrics/served.json`` (ONNX sha256, input, calibration, threshold, labels) here
against the base revision's. Unchanged (a fix to the app, the docs or a template): it passes and
says so. Changed: the rules of ``params.yaml`` section ``gate`` (the base revision's: a pull
request cannot loosen the gate that judges it) apply, to both models as they are
served (the exported bundles, INT8 where that is what the app runs) and on the same test images:
the challenger's test sensitivity must be at least ``min_sensitivity`` and its accuracy must beat
the champion's by more than ``min_accuracy_gain``; with ``require_significant_gain`` the gain
must also be significant (exact McNemar test at ``significance_level``). Whatever the rules, the
verdict gives what a reviewer needs to judge a small gain: how many decisions flipped each way,
the exact McNemar p-value and a paired bootstrap 95% interval of the accuracy difference.

When the test split differs from the base revision's, the champion's bundle is fetched through
DVC at the base revision and re-scored on this work tree's test images. With no served model on
the base revision the challenger passes as the first champion. Exit status: 0 pass, 1 a rule
failed, 2 missing or malformed records (the message says which file and what to do).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pneumonia import config
from pneumonia.metrics import classification_metrics
from pneumonia.params import GateParams, ParamsError, as_dict, from_mapping
from pneumonia.params import load as load_params
from pneumonia.served import (
    SERVED_JSON,
    SERVED_TEST_CSV,
    MetricsError,
    Predictions,
    parse_predictions,
    parse_record,
    without_guard,
)

COMPARED = ("accuracy", "sensitivity", "specificity", "f1", "roc_auc")
UNCHANGED = "model unchanged"
GUARD_ONLY = "guard changed, answers unchanged"
__all__ = ["MetricsError", "Verdict", "run_gate", "paired_comparison"]


@dataclass
class Verdict:
    passed: bool
    # "model unchanged" | "guard changed, answers unchanged" | "served metrics on <base>" |
    # "re-scored on this test split" | "none"
    baseline: str
    reasons: list[str] = field(default_factory=list)
    challenger: dict[str, Any] | None = None  # served test metrics of this work tree's model
    champion: dict[str, Any] | None = None  # the base revision's, on the same test images
    comparison: dict[str, Any] | None = None  # paired: flips, McNemar, bootstrap interval
    rules: dict[str, Any] = field(default_factory=dict)

    @property
    def model_changed(self) -> bool:
        return self.baseline != UNCHANGED

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "model_changed": self.model_changed}


def git_show(rev: str, path: str, root: Path) -> str | None:
    """A file's content at ``rev``, or None when it does not exist there."""
    result = subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True, text=True
    )
    return result.stdout if result.returncode == 0 else None


def rev_exists(rev: str, root: Path) -> bool:
    result = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        cwd=root,
        capture_output=True,
    )
    return result.returncode == 0


def _read(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def mcnemar_exact(fixed: int, broken: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs against a fair coin."""
    n = fixed + broken
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(fixed, broken) + 1))
    return min(1.0, 2 * tail / 2**n)


def bootstrap_interval(
    challenger_correct: np.ndarray, champion_correct: np.ndarray, resamples: int, seed: int = 0
) -> tuple[float, float]:
    """Paired bootstrap 95% interval of the accuracy difference (images resampled together)."""
    difference = challenger_correct.astype(np.int8) - champion_correct.astype(np.int8)
    rng = np.random.default_rng(seed)
    n = len(difference)
    means = []
    chunk = max(1, 2_000_000 // n)  # resamples per batch, to bound memory on large test sets
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        means.append(difference[idx].mean(axis=1))
    low, high = np.percentile(np.concatenate(means), [2.5, 97.5])
    return float(low), float(high)


def paired_comparison(
    challenger_correct: np.ndarray, champion_correct: np.ndarray, resamples: int
) -> dict[str, Any]:
    """How the two models' decisions differ on the same images, and whether that is noise."""
    fixed = int(np.sum(challenger_correct & ~champion_correct))
    broken = int(np.sum(~challenger_correct & champion_correct))
    low, high = bootstrap_interval(challenger_correct, champion_correct, resamples)
    return {
        "n": int(len(challenger_correct)),
        "fixed": fixed,  # the champion was wrong, the challenger is right
        "broken": broken,  # the champion was right, the challenger is wrong
        "accuracy_difference": (fixed - broken) / len(challenger_correct),
        "mcnemar_p": mcnemar_exact(fixed, broken),
        "bootstrap_ci95": [low, high],
        "bootstrap_resamples": int(resamples),
    }


def rescore_champion(
    base: str, root: Path, files: list[str], labels: np.ndarray
) -> tuple[Predictions, float]:
    """The base revision's bundle, fetched through DVC, scored on ``files`` (this work tree's
    test split, decoded from data/chest_xray at the champion's own input size), with the
    champion's own threshold."""
    from dvc.api import DVCFileSystem

    from pneumonia.data import load_image
    from pneumonia.serving import Bundle, resize

    with tempfile.TemporaryDirectory() as tmp:
        fs = DVCFileSystem(str(root), rev=base)
        try:
            fs.get("models/bundle", str(Path(tmp) / "bundle"), recursive=True)
        except Exception as exc:  # DVC raises a variety of errors for missing data
            raise MetricsError(
                f"cannot fetch the champion's models/bundle at {base} to re-score it on the new "
                f"test data ({exc.__class__.__name__}: {exc}); is the DVC remote reachable, and "
                "does it hold main's model? (`dvc push` from the machine that trained it)"
            ) from exc
        bundle = Bundle(Path(tmp) / "bundle")
        missing = [f for f in files if not (root / "data" / "chest_xray" / f).is_file()]
        if missing:
            raise MetricsError(
                f"{len(missing)} test image(s) are not in data/chest_xray (e.g. {missing[0]}): "
                "run `dvc pull chest_xray.dvc` before the gate"
            )
        probabilities = []
        for start in range(0, len(files), 64):  # batches: memory stays flat on large test sets
            batch = files[start : start + 64]
            images = np.stack(
                [resize(load_image(root / "data" / "chest_xray" / f), bundle.size) for f in batch]
            )
            probabilities.append(bundle.probabilities(images))
        return Predictions(list(files), labels, np.concatenate(probabilities)), bundle.threshold


def aligned(champion: Predictions, challenger: Predictions, source: str) -> Predictions:
    """The champion's answers in the challenger's order; both must cover the same images."""
    order = {name: i for i, name in enumerate(champion.files)}
    if sorted(order) != sorted(challenger.files):
        raise MetricsError(
            f"{source} lists other test images than {SERVED_TEST_CSV} although the test data "
            "fingerprints match: export again (`dvc repro export`)"
        )
    idx = np.array([order[name] for name in challenger.files])
    if not np.array_equal(champion.labels[idx], challenger.labels):
        raise MetricsError(f"{source} gives other labels for the same test images")
    return Predictions(challenger.files, challenger.labels, champion.probabilities[idx])


def decide(
    challenger: dict[str, Any],
    champion: dict[str, Any] | None,
    comparison: dict[str, Any] | None,
    rules: dict[str, Any],
) -> tuple[bool, list[str]]:
    """Apply the gate's rules to a changed model; return (passed, reasons)."""
    reasons = []
    passed = True
    floor = float(rules["min_sensitivity"])
    if challenger["sensitivity"] < floor:
        passed = False
        reasons.append(
            f"sensitivity {challenger['sensitivity']:.4f} is below the floor {floor:.4f}"
        )
    else:
        reasons.append(f"sensitivity {challenger['sensitivity']:.4f} >= floor {floor:.4f}")
    if champion is None or comparison is None:
        reasons.append("no champion on the base branch: this model becomes the first champion")
        return passed, reasons
    gain = challenger["accuracy"] - champion["accuracy"]
    needed = float(rules["min_accuracy_gain"])
    if gain > needed:
        reasons.append(
            f"accuracy {challenger['accuracy']:.4f} beats the champion's "
            f"{champion['accuracy']:.4f} ({gain:+.4f})"
        )
    else:
        passed = False
        reasons.append(
            f"accuracy {challenger['accuracy']:.4f} does not beat the champion's "
            f"{champion['accuracy']:.4f} ({gain:+.4f}; must be > {needed:+.4f})"
        )
    low, high = comparison["bootstrap_ci95"]
    p, alpha = comparison["mcnemar_p"], float(rules["significance_level"])
    reasons.append(
        f"on the same {comparison['n']} test images: {comparison['fixed']} decision(s) fixed, "
        f"{comparison['broken']} broken; exact McNemar p = {p:.3g}; paired bootstrap 95% "
        f"interval of the accuracy difference [{low:+.4f}, {high:+.4f}]"
    )
    significant = p < alpha and (low > 0 or high < 0)
    if not significant:
        reasons.append(
            f"the difference is within noise (p >= {alpha:g} or the interval includes 0): "
            "this test split cannot tell the two models apart"
        )
        if rules["require_significant_gain"] and passed:
            passed = False
            reasons.append("gate.require_significant_gain is set: a gain within noise fails")
    return passed, reasons


def gate_rules(base: str, root: Path) -> dict[str, Any]:
    """The rules the base branch enforces (its params.yaml), so that a pull request cannot
    loosen the gate it is judged by; the work tree's when the base has none."""
    raw = git_show(base, "params.yaml", root)
    section = (yaml.safe_load(raw) or {}).get("gate") if raw else None
    if section is None:
        return as_dict(load_params(root / "params.yaml").gate)
    try:
        rules = from_mapping(GateParams, section, "gate")
        rules.check()
    except ParamsError as exc:
        raise ParamsError(f"{base}'s {exc}") from None
    return as_dict(rules)


def run_gate(base: str, root: Path | None = None) -> Verdict:
    """Compare the model this work tree serves with the one ``base`` serves."""
    root = root or config.ROOT
    record = parse_record(_read(root / SERVED_JSON), SERVED_JSON)
    predictions = parse_predictions(_read(root / SERVED_TEST_CSV), SERVED_TEST_CSV)
    if not rev_exists(base, root):
        raise MetricsError(f"the base revision {base!r} does not exist (fetch it first)")
    rules = gate_rules(base, root)
    base_raw = git_show(base, SERVED_JSON, root)
    if base_raw is None:
        challenger = classification_metrics(
            predictions.labels, predictions.probabilities, record["model"]["threshold"]
        )
        passed, reasons = decide(challenger, None, None, rules)
        return Verdict(passed, "none", reasons, challenger, None, None, rules)
    base_record = parse_record(base_raw, f"{SERVED_JSON} at {base}")
    if base_record["model"] == record["model"]:
        reasons = [
            f"the served model is the one on {base} (version {record.get('version')}: same ONNX "
            "file, calibration and threshold): nothing to judge, the champion stays"
        ]
        return Verdict(
            True, UNCHANGED, reasons, record.get("test"), base_record.get("test"), None, rules
        )
    if without_guard(base_record["model"]) == without_guard(record["model"]):
        refused = (record.get("guard_refused") or {}).get("validation")
        share = "" if refused is None else f"; it refuses {refused:.1%} of the validation images"
        reasons = [
            f"only the input guard changed: every image it lets through gets the answer of the "
            f"model on {base} (same ONNX file, calibration and threshold){share}"
        ]
        return Verdict(
            True, GUARD_ONLY, reasons, record.get("test"), base_record.get("test"), None, rules
        )
    if record.get("test_data") is not None and base_record.get("test_data") == record["test_data"]:
        source = f"{SERVED_TEST_CSV} at {base}"
        champion_predictions = aligned(
            parse_predictions(git_show(base, SERVED_TEST_CSV, root), source), predictions, source
        )
        champion_threshold = base_record["model"]["threshold"]
        baseline = f"served metrics on {base}"
    else:
        champion_predictions, champion_threshold = rescore_champion(
            base, root, predictions.files, predictions.labels
        )
        baseline = "re-scored on this test split"
    threshold = record["model"]["threshold"]
    challenger = classification_metrics(predictions.labels, predictions.probabilities, threshold)
    champion = classification_metrics(
        champion_predictions.labels, champion_predictions.probabilities, champion_threshold
    )
    comparison = paired_comparison(
        predictions.correct(threshold),
        champion_predictions.correct(champion_threshold),
        int(rules["bootstrap_resamples"]),
    )
    passed, reasons = decide(challenger, champion, comparison, rules)
    return Verdict(passed, baseline, reasons, challenger, champion, comparison, rules)


def against_base(
    name: str, doc: str, default: str, what: str, argv: list[str] | None, json_out: bool = False
):
    """The arguments of a command that compares with a ``--base`` revision (``what`` it is;
    ``json_out``: and takes ``--json``), and a function that runs ``decide(base)``: its result, or
    None after printing ``<name>: error:`` for a served record or a params.yaml that cannot be
    trusted (the command then exits 2)."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default=default, help=what)
    if json_out:
        parser.add_argument("--json", type=Path, help="also write the verdict here")
    args = parser.parse_args(argv)

    def run(decide):
        try:
            return decide(args.base)
        except (MetricsError, ParamsError) as exc:
            print(f"{name}: error: {exc}", file=sys.stderr)
            return None

    return args, run


def main(argv: list[str] | None = None) -> int:
    what = "the champion's git revision"
    args, run = against_base("gate", __doc__, "origin/main", what, argv, json_out=True)
    verdict = run(run_gate)
    if verdict is None:
        return 2
    if args.json:
        args.json.write_text(json.dumps(verdict.as_dict(), indent=2) + "\n")
    print(f"gate: {'PASS' if verdict.passed else 'FAIL'} (baseline: {verdict.baseline})")
    for reason in verdict.reasons:
        print(f"  - {reason}")
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
