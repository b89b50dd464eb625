"""The few GitHub REST calls the workflows make, as one tested project command.

    python -m pneumonia.github open-retrain-pr --branch retrain/20261126-42 --title "..." \\
        --body-file report.md --verdict gate.json [--inputs FINGERPRINT] [--reason "..."]
    python -m pneumonia.github label-verdict --pr 12 --verdict gate.json

``open-retrain-pr`` opens the pull request of a retraining run (``POST /repos/{repo}/pulls``)
with the reason and a record of its inputs and verdict in the body (``retrain_record``: what
``pneumonia.retrain`` reads to skip inputs that failed), labels it when its model fails the
gate, then closes each older open ``retrain/*`` pull request that is no better (a failing model
never closes a passing one; of two passing, the higher served test accuracy stays), with a
comment pointing to the new one, so retrain pull requests do not pile up.
``label-verdict`` puts the gate's verdict on a pull request: the label ``gate: failed`` when the
model fails, removed when it passes (an unchanged model passes).

Environment (set on every GitHub runner): ``GITHUB_API_URL``, ``GITHUB_REPOSITORY``, and a token
in ``GITHUB_TOKEN`` (or ``GH_TOKEN``) with *Pull requests: write*.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

RETRAIN_PREFIX = "retrain/"
FAILED_LABEL = "gate: failed"
FAILED_LABEL_COLOR = "d73a4a"
RECORD = re.compile(r"<!-- retrain-record: (\{.*?\}) -->")


class GitHubError(RuntimeError):
    """A GitHub call failed; the message names the call and what to fix."""


class GitHub:
    def __init__(self, repository: str, token: str, api_url: str, timeout: float = 30):
        if not token:
            raise GitHubError(
                "no GitHub token: set GITHUB_TOKEN (or GH_TOKEN) to a token with "
                "'Pull requests: write' on this repository"
            )
        if "/" not in repository:
            raise GitHubError(f"GITHUB_REPOSITORY must be OWNER/NAME, got {repository!r}")
        self.base = f"{api_url.rstrip('/')}/repos/{repository}"
        self.session = requests.Session()
        self.session.headers.update(
            {
                "Accept": "application/vnd.github+json",
                "Authorization": f"Bearer {token}",
                "X-GitHub-Api-Version": "2022-11-28",
            }
        )
        self.timeout = timeout

    @classmethod
    def from_environment(cls) -> GitHub:
        return cls(
            os.environ.get("GITHUB_REPOSITORY", ""),
            os.environ.get("GITHUB_TOKEN") or os.environ.get("GH_TOKEN", ""),
            os.environ.get("GITHUB_API_URL", "https://api.github.com"),
        )

    def call(self, method: str, path: str, body: dict | None = None, ok=(200, 201)) -> Any:
        try:
            response = self.session.request(
                method, self.base + path, json=body, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise GitHubError(f"GitHub API {method} {path} unreachable: {exc}") from None
        if response.status_code not in ok:
            raise GitHubError(
                f"GitHub API {method} {path} answered {response.status_code}: {response.text[:300]}"
            )
        return response.json() if response.content else None

    def every_page(self, path: str) -> list[dict]:
        """A listing's every page (``path`` with its query, 100 a page)."""
        found, page = [], 1
        while True:
            batch = self.call("GET", f"{path}&per_page=100&page={page}")
            found += batch
            if len(batch) < 100:
                return found
            page += 1

    def pull_requests(self, state: str = "open") -> list[dict]:
        """Pull requests in ``state`` (open, closed, all), every page."""
        return self.every_page(f"/pulls?state={state}")

    def open_pull_requests(self) -> list[dict]:
        return self.pull_requests("open")

    def create_pull_request(self, head: str, base: str, title: str, body: str) -> dict:
        return self.call(
            "POST", "/pulls", {"title": title, "head": head, "base": base, "body": body}
        )

    def comment(self, number: int, body: str) -> None:
        self.call("POST", f"/issues/{number}/comments", {"body": body})

    def close(self, number: int) -> None:
        self.call("PATCH", f"/pulls/{number}", {"state": "closed"})

    def issues(self, state: str = "open") -> list[dict]:
        """Issues in ``state``, every page (GitHub lists pull requests among them too, each
        with a ``pull_request`` key)."""
        return self.every_page(f"/issues?state={state}")

    def create_issue(self, title: str, body: str) -> dict:
        return self.call("POST", "/issues", {"title": title, "body": body})

    def update_issue(self, number: int, **fields: str) -> dict:
        """Change an issue's ``body``, ``title`` or ``state``."""
        return self.call("PATCH", f"/issues/{number}", fields)

    def add_label(self, number: int, label: str) -> None:
        self.call("POST", f"/issues/{number}/labels", {"labels": [label]})

    def remove_label(self, number: int, label: str) -> None:
        # 404: the label was not on the pull request, which is what was wanted
        self.call("DELETE", f"/issues/{number}/labels/{quote(label, safe='')}", ok=(200, 404))


