"""The model gate: does the challenger (this work tree) beat the champion (the base branch)?

    python -m pneumonia.gate --base origin/main [--json gate.json]

Rules (``params.yaml`` section ``gate``): the challenger's test accuracy must be higher than the
champion's by more than ``min_accuracy_gain``, and its test sensitivity at least
``min_sensitivity``. Both are measured on the same test data: when the test split differs from
the base branch's (``metrics/data.json`` fingerprints), the champion's bundle, fetched through DVC
at the base revision, is re-scored on this work tree's test split. With no metrics on the base
branch the challenger passes as the first champion. Malformed or missing challenger metrics, or
malformed champion metrics, fail with exit status 2; a failed rule exits 1; a pass exits 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia import config

COMPARED = ("accuracy", "sensitivity", "specificity", "f1", "roc_auc")
REQUIRED = (*COMPARED, "threshold", "n")
TEST_METRICS = "metrics/test.json"
DATA_METRICS = "metrics/data.json"


class MetricsError(RuntimeError):
    """A metrics file that cannot be trusted; the message names the file and the problem."""


@dataclass
class Verdict:
    passed: bool
    baseline: str  # "metrics on <base>", "re-scored on this test split", "none"
    reasons: list[str] = field(default_factory=list)
    challenger: dict[str, Any] = field(default_factory=dict)
    champion: dict[str, Any] | None = None
    rules: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate_metrics(raw: str | None, source: str) -> dict[str, Any]:
    """Parse and check a ``test.json``: every compared metric present, numeric, within [0, 1]."""
    if raw is None:
        raise MetricsError(f"{source} is missing: run `dvc repro` (or `dvc pull`) first")
    try:
        metrics = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise MetricsError(f"{source} is not valid JSON ({exc})") from None
    if not isinstance(metrics, dict):
        raise MetricsError(f"{source} must hold a JSON object, not {type(metrics).__name__}")
    missing = [k for k in REQUIRED if k not in metrics]
    if missing:
        raise MetricsError(f"{source} lacks {', '.join(missing)}")
    for key in (*COMPARED, "threshold"):
        value = metrics[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise MetricsError(f"{source}: {key} must be a number in [0, 1], got {value!r}")
    if not isinstance(metrics["n"], int) or metrics["n"] <= 0:
        raise MetricsError(f"{source}: n must be a positive integer, got {metrics['n']!r}")
    return metrics


def git_show(rev: str, path: str, root: Path) -> str | None:
    """A file's content at ``rev``, or None when it does not exist there."""
    result = subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True, text=True
    )
    return result.stdout if result.returncode == 0 else None


def rev_exists(rev: str, root: Path) -> bool:
    result = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=root,
        capture_output=True,
    )  # fmt: skip
    return result.returncode == 0


def fingerprint_of_test(raw: str | None) -> str | None:
    try:
        return json.loads(raw)["fingerprints"]["test"] if raw else None
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def rescore_champion(base: str, root: Path) -> dict[str, Any]:
    """Score the base revision's bundle on this work tree's test split (same files, decoded
    from data/chest_xray at the champion's own input size, with its own threshold)."""
    from dvc.api import DVCFileSystem

    from pneumonia.data import load_image, resize
    from pneumonia.evaluate import classification_metrics
    from pneumonia.predict import Bundle
    from pneumonia.prepare import load_split

    with tempfile.TemporaryDirectory() as tmp:
        fs = DVCFileSystem(str(root), rev=base)
        try:
            fs.get("models/bundle", str(Path(tmp) / "bundle"), recursive=True)
        except Exception as exc:  # DVC raises a variety of errors for missing data
            raise MetricsError(
                f"cannot fetch the champion's models/bundle at {base} to re-score it on the new "
                f"test data ({exc.__class__.__name__}: {exc}); is the DVC remote reachable?"
            ) from exc
        bundle = Bundle(Path(tmp) / "bundle")
        test = load_split("test", root / "data" / "prepared")
        images = np.stack(
            [resize(load_image(root / "data" / "chest_xray" / f), bundle.size) for f in test.files]
        )
        return classification_metrics(test.labels, bundle.probabilities(images), bundle.threshold)


def decide(
    challenger: dict[str, Any], champion: dict[str, Any] | None, rules: dict[str, float]
) -> tuple[bool, list[str]]:
    """Apply the gate's rules; return (passed, reasons)."""
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
    if champion is None:
        reasons.append("no champion on the base branch: this model becomes the first champion")
        return passed, reasons
    gain = challenger["accuracy"] - champion["accuracy"]
    needed = float(rules.get("min_accuracy_gain", 0.0))
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
    return passed, reasons


def run_gate(base: str, root: Path | None = None) -> Verdict:
    """Compare this work tree's model with the one at ``base``."""
    root = root or config.ROOT
    rules = config.load_params(root / "params.yaml")["gate"]
    challenger_file = root / TEST_METRICS
    challenger = validate_metrics(
        challenger_file.read_text() if challenger_file.is_file() else None, TEST_METRICS
    )
    if not rev_exists(base, root):
        raise MetricsError(f"the base revision {base!r} does not exist (fetch it first)")
    champion_raw = git_show(base, TEST_METRICS, root)
    if champion_raw is None:
        passed, reasons = decide(challenger, None, rules)
        return Verdict(passed, "none", reasons, challenger, None, rules)
    champion = validate_metrics(champion_raw, f"{TEST_METRICS} at {base}")
    data_here = (root / DATA_METRICS).read_text() if (root / DATA_METRICS).is_file() else None
    same_test = fingerprint_of_test(git_show(base, DATA_METRICS, root)) == fingerprint_of_test(
        data_here
    )
    if same_test and fingerprint_of_test(data_here) is not None:
        baseline = f"metrics on {base}"
    else:
        champion = rescore_champion(base, root)
        baseline = "re-scored on this test split"
    passed, reasons = decide(challenger, champion, rules)
    return Verdict(passed, baseline, reasons, challenger, champion, rules)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="origin/main", help="the champion's git revision")
    parser.add_argument("--json", type=Path, help="also write the verdict here")
    args = parser.parse_args(argv)
    try:
        verdict = run_gate(args.base)
    except MetricsError as exc:
        print(f"gate: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(verdict.as_dict(), indent=2) + "\n")
    print(f"gate: {'PASS' if verdict.passed else 'FAIL'} (baseline: {verdict.baseline})")
    for reason in verdict.reasons:
        print(f"  - {reason}")
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
