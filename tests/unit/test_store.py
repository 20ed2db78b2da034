"""The SQLite config store: changes, validation (nothing changes on error), secrets, import/export, schema
migrations, and two processes changing the store at once."""

import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

from control import store as store_mod
from control.store import NotFound, Store, StoreError
from pydp import config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "appliance.toml"


def web(name="web", ip="198.51.100.10", edges=2, **kw):
    c = {"name": name, "cluster_ip": ip,
         "edge": [{"name": f"e{i + 1}", "ip": f"198.51.100.{21 + i}"} for i in range(edges)]}
    c.update(kw)
    return c


@pytest.fixture
def st(tmp_path):
    s = Store(tmp_path / "pydp.db")
    yield s
    s.close()


def snapshot(s):
    return s.export_text(include_secrets=True), s.revision()


# ---- opening ----

def test_new_store(tmp_path):
    path = tmp_path / "var" / "lib" / "pydp.db"
    with Store(path) as s:
        assert s.schema_version == store_mod.SCHEMA_VERSION
        assert s.revision() == 0
        assert s.list_clusters() == []
    assert stat.S_IMODE(path.stat().st_mode) == 0o600          # it holds CARP passphrases
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    meta = dict(sqlite3.connect(path).execute("SELECT key, value FROM meta"))
    assert meta == {"schema_version": str(store_mod.SCHEMA_VERSION), "revision": "0"}


def test_reopen_keeps_data(tmp_path):
    with Store(tmp_path / "s.db") as s:
        s.add_cluster(web())
    with Store(tmp_path / "s.db") as s:
        assert [c["name"] for c in s.list_clusters()] == ["web"]
        assert s.revision() == 1


def test_not_a_database(tmp_path):
    p = tmp_path / "junk.db"
    p.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable pydp store"):
        Store(p)


def test_foreign_database_refused(tmp_path):
    p = tmp_path / "other.db"
    sqlite3.connect(p).execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(StoreError, match="not a pydp store .*invoices"):
        Store(p)


def test_unwritable_directory(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="cannot create the store's directory"):
        Store(tmp_path / "file" / "pydp.db")


# ---- schema versions and migrations ----

def test_newer_schema_refused(tmp_path):
    p = tmp_path / "s.db"
    with Store(p) as s:
        s.add_cluster(web())
    con = sqlite3.connect(p)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(store_mod.SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    before = p.read_bytes()
    with pytest.raises(StoreError, match=rf"schema version {store_mod.SCHEMA_VERSION + 1}, newer than this pydp"):
        Store(p)
    assert p.read_bytes() == before


def test_empty_file_is_version_0_and_migrates(tmp_path):
    p = tmp_path / "s.db"
    p.write_bytes(b"")
    with Store(p) as s:
        assert s.schema_version == store_mod.SCHEMA_VERSION
        s.add_cluster(web())


def test_migration_from_an_older_layout(tmp_path, monkeypatch):
    """A store of the current layout is 'older' once a step is appended: opening it applies only that step, in
    one transaction, and keeps the data."""
    p = tmp_path / "s.db"
    with Store(p) as s:
        s.add_cluster(web())
        rev = s.revision()
        before = s.export_text()
    ran = []

    def fill(con):
        ran.append(True)
        con.execute("UPDATE clusters SET note = 'migrated'")

    steps = store_mod.MIGRATIONS + [("cluster notes", ("ALTER TABLE clusters ADD COLUMN note TEXT",)),
                                    ("fill the notes", fill)]
    monkeypatch.setattr(store_mod, "MIGRATIONS", steps)
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", len(steps))
    with Store(p) as s:
        assert s.schema_version == len(steps)
        assert s.export_text() == before and s.revision() == rev
    assert ran == [True]
    con = sqlite3.connect(p)
    assert con.execute("SELECT name, note FROM clusters").fetchall() == [("web", "migrated")]
    con.close()
    with Store(p) as s:                                      # already migrated: nothing runs again
        s.add_cluster(web("web2", "198.51.100.11"))
    assert ran == [True]


def test_failed_migration_changes_nothing(tmp_path, monkeypatch):
    p = tmp_path / "s.db"
    with Store(p) as s:
        s.add_cluster(web())
    steps = store_mod.MIGRATIONS + [("ok", ("CREATE TABLE extra (x)",)), ("broken", ("ALTER TABLE nope ADD y",))]
    monkeypatch.setattr(store_mod, "MIGRATIONS", steps)
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", len(steps))
    with pytest.raises(StoreError, match=r"failed at step \d+ \(broken\).*not changed"):
        Store(p)
    con = sqlite3.connect(p)
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(len(steps) - 2),)
    assert not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'extra'").fetchone()


