"""The pull request's model report (markdown), which CML posts as one comment.

    python -m pneumonia.report --base origin/main --out report.md

Holds: the gate's verdict, the served model's test metrics on this branch against the base
branch's champion with deltas, the paired comparison on the same test images (decisions flipped
each way, McNemar, bootstrap interval), the data version change, the parameters that changed, and
the aggregate plots (ROC, PR, confusion matrix as images under metrics/figures; never an X-ray).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from pneumonia.gate import (
    COMPARED,
    MetricsError,
    Verdict,
    add_judged_arguments,
    git_show,
    run_gate,
)
from pneumonia.params import ParamsError, as_dict
from pneumonia.params import load as load_params
from pneumonia.tracking import flatten_params

NAMES = {
    "accuracy": "Accuracy",
    "sensitivity": "Sensitivity (recall)",
    "specificity": "Specificity",
    "f1": "F1",
    "roc_auc": "ROC AUC",
}
FIGURES = (
    ("ROC", "roc.png"),
    ("Precision-recall", "pr.png"),
    ("Confusion matrix", "confusion.png"),
)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def metrics_table(challenger: dict[str, Any], champion: dict[str, Any] | None) -> list[str]:
    lines = ["| metric | base | this PR | change |", "|---|---:|---:|---:|"]
    for key in COMPARED:
        new, old = challenger.get(key), None if champion is None else champion.get(key)
        change = "new" if champion is None else "-" if None in (new, old) else f"{new - old:+.4f}"
        lines.append(f"| {NAMES[key]} | {_number(old)} | {_number(new)} | {change} |")
    threshold_old = "-" if champion is None else f"{champion['threshold']:.4f}"
    lines.append(
        f"| Threshold (from validation) | {threshold_old} | {challenger['threshold']:.4f} | |"
    )
    return lines


def comparison_lines(comparison: dict[str, Any] | None) -> list[str]:
    """The paired comparison, in words a reviewer can weigh."""
    if comparison is None:
        return []
    low, high = comparison["bootstrap_ci95"]
    return [
        f"### The two models on the same {comparison['n']} test images",
        "",
        "| | count |",
        "|---|---:|",
        f"| fixed: the champion was wrong, this model is right | {comparison['fixed']} |",
        f"| broken: the champion was right, this model is wrong | {comparison['broken']} |",
        f"| accuracy difference | {comparison['accuracy_difference']:+.4f} |",
        f"| exact McNemar p-value | {comparison['mcnemar_p']:.3g} |",
        f"| paired bootstrap 95% interval | [{low:+.4f}, {high:+.4f}] |",
        "",
    ]


def behaviour_lines(behaviour: dict[str, Any] | None, rules: dict[str, Any]) -> list[str]:
    """The behavioural checks of the served bundle (pneumonia.behaviour) as a table."""
    if not behaviour:
        return []
    limits = rules.get("behaviour", {})
    mark = {True: ":white_check_mark:", False: ":x:"}
    lines = [
        "### Behaviour of the served bundle",
        "",
        "| check | measured | limit | |",
        "|---|---:|---:|---|",
    ]
    for name, r in (behaviour.get("invariance") or {}).items():
        lines.append(
            f"| invariance: {name} | {r['flipped']} of {r['n']} decisions flipped "
            f"({r['rate']:.1%}; mean probability change {r['mean_probability_change']:.4f}) "
            f"| at most {limits.get('max_flip_rate', 0):.1%} | {mark[r['passed']]} |"
        )
    d = behaviour.get("directional")
    if d is not None:
        measured = f"{d['refused']:.1%} of {d['n']} refused" if d["guard"] else "no guard"
        lines.append(
            f"| directional: non-X-rays refused by the guard | {measured} "
            f"| at least {limits.get('min_refused', 0):.1%} | {mark[d['passed']]} |"
        )
    e = behaviour.get("easy")
    if e is not None:
        lines.append(
            f"| minimum functionality: the champion's easy cases answered wrong "
            f"| {e['wrong']} of {e['n']} ({e['rate']:.1%}) "
            f"| at most {limits.get('max_easy_errors', 0):.1%} | {mark[e['passed']]} |"
        )
    return [*lines, ""]


def params_diff(base: str, root: Path) -> list[str]:
    here = flatten_params(as_dict(load_params(root / "params.yaml")))
    raw = git_show(base, "params.yaml", root)
    there = flatten_params(yaml.safe_load(raw) or {}) if raw else {}
    changed = sorted(k for k in here.keys() | there.keys() if here.get(k) != there.get(k))
    if not changed:
        return ["No parameter changed."]
    lines = ["| parameter | main | this PR |", "|---|---|---|"]
    lines += [f"| `{k}` | {there.get(k, '-')} | {here.get(k, '-')} |" for k in changed]
    return lines


def data_change(base: str, root: Path) -> str:
    """The data each model was trained on: the data version in the prepare stage's record of
    dvc.lock (else chest_xray.dvc), on the base branch and here. A retrain after new data was
    committed to main has the same chest_xray.dvc as main, but not the same training data."""

    def trained_on(lock: str | None, dvc_file: str | None) -> dict[str, Any]:
        stages = (yaml.safe_load(lock) or {}).get("stages", {}) if lock else {}
        for dep in stages.get("prepare", {}).get("deps", []):
            if dep.get("path") == "data/chest_xray":
                return dep
        outs = (yaml.safe_load(dvc_file) or {}).get("outs") if dvc_file else None
        return outs[0] if outs else {}

    def read(name: str) -> str | None:
        return (root / name).read_text() if (root / name).is_file() else None

    here = trained_on(read("dvc.lock"), read("chest_xray.dvc"))
    there = trained_on(git_show(base, "dvc.lock", root), git_show(base, "chest_xray.dvc", root))
    if here.get("md5") == there.get("md5"):
        return f"Data unchanged: `{here.get('md5')}` ({here.get('nfiles')} files)."
    return (
        f"Data changed: the base model was trained on `{there.get('md5', '-')}` "
        f"({there.get('nfiles', '-')} files), this one on `{here.get('md5')}` "
        f"({here.get('nfiles')} files)."
    )


def split_reuse(base: str, root: Path) -> str:
    """How many champions the base branch's history chose on the test split this model was
    scored on: every model merged on that split was picked by looking at it, so its figures
    are more optimistic the more often it has decided (adaptive overfitting)."""

    def fingerprint(text: str | None) -> str | None:
        try:
            return json.loads(text).get("test_data") if text else None
        except (ValueError, AttributeError):
            return None

    here_path = root / "metrics" / "served.json"
    here = fingerprint(here_path.read_text() if here_path.is_file() else None)
    if here is None:
        return "Test split: this branch records no fingerprint of its test data."
    log = subprocess.run(
        ["git", "log", "--format=%H", base, "--", "metrics/served.json"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    commits = log.stdout.split() if log.returncode == 0 else []
    chosen = sum(fingerprint(git_show(c, "metrics/served.json", root)) == here for c in commits)
    shallow = subprocess.run(
        ["git", "rev-parse", "--is-shallow-repository"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    counted = f"at least {chosen}" if shallow == "true" else str(chosen)
    if chosen == 0:
        return (
            f"Test split `{here[:12]}`: new, no champion on `{base}` was chosen on it; "
            "this is its first decision."
        )
    return (
        f"Test split `{here[:12]}`: {counted} champion(s) on `{base}` were chosen on it before "
        "this decision (pull requests that failed the gate looked at it too and are not "
        "counted). Each reuse makes its figures more optimistic: new test cases "
        "(`python -m pneumonia.ingest --split test`) renew it."
    )


def served_model(bundle_dir: Path) -> str | None:
    """One line on what the bundle serves: the INT8 model's test accuracy beside the trained
    model's (the metrics above), or the float graph; None without a bundle."""
    manifest_path, onnx_path = bundle_dir / "model.json", bundle_dir / "model.onnx"
    if not manifest_path.is_file() or not onnx_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text())
    size = onnx_path.stat().st_size / 2**20
    quantized = manifest.get("quantization")
    if not quantized:
        line = f"Served model: float32 ONNX, {size:.1f} MiB, version `{manifest.get('version')}`."
    else:
        line = (
            f"Served model: INT8 ONNX, {size:.1f} MiB, version `{manifest.get('version')}`: test "
            f"accuracy {quantized['test_accuracy']:.4f} (trained model "
            f"{quantized['test_accuracy_float']:.4f}), {quantized['test_decisions_changed']} of "
            f"{quantized['test_images']} test decisions changed by quantisation."
        )
    fitted_on = (manifest.get("calibration") or {}).get("fitted_on")
    if fitted_on:
        line += f" Probabilities calibrated on {fitted_on}."
    guard = manifest.get("guard") or {}
    refused = guard.get("refused")
    if refused:
        splits = ("validation", "test")
        shares = ", ".join(f"{refused[k]:.1%} of {k}" for k in splits if refused.get(k) is not None)
        line += f" Its guard refuses {shares} X-rays as not chest X-rays"
        if refused.get("not_chest_xray") is not None:
            line += (
                f", and {refused['not_chest_xray']:.1%} of a catalogue of "
                f"{guard.get('catalogue_images')} images that are not chest X-rays"
            )
        line += "."
    else:
        line += " No guard: it answers every image, whatever it shows."
    return line


