"""Declared where used: every third-party package the pipeline's code imports (src/pneumonia)
is named in requirements.in, the pipeline's own requirements (not only in the app's)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys

from tests.conftest import REPO


def imported_packages() -> dict[str, set[str]]:
    """Top-level modules imported by src/pneumonia, and the files that import them."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / "src" / "pneumonia").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "pneumonia":
                    found.setdefault(top, set()).add(path.name)
    return found


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_package_the_pipeline_imports_is_in_requirements_in():
    lines = (REPO / "requirements.in").read_text().splitlines()
    declared = {
        normalized(re.split(r"[\s\[<>=~!;#]", line.strip(), maxsplit=1)[0])
        for line in lines
        if line.strip() and not line.startswith(("#", "-"))
    }
    distributions = importlib.metadata.packages_distributions()
    missing = {
        module: sorted(files)
        for module, files in imported_packages().items()
        if not {normalized(d) for d in distributions.get(module, [module])} & declared
    }
    assert not missing, f"imported by src/pneumonia but not in requirements.in: {missing}"
    assert "pydicom" in imported_packages()  # the case that was missing: serving reads DICOM
