"""What the sign-in throttle (diagnosis.accounts) gives an attacker and costs a clinician, over
one simulated hour per scenario: the app's real login view, backend and counters on a throwaway
SQLite database, driven through Django's test client with the clock moved forward instead of
waited for.

    python bench/login_throttle.py [--minutes 60]

The attacker posts to /admin/login/ (Django's admin view there used to count attempts the app's
page refused); the clinician signs in on /account/login. Guesses are password checks the
backend really made for the attacker (a refused attempt checks nothing). "Own browser" is one
where the clinician signed in before (its device cookie); "new browser" is any other, on the
address given. Prints a Markdown table (docs/benchmarks.md,
"Sign-in throttle").
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/login_throttle.py`: bench beside it
    sys.path.insert(0, str(ROOT))
from bench.in_process_app import setup_django  # noqa: E402

PASSWORD = "Bench-Sturdy-Pass-2026"
NAT = "192.0.2.10"  # the hospital's one public address


class Clock:
    """The simulated time every part of the app reads (django.utils.timezone.now)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def run_scenario(clock: Clock, minutes: int, attackers, clinician) -> dict:
    """``attackers``: (address, names, seconds between tries) each; ``clinician``: (name,
    address, own browser?) trying to sign in every minute. Returns the guesses made and the
    clinician's minutes locked out."""
    from diagnosis.models import LoginFailure
    from django.contrib.auth.backends import ModelBackend
    from django.test import Client

    LoginFailure.objects.all().delete()
    start = clock.now
    checks = {"attacker": 0}
    original = ModelBackend.authenticate
    attacking = {"now": False}

    def counted(self, *args, **kwargs):
        if attacking["now"]:
            checks["attacker"] += 1
        return original(self, *args, **kwargs)

    name, address, own = clinician
    browser = Client(REMOTE_ADDR=address)
    if own:  # signed in here before the attack began: its device cookie
        assert (
            browser.post("/account/login", {"username": name, "password": PASSWORD}).status_code
            == 302
        )
        browser.post("/account/logout")
    plans = []
    for where, names, every in attackers:
        plans += [
            (start + timedelta(seconds=every * k), where, names[k % len(names)])
            for k in range(int(minutes * 60 / every))
        ]
    plans.sort(key=lambda p: p[0])
    locked_minutes, next_try = 0, start
    with mock.patch.object(ModelBackend, "authenticate", counted):
        for when, where, guessed in plans:
            while next_try <= when:  # the clinician's try each minute, in time order
                clock.now = next_try
                if not own:  # a browser that never signed in (a kept one would be trusted)
                    browser = Client(REMOTE_ADDR=address)
                answer = browser.post("/account/login", {"username": name, "password": PASSWORD})
                if answer.status_code == 302:
                    browser.post("/account/logout")
                else:
                    locked_minutes += 1
                next_try += timedelta(minutes=1)
            clock.now = when
            attacking["now"] = True
            Client(REMOTE_ADDR=where).post(  # the admin's page: its own view, same throttle
                "/admin/login/", {"username": guessed, "password": "guess"}
            )
            attacking["now"] = False
    clock.now = start + timedelta(minutes=minutes, hours=1)  # past every window
    return {"guesses": checks["attacker"], "locked": locked_minutes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        setup_django(Path(folder))
        from django.conf import settings
        from django.contrib.auth import get_user_model

        users = get_user_model().objects
        for name in ("dr_ada", "dr_bob"):
            users.create_user(name, password=PASSWORD)
        sprayed = [f"user{n}" for n in range(200)] + ["dr_ada"]
        botnet = [(f"198.51.{n // 250}.{n % 250}", ["dr_ada"], 60) for n in range(100)]
        one = [("203.0.113.66", ["dr_ada"], 1)]
        inside = [(NAT, sprayed, 10)]
        own_ada = ("dr_ada", "10.1.1.1", True)
        scenarios = [
            ("one address guesses dr_ada, 1 try/s: dr_ada's own browser", one, own_ada),
            ("  ... dr_ada on a new browser elsewhere", one, ("dr_ada", "10.1.1.1", False)),
            ("  ... dr_ada on a new browser at that address", one, ("dr_ada", one[0][0], False)),
            ("100 addresses guess dr_ada, 1 try/min each: her own browser", botnet, own_ada),
            ("  ... dr_ada on a new browser", botnet, ("dr_ada", "10.1.1.1", False)),
            (
                "an address sprays 201 names, 1 try/10 s: dr_bob's own browser there",
                inside,
                ("dr_bob", NAT, True),
            ),
            ("  ... dr_bob on a new browser at that address", inside, ("dr_bob", NAT, False)),
            ("  ... dr_bob on a new browser elsewhere", inside, ("dr_bob", "10.1.1.1", False)),
        ]
        with mock.patch("django.utils.timezone.now", Clock()) as clock:
            rows = [(label, run_scenario(clock, args.minutes, a, c)) for label, a, c in scenarios]
        print(
            f"Limits: {settings.LOGIN_FAILURE_LIMIT} per (address, name) and per own browser, "
            f"{settings.LOGIN_FAILURE_LIMIT_PER_ADDRESS} per address, "
            f"{settings.LOGIN_FAILURE_LIMIT_PER_USER} per name, within "
            f"{settings.LOGIN_LOCKOUT_SECONDS // 60} minutes; {args.minutes} simulated minutes "
            "each, the clinician trying once a minute.\n"
        )
        print("| Scenario | Attacker's guesses | Clinician's minutes locked out |")
        print("|---|---:|---:|")
        for label, result in rows:
            print(f"| {label} | {result['guesses']} | {result['locked']} of {args.minutes} |")


if __name__ == "__main__":
    main()
