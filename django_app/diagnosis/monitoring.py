"""What staff watch for drift: volume, share predicted PNEUMONIA, the probability
distribution, and how often clinicians agree with the model, per model version; of real
traffic only (synthetic predictions, the deploy's smoke test, are counted apart)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from django.db.models import Count, F, Q
from django.db.models.functions import TruncDate
from django.utils import timezone

from diagnosis.models import Feedback, Prediction

BINS = 10


@dataclass
class VersionAgreement:
    model_version: str
    feedback: int
    agreed: int

    @property
    def rate(self) -> float:
        return self.agreed / self.feedback if self.feedback else 0.0


@dataclass
class Summary:
    days: list[date]
    per_day: list[int]
    pneumonia_share: list[float | None]  # None on days without predictions
    histogram: list[int]  # predictions per probability bin [0, 0.1), ..., [0.9, 1.0]
    agreement: list[VersionAgreement]
    total: int
    synthetic: int  # the smoke test's and other synthetic accounts' predictions, not counted


def summarize(days: int = 30, today: date | None = None) -> Summary:
    today = today or timezone.localdate()
    start = today - timedelta(days=days - 1)
    window = Prediction.objects.filter(created_at__date__gte=start, created_at__date__lte=today)
    recent = window.filter(synthetic=False)
    by_day = {
        row["day"]: row
        for row in recent.annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(n=Count("id"), pneumonia=Count("id", filter=Q(label="PNEUMONIA")))
    }
    calendar = [start + timedelta(days=i) for i in range(days)]
    per_day = [by_day[d]["n"] if d in by_day else 0 for d in calendar]
    share = [by_day[d]["pneumonia"] / by_day[d]["n"] if d in by_day else None for d in calendar]
    histogram = [0] * BINS
    for p in recent.values_list("probability", flat=True).iterator():
        histogram[min(int(p * BINS), BINS - 1)] += 1
    agreement = [
        VersionAgreement(row["prediction__model_version"], row["n"], row["agreed"])
        for row in Feedback.objects.filter(prediction__synthetic=False)
        .values("prediction__model_version")
        .annotate(n=Count("id"), agreed=Count("id", filter=Q(true_label=F("prediction__label"))))
        .order_by("prediction__model_version")
    ]
    synthetic = window.filter(synthetic=True).count()
    return Summary(calendar, per_day, share, histogram, agreement, sum(per_day), synthetic)
