"""Every test (pipeline and web app) runs independent of the caller's CI environment: the
variables a GitHub runner sets (GITHUB_SHA, GITHUB_RUN_ID, GITHUB_STEP_SUMMARY, ...) are removed,
and a test that needs one sets it itself. `.ci/run` runs the suite with runner-like values set,
so a test that reads them by accident fails there too."""

from __future__ import annotations

import os

import pytest

CI_PREFIXES = ("GITHUB_", "RUNNER_", "ACTIONS_")


@pytest.fixture(autouse=True)
def _no_ci_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith(CI_PREFIXES) or name in ("CI", "RETRAIN_TRIGGER"):
            monkeypatch.delenv(name)
