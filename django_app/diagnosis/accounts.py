"""Who is asking: session login (throttled in the authentication backend, so every sign-in
form is) for pages, bearer tokens for the API.

The throttle is ours rather than django-axes: one backend and one table, counting with a
single atomic upsert (parallel attempts cannot share a slot). It locks (address, name) pairs as
axes' user + IP combination does, with wider per-address and per-name limits that spare
browsers where the name signed in before (OWASP's device cookies): guessing cannot lock a
clinician's own browser, nor a hospital's address for its known browsers.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import secrets
import unicodedata
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.contrib.auth import views as auth_views
from django.contrib.auth.backends import ModelBackend
from django.core import signing
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.db.models import F, Q
from django.http import HttpRequest, JsonResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache

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


DEVICE_COOKIE = "signin_device"
DEVICE_COOKIE_DAYS = 90
DEVICE_NAMES = 8  # a shared ward computer remembers this many of its users


def _name_digest(name: str) -> str:
    """How the device cookie names a user: a digest, so a shared computer's cookie does not
    list who signed in on it."""
    return hashlib.sha256(f"device:{name}".encode()).hexdigest()[:24]


def _trusted_devices(request: HttpRequest) -> dict[str, str]:
    """The browser's device cookie: for each name (digest) that signed in here, its device id
    (signed, so it cannot be made up; a copy of it is as good as the browser)."""
    raw = request.COOKIES.get(DEVICE_COOKIE)
    if not raw:
        return {}
    try:
        pairs = signing.loads(
            raw, salt="diagnosis.device", max_age=timedelta(days=DEVICE_COOKIE_DAYS)
        )
        return {str(name): str(device) for name, device in pairs}
    except (signing.BadSignature, TypeError, ValueError):
        return {}


def remember_device(request: HttpRequest, response, username: str) -> None:
    """After a successful sign-in: this browser becomes a trusted device for the name."""
    devices = _trusted_devices(request)
    name = _name_digest(normalised_username(username))
    devices.pop(name, None)
    devices[name] = secrets.token_urlsafe(16)  # a new id: the old one's failures stay its own
    pairs = list(devices.items())[-DEVICE_NAMES:]
    response.set_cookie(
        DEVICE_COOKIE,
        signing.dumps(pairs, salt="diagnosis.device"),
        max_age=DEVICE_COOKIE_DAYS * 24 * 3600,
        secure=settings.SESSION_COOKIE_SECURE,
        httponly=True,
        samesite="Lax",
    )


def _limits(request: HttpRequest, username: str) -> dict[str, int]:
    """Each throttle key of this attempt and its limit, in the order slots are taken.

    A browser where the name signed in before (its device cookie) counts only on its own
    device key. Any other client counts per (address, name), per address across names and
    per name across addresses: reaching one locks that key's untrusted clients for the rest of
    its window, never a clinician's own browser; one address can guess one name only
    LOGIN_FAILURE_LIMIT times, and a site behind one address (NAT) is locked only for browsers
    that never signed in there (docs/web-app.md, bench/login_throttle.py)."""
    name, address = normalised_username(username), client_address(request)
    limit = settings.LOGIN_FAILURE_LIMIT
    device = _trusted_devices(request).get(_name_digest(name))
    if device is not None:
        return {f"login-fail:device:{device}": limit}
    return {
        f"login-fail:pair:{address}:{name}": limit,
        f"login-fail:ip:{address}": settings.LOGIN_FAILURE_LIMIT_PER_ADDRESS,
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


def _give_back(keys) -> None:
    LoginFailure.objects.filter(key__in=list(keys), count__gt=0).update(count=F("count") - 1)


def take_slots(request: HttpRequest, username: str) -> bool:
    """Take this attempt's slot on each of its keys, atomically; False (and nothing taken)
    when one is full: a refused attempt counts nowhere, so an attacker locked out of one
    (address, name) adds nothing to the name's or the address's counter."""
    taken = []
    for key, limit in _limits(request, username).items():
        taken.append(key)
        if _count(key) > limit:
            _give_back(taken)
            return False
    return True


def give_slots_back(request: HttpRequest, username: str) -> None:
    """A right password: its slots are given back, and the failures of this (address, name)
    or this device are forgotten; others' failures on the name or the address are not."""
    limits = _limits(request, username)
    _give_back(limits)
    mine = Q(key__startswith="login-fail:pair:") | Q(key__startswith="login-fail:device:")
    LoginFailure.objects.filter(mine, key__in=limits).delete()


