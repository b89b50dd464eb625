"""Record a deployed model in MLflow: its registered version gets the ``production`` alias.

    MLFLOW_TRACKING_URI=... python -m pneumonia.promote --bundle models/bundle
    MLFLOW_TRACKING_URI=... python -m pneumonia.promote --check   # before a deploy

``--check`` only connects (a cold server is waited for, ``tracking.SERVER_WAIT_SECONDS``): the
deploy runs it before building on Heroku, so that a tracking server that is down stops the
deploy before anything goes live, not after.

The version is the one whose ``served_identity`` tag matches the bundle's (the export stage tags
every version it registers: the ONNX file, calibration, threshold, input and labels; versions
registered before that tag existed are matched by ``onnx_sha256``). When none matches (the
pipeline ran against another tracking server), the bundle's ONNX model is registered now, in a
run tagged ``promotion``. The version is tagged with the deploy's time, git commit and Heroku
app; the alias moves, and the previous production version keeps a ``replaced_at`` tag. Running
it twice for the same bundle changes nothing more.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from pneumonia import config, served, tracking

PRODUCTION_ALIAS = "production"


def find_version(client, name: str, manifest: dict):
    """The registered version that serves exactly this bundle, or None."""
    digest = served.identity_digest(manifest)
    for version in client.search_model_versions(f"name='{name}'"):
        tags = version.tags
        if tags.get("served_identity", digest) == digest and (
            tags.get("onnx_sha256") == manifest["onnx_sha256"]
        ):
            return version
    return None


def promote(bundle_dir: Path, app: str | None = None) -> dict:
    """Point the production alias at the bundle's model version; return what was done."""
    mlflow = tracking.connect()
    client = mlflow.MlflowClient()
    manifest = json.loads((bundle_dir / "model.json").read_text())
    name, sha256 = tracking.REGISTERED_MODEL_NAME, manifest["onnx_sha256"]
    version = find_version(client, name, manifest) if _model_exists(client, name) else None
    registered_now = version is None
    if registered_now:
        import onnx

        with mlflow.start_run(
            tags={"promotion": "true", "git.commit": str(manifest["git"]["commit"])}
        ):
            info = mlflow.onnx.log_model(
                onnx.load(str(bundle_dir / "model.onnx")), name="model", registered_model_name=name
            )
            mlflow.log_artifacts(str(bundle_dir), artifact_path="bundle")
        version = client.get_model_version(name, str(info.registered_model_version))
        client.set_model_version_tag(name, version.version, "onnx_sha256", sha256)
        client.set_model_version_tag(
            name, version.version, "served_identity", served.identity_digest(manifest)
        )
    try:
        previous = client.get_model_version_by_alias(name, PRODUCTION_ALIAS)
    except Exception:  # no production version yet
        previous = None
    now = datetime.now(UTC).isoformat(timespec="seconds")
    if previous is not None and previous.version != version.version:
        client.set_model_version_tag(name, previous.version, "replaced_at", now)
    if previous is None or previous.version != version.version:
        client.set_registered_model_alias(name, PRODUCTION_ALIAS, version.version)
        client.set_model_version_tag(name, version.version, "deployed_at", now)
        commit = os.environ.get("GITHUB_SHA", str(manifest["git"]["commit"]))
        client.set_model_version_tag(name, version.version, "deployed_commit", commit)
        if app:
            client.set_model_version_tag(name, version.version, "heroku_app", app)
    return {
        "name": name,
        "version": version.version,
        "registered_now": registered_now,
        "previous": None if previous is None else previous.version,
    }


def _model_exists(client, name: str) -> bool:
    try:
        client.get_registered_model(name)
    except Exception:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=config.BUNDLE_DIR)
    parser.add_argument("--app", default=os.environ.get("HEROKU_APP_NAME"))
    parser.add_argument("--check", action="store_true", help="only check that MLflow answers")
    args = parser.parse_args(argv)
    if args.check:
        try:
            tracking.connect()
        except tracking.TrackingUnavailableError as exc:
            print(f"promote: error: {exc} Nothing was deployed.", file=sys.stderr)
            return 1
        print(f"promote: MLflow at {tracking._public_uri(tracking.tracking_uri())} answers")
        return 0
    try:
        done = promote(args.bundle, args.app)
    except tracking.TrackingUnavailableError as exc:
        print(
            f"promote: error: {exc} The release is live but the '{PRODUCTION_ALIAS}' alias was "
            "not moved: re-run the deploy job when MLflow answers (this commit is live, so it "
            "deploys nothing again and moves the alias).",
            file=sys.stderr,
        )
        return 1
    replaced = done["previous"] not in (None, done["version"])
    print(
        f"promote: {done['name']} v{done['version']} is now '{PRODUCTION_ALIAS}'"
        f"{' (registered now)' if done['registered_now'] else ''}"
        f"{', replacing v' + done['previous'] if replaced else ''}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
