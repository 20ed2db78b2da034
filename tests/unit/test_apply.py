"""Tests of pydp.apply: an appliance config written into a region of our own (Region.create, no data plane)."""

from __future__ import annotations

import os

import numpy as np
import pytest

try:
    from pydp._ffi import ffi, lib
except ImportError as exc:  # a checkout without a build: skip, except in CI (see tests/conftest.py)
    if os.environ.get("PYDP_REQUIRE_DPDK") == "1":
        raise
    pytest.skip(f"pydp is not built: {exc}", allow_module_level=True)
from pydp import config as pconfig  # noqa: E402
from pydp import maglev  # noqa: E402
from pydp.apply import ApplyError, apply_config  # noqa: E402

MAGLEV_MAX = 65537
SMALL = 1021          # the table size of most clusters here (prime): keeps the builds quick
NONE = lib.PYDP_MAGLEV_NONE

pytestmark = pytest.mark.region(workers=1, ports=1, maglev_max=MAGLEV_MAX, flow_capacity=1024)


# ---- config text ----

def edge(name, last, *, mac=True, weight=None, state=None, ip=None):
    e = {"name": name, "ip": ip or f"198.51.100.{last}"}
    if mac:
        e["mac"] = f"02:00:00:00:00:{last:02x}"
    if weight is not None:
        e["weight"] = weight
    if state is not None:
        e["state"] = state
    return e


def cluster(name, vhid, edges, *, ip=None, size=SMALL, **extra):
    c = {"name": name, "cluster_ip": ip or f"203.0.113.{vhid}", "vhid": vhid, "edges": edges, "size": size}
    c.update(extra)
    return c


def _value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return f'"{v}"'


def toml(clusters, *, gateway_mac=None) -> str:
    lines = ["[dataplane]", 'lcores = "0-1"', "flow_capacity = 1024"]
    if gateway_mac:
        lines += ["[dataplane.ipip]", f'gateway_mac = "{gateway_mac}"']
    lines += ["[[port]]", 'name = "wan0"', 'device = "net_af_packet0,iface=eth1"']
    for c in clusters:
        lines += ["[[cluster]]", f'name = "{c["name"]}"', f'cluster_ip = "{c["cluster_ip"]}"']
        if c["size"] is not None:
            lines.append(f"maglev_size = {c['size']}")
        for k in ("enabled", "dsr", "mode"):
            if k in c:
                lines.append(f"{k} = {_value(c[k])}")
        lines += ["[cluster.carp]", f"vhid = {c['vhid']}"]
        for e in c["edges"]:
            lines.append("[[cluster.edge]]")
            lines += [f"{k} = {_value(v)}" for k, v in e.items()]
    return "\n".join(lines) + "\n"


def load(clusters, **kw):
    return pconfig.loads(toml(clusters, **kw))


# ---- region helpers ----

def cl_slot(region, i):
    return region.config().clusters[i]


def edges_of(region, i) -> dict[str, tuple[int, int, int, int]]:
    """edge name -> (slot, state, weight, uid) in the current config."""
    c = cl_slot(region, i)
    return {ffi.string(c.edges[e].name).decode(): (e, c.edges[e].state, c.edges[e].weight, c.edges[e].uid)
            for e in range(lib.PYDP_MAX_EDGES) if c.edges[e].state != lib.PYDP_EDGE_EMPTY}


def up_slots(region, i) -> set[int]:
    c = cl_slot(region, i)
    return {e for e in range(lib.PYDP_MAX_EDGES) if c.edges[e].state == lib.PYDP_EDGE_UP}


def expected_table(region, i) -> np.ndarray:
    """pydp.maglev.build over the UP edges of cluster slot i, mapped from positions to edge slots."""
    c = cl_slot(region, i)
    slots = sorted(up_slots(region, i))
    if not slots:
        return np.full(c.maglev_size, NONE, dtype=np.uint8)
    names = [ffi.string(c.edges[e].name).decode() for e in slots]
    weights = [c.edges[e].weight for e in slots]
    t = maglev.build(names, size=c.maglev_size, weights=weights)
    lut = np.full(256, NONE, dtype=np.uint8)
    lut[: len(slots)] = slots
    return lut[t]


