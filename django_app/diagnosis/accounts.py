"""Who is asking: session login (throttled in the authentication backend, so every sign-in
form is) for pages, bearer tokens for the API.

The throttle is ours rather than django-axes: it is one backend and one table, counts with a
single atomic upsert (parallel attempts cannot share a slot), and locks an address per name
rather than the name itself, so guessing cannot lock a clinician out.
"""

from __future__ import annotations

import functools
import ipaddress
import unicodedata
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.db.models import F
from django.http import HttpRequest, JsonResponse
from django.utils import timezone

from diagnosis.models import ApiToken, LoginFailure, hash_token


def api_error(status: int, code: str, message: str, **details) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message, **details}}, status=status)


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


def may_send_a_large_body(headers: dict[bytes, bytes]) -> bool:
    """Whether a request with these (ASGI) headers comes from a signed-in active user (session
    cookie) or a valid API token: only then is a body larger than ``ANONYMOUS_BODY_BYTES``
    read (xrayweb.limits). Looks at the headers only, never the body."""
    from importlib import import_module

    from django.contrib.auth import get_user
    from django.http.cookie import parse_cookie

    request = HttpRequest()
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    if authorization:
        request.META["HTTP_AUTHORIZATION"] = authorization
        if token_user(request) is not None:
            return True
    key = parse_cookie(headers.get(b"cookie", b"").decode("latin-1")).get(
        settings.SESSION_COOKIE_NAME
    )
    if not key:
        return False
    request.session = import_module(settings.SESSION_ENGINE).SessionStore(key)
    return get_user(request).is_authenticated


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


# What a forged X-Forwarded-For that is no address counts as: one key for all such requests, so
# that they throttle each other and never the proxy's own address (every client's REMOTE_ADDR).
NOT_AN_ADDRESS = "forwarded-not-an-address"


def client_address(request: HttpRequest) -> str:
    if settings.BEHIND_PROXY:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded:
            last = forwarded.split(",")[-1].strip()  # the address the proxy itself saw
            try:
                return str(ipaddress.ip_address(last))
            except ValueError:
                return NOT_AN_ADDRESS
    return request.META.get("REMOTE_ADDR", "")


def normalised_username(username: str) -> str:
    """The name as the throttle sees it: NFKC (fullwidth and mathematical letters become plain
    ones, as Django's login form does) and case-folded, so lookalikes share one counter."""
    return unicodedata.normalize("NFKC", str(username)).casefold().strip()[:150]


def _limits(request: HttpRequest, username: str) -> dict[str, int]:
    """Each throttle key and its limit. One address may fail LOGIN_FAILURE_LIMIT times for a
    name, and as often across names; a name may fail LOGIN_FAILURE_LIMIT_PER_USER times across
    addresses: so one attacker can lock only their own address out, not the clinician."""
    name, address = normalised_username(username), client_address(request)
    limit = settings.LOGIN_FAILURE_LIMIT
    return {
        f"login-fail:pair:{address}:{name}": limit,
        f"login-fail:ip:{address}": limit,
        f"login-fail:user:{name}": settings.LOGIN_FAILURE_LIMIT_PER_USER,
    }


def login_locked(request: HttpRequest, username: str) -> bool:
    """Whether a throttle key of this attempt is at its limit (the window still open)."""
    limits = _limits(request, username)
    counts = dict(
        LoginFailure.objects.filter(key__in=limits, window_ends__gt=timezone.now()).values_list(
            "key", "count"
        )
    )
    return any(counts.get(key, 0) >= limit for key, limit in limits.items())


def _count(key: str) -> int:
    """Add one to ``key``'s counter (a new window if the last one ended); return the count."""
    now = timezone.now()
    ends = now + timedelta(seconds=settings.LOGIN_LOCKOUT_SECONDS)
    table = LoginFailure._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f'INSERT INTO {table} ("key", "count", window_ends) VALUES (%s, 1, %s) '
            f'ON CONFLICT ("key") DO UPDATE SET '
            f'"count" = CASE WHEN {table}.window_ends > %s THEN {table}."count" + 1 ELSE 1 END, '
            f"window_ends = CASE WHEN {table}.window_ends > %s THEN {table}.window_ends "
            f'ELSE excluded.window_ends END RETURNING "count"',
            [key, ends, now, now],
        )
        return cursor.fetchone()[0]


class ThrottledBackend(ModelBackend):
    """Django's user/password check behind the throttle, for every way to sign in (the app's
    login page, the admin's, any other form): each attempt takes a slot first, atomically, and
    gives it back when the password was right; past the limit the password is not checked."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None or username is None:
            return super().authenticate(request, username, password, **kwargs)
        limits = _limits(request, username)
        counts = {key: _count(key) for key in limits}
        if any(counts[key] > limit for key, limit in limits.items()):
            raise PermissionDenied("too many failed sign-ins")  # stops every backend
        user = super().authenticate(request, username, password, **kwargs)
        if user is not None:  # the slot is given back: success does not count
            LoginFailure.objects.filter(key__in=limits).exclude(
                key__startswith="login-fail:ip:"
            ).delete()
            LoginFailure.objects.filter(key=next(iter(k for k in limits if ":ip:" in k))).update(
                count=F("count") - 1
            )
        return user


class ThrottledLoginView(auth_views.LoginView):
    """Django's login, refusing attempts (429) after too many failures for a user name or
    from one address, until the window ends. The refusal does not say whether the account
    exists."""

    template_name = "diagnosis/login.html"
    redirect_authenticated_user = True

    def post(self, request, *args, **kwargs):
        if login_locked(request, request.POST.get("username", "")):
            return self.locked()
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        if login_locked(self.request, self.request.POST.get("username", "")):
            return self.locked()  # this attempt reached the limit
        return super().form_invalid(form)

    def locked(self):
        form = self.get_form_class()(request=self.request)  # unbound: nothing is checked
        minutes = settings.LOGIN_LOCKOUT_SECONDS // 60
        context = self.get_context_data(
            form=form,
            locked=f"Too many failed sign-in attempts. Wait up to {minutes} minutes and try "
            "again, or ask staff to reset your password.",
        )
        return self.render_to_response(context, status=429)


class ThrottledPasswordChangeView(auth_views.PasswordChangeView):
    """Django's password change, its old-password check counted on the sign-in throttle's
    counters: a session left open (or stolen) cannot guess the password faster than the sign-in
    page allows, and a locked name cannot be tried here either."""

    template_name = "diagnosis/password.html"
    success_url = "/"

    def post(self, request, *args, **kwargs):
        if login_locked(request, request.user.get_username()):
            return self.locked()
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        if "old_password" in form.errors:
            limits = _limits(self.request, self.request.user.get_username())
            counts = {key: _count(key) for key in limits}
            if any(counts[key] >= limit for key, limit in limits.items()):
                return self.locked()
        return super().form_invalid(form)

    def locked(self):
        minutes = settings.LOGIN_LOCKOUT_SECONDS // 60
        context = self.get_context_data(
            form=self.get_form_class()(self.request.user),  # unbound: nothing is checked
            locked=f"Too many wrong current passwords. Wait up to {minutes} minutes and try "
            "again, or ask staff to reset your password.",
        )
        return self.render_to_response(context, status=429)
