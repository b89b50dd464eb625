"""Accounts: sign-in (throttled), sign-out, password rules, API tokens, add_clinician."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client

from diagnosis.models import ApiToken
from diagnosis.tests.conftest import PASSWORD, logged_in

pytestmark = pytest.mark.django_db


def sign_in(client: Client, username: str, password: str, **extra):
    return client.post("/account/login", {"username": username, "password": password}, **extra)


def test_sign_in_and_out(clinician):
    client = Client()
    page = client.get("/account/login")
    assert page.status_code == 200 and 'autocomplete="current-password"' in page.content.decode()
    response = sign_in(client, "dr_ada", PASSWORD)
    assert response.status_code == 302 and response["Location"] == "/"
    assert 'id="upload-form"' in client.get("/").content.decode()
    assert client.post("/account/logout").status_code == 302
    assert 'id="upload-form"' not in client.get("/").content.decode()
    assert client.get("/history")["Location"].startswith("/account/login")


def test_wrong_password_is_refused_without_saying_which_part_was_wrong(clinician):
    response = sign_in(Client(), "dr_ada", "not-the-password")
    html = response.content.decode()
    assert response.status_code == 200 and 'id="login-error"' in html
    assert "do not match" in html
    unknown = sign_in(Client(), "nobody", "whatever-password").content.decode()
    assert 'id="login-error"' in unknown  # the same answer for an unknown user


def test_failed_sign_ins_are_throttled_per_user_name(clinician, settings):
    settings.LOGIN_FAILURE_LIMIT_PER_USER = 3
    for i in range(3):  # from different addresses: the user name counter still fills
        sign_in(Client(), "dr_ada", "wrong", REMOTE_ADDR=f"10.0.0.{i}")
    locked = sign_in(Client(), "dr_ada", PASSWORD, REMOTE_ADDR="10.0.0.99")
    assert locked.status_code == 429 and 'id="login-locked"' in locked.content.decode()
    assert "_auth_user_id" not in locked.wsgi_request.session  # even the right password waits
    assert sign_in(Client(), "DR_ADA", PASSWORD, REMOTE_ADDR="10.0.0.98").status_code == 429


def test_failed_sign_ins_are_throttled_per_address(clinician, other_clinician, settings):
    settings.LOGIN_FAILURE_LIMIT_PER_ADDRESS = 3
    for name in ("x1", "x2", "x3"):  # guessing several user names from one address
        sign_in(Client(), name, "wrong", REMOTE_ADDR="10.1.1.1")
    assert sign_in(Client(), "dr_bob", PASSWORD, REMOTE_ADDR="10.1.1.1").status_code == 429
    assert sign_in(Client(), "dr_bob", PASSWORD, REMOTE_ADDR="10.1.1.2").status_code == 302


def test_behind_the_proxy_the_forwarded_address_counts(clinician, settings):
    settings.LOGIN_FAILURE_LIMIT_PER_ADDRESS, settings.BEHIND_PROXY = 2, True
    for name in ("x1", "x2"):
        sign_in(Client(), name, "wrong", HTTP_X_FORWARDED_FOR="203.0.113.7")
    blocked = sign_in(Client(), "dr_ada", PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.7")
    assert blocked.status_code == 429
    assert (
        sign_in(Client(), "dr_ada", PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.8").status_code == 302
    )


def test_the_lock_ends_with_its_window(clinician, settings):
    from django.utils import timezone

    from diagnosis.models import LoginFailure

    settings.LOGIN_FAILURE_LIMIT = 2
    for _ in range(2):
        sign_in(Client(), "dr_ada", "wrong")
    assert sign_in(Client(), "dr_ada", PASSWORD).status_code == 429
    LoginFailure.objects.update(window_ends=timezone.now())  # the window is over
    assert sign_in(Client(), "dr_ada", PASSWORD).status_code == 302


def test_password_change_applies_djangos_validators(clinician):
    client = Client()
    client.force_login(clinician)
    weak = client.post(
        "/account/password",
        {"old_password": PASSWORD, "new_password1": "12345678", "new_password2": "12345678"},
    )
    html = weak.content.decode()
    assert weak.status_code == 200 and "too short" in html and "too common" in html
    ok = client.post(
        "/account/password",
        {
            "old_password": PASSWORD,
            "new_password1": "Another-Str0ng-one",
            "new_password2": "Another-Str0ng-one",
        },
    )
    assert ok.status_code == 302
    clinician.refresh_from_db()
    assert clinician.check_password("Another-Str0ng-one")


def test_add_clinician_command_validates_the_password_and_can_issue_a_token(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("password\n"))
    with pytest.raises(CommandError, match="Password refused: .*too common"):
        call_command("add_clinician", "dr_eve", "--password-stdin")
    assert not get_user_model().objects.filter(username="dr_eve").exists()

    monkeypatch.setattr("sys.stdin", io.StringIO("Sturdy-Passw0rd-42\n"))
    out = io.StringIO()
    call_command(
        "add_clinician", "dr_eve", "--password-stdin", "--staff", "--api-token", "pacs", stdout=out
    )
    user = get_user_model().objects.get(username="dr_eve")
    assert user.is_staff and user.check_password("Sturdy-Passw0rd-42")
    raw = out.getvalue().split("store it now): ")[1].strip()
    response = Client(headers={"Authorization": f"Bearer {raw}"}).get("/api/v1/predictions")
    assert response.status_code == 200 and response.json()["count"] == 0
    with pytest.raises(CommandError, match="exists already"):
        call_command("add_clinician", "dr_eve", "--password-stdin")


@pytest.mark.parametrize(
    "header", [None, "Bearer", "Bearer xr_not-a-real-token", "Token abc", "Basic ZHJfYWRhOkNoM3N0"]
)
def test_api_without_a_valid_token_gets_401_json(clinician, header):
    headers = {"Authorization": header} if header else {}
    client = Client(headers=headers)
    client.force_login(clinician)  # a browser session is not an API credential
    for method, path in (
        ("get", "/api/v1/predictions"),
        ("post", "/api/v1/predictions"),
        ("get", "/api/v1/predictions/1"),
        ("post", "/api/v1/predictions/1/feedback"),
    ):
        response = getattr(client, method)(path)
        assert response.status_code == 401, (method, path)
        assert response.json()["error"]["code"] == "unauthorized"
        assert response["WWW-Authenticate"].startswith("Bearer")


def test_tokens_are_created_once_shown_and_revoked_by_their_user(clinician, other_clinician):
    client = Client()
    client.force_login(clinician)
    page = client.post("/account/tokens", {"action": "create", "name": "PACS bridge"})
    html = page.content.decode()
    raw = html.split('id="new-token">')[1].split("<")[0]
    token = ApiToken.objects.get(user=clinician)
    assert raw.startswith("xr_") and token.key_hash != raw and raw not in token.hint * 2
    assert raw not in client.get("/account/tokens").content.decode()  # shown once only
    api = Client(headers={"Authorization": f"Bearer {raw}"})
    assert api.get("/api/v1/predictions").status_code == 200
    token.refresh_from_db()
    assert token.last_used_at is not None

    other = Client()
    other.force_login(other_clinician)  # cannot revoke someone else's token
    assert other.post("/account/tokens", {"action": "revoke", "id": token.pk}).status_code == 404
    assert api.get("/api/v1/predictions").status_code == 200

    client.post("/account/tokens", {"action": "revoke", "id": token.pk})
    assert api.get("/api/v1/predictions").status_code == 401


def test_staff_revoke_and_issue_tokens_in_the_admin(clinician, staff):
    admin = Client()
    admin.force_login(staff)
    _, raw = ApiToken.issue(clinician, "laptop")
    token = ApiToken.objects.get(user=clinician)
    response = admin.post(
        "/admin/diagnosis/apitoken/", {"action": "revoke", "_selected_action": [token.pk]}
    )
    assert response.status_code == 302
    assert (
        Client(headers={"Authorization": f"Bearer {raw}"}).get("/api/v1/predictions").status_code
        == 401
    )
    page = admin.post(
        "/admin/auth/user/",
        {"action": "issue_token", "_selected_action": [clinician.pk]},
        follow=True,
    )
    issued = page.content.decode().split("shown again): ")[1].split("<")[0].strip()
    assert (
        Client(headers={"Authorization": f"Bearer {issued}"}).get("/api/v1/predictions").status_code
        == 200
    )


def test_deactivated_users_tokens_stop_working(clinician):
    client = logged_in(clinician)
    assert client.get("/api/v1/predictions").status_code == 200
    clinician.is_active = False
    clinician.save()
    assert client.get("/api/v1/predictions").status_code == 401


def test_staff_create_clinicians_in_the_admin_with_the_password_rules(staff):
    admin = Client()
    admin.force_login(staff)
    weak = admin.post(
        "/admin/auth/user/add/",
        {
            "username": "dr_new",
            "password1": "dr_new123",
            "password2": "dr_new123",
            "usable_password": "true",
        },
    )
    assert weak.status_code == 200 and "too similar to the username" in weak.content.decode()
    assert not get_user_model().objects.filter(username="dr_new").exists()
    good = "Radiograph-Review-9"
    form = {"username": "dr_new", "password1": good, "password2": good, "usable_password": "true"}
    ok = admin.post("/admin/auth/user/add/", form)
    assert ok.status_code == 302
    assert Client().login(username="dr_new", password=good)


def test_staff_cannot_make_themselves_superusers(staff):
    admin = Client()
    admin.force_login(staff)
    page = admin.get(f"/admin/auth/user/{staff.pk}/change/").content.decode()
    assert 'name="is_superuser"' not in page and 'name="is_staff"' not in page


def test_staff_cannot_promote_a_clinician_to_staff(staff, clinician):
    admin = Client()
    admin.force_login(staff)
    joined = clinician.date_joined
    form = {
        "username": clinician.username,
        "first_name": "Ada",
        "is_active": "on",
        "is_staff": "on",  # ignored: a read-only field for staff
        "is_superuser": "on",
        "date_joined_0": joined.strftime("%Y-%m-%d"),
        "date_joined_1": joined.strftime("%H:%M:%S"),
    }
    saved = admin.post(f"/admin/auth/user/{clinician.pk}/change/", form)
    assert saved.status_code == 302, saved.content.decode()[:2000]
    clinician.refresh_from_db()
    assert clinician.first_name == "Ada"  # the change was saved...
    assert not clinician.is_staff and not clinician.is_superuser  # ...without the promotion


def test_staff_revoke_only_the_tokens_of_accounts_they_manage(staff, clinician, make_user):
    boss = get_user_model().objects.create_superuser("chief", password=PASSWORD)
    colleague = make_user("other_nurse", staff=True)
    raws = {
        user.username: ApiToken.issue(user, "laptop")[1] for user in (boss, colleague, clinician)
    }
    admin = Client()
    admin.force_login(staff)
    listed = admin.get("/admin/diagnosis/apitoken/").content.decode()
    assert "dr_ada" in listed and "chief" not in listed and "other_nurse" not in listed
    every = list(ApiToken.objects.values_list("pk", flat=True))
    page = admin.post(
        "/admin/diagnosis/apitoken/",
        {"action": "revoke", "_selected_action": every},
        follow=True,
    )
    assert "Revoked 1 tokens." in page.content.decode()

    def works(raw):
        client = Client(headers={"Authorization": f"Bearer {raw}"})
        return client.get("/api/v1/predictions").status_code == 200

    assert works(raws["chief"]) and works(raws["other_nurse"])
    assert not works(raws[clinician.username])
    superuser = Client()
    superuser.force_login(boss)
    superuser.post("/admin/diagnosis/apitoken/", {"action": "revoke", "_selected_action": every})
    assert not works(raws["other_nurse"])  # superusers manage everyone


def test_the_password_change_is_throttled_like_the_sign_in(clinician, settings):
    client = logged_in(clinician)
    wrong = {
        "old_password": "not-it",
        "new_password1": "N3w-Sturdy-Pass",
        "new_password2": "N3w-Sturdy-Pass",
    }
    statuses = [client.post("/account/password", wrong).status_code for _ in range(6)]
    assert statuses[: settings.LOGIN_FAILURE_LIMIT - 1] == [200] * (
        settings.LOGIN_FAILURE_LIMIT - 1
    )
    assert statuses[settings.LOGIN_FAILURE_LIMIT - 1 :] == [429] * (
        7 - settings.LOGIN_FAILURE_LIMIT
    )
    right = {**wrong, "old_password": PASSWORD}
    locked = client.post("/account/password", right)
    assert (
        locked.status_code == 429 and "Too many wrong current passwords" in locked.content.decode()
    )
    clinician.refresh_from_db()
    assert clinician.check_password(PASSWORD)  # nothing changed while locked
    # the same counters: the sign-in page refuses this name from this address too
    assert (
        Client()
        .post("/account/login", {"username": clinician.username, "password": PASSWORD})
        .status_code
        == 429
    )


def test_the_admin_login_is_throttled_like_the_apps(staff, settings):
    """30 wrong passwords on /admin/login/, then the right one: refused, as on /account/login."""
    for _ in range(30):
        Client().post("/admin/login/", {"username": "head_nurse", "password": "wrong"})
    client = Client()
    client.post("/admin/login/?next=/admin/", {"username": "head_nurse", "password": PASSWORD})
    assert "_auth_user_id" not in client.session
    assert sign_in(Client(), "head_nurse", PASSWORD).status_code == 429


@pytest.mark.parametrize("lookalike", ["ｄｒ＿ａｄａ", "𝐝𝐫_𝐚𝐝𝐚", "DR_ADA"])
def test_lookalike_user_names_share_one_counter(clinician, settings, lookalike):
    settings.LOGIN_FAILURE_LIMIT = 3
    for _ in range(3):
        sign_in(Client(), lookalike, "wrong")
    assert sign_in(Client(), "dr_ada", PASSWORD).status_code == 429


def test_one_attacker_cannot_lock_a_clinician_out(clinician, settings):
    settings.LOGIN_FAILURE_LIMIT = 5
    for _ in range(20):
        sign_in(Client(), "dr_ada", "wrong", REMOTE_ADDR="198.51.100.66")
    assert sign_in(Client(), "dr_ada", PASSWORD, REMOTE_ADDR="198.51.100.66").status_code == 429
    assert sign_in(Client(), "dr_ada", PASSWORD, REMOTE_ADDR="10.20.30.40").status_code == 302


def test_wrong_tries_from_one_address_do_not_lock_the_name_elsewhere(clinician, staff):
    """26 wrong passwords for one name at /admin/login/ from one address used to lock it
    everywhere (the name's counter, 25, kept filling while the address was refused)."""
    from diagnosis.models import LoginFailure

    for _ in range(26):
        Client().post("/admin/login/", {"username": "dr_ada", "password": "wrong"})
    assert LoginFailure.objects.get(key="login-fail:user:dr_ada").count == 5, "refused: uncounted"
    assert sign_in(Client(), "dr_ada", PASSWORD, REMOTE_ADDR="10.20.30.40").status_code == 302


def test_the_admin_login_says_a_locked_name_is_locked(staff, settings):
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        Client().post("/admin/login/", {"username": "head_nurse", "password": "wrong"})
    page = Client().post("/admin/login/", {"username": "head_nurse", "password": PASSWORD})
    html = page.content.decode()
    assert page.status_code == 429 and 'id="login-locked"' in html
    assert "Too many failed sign-in attempts" in html and "correct username" not in html
    fresh = Client().post(
        "/admin/login/?next=/admin/",
        {"username": "head_nurse", "password": PASSWORD},
        REMOTE_ADDR="10.9.9.9",
    )
    assert fresh.status_code == 302 and fresh["Location"] == "/admin/"


def test_guesses_at_other_names_do_not_lock_out_a_site_behind_one_address(clinician, settings):
    """One hospital behind NAT is one address: a handful of failures for other names from it
    (typos, an attacker inside) leaves its clinicians signing in."""
    for name in ("x1", "x2", "x3", "x4", "x5", "x6"):
        sign_in(Client(), name, "wrong", REMOTE_ADDR="192.0.2.10")
    assert sign_in(Client(), "dr_ada", PASSWORD, REMOTE_ADDR="192.0.2.10").status_code == 302


def test_many_addresses_guessing_a_name_do_not_lock_its_own_browser(clinician, settings):
    """Five addresses x five tries fill the name's counter: browsers that never signed in as
    it wait; the clinician's own browser (its device cookie from an earlier sign-in) does not."""
    own = Client()
    assert sign_in(own, "dr_ada", PASSWORD).status_code == 302
    own.post("/account/logout")
    for i in range(5):
        for _ in range(5):
            sign_in(Client(), "dr_ada", "wrong", REMOTE_ADDR=f"198.51.100.{i}")
    assert sign_in(Client(), "dr_ada", PASSWORD, REMOTE_ADDR="203.0.113.1").status_code == 429
    assert sign_in(own, "dr_ada", PASSWORD).status_code == 302


def test_a_trusted_browser_is_throttled_on_its_own(clinician, settings):
    """A device cookie is no licence to guess: it gets LOGIN_FAILURE_LIMIT tries per window,
    its own; a forged or altered one counts as none."""
    from diagnosis.accounts import DEVICE_COOKIE

    own = Client()
    sign_in(own, "dr_ada", PASSWORD)
    own.post("/account/logout")
    cookie = own.cookies[DEVICE_COOKIE].value
    statuses = [sign_in(own, "dr_ada", "wrong").status_code for _ in range(6)]
    assert statuses == [200] * (settings.LOGIN_FAILURE_LIMIT - 1) + [429] * (
        7 - settings.LOGIN_FAILURE_LIMIT
    )
    assert sign_in(own, "dr_ada", PASSWORD).status_code == 429
    assert sign_in(Client(), "dr_ada", PASSWORD, REMOTE_ADDR="10.3.3.3").status_code == 302
    forged = Client()
    forged.cookies[DEVICE_COOKIE] = cookie[:-2] + ("AA" if cookie[-2:] != "AA" else "BB")
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        sign_in(forged, "dr_ada", "wrong", REMOTE_ADDR="10.4.4.4")
    assert sign_in(forged, "dr_ada", PASSWORD, REMOTE_ADDR="10.4.4.4").status_code == 429


def test_successful_sign_ins_do_not_fill_the_addresss_counter(clinician, settings):
    settings.LOGIN_FAILURE_LIMIT = 2
    for _ in range(5):  # a ward's shared address: many good sign-ins
        assert sign_in(Client(), "dr_ada", PASSWORD).status_code == 302


@pytest.mark.django_db(transaction=True)
def test_parallel_attempts_get_no_more_than_the_limit(clinician, settings, monkeypatch):
    """16 attempts at once: the password is checked at most LOGIN_FAILURE_LIMIT times."""
    import threading

    from django.contrib.auth.backends import ModelBackend
    from django.db import connection

    settings.LOGIN_FAILURE_LIMIT = 5
    checked, lock = [], threading.Lock()
    original = ModelBackend.authenticate

    def counting(self, *args, **kwargs):
        with lock:
            checked.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ModelBackend, "authenticate", counting)
    start = threading.Barrier(16)

    def attempt():
        start.wait()
        try:
            sign_in(Client(), "dr_ada", "wrong")
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 1 <= len(checked) <= 5