def assert_table(region, i):
    t = region.maglev_table(i)
    assert t.shape == (cl_slot(region, i).maglev_size,)
    np.testing.assert_array_equal(t, expected_table(region, i))
    present = set(np.unique(t).tolist()) - {NONE}
    assert present <= up_slots(region, i)
    return t


ABC = [edge("e1", 11), edge("e2", 12), edge("e3", 13)]


# ---- tests ----

def test_first_apply(region):
    cfg = load([cluster("a", 1, ABC), cluster("b", 2, [edge("f1", 21, weight=3), edge("f2", 22)],
                                           ip="2001:db8::10", size=2039)])
    res = apply_config(region, cfg)
    assert res.generation == 1 == region.generation
    assert res.slots == {"a": 0, "b": 1}
    assert sorted(res.rebuilt) == ["a", "b"]
    assert res.warnings == []
    cfgs = region.config()
    assert cfgs.nb_clusters == 2
    a = cl_slot(region, 0)
    assert ffi.string(a.name) == b"a"
    assert a.family == lib.PYDP_AF_INET
    assert bytes(a.vip)[:4] == bytes([203, 0, 113, 1]) and not any(bytes(a.vip)[4:])
    assert a.enabled == 1 and a.dsr_mode == lib.PYDP_DSR_L2 and a.maglev_size == SMALL
    assert lib.pydp_config_lookup_vip(cfgs, lib.PYDP_AF_INET, a.vip) == 0
    b = cl_slot(region, 1)
    assert b.family == lib.PYDP_AF_INET6 and b.maglev_size == 2039
    assert lib.pydp_config_lookup_vip(cfgs, lib.PYDP_AF_INET6, b.vip) == 1
    ea = edges_of(region, 0)
    assert {n: v[:3] for n, v in ea.items()} == {"e1": (0, lib.PYDP_EDGE_UP, 1), "e2": (1, lib.PYDP_EDGE_UP, 1),
                                                "e3": (2, lib.PYDP_EDGE_UP, 1)}
    assert bytes(a.edges[1].mac) == bytes.fromhex("02000000000c")
    assert bytes(a.edges[1].addr)[:4] == bytes([198, 51, 100, 12])
    assert edges_of(region, 1)["f1"][2] == 3
    assert set(np.unique(assert_table(region, 0)).tolist()) == {0, 1, 2}
    tb = assert_table(region, 1)
    counts = np.bincount(tb, minlength=2)
    assert counts[0] > 2 * counts[1]                      # weight 3 vs 1


def test_cluster_slots_are_stable(region):
    a, b, c, d = (cluster("a", 1, ABC), cluster("b", 2, ABC), cluster("c", 3, ABC), cluster("d", 4, ABC))
    res = apply_config(region, load([a, b, c]))
    assert res.slots == {"a": 0, "b": 1, "c": 2}
    uid_a = cl_slot(region, 0).uid

    res = apply_config(region, load([a, b, c]))            # the same again: same slots, no rebuild
    assert res.slots == {"a": 0, "b": 1, "c": 2}
    assert res.rebuilt == []

    res = apply_config(region, load([c, b, a]))            # the order in the file does not matter
    assert res.slots == {"a": 0, "b": 1, "c": 2}
    assert res.rebuilt == []

    res = apply_config(region, load([b, c]))               # remove a: the others stay
    assert res.slots == {"b": 1, "c": 2}
    assert cl_slot(region, 0).family == lib.PYDP_AF_NONE
    assert (region.maglev_table(0) == NONE).all()
    assert res.rebuilt == []
    assert lib.pydp_config_lookup_vip(region.config(), lib.PYDP_AF_INET, bytes([203, 0, 113, 1]) + bytes(12)) == -1

    res = apply_config(region, load([d, b, c]))            # add d: it takes a free slot, the others stay
    assert res.slots["b"] == 1 and res.slots["c"] == 2
    assert res.slots["d"] not in (1, 2)
    assert res.rebuilt == ["d"]
    if res.slots["d"] == 0:
        assert cl_slot(region, 0).uid != uid_a             # a reused slot is another cluster
    for name, i in res.slots.items():
        assert ffi.string(cl_slot(region, i).name).decode() == name
        assert_table(region, i)


