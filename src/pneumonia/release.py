"""What a push to main deploys: the served model, the app with the current model, or nothing.

    python -m pneumonia.release --base live     # what the deploy workflow runs
    python -m pneumonia.release --base HEAD^1   # against a revision

``--base live`` compares with the release Heroku runs now (its slug's source commit, from the
Platform API: ``HEROKU_API_KEY``, ``HEROKU_APP_NAME``), not with the previous commit, so a
deploy that was cancelled or failed is caught up by the next push, whatever it changes. This
commit live already: nothing to do. The live release newer than this commit (an old run
re-run): nothing is deployed over it. Nothing live yet: main's model and app are deployed.

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

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pneumonia import config
from pneumonia.gate import BUNDLE, MetricsError, against_base, rev_exists, run_gate
from pneumonia.package import SLUG_SOURCES
from pneumonia.retrain import append_github_file
from pneumonia.served import SERVED_JSON, parse_record


@dataclass
class Plan:
    deploy: bool
    what: str  # "model" | "app" | "none" | "live" (this commit runs already)
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


LIVE = "live"


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def plan_against_live(live: str | None, root: Path | None = None, pull: bool = False) -> Plan:
    """Decide what HEAD deploys when ``live`` is the source commit Heroku runs (None: none)."""
    root = root or config.ROOT
    head = _git(root, "rev-parse", "HEAD").stdout.strip()
    if not live:
        return Plan(
            True,
            "model",
            "nothing built from a commit is live on Heroku yet: deploying this "
            "commit's served model and app",
        )
    if not rev_exists(live, root):
        raise MetricsError(
            f"the live release's commit {live[:12]} is not in this checkout's history: check out "
            "with the whole history (actions/checkout fetch-depth: 0), or, if it was deployed "
            "from a branch that is gone, deploy main once by hand (python -m pneumonia.heroku)"
        )
    live = _git(root, "rev-parse", f"{live}^{{commit}}").stdout.strip()
    if live == head:
        return Plan(
            False,
            "live",
            f"this commit ({head[:12]}) is live already: nothing to deploy (the "
            "MLflow production alias is still recorded)",
        )
    if _git(root, "merge-base", "--is-ancestor", live, head).returncode != 0:
        return Plan(
            False,
            "none",
            f"the live release ({live[:12]}) is not an ancestor of this commit "
            f"({head[:12]}): it is newer (an older run re-run?) or from another branch; an older "
            "commit is never deployed over it, nothing deployed",
        )
    plan = plan_deploy(live, root, pull)
    return Plan(plan.deploy, plan.what, f"against the live release {live[:12]}: {plan.summary}")


def live_commit() -> str | None:
    """The source commit of Heroku's current release (HEROKU_APP_NAME, HEROKU_API_KEY)."""
    from pneumonia.heroku import DeployError, HerokuClient

    app = os.environ.get("HEROKU_APP_NAME", "")
    try:
        if not app:
            raise DeployError("no app name: set HEROKU_APP_NAME (the repository variable)")
        return HerokuClient(app, os.environ.get("HEROKU_API_KEY", "")).live_commit()
    except DeployError as exc:
        raise MetricsError(f"the live release could not be read from Heroku: {exc}") from None


def check_servable(plan: Plan, root: Path) -> Plan:
    """A plan that deploys needs the bundle in the work tree (the deploy job pulls it first):
    without it, the DVC remote lacks main's model, and the message says how to get one."""
    if plan.deploy and not (root / BUNDLE / "model.onnx").is_file():
        served = root / SERVED_JSON
        record = parse_record(served.read_text() if served.is_file() else None, SERVED_JSON)
        raise MetricsError(
            f"{plan.summary}, but {BUNDLE} is not here after `dvc pull`: the DVC remote does "
            f"not hold main's served model (version {record.get('version')}), so there is "
            "nothing to deploy. A fork starts without the upstream's models: run the retrain "
            "workflow (Actions > retrain > Run workflow) and merge the pull request it opens; "
            "its model becomes this repository's first champion and deploys. Where main's model "
            "was trained, `dvc push` puts it back instead."
        )
    return plan


def decide(base: str, root: Path | None = None, pull: bool = False) -> Plan:
    """``plan_deploy`` against ``base``, or against what is live for ``--base live``; a plan
    that deploys has its bundle in the work tree."""
    root = root or config.ROOT
    if base == LIVE:
        return check_servable(plan_against_live(live_commit(), root, pull), root)
    return check_servable(plan_deploy(base, root, pull), root)


def main(argv: list[str] | None = None) -> int:
    what = "`live` (the release Heroku runs) or a revision"
    _, run = against_base("release", __doc__, LIVE, what, argv)
    plan = run(decide)
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
