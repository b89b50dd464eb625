from django.apps import AppConfig
from django.conf import settings
from django.core import checks


class DiagnosisConfig(AppConfig):
    name = "diagnosis"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        checks.register(feedback_storage_check, checks.Tags.security, deploy=True)


def feedback_storage_check(app_configs, **kwargs):
    """`manage.py check --deploy`: consented images on a dyno's disk would be lost."""
    if str(settings.FEEDBACK_STORAGE).startswith("s3://"):
        return []
    return [
        checks.Warning(
            f"FEEDBACK_STORAGE is the local folder {settings.FEEDBACK_STORAGE}.",
            hint="On Heroku the dyno's disk is wiped at every restart: set "
            "FEEDBACK_STORAGE=s3://bucket/prefix and the AWS_* credentials.",
            id="diagnosis.W001",
        )
    ]
