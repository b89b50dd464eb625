"""What the app stores: predictions (never the image), clinicians' feedback, API tokens, the
record of each export of consented images to the training dataset, and the PACS sites with the
DICOM instances they sent (by UID: never a patient's name, ID or birth date)."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

LABEL_CHOICES = [("NORMAL", "NORMAL"), ("PNEUMONIA", "PNEUMONIA")]


# Accounts whose traffic is not clinicians' (the deploy's smoke test): `add_clinician
# --synthetic`, or this group in the admin. Their uploads are recorded, but no chart counts them.
SYNTHETIC_GROUP = "synthetic traffic"


def is_synthetic(user) -> bool:
    return user.groups.filter(name=SYNTHETIC_GROUP).exists()


class Upload(models.Model):
    """What is kept of every upload: who sent it, when, through which door, to which model,
    and the file by its hash and size only (never the image)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="%(class)ss"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    source = models.CharField(
        max_length=8, choices=[("web", "web"), ("api", "api"), ("pacs", "pacs")]
    )
    model_version = models.CharField(max_length=64)
    image_sha256 = models.CharField(
        max_length=64, db_index=True, help_text="sha256 of the uploaded file's bytes"
    )
    case_reference = models.CharField(
        max_length=40,
        blank=True,
        db_index=True,
        help_text="optional, as the clinician typed it, to find the case again; never a name",
    )
    image_width = models.PositiveIntegerField()
    image_height = models.PositiveIntegerField()
    synthetic = models.BooleanField(
        default=False,
        help_text=f"sent by an account in the {SYNTHETIC_GROUP!r} group (the deploy's smoke "
        "test): kept out of the monitoring page and labelled apart in the metrics",
    )

    class Meta:
        abstract = True


class Prediction(Upload):
    """One prediction: which model said what about the upload."""

    model_sha256 = models.CharField(max_length=64)
    label = models.CharField(max_length=16, choices=LABEL_CHOICES)
    probability = models.FloatField(help_text="of PNEUMONIA, as the model reported it")
    threshold = models.FloatField()
    # What drift monitoring compares with the bundle's reference (diagnosis.drift); empty for
    # predictions made before it was recorded, and the distance for bundles without a guard.
    guard_distance = models.FloatField(
        null=True, blank=True, help_text="the guard's feature distance (about 1: like training)"
    )
    brightness = models.FloatField(null=True, blank=True, help_text="mean of the model's input")
    contrast = models.FloatField(null=True, blank=True, help_text="its standard deviation")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["user", "-created_at"])]

    @classmethod
    def record(cls, result, model_sha256: str, **upload) -> Prediction:
        """Store the model's ``result`` (``inference.Result``) for an upload's ``upload`` fields."""
        return cls.objects.create(
            model_sha256=model_sha256,
            label=result.label,
            probability=result.probability,
            threshold=result.threshold,
            guard_distance=result.guard_distance,
            brightness=result.brightness,
            contrast=result.contrast,
            **upload,
        )

    def __str__(self) -> str:
        return f"#{self.pk} {self.label} {self.probability:.3f} ({self.created_at:%Y-%m-%d %H:%M})"


REFUSAL_CHOICES = [
    ("too_small", "far smaller than a radiograph"),
    ("uniform", "nearly uniform"),
    ("colour", "a colour image"),
    ("unlike_training", "unlike the chest X-rays the model knows"),
]


class Refusal(Upload):
    """An upload the model gave no answer to because it is not a chest X-ray like those it
    learned from (``serving.NotAChestXray``): recorded so that the history shows the attempt,
    with no label and no probability."""

    reason = models.CharField(max_length=16, choices=REFUSAL_CHOICES)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["user", "-created_at"])]

    def __str__(self) -> str:
        return f"#{self.pk} refused: {self.reason} ({self.created_at:%Y-%m-%d %H:%M})"


class DatasetExport(models.Model):
    """One run of the export: the folder name it wrote and how many images it held."""

    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.CharField(max_length=150, help_text="user name, or 'command'")
    name = models.CharField(max_length=100, unique=True)
    image_count = models.PositiveIntegerField()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.image_count} images)"