# ---- clusters ----

def test_add_defaults_and_shape(st):
    c = st.add_cluster(web())
    assert list(c) == ["name", "cluster_ip", "enabled", "mode", "dsr", "ipsec_local_termination", "maglev_size",
                       "drain_timeout", "failover", "carp", "health", "edge"]
    assert c["drain_timeout"] == 0 and c["failover"] == "carp"
    assert c["enabled"] is True and c["mode"] == "cluster" and c["dsr"] == "l2"
    assert c["carp"] == {"vhid": 1, "advbase": 1, "advskew": 0, "passphrase_file": "", "preempt": True,
                         "passphrase_set": False}
    assert c["health"]["type"] == "tcp" and c["health"]["port"] == 80
    assert c["edge"][0] == {"name": "e1", "ip": "198.51.100.21", "mac": "", "weight": 1, "state": "active"}
    assert st.get_cluster("web") == c
    assert st.revision() == 1


def test_values_normalized(st):
    c = st.add_cluster({"name": "v6", "cluster_ip": "2001:0db8:0::10",
                        "edge": [{"name": "a", "ip": "2001:db8::21", "mac": "02-AA-00-00-00-01"},
                                 {"name": "b", "ip": "2001:db8::22"}]})
    assert c["cluster_ip"] == "2001:db8::10"
    assert c["edge"][0]["mac"] == "02:aa:00:00:00:01"


def test_vhid_lowest_free(st):
    st.add_cluster(web("a", "198.51.100.1", carp={"vhid": 1}))
    st.add_cluster(web("b", "198.51.100.2", carp={"vhid": 3}))
    assert st.add_cluster(web("c", "198.51.100.3"))["carp"]["vhid"] == 2
    assert st.add_cluster(web("d", "198.51.100.4"))["carp"]["vhid"] == 4
    # standalone clusters do not take part in CARP: their vhid does not count
    st.add_cluster({"name": "s", "cluster_ip": "198.51.100.5", "mode": "standalone",
                    "edge": [{"name": "x", "ip": "198.51.100.50"}], "carp": {"vhid": 5}})
    assert st.add_cluster(web("e", "198.51.100.6"))["carp"]["vhid"] == 5


def test_edit_partial_merge(st):
    st.add_cluster(web(carp={"vhid": 7, "advskew": 50}, health={"type": "http", "path": "/hc"}))
    c = st.edit_cluster("web", {"carp": {"advbase": 2}, "health": {"rise": 5}, "ipsec_local_termination": True})
    assert c["carp"]["vhid"] == 7 and c["carp"]["advskew"] == 50 and c["carp"]["advbase"] == 2
    assert c["health"]["path"] == "/hc" and c["health"]["rise"] == 5 and c["health"]["type"] == "http"
    assert c["ipsec_local_termination"] is True
    assert [e["name"] for e in c["edge"]] == ["e1", "e2"]


def test_edit_health_type_moves_default_port(st):
    st.add_cluster(web())
    assert st.edit_cluster("web", {"health": {"type": "https"}})["health"]["port"] == 443
    assert st.edit_cluster("web", {"health": {"type": "http"}})["health"]["port"] == 80
    st.edit_cluster("web", {"health": {"port": 8080}})
    assert st.edit_cluster("web", {"health": {"type": "https"}})["health"]["port"] == 8080


def test_rename(st):
    st.add_cluster(web())
    c = st.edit_cluster("web", {"name": "www"})
    assert c["name"] == "www"
    with pytest.raises(NotFound):
        st.get_cluster("web")


def test_rename_to_existing_refused(st):
    st.add_cluster(web())
    st.add_cluster(web("db", "198.51.100.11"))
    with pytest.raises(StoreError, match="name: duplicate cluster name 'db'"):
        st.edit_cluster("web", {"name": "db"})


