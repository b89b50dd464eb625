"""Command-line tools the release commands run: those of this Python's environment first, so
``.venv/bin/python -m pneumonia.X`` works without the venv on PATH (as in the workflows)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def tool(name: str) -> str:
    """The path of ``name`` beside this interpreter, else on PATH, else the bare name."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name) or name
