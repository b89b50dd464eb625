"""The scheduled drift check, for a team without Prometheus (.github/workflows/monitor.yml):

    python -m pneumonia.monitor --app-url https://your-app.herokuapp.com

reads the app's drift signals (``GET /api/v1/drift``, a staff API token in
``XRAY_MONITOR_TOKEN``; the app computes them, django_app/diagnosis/drift.py) and keeps one
GitHub issue, "Model drift", in step with them: opened when a signal warns or alerts, its body
the figures of the latest check, a comment when the state changes, closed with a comment when
every signal is ok again (too little traffic changes nothing). Each opening, change and
closing is posted to Slack when ``SLACK_WEBHOOK_URL`` is set; the job summary gets the figures
on every run. When enough consented, labelled cases are ready, the issue and the message say
how to retrain with them.

Environment: ``GITHUB_API_URL``, ``GITHUB_REPOSITORY``, ``GITHUB_TOKEN`` (Issues: write).
Exit status: 0 when the check ran (whatever it found), 1 when it could not (the message says
what to fix).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

import requests

from pneumonia.github import GitHub, GitHubError
from pneumonia.notify import post_slack
from pneumonia.retrain import append_github_file

TITLE = "Model drift"
STATE = re.compile(r"<!-- drift-state: (\w+) -->")
RAISED = ("warn", "alert")


class MonitorError(RuntimeError):
    """The check could not run; the message says what to fix."""


def fetch_report(app_url: str, token: str, timeout: float = 60) -> dict[str, Any]:
    """The app's ``/api/v1/drift`` answer."""
    if not token:
        raise MonitorError(
            "XRAY_MONITOR_TOKEN is not set: make a staff account's API token (`heroku run python "
            "manage.py add_clinician monitor --staff --api-token drift-check`) and store it as "
            "the repository secret XRAY_MONITOR_TOKEN"
        )
    url = f"{app_url.rstrip('/')}/api/v1/drift"
    try:
        response = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)
    except requests.RequestException as exc:
        raise MonitorError(
            f"{url} is unreachable ({exc}): is XRAY_APP_URL the app's URL?"
        ) from None
    if response.status_code in (401, 403):
        raise MonitorError(
            f"{url} answered {response.status_code}: XRAY_MONITOR_TOKEN is not a valid staff "
            "API token (revoked, or its account is not staff)"
        )
    if response.status_code != 200:
        raise MonitorError(f"{url} answered {response.status_code}: {response.text[:300]}")
    return response.json()


def _figure(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def summary(report: dict[str, Any]) -> str:
    """The figures as Markdown: the state, each signal, the window and the feedback ready."""
    window = report["window"]
    lines = [
        f"**State: {report['state'] or 'not enough data'}** for model "
        f"`{report['model_version']}`: its last {window['predictions']} real predictions, "
        f"{window['refusals']} refusals and {window['feedback']} clinician verdicts against "
        f"{report['reference_images'] or 'no'} test images "
        f"([monitoring page]({report['monitoring_url']})).",
        "",
        "| Signal | State | Value | Over | What it says |",
        "|---|---|---|---|---|",
    ]
    for s in report["signals"]:
        lines.append(
            f"| {s['name']} | {s['state'] or '-'} | {_figure(s['value'])} | {s['count']} | "
            f"{s['detail']} |"
        )
    lines += ["", retrain_advice(report)]
    return "\n".join(lines)


def retrain_advice(report: dict[str, Any]) -> str:
    ready, needed = report["feedback_ready"], report["feedback_for_retrain"]
    if not report["retrain_ready"]:
        return f"{ready} consented, labelled cases await export ({needed} make a retrain worth it)."
    return (
        f"**{ready} consented, labelled cases are ready for retraining**: export them "
        "(`python manage.py export_feedback`), add them to the dataset (`python -m "
        "pneumonia.ingest`, `dvc push`, commit `chest_xray.dvc`) and dispatch the retrain "
        'workflow (docs/web-app.md, "The feedback loop").'
    )


def issue_body(report: dict[str, Any]) -> str:
    return (
        f"{summary(report)}\n\nUpdated by the scheduled drift check (`python -m "
        "pneumonia.monitor`); it closes this issue when every signal is ok again.\n"
        f"<!-- drift-state: {report['state']} -->\n"
    )


def open_drift_issue(github: GitHub) -> dict | None:
    for issue in github.issues("open"):
        if "pull_request" not in issue and issue["title"] == TITLE:
            return issue
    return None


def check(github: GitHub, report: dict[str, Any]) -> str:
    """Keep the "Model drift" issue in step with ``report``; return what was done."""
    state = report["state"]
    issue = open_drift_issue(github)
    headline = f"Model drift: {state} for model {report['model_version']}"
    if state in RAISED:
        if issue is None:
            made = github.create_issue(TITLE, issue_body(report))
            post_slack(f"{headline} ({made['html_url']}). {retrain_advice(report)}")
            return f"opened issue #{made['number']}"
        previous = STATE.search(issue.get("body") or "")
        github.update_issue(issue["number"], body=issue_body(report))
        if previous is None or previous[1] != state:
            was = previous[1] if previous else "unknown"
            github.comment(issue["number"], f"State {was} -> {state}.\n\n{summary(report)}")
            post_slack(f"{headline}, was {was} ({issue['html_url']})")
            return f"updated issue #{issue['number']} ({was} -> {state})"
        return f"updated issue #{issue['number']}"
    if state == "ok" and issue is not None:
        github.comment(issue["number"], f"Every signal is ok again.\n\n{summary(report)}")
        github.update_issue(issue["number"], state="closed")
        post_slack(f"Model drift: every signal ok again for model {report['model_version']}")
        return f"closed issue #{issue['number']}"
    return "nothing to do"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--app-url", default=os.environ.get("XRAY_APP_URL", ""))
    args = parser.parse_args(argv)
    try:
        if not args.app_url:
            raise MonitorError("no app URL: set the repository variable XRAY_APP_URL")
        report = fetch_report(args.app_url, os.environ.get("XRAY_MONITOR_TOKEN", ""))
        done = check(GitHub.from_environment(), report)
    except (MonitorError, GitHubError) as exc:
        print(f"monitor: error: {exc}", file=sys.stderr)
        return 1
    append_github_file("GITHUB_STEP_SUMMARY", f"### Drift check\n\n{summary(report)}\n\n{done}")
    print(f"monitor: {report['state'] or 'not enough data'}: {done}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
