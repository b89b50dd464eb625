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


def names_used(tree: ast.Module) -> set[str]:
    """Names the module's code uses, strings and the annotations of functions aside (a
    parameter typed with a class does not use it; a dataclass field's type does)."""
    annotations = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            annotations |= {id(n) for n in ast.walk(node.annotation)}
        elif isinstance(node, ast.FunctionDef) and node.returns is not None:
            annotations |= {id(n) for n in ast.walk(node.returns)}
    return {
        n.id if isinstance(n, ast.Name) else n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Name | ast.Attribute) and id(n) not in annotations
    }


# Public names of stage modules that only benchmarks and tests call, each kept for a reason.
OUTSIDE_THE_PIPELINE = {
    ("src/pneumonia/prepared.py", "write_split"): "the split format's writer, beside its reader",
}


def test_stage_modules_hold_no_benchmark_only_code():
    """A function or class in a stage's dependencies that nothing in the pipeline or the app
    uses (only bench/ or the tests) belongs in bench/: changing it would retrain every
    scheduled run for nothing. ``pneumonia.train.Distillation`` was such a class."""
    deps = sorted(
        {
            dep
            for stage in STAGES.values()
            for dep in stage["deps"]
            if dep.startswith("src/pneumonia/") and dep.endswith(".py")
        }
    )
    served = [*(REPO / "src").rglob("*.py"), *(REPO / "django_app").rglob("*.py")]
    code = {p.relative_to(REPO).as_posix(): p.read_text() for p in served if "tests" not in p.parts}
    unused = []
    for dep in deps:
        tree = ast.parse(code[dep])
        inside = names_used(tree)
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef | ast.ClassDef) or node.name.startswith("_"):
                continue
            name = re.compile(rf"\b{node.name}\b")
            outside = any(name.search(text) for path, text in code.items() if path != dep)
            used = outside or node.name in inside or node.name == "main"
            if not used and (dep, node.name) not in OUTSIDE_THE_PIPELINE:
                unused.append(f"{dep}: {node.name}")
    assert not unused, f"used by no stage and not by the app (move to bench/?): {unused}"