def test_edge_slots_are_stable(region):
    apply_config(region, load([cluster("a", 1, [edge("e1", 11), edge("e2", 12), edge("e3", 13)])]))
    before = edges_of(region, 0)
    assert {n: v[0] for n, v in before.items()} == {"e1": 0, "e2": 1, "e3": 2}

    # remove e2: e1 and e3 keep their slots and uids, slot 1 is empty
    res = apply_config(region, load([cluster("a", 1, [edge("e1", 11), edge("e3", 13)])]))
    assert res.rebuilt == ["a"]
    now = edges_of(region, 0)
    assert now["e1"] == before["e1"] and now["e3"] == before["e3"]
    assert "e2" not in now
    assert cl_slot(region, 0).edges[1].state == lib.PYDP_EDGE_EMPTY
    assert 1 not in set(assert_table(region, 0).tolist())

    # add e4: it reuses slot 1 under a new uid; the others do not move
    apply_config(region, load([cluster("a", 1, [edge("e1", 11), edge("e3", 13), edge("e4", 14)])]))
    now = edges_of(region, 0)
    assert now["e4"][0] == 1
    assert now["e4"][3] != before["e2"][3]
    assert now["e1"] == before["e1"] and now["e3"] == before["e3"]
    assert_table(region, 0)

    # add e5 in front of the others and reorder: the old edges do not move, e5 takes the next free slot
    apply_config(region, load([cluster("a", 1, [edge("e5", 15), edge("e4", 14), edge("e1", 11),
                                                edge("e3", 13)])]))
    now = edges_of(region, 0)
    assert {n: v[0] for n, v in now.items()} == {"e1": 0, "e4": 1, "e3": 2, "e5": 3}
    assert_table(region, 0)

    # edges of another cluster added and removed: no effect on a's slots
    other = cluster("b", 2, [edge("x1", 31), edge("x2", 32)])
    keep = edges_of(region, 0)
    apply_config(region, load([other, cluster("a", 1, [edge("e5", 15), edge("e4", 14), edge("e1", 11),
                                                       edge("e3", 13)])]))
    assert edges_of(region, 0) == keep


def test_removed_edge_slot_reused_gets_new_uid_each_time(region):
    uids = set()
    for i in range(4):
        apply_config(region, load([cluster("a", 1, [edge("keep", 11), edge(f"tmp{i}", 20 + i)])]))
        e = edges_of(region, 0)
        assert e[f"tmp{i}"][0] == 1
        uids.add(e[f"tmp{i}"][3])
        assert e["keep"][0] == 0
    assert len(uids) == 4


