"""The locked environments: generate them from their inputs, and check that they still match.

    python -m pneumonia.locks compile [--upgrade]      # make lock
    python -m pneumonia.locks check [--offline]        # make lint
    python -m pneumonia.locks installed LOCK [--python PYTHON]

Three environments, each an input that people edit (``*.in``: the direct requirements, as
ranges) and a lock that uv generates from it (``*.txt``: every package at one version, the
sha256 of each of its files, the index it comes from):

- ``requirements-dev``: development and tests (it includes the two other inputs);
- ``requirements``: the retraining pipeline, what the runners install;
- ``django_app/requirements``: the web app, what Heroku installs into the slug.

The development set is resolved first and the other two under it (``-c requirements-dev.txt``),
so a package has the same version and files in all three: the tests run what the runners and
the slug run. The locks are for CPython of ``.python-version`` on x86_64 Linux (runners, Heroku,
this project's machines). ``check`` fails when a lock no longer matches its inputs (a requirement
added, a range changed, a lock edited by hand); without ``--offline`` it also resolves the inputs
again, with the locks as preferences, and compares (that needs the package index).
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from pneumonia import config

PLATFORM = "x86_64-manylinux_2_28"
# Target of the markers in the inputs (PLATFORM, CPython of .python-version).
MARKER_ENVIRONMENT = {"sys_platform": "linux", "platform_system": "Linux"}
MARKER_ENVIRONMENT |= {"platform_machine": "x86_64", "implementation_name": "cpython"}
# The project's own editable install; and the packaging tools venv (Python 3.11's ensurepip) and
# Heroku's buildpack put in every environment, where a lock does not name them.
NOT_LOCKED = {"pneumonia"}
PACKAGING_TOOLS = {"pip", "setuptools", "wheel"}


@dataclass(frozen=True)
class Environment:
    source: str  # the input people edit, relative to the repository root
    lock: str  # the generated lock
    constraint: str | None = None  # the lock it is resolved under

    def command(self, python_version: str) -> list[str]:
        """The ``uv pip compile`` arguments, as the lock's header records them."""
        args = ["--python-platform", PLATFORM, "--python-version", python_version]
        args += ["--generate-hashes", "--emit-index-annotation", self.source]
        if self.constraint:
            args += ["-c", self.constraint]
        return args + ["-o", self.lock]


ENVIRONMENTS = (
    Environment("requirements-dev.in", "requirements-dev.txt"),
    Environment("requirements.in", "requirements.txt", "requirements-dev.txt"),
    Environment(
        "django_app/requirements.in", "django_app/requirements.txt", "requirements-dev.txt"
    ),
)


class LockError(RuntimeError):
    """A lock does not match its inputs, or cannot be made; the message says what to run."""


@dataclass(frozen=True)
class Pin:
    name: str  # canonical (PEP 503)
    version: str
    hashes: frozenset[str]
    index: str | None  # the "# from" annotation


def python_version(root: Path = config.ROOT) -> str:
    """The project's Python (``.python-version``: the Makefile, the setup action, Heroku)."""
    return (root / ".python-version").read_text().strip()


def uv() -> str:
    """The venv's uv (the lock's version: another one may write other lines), else PATH's."""
    beside = Path(sys.executable).with_name("uv")
    found = str(beside) if beside.exists() else shutil.which("uv")
    if not found:
        raise LockError("uv is not installed: `make install` (requirements-dev.in: uv)")
    return found


def compile_locks(root: Path = config.ROOT, upgrade: bool = False) -> None:
    """Write each lock from its input (the existing locks are the preferred versions)."""
    version = python_version(root)
    for env in ENVIRONMENTS:
        args = [uv(), "pip", "compile", "--quiet", *env.command(version)]
        # --upgrade moves the development set; the others follow it through the constraint.
        if upgrade and env.constraint is None:
            args.append("--upgrade")
        result = subprocess.run(args, cwd=root, capture_output=True, text=True)
        if result.returncode != 0:
            raise LockError(f"uv could not lock {env.source}:\n{result.stderr.strip()}")


def parse_lock(text: str) -> dict[str, Pin]:
    """The pins of a lock written by ``uv pip compile --generate-hashes``."""
    pins: dict[str, Pin] = {}
    for entry in re.split(r"\n(?=\S)", text):
        first = entry.split("\n", 1)[0]
        if not entry.strip() or first.startswith(("#", "-")):
            continue
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)", first)
        if not match:
            raise LockError(f"not an exact pin: {first!r}")
        index = re.search(r"# from (\S+)", entry)
        name = canonicalize_name(match.group(1))
        hashes = frozenset(re.findall(r"--hash=(sha256:[0-9a-f]{64})", entry))
        pins[name] = Pin(name, match.group(3), hashes, index.group(1) if index else None)
    return pins


