"""monitoring/: the alerting rules pass their promtool unit tests, the Prometheus and
Alertmanager configurations load, and the rules and the dashboard name only metrics the app
exports. Delivered end to end: django_app/diagnosis/tests/test_alerting.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

MONITORING = REPO / "monitoring"


def tool(name: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(path).exists():
        pytest.fail(f"{name} is missing: `make system-deps` installs Debian's prometheus packages")
    return path


def test_the_rules_pass_their_unit_tests():
    checked = subprocess.run(
        [tool("promtool"), "check", "rules", "rules.yml"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [tool("promtool"), "test", "rules", "rules_test.yml"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
    )
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    tested_alerts = set(
        re.findall(r"alertname: (\w+)", (MONITORING / "rules_test.yml").read_text())
    )
    rules = yaml.safe_load((MONITORING / "rules.yml").read_text())
    defined = {r["alert"] for group in rules["groups"] for r in group["rules"]}
    assert defined == tested_alerts, "every alert has a unit test that makes it fire"


def test_the_configurations_load(tmp_path):
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    token = tmp_path / "token"
    token.write_text("a-token")
    config["scrape_configs"][0]["authorization"]["credentials_file"] = str(token)
    config["rule_files"] = [str(MONITORING / "rules.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    checked = subprocess.run(
        [tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    checked = subprocess.run(
        [tool("amtool"), "check-config", str(MONITORING / "alertmanager.yml")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0 and "SUCCESS" in checked.stdout, checked.stdout + checked.stderr


def exported_names() -> set[str]:
    """The sample names /metrics can carry (diagnosis/metrics.py's definitions)."""
    source = (REPO / "django_app/diagnosis/metrics.py").read_text()
    names = set()
    for kind, name in re.findall(r'(Counter|Histogram|GaugeMetricFamily)\(\s*"(\w+)"', source):
        suffixes = {"Counter": ["_total"], "Histogram": ["_bucket", "_sum", "_count"]}
        names |= {name + s for s in suffixes.get(kind, [""])}
    return names


def test_rules_and_dashboard_name_only_exported_metrics():
    exported = exported_names()
    assert {"xray_drift_state", "xray_http_requests_total", "xray_refusals_total"} <= exported
    dashboard = json.loads((MONITORING / "grafana/dashboard.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set(re.findall(r"\bxray_\w+", (MONITORING / "rules.yml").read_text() + str(queries)))
    assert used and used <= exported, used - exported
    datasource = yaml.safe_load(
        (MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]["uid"]
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {datasource}
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
