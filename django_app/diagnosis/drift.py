"""Drift signals: recent real traffic of the served model compared with the reference its
bundle records (model.json ``reference``, measured by the export stage on the test split as
uploads are decided). Each signal is ok, warn or alert by the thresholds below, the one place
they are set; the monitoring page shows them and ``/metrics`` exposes them to Prometheus
(``monitoring/prometheus/rules.yml`` alerts on the states, never on thresholds of its own).

Distributions (the calibrated probability, the guard's feature distance, brightness and
contrast of the model's input) are compared with the two-sample Kolmogorov-Smirnov test;
shares (PNEUMONIA decisions, refusals, clinicians' agreement) with the exact binomial test
against the reference; the accuracy is estimated without labels from the calibrated
probabilities (a decision for PNEUMONIA is right with probability p, one for NORMAL with
1 - p: confidence-based performance estimation, as NannyML's CBPE) and compared with the
same estimate on the test split. Synthetic traffic (the smoke test) never counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import BooleanField, ExpressionWrapper, F, Q

from diagnosis.models import Feedback, Prediction, Refusal

# The window: the served model's most recent real predictions (and the refusals and
# clinicians' verdicts of the same period); below the minimum a signal has no state.
WINDOW = 200
MIN_PREDICTIONS = 30
MIN_FEEDBACK = 20
# p-values below which a test's difference is a warning / an alert. With 200 predictions a
# shift of the probability distribution by 0.2 (KS statistic) is p ~ 3e-5.
WARN_P = 0.01
ALERT_P = 0.001
# The estimated accuracy this far below the test split's estimate (absolute, 0-1).
WARN_ACCURACY_DROP = 0.05
ALERT_ACCURACY_DROP = 0.10
# Refusals are compared with the test split's refused share, or this, whichever is higher
# (a test split the guard refuses none of would make any refusal an alert).
MIN_REFUSAL_SHARE = 0.01
# Consented, labelled cases not yet exported: from this many on, alerts say a retrain with
# them is possible (export_feedback -> ingest -> retrain; docs/operations.md).
FEEDBACK_FOR_RETRAIN = 50

STATES = ("ok", "warn", "alert")
DISTRIBUTIONS = ("probability", "guard_distance", "brightness", "contrast")
SIGNALS = (*DISTRIBUTIONS, "pneumonia_share", "refusal_rate", "agreement", "estimated_accuracy")


@dataclass
class Signal:
    name: str
    value: float | None  # KS statistic, share, rate or accuracy; None: too little data
    reference: float | None  # the reference's value (shares, accuracies), where one applies
    p_value: float | None  # of the test, where the state comes from one
    count: int  # observations in the window
    state: str | None  # ok | warn | alert; None: too little data (or no reference)
    detail: str  # what the value is, for the page and the alerts

    @property
    def level(self) -> int | None:
        return None if self.state is None else STATES.index(self.state)


@dataclass
class Report:
    model_version: str
    reference_images: int | None  # None: the served bundle records no reference
    predictions: int
    refusals: int
    feedback: int
    feedback_ready: int  # consented, labelled, not yet exported
    signals: list[Signal]

    @property
    def worst(self) -> str | None:
        levels = [s.level for s in self.signals if s.level is not None]
        return STATES[max(levels)] if levels else None

    @property
    def retrain_ready(self) -> bool:
        return self.feedback_ready >= FEEDBACK_FOR_RETRAIN


def _from_p(p: float) -> str:
    return "alert" if p < ALERT_P else "warn" if p < WARN_P else "ok"


def _from_drop(drop: float) -> str:
    if drop > ALERT_ACCURACY_DROP:
        return "alert"
    return "warn" if drop > WARN_ACCURACY_DROP else "ok"


# The tests' distributions come from scipy.special (about 24 MB in a worker), not scipy.stats
# (about 72 MB: too much beside the model on a 512 MB dyno); test_drift.py holds both p-values
# to scipy.stats' own.


def ks_test(a: list[float], b: list[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and its p-value from Kolmogorov's distribution
    (within 7% of ``scipy.stats.ks_2samp``'s asymptotic one above p = 0.001)."""
    import numpy as np
    from scipy.special import kolmogorov

    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    values = np.concatenate([a, b])
    gap = np.abs(
        np.searchsorted(a, values, side="right") / len(a)
        - np.searchsorted(b, values, side="right") / len(b)
    )
    statistic = float(gap.max())
    root = (len(a) * len(b) / (len(a) + len(b))) ** 0.5
    # Stephens' finite-sample correction of the limit (Numerical Recipes, 14.3)
    return statistic, float(min(1.0, kolmogorov(statistic * (root + 0.12 + 0.11 / root))))


def binomial_test(hits: int, n: int, p: float, alternative: str) -> float:
    """The exact binomial test's p-value (``scipy.stats.binomtest``'s for "less" and "greater";
    "two-sided" doubles the smaller tail)."""
    from scipy.special import bdtr, bdtrc

    p = min(max(p, 1e-9), 1 - 1e-9)
    less = float(bdtr(hits, n, p))  # P(X <= hits)
    greater = float(bdtrc(hits - 1, n, p)) if hits > 0 else 1.0  # P(X >= hits)
    if alternative == "less":
        return less
    if alternative == "greater":
        return greater
    return min(1.0, 2 * min(less, greater))


