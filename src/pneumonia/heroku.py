"""Deploy the packaged web app to Heroku through the Platform API (no Heroku CLI needed).

    HEROKU_API_KEY=... python -m pneumonia.heroku --app NAME --dir build/heroku-app \\
        --sample data/chest_xray/test/NORMAL/IM-0001-0001.jpeg [--url https://...]

Steps: find the app's public URL (its ``web_url`` from ``GET /apps/{app}``: apps created
since June 2023 live at ``NAME-<random>.herokuapp.com``, so the name alone does not give it;
``--url`` overrides it, e.g. for a custom domain); remember the current release; upload the
folder as a source tarball (``POST /sources``, ``PUT`` to its ``put_url``); build it
(``POST /apps/{app}/builds``) and wait; smoke-test the live app (``/health`` must report the
new model's sha256 and the release's source commit from the folder's ``release.json``, so that
dynos still running the previous release do not pass it; then one real prediction must
succeed); when the smoke test fails, roll back
to the remembered release (``POST /apps/{app}/releases``) and fail. A failed build releases
nothing, so there is nothing to roll back.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

API = os.environ.get("HEROKU_API_URL", "https://api.heroku.com")


class DeployError(RuntimeError):
    """The deploy did not happen or was rolled back; the message says which and why."""


class HerokuClient:
    def __init__(self, app: str, api_key: str, base_url: str = API, timeout: float = 30):
        if not api_key:
            raise DeployError(
                "HEROKU_API_KEY is not set: create one with `heroku authorizations:create` (or in "
                "Account settings > API key) and store it as the repository secret HEROKU_API_KEY"
            )
        self.app, self.base_url, self.timeout = app, base_url, timeout
        self.session = requests.Session()
        self.session.headers.update(
            {
                "Accept": "application/vnd.heroku+json; version=3",
                "Authorization": f"Bearer {api_key}",
            }
        )

    def request(
        self, method: str, path: str, body: dict | None = None, headers: dict | None = None
    ) -> Any:
        try:
            response = self.session.request(
                method,
                self.base_url.rstrip("/") + path,
                json=body,
                headers=headers,
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise DeployError(f"Heroku API {method} {path} unreachable: {exc}") from None
        if not response.ok:
            raise DeployError(
                f"Heroku API {method} {path} answered {response.status_code}: {response.text[:500]}"
            )
        return response.json() if response.content else None

    def web_url(self) -> str:
        """The app's public URL as Heroku reports it (``web_url`` of ``GET /apps/{app}``)."""
        url = (self.request("GET", f"/apps/{self.app}") or {}).get("web_url")
        if not url:
            raise DeployError(f"Heroku API GET /apps/{self.app} gave no web_url")
        return url

    def current_release(self) -> dict | None:
        releases = self.request(
            "GET", f"/apps/{self.app}/releases", headers={"Range": "version ..; order=desc, max=20"}
        )
        for release in releases:
            if release.get("current") or release.get("status") == "succeeded":
                return release
        return None

    def live_commit(self) -> str | None:
        """The source commit of the release Heroku runs now (its slug's ``commit``, which a
        build takes from ``source_blob.version``); None when nothing has been deployed."""
        release = self.current_release()
        slug = (release or {}).get("slug") or {}
        if not slug.get("id"):
            return None
        return (self.request("GET", f"/apps/{self.app}/slugs/{slug['id']}") or {}).get("commit")

    def upload_source(self, tarball: bytes) -> str:
        blob = self.request("POST", "/sources")["source_blob"]
        try:  # a presigned URL: no API headers, an empty Content-Type (Heroku's docs)
            requests.put(
                blob["put_url"], data=tarball, headers={"Content-Type": ""}, timeout=120
            ).raise_for_status()
        except requests.RequestException as exc:
            raise DeployError(f"uploading the source tarball failed: {exc}") from None
        return blob["get_url"]

    def build(self, source_url: str, version: str, timeout: float = 900, poll: float = 5) -> dict:
        build = self.request(
            "POST",
            f"/apps/{self.app}/builds",
            {"source_blob": {"url": source_url, "version": version}},
        )
        deadline = time.monotonic() + timeout
        while build["status"] == "pending":
            if time.monotonic() > deadline:
                raise DeployError(f"build {build['id']} still pending after {timeout:.0f}s")
            time.sleep(poll)
            build = self.request("GET", f"/apps/{self.app}/builds/{build['id']}")
        if build["status"] != "succeeded":
            raise DeployError(
                f"build {build['id']} {build['status']}: nothing was released "
                f"(log: {build.get('output_stream_url', 'n/a')})"
            )
        return build

    def rollback(self, release_id: str) -> dict:
        return self.request("POST", f"/apps/{self.app}/releases", {"release": release_id})


