"""Build the folder that is deployed to Heroku: ``django_app/`` plus the serving bundle.

    python -m pneumonia.package --out build/heroku-app [--commit SHA]

The bundle lands in ``model/`` inside the app (where the app's settings look for it), after its
sha256 is checked against ``model.json``; ``release.json`` names the source commit (``--commit``,
default ``$GITHUB_SHA``), which the app's ``/health`` reports so that the deploy's smoke test
knows it is talking to the new release; and the serving code the pipeline uses
(``src/pneumonia/serving.py``) lands in ``pneumonia/serving.py``, where the app imports it: one
source for decoding, preprocessing, calibration and the heat map. Local files that must never
ship (SQLite database, collected static files, caches) are left out. The folder is written
atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from pneumonia import config
from pneumonia.files import atomic_directory
from pneumonia.serving import sha256_file

APP_DIR = config.ROOT / "django_app"
# What goes into the slug besides the bundle: a change to one of these deploys the app.
SERVING_MODULE = Path(__file__).with_name("serving.py")
PYTHON_VERSION_FILE = config.ROOT / ".python-version"  # Heroku's buildpack reads it at the root
SLUG_SOURCES = (
    "django_app/",
    "src/pneumonia/serving.py",
    "src/pneumonia/package.py",
    ".python-version",
)
EXCLUDE = ("__pycache__", "*.pyc", "db.sqlite3", "staticfiles", "model", ".pytest_cache")


class PackageError(RuntimeError):
    pass


RELEASE_FILE = "release.json"  # at the slug's root: {"commit": ...}; the app's settings read it


def package_app(app_dir: Path, bundle_dir: Path, out_dir: Path, commit: str | None = None) -> dict:
    """Copy the app and the bundle into ``out_dir`` (with ``commit``: its ``release.json``);
    return the bundle's manifest."""
    manifest_path, onnx_path = bundle_dir / "model.json", bundle_dir / "model.onnx"
    if not manifest_path.is_file() or not onnx_path.is_file():
        raise PackageError(
            f"no bundle in {bundle_dir}: run `dvc pull models/bundle` (if the DVC remote lacks it, "
            "push it from the machine that trained the model with `dvc push`) or `dvc repro export`"
        )
    manifest = json.loads(manifest_path.read_text())
    if sha256_file(onnx_path) != manifest["onnx_sha256"]:
        raise PackageError(f"{onnx_path} does not match the sha256 in {manifest_path}")
    if not (app_dir / "Procfile").is_file():
        raise PackageError(f"{app_dir} is not the web app (no Procfile)")

    with atomic_directory(out_dir) as staging:
        copy_app(app_dir, staging)
        (staging / "model").mkdir()
        for name in ("model.onnx", "model.json"):
            shutil.copy2(bundle_dir / name, staging / "model" / name)
        if commit:
            (staging / RELEASE_FILE).write_text(json.dumps({"commit": commit}) + "\n")
    return manifest


def copy_app(app_dir: Path, out_dir: Path) -> None:
    """The app's code as it runs on a dyno: ``app_dir`` without local files, plus the serving
    module in ``pneumonia/serving.py`` (a namespace package, as src/pneumonia is) and the
    project's ``.python-version``."""
    shutil.copytree(app_dir, out_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*EXCLUDE))
    shutil.copy2(PYTHON_VERSION_FILE, out_dir / ".python-version")
    (out_dir / "pneumonia").mkdir(exist_ok=True)
    shutil.copy2(SERVING_MODULE, out_dir / "pneumonia" / "serving.py")


def app_venv(app_dir: Path = APP_DIR, cache: Path | None = None) -> Path:
    """A virtual environment with only the app's lock (what Heroku's Python buildpack installs:
    ``requirements.txt``, hashes checked), cached under ``.cache/`` by the hash of the lock.
    Fails when what got installed differs from the lock."""
    import hashlib
    import subprocess

    from pneumonia.locks import installed_differences

    requirements = app_dir / "requirements.txt"
    key = hashlib.sha256(requirements.read_bytes() + sys.version.encode()).hexdigest()[:12]
    venv = (cache or config.ROOT / ".cache") / f"heroku-venv-{key}"
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "install", "-q", "--require-hashes"]
        subprocess.run([*pip, "-r", str(requirements)], check=True)
        differences = installed_differences(requirements, str(venv / "bin" / "python"))
        if differences:
            raise PackageError(f"{venv} differs from {requirements}: {differences}")
        (venv / ".complete").touch()
    return venv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--app", type=Path, default=APP_DIR)
    parser.add_argument("--bundle", type=Path, default=config.BUNDLE_DIR)
    parser.add_argument("--out", type=Path, default=config.ROOT / "build" / "heroku-app")
    parser.add_argument(
        "--commit", default=os.environ.get("GITHUB_SHA"), help="the source commit (release.json)"
    )
    args = parser.parse_args(argv)
    try:
        manifest = package_app(args.app, args.bundle, args.out, args.commit)
    except PackageError as exc:
        print(f"package: error: {exc}", file=sys.stderr)
        return 1
    print(f"package: {args.out} with model {manifest['version']} ({manifest['onnx_sha256']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