def test_rebuild_only_on_table_changes(region):
    base = [cluster("a", 1, ABC), cluster("b", 2, [edge("f1", 21), edge("f2", 22)])]
    apply_config(region, load(base))
    tv = cl_slot(region, 0).table_version

    def changed(clusters, **kw):
        res = apply_config(region, load(clusters, **kw))
        assert_table(region, res.slots["a"])
        assert_table(region, res.slots["b"])
        return sorted(res.rebuilt)

    # nothing changed: no rebuild, and the table_version stays (a new generation all the same)
    g = region.generation
    assert changed(base) == []
    assert region.generation == g + 1
    assert cl_slot(region, 0).table_version == tv

    # changes that do not touch the table
    assert changed([cluster("a", 1, ABC, enabled=False), base[1]]) == []
    assert cl_slot(region, 0).enabled == 0
    assert changed([cluster("a", 1, [edge("e1", 11), edge("e2", 12, ip="198.51.100.99"), edge("e3", 13)]),
                    base[1]]) == []
    assert bytes(cl_slot(region, 0).edges[1].addr)[:4] == bytes([198, 51, 100, 99])
    assert changed([cluster("a", 1, [edge("e1", 11), edge("e2", 12), edge("e3", 13)], ip="203.0.113.77"),
                    base[1]]) == []
    assert changed(base) == []

    # a weight
    assert changed([cluster("a", 1, [edge("e1", 11, weight=2), edge("e2", 12), edge("e3", 13)]), base[1]]) == ["a"]
    assert changed(base) == ["a"]
    # a state
    assert changed([base[0], cluster("b", 2, [edge("f1", 21), edge("f2", 22, state="draining")])]) == ["b"]
    assert changed(base) == ["b"]
    # the table size
    assert changed([cluster("a", 1, ABC, size=2039), base[1]]) == ["a"]
    assert cl_slot(region, 0).maglev_size == 2039
    # an edge more, an edge less
    assert changed([cluster("a", 1, ABC, size=2039), cluster("b", 2, [edge("f1", 21), edge("f2", 22),
                                                                       edge("f3", 23)])]) == ["b"]
    assert changed([cluster("a", 1, ABC[:2], size=2039), cluster("b", 2, [edge("f1", 21), edge("f2", 22),
                                                                           edge("f3", 23)])]) == ["a"]
    # health
    assert sorted(apply_config(region, load(base), edge_health={("b", "f1"): False}).rebuilt) == ["a", "b"]
    assert sorted(apply_config(region, load(base), edge_health={("b", "f1"): False}).rebuilt) == []
    assert sorted(apply_config(region, load(base), edge_health={("b", "f1"): True}).rebuilt) == ["b"]


def test_edge_health_down(region):
    cfg = load([cluster("a", 1, ABC), cluster("b", 2, [edge("e2", 31), edge("f2", 32)])])
    apply_config(region, cfg)
    res = apply_config(region, cfg, edge_health={("a", "e2"): False, ("a", "e1"): True})
    assert res.rebuilt == ["a"]
    e = edges_of(region, 0)
    assert e["e2"][1] == lib.PYDP_EDGE_DOWN
    assert e["e1"][1] == e["e3"][1] == lib.PYDP_EDGE_UP
    assert e["e2"][0] == 1                                 # keeps its slot
    t = assert_table(region, 0)
    assert set(t.tolist()) == {0, 2}
    # the same edge name in another cluster is not affected
    assert edges_of(region, 1)["e2"][1] == lib.PYDP_EDGE_UP
    # all down: the table is empty
    apply_config(region, cfg, edge_health={("a", n): False for n in ("e1", "e2", "e3")})
    assert (assert_table(region, 0) == NONE).all()
    # health back: the table is the original one
    apply_config(region, cfg)
    assert set(assert_table(region, 0).tolist()) == {0, 1, 2}


def test_draining_and_disabled(region):
    apply_config(region, load([cluster("a", 1, ABC)]))
    full = region.maglev_table(0).copy()
    res = apply_config(region, load([cluster("a", 1, [edge("e1", 11), edge("e2", 12, state="draining"),
                                                      edge("e3", 13, state="disabled")])]))
    assert res.rebuilt == ["a"]
    e = edges_of(region, 0)
    assert e["e2"][:2] == (1, lib.PYDP_EDGE_DRAINING)
    assert e["e3"][:2] == (2, lib.PYDP_EDGE_DISABLED)
    t = assert_table(region, 0)
    assert set(t.tolist()) == {0}
    # draining an edge moves its own entries; the others keep nearly all of theirs (Maglev: minimal disruption)
    apply_config(region, load([cluster("a", 1, [edge("e1", 11), edge("e2", 12, state="draining"), edge("e3", 13)])]))
    t = assert_table(region, 0)
    kept = full != 1
    assert np.mean(t[kept] == full[kept]) > 0.9
    assert 1 not in set(t.tolist())
    # a draining edge that fails its health check is not made UP or reported: it stays out
    apply_config(region, load([cluster("a", 1, [edge("e1", 11), edge("e2", 12, state="draining"), edge("e3", 13)])]),
                 edge_health={("a", "e2"): False})
    assert edges_of(region, 0)["e2"][0] == 1
    assert 1 not in set(assert_table(region, 0).tolist())