def direct_requirements(path: Path) -> list[Requirement]:
    """The requirements of an input, following its ``-r`` includes."""
    found = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-r "):
            found += direct_requirements(path.parent / line[3:].strip())
            continue
        try:
            found.append(Requirement(line))
        except InvalidRequirement as exc:
            raise LockError(f"{path.name}:{number}: {exc}") from exc
    return found


def problems(root: Path = config.ROOT) -> list[str]:
    """What is wrong with the locks, read without the network (empty: they match)."""
    found: list[str] = []
    version = python_version(root)
    marker_env = MARKER_ENVIRONMENT | {"python_version": version, "python_full_version": version}
    locks: dict[str, dict[str, Pin]] = {}
    for env in ENVIRONMENTS:
        path = root / env.lock
        if not path.is_file():
            found.append(f"{env.lock} is missing")
            continue
        text = path.read_text()
        header = "#    uv pip compile " + " ".join(env.command(version))
        if header not in text.split("\n", 3)[:3]:
            found.append(f"{env.lock} was not generated by `make lock` (header differs)")
        try:
            pins = locks[env.lock] = parse_lock(text)
        except LockError as exc:
            found.append(f"{env.lock}: {exc}")
            continue
        found += [f"{env.lock}: {p.name} has no hash" for p in pins.values() if not p.hashes]
        found += [f"{env.lock}: {p.name} names no index" for p in pins.values() if not p.index]
        for req in direct_requirements(root / env.source):
            if req.marker and not req.marker.evaluate(marker_env):
                continue
            pin = pins.get(canonicalize_name(req.name))
            if pin is None:
                found.append(f"{req.name} is in {env.source} but not in {env.lock}")
            elif not req.specifier.contains(pin.version, prereleases=True):
                found.append(f"{env.lock} has {req.name}=={pin.version}, {env.source} {req}")
    dev = locks.get(ENVIRONMENTS[0].lock, {})
    for env in ENVIRONMENTS[1:]:
        for pin in locks.get(env.lock, {}).values():
            if pin != dev.get(pin.name):
                found.append(f"{pin.name} differs between {env.lock} and {ENVIRONMENTS[0].lock}")
    if found:
        found.append("run `make lock` and commit the locks with their inputs")
    return found


def resolved_again(root: Path = config.ROOT) -> list[str]:
    """Resolve the inputs again (the locks as preferences) in a copy; the lock lines that would
    change. Empty when the committed locks are what `make lock` writes today."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp)
        for env in ENVIRONMENTS:
            for name in (env.source, env.lock):
                (copy / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / name, copy / name)
        for path in root.glob("*.in"):  # inputs the others include
            shutil.copy2(path, copy / path.name)
        shutil.copy2(root / ".python-version", copy / ".python-version")
        compile_locks(copy)
        changed = []
        for env in ENVIRONMENTS:
            before = (root / env.lock).read_text().splitlines()
            after = (copy / env.lock).read_text().splitlines()
            diff = [line for line in difflib.unified_diff(before, after, lineterm="", n=0)]
            changed += [f"{env.lock}: {line}" for line in diff[2:] if not line.startswith("@@")]
        return changed


def installed_differences(lock: Path, python: str) -> list[str]:
    """How the packages installed for ``python`` differ from ``lock`` (empty: the same set)."""
    listing = subprocess.run(
        [python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    )
    installed = {canonicalize_name(p["name"]): p["version"] for p in json.loads(listing.stdout)}
    pins = {name: pin.version for name, pin in parse_lock(lock.read_text()).items()}
    for name in NOT_LOCKED | (PACKAGING_TOOLS - pins.keys()):
        installed.pop(name, None)
    diffs = [f"{n}=={v} is installed but not in {lock.name}" for n, v in installed.items()]
    diffs = [d for d in diffs if d.split("==")[0] not in pins]
    for name, version in sorted(pins.items()):
        if installed.get(name) != version:
            diffs.append(f"{lock.name} has {name}=={version}, installed: {installed.get(name)}")
    return sorted(diffs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("compile", help="write the locks").add_argument("--upgrade", action="store_true")
    check = sub.add_parser("check", help="fail when a lock does not match its inputs")
    check.add_argument("--offline", action="store_true", help="skip the second resolution")
    installed = sub.add_parser("installed", help="fail when an environment differs from a lock")
    installed.add_argument("lock", type=Path)
    installed.add_argument("--python", default=sys.executable)
    args = parser.parse_args(argv)
    try:
        if args.command == "compile":
            compile_locks(upgrade=args.upgrade)
            print("locks: " + ", ".join(env.lock for env in ENVIRONMENTS) + " written")
            return 0
        if args.command == "installed":
            found = installed_differences(args.lock, args.python)
        else:
            found = problems()
            if not found and not args.offline:
                found = resolved_again()
                if found:
                    found.append("the inputs resolve differently: run `make lock` and commit")
    except LockError as exc:
        print(f"locks: error: {exc}", file=sys.stderr)
        return 1
    for line in found:
        print(f"locks: {line}", file=sys.stderr)
    if not found:
        print(f"locks: {args.command}: ok")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