def test_staff_manage_clinicians_only(staff, make_user):
    from django.contrib.auth import get_user_model

    boss = get_user_model().objects.create_superuser("chief", password=PASSWORD)
    colleague = make_user("other_nurse", staff=True)
    clinician = make_user("dr_cy")
    admin = Client()
    admin.force_login(staff)
    for target in (boss, colleague):
        assert admin.get(f"/admin/auth/user/{target.pk}/change/").status_code in (302, 403, 404)
        reset = admin.post(
            f"/admin/auth/user/{target.pk}/password/",
            {"password1": "Taken-Over-2026!", "password2": "Taken-Over-2026!"},
        )
        assert reset.status_code in (302, 403, 404)
        target.refresh_from_db()
        assert target.check_password(PASSWORD), "staff must not set another staff's password"
        admin.post(
            "/admin/auth/user/",
            {"action": "issue_token", "_selected_action": [target.pk]},
        )
        assert not ApiToken.objects.filter(user=target).exists()
    listed = admin.get("/admin/auth/user/").content.decode()
    assert "dr_cy" in listed and "chief" not in listed
    assert admin.get(f"/admin/auth/user/{clinician.pk}/change/").status_code == 200


def test_odd_user_names_are_never_logged(clinician, caplog):
    """A password typed into the name field must not reach a log (the old cache-based
    throttle logged odd names in Django's cache-key warning)."""
    import logging

    secret = "My Secret Pass\nword!"
    with caplog.at_level(logging.DEBUG):
        for _ in range(3):
            sign_in(Client(), secret, "wrong")
    assert not [r for r in caplog.records if "Secret" in r.getMessage()]


def test_only_a_signed_in_user_or_a_valid_token_may_send_a_large_body(clinician, client):
    """What xrayweb.limits asks before reading an upload body over ANONYMOUS_BODY_BYTES: the
    real session and token checks, from the headers alone."""
    from django.conf import settings

    from diagnosis.accounts import may_send_a_large_body
    from diagnosis.models import ApiToken

    name = settings.SESSION_COOKIE_NAME.encode()
    assert not may_send_a_large_body({})
    assert not may_send_a_large_body({b"cookie": name + b"=" + b"a" * 32})
    assert not may_send_a_large_body({b"cookie": name + b'="abc\\000def"'})
    assert not may_send_a_large_body({b"authorization": b"Bearer not-a-token"})
    client.force_login(clinician)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value.encode()
    assert may_send_a_large_body({b"cookie": b"theme=dark; " + name + b"=" + session})
    token, raw = ApiToken.issue(clinician, "upload")
    assert may_send_a_large_body({b"authorization": f"Bearer {raw}".encode()})
    token.revoke()
    assert not may_send_a_large_body({b"authorization": f"Bearer {raw}".encode()})
    clinician.is_active = False
    clinician.save()
    assert not may_send_a_large_body({b"cookie": name + b"=" + session})
