"""The app as Heroku runs it, for the benchmarks: packaged with a bundle, its own venv from the
app lock, a new PostgreSQL database on 127.0.0.1, collectstatic and the Procfile's release
command run. bench/web.py and bench/pacs.py start its web command themselves."""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pneumonia.package import APP_DIR, app_venv, package_app
from tests.conftest import free_port

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class PackagedApp:
    dir: Path
    venv: Path
    env: dict[str, str]  # the dyno's environment: the app venv first on PATH, PORT, DATABASE_URL
    port: int
    database: str
    procfile: dict[str, str]  # process type -> command


def packaged_app(bundle: Path, work: Path, **extra_env: str) -> PackagedApp:
    """Package the app with ``bundle`` under ``work/app``, give it a new database, run its
    release phase; ``extra_env`` is added to the environment."""
    import psycopg

    venv = app_venv()
    app = work / "app"
    package_app(APP_DIR, bundle, app)
    database = f"xray_bench_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    port = free_port()
    env = {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(work),
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "127.0.0.1",
        "DJANGO_SSL_REDIRECT": "0",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{database}",
        **extra_env,
    }
    procfile = dict(line.split(": ", 1) for line in (app / "Procfile").read_text().splitlines())
    for command in ("python manage.py collectstatic --noinput", procfile["release"]):
        subprocess.run(["bash", "-c", command], cwd=app, env=env, check=True, capture_output=True)
    return PackagedApp(app, venv, env, port, database, procfile)


def drop_database(database: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
