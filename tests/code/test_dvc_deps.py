"""dvc.yaml lists, for every stage, each project module the stage's command imports, directly
or not: a change to any of them makes `dvc repro` run the stage again."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PACKAGE = REPO / "src" / "pneumonia"
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def imported_modules(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "pneumonia":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("pneumonia."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("pneumonia.")}
    return {name for name in found if (PACKAGE / f"{name}.py").is_file()}


def import_closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += imported_modules(PACKAGE / f"{name}.py")
    return seen


def missing_deps(stage: dict) -> list[str]:
    module = re.fullmatch(r"python -m pneumonia\.(\w+)", stage["cmd"]).group(1)
    deps = set(stage["deps"])
    if "src/pneumonia" in deps:
        return []
    return sorted(
        f"src/pneumonia/{name}.py"
        for name in import_closure(module)
        if f"src/pneumonia/{name}.py" not in deps
    )


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_every_imported_module(name):
    missing = missing_deps(STAGES[name])
    assert not missing, f"dvc.yaml stage {name} lacks deps: {', '.join(missing)}"


def test_a_removed_dep_is_found():
    stage = dict(STAGES["evaluate"])
    stage["deps"] = [d for d in stage["deps"] if d != "src/pneumonia/serving.py"]
    assert missing_deps(stage) == ["src/pneumonia/serving.py"]
    assert "serving" in import_closure("evaluate") and "prepared" in import_closure("evaluate")


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_list_no_module_the_stage_does_not_import(name):
    """A stale dep reruns the stage (training: an hour) for a change that cannot affect it."""
    module = re.fullmatch(r"python -m pneumonia\.(\w+)", STAGES[name]["cmd"]).group(1)
    listed = {d for d in STAGES[name]["deps"] if d.startswith("src/pneumonia/")}
    needed = {f"src/pneumonia/{m}.py" for m in import_closure(module)}
    assert sorted(listed - needed) == [], f"dvc.yaml stage {name} lists modules it never imports"


def test_training_does_not_depend_on_image_decoding():
    """The decoder (shared with the web app) feeds training through data/prepared only: a fix
    to it reruns prepare, and train only if the prepared arrays change."""
    assert "serving" not in import_closure("train") and "data" not in import_closure("train")