class Feedback(models.Model):
    """A clinician's verdict on their own prediction; at most one per prediction."""

    prediction = models.OneToOneField(Prediction, on_delete=models.CASCADE, related_name="feedback")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    true_label = models.CharField(max_length=16, choices=LABEL_CHOICES)
    consent = models.BooleanField(help_text="the image may be kept and used for retraining")
    image_name = models.CharField(
        max_length=80,
        blank=True,
        default="",
        help_text="stored image (content hash), only with consent",
    )
    exported_in = models.ForeignKey(
        DatasetExport, null=True, blank=True, on_delete=models.SET_NULL, related_name="feedback"
    )

    class Meta:
        ordering = ["-created_at"]

    @property
    def agrees(self) -> bool:
        return self.true_label == self.prediction.label

    def __str__(self) -> str:
        return f"feedback on #{self.prediction_id}: {self.true_label}"


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiToken(models.Model):
    """A personal API token. Only its sha256 is stored; the token is shown once at creation."""

    PREFIX = "xr_"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    key_hash = models.CharField(max_length=64, unique=True)
    hint = models.CharField(max_length=12, help_text="first characters, to recognise it")
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    @classmethod
    def issue(cls, user, name: str) -> tuple[ApiToken, str]:
        """Create a token for ``user``; returns it and the raw secret (not stored anywhere)."""
        raw = cls.PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(
            user=user, name=name[:100] or "token", key_hash=hash_token(raw), hint=raw[:10]
        )
        return token, raw

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])

    def __str__(self) -> str:
        return f"{self.name} ({self.hint}...)"


class LoginFailure(models.Model):
    """Failed sign-ins per throttle key (user name, address, or both) within a window; counted
    with one atomic upsert so that parallel attempts cannot share a slot."""

    key = models.CharField(max_length=300, unique=True)
    count = models.PositiveIntegerField(default=0)
    window_ends = models.DateTimeField()


class HeldItem(models.Model):
    """An image kept a short while for one user: the display copy awaiting their consent, or
    the API's heat map behind its link. Its own expiry, never evicted early (diagnosis.held)."""

    key = models.CharField(max_length=64, unique=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="held_items"
    )
    data = models.BinaryField()
    expires = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.key} until {self.expires:%Y-%m-%d %H:%M:%S}"


class PacsSite(models.Model):
    """A hospital's PACS: its account (whose API tokens authenticate its STOW-RS pushes, and to
    which its predictions belong), the DICOMweb service results are stored back to, and, for
    the pull worker, the Orthanc REST root whose change feed it follows."""

    name = models.SlugField(max_length=50, unique=True)
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="pacs_site"
    )
    dicomweb_url = models.URLField(
        help_text="the PACS's DICOMweb root (STOW-RS results go to <root>/studies)"
    )
    orthanc_url = models.URLField(
        blank=True, help_text="Orthanc's REST root, for `manage.py pacs_worker` (/changes)"
    )
    authorization = models.CharField(
        max_length=500,
        blank=True,
        help_text="the Authorization header the PACS expects (e.g. 'Basic ...'), if any",
    )
    changes_seen = models.BigIntegerField(
        default=0, help_text="the last change of the PACS's feed the worker has dealt with"
    )

    def __str__(self) -> str:
        return self.name


class DicomInstance(models.Model):
    """One DICOM instance a PACS sent or the worker fetched, once per SOP Instance UID: what
    became of it and the result object stored back. UIDs only: the patient's identifiers stay
    in the hospital's systems."""

    CLASSIFIED, REFUSED, SKIPPED, UNREADABLE = "classified", "refused", "skipped", "unreadable"
    OUTCOMES = [(o, o) for o in (CLASSIFIED, REFUSED, SKIPPED, UNREADABLE)]

    site = models.ForeignKey(PacsSite, on_delete=models.PROTECT, related_name="instances")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    sop_instance_uid = models.CharField(max_length=64)
    sop_class_uid = models.CharField(max_length=64)
    study_instance_uid = models.CharField(max_length=64)
    series_instance_uid = models.CharField(max_length=64)
    outcome = models.CharField(max_length=12, choices=OUTCOMES)
    reason = models.CharField(max_length=300, blank=True)
    prediction = models.OneToOneField(
        Prediction, null=True, blank=True, on_delete=models.SET_NULL, related_name="dicom"
    )
    refusal = models.OneToOneField(
        Refusal, null=True, blank=True, on_delete=models.SET_NULL, related_name="dicom"
    )
    result_series_uid = models.CharField(max_length=64, blank=True)
    result_sop_instance_uid = models.CharField(
        max_length=64, blank=True, db_index=True, help_text="the Secondary Capture made of it"
    )
    result_stored_at = models.DateTimeField(
        null=True, blank=True, help_text="when the PACS acknowledged the result object"
    )
    result_error = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["site", "sop_instance_uid"], name="one_record_per_instance"
            )
        ]

    @property
    def result_pending(self) -> bool:
        return bool(self.result_sop_instance_uid) and self.result_stored_at is None

    def __str__(self) -> str:
        return f"{self.sop_instance_uid}: {self.outcome}"