def test_standalone_to_cluster_gets_free_vhid(st):
    st.add_cluster(web(carp={"vhid": 1}))
    st.add_cluster({"name": "lab", "cluster_ip": "192.0.2.50", "mode": "standalone",
                    "edge": [{"name": "only", "ip": "192.0.2.51"}], "carp": {"vhid": 1}})
    c = st.edit_cluster("lab", {"mode": "cluster", "edge": [{"name": "a", "ip": "192.0.2.51"},
                                                              {"name": "b", "ip": "192.0.2.52"}]})
    assert c["mode"] == "cluster" and c["carp"]["vhid"] == 2


def test_delete(st):
    st.add_cluster(web())
    st.delete_cluster("web")
    assert st.list_clusters() == []
    with pytest.raises(NotFound, match="cluster 'web' not found"):
        st.delete_cluster("web")


def test_duplicate(st):
    st.add_cluster(web(carp={"vhid": 10, "advskew": 100, "passphrase": "s3cret"}, dsr="l2",
                       ipsec_local_termination=True, health={"type": "http", "path": "/x"}))
    st.edit_edge("web", "e1", {"state": "draining", "weight": 3, "mac": "02:00:00:00:00:21"})
    d = st.duplicate_cluster("web", "web2", "198.51.100.11")
    src = st.get_cluster("web")
    assert d["name"] == "web2" and d["cluster_ip"] == "198.51.100.11"
    assert d["carp"]["vhid"] == 1                           # the lowest free vhid
    assert d["edge"] == src["edge"] and d["health"] == src["health"]
    assert d["carp"]["advskew"] == 100 and d["carp"]["passphrase_set"]
    assert st.get_cluster("web2", include_secrets=True)["carp"]["passphrase"] == "s3cret"
    assert st.duplicate_cluster("web", "web3", "198.51.100.12", vhid=99)["carp"]["vhid"] == 99


@pytest.mark.parametrize("new_name, ip, vhid, match", [
    ("web", "198.51.100.99", None, "name: duplicate cluster name 'web'"),
    ("web2", "198.51.100.10", None, "cluster 'web2' cluster_ip: duplicate cluster_ip '198.51.100.10'"),
    ("web2", "198.51.100.21", None, "cluster 'web2' edge 'e1' ip: '198.51.100.21' is the cluster_ip itself"),
    ("web2", "198.51.100.11", 10, "cluster 'web2' carp.vhid: duplicate CARP vhid '10'"),
    ("bad name", "198.51.100.11", None, "cluster 'bad name' name: 'bad name' is not a valid name"),
])
def test_duplicate_refused(st, new_name, ip, vhid, match):
    st.add_cluster(web(carp={"vhid": 10}))
    before = snapshot(st)
    with pytest.raises(StoreError, match=match):
        st.duplicate_cluster("web", new_name, ip, vhid=vhid)
    assert snapshot(st) == before


def test_enable_disable(st):
    st.add_cluster(web())
    assert st.set_cluster_enabled("web", False)["enabled"] is False
    assert st.set_cluster_enabled("web", True)["enabled"] is True
    with pytest.raises(StoreError, match="enabled: must be a boolean"):
        st.set_cluster_enabled("web", "no")


def test_noop_change_keeps_revision(st):
    st.add_cluster(web())
    st.set_edge_state("web", "e1", "draining")
    rev = st.revision()
    st.set_edge_state("web", "e1", "draining")
    st.edit_cluster("web", {"enabled": True})
    assert st.revision() == rev


def test_list_order_is_insertion_order(st):
    for n, ip in (("zeta", "198.51.100.1"), ("alpha", "198.51.100.2"), ("mid", "198.51.100.3")):
        st.add_cluster(web(n, ip))
    assert [c["name"] for c in st.list_clusters()] == ["zeta", "alpha", "mid"]


# ---- edges ----

