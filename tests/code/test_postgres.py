"""Without a PostgreSQL server at 127.0.0.1:5432 the tests start their own (tests/postgres.py);
with PNEUMONIA_TEST_POSTGRES they use that one. Both paths run for real here."""

from __future__ import annotations

import os
import sys

from tests.conftest import REPO, require_data, run

PROBE = """
import psycopg
from tests import postgres
url = postgres.server_url()
with psycopg.connect(postgres.database_url(), autocommit=True) as conn:
    conn.execute("CREATE DATABASE probe")
    version = conn.execute("SHOW server_version").fetchone()[0]
    print(url, postgres.throwaway_root, version, flush=True)
"""


def throwaway() -> dict[str, str]:
    """This process's environment, forcing the throwaway path whatever it uses itself: without
    the DATABASE_URL that the Django test settings put there when this session also runs the
    app's tests (the child would otherwise share this session's test database)."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return {**env, "PNEUMONIA_TEST_POSTGRES": "throwaway"}


def test_a_throwaway_server_starts_serves_and_is_gone_at_exit():
    result = run([sys.executable, "-c", PROBE], REPO, throwaway(), timeout=120)
    url, root, version = result.stdout.split(maxsplit=2)
    port = int(url.rsplit(":", 1)[1])
    assert url.startswith("postgresql://postgres@127.0.0.1:") and port != 5432
    assert version.split(".")[0].isdigit()
    import socket

    with socket.socket() as probe:  # stopped at exit: nothing listens there any more
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    assert "pneumonia-pg-" in root and not os.path.exists(root), "its data folder is deleted"


def test_the_apps_tests_pass_on_a_throwaway_server():
    """What a laptop without PostgreSQL gets from `make test`: the Django tests' database."""
    require_data()  # the app's tests upload real X-rays
    test = "django_app/diagnosis/tests/test_accounts.py::test_sign_in_and_out"
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test]
    result = run(pytest, REPO, throwaway(), timeout=300)
    assert "1 passed" in result.stdout, result.stdout[-2000:]