def test_l2_edge_without_mac(region):
    res = apply_config(region, load([cluster("a", 1, [edge("e1", 11), edge("nomac", 12, mac=False),
                                                      edge("e3", 13)])]))
    e = edges_of(region, 0)
    assert e["nomac"][1] == lib.PYDP_EDGE_DOWN
    assert e["e1"][1] == e["e3"][1] == lib.PYDP_EDGE_UP
    assert len(res.warnings) == 1
    assert "nomac" in res.warnings[0] and "a" in res.warnings[0]
    assert set(assert_table(region, 0).tolist()) == {0, 2}
    # ipip needs no edge MAC: the edge is UP and nothing is reported
    res = apply_config(region, load([cluster("a", 1, [edge("e1", 11), edge("nomac", 12, mac=False),
                                                      edge("e3", 13)], dsr="ipip")],
                                    gateway_mac="02:00:00:00:00:fe"))
    assert res.warnings == []
    assert edges_of(region, 0)["nomac"][1] == lib.PYDP_EDGE_UP
    assert cl_slot(region, 0).dsr_mode == lib.PYDP_DSR_IPIP
    assert bytes(region.config().gateway_mac) == bytes.fromhex("0200000000fe")
    assert set(assert_table(region, 0).tolist()) == {0, 1, 2}


def test_maglev_size_over_region_room(region):
    good = load([cluster("a", 1, ABC)])
    apply_config(region, good)
    gen = region.generation
    table = region.maglev_table(0).copy()
    bad = load([cluster("a", 1, ABC), cluster("big", 2, ABC, size=65539)])
    with pytest.raises(ApplyError, match="big"):
        apply_config(region, bad)
    assert region.generation == gen
    np.testing.assert_array_equal(region.maglev_table(0), table)
    # the dataplane-wide default size counts too
    bad = pconfig.loads(toml([cluster("a", 1, ABC, size=None)]).replace(
        "flow_capacity = 1024", "flow_capacity = 1024\nmaglev_size = 131071"))
    with pytest.raises(ApplyError, match="131071"):
        apply_config(region, bad)
    assert region.generation == gen
    # the largest size that fits is fine
    res = apply_config(region, load([cluster("a", 1, ABC, size=MAGLEV_MAX)]))
    assert res.rebuilt == ["a"]
    assert_table(region, 0)


def test_default_maglev_size(region):
    cfg = pconfig.loads(toml([cluster("a", 1, ABC, size=None)]))
    apply_config(region, cfg)
    assert cl_slot(region, 0).maglev_size == lib.PYDP_MAGLEV_DEFAULT_SIZE
    assert_table(region, 0)


def test_table_matches_model_after_churn(region):
    """After edges come and go (slots with holes), the table is the model's table for the UP edges."""
    steps = [
        [edge("e1", 11, weight=2), edge("e2", 12), edge("e3", 13), edge("e4", 14)],
        [edge("e1", 11, weight=2), edge("e3", 13, state="draining"), edge("e4", 14)],
        [edge("e4", 14, weight=5), edge("e6", 16), edge("e1", 11, weight=2), edge("e3", 13)],
        [edge("e6", 16), edge("e7", 17, weight=3)],
    ]
    for edges in steps:
        apply_config(region, load([cluster("a", 1, edges)]), edge_health={("a", "e6"): True})
        assert_table(region, 0)
        assert set(edges_of(region, 0)) == {e["name"] for e in edges}


def test_new_cluster_in_reused_slot_table_survives_later_applies(region):
    """A cluster placed in the slot of one removed in the same apply must keep its own table in later
    generations (both config slots), not the removed cluster's."""
    a = cluster("a", 1, [edge("a1", 11), edge("a2", 12), edge("a3", 13), edge("a4", 14)])
    d = cluster("d", 4, [edge("d1", 41), edge("d2", 42)])
    apply_config(region, load([a]))
    res = apply_config(region, load([d]))
    assert res.slots == {"d": 0}
    assert_table(region, 0)
    for _ in range(3):                                    # unchanged config: both config slots get used
        apply_config(region, load([d]))
        t = assert_table(region, 0)
        assert set(t.tolist()) == {0, 1}
