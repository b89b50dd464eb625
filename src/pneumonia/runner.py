"""Where the retrain workflow trains: the CPU runner, a self-hosted GPU runner, or a cloud GPU
that CML starts for this one run.

    python -m pneumonia.runner --runner cpu|self-hosted-gpu|cloud-gpu

Writes ``labels`` (the JSON list the training job's ``runs-on`` takes) to ``$GITHUB_OUTPUT``;
every runner installs the same lock (PyPI's torch runs on CPUs and GPUs alike). For
``cloud-gpu`` it first runs ``cml runner launch``: an instance registers as a runner with a
label unique to this run, takes the training job (``--single``) and is terminated after it.
That needs the secrets ``CML_REPO_TOKEN`` (a token that may register runners) and the cloud's
credentials; a missing one stops here, before anything is started, naming it.

Standard library only: the workflow runs it before any install (``PYTHONPATH=src python3``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass

SELF_HOSTED_GPU_LABELS = ["self-hosted", "linux", "x64", "gpu"]
CPU_LABELS = ["ubuntu-24.04"]
# The AWS credentials the DVC remote already uses start the instance too.
CLOUD_SECRETS = ("CML_REPO_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# The cloud machine, from repository variables (docs/operations.md); these when unset.
CLOUD_SETTINGS = {
    "CML_CLOUD_REGION": "us-west",
    "CML_CLOUD_TYPE": "g5.xlarge",  # 1 NVIDIA A10G, 4 vCPUs
    "CML_CLOUD_HDD_SIZE": "100",
    "CML_CLOUD_SPOT": "false",
}


class RunnerError(RuntimeError):
    """The runner cannot be provided; the message says what to set."""


@dataclass(frozen=True)
class Choice:
    labels: list[str]
    launch: list[str] | None = None  # the cml command that starts the runner first


def choose(runner: str, env: Mapping[str, str]) -> Choice:
    """The labels and (for ``cloud-gpu``) launch command for ``runner``."""
    if runner == "cpu":
        return Choice(CPU_LABELS)
    if runner == "self-hosted-gpu":
        return Choice(SELF_HOSTED_GPU_LABELS)
    if runner != "cloud-gpu":
        raise RunnerError(f"unknown runner {runner!r}: cpu, self-hosted-gpu or cloud-gpu")
    settings = {k: env.get(k) or default for k, default in CLOUD_SETTINGS.items()}
    missing = [name for name in CLOUD_SECRETS if not env.get(name)]
    if missing:
        raise RunnerError(
            f"runner cloud-gpu needs the repository secrets {', '.join(missing)} "
            "(docs/operations.md, 'Training on a GPU'); nothing was started. Run with runner "
            "cpu meanwhile."
        )
    # One label per run and attempt: this job can only land on the instance started for it.
    label = f"cml-gpu-{env.get('GITHUB_RUN_ID', 'local')}-{env.get('GITHUB_RUN_ATTEMPT', '1')}"
    launch = [
        "cml",
        "runner",
        "launch",
        "--cloud=aws",
        f"--cloud-region={settings['CML_CLOUD_REGION']}",
        f"--cloud-type={settings['CML_CLOUD_TYPE']}",
        f"--cloud-hdd-size={settings['CML_CLOUD_HDD_SIZE']}",
        f"--labels={label}",
        f"--name={label}",
        "--single",  # terminated after the training job
        "--idle-timeout=30min",  # and if the job never comes
    ]
    if settings["CML_CLOUD_SPOT"] == "true":
        launch.append("--cloud-spot")
    return Choice(["self-hosted", label], launch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runner", required=True, help="cpu | self-hosted-gpu | cloud-gpu")
    args = parser.parse_args(argv)
    try:
        choice = choose(args.runner, os.environ)
        if choice.launch:
            if shutil.which("cml") is None:
                raise RunnerError("cml is not on PATH: npm install --global @dvcorg/cml@0.20.6")
            env = {**os.environ, "REPO_TOKEN": os.environ["CML_REPO_TOKEN"]}
            if subprocess.run(choice.launch, env=env).returncode != 0:
                raise RunnerError("cml runner launch failed (its output is above)")
    except RunnerError as exc:
        print(f"runner: error: {exc}", file=sys.stderr)
        return 1
    labels = json.dumps(choice.labels)
    if os.environ.get("GITHUB_OUTPUT"):
        with open(os.environ["GITHUB_OUTPUT"], "a") as f:
            f.write(f"labels={labels}\n")
    print(f"runner: {args.runner}: runs-on {labels}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
