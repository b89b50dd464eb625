"""Service metrics in the Prometheus format (prometheus-client), served at ``/metrics`` to staff.

Under gunicorn every worker is a process of its own: ``gunicorn.conf.py`` gives them one
``PROMETHEUS_MULTIPROC_DIR`` (fresh at each start) and the scrape adds up what every worker
recorded, so a counter does not depend on which worker answers. Without that variable (tests,
``runserver``) the metrics live in this process. Labels are bounded: routes are URL patterns,
never paths; nothing about a patient or a file name is recorded.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

REQUESTS = Counter(
    "xray_http_requests",
    "HTTP requests answered, by URL pattern, method and status.",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "xray_http_request_duration_seconds",
    "Time to answer a request, by URL pattern.",
    ["route"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PREDICTIONS = Counter(
    "xray_predictions",
    "Predictions made, by answer, model version, source (web or api) and traffic (real, or "
    "synthetic: the deploy's smoke test and other accounts in the 'synthetic traffic' group).",
    ["label", "model_version", "source", "traffic"],
)
PROBABILITY = Histogram(
    "xray_prediction_probability",
    "Calibrated probability of PNEUMONIA of each real (not synthetic) prediction, by model "
    "version.",
    ["model_version"],
    buckets=tuple(round(0.05 * k, 2) for k in range(1, 21)),
)
GUARD_DISTANCE = Histogram(
    "xray_guard_distance",
    "The guard's feature distance of each real prediction (about 1 for images like the "
    "training ones; refused above the bundle's threshold), by model version.",
    ["model_version"],
    buckets=(0.5, 0.75, 1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 7.5, 10),
)
REFUSALS = Counter(
    "xray_refusals",
    "Uploads given no answer: kind guard (not a chest X-ray the model can answer for), format "
    "(not a readable image, no file), size (too large), time (too slow) or auth (a large body "
    "from someone not signed in); reason is the code.",
    ["kind", "reason"],
)
FEEDBACK = Counter(
    "xray_feedback",
    "Clinicians' verdicts on predictions: agreed or corrected, with or without consent.",
    ["verdict", "consent"],
)

REFUSAL_KINDS = {
    "too_large": "size",
    "length_required": "size",
    "too_slow": "time",
    "not_signed_in": "auth",
}


def route_of(request) -> str:
    """The URL pattern that served ``request`` (bounded), or ``unmatched``."""
    match = getattr(request, "resolver_match", None)
    return match.route if match is not None and match.route else "unmatched"


def count_prediction(prediction) -> None:
    """A recorded prediction, by its source and traffic; the distributions drift is read from
    count clinicians' (real) predictions only."""
    traffic = "synthetic" if prediction.synthetic else "real"
    version = prediction.model_version
    PREDICTIONS.labels(prediction.label, version, prediction.source, traffic).inc()
    if not prediction.synthetic:
        PROBABILITY.labels(version).observe(prediction.probability)
        if prediction.guard_distance is not None:
            GUARD_DISTANCE.labels(version).observe(prediction.guard_distance)


def count_refusal(code: str, guard_reason: str | None = None) -> None:
    if guard_reason is not None:
        REFUSALS.labels("guard", guard_reason).inc()
    else:
        REFUSALS.labels(REFUSAL_KINDS.get(code, "format"), code).inc()


class HeldUploads:
    """A collector read at scrape time: images held for consent or as heat maps right now (the
    table is the truth; no worker's memory is)."""

    def collect(self):
        from django.utils import timezone

        from diagnosis.models import HeldItem

        gauge = GaugeMetricFamily(
            "xray_held_items", "Display copies and heat maps held now, awaiting their expiry."
        )
        gauge.add_metric([], HeldItem.objects.filter(expires__gt=timezone.now()).count())
        yield gauge


class DriftSignals:
    """A collector read at scrape time: ``diagnosis.drift``'s signals of the served model (the
    database is the truth, whichever worker answers). ``xray_drift_state`` is what the alerting
    rules watch: 0 ok, 1 warn, 2 alert; a signal with too little data has no sample."""

    def collect(self):
        from diagnosis import drift

        report = drift.served_report()
        if report is None:
            return
        version = [report.model_version]
        state = GaugeMetricFamily(
            "xray_drift_state",
            "Drift signal state of the served model: 0 ok, 1 warn, 2 alert (diagnosis.drift).",
            labels=["signal", "model_version"],
        )
        value = GaugeMetricFamily(
            "xray_drift_value",
            "Drift signal value: KS statistic for distributions, the share or rate, the "
            "estimated accuracy.",
            labels=["signal", "model_version"],
        )
        p_value = GaugeMetricFamily(
            "xray_drift_p_value",
            "p-value of the signal's test against the bundle's reference.",
            labels=["signal", "model_version"],
        )
        for signal in report.signals:
            if signal.level is not None:
                state.add_metric([signal.name, *version], signal.level)
            if signal.value is not None:
                value.add_metric([signal.name, *version], signal.value)
            if signal.p_value is not None:
                p_value.add_metric([signal.name, *version], signal.p_value)
        window = GaugeMetricFamily(
            "xray_drift_window",
            "What the signals are computed on: recent real predictions, refusals and "
            "clinicians' verdicts of the served model.",
            labels=["kind", "model_version"],
        )
        for kind, n in (
            ("predictions", report.predictions),
            ("refusals", report.refusals),
            ("feedback", report.feedback),
        ):
            window.add_metric([kind, *version], n)
        has_reference = GaugeMetricFamily(
            "xray_drift_reference_images",
            "Test images in the served bundle's drift reference (0: it records none).",
            labels=["model_version"],
        )
        has_reference.add_metric(version, report.reference_images or 0)
        ready = GaugeMetricFamily(
            "xray_feedback_ready",
            "Consented, labelled cases not yet exported for retraining (export_feedback).",
        )
        ready.add_metric([], report.feedback_ready)
        yield from (state, value, p_value, window, has_reference, ready)


_AT_SCRAPE = CollectorRegistry()
_AT_SCRAPE.register(HeldUploads())
_AT_SCRAPE.register(DriftSignals())


def exposition() -> tuple[bytes, str]:
    """The scrape's body and content type: every worker's metrics under gunicorn (else this
    process's), then what is read from the database: held uploads and the drift signals."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry) + generate_latest(_AT_SCRAPE), CONTENT_TYPE_LATEST
