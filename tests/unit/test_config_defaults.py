"""The defaults of the configuration have one source, the dataclasses of pydp/config.py: the loader's tables take
them from there, and the reference (docs/config.md) must say the same."""

from __future__ import annotations

import dataclasses
import pathlib
import re
import tomllib

import pytest

from pydp import config

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "config.md"

# docs/config.md section -> (dataclass, loader spec)
SECTIONS = {
    "[dataplane]": (config.DataplaneConfig, config._DATAPLANE_SPEC),
    "[dataplane.timeouts]": (config.Timeouts, config._TIMEOUTS_SPEC),
    "[dataplane.ipip]": (config.IpipConfig, config._IPIP_SPEC),
    "[[port]]": (config.PortConfig, config._PORT_SPEC),
    "[[cluster]]": (config.ClusterConfig, config._CLUSTER_SPEC),
    "[cluster.carp]": (config.CarpConfig, config._CARP_SPEC),
    "[cluster.health]": (config.HealthConfig, config._HEALTH_SPEC),
    "[[cluster.edge]]": (config.EdgeConfig, config._EDGE_SPEC),
    "[sync]": (config.SyncConfig, config._SYNC_SPEC),
    "[bgp]": (config.BgpConfig, config._BGP_SPEC),
    "[[bgp.peer]]": (config.BgpPeerConfig, config._BGP_PEER_SPEC),
}
FIELD = {"as": "asn"}       # TOML keys that are Python keywords


def doc_defaults() -> dict[str, dict[str, str]]:
    """{section: {key: the default cell}} of the key tables of docs/config.md."""
    out: dict[str, dict[str, str]] = {}
    section, col = None, None
    for line in DOC.read_text().splitlines():
        m = re.match(r"#+ `(\[[^`]+\])`", line)
        if m:
            section, col = m.group(1), None
            continue
        if section is None or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "key":
            col = cells.index("default")
        elif col is not None and cells[0].startswith("`"):
            out.setdefault(section, {})[cells[0].strip("`")] = cells[col]
    return out


def toml_value(cell: str):
    """The first `...` literal of a default cell as TOML reads it; None if it is not a TOML value."""
    m = re.match(r"`([^`]*)`", cell)
    if not m:
        return None
    try:
        return tomllib.loads(f"v = {m.group(1)}")["v"]
    except tomllib.TOMLDecodeError:
        return None


def file_form(v):
    """A default as the file writes it (config.to_dict's forms)."""
    if v is None:
        return ""
    if isinstance(v, (str, bool, int, float, list)):
        return v
    return str(v)


def test_loader_defaults_are_the_dataclass_defaults():
    for section, (cls, spec) in SECTIONS.items():
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, (conv, default) in spec.items():
            if conv is config._SUB:
                continue
            f = fields[FIELD.get(key, key)]
            want = (f.default if f.default is not dataclasses.MISSING
                    else f.default_factory() if f.default_factory is not dataclasses.MISSING else config._REQUIRED)
            assert default == want or default is want, f"{section} {key}"


def test_every_documented_key_exists_and_every_key_is_documented():
    docs = doc_defaults()
    assert set(docs) == set(SECTIONS)
    for section, (cls, spec) in SECTIONS.items():
        keys = {k for k, (conv, _) in spec.items() if conv is not config._SUB}
        assert set(docs[section]) == keys, section


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_documented_defaults_are_the_dataclass_defaults(section):
    cls, spec = SECTIONS[section]
    # None defaults are resolved by __post_init__ (tap "pydp-<name>", health port 80): compare what it makes
    required = {FIELD.get(k, k): f"<{k}>" for k, (conv, d) in spec.items() if d is config._REQUIRED}
    instance = cls(**required)
    checked = 0
    for key, cell in doc_defaults()[section].items():
        default = spec[key][1]
        if default is None:
            default = getattr(instance, FIELD.get(key, key))
        if default is config._REQUIRED:
            assert cell == "**required**", f"{section} {key}: {cell}"
            continue
        documented = toml_value(cell)
        if documented is None:        # described in words (e.g. "pydp-<name>", dataplane.maglev_size)
            continue
        assert documented == file_form(default), f"{section} {key}: documented {cell}, the code says {default!r}"
        checked += 1
    assert checked >= 1
