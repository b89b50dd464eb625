"""Classification metrics with PNEUMONIA as the positive class: the evaluate stage's, the served
model's (export) and the gate's, from labels, probabilities and a threshold alone."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


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
