"""Who is asking: session login (throttled) for pages, bearer tokens for the API."""

from __future__ import annotations

import functools
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.core.cache import cache
from django.http import HttpRequest, JsonResponse
from django.utils import timezone

from diagnosis.models import ApiToken, hash_token


def api_error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


def token_user(request: HttpRequest):
    """The active user of the request's ``Authorization: Bearer <token>``, or None."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, raw = header.partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        return None
    token = (
        ApiToken.objects.select_related("user")
        .filter(key_hash=hash_token(raw.strip()), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user


def api_login_required(view):
    """API views: a valid token or a 401 JSON answer (never a redirect to the login page)."""

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs):
        user = token_user(request)
        if user is None:
            response = api_error(
                401,
                "unauthorized",
                "Send a valid API token: 'Authorization: Bearer <token>'. Create one on the "
                "'API tokens' page after signing in.",
            )
            response["WWW-Authenticate"] = 'Bearer realm="api"'
            return response
        request.user = user
        return view(request, *args, **kwargs)

    return wrapped


def client_address(request: HttpRequest) -> str:
    if settings.BEHIND_PROXY:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded:
            return forwarded.split(",")[-1].strip()  # the address the proxy itself saw
    return request.META.get("REMOTE_ADDR", "")


def _failure_keys(request: HttpRequest) -> list[str]:
    username = str(request.POST.get("username", "")).strip().lower()[:150]
    return [f"login-fail:user:{username}", f"login-fail:ip:{client_address(request)}"]


def login_locked(request: HttpRequest) -> bool:
    limit = settings.LOGIN_FAILURE_LIMIT
    return any((cache.get(key) or 0) >= limit for key in _failure_keys(request))


def record_login_failure(request: HttpRequest) -> None:
    for key in _failure_keys(request):
        # add() starts the window at the first failure; incr() keeps the window's end.
        if not cache.add(key, 1, timeout=settings.LOGIN_LOCKOUT_SECONDS):
            try:
                cache.incr(key)
            except ValueError:  # expired between add() and incr()
                cache.add(key, 1, timeout=settings.LOGIN_LOCKOUT_SECONDS)


class ThrottledLoginView(auth_views.LoginView):
    """Django's login, refusing attempts (429) after too many failures for a user name or
    from one address, until the window ends. The refusal does not say whether the account
    exists."""

    template_name = "diagnosis/login.html"
    redirect_authenticated_user = True

    def post(self, request, *args, **kwargs):
        if login_locked(request):
            form = self.get_form_class()(request=request)  # unbound: nothing is checked
            minutes = settings.LOGIN_LOCKOUT_SECONDS // 60
            context = self.get_context_data(
                form=form,
                locked=f"Too many failed sign-in attempts. Wait up to {minutes} minutes and try "
                "again, or ask staff to reset your password.",
            )
            return self.render_to_response(context, status=429)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        record_login_failure(self.request)
        return super().form_invalid(form)

    def form_valid(self, form):
        cache.delete(_failure_keys(self.request)[0])
        return super().form_valid(form)