class ThrottledBackend(ModelBackend):
    """Django's user/password check behind the throttle, for every way to sign in (the app's
    login page, the admin's, any other form): each attempt takes its slots first, atomically,
    and gives them back when the password was right; past a limit the password is not
    checked."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None or username is None:
            return super().authenticate(request, username, password, **kwargs)
        if not take_slots(request, username):
            raise PermissionDenied("too many failed sign-ins")  # stops every backend
        user = super().authenticate(request, username, password, **kwargs)
        if user is not None:  # success does not count
            give_slots_back(request, username)
        return user


class ThrottledLoginView(auth_views.LoginView):
    """Django's login, refusing attempts (429) after too many failures for a user name or
    from one address, until the window ends. The refusal does not say whether the account
    exists. A success makes the browser a trusted device for the name."""

    template_name = "diagnosis/login.html"
    redirect_authenticated_user = True

    def post(self, request, *args, **kwargs):
        if login_locked(request, request.POST.get("username", "")):
            return self.locked()
        return super().post(request, *args, **kwargs)

    def form_valid(self, form):
        response = super().form_valid(form)
        remember_device(self.request, response, form.get_user().get_username())
        return response

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


@never_cache
def admin_login(request: HttpRequest):
    """The admin's login page (Django's AdminSite.login) on the app's throttled view, so a
    locked name is told it is locked: Django's own page says the right password is wrong."""
    from django.contrib import admin
    from django.contrib.admin.forms import AdminAuthenticationForm

    if request.method == "GET" and admin.site.has_permission(request):
        return redirect("admin:index")
    context = {
        **admin.site.each_context(request),
        "title": "Log in",
        "subtitle": None,
        "app_path": request.get_full_path(),
        "username": request.user.get_username(),
    }
    if REDIRECT_FIELD_NAME not in request.GET and REDIRECT_FIELD_NAME not in request.POST:
        context[REDIRECT_FIELD_NAME] = reverse("admin:index")
    request.current_app = admin.site.name
    return ThrottledLoginView.as_view(
        extra_context=context,
        authentication_form=AdminAuthenticationForm,
        template_name="diagnosis/admin_login.html",
        redirect_authenticated_user=False,
    )(request)


class ThrottledPasswordChangeView(auth_views.PasswordChangeView):
    """Django's password change, its old-password check counted on the sign-in throttle's
    counters: a session left open (or stolen) cannot guess the password faster than the sign-in
    page allows, and a locked name cannot be tried here either."""

    template_name = "diagnosis/password.html"
    success_url = "/"

    def post(self, request, *args, **kwargs):
        if not take_slots(request, request.user.get_username()):
            return self.locked()
        return super().post(request, *args, **kwargs)

    def form_valid(self, form):
        give_slots_back(self.request, self.request.user.get_username())
        return super().form_valid(form)

    def form_invalid(self, form):
        name = self.request.user.get_username()
        if "old_password" not in form.errors:
            give_slots_back(self.request, name)  # the right current password
        elif login_locked(self.request, name):
            return self.locked()  # this attempt reached the limit
        return super().form_invalid(form)

    def locked(self):
        minutes = settings.LOGIN_LOCKOUT_SECONDS // 60
        context = self.get_context_data(
            form=self.get_form_class()(self.request.user),  # unbound: nothing is checked
            locked=f"Too many wrong current passwords. Wait up to {minutes} minutes and try "
            "again, or ask staff to reset your password.",
        )
        return self.render_to_response(context, status=429)
