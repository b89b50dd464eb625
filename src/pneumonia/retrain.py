"""The scheduled / manual retraining job's decision: is there anything to retrain?

    python -m pneumonia.retrain [--force] [--set train.epochs=3 ...] [--reason "..."]

Something changed when ``dvc status`` finds a stage out of date (new data version, changed
parameters or code), when parameters are overridden with ``--set``, or with ``--force``.
Otherwise the job ends at once with a one-line summary. Writes ``changed=true|false`` to
``$GITHUB_OUTPUT`` and the summary to ``$GITHUB_STEP_SUMMARY`` when those are set (GitHub
Actions); the workflow then runs ``dvc repro`` (or ``dvc exp run -S`` for overrides) itself.

Inputs already tried are not retried: with ``GITHUB_TOKEN`` and ``GITHUB_REPOSITORY`` set, a run
whose inputs (``inputs_fingerprint``: data version, parameters with the overrides, each stage's
code and command) match a retrain pull request labelled ``gate: failed`` ends with a line naming
that pull request; ``--force`` retries. The fingerprint goes to ``$GITHUB_OUTPUT`` (``inputs``)
for the pull request to record.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from pneumonia import config, tracking
from pneumonia.github import FAILED_LABEL, GitHub, GitHubError, retrain_record
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


def _with_overrides(params: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for override in overrides:
        key, _, value = override.partition("=")
        *parents, leaf = key.split(".")
        node = params
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = yaml.safe_load(value)
    return params


def _param(params: dict[str, Any], key: str) -> Any:
    node: Any = params
    for name in key.split("."):
        node = node.get(name) if isinstance(node, dict) else None
    return node


def _content(path: Path) -> str:
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        return hashlib.sha256(
            "".join(f"{p.relative_to(path).as_posix()} {_content(p)}\n" for p in files).encode()
        ).hexdigest()
    return "missing"


def inputs_fingerprint(overrides: list[str], root: Path | None = None) -> str:
    """What a retraining run starts from, as 16 hex digits of sha256: each stage's command,
    its parameters' values (with ``overrides``, ``KEY=VALUE``), and its dependencies that no
    stage produces: files by content, DVC-tracked data by the md5 its ``.dvc`` file records.
    Outputs of earlier stages follow from these, so they are left out."""
    root = root or config.ROOT
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    params = _with_overrides(yaml.safe_load((root / "params.yaml").read_text()) or {}, overrides)
    produced = [
        next(iter(out)) if isinstance(out, dict) else out
        for stage in stages.values()
        for kind in ("outs", "metrics", "plots")
        for out in stage.get(kind, [])
    ]
    tracked = {}
    for dvc_file in sorted(p for p in root.glob("*.dvc") if p.is_file()):
        for out in (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or []:
            tracked[out["path"]] = out.get("md5", "")

    def under(path: str, top: str) -> bool:
        return path == top or path.startswith(top.rstrip("/") + "/")

    lines = []
    for name in sorted(stages):
        stage = stages[name]
        lines.append(f"stage {name}: {stage['cmd']}")
        for key in sorted(
            k if isinstance(k, str) else json.dumps(k) for k in stage.get("params", [])
        ):
            lines.append(f"param {key}={json.dumps(_param(params, key), sort_keys=True)}")
        for dep in sorted(stage.get("deps", [])):
            if any(under(dep, out) for out in produced):
                continue
            top = next((t for t in tracked if under(dep, t)), None)
            content = f"dvc {tracked[top]}" if top else _content(root / dep)
            lines.append(f"dep {dep} {content}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def failed_before(github: GitHub, fingerprint: str) -> dict | None:
    """The retrain pull request (open or closed) whose model, trained from these inputs,
    failed the gate; None when there is none."""
    for pull in github.pull_requests("all"):
        record = retrain_record(pull.get("body") or "")
        labels = {label["name"] for label in pull.get("labels", [])}
        if record.get("inputs") == fingerprint and FAILED_LABEL in labels:
            return pull
    return None


def decide(
    force: bool, overrides: list[str], github: GitHub | None = None
) -> tuple[bool, str, str]:
    """Whether the pipeline must run; return (changed, one-line summary, inputs fingerprint).
    With ``github``, inputs a retrain pull request already tried and failed are not retried."""
    data = tracking.data_version()
    stale = stale_stages()
    fingerprint = inputs_fingerprint(overrides)
    if not (force or overrides or stale):
        return (
            False,
            (
                f"Nothing changed (data {data['md5']}, {data['nfiles']} files; params and code as "
                "in dvc.lock): no retraining."
            ),
            fingerprint,
        )
    if not force and github is not None:
        tried = failed_before(github, fingerprint)
        if tried is not None:
            return (
                False,
                (
                    f"Already tried: these inputs (fingerprint {fingerprint}) were retrained in "
                    f"#{tried['number']} ({tried['html_url']}), whose model failed the gate; not "
                    "retried. Run the workflow with force to retry them."
                ),
                fingerprint,
            )
    if force:
        why = "forced"
    elif overrides:
        why = "parameters " + ", ".join(overrides)
    else:
        why = "out of date: " + ", ".join(stale)
    return (
        True,
        (
            f"Retraining ({why}) on data {data['md5']} ({data['nfiles']} files; inputs "
            f"{fingerprint})."
        ),
        fingerprint,
    )


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
    github = None
    if os.environ.get("GITHUB_TOKEN") and os.environ.get("GITHUB_REPOSITORY"):
        github = GitHub.from_environment()
    try:
        changed, summary, fingerprint = decide(args.force, args.set, github)
    except subprocess.CalledProcessError as exc:
        print(
            f"retrain: error: `{' '.join(exc.cmd)}` failed (exit {exc.returncode})", file=sys.stderr
        )
        return 1
    except GitHubError as exc:
        print(f"retrain: error: earlier retrain pull requests unreadable: {exc}", file=sys.stderr)
        return 1
    if github is None and changed and not args.force:
        summary += " (Earlier retrain pull requests not checked: no GITHUB_TOKEN.)"
    if args.reason:
        summary += f" Reason: {args.reason}"
    print(summary)
    append_github_file("GITHUB_OUTPUT", f"changed={'true' if changed else 'false'}")
    append_github_file("GITHUB_OUTPUT", f"inputs={fingerprint}")
    append_github_file("GITHUB_STEP_SUMMARY", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
