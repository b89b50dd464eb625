"""`make audit`: the real pip-audit, as the ci workflow runs it, against a local OSV stand-in
(tests/fake_osv.py): a locked version with an advisory fails the audit, naming it; a clean
answer passes; an advisory service it cannot reach fails it (``--strict``), never "no known
vulnerabilities"."""

from __future__ import annotations

import subprocess

import pytest

from pneumonia.locks import parse_lock
from tests.conftest import REPO, free_port
from tests.fake_osv import FakeOsv, advisory

LOCK = REPO / "requirements-dev.txt"


def make_audit(osv_url: str) -> subprocess.CompletedProcess:
    if subprocess.run(["make", "-q", "install"], cwd=REPO).returncode != 0:
        pytest.fail("the venv does not match the development lock: run `make install` first")
    return subprocess.run(
        ["make", "-s", "audit", f"OSV_URL={osv_url}"], cwd=REPO, capture_output=True, text=True
    )


@pytest.fixture
def osv():
    fake = FakeOsv()
    yield fake
    fake.close()


def test_a_locked_version_with_an_advisory_fails_the_audit(osv):
    django = parse_lock(LOCK.read_text())["django"].version
    osv.advisories[("django", django)] = [advisory("PYSEC-2099-1", "django", "99.0")]
    result = make_audit(osv.url)
    assert result.returncode != 0
    assert "PYSEC-2099-1" in result.stdout and "django" in result.stdout and "99.0" in result.stdout
    asked = {name for name, _ in osv.queries}
    assert asked == set(parse_lock(LOCK.read_text())), "every locked package is looked up"


def test_a_clean_answer_passes(osv):
    result = make_audit(osv.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No known vulnerabilities found" in result.stdout + result.stderr


def test_an_advisory_service_it_cannot_reach_fails_the_audit():
    result = make_audit(f"http://127.0.0.1:{free_port()}/v1/query")
    assert result.returncode != 0
    assert "No known vulnerabilities found" not in result.stdout + result.stderr
