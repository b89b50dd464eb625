"""Staff tools: users (with API tokens), predictions, feedback and its export, past exports."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import Q
from django.http import HttpResponse

from diagnosis.export import export_to_zip
from diagnosis.models import (
    ApiToken,
    DatasetExport,
    DicomInstance,
    Feedback,
    PacsSite,
    Prediction,
    Refusal,
)
from diagnosis.storage import StorageUnavailable

admin.site.site_header = "Pneumonia X-ray check: staff"
User = get_user_model()
admin.site.unregister(User)


class StaffRole:
    """In this app "staff" is a role, not a set of per-model permissions: every staff member
    may view these records and run their actions; only superusers delete."""

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_staff

    def has_view_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_staff

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser


class ReadOnly(StaffRole, admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Prediction)
class PredictionAdmin(ReadOnly):
    list_display = ("id", "created_at", "user", "label", "probability", "model_version", "source")
    list_filter = ("label", "source", "model_version", "created_at")
    search_fields = ("user__username", "image_sha256")
    date_hierarchy = "created_at"


@admin.register(Refusal)
class RefusalAdmin(ReadOnly):
    list_display = ("id", "created_at", "user", "reason", "model_version", "source")
    list_filter = ("reason", "source", "model_version", "created_at")
    search_fields = ("user__username", "image_sha256")
    date_hierarchy = "created_at"


@admin.register(PacsSite)
class PacsSiteAdmin(ReadOnly):
    """Sites are added with `manage.py add_pacs_site` (it issues the token); the admin shows
    them, never the Authorization header the PACS expects."""

    list_display = ("name", "user", "dicomweb_url", "orthanc_url", "changes_seen")
    exclude = ("authorization",)


@admin.register(DicomInstance)
class DicomInstanceAdmin(ReadOnly):
    list_display = ("id", "created_at", "site", "outcome", "reason", "result_stored_at")
    list_filter = ("outcome", "site", "created_at")
    search_fields = ("sop_instance_uid", "study_instance_uid")
    date_hierarchy = "created_at"


@admin.register(Feedback)
class FeedbackAdmin(ReadOnly):
    list_display = ("prediction", "created_at", "true_label", "consent", "exported_in")
    list_filter = ("true_label", "consent", ("exported_in", admin.EmptyFieldListFilter))
    actions = ["export_consented"]

    @admin.action(description="Export the consented images among these (zip for ingest)")
    def export_consented(self, request, queryset):
        if not request.user.is_staff:  # the admin only lets staff in; belt and braces
            return None
        try:
            export, archive = export_to_zip(request.user.get_username(), queryset)
        except StorageUnavailable as exc:
            self.message_user(request, f"Nothing exported: {exc}", messages.ERROR)
            return None
        if export is None:
            self.message_user(
                request,
                "Nothing to export: no consented images among these that were not exported before.",
                messages.WARNING,
            )
            return None
        response = HttpResponse(archive, content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="{export.name}.zip"'
        return response


@admin.register(DatasetExport)
class DatasetExportAdmin(ReadOnly):
    list_display = ("name", "created_at", "created_by", "image_count")


def manages(actor, account) -> bool:
    """Staff manage clinicians and themselves; other staff and superusers are for superusers
    (a password, a token or its revocation would let staff act as them or lock them out)."""
    if actor.is_superuser or account.pk == actor.pk:
        return True
    return not (account.is_staff or account.is_superuser)


def managed(actor) -> Q:
    """The accounts ``actor`` manages, as a filter on users (``manages`` for a query)."""
    if actor.is_superuser:
        return Q()
    return Q(is_staff=False, is_superuser=False) | Q(pk=actor.pk)


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnly):
    list_display = ("name", "user", "hint", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    exclude = ("key_hash",)
    actions = ["revoke"]

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        ids = User.objects.filter(managed(request.user)).values("pk")
        return queryset.filter(user__in=ids)

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset):
        revoked = 0
        for token in queryset.select_related("user"):
            if manages(request.user, token.user):  # the queryset is filtered; belt and braces
                token.revoke()
                revoked += 1
        self.message_user(request, f"Revoked {revoked} tokens.")


@admin.register(User)
class ClinicianAdmin(StaffRole, UserAdmin):
    """Staff create and edit clinicians' accounts; only superusers hand out staff and
    superuser rights."""

    actions = ["issue_token"]

    def has_add_permission(self, request):
        return request.user.is_active and request.user.is_staff

    def has_change_permission(self, request, obj=None):
        allowed = request.user.is_active and request.user.is_staff
        return allowed and (obj is None or self.manages(request.user, obj))

    def has_view_permission(self, request, obj=None):
        return super().has_view_permission(request, obj) and (
            obj is None or self.manages(request.user, obj)
        )

    manages = staticmethod(manages)

    def get_queryset(self, request):
        return super().get_queryset(request).filter(managed(request.user))

    def get_readonly_fields(self, request, obj=None):
        fields = super().get_readonly_fields(request, obj)
        if request.user.is_superuser:
            return fields
        # staff manage clinicians: making one staff (or superuser) is for superusers
        return (*fields, "is_staff", "is_superuser", "groups", "user_permissions")

    @admin.action(description="Issue an API token (shown once)")
    def issue_token(self, request, queryset):
        for user in queryset:
            if not self.manages(request.user, user):
                continue
            _, raw = ApiToken.issue(user, f"issued by {request.user.get_username()}")
            self.message_user(
                request,
                f"Token for {user.get_username()} (copy it now, it is not shown again): {raw}",
            )
