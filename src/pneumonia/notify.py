"""Tell people what a deploy did: the job summary always, Slack when SLACK_WEBHOOK_URL is set
(``post_slack``, which the drift check uses too).

python -m pneumonia.notify --status success --message "Deployed v3 (accuracy 0.91)"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request

ICONS = {
    "success": ":white_check_mark:",
    "failure": ":x:",
    "cancelled": ":warning:",
    "skipped": ":information_source:",
}


def notify(status: str, message: str) -> list[str]:
    """Write the summary and post to Slack; return where the message went."""
    text = f"{ICONS.get(status, ':grey_question:')} deploy {status}: {message}"
    run = os.environ.get("GITHUB_SERVER_URL", ""), os.environ.get("GITHUB_REPOSITORY", "")
    if all(run) and os.environ.get("GITHUB_RUN_ID"):
        text += f" ({run[0]}/{run[1]}/actions/runs/{os.environ['GITHUB_RUN_ID']})"
    sent = []
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as f:
            f.write(f"### Deploy\n\n{text}\n")
        sent.append("job summary")
    if post_slack(text):
        sent.append("slack")
    print(text)
    return sent


def post_slack(text: str) -> bool:
    """Post ``text`` to SLACK_WEBHOOK_URL when it is set; whether it went. A failure is a
    warning: it must not hide the outcome being told."""
    webhook = os.environ.get("SLACK_WEBHOOK_URL", "").strip()
    if not webhook:
        return False
    request = urllib.request.Request(
        webhook,
        data=json.dumps({"text": text}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=15):
            return True
    except OSError as exc:
        print(f"notify: warning: Slack webhook failed: {exc}", file=sys.stderr)
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--status", required=True)
    parser.add_argument("--message", required=True)
    args = parser.parse_args(argv)
    notify(args.status, args.message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
