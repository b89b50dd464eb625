"""The PostgreSQL server the tests use: the configured one, the local one, or a throwaway one.

``PNEUMONIA_TEST_POSTGRES``: a server URL (``postgresql://user@host:port``) to use as is, or
``throwaway`` to always start one. Unset: 127.0.0.1:5432 when it accepts the passwordless
``postgres`` user (as on this project's machines and CI), else a throwaway server from Debian's
``postgresql`` package (``make system-deps``): ``initdb`` into a temporary folder, started on
a free port on 127.0.0.1, stopped and removed when the test process exits. No Django here:
the app's test settings import it before Django is set up.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

LOCAL = "postgresql://postgres@127.0.0.1:5432"
_server: str | None = None
throwaway_root: Path | None = None  # the data folder of the server this process started


class PostgresUnavailable(RuntimeError):
    pass


def server_url() -> str:
    """``postgresql://postgres@host:port`` of the server for this test process."""
    global _server
    if _server is None:
        wanted = os.environ.get("PNEUMONIA_TEST_POSTGRES", "")
        if wanted and wanted != "throwaway":
            _server = wanted.rstrip("/")
        elif wanted != "throwaway" and accepts(LOCAL):
            _server = LOCAL
        else:
            _server = start_throwaway()
        # Subprocesses (the app's release phase, MLflow) get this server, not their own.
        os.environ["PNEUMONIA_TEST_POSTGRES"] = _server
    return _server


def database_url(database: str = "postgres", scheme: str = "postgresql") -> str:
    """The URL of ``database`` on the test server, with ``scheme`` (``postgres`` for
    dj-database-url, ``postgresql+psycopg`` for SQLAlchemy)."""
    return f"{scheme}://{server_url().split('://', 1)[1]}/{database}"


def accepts(url: str) -> bool:
    try:
        import psycopg

        with psycopg.connect(f"{url}/postgres", connect_timeout=3):
            return True
    except Exception:  # noqa: BLE001 - any failure means: not usable
        return False


def _binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    if shutil.which("initdb"):
        return Path(shutil.which("initdb")).parent
    raise PostgresUnavailable(
        "no PostgreSQL server at 127.0.0.1:5432 and no initdb to start one: install Debian's "
        "postgresql package (`sudo make system-deps`) or set PNEUMONIA_TEST_POSTGRES to a "
        "server URL"
    )


def start_throwaway() -> str:
    """Start a private server on a free port of 127.0.0.1; stopped and deleted at exit."""
    global throwaway_root
    bin_dir = _binaries()
    root = throwaway_root = Path(tempfile.mkdtemp(prefix="pneumonia-pg-"))
    data = root / "data"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # initdb refuses to run as root: there, the server runs as Debian's postgres user.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres")
    run = [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
    subprocess.run(run, check=True, capture_output=True)
    options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off"
    start = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options]
    subprocess.run(
        [*start, "-l", str(root / "log"), "-w", "start"], check=True, capture_output=True
    )

    def stop() -> None:
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)

    atexit.register(stop)
    return f"postgresql://postgres@127.0.0.1:{port}"