def make_tarball(folder: Path) -> bytes:
    """gzipped tarball of ``folder``'s contents, files at the archive root (Heroku's layout)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(Path(folder).rglob("*")):
            tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return buffer.getvalue()


def smoke_test(
    app_url: str,
    expected_sha256: str,
    sample: Path,
    token: str,
    timeout: float = 180,
    poll: float = 3,
    expected_commit: str | None = None,
) -> dict:
    """Wait until the live app serves ``expected_sha256`` (and, when given, reports the release
    ``expected_commit``), then make one real prediction with the API ``token`` of a dedicated
    smoke-test account."""
    deadline, last = time.monotonic() + timeout, "no answer"
    base = app_url.rstrip("/")
    wanted = f"sha256 {expected_sha256}" + (
        f" at commit {expected_commit}" if expected_commit else ""
    )
    while True:
        try:
            health = requests.get(f"{base}/health", timeout=15).json()
            if health.get("sha256") == expected_sha256 and (
                expected_commit is None or health.get("commit") == expected_commit
            ):
                break
            last = (
                f"/health reports model sha256 {health.get('sha256')} at commit "
                f"{health.get('commit')}"
            )
        except (requests.RequestException, ValueError, AttributeError) as exc:
            last = f"/health failed: {exc}"
        if time.monotonic() > deadline:
            raise DeployError(f"smoke test: the app never served {wanted}: {last}")
        time.sleep(poll)
    try:
        response = requests.post(
            f"{base}/api/v1/predictions",
            files={"image": ("upload.jpeg", Path(sample).read_bytes(), "image/jpeg")},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
    except requests.RequestException as exc:
        raise DeployError(f"smoke test: the prediction request failed: {exc}") from None
    status, payload = response.status_code, response.content
    try:
        prediction = response.json() if response.ok else {}
    except ValueError:
        prediction = {}
    if status == 401:
        raise DeployError(
            "smoke test: the app refused the API token (401). Create one for a smoke-test account "
            "(`heroku run python manage.py add_clinician smoke-test --api-token deploy`) and "
            "store it as the HEROKU_SMOKE_TEST_TOKEN secret"
        )
    if status != 200 or prediction.get("label") not in ("NORMAL", "PNEUMONIA"):
        raise DeployError(f"smoke test: unexpected prediction answer {status}: {payload[:300]!r}")
    return prediction


def release_commit(folder: Path) -> str | None:
    """The source commit ``pneumonia.package`` wrote into the folder's ``release.json``."""
    try:
        return json.loads((folder / "release.json").read_text()).get("commit") or None
    except (OSError, ValueError, AttributeError):
        return None


@dataclass
class DeployResult:
    build_id: str
    release_id: str | None
    previous_release_id: str | None
    prediction: dict
    app_url: str


def deploy(
    client: HerokuClient,
    folder: Path,
    version: str,
    app_url: str | None,
    sample: Path,
    token: str,
    smoke_timeout: float = 180,
    build_poll: float = 5,
) -> DeployResult:
    """Build ``folder`` on Heroku, smoke-test it at ``app_url`` (None: the app's ``web_url``),
    roll back if the smoke test fails."""
    manifest = json.loads((Path(folder) / "model" / "model.json").read_text())
    commit = release_commit(Path(folder))
    app_url = app_url or client.web_url()  # before building: an unknown app deploys nothing
    previous = client.current_release()
    source_url = client.upload_source(make_tarball(folder))
    build = client.build(source_url, version, poll=build_poll)
    release_id = (build.get("release") or {}).get("id")
    try:
        prediction = smoke_test(
            app_url,
            manifest["onnx_sha256"],
            sample,
            token,
            timeout=smoke_timeout,
            expected_commit=commit,
        )
    except DeployError as exc:
        if previous is None:
            raise DeployError(f"{exc}; no earlier release to roll back to") from None
        client.rollback(previous["id"])
        raise DeployError(f"{exc}; rolled back to release v{previous.get('version')}") from None
    return DeployResult(build["id"], release_id, previous and previous["id"], prediction, app_url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--app", default=os.environ.get("HEROKU_APP_NAME"), required=False)
    parser.add_argument("--dir", type=Path, default=Path("build/heroku-app"))
    parser.add_argument(
        "--url", help="the app's public URL (default: its web_url from the Platform API)"
    )
    parser.add_argument(
        "--sample", type=Path, required=True, help="a real X-ray for the smoke test"
    )
    parser.add_argument("--version", default=os.environ.get("GITHUB_SHA", "local"))
    args = parser.parse_args(argv)
    try:
        if not args.app:
            raise DeployError("no app name: pass --app or set HEROKU_APP_NAME")
        client = HerokuClient(args.app, os.environ.get("HEROKU_API_KEY", ""))
        token = os.environ.get("HEROKU_SMOKE_TEST_TOKEN", "")
        if not token:
            raise DeployError(
                "HEROKU_SMOKE_TEST_TOKEN is not set: the smoke test needs an API token of a "
                "smoke-test account (`heroku run python manage.py add_clinician smoke-test "
                "--api-token deploy`); add it as a repository secret. Nothing was deployed."
            )
        result = deploy(client, args.dir, args.version, args.url, args.sample, token)
    except DeployError as exc:
        print(f"heroku: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"heroku: deployed build {result.build_id} (release {result.release_id}) to "
        f"{result.app_url}; smoke test predicted {result.prediction['label']} with model "
        f"{result.prediction['model']['version']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
