"""The metric names a PromQL expression uses, and the ones a Prometheus exposition (a scrape) declares.

Used to check that deploy/grafana/pydp.json and deploy/prometheus/alerts.yml name only metrics pydp exports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy/grafana/pydp.json"
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
            "offset", "inf", "nan"}


def names_in_expr(expr: str) -> set[str]:
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # strings
    e = re.sub(r"\{[^}]*\}", "", e)                        # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                       # range selectors
    e = re.sub(r"\b\d+(ms|[smhdwy])\b", "", e)              # durations (offset 5m)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    out = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        if e[m.end():].lstrip().startswith("(") or m.group(0) in KEYWORDS:
            continue                                       # a function or an operator
        out.add(m.group(0))
    return out


def dashboard_exprs(path: Path = DASHBOARD) -> list[str]:
    dash = json.loads(path.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def alert_exprs(path: Path = ALERTS) -> list[str]:
    """The expr: lines of the rules file (the file is plain YAML without anchors; no YAML library needed)."""
    return [m.group(1).strip() for m in re.finditer(r"^\s+expr:\s*(.+)$", path.read_text(), re.M)]


def exposed_names(text: str) -> set[str]:
    """Series names of an exposition: every sample's name, and the names each # TYPE line declares (a family
    without series right now, e.g. CARP's in a lab without CARP, is declared all the same)."""
    names = set()
    suffixes = {"counter": ("_total", "_created"), "info": ("_info",), "gauge": ("",), "untyped": ("",),
                "summary": ("_sum", "_count", ""), "histogram": ("_bucket", "_sum", "_count")}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            # prometheus_client names an empty counter's TYPE line with its _total already
            names |= {name.removesuffix("_total") + s for s in suffixes.get(kind.strip(), ("",))}
        elif line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


def used_names() -> set[str]:
    return set().union(*(names_in_expr(e) for e in dashboard_exprs() + alert_exprs()))
