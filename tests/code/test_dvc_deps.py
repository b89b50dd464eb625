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
    stage["deps"] = [d for d in stage["deps"] if d != "src/pneumonia/predict.py"]
    assert missing_deps(stage) == ["src/pneumonia/predict.py"]
    assert "predict" in import_closure("evaluate") and "data" in import_closure("evaluate")
