"""The shipped Prometheus rules and Grafana dashboard: promtool checks and unit-tests the rules; every metric they
name is documented (a live scrape checks that pydp exports them: tests/control/test_daemon_live.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from promql_names import ALERTS, DASHBOARD, alert_exprs, dashboard_exprs, names_in_expr, used_names

ROOT = Path(__file__).resolve().parents[2]


def promtool(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing (apt install prometheus: scripts/setup.sh does)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, cwd=ALERTS.parent)


def test_rules_check():
    proc = promtool("check", "rules", ALERTS.name)
    assert proc.returncode == 0 and "SUCCESS: 14 rules found" in proc.stdout, proc.stdout + proc.stderr


def test_rules_unit_tests():
    """Each alert fires on the series that should raise it, with its labels and text, and not on healthy ones."""
    proc = promtool("test", "rules", "alerts_test.yml")
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def test_every_alert_has_a_unit_test():
    rules = set(re.findall(r"^\s+- alert: (\w+)$", ALERTS.read_text(), re.M))
    tested = set(re.findall(r"alertname: (\w+)$", (ALERTS.parent / "alerts_test.yml").read_text(), re.M))
    assert rules == tested


def test_names_in_expr():
    assert names_in_expr('sum by (cluster) (pydp_carp_state{state="master"}) == 0') == {"pydp_carp_state"}
    assert names_in_expr('rate(a_total{x=~"$i"}[5m]) / on (instance) b > 0.9 and c offset 5m') == {"a_total", "b", "c"}


def test_dashboard_shape():
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] == "pydp"
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"]), p["title"]
            assert 0 <= p["gridPos"]["x"] and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
    assert len(dashboard_exprs()) >= 30 and len(alert_exprs()) == 14


def test_every_name_is_documented():
    """docs/operations.md's metric table lists every metric the rules and the dashboard use."""
    doc = (ROOT / "docs/operations.md").read_text()
    missing = sorted(n for n in used_names() if f"`{n}`" not in doc and not n.startswith("process_")
                     and not n.startswith("pydp_dataplane_process_"))
    assert missing == []
