"""The tables of docs/model-quality.md "Approaches side by side" from bench/approaches.sh's
output: per approach (mean ± sd over seeds, worst seed) and per seed, with what validation says
(the only split that may choose), and a compact JSON without the logits. A study run with
``--distill`` adds its students as the approach ``NAME: students``.

    python bench/approaches_table.py OUT_DIR [--prepared data/prepared] [--json summary.json]

Validation figures come from each run's validation logits and the labels of the prepared
validation split (the same ``prepare`` params as the runs): ROC AUC, and the negative
log-likelihood after the calibration the evaluate stage fits (``evaluate.calibration``); for
the last epoch's weights and for each weight average (``bench/seeds.py --ema``), the choices
that have validation logits of their own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from pneumonia.config import PREPARED_DIR
from pneumonia.evaluate import calibrate, calibrated_probability
from pneumonia.params import load as load_params
from pneumonia.prepared import load_split

METRICS = ("accuracy", "sensitivity", "specificity", "roc_auc", "ece")
CHOICES = ("last", "last_flip", "last_bn_target")


def validation_scores(logits: list, labels: np.ndarray, calibration: str) -> dict[str, float]:
    """Validation ROC AUC and calibrated negative log-likelihood of one run."""
    logits = np.asarray(logits, dtype=np.float64)
    scale, bias = calibrate(logits, labels, calibration)
    p = np.clip(calibrated_probability(logits, scale, bias), 1e-7, 1 - 1e-7)
    nll = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    return {"roc_auc": roc_auc_score(labels, logits[:, 1] - logits[:, 0]), "nll": float(nll)}


def summarize(study: dict, labels: np.ndarray, calibration: str, students: bool = False) -> dict:
    """One approach: its runs' (``students``: its distilled students') test scores and
    validation scores, its ensembles, no logits."""
    runs = [
        {
            "seed": r["seed"],
            "train_seconds": r["train_seconds"],
            "images_per_second": r["images_per_second"],
            "validation": validation_scores(r["logits"]["val"], labels, calibration),
            "test": r["test"],
        }
        | averaged_validation(r, labels, calibration)
        for r in study["students" if students else "runs"]
    ]
    ensembles = [] if students else study["ensembles"]
    return {"train": study["train"], "runs": runs, "ensembles": ensembles}


def averaged_validation(run: dict, labels: np.ndarray, calibration: str) -> dict:
    """``{"validation_of": {choice: scores}}`` for the choices other than the last epoch that
    have validation logits (the weight averages), else nothing."""
    found = {
        choice: validation_scores(run["logits"][f"val_{choice}"], labels, calibration)
        for choice in run["test"]
        if f"val_{choice}" in run["logits"]
    }
    return {"validation_of": found} if found else {}


def mean_sd_worst(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f} ({min(values):.3f})"


def tables(approaches: dict[str, dict]) -> list[str]:
    mean = statistics.mean
    lines = [
        "| approach | choice | val AUC | val NLL | test accuracy (worst) | sensitivity | "
        "specificity | ROC AUC | test ECE |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, a in approaches.items():
        for choice in dict.fromkeys([*CHOICES, *a["runs"][0]["test"]]):
            cells = [mean_sd_worst([r["test"][choice]["accuracy"] for r in a["runs"]])]
            cells += [f"{mean(r['test'][choice][m] for r in a['runs']):.3f}" for m in METRICS[1:]]
            val = "| "
            if choice == "last" or choice in a["runs"][0].get("validation_of", {}):
                found = [
                    r["validation"] if choice == "last" else r["validation_of"][choice]
                    for r in a["runs"]
                ]
                val = f"{mean(v['roc_auc'] for v in found):.4f} | "
                val += f"{mean(v['nll'] for v in found):.4f}"
            lines.append(f"| {name} | {choice} | {val} | " + " | ".join(cells) + " |")
        for ensemble in (e for e in a["ensembles"] if not e["flip"]):
            cells = " | ".join(f"{ensemble['test'][m]:.3f}" for m in METRICS)
            lines.append(f"| {name} | ensemble of {ensemble['seeds']} | | | {cells} |")
    lines += [
        "",
        "| approach | seed | train s | val AUC | val NLL | test accuracy | sensitivity | "
        "specificity | ROC AUC | test ECE |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, a in approaches.items():
        for r in a["runs"]:
            cells = " | ".join(f"{r['test']['last'][m]:.3f}" for m in METRICS)
            v = r["validation"]
            lines.append(
                f"| {name} | {r['seed']} | {r['train_seconds']} | {v['roc_auc']:.4f} | "
                f"{v['nll']:.4f} | {cells} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="bench/approaches.sh's output folder")
    parser.add_argument("--prepared", type=Path, default=PREPARED_DIR)
    parser.add_argument("--json", type=Path, help="write the compact summary here")
    args = parser.parse_args(argv)
    labels = np.asarray(load_split("val", args.prepared).labels)
    calibration = load_params().evaluate.calibration
    approaches = {}
    for path in sorted(args.out_dir.glob("*.json"), key=lambda p: (p.stem != "default", p.stem)):
        study = json.loads(path.read_text())
        if "runs" not in study:
            continue
        if len(study["runs"][0]["logits"]["val"]) != len(labels):
            parser.error(f"{path}: its validation split is not the one in {args.prepared}")
        approaches[path.stem] = summarize(study, labels, calibration)
        if study.get("students"):  # bench/seeds.py --distill
            approaches[f"{path.stem}: students"] = summarize(study, labels, calibration, True)
    if not approaches:
        parser.error(f"no bench/seeds.py results in {args.out_dir}")
    print("\n".join(tables(approaches)))
    if args.json:
        args.json.write_text(json.dumps(approaches, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
