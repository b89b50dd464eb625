"""A local HTTP server speaking the few Heroku Platform API calls the deploy command uses, with
their documented shapes: POST /sources (source_blob put_url/get_url), PUT/GET of the blob,
GET /apps/{app} (web_url), POST/GET /apps/{app}/builds, GET /apps/{app}/releases (Range
header), POST /apps/{app}/releases (rollback). It really receives and opens the tarball;
whether builds succeed is up to the test. With an ``AppHost`` it also runs each release like a
dyno, so the app's ``web_url`` serves what was really deployed (and, after a rollback, the
release rolled back to)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class AppHost:
    """Runs releases like Heroku's dynos: each slug (the uploaded tarball) in its own folder,
    with the app's own venv (django_app/requirements.txt only, no torch), collectstatic and the
    Procfile's release command, then its web command on one fixed port, the app's web_url. A
    new release replaces the running process; a rollback starts the earlier slug again."""

    def __init__(self, folder: Path, venv: Path, env: dict[str, str], port: int):
        self.folder, self.venv, self.port = folder, venv, port
        self.env = {
            "PATH": f"{venv / 'bin'}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
            "HOME": os.environ.get("HOME", "/tmp"),
            "PORT": str(port),
            "WEB_CONCURRENCY": "1",
            **env,
        }
        self.web_url = f"http://127.0.0.1:{port}/"
        self.process: subprocess.Popen | None = None
        self.slugs: dict[int, Path] = {}
        self.running: int | None = None

    def manage(self, app_dir: Path, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            ["python", "manage.py", *args],
            cwd=app_dir,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout

    def release(self, version: int, tarball: bytes) -> None:
        slug = self.folder / f"v{version}"
        slug.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
            tar.extractall(slug, filter="data")
        self.slugs[version] = slug
        self.start(version)

    def start(self, version: int) -> None:
        self.stop()
        slug = self.slugs[version]
        commands = dict(
            line.split(": ", 1)
            for line in (slug / "Procfile").read_text().splitlines()
            if ": " in line
        )
        log = open(slug / "dyno.log", "ab")  # noqa: SIM115 (the dyno's lifetime)
        for command in ("python manage.py collectstatic --noinput", commands.get("release")):
            if command:
                subprocess.run(
                    ["bash", "-c", command],
                    cwd=slug,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        web = commands["web"].replace("0.0.0.0", "127.0.0.1")  # the router is this machine
        self.process = subprocess.Popen(
            ["bash", "-c", web],
            cwd=slug,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.running = version

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        self.process = None


class FakeHeroku:
    def __init__(
        self,
        app: str,
        api_key: str,
        build_outcome: str = "succeeded",
        web_url: str | None = None,
        host: AppHost | None = None,
    ):
        self.app, self.api_key, self.build_outcome, self.host = app, api_key, build_outcome, host
        self.blobs: dict[str, bytes] = {}
        self.slugs: dict[str, dict] = {}  # id -> {"id", "commit"}: a build's slug
        self.builds: dict[str, dict] = {}
        self.releases = [
            {
                "id": str(uuid.uuid4()),
                "version": 1,
                "status": "succeeded",
                "current": True,
                "description": "initial",
                "slug": None,  # Heroku's first release of a new app runs no slug
            }
        ]
        self.calls: list[tuple[str, str]] = []
        self.rollbacks: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # Like apps created since June 2023: the host is not derived from the app's name.
        self.web_url = (
            host.web_url if host else web_url or f"https://{app}-0123456789ab.herokuapp.com/"
        )
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def tar_members(self, build_id: str) -> dict[str, bytes]:
        blob = self.blobs[self.builds[build_id]["blob"]]
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}

    def _release(self, description: str, slug: dict | None = None) -> dict:
        for release in self.releases:
            release["current"] = False
        release = {
            "id": str(uuid.uuid4()),
            "version": len(self.releases) + 1,
            "status": "succeeded",
            "current": True,
            "description": description,
            "slug": slug,
        }
        self.releases.append(release)
        return release

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                ok = (
                    self.headers.get("Authorization") == f"Bearer {fake.api_key}"
                    and self.headers.get("Accept") == "application/vnd.heroku+json; version=3"
                )
                if not ok:
                    self._send(
                        401, {"id": "unauthorized", "message": "Invalid credentials provided."}
                    )
                return ok

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_PUT(self):  # the presigned upload URL: no API auth
                fake.calls.append(("PUT", self.path))
                fake.blobs[self.path.rsplit("/", 1)[1]] = self._body()
                self._send(200, b"")

            def do_GET(self):
                fake.calls.append(("GET", self.path))
                if self.path.startswith("/blobs/"):
                    return self._send(200, fake.blobs[self.path.rsplit("/", 1)[1]])
                if not self._authorized():
                    return None
                if self.path == f"/apps/{fake.app}":
                    return self._send(200, {"name": fake.app, "web_url": fake.web_url})
                if self.path == f"/apps/{fake.app}/releases":
                    if "order=desc" not in (self.headers.get("Range") or ""):
                        return self._send(200, fake.releases)
                    return self._send(206, list(reversed(fake.releases)))
                if self.path.startswith(f"/apps/{fake.app}/slugs/"):
                    slug = fake.slugs.get(self.path.rsplit("/", 1)[1])
                    if slug is None:
                        return self._send(404, {"id": "not_found", "message": "Not found."})
                    return self._send(200, slug)
                if self.path.startswith(f"/apps/{fake.app}/builds/"):
                    return self._send(200, fake.builds[self.path.rsplit("/", 1)[1]]["resource"])
                return self._send(404, {"id": "not_found", "message": "Not found."})

            def do_POST(self):
                fake.calls.append(("POST", self.path))
                if not self._authorized():
                    return None
                body = json.loads(self._body() or b"{}")
                if self.path == "/sources":
                    blob_url = f"{fake.url}/blobs/{uuid.uuid4().hex}"
                    return self._send(
                        201, {"source_blob": {"get_url": blob_url, "put_url": blob_url}}
                    )
                if self.path == f"/apps/{fake.app}/builds":
                    build_id = str(uuid.uuid4())
                    blob = body["source_blob"]["url"].rsplit("/", 1)[1]
                    resource = {
                        "id": build_id,
                        "status": "pending",
                        "release": None,
                        "source_blob": body["source_blob"],
                        "output_stream_url": f"{fake.url}/streams/{build_id}",
                    }
                    fake.builds[build_id] = {"blob": blob, "resource": resource}
                    self._send(201, resource)
                    # The build finishes right after it is first reported as pending.
                    if fake.build_outcome == "succeeded":
                        slug_id = str(uuid.uuid4())
                        commit = body["source_blob"].get("version")
                        fake.slugs[slug_id] = {"id": slug_id, "commit": commit}
                        resource["slug"] = {"id": slug_id}
                        release = fake._release(f"Build {build_id}", {"id": slug_id})
                        if fake.host:
                            fake.host.release(release["version"], fake.blobs[blob])
                        resource["release"] = {"id": release["id"]}
                    resource["status"] = fake.build_outcome
                    return None
                if self.path == f"/apps/{fake.app}/releases":
                    target = next(r for r in fake.releases if r["id"] == body["release"])
                    fake.rollbacks.append(target["id"])
                    release = fake._release(f"Rollback to v{target['version']}", target["slug"])
                    if fake.host and target["version"] in fake.host.slugs:
                        fake.host.slugs[release["version"]] = fake.host.slugs[target["version"]]
                        fake.host.start(release["version"])
                    return self._send(201, release)
                return self._send(404, {"id": "not_found", "message": "Not found."})

        return Handler
