"""What a push to main deploys: the served model, the app with the current model, or nothing.

    python -m pneumonia.release --base HEAD^1

Deploys follow what is served:
- the served model changed (``metrics/served.json``'s identity against ``--base``): the gate
  decides (``pneumonia.gate``: it must beat the base revision's model); a pass deploys the app
  with the new bundle, a fail deploys nothing;
- otherwise, a change to what goes into the Heroku slug (``pneumonia.package.SLUG_SOURCES``: the
  app, its requirements, Procfile and runtime, the packaging code) deploys the app with the
  current bundle, so an app fix ships with the current champion;
- otherwise (docs, tests, pipeline code without a new model) nothing is deployed.

Writes ``deploy=true|false``, ``what=model|app|none`` and ``summary=...`` to ``$GITHUB_OUTPUT``
and the summary to ``$GITHUB_STEP_SUMMARY`` when set. Exit status 0 when decided (deploy or not),
2 when the records cannot be read (the message says what to do).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pneumonia import config
from pneumonia.gate import against_base, run_gate
from pneumonia.package import SLUG_SOURCES
from pneumonia.retrain import append_github_file


@dataclass
class Plan:
    deploy: bool
    what: str  # "model" | "app" | "none"
    summary: str


def changed_paths(base: str, root: Path) -> list[str]:
    """Files that differ between ``base`` and HEAD."""
    command = ["git", "diff", "--name-only", base, "HEAD"]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, check=True)
    return result.stdout.split()


def in_slug(path: str) -> bool:
    return any(path == s or (s.endswith("/") and path.startswith(s)) for s in SLUG_SOURCES)


def plan_deploy(base: str, root: Path | None = None, pull: bool = False) -> Plan:
    """Decide what the push from ``base`` to HEAD deploys."""
    root = root or config.ROOT
    verdict = run_gate(base, root, pull)  # an unchanged served model passes at once
    app_files = [p for p in changed_paths(base, root) if in_slug(p)]
    if verdict.model_changed:
        if not verdict.passed:
            reasons = "; ".join(verdict.reasons)
            why = f"does not pass the gate against {base} ({reasons}): nothing deployed"
            return Plan(False, "model", f"the served model changed but {why}")
        why = f"passes the gate against {base} ({verdict.baseline})"
        return Plan(True, "model", f"the served model changed and {why}: deploying it")
    if app_files:
        shown = ", ".join(app_files[:5])
        if len(app_files) > 5:
            shown += f" and {len(app_files) - 5} more"
        why = f"the app changed ({shown}): deploying it with the current model"
        return Plan(True, "app", f"the served model is unchanged; {why}")
    why = f"neither the served model nor the app changed since {base}"
    return Plan(False, "none", f"{why}: nothing to deploy")


def main(argv: list[str] | None = None) -> int:
    what = "the revision served before this push"
    _, run = against_base("release", __doc__, "HEAD^1", what, argv)
    plan = run(plan_deploy)
    if plan is None:
        return 2
    print(f"release: {plan.summary}")
    append_github_file(
        "GITHUB_OUTPUT",
        f"deploy={'true' if plan.deploy else 'false'}\nwhat={plan.what}\nsummary={plan.summary}",
    )
    append_github_file("GITHUB_STEP_SUMMARY", f"### Release\n\n{plan.summary}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