def test_edges(st):
    st.add_cluster(web())
    c = st.add_edge("web", {"name": "e3", "ip": "198.51.100.23", "weight": 4})
    assert [e["name"] for e in c["edge"]] == ["e1", "e2", "e3"]
    c = st.edit_edge("web", "e3", {"name": "e9", "mac": "02:00:00:00:00:09"})
    assert c["edge"][2] == {"name": "e9", "ip": "198.51.100.23", "mac": "02:00:00:00:00:09", "weight": 4,
                            "state": "active"}
    for state in ("draining", "disabled", "active"):
        assert st.set_edge_state("web", "e9", state)["edge"][2]["state"] == state
    c = st.remove_edge("web", "e9")
    assert [e["name"] for e in c["edge"]] == ["e1", "e2"]
    with pytest.raises(NotFound, match="edge 'e9' not found in cluster 'web'"):
        st.remove_edge("web", "e9")
    with pytest.raises(NotFound, match="cluster 'nope' not found"):
        st.add_edge("nope", {"name": "x", "ip": "198.51.100.40"})


# ---- validation: every rule names the field, and nothing changes ----

def _edges(n, base="10.0.0."):
    return [{"name": f"e{i}", "ip": f"{base}{i + 1}"} for i in range(n)]


INVALID = [
    # (operation on a store holding 'web' (vhid 10, edges e1 e2) and standalone 'lab', expected text)
    (lambda s: s.add_cluster({"name": "x", "cluster_ip": "10.1.1.1", "edge": _edges(1)}),
     "cluster 'x' edge: mode 'cluster' needs 2 to 16 edges, got 1"),
    (lambda s: s.add_cluster({"name": "x", "cluster_ip": "10.1.1.1", "edge": _edges(17)}),
     "cluster 'x' edge: mode 'cluster' needs 2 to 16 edges, got 17"),
    (lambda s: s.add_cluster({"name": "x", "cluster_ip": "10.1.1.1", "edge": []}),
     "needs 2 to 16 edges, got 0"),
    (lambda s: s.add_cluster({"name": "x", "cluster_ip": "10.1.1.1", "mode": "standalone", "edge": _edges(2)}),
     "cluster 'x' edge: mode 'standalone' needs exactly 1 edge, got 2"),
    (lambda s: s.add_edge("lab", {"name": "two", "ip": "192.0.2.60"}),
     "cluster 'lab' edge: mode 'standalone' needs exactly 1 edge, got 2"),
    (lambda s: s.remove_edge("web", "e1"), "cluster 'web' edge: mode 'cluster' needs 2 to 16 edges, got 1"),
    (lambda s: s.add_cluster(web()), "name: duplicate cluster name 'web'"),
    (lambda s: s.add_cluster(web("x", "198.51.100.10")), "cluster 'x' cluster_ip: duplicate cluster_ip"),
    (lambda s: s.add_cluster(web("x", "198.51.100.010")), "cluster 'x' cluster_ip: '198.51.100.010' is not an IP"),
    (lambda s: s.add_cluster({"name": "x", "cluster_ip": "10.1.1.1",
                              "edge": [{"name": "a", "ip": "10.0.0.1"}, {"name": "a", "ip": "10.0.0.2"}]}),
     "cluster 'x' edge #2 name: duplicate edge name 'a'"),
    (lambda s: s.add_cluster({"name": "x", "cluster_ip": "10.1.1.1",
                              "edge": [{"name": "a", "ip": "10.0.0.1"}, {"name": "b", "ip": "10.0.0.1"}]}),
     "cluster 'x' edge 'b' ip: duplicate edge ip '10.0.0.1'"),
    (lambda s: s.add_edge("web", {"name": "e1", "ip": "198.51.100.99"}), "edge name: duplicate edge name 'e1'"),
    (lambda s: s.add_edge("web", {"name": "e3", "ip": "198.51.100.21"}),
     "cluster 'web' edge 'e3' ip: duplicate edge ip '198.51.100.21'"),
    (lambda s: s.edit_edge("web", "e2", {"name": "e1"}), "edge name: duplicate edge name 'e1'"),
    (lambda s: s.add_edge("web", {"name": "e3", "ip": "198.51.100.10"}), "is the cluster_ip itself"),
    (lambda s: s.edit_cluster("web", {"carp": {"vhid": 0}}), "cluster 'web' carp.vhid: must be between 1 and 255"),
    (lambda s: s.edit_cluster("web", {"carp": {"vhid": 256}}), "carp.vhid: must be between 1 and 255, got 256"),
    (lambda s: s.add_cluster(web("x", "10.1.1.1", carp={"vhid": 10})),
     "cluster 'x' carp.vhid: duplicate CARP vhid '10' (also at cluster 'web' carp.vhid)"),
    (lambda s: s.edit_cluster("web", {"carp": {"passphrase": "x" * 21}}),
     "cluster 'web' carp.passphrase: is 21 bytes (UTF-8), at most 20 allowed"),
    (lambda s: s.edit_cluster("web", {"carp": {"passphrase": "é" * 11}}), "is 22 bytes (UTF-8), at most 20"),
    (lambda s: s.edit_cluster("web", {"carp": {"advbase": 0}}), "carp.advbase: must be between 1 and 255"),
    (lambda s: s.edit_cluster("web", {"carp": {"advskew": 255}}), "carp.advskew: must be between 0 and 254"),
    (lambda s: s.edit_edge("web", "e1", {"mac": "02:00:00:00:00"}), "cluster 'web' edge 'e1' mac: '02:00:00:00:00' "
                                                                    "is not a MAC address"),
    (lambda s: s.edit_edge("web", "e1", {"mac": "01:00:5e:00:00:01"}), "edge 'e1' mac: '01:00:5e:00:00:01' is a "
                                                                       "multicast/broadcast MAC"),
    (lambda s: s.edit_edge("web", "e1", {"weight": 0}), "edge 'e1' weight: must be between 1 and 65535, got 0"),
    (lambda s: s.edit_edge("web", "e1", {"weight": 65536}), "edge 'e1' weight: must be between 1 and 65535"),
    (lambda s: s.edit_edge("web", "e1", {"weight": "2"}), "edge 'e1' weight: must be an integer"),
    (lambda s: s.set_edge_state("web", "e1", "sleeping"), "edge 'e1' state: must be one of 'active', 'draining', "
                                                          "'disabled'; got 'sleeping'"),
    (lambda s: s.edit_edge("web", "e1", {"ip": "10.0.0.256"}), "edge 'e1' ip: '10.0.0.256' is not an IP address"),
    (lambda s: s.edit_edge("web", "e1", {"colour": "red"}), "edge 'e1' colour: unknown key"),
    (lambda s: s.edit_cluster("web", {"name": "no spaces"}), "name: 'no spaces' is not a valid name"),
    (lambda s: s.edit_cluster("web", {"name": "x" * 32}), "is not a valid name"),
    (lambda s: s.edit_cluster("web", {"mode": "production"}), "cluster 'web' mode: must be one of 'cluster', "
                                                              "'standalone'"),
    (lambda s: s.edit_cluster("web", {"dsr": "nat"}), "cluster 'web' dsr: must be one of 'l2', 'ipip'"),
    (lambda s: s.edit_cluster("web", {"dsr": "ipip"}), "dataplane.ipip.gateway_mac: required when a cluster uses "
                                                       "dsr = \"ipip\" (used by cluster 'web')"),
    (lambda s: s.edit_cluster("web", {"maglev_size": 1000}), "cluster 'web' maglev_size: must be a prime number"),
    (lambda s: s.edit_cluster("web", {"health": {"type": "smtp"}}), "cluster 'web' health.type: must be one of"),
    (lambda s: s.edit_cluster("web", {"health": {"port": 0}}), "cluster 'web' health.port: must be between 1 and"),
    (lambda s: s.edit_cluster("web", {"health": {"path": "healthz"}}), "health.path: must start with '/'"),
    (lambda s: s.edit_cluster("web", {"health": {"timeout": 5.0}}), "health.timeout: must be less than interval"),
    (lambda s: s.edit_cluster("web", {"ipsec_local_termination": 1}), "ipsec_local_termination: must be a boolean"),
    (lambda s: s.edit_cluster("web", {"edges": []}), "cluster 'web' edges: unknown key (did you mean 'edge'?)"),
    (lambda s: s.add_cluster("web"), "cluster: must be a table of settings"),
    (lambda s: s.add_cluster({"name": "x", "edge": _edges(2)}), "cluster 'x' cluster_ip: required key is missing"),
    (lambda s: s.edit_cluster("nope", {"enabled": False}), "cluster 'nope' not found"),
    (lambda s: s.edit_edge("web", "nope", {"weight": 2}), "edge 'nope' not found in cluster 'web'"),
]


