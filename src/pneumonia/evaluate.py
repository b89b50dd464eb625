"""Stage ``evaluate``: choose the decision threshold on validation, measure on the test split.

Probabilities are calibrated first, on the validation split, by minimising its negative
log-likelihood: ``platt`` fits p = sigmoid(scale * margin + bias) on the logit margin
(PNEUMONIA minus NORMAL logit), which also undoes the prior shift of class-weighted training;
``temperature`` fits the scale only (bias 0); ``none`` keeps softmax (scale 1, bias 0).
Writes ``metrics/val.json`` and ``metrics/test.json`` (accuracy, precision, sensitivity,
specificity, F1, ROC AUC, PR AUC, confusion counts, threshold, expected calibration error before
and after calibration, the temperature), the curves for ``dvc plots`` under ``metrics/plots/``
(ROC, PR, confusion, reliability), the same as PNG under ``metrics/figures/``, and the
misclassified test files by class (names only) in ``metrics/test_errors.csv``. The test split
never influences the threshold or the temperature.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from pneumonia import config, serving, tracking
from pneumonia.metrics import classification_metrics
from pneumonia.model import load_checkpoint, predict_logits
from pneumonia.params import EvaluateParams, ParamsError
from pneumonia.params import load as load_params
from pneumonia.prepared import PreparedSplit, load_split
from pneumonia.serving import positive_probability

THRESHOLD_METHODS = ("min_sensitivity", "youden")
CALIBRATIONS = ("platt", "temperature", "none")
ECE_BINS = 15


POSITIVE = config.LABELS.index(config.POSITIVE_LABEL)


def calibrated_probability(logits: np.ndarray, scale: float, bias: float) -> np.ndarray:
    """sigmoid(scale * margin + bias): the served probability of PNEUMONIA (``predict``'s)."""
    return serving.calibrated_probability(logits, scale, bias, POSITIVE)


def _fit_margin(
    logits: np.ndarray, labels: np.ndarray, bias: bool, scale_bounds: tuple[float, float]
) -> tuple[float, float]:
    """(scale, bias) minimising the negative log-likelihood of sigmoid(scale * margin + bias),
    the bias held at 0 unless ``bias``."""
    from scipy.optimize import minimize

    x, y = serving.logit_margin(logits, POSITIVE), np.asarray(labels, np.float64)
    if len(np.unique(y)) != 2:
        raise ValueError("fitting a calibration needs both classes in the validation split")

    def nll(params: np.ndarray) -> float:
        z = params[0] * x + (params[1] if bias else 0.0)
        return float(np.mean(np.logaddexp(0.0, z) - y * z))

    start, bounds = [1.0], [scale_bounds]
    if bias:
        start, bounds = [1.0, 0.0], [scale_bounds, (-50.0, 50.0)]
    result = minimize(nll, np.array(start), method="L-BFGS-B", bounds=bounds)
    return float(result.x[0]), float(result.x[1]) if bias else 0.0


def fit_platt(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(scale, bias) of sigmoid(scale * margin + bias), by maximum likelihood."""
    return _fit_margin(logits, labels, bias=True, scale_bounds=(1e-3, 100.0))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the mean negative log-likelihood of softmax(logits / T), which for
    two classes is sigmoid(margin / T): the scale-only fit."""
    scale, _ = _fit_margin(logits, labels, bias=False, scale_bounds=(1 / 20.0, 1 / 0.05))
    return 1.0 / scale


def reliability(labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS):
    """Per equal-width bin of the positive-class probability: (mean probability, observed
    positive rate, count), for the bins that hold any image."""
    labels, probabilities = np.asarray(labels), np.asarray(probabilities, np.float64)
    index = np.minimum((probabilities * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        inside = index == b
        if inside.any():
            rows.append(
                (
                    float(probabilities[inside].mean()),
                    float(labels[inside].mean()),
                    int(inside.sum()),
                )
            )
    return rows


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS
) -> float:
    """Count-weighted mean |mean probability - observed positive rate| over the bins."""
    rows = reliability(labels, probabilities, bins)
    total = sum(n for _, _, n in rows)
    return float(sum(n * abs(p - y) for p, y, n in rows) / total) if total else 0.0


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
    _write_csv(
        out / "reliability.csv",
        ["mean_probability", "observed_positive_rate", "images"],
        reliability(labels, probabilities),
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
    labels: np.ndarray,
    probabilities: np.ndarray,
    metrics: dict[str, Any],
    out: Path,
    calibration: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> list[Path]:
    """ROC, precision-recall and confusion matrix of the test split, and the reliability diagram
    of each split in ``calibration`` (name -> (labels, probabilities)), as PNG images, drawn
    by scikit-learn's Display classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

    out.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(5, 5))
    RocCurveDisplay.from_predictions(
        labels, probabilities, ax=ax, name="test", plot_chance_level=True
    )
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
    PrecisionRecallDisplay.from_predictions(labels, probabilities, ax=ax, name="test")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall (test)")
    ax.legend(loc="lower left")
    paths.append(_save(fig, out / "pr.png"))

    fig, ax = plt.subplots(figsize=(5, 4.5))
    matrix = np.array([[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]])
    ConfusionMatrixDisplay(matrix, display_labels=list(config.LABELS)).plot(
        ax=ax, cmap="Blues", colorbar=False
    )
    ax.set(xlabel="predicted", ylabel="actual", title="Confusion matrix (test)")
    paths.append(_save(fig, out / "confusion.png"))

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (split_labels, split_prob) in (calibration or {}).items():
        ece = expected_calibration_error(split_labels, split_prob)
        CalibrationDisplay.from_predictions(
            split_labels, split_prob, n_bins=ECE_BINS, ax=ax, name=f"{name} (ECE {ece:.3f})"
        )
    ax.set(
        xlabel="predicted probability of pneumonia",
        ylabel="observed share with pneumonia",
        title="Reliability",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left")
    paths.append(_save(fig, out / "reliability.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_errors(split: PreparedSplit, probabilities: np.ndarray, threshold: float, path: Path):
    """Misclassified files by name (never the images), grouped by actual class and most
    confident mistakes first: where to look when a model regresses."""
    predicted = (probabilities >= threshold).astype(int)
    rows = [
        (config.LABELS[a], f, config.LABELS[p], round(float(prob), 6))
        for f, a, p, prob in zip(split.files, split.labels, predicted, probabilities, strict=True)
        if a != p
    ]
    # NORMAL mistaken for PNEUMONIA: highest probability first; the reverse: lowest first.
    rows.sort(key=lambda r: (r[0], -r[3] if r[0] == config.LABELS[0] else r[3]))
    _write_csv(path, ["actual", "file", "predicted", "probability"], rows)


@dataclass(frozen=True)
class Fit:
    """What the stage fits on labelled cases: the calibration (``scale``, ``bias`` on the logit
    margin) and the decision threshold on calibrated probabilities."""

    scale: float
    bias: float
    threshold: float

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return calibrated_probability(logits, self.scale, self.bias)

    def score(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        """Metrics of these cases at the threshold, with the expected calibration error."""
        probabilities = self.probabilities(logits)
        metrics = classification_metrics(labels, probabilities, self.threshold)
        return metrics | {"ece": expected_calibration_error(labels, probabilities)}


def fit(
    logits: np.ndarray,
    labels: np.ndarray,
    params: EvaluateParams,
    calibrate_on: tuple[np.ndarray, np.ndarray] | None = None,
) -> Fit:
    """The calibration of ``params`` fitted on ``calibrate_on`` (logits, labels; by default
    these cases), then the threshold chosen on these cases' calibrated probabilities. The
    stage fits on validation; benchmarks fit the same way on other cases."""
    fit_logits, fit_labels = calibrate_on if calibrate_on is not None else (logits, labels)
    scale, bias = calibrate(fit_logits, fit_labels, params.calibration)
    probabilities = calibrated_probability(logits, scale, bias)
    threshold = choose_threshold(
        labels, probabilities, params.threshold_method, params.min_sensitivity
    )
    return Fit(scale, bias, threshold)


def calibrate(val_logits: np.ndarray, val_labels: np.ndarray, method: str) -> tuple[float, float]:
    """(scale, bias) of the calibration ``method``, fitted on validation (see the module doc)."""
    if method == "none":
        return 1.0, 0.0
    if method == "temperature":
        return 1.0 / fit_temperature(val_logits, val_labels), 0.0
    if method == "platt":
        return fit_platt(val_logits, val_labels)
    raise ValueError(f"evaluate.calibration: one of {CALIBRATIONS}, not {method!r}")


class EmptySiteError(RuntimeError):
    """``evaluate.calibrate_on: site`` without a site split to calibrate on."""


def calibration_cases(
    params: EvaluateParams, model, val: PreparedSplit, val_logits: np.ndarray
) -> tuple[np.ndarray, np.ndarray, str]:
    """The logits and labels the calibration is fitted on, and what they are: the validation
    split, or with ``calibrate_on: site`` the site's own labelled cases. The threshold is chosen
    on validation either way, so the decisions stay validation's (a recalibration is monotonic);
    docs/model-quality.md has why."""
    if params.calibrate_on == "validation":
        return val_logits, val.labels, f"validation ({len(val.labels)} images)"
    prepared = config.PREPARED_DIR / f"{config.SITE_SPLIT}.npz"
    if not prepared.is_file():
        raise EmptySiteError(
            "evaluate.calibrate_on is 'site' but there are no site cases: add the hospital's "
            "labelled images with `python -m pneumonia.ingest EXPORT_FOLDER --split site` "
            "(both classes), or set evaluate.calibrate_on: validation"
        )
    site = load_split(config.SITE_SPLIT)
    return predict_logits(model, site.images), site.labels, f"site ({len(site.labels)} images)"


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    try:
        params = load_params().evaluate
    except ParamsError as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 1
    model, _ = load_checkpoint(config.MODEL_FILE)
    val, test = load_split("val"), load_split("test")
    val_logits, test_logits = predict_logits(model, val.images), predict_logits(model, test.images)
    method = params.calibration
    try:
        fit_logits, fit_labels, fitted_on = calibration_cases(params, model, val, val_logits)
    except EmptySiteError as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 1
    fitted = fit(val_logits, val.labels, params, calibrate_on=(fit_logits, fit_labels))
    val_prob, test_prob = fitted.probabilities(val_logits), fitted.probabilities(test_logits)
    val_metrics = fitted.score(val_logits, val.labels)
    test_metrics = fitted.score(test_logits, test.labels)
    outcomes = ((val_metrics, val, val_logits), (test_metrics, test, test_logits))
    for metrics, split, logits in outcomes:
        metrics["calibration"] = method
        metrics["calibration_scale"], metrics["calibration_bias"] = fitted.scale, fitted.bias
        metrics["calibration_fitted_on"] = fitted_on
        metrics["ece_uncalibrated"] = expected_calibration_error(
            split.labels, positive_probability(logits)
        )

    config.METRICS_DIR.mkdir(parents=True, exist_ok=True)
    (config.METRICS_DIR / "val.json").write_text(json.dumps(val_metrics, indent=2) + "\n")
    (config.METRICS_DIR / "test.json").write_text(json.dumps(test_metrics, indent=2) + "\n")
    write_plots(test.labels, test_prob, test_metrics["threshold"], config.PLOTS_DIR)
    splits = {"validation": (val.labels, val_prob), "test": (test.labels, test_prob)}
    figures = write_figures(test.labels, test_prob, test_metrics, config.FIGURES_DIR, splits)
    write_errors(test, test_prob, test_metrics["threshold"], config.METRICS_DIR / "test_errors.csv")

    try:
        with tracking.resume_run() as mlflow:
            # "validation_", not "val_": train logs the per-epoch curves under val_*.
            for prefix, metrics in (("test", test_metrics), ("validation", val_metrics)):
                numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
                mlflow.log_metrics({f"{prefix}_{k}": v for k, v in numbers.items()})
            mlflow.set_tag("calibration", method)
            for figure in figures:
                mlflow.log_artifact(str(figure), artifact_path="figures")
            mlflow.log_artifact(str(config.METRICS_DIR / "test.json"), artifact_path="metrics")
    except tracking.TrackingUnavailableError as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 1
    shown = ("accuracy", "sensitivity", "specificity", "f1", "roc_auc", "threshold", "ece")
    print("evaluate (test): " + ", ".join(f"{k} {test_metrics[k]:.4f}" for k in shown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
