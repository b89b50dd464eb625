"""A pull request's files, laid out as evidence for the base branch's code to judge.

    python -m pneumonia.evidence --pr 12 --sha HEAD_SHA --base-ref main --into pr

Run from a checkout of the base branch (pr-review runs on ``pull_request_target``: the workflow,
the gate and the report are the base's). Fetches ``refs/pull/N/head`` from ``origin`` (GitHub
keeps it for pull requests from forks too), checks that it is ``--sha``, the commit the event
names (a newer push makes this run stale: it stops, the newer run judges), and writes that
commit's tree into ``--into``, a clone that shares this checkout's objects, where
``origin/BASE`` is this checkout's. The pull request's ``.dvc/config`` is replaced by the base's
(the pull request must not choose where this job's DVC credentials are sent), and DVC's cache is
this checkout's. Nothing from the pull request is executed: the gate reads its files.

With ``GITHUB_TOKEN`` set, the fetch authenticates with it (private repositories); the token
is passed for that one command and written nowhere.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import subprocess
import sys
from pathlib import Path


class EvidenceError(RuntimeError):
    """The pull request's commit could not be laid out; the message says what to do."""


def _git(cwd: Path, *args: str, extra: list[str] | None = None) -> str:
    result = subprocess.run(["git", *(extra or []), *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise EvidenceError(f"`git {' '.join(args)}` failed: {result.stderr.strip()[-400:]}")
    return result.stdout.strip()


def _auth(token: str) -> list[str]:
    if not token:
        return []
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    return ["-c", f"http.extraheader=AUTHORIZATION: basic {basic}"]


def lay_out(checkout: Path, number: int, sha: str, base_ref: str, into: Path) -> Path:
    """The pull request's commit ``sha`` as a work tree at ``into`` (see the module docstring);
    returns ``into``."""
    if number <= 0 or len(sha) != 40 or any(c not in "0123456789abcdef" for c in sha):
        raise EvidenceError(f"a pull request number and a 40-digit commit, not {number}, {sha!r}")
    ref = f"refs/remotes/pull/{number}"
    token = os.environ.get("GITHUB_TOKEN", "")
    _git(
        checkout,
        "fetch",
        "-q",
        "--no-tags",
        "origin",
        f"+refs/pull/{number}/head:{ref}",
        extra=_auth(token),
    )
    head = _git(checkout, "rev-parse", ref)
    if head != sha:
        raise EvidenceError(
            f"pull request #{number} is now at {head[:12]}, not {sha[:12]}: a newer push "
            "started its own review; this one is stale"
        )
    base = _git(checkout, "rev-parse", f"refs/remotes/origin/{base_ref}")
    if into.exists():
        shutil.rmtree(into)
    _git(checkout, "clone", "-q", "--shared", "--no-checkout", str(checkout), str(into))
    _git(into, "-c", "advice.detachedHead=false", "checkout", "-q", sha)
    _git(into, "update-ref", f"refs/remotes/origin/{base_ref}", base)
    dvc = into / ".dvc"
    for name in ("config", "config.local"):
        (dvc / name).unlink(missing_ok=True)
    if (checkout / ".dvc" / "config").is_file():
        dvc.mkdir(exist_ok=True)
        shutil.copy(checkout / ".dvc" / "config", dvc / "config")
        cache = (checkout / ".dvc" / "cache").resolve()
        (dvc / "config.local").write_text(f"[cache]\n    dir = {cache}\n")
    return into


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pr", type=int, required=True, help="the pull request's number")
    parser.add_argument("--sha", required=True, help="its head commit, as the event names it")
    parser.add_argument("--base-ref", default="main", help="the branch it would merge into")
    parser.add_argument("--into", type=Path, default=Path("pr"), help="the folder to write")
    args = parser.parse_args(argv)
    try:
        into = lay_out(Path.cwd(), args.pr, args.sha, args.base_ref, args.into.resolve())
    except EvidenceError as exc:
        print(f"evidence: error: {exc}", file=sys.stderr)
        return 1
    print(f"evidence: pull request #{args.pr} at {args.sha[:12]} laid out in {into}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