@pytest.mark.parametrize("ip, why", [
    ("224.0.0.1", "multicast"), ("239.1.2.3", "multicast"), ("255.255.255.255", "broadcast"),
    ("0.0.0.0", "unspecified"), ("127.0.0.1", "loopback"), ("169.254.1.1", "link-local"),
    ("ff02::1", "multicast"), ("::", "unspecified"), ("::1", "loopback"), ("fe80::1", "link-local"),
    ("::ffff:192.0.2.1", "IPv4-mapped"), ("fe80::1%eth0", "zone index"),
])
def test_cluster_ip_must_be_unicast(st, ip, why):
    st.add_cluster(web())
    before = snapshot(st)
    with pytest.raises(StoreError) as ei:
        st.add_cluster(web("x", ip))
    assert "cluster 'x' cluster_ip: " in str(ei.value) and why in str(ei.value)
    with pytest.raises(StoreError, match="cluster 'web' cluster_ip: .*" + why):
        st.edit_cluster("web", {"cluster_ip": ip})
    assert snapshot(st) == before


@pytest.mark.parametrize("op, expected", INVALID, ids=[str(i) for i in range(len(INVALID))])
def test_invalid_change_names_field_and_changes_nothing(st, op, expected):
    st.add_cluster(web(carp={"vhid": 10, "passphrase": "kept"}))
    st.add_cluster({"name": "lab", "cluster_ip": "192.0.2.50", "mode": "standalone",
                    "edge": [{"name": "only", "ip": "192.0.2.51"}]})
    before = snapshot(st)
    with pytest.raises(StoreError) as ei:
        op(st)
    assert expected in str(ei.value)
    assert "\n" not in str(ei.value)
    assert snapshot(st) == before


