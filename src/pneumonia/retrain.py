"""The scheduled / manual retraining job's decision: is there anything to retrain?

    python -m pneumonia.retrain [--force] [--set train.epochs=3 ...] [--reason "..."]

Something changed when ``dvc status`` finds a stage out of date (new data version, changed
parameters or code), when parameters are overridden with ``--set``, or with ``--force``.
Otherwise the job ends at once with a one-line summary. Writes ``changed=true|false`` to
``$GITHUB_OUTPUT`` and the summary to ``$GITHUB_STEP_SUMMARY`` when those are set (GitHub
Actions); the workflow then runs ``dvc repro`` (or ``dvc exp run -S`` for overrides) itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from pneumonia import config, tracking
from pneumonia.tools import tool


def stale_stages() -> list[str]:
    """Stages whose dependencies, parameters or outputs changed since dvc.lock."""
    result = subprocess.run(
        [tool("dvc"), "status", "--json"],
        cwd=config.ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    status = json.loads(result.stdout or "{}")
    return sorted(k.split(":")[-1] for k in status if not k.endswith(".dvc"))


def decide(force: bool, overrides: list[str]) -> tuple[bool, str]:
    """Whether the pipeline must run; return (changed, one-line summary)."""
    data = tracking.data_version()
    stale = stale_stages()
    if not (force or overrides or stale):
        return False, (
            f"Nothing changed (data {data['md5']}, {data['nfiles']} files; params and code as "
            "in dvc.lock): no retraining."
        )
    if force:
        why = "forced"
    elif overrides:
        why = "parameters " + ", ".join(overrides)
    else:
        why = "out of date: " + ", ".join(stale)
    return True, f"Retraining ({why}) on data {data['md5']} ({data['nfiles']} files)."


def append_github_file(env_var: str, text: str) -> None:
    """Append a line to the file a GitHub Actions variable names (outputs, job summary)."""
    path = os.environ.get(env_var)
    if path:
        with open(path, "a") as f:
            f.write(text + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--force", action="store_true", help="retrain even if nothing changed")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="parameter override the run will apply, e.g. train.epochs=3 (repeatable)",
    )
    parser.add_argument("--reason", default="", help="why this run was started (for the record)")
    args = parser.parse_args(argv)
    for override in args.set:
        if "=" not in override or override.startswith("="):
            print(f"retrain: error: --set takes KEY=VALUE, got {override!r}", file=sys.stderr)
            return 2
    try:
        changed, summary = decide(args.force, args.set)
    except subprocess.CalledProcessError as exc:
        print(
            f"retrain: error: `{' '.join(exc.cmd)}` failed (exit {exc.returncode})", file=sys.stderr
        )
        return 1
    if args.reason:
        summary += f" Reason: {args.reason}"
    print(summary)
    append_github_file("GITHUB_OUTPUT", f"changed={'true' if changed else 'false'}")
    append_github_file("GITHUB_STEP_SUMMARY", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
