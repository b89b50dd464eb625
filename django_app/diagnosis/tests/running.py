"""The packaged app booted as on Heroku, for the end-to-end tests: its own venv from
django_app/requirements.txt, ``pneumonia.package``'s build with a bundle, the Procfile's release
and web commands under gunicorn on 127.0.0.1, a PostgreSQL database of its own, and the accounts
the README tells staff to make."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pneumonia.package import package_app
from tests.conftest import free_port, stop
from tests.postgres import database_url

APP = Path(__file__).resolve().parents[2]
REPO = APP.parent


def procfile(app: Path) -> dict[str, str]:
    lines = (app / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if ": " in line)


def get(url: str, headers: dict | None = None, data: bytes | None = None, timeout: float = 10):
    request = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, dict(response.headers), response.read()


def multipart_image(image: bytes, field: str = "image") -> tuple[bytes, str]:
    """A multipart/form-data body holding one JPEG file; returns (body, content type)."""
    boundary = secrets.token_hex(12)
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        'filename="upload.jpeg"\r\nContent-Type: image/jpeg\r\n\r\n'
    )
    return head.encode() + image + f"\r\n--{boundary}--\r\n".encode(), (
        f"multipart/form-data; boundary={boundary}"
    )


HTTPS = {"X-Forwarded-Proto": "https"}  # what Heroku's router adds in front of the dyno
BROWSER_PASSWORD = "Lung-Field-Check-2026"


RUNNING_COMMIT = "a" * 40  # the commit the booted app was packaged from


@contextmanager
def running_app(venv: Path, bundle_dir: Path, workdir: Path) -> Iterator[dict]:
    """The app packaged with ``bundle_dir`` in ``workdir``, booted with ``venv``, until the
    block ends (then stopped by PID and its database dropped)."""
    import psycopg

    build = workdir / "app"
    package_app(APP, bundle_dir, build, commit=RUNNING_COMMIT)
    database = f"xray_boot_{secrets.token_hex(4)}"
    admin = database_url()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    port = free_port()
    env = {
        "PATH": f"{venv / 'bin'}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/tmp"),
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "localhost,127.0.0.1",
        "DJANGO_SSL_REDIRECT": "0",  # the browser below talks plain HTTP to localhost
        "DATABASE_URL": database_url(database, scheme="postgres"),
        "PROMETHEUS_MULTIPROC_DIR": str(build.parent / "metrics"),  # gunicorn.conf.py makes it
    }
    commands = procfile(build)
    # What the buildpack and the release phase run before the dyno starts.
    for command in ("python manage.py collectstatic --noinput", commands["release"]):
        subprocess.run(["bash", "-c", command], cwd=build, env=env, check=True, capture_output=True)
    log = open(build / "web.log", "w")  # noqa: SIM115 (closed below, after the server stops)
    started = time.monotonic()
    web = commands["web"].replace("0.0.0.0", "127.0.0.1")  # a local router: loopback only
    proc = subprocess.Popen(
        ["bash", "-c", web],
        cwd=build,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get(f"{url}/health", HTTPS)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((build / "web.log").read_text()[-3000:]) from None
                time.sleep(0.2)
        # Accounts, made the way the README tells staff to: clinicians for the browser and for
        # a hospital system's API calls, a smoke-test account whose API token the deploy job
        # uses, and a staff account whose token a Prometheus scrape sends.
        tokens = {}
        for name, extra in (
            ("dr_browser", []),
            ("dr_api", ["--api-token", "ward system"]),
            ("smoke-test", ["--synthetic", "--api-token", "deploy"]),
            ("monitor", ["--staff", "--api-token", "prometheus"]),
        ):
            made = subprocess.run(
                ["python", "manage.py", "add_clinician", name, "--password-stdin", *extra],
                cwd=build,
                env=env,
                input=f"{BROWSER_PASSWORD}\n",
                capture_output=True,
                text=True,
                check=True,
            )
            if extra:
                tokens[name] = made.stdout.split("store it now): ")[1].strip()
        token = tokens["smoke-test"]
        yield {
            "url": url,
            "port": port,
            "venv": venv,
            "build": build,
            "token": token,  # the smoke test's: synthetic traffic
            "clinician_token": tokens["dr_api"],  # real traffic
            "staff_token": tokens["monitor"],
            "metrics_dir": Path(env["PROMETHEUS_MULTIPROC_DIR"]),
            "database": database,
            "env": env,  # what manage.py needs beside the running app
            "boot_seconds": time.monotonic() - started,
        }
    finally:
        stop(proc)
        log.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