def gate_passed(verdict_file: Path) -> bool | None:
    """The gate's verdict from ``pneumonia.gate --json`` (None: no verdict, e.g. an error)."""
    try:
        return bool(json.loads(verdict_file.read_text())["passed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def challenger_accuracy(verdict_file: Path) -> float | None:
    """The served test accuracy of the model the gate judged (None when unknown)."""
    try:
        return float(json.loads(verdict_file.read_text())["challenger"]["accuracy"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def label_verdict(github: GitHub, number: int, passed: bool | None) -> str:
    """Label a failed model; take the label off when the model passes."""
    if passed:
        github.remove_label(number, FAILED_LABEL)
        return f"#{number}: gate passed, no '{FAILED_LABEL}' label"
    github.add_label(number, FAILED_LABEL)
    return f"#{number}: labelled '{FAILED_LABEL}'"


def retrain_record(body: str) -> dict:
    """The record ``open_retrain_pr`` leaves in a retrain pull request's body ({} if none)."""
    match = RECORD.search(body)
    try:
        return json.loads(match[1]) if match else {}
    except ValueError:
        return {}


def _rank(passed: bool | None, accuracy: float | None) -> tuple[bool, float]:
    return bool(passed), -1.0 if accuracy is None else float(accuracy)


def open_retrain_pr(
    github: GitHub,
    branch: str,
    title: str,
    body: str,
    passed: bool | None,
    base: str = "main",
    accuracy: float | None = None,
    inputs: str = "",
    reason: str = "",
) -> tuple[dict, list[int]]:
    """Open the retraining pull request, label it if its model fails the gate, and close the
    older open retrain pull requests that are no better, with a comment pointing to it.
    ``accuracy``: its served test accuracy (the gate's challenger). Returns (pr, closed)."""
    if not branch.startswith(RETRAIN_PREFIX):
        raise GitHubError(f"a retrain branch is named {RETRAIN_PREFIX}..., not {branch!r}")
    older = [
        p
        for p in github.open_pull_requests()
        if p["head"]["ref"].startswith(RETRAIN_PREFIX) and p["head"]["ref"] != branch
    ]
    record = {"inputs": inputs, "passed": bool(passed), "accuracy": accuracy}
    head = f"Reason: {reason}\n\n" if reason else ""
    marker = f"\n\n<!-- retrain-record: {json.dumps(record, sort_keys=True)} -->\n"
    pr = github.create_pull_request(branch, base, title, head + body + marker)
    if not passed:
        github.add_label(pr["number"], FAILED_LABEL)
    closed, kept = [], []
    for old in older:
        known = retrain_record(old.get("body") or "")
        old_passed = known.get(
            "passed", FAILED_LABEL not in {label["name"] for label in old.get("labels", [])}
        )
        if _rank(passed, accuracy) < _rank(old_passed, known.get("accuracy")):
            kept.append(old["number"])
            continue
        github.comment(
            old["number"],
            f"Superseded by #{pr['number']} ({pr['html_url']}), a newer retraining run whose "
            "model is at least as good. Closed automatically; its branch is kept.",
        )
        github.close(old["number"])
        closed.append(old["number"])
    if kept:
        github.comment(
            pr["number"],
            "Left open: " + ", ".join(f"#{n}" for n in kept) + " (an older retraining run whose "
            "model is better: it passed the gate where this one did not, or scored higher).",
        )
    return pr, closed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    opening = commands.add_parser("open-retrain-pr", help="open a retrain PR, close older ones")
    opening.add_argument("--branch", required=True)
    opening.add_argument("--base", default="main")
    opening.add_argument("--title", required=True)
    opening.add_argument("--body-file", type=Path, required=True)
    opening.add_argument("--verdict", type=Path, required=True, help="pneumonia.gate --json")
    opening.add_argument("--inputs", default="", help="pneumonia.retrain's inputs fingerprint")
    opening.add_argument("--reason", default="", help="why the run was started")
    labelling = commands.add_parser("label-verdict", help="label a PR with the gate's verdict")
    labelling.add_argument("--pr", type=int, required=True)
    labelling.add_argument("--verdict", type=Path, required=True, help="pneumonia.gate --json")
    args = parser.parse_args(argv)
    try:
        github = GitHub.from_environment()
        passed = gate_passed(args.verdict)
        if args.command == "open-retrain-pr":
            pr, closed = open_retrain_pr(
                github,
                args.branch,
                args.title,
                args.body_file.read_text(),
                passed,
                args.base,
                accuracy=challenger_accuracy(args.verdict),
                inputs=args.inputs,
                reason=args.reason,
            )
            print(f"github: opened #{pr['number']} {pr['html_url']}")
            for number in closed:
                print(f"github: closed #{number}, superseded by #{pr['number']}")
        else:
            print(f"github: {label_verdict(github, args.pr, passed)}")
    except (GitHubError, OSError) as exc:
        print(f"github: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
