"""The ci job's test data: pulled from the DVC remote, or skipped with the reason for a pull
request that gets no secrets (from a fork; from Dependabot without the key pair in its own
secret store).

    python -m pneumonia.testdata      # the ci workflow's data step

Pulls ``chest_xray.dvc`` and ``samples.dvc`` when the DVC key pair is set. Without it, on a pull
request from a fork or by Dependabot, it pulls nothing and says so (a warning annotation and the
job summary), and sets ``PNEUMONIA_DATA_UNAVAILABLE`` for the next steps: the tests that need
the dataset are then skipped with that reason, never silently, and the rest run. A push, or a
pull request from a branch of the repository itself, without the key pair is a configuration
error (exit 2), not a reason to skip. Exit status: 0 pulled or skipped, 2 otherwise (the message
says what to set).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pneumonia.retrain import append_github_file

TARGETS = ("chest_xray.dvc", "samples.dvc")
DEPENDABOT = "dependabot[bot]"


class DataError(Exception):
    pass


def without_secrets(env: dict[str, str]) -> str | None:
    """Why this run gets no DVC secrets (a fork's or Dependabot's pull request), or None."""
    if not env.get("GITHUB_EVENT_NAME", "").startswith("pull_request"):
        return None
    event: dict = {}
    path = env.get("GITHUB_EVENT_PATH")
    if path and Path(path).is_file():
        event = json.loads(Path(path).read_text())
    pull = event.get("pull_request") or {}
    if ((pull.get("head") or {}).get("repo") or {}).get("fork"):
        return "a pull request from a fork gets none of the repository's secrets"
    if env.get("GITHUB_ACTOR") == DEPENDABOT or (pull.get("user") or {}).get("login") == DEPENDABOT:
        return (
            "a Dependabot pull request gets only Dependabot's secrets, and the DVC key pair is "
            "not among them (docs/operations.md, Secrets)"
        )
    return None


def plan(env: dict[str, str]) -> str | None:
    """None: pull the data. A string: skip it, for that reason. DataError: the key pair is
    missing where it must be set."""
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return None
    why = without_secrets(env)
    if why is None:
        raise DataError(
            "no DVC key pair (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY): set the read-only pair "
            "in the repository's secrets (docs/operations.md, Secrets); only pull requests from "
            "forks and from Dependabot run without it"
        )
    return (
        f"no test data from the DVC remote: {why}. The tests that need the dataset are skipped; "
        "a maintainer's push, or a re-run from a branch of this repository, runs them"
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.parse_args(argv)
    try:
        reason = plan(dict(os.environ))
    except DataError as exc:
        print(f"testdata: error: {exc}", file=sys.stderr)
        return 2
    if reason is not None:
        print(f"::warning title=Test data skipped::{reason}")
        append_github_file("GITHUB_ENV", f"PNEUMONIA_DATA_UNAVAILABLE={reason}")
        append_github_file("GITHUB_STEP_SUMMARY", f"### Test data\n\n{reason}\n")
        return 0
    beside = Path(sys.executable).with_name("dvc")
    dvc = str(beside) if beside.exists() else "dvc"
    if subprocess.run([dvc, "pull", *TARGETS]).returncode != 0:
        print(f"testdata: error: `dvc pull {' '.join(TARGETS)}` failed (above)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