def distribution_signal(name: str, observed: list[float], reference: list[float] | None) -> Signal:
    if not reference or len(observed) < MIN_PREDICTIONS:
        detail = "no reference in the bundle" if not reference else "too little traffic"
        return Signal(name, None, None, None, len(observed), None, detail)
    statistic, p = ks_test(observed, reference)
    detail = f"KS statistic {statistic:.3f} against {len(reference)} test images (p={p:.2g})"
    return Signal(name, statistic, None, p, len(observed), _from_p(p), detail)


def share_signal(
    name: str, hits: int, n: int, expected: float | None, alternative: str, least: int
) -> Signal:
    if expected is None or n < least:
        detail = "no reference in the bundle" if expected is None else "too little data"
        return Signal(name, None, expected, None, n, None, detail)
    p = binomial_test(hits, n, expected, alternative)
    detail = f"{hits} of {n} ({hits / n:.1%}) against {expected:.1%} on the test split (p={p:.2g})"
    return Signal(name, hits / n, expected, p, n, _from_p(p), detail)


def estimated_accuracy_signal(decisions: list[tuple[str, float]], ref: dict) -> Signal:
    """``decisions``: (label, probability of PNEUMONIA) of each prediction in the window."""
    reference = ref.get("estimated_accuracy")
    n = len(decisions)
    if reference is None or n < MIN_PREDICTIONS:
        detail = "no reference in the bundle" if reference is None else "too little traffic"
        return Signal("estimated_accuracy", None, reference, None, n, None, detail)
    estimate = sum(p if label == "PNEUMONIA" else 1 - p for label, p in decisions) / n
    drop = reference - estimate
    detail = (
        f"{estimate:.1%} estimated from the probabilities, {reference:.1%} on the test split"
        f" (whose real accuracy is {ref.get('accuracy', float('nan')):.1%})"
    )
    return Signal("estimated_accuracy", estimate, reference, None, n, _from_drop(drop), detail)


def report(model_version: str, reference: dict[str, Any] | None) -> Report:
    """The signals of ``model_version``'s recent real traffic against its bundle's
    ``reference`` (None: a bundle exported before references were recorded; no states)."""
    ref = reference or {}
    recent = list(
        Prediction.objects.filter(model_version=model_version, synthetic=False)
        .order_by("-created_at", "-id")
        .values_list(
            "created_at", "label", "probability", "guard_distance", "brightness", "contrast"
        )[:WINDOW]
    )
    # The refusals of the window's period; with fewer predictions than the window, all of
    # them (a guard that refuses everything leaves no predictions to date a window by).
    refused = Refusal.objects.filter(model_version=model_version, synthetic=False)
    if len(recent) == WINDOW:
        refused = refused.filter(created_at__gte=recent[-1][0])
    refusals = refused.count()
    verdicts = list(
        Feedback.objects.filter(
            prediction__model_version=model_version, prediction__synthetic=False
        )
        .order_by("-created_at")
        .annotate(agreed=ExpressionWrapper(Q(true_label=F("prediction__label")), BooleanField()))
        .values_list("agreed", flat=True)[:WINDOW]
    )
    columns = {"guard_distance": 3, "brightness": 4, "contrast": 5}
    signals = [distribution_signal("probability", [r[2] for r in recent], ref.get("probability"))]
    for name, column in columns.items():
        observed = [r[column] for r in recent if r[column] is not None]
        signals.append(distribution_signal(name, observed, ref.get(name)))
    pneumonia = sum(r[1] == "PNEUMONIA" for r in recent)
    signals.append(
        share_signal(
            "pneumonia_share",
            pneumonia,
            len(recent),
            ref.get("pneumonia_share"),
            "two-sided",
            MIN_PREDICTIONS,
        )
    )
    refused = None if "refused" not in ref else max(ref["refused"], MIN_REFUSAL_SHARE)
    signals.append(
        share_signal(
            "refusal_rate",
            refusals,
            refusals + len(recent),
            refused,
            "greater",
            MIN_PREDICTIONS,
        )
    )
    signals.append(
        share_signal(
            "agreement", sum(verdicts), len(verdicts), ref.get("accuracy"), "less", MIN_FEEDBACK
        )
    )
    signals.append(estimated_accuracy_signal([r[1:3] for r in recent], ref))
    ready = (
        Feedback.objects.filter(consent=True, exported_in__isnull=True, prediction__synthetic=False)
        .exclude(image_name="")
        .count()
    )
    return Report(
        model_version,
        ref.get("images"),
        len(recent),
        refusals,
        len(verdicts),
        ready,
        signals,
    )


def served_report() -> Report | None:
    """The served model's report; None when no model can be loaded."""
    from diagnosis.inference import get_model
    from pneumonia.serving import BundleError

    try:
        model = get_model()
    except BundleError:
        return None
    return report(model.version, model.manifest.get("reference"))


def report_json(report: Report, monitoring_url: str) -> dict[str, Any]:
    """The report as ``GET /api/v1/drift`` answers it (what the scheduled check reads)."""
    return {
        "model_version": report.model_version,
        "state": report.worst,
        "reference_images": report.reference_images,
        "window": {
            "predictions": report.predictions,
            "refusals": report.refusals,
            "feedback": report.feedback,
        },
        "feedback_ready": report.feedback_ready,
        "feedback_for_retrain": FEEDBACK_FOR_RETRAIN,
        "retrain_ready": report.retrain_ready,
        "monitoring_url": monitoring_url,
        "signals": [
            {
                "name": s.name,
                "state": s.state,
                "value": s.value,
                "reference": s.reference,
                "p_value": s.p_value,
                "count": s.count,
                "detail": s.detail,
            }
            for s in report.signals
        ],
    }
