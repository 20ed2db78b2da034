"""Reading BIRD's answers: ``birdc show protocols all`` and ``birdc show bfd sessions`` parsed into plain dicts.
Pure functions over the text birdc prints (tests/unit/data/bird/ holds output captured from a real BIRD 2.0.12);
the generated configuration sets ``timeformat protocol iso long`` so every "since" is a full date and time."""

from __future__ import annotations

import re
import time

__all__ = ["parse_protocols", "parse_bfd", "parse_time", "version"]

# "pydp_peer_1 BGP        ---        up     2026-12-06 04:00:43  Established   "
_PROTO_RE = re.compile(r"^(?P<name>\S+)\s+(?P<proto>\S+)\s+(?P<table>\S+)\s+(?P<state>\S+)\s+"
                       r"(?P<since>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?|\d\d:\d\d:\d\d(?:\.\d+)?|\S+)"
                       r"\s*(?P<info>.*?)\s*$")
_ROUTES_RE = re.compile(r"^\s*Routes:\s+(\d+) imported, (?:(\d+) filtered, )?(\d+) exported")
_DETAIL_RE = re.compile(r"^\s+(BGP state|Neighbor address|Neighbor AS|Local AS|Neighbor ID|Source address|"
                        r"Last error|Session|Hold timer):\s+(.*?)\s*$")
_BFD_RE = re.compile(r"^(?P<ip>[0-9A-Fa-f:.]+)\s+(?P<iface>\S+)\s+(?P<state>\S+)\s+"
                     r"(?P<since>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?|\S+)\s+(?P<interval>[\d.]+)\s+"
                     r"(?P<timeout>[\d.]+)\s*$")


def parse_time(text: str) -> float | None:
    """Unix time of a BIRD "iso long" time stamp (local time, as BIRD prints it); None if it is not one."""
    try:
        base, _, frac = text.partition(".")
        t = time.mktime(time.strptime(base, "%Y-%m-%d %H:%M:%S"))
        return t + (float("0." + frac) if frac else 0.0)
    except ValueError:
        return None


def _lines(text: str) -> list[str]:
    """The reply's lines without birdc's banner."""
    return [ln for ln in text.splitlines() if not ln.startswith("BIRD ") or " ready." not in ln]


def version(text: str) -> str | None:
    """"2.0.12" from birdc's banner ("BIRD 2.0.12 ready.")."""
    m = re.search(r"^BIRD (\S+) ready\.", text, re.M)
    return m.group(1) if m else None


def parse_protocols(text: str) -> dict[str, dict]:
    """{protocol name: {"proto", "table", "state", "since" (Unix time or None), "info", and for BGP
    "bgp_state", "neighbor_address", "neighbor_as", "local_as", "source_address", "last_error"; "imported",
    "exported" (routes of its channel, when shown)}} from ``show protocols`` or ``show protocols all``."""
    out: dict[str, dict] = {}
    cur: dict | None = None
    for line in _lines(text):
        if not line.strip():
            continue
        if not line[0].isspace():
            if line.startswith("Name ") and "Proto" in line:
                continue
            m = _PROTO_RE.match(line)
            if not m:
                cur = None
                continue
            cur = {"proto": m["proto"], "table": m["table"], "state": m["state"],
                   "since": parse_time(m["since"]), "info": m["info"]}
            out[m["name"]] = cur
            continue
        if cur is None:
            continue
        m = _DETAIL_RE.match(line)
        if m:
            key = m[1].lower().replace(" ", "_")
            value: object = m[2]
            if key in ("neighbor_as", "local_as"):
                value = int(m[2]) if m[2].isdigit() else m[2]
            cur[key] = value
            continue
        m = _ROUTES_RE.match(line)
        if m:
            cur["imported"] = cur.get("imported", 0) + int(m[1])
            cur["exported"] = cur.get("exported", 0) + int(m[3])
    return out


def parse_bfd(text: str) -> dict[str, dict]:
    """{peer address: {"interface", "state" ("Up", "Down", "Init", "AdminDown"), "since", "interval",
    "timeout"}} from ``show bfd sessions``."""
    out: dict[str, dict] = {}
    for line in _lines(text):
        m = _BFD_RE.match(line.strip())
        if m:
            out[m["ip"]] = {"interface": m["iface"], "state": m["state"], "since": parse_time(m["since"]),
                            "interval": float(m["interval"]), "timeout": float(m["timeout"])}
    return out