def training(train_json: Path) -> str | None:
    """The line on training from metrics/train.json: which epoch was kept, and the time."""
    if not train_json.is_file():
        return None
    summary = json.loads(train_json.read_text())
    kept = summary.get("kept_epoch", summary.get("best_epoch"))  # before train.select: best
    return (
        f"Training: kept epoch {kept} of {summary.get('epochs_run')} (lowest validation loss: "
        f"epoch {summary.get('best_epoch')}), {summary.get('train_seconds', 0) / 60:.1f} min."
    )


def render(verdict: Verdict, base: str, root: Path, figures_dir: str = "metrics/figures") -> str:
    """The report as markdown; image links are relative to the current directory (CML, run
    there, uploads them)."""
    status = "PASS" if verdict.passed else "FAIL"
    icon = ":white_check_mark:" if verdict.passed else ":x:"
    lines = [
        "## Model report",
        "",
        f"**Gate: {icon} {status}** (champion: {verdict.baseline})",
        "",
        *[f"- {reason}" for reason in verdict.reasons],
        "",
    ]
    if verdict.challenger is not None:
        lines += [
            f"### Test metrics of the served models against `{base}`",
            "",
            *metrics_table(verdict.challenger, verdict.champion),
            "",
        ]
    lines += [
        *comparison_lines(verdict.comparison),
        *behaviour_lines(verdict.behaviour, verdict.rules),
        "### Data",
        "",
        data_change(base, root),
        "",
        split_reuse(base, root),
        "",
        "### Parameters",
        "",
        *params_diff(base, root),
        "",
        "### Plots (test split)",
        "",
    ]
    for title, name in FIGURES:
        figure = root / figures_dir / name
        if figure.is_file():  # linked from where CML runs: this directory
            lines.append(f"![{title}](./{Path(os.path.relpath(figure)).as_posix()})")
    for line in (
        training(root / "metrics" / "train.json"),
        served_model(root / "models" / "bundle"),
    ):
        if line:
            lines += ["", line]
    lines += [
        "",
        "<sub>Aggregate metrics and plots only; no patient image leaves the runner.</sub>",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_judged_arguments(parser, "origin/main", "the champion's git revision")
    parser.add_argument("--out", type=Path, default=Path("report.md"))
    parser.add_argument("--json", type=Path, help="also write the gate's verdict here")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        verdict = run_gate(args.base, root, args.pull)
        text = render(verdict, args.base, root)
    except (MetricsError, ParamsError) as exc:
        # The comment must still say what went wrong: a report that fails silently is worse.
        text = f"## Model report\n\n**Gate: :x: ERROR**\n\n{exc}\n"
        args.out.write_text(text)
        print(f"report: error: {exc}", file=sys.stderr)
        return 2
    args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(verdict.as_dict(), indent=2) + "\n")
    print(f"report: wrote {args.out} (gate {'PASS' if verdict.passed else 'FAIL'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
