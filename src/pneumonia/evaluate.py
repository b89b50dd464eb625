"""Stage ``evaluate``: choose the decision threshold on validation, measure on the test split.

Writes ``metrics/val.json`` and ``metrics/test.json`` (accuracy, precision, sensitivity,
specificity, F1, ROC AUC, PR AUC, confusion counts, threshold), the curves for ``dvc plots`` under
``metrics/plots/``, the same as PNG under ``metrics/figures/``, and the misclassified test files
(names only) in ``metrics/test_errors.csv``. The test split never influences the threshold.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from pneumonia import config, tracking
from pneumonia.model import load_checkpoint, positive_probability, predict_logits
from pneumonia.prepare import PreparedSplit, load_split

THRESHOLD_METHODS = ("min_sensitivity", "youden")


def confusion_counts(labels: np.ndarray, predicted: np.ndarray) -> dict[str, int]:
    """tp/fp/tn/fn with PNEUMONIA (1) as the positive class."""
    labels, predicted = np.asarray(labels).astype(bool), np.asarray(predicted).astype(bool)
    return {
        "tp": int(np.sum(labels & predicted)),
        "fp": int(np.sum(~labels & predicted)),
        "tn": int(np.sum(~labels & ~predicted)),
        "fn": int(np.sum(labels & ~predicted)),
    }


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, threshold: float
) -> dict[str, Any]:
    """Metrics of predicting PNEUMONIA when probability >= threshold."""
    labels = np.asarray(labels)
    counts = confusion_counts(labels, np.asarray(probabilities) >= threshold)
    tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]
    precision, sensitivity = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    both_classes = len(np.unique(labels)) == 2
    return {
        "accuracy": _ratio(tp + tn, len(labels)),
        "precision": precision,
        "recall": sensitivity,
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "roc_auc": float(roc_auc_score(labels, probabilities)) if both_classes else None,
        "pr_auc": float(average_precision_score(labels, probabilities)) if both_classes else None,
        "threshold": float(threshold),
        "n": int(len(labels)),
        **counts,
    }


def choose_threshold(
    labels: np.ndarray, probabilities: np.ndarray, method: str, min_sensitivity: float = 0.95
) -> float:
    """Decision threshold from validation data.

    ``min_sensitivity``: the highest threshold that still flags at least ``min_sensitivity`` of
    the positives (so specificity is as high as that sensitivity allows).
    ``youden``: the threshold maximising sensitivity + specificity - 1.
    """
    labels, probabilities = np.asarray(labels), np.asarray(probabilities, dtype=np.float64)
    if len(np.unique(labels)) != 2:
        raise ValueError("choosing a threshold needs both classes in the validation split")
    if method == "min_sensitivity":
        if not 0.0 < min_sensitivity <= 1.0:
            raise ValueError(f"min_sensitivity must be in (0, 1], got {min_sensitivity}")
        positives = np.sort(probabilities[labels == 1])[::-1]
        needed = math.ceil(min_sensitivity * len(positives) - 1e-9)
        return float(positives[needed - 1])
    if method == "youden":
        fpr, tpr, thresholds = roc_curve(labels, probabilities)
        best = int(np.argmax(tpr - fpr))
        return float(min(thresholds[best], 1.0))
    raise ValueError(f"evaluate.threshold_method: one of {THRESHOLD_METHODS}, not {method!r}")


def write_plots(labels: np.ndarray, probabilities: np.ndarray, threshold: float, out: Path) -> None:
    """CSV data for the DVC plots in dvc.yaml: ROC, precision-recall, confusion matrix."""
    out.mkdir(parents=True, exist_ok=True)
    fpr, tpr, roc_thr = roc_curve(labels, probabilities)
    _write_csv(
        out / "roc.csv",
        ["fpr", "tpr", "threshold"],
        zip(fpr, tpr, np.minimum(roc_thr, 1), strict=True),
    )
    precision, recall, pr_thr = precision_recall_curve(labels, probabilities)
    _write_csv(
        out / "pr.csv",
        ["recall", "precision", "threshold"],
        zip(recall[:-1], precision[:-1], pr_thr, strict=True),
    )
    predicted = (probabilities >= threshold).astype(int)
    _write_csv(
        out / "confusion.csv",
        ["actual", "predicted"],
        ((config.LABELS[a], config.LABELS[p]) for a, p in zip(labels, predicted, strict=True)),
    )


def _write_csv(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow(
                [round(float(v), 6) if isinstance(v, float | np.floating) else v for v in row]
            )


def write_figures(
    labels: np.ndarray, probabilities: np.ndarray, metrics: dict[str, Any], out: Path
) -> list[Path]:
    """ROC, precision-recall and confusion matrix of the test split as PNG images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(5, 5))
    fpr, tpr, _ = roc_curve(labels, probabilities)
    ax.plot(fpr, tpr, label=f"AUC {metrics['roc_auc']:.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
    ax.scatter(
        [1 - metrics["specificity"]],
        [metrics["sensitivity"]],
        color="red",
        zorder=3,
        label=f"threshold {metrics['threshold']:.3f}",
    )
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (test)")
    ax.legend(loc="lower right")
    paths.append(_save(fig, out / "roc.png"))

    fig, ax = plt.subplots(figsize=(5, 5))
    precision, recall, _ = precision_recall_curve(labels, probabilities)
    ax.plot(recall, precision, label=f"AP {metrics['pr_auc']:.3f}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall (test)")
    ax.legend(loc="lower left")
    paths.append(_save(fig, out / "pr.png"))

    fig, ax = plt.subplots(figsize=(5, 4.5))
    matrix = np.array([[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]])
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(value),
            ha="center",
            va="center",
            color="white" if value > matrix.max() / 2 else "black",
            fontsize=14,
        )
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=config.LABELS,
        yticklabels=config.LABELS,
        xlabel="predicted",
        ylabel="actual",
        title="Confusion matrix (test)",
    )
    paths.append(_save(fig, out / "confusion.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_errors(split: PreparedSplit, probabilities: np.ndarray, threshold: float, path: Path):
    """Misclassified files by name (never the images): where to look when a model regresses."""
    predicted = (probabilities >= threshold).astype(int)
    rows = [
        (f, config.LABELS[a], config.LABELS[p], round(float(prob), 6))
        for f, a, p, prob in zip(split.files, split.labels, predicted, probabilities, strict=True)
        if a != p
    ]
    _write_csv(path, ["file", "actual", "predicted", "probability"], sorted(rows))


def evaluate(
    val_probabilities: np.ndarray,
    val_labels: np.ndarray,
    test_probabilities: np.ndarray,
    test_labels: np.ndarray,
    params: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Threshold from validation; (validation metrics, test metrics) at that threshold."""
    threshold = choose_threshold(
        val_labels,
        val_probabilities,
        params["threshold_method"],
        float(params.get("min_sensitivity", 0.95)),
    )
    return (
        classification_metrics(val_labels, val_probabilities, threshold),
        classification_metrics(test_labels, test_probabilities, threshold),
    )


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    params = config.load_params()["evaluate"]
    model, _ = load_checkpoint(config.MODEL_FILE)
    val, test = load_split("val"), load_split("test")
    val_prob = positive_probability(predict_logits(model, val.images))
    test_prob = positive_probability(predict_logits(model, test.images))
    val_metrics, test_metrics = evaluate(val_prob, val.labels, test_prob, test.labels, params)

    config.METRICS_DIR.mkdir(parents=True, exist_ok=True)
    (config.METRICS_DIR / "val.json").write_text(json.dumps(val_metrics, indent=2) + "\n")
    (config.METRICS_DIR / "test.json").write_text(json.dumps(test_metrics, indent=2) + "\n")
    write_plots(test.labels, test_prob, test_metrics["threshold"], config.PLOTS_DIR)
    figures = write_figures(test.labels, test_prob, test_metrics, config.FIGURES_DIR)
    write_errors(test, test_prob, test_metrics["threshold"], config.METRICS_DIR / "test_errors.csv")

    try:
        with tracking.resume_run() as mlflow:
            mlflow.log_metrics({f"test_{k}": v for k, v in test_metrics.items() if v is not None})
            mlflow.log_metrics({f"val_{k}": v for k, v in val_metrics.items() if v is not None})
            for figure in figures:
                mlflow.log_artifact(str(figure), artifact_path="figures")
            mlflow.log_artifact(str(config.METRICS_DIR / "test.json"), artifact_path="metrics")
    except tracking.TrackingUnavailableError as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 1
    shown = ("accuracy", "sensitivity", "specificity", "f1", "roc_auc", "threshold")
    print("evaluate (test): " + ", ".join(f"{k} {test_metrics[k]:.4f}" for k in shown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
