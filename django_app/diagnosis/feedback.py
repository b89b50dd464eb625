"""Clinicians' feedback on their predictions, and the images they consent to keep.

At prediction time the metadata-free display copy of the upload is held (``diagnosis.held``)
for ``FEEDBACK_HOLD_SECONDS``; feedback with consent moves it to the image store under its content
hash, feedback without consent (or the clock) drops it. Nothing else of the image is kept.
"""

from __future__ import annotations

from django.conf import settings
from django.db import IntegrityError, transaction

from diagnosis import metrics
from diagnosis.held import held, hold, release
from diagnosis.models import LABEL_CHOICES, Feedback, Prediction, Refusal
from diagnosis.storage import StorageUnavailable, content_name, image_store

LABELS = [value for value, _ in LABEL_CHOICES]


class FeedbackRefused(Exception):
    """Feedback that cannot be taken; ``message`` says why, ``status`` is the HTTP status."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _held_key(prediction_id: int) -> str:
    return f"held-image:{prediction_id}"


def hold_image(prediction: Prediction, png: bytes) -> None:
    hold(_held_key(prediction.pk), prediction.user_id, png, settings.FEEDBACK_HOLD_SECONDS)


def visible_predictions(user):
    """The predictions ``user`` may see: their own; staff see everyone's."""
    queryset = Prediction.objects.select_related("user", "feedback")
    return queryset if user.is_staff else queryset.filter(user=user)


def visible_refusals(user):
    """The refused uploads ``user`` may see: their own; staff see everyone's."""
    queryset = Refusal.objects.select_related("user")
    return queryset if user.is_staff else queryset.filter(user=user)


def find_prediction(user, prediction_id) -> Prediction:
    """The prediction if ``user`` may see it, else ``FeedbackRefused`` 404 (which does not tell
    others' predictions from missing ones)."""
    try:
        return visible_predictions(user).get(pk=int(prediction_id))
    except (Prediction.DoesNotExist, ValueError, TypeError):
        raise FeedbackRefused(
            404, "not_found", f"You have no prediction {prediction_id}."
        ) from None


def give_feedback(user, prediction_id, true_label, consent: bool) -> Feedback:
    """Record ``user``'s verdict on their prediction; with ``consent``, keep its image."""
    if true_label not in LABELS:
        raise FeedbackRefused(
            400,
            "unknown_label",
            f"The label must be one of {', '.join(LABELS)}, not {true_label!r}.",
        )
    prediction = find_prediction(user, prediction_id)
    if prediction.user_id != user.pk:
        raise FeedbackRefused(
            403, "not_yours", "Only the clinician who made this prediction can give feedback on it."
        )
    if Feedback.objects.filter(prediction=prediction).exists():
        raise FeedbackRefused(
            409, "already_given", "Feedback on this prediction was already given."
        )
    png = None
    if consent:
        png = held(_held_key(prediction.pk), user.pk)
        if png is None:
            minutes = settings.FEEDBACK_HOLD_SECONDS // 60
            raise FeedbackRefused(
                410,
                "image_expired",
                f"The image is held for {minutes} minutes after the prediction and that time has "
                "passed. Give the feedback without consent, or upload the image again.",
            )
    try:
        with transaction.atomic():
            feedback = Feedback.objects.create(
                prediction=prediction,
                true_label=true_label,
                consent=bool(consent),
                image_name=content_name(png) if png else "",
            )
            if png:  # inside the transaction: a failed upload records no consent
                image_store().put(feedback.image_name, png)
    except IntegrityError:
        raise FeedbackRefused(
            409, "already_given", "Feedback on this prediction was already given."
        ) from None
    except StorageUnavailable:
        raise FeedbackRefused(
            503,
            "storage_unavailable",
            "The image could not be stored right now; nothing was recorded. Try again shortly.",
        ) from None
    release(_held_key(prediction.pk))
    metrics.FEEDBACK.labels(
        "agreed" if feedback.agrees else "corrected", "yes" if feedback.consent else "no"
    ).inc()
    return feedback