def test_all_problems_reported(st):
    with pytest.raises(StoreError) as ei:
        st.add_cluster({"name": "x", "cluster_ip": "224.0.0.1", "edge": _edges(1), "carp": {"vhid": 0}})
    assert len(ei.value.errors) == 3
    assert str(ei.value) == "; ".join(ei.value.errors)


def test_too_many_clusters(st):
    for i in range(config.MAX_CLUSTERS):
        st.add_cluster(web(f"c{i}", f"10.1.0.{i + 1}"))
    with pytest.raises(StoreError, match="cluster: at most 64 clusters"):
        st.add_cluster(web("one-more", "10.2.0.1"))
    assert len(st.list_clusters()) == 64


def test_busy_store_refuses_and_changes_nothing(tmp_path):
    p = tmp_path / "s.db"
    with Store(p) as s:
        s.add_cluster(web())
    other = sqlite3.connect(p, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")                        # another writer holds the store
    s = Store(p, timeout=0.2)
    with pytest.raises(StoreError, match="is busy"):
        s.set_cluster_enabled("web", False)
    other.execute("ROLLBACK")
    assert s.get_cluster("web")["enabled"] is True
    s.close()


# ---- secrets ----

def test_passphrase_never_given_out(st, tmp_path):
    st.add_cluster(web(carp={"passphrase": "top-secret"}))
    assert "top-secret" not in json.dumps(st.list_clusters())
    assert "top-secret" not in json.dumps(st.get_cluster("web"))
    assert "top-secret" not in st.export_text()
    assert st.get_cluster("web")["carp"]["passphrase_set"] is True
    assert st.get_cluster("web", include_secrets=True)["carp"]["passphrase"] == "top-secret"
    assert 'passphrase = "top-secret"' in st.export_text(include_secrets=True)
    assert st.appliance().clusters[0].carp.passphrase == "top-secret"


def test_passphrase_kept_when_dict_written_back(st):
    st.add_cluster(web(carp={"passphrase": "s3"}))
    c = st.get_cluster("web")
    c["carp"]["advskew"] = 5
    st.edit_cluster("web", {"carp": c["carp"]})              # passphrase_set is ignored, passphrase kept
    assert st.get_cluster("web", include_secrets=True)["carp"]["passphrase"] == "s3"


def test_passphrase_file_and_passphrase_replace_each_other(st, tmp_path):
    key = tmp_path / "carp.key"
    key.write_text("from-file\n")
    st.add_cluster(web(carp={"passphrase": "inline"}))
    c = st.edit_cluster("web", {"carp": {"passphrase_file": str(key)}})
    assert c["carp"]["passphrase_file"] == str(key) and c["carp"]["passphrase_set"]
    assert st.appliance().clusters[0].carp.passphrase == "from-file"
    c = st.edit_cluster("web", {"carp": {"passphrase": "inline2"}})
    assert c["carp"]["passphrase_file"] == ""
    key.write_text("x" * 25)
    with pytest.raises(StoreError, match="carp.passphrase_file: the passphrase in .* is 25 bytes"):
        st.edit_cluster("web", {"carp": {"passphrase_file": str(key)}})


# ---- import / export ----

def test_export_import_round_trip(tmp_path):
    a = Store(tmp_path / "a.db")
    a.add_cluster(web(carp={"vhid": 10, "advskew": 100}, health={"type": "http", "path": "/hc", "host": "h"},
                      ipsec_local_termination=True))
    a.add_cluster({"name": "lab", "cluster_ip": "2001:db8::10", "mode": "standalone", "enabled": False,
                   "edge": [{"name": "only", "ip": "2001:db8::11", "mac": "02:00:00:00:00:11", "weight": 7,
                             "state": "draining"}]})
    text = a.export_text()
    b = Store(tmp_path / "b.db")
    result = b.import_text(text, source="a.toml")
    assert result == {"clusters": 2, "ports": 0, "passphrases_kept": 0, "revision": 1}
    assert b.export_text() == text
    assert b.list_clusters() == a.list_clusters()


def test_import_the_example_file(st):
    text = EXAMPLE.read_text()
    st.import_text(text, source=str(EXAMPLE))
    assert st.export_text() == config.dumps(config.load(EXAMPLE))
    assert st.appliance() == config.load(EXAMPLE)
    assert [c["name"] for c in st.list_clusters()] == [c.name for c in config.load(EXAMPLE).clusters]


def test_import_invalid_changes_nothing(st):
    st.add_cluster(web())
    before = snapshot(st)
    bad = EXAMPLE.read_text().replace('vhid = 20', 'vhid = 10').replace('weight = 1', 'weight = 0', 1)
    with pytest.raises(StoreError) as ei:
        st.import_text(bad, source="bad.toml")
    msg = str(ei.value)
    assert "bad.toml: cluster[0].edge[0].weight: must be between 1 and 65535, got 0" in msg
    assert "bad.toml: cluster[1].carp.vhid: duplicate CARP vhid '10'" in msg
    with pytest.raises(StoreError, match=r"bad.toml: TOML syntax error"):
        st.import_text("[[cluster]\n", source="bad.toml")
    assert snapshot(st) == before


def test_import_keeps_stored_passphrases(st):
    st.add_cluster(web(carp={"passphrase": "keep-me"}))
    st.add_cluster(web("db", "198.51.100.11", carp={"passphrase": "db-pw"}))
    text = st.export_text()                                # passphrases left out
    r = st.import_text(text.replace("advskew = 0", "advskew = 9", 1))
    assert r["passphrases_kept"] == 2
    assert st.get_cluster("web", include_secrets=True)["carp"]["passphrase"] == "keep-me"
    assert st.get_cluster("web")["carp"]["advskew"] == 9
    st.import_text(text, keep_passphrases=False)
    assert st.get_cluster("web")["carp"]["passphrase_set"] is False


def test_import_replaces_everything(st):
    st.add_cluster(web("old", "198.51.100.99"))
    st.import_text(EXAMPLE.read_text())
    assert "old" not in [c["name"] for c in st.list_clusters()]
    assert len(st.appliance().ports) == 1


# ---- concurrency: two processes, 50 changes each ----

WORKER = textwrap.dedent("""
    import os, sys, time
    from control.store import Store
    path, tag, go = sys.argv[1], sys.argv[2], sys.argv[3]
    s = Store(path)
    deadline = time.monotonic() + 30                      # both workers start together, or this one gives up
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            sys.exit("no go file within 30 s")
        time.sleep(0.005)
    third = "1" if tag == "a" else "2"
    for i in range(10):                                   # 10 adds, each taking the lowest free vhid
        s.add_cluster({"name": f"{tag}{i}", "cluster_ip": f"10.{third}.0.{i + 1}",
                       "edge": [{"name": "e1", "ip": "192.0.2.1"}, {"name": "e2", "ip": "192.0.2.2"}]})
    for k in range(40):                                   # 40 edits: the last one of cluster i sets weight 32 + i
        s.edit_edge(f"{tag}{k % 10}", "e1", {"weight": k + 2})
    print("done")
""")


def test_two_processes_change_concurrently(tmp_path):
    db = tmp_path / "shared.db"
    Store(db).close()
    go = tmp_path / "go"
    env = dict(os.environ)
    procs = [subprocess.Popen([sys.executable, "-P", "-c", WORKER, str(db), tag, str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tag in "ab"]
    go.write_text("")
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.strip() == "done"
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()
    with Store(db) as s:
        assert s.revision() == 100
        clusters = s.list_clusters()
        assert sorted(c["name"] for c in clusters) == sorted(f"{t}{i}" for t in "ab" for i in range(10))
        assert sorted(c["carp"]["vhid"] for c in clusters) == list(range(1, 21))
        for c in clusters:
            assert c["edge"][0]["weight"] == 32 + int(c["name"][1:])
            assert len(c["edge"]) == 2
        s.appliance()                                      # the whole config is still valid


def test_store_only_config_has_no_ports(st):
    """pydp.config accepts a port-less configuration only when asked (the store's); the data plane never does."""
    st.add_cluster(web())
    text = st.export_text()
    assert "port" not in tomllib.loads(text)
    assert "# No [[port]] yet" in text
    assert len(config.loads(text, require_ports=False).clusters) == 1
    with pytest.raises(config.ConfigError, match="at least one port is required"):
        config.loads(text)


# ---- drain timeout ----

def test_drain_timeout_and_drain_times(st):
    st.add_cluster(web())
    assert st.drain_times() == []
    c = st.edit_cluster("web", {"drain_timeout": 30})
    assert c["drain_timeout"] == 30
    with pytest.raises(StoreError, match=r"drain_timeout: must be at least 0"):
        st.edit_cluster("web", {"drain_timeout": -1})
    with pytest.raises(StoreError, match=r"drain_timeout: must be a number of seconds"):
        st.edit_cluster("web", {"drain_timeout": "soon"})
    t0 = time.time()
    st.set_edge_state("web", "e1", "draining")
    (row,) = st.drain_times()
    assert row["cluster"] == "web" and row["edge"] == "e1" and t0 - 1 <= row["since"] <= time.time()
    st.edit_edge("web", "e1", {"weight": 3})                 # still draining: the clock keeps its start
    assert st.drain_times() == [row]
    st.set_edge_state("web", "e1", "active")
    assert st.drain_times() == []
    st.add_edge("web", {"name": "e3", "ip": "198.51.100.23"})
    st.set_edge_state("web", "e3", "draining")
    st.remove_edge("web", "e3")
    assert st.drain_times() == []
    assert "drain_timeout = 30" in st.export_text()


def test_migration_records_edges_already_draining(tmp_path):
    """A store of schema 1 with a draining edge: the migration adds drain_timeout = 0 and starts the edge's drain
    clock at the migration."""
    p = tmp_path / "old.db"
    con = sqlite3.connect(p)
    for statement in store_mod.MIGRATIONS[0][1]:
        con.execute(statement)
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.execute("INSERT INTO meta VALUES ('schema_version', '1'), ('revision', '4')")
    con.execute("INSERT INTO clusters VALUES (1, 0, 'web', '198.51.100.10', 1, 'cluster', 'l2', 0, NULL, "
                "'{\"vhid\": 1}', '{}')")
    con.execute("INSERT INTO edges VALUES (1, 1, 0, 'e1', '198.51.100.21', '', 1, 'draining')")
    con.execute("INSERT INTO edges VALUES (2, 1, 1, 'e2', '198.51.100.22', '', 1, 'active')")
    con.commit()
    con.close()
    t0 = time.time()
    with Store(p) as s:
        assert s.get_cluster("web")["drain_timeout"] == 0
        (row,) = s.drain_times()
        assert (row["cluster"], row["edge"]) == ("web", "e1") and row["since"] >= t0 - 1
        assert s.revision() == 4
