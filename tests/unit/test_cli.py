"""pydpctl end to end against a temporary store: in-process through control.cli.main() and, for a few commands,
as real processes (python3 -P -m control.cli and the installed pydpctl script)."""

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from control import backend, cli
from control.store import Store

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "appliance.toml"


class Ctl:
    """Runs pydpctl in-process on one store: ctl("cluster", "list") -> (exit code, stdout, stderr)."""

    def __init__(self, db: Path, capsys):
        self.db = db
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        rc = cli.main(["--db", str(self.db), *args])
        out, err = self.capsys.readouterr()
        return rc, out, err

    def ok(self, *args: str) -> str:
        rc, out, err = self(*args)
        assert rc == 0, err
        assert err == ""
        return out

    def json(self, *args: str):
        return json.loads(self.ok(*args, "--json"))

    def fails(self, *args: str, code: int = 1) -> str:
        """The command fails with code, one line 'pydpctl: error: ...' on stderr, nothing on stdout, and the
        store is unchanged."""
        before = self.state()
        rc, out, err = self(*args)
        assert rc == code, (out, err)
        assert out == ""
        assert err.startswith("pydpctl: error: ") and err.endswith("\n") and err.count("\n") == 1, err
        assert self.state() == before
        return err

    def state(self) -> str:
        rc = cli.main(["--db", str(self.db), "export", "-", "--include-secrets"])
        out, _ = self.capsys.readouterr()
        assert rc == 0
        return out

    def names(self, *args: str) -> list[str]:
        return [c["name"] for c in self.json("cluster", "list", *args)]


@pytest.fixture
def ctl(tmp_path, capsys):
    return Ctl(tmp_path / "pydp.db", capsys)


WEB = ["cluster", "add", "web", "--cluster-ip", "198.51.100.10", "--edge", "e1=198.51.100.21",
       "--edge", "e2=198.51.100.22@02:00:00:00:00:22,weight=2", "--vhid", "10"]
LAB = ["cluster", "add", "lab", "--cluster-ip", "192.0.2.50", "--edge", "only=192.0.2.51", "--standalone"]


@pytest.fixture
def four(ctl):
    """Four clusters whose values differ in every column."""
    ctl.ok(*WEB)
    ctl.ok(*LAB)
    ctl.ok("cluster", "add", "Alpha", "--cluster-ip", "2001:db8::10", "--edge", "a=2001:db8::21",
           "--edge", "b=2001:db8::22", "--edge", "c=2001:db8::23", "--ipsec-local-termination", "--disabled")
    ctl.ok("cluster", "add", "vpn", "--cluster-ip", "203.0.113.5", "--edge", "x=203.0.113.21",
           "--edge", "y=203.0.113.22", "--ipsec-local-termination")
    return ctl


# ---- cluster add / show / list ----

def test_add_and_show(ctl):
    out = ctl.ok(*WEB)
    assert out == "added cluster 'web': cluster IP 198.51.100.10, 2 service edges, CARP vhid 10\n"
    c = ctl.json("cluster", "show", "web")
    assert c["cluster_ip"] == "198.51.100.10" and c["carp"]["vhid"] == 10 and c["mode"] == "cluster"
    assert c["edge"] == [
        {"name": "e1", "ip": "198.51.100.21", "mac": "", "weight": 1, "state": "active"},
        {"name": "e2", "ip": "198.51.100.22", "mac": "02:00:00:00:00:22", "weight": 2, "state": "active"}]
    text = ctl.ok("cluster", "show", "web")
    assert "Cluster:                 web\n" in text
    assert "CARP:                    vhid 10, advbase 1 s, advskew 0, preempt on, passphrase not set" in text
    assert "Name  IP             MAC                Weight  State\n" in text
    assert "e2    198.51.100.22  02:00:00:00:00:22  2       active" in text


def test_add_all_options(ctl, tmp_path):
    key = tmp_path / "carp.key"
    key.write_text("s3cret\n")
    ctl.ok("cluster", "add", "full", "--cluster-ip", "198.51.100.30", "--edge", "a=198.51.100.31",
           "--edge", "b=198.51.100.32,weight=5,state=draining", "--ipsec-local-termination", "--disabled",
           "--dsr", "l2", "--vhid", "42", "--advbase", "3", "--advskew", "100", "--passphrase-file", str(key),
           "--no-preempt", "--health", "https", "--health-path", "/hc", "--health-host", "example.com",
           "--health-interval", "5", "--health-timeout", "2.5", "--health-rise", "4", "--health-fall", "6",
           "--maglev-size", "251")
    c = ctl.json("cluster", "show", "full")
    assert c["enabled"] is False and c["ipsec_local_termination"] is True and c["maglev_size"] == 251
    assert c["carp"] == {"vhid": 42, "advbase": 3, "advskew": 100, "passphrase_file": "", "preempt": False,
                         "passphrase_set": True}
    assert c["health"] == {"type": "https", "port": 443, "path": "/hc", "host": "example.com",
                           "expect_status": 200, "expect_body": "", "interval": 5.0, "timeout": 2.5, "rise": 4,
                           "fall": 6}
    assert c["edge"][1] == {"name": "b", "ip": "198.51.100.32", "mac": "", "weight": 5, "state": "draining"}
    assert "s3cret" not in ctl.ok("cluster", "show", "full") + ctl.ok("cluster", "list")
    assert "s3cret" not in ctl.ok("export", "-")
    assert 'passphrase = "s3cret"' in ctl.ok("export", "-", "--include-secrets")


def test_standalone_marked_not_for_production(ctl):
    out = ctl.ok(*LAB)
    assert "standalone (not for production" in out
    assert "standalone (not for production)" in ctl.ok("cluster", "list")
    assert "Mode:                    standalone (not for production" in ctl.ok("cluster", "show", "lab")
    assert ctl.json("cluster", "list")[0]["mode"] == "standalone"


def test_list_table(four):
    out = four.ok("cluster", "list")
    assert out.splitlines() == [
        "Name   Status    Service Edges  Cluster IP     IPSec Local Termination  Mode",
        "Alpha  disabled  a, b, c        2001:db8::10   yes                      cluster",
        "lab    enabled   only           192.0.2.50     no                       standalone (not for production)",
        "vpn    enabled   x, y           203.0.113.5    yes                      cluster",
        "web    enabled   e1, e2         198.51.100.10  no                       cluster",
    ]


def test_list_shows_edge_states(ctl):
    ctl.ok(*WEB)
    ctl.ok("edge", "drain", "web", "e1")
    assert "e1 (draining), e2" in ctl.ok("cluster", "list")


def test_list_empty(ctl):
    assert ctl.ok("cluster", "list") == "No clusters.\n"
    assert ctl.json("cluster", "list") == []


def test_list_json_shape(four):
    rows = four.json("cluster", "list")
    for r in rows:
        assert list(r) == ["name", "status", "service_edges", "cluster_ip", "ipsec_local_termination", "mode",
                         "failover"]
    assert rows[0] == {"name": "Alpha", "status": "disabled", "service_edges": ["a", "b", "c"],
                       "cluster_ip": "2001:db8::10", "ipsec_local_termination": True, "mode": "cluster",
                       "failover": "carp"}
    assert {r["name"]: r["status"] for r in rows} == {"Alpha": "disabled", "lab": "enabled", "vpn": "enabled",
                                                       "web": "enabled"}
    assert {r["name"]: r["mode"] for r in rows}["lab"] == "standalone"


SORTS = {
    # column: ascending order of the four clusters (ties broken by name)
    "name": ["Alpha", "lab", "vpn", "web"],
    "status": ["Alpha", "lab", "vpn", "web"],                # disabled < enabled
    "service-edges": ["lab", "web", "vpn", "Alpha"],         # by count, then names (e1, e2 < x, y)
    "cluster-ip": ["lab", "web", "vpn", "Alpha"],            # numeric; IPv4 before IPv6
    "ipsec-local-termination": ["lab", "web", "Alpha", "vpn"],
    "mode": ["Alpha", "vpn", "web", "lab"],
}


@pytest.mark.parametrize("column", list(SORTS))
def test_sort_every_column_both_directions(four, column):
    assert four.names("--sort", column) == SORTS[column]
    assert four.names("--sort", column, "--desc") == SORTS[column][::-1]
    table = four.ok("cluster", "list", "--sort", column.upper().replace("-", "_"))    # case-insensitive
    assert [line.split()[0] for line in table.splitlines()[1:]] == SORTS[column]


def test_sort_column_spellings(four):
    assert four.names("--sort", "Cluster IP") == SORTS["cluster-ip"]
    assert four.names("--sort", "Service_Edges") == SORTS["service-edges"]
    assert four.names("--sort", "ip") == SORTS["cluster-ip"]
    assert "unknown column 'colour'" in four.fails("cluster", "list", "--sort", "colour", code=2)


def test_sort_ip_is_numeric(ctl):
    for name, ip in (("a", "10.0.0.10"), ("b", "10.0.0.9"), ("c", "9.0.0.1"), ("d", "::10"), ("e", "2001:db8::1")):
        ctl.ok("cluster", "add", name, "--cluster-ip", ip if ip != "::10" else "2001:db8::a",
               "--edge", f"x={'10.9.9.1' if '.' in ip else '2001:db8::99'}",
               "--edge", f"y={'10.9.9.2' if '.' in ip else '2001:db8::98'}")
    assert ctl.names("--sort", "cluster-ip") == ["c", "b", "a", "e", "d"]


@pytest.mark.parametrize("text, expected", [
    ("web", ["web"]),                       # name
    ("ALPHA", ["Alpha"]),                   # name, case-insensitive
    ("203.0.113.5", ["vpn"]),               # cluster IP
    ("2001:DB8::10", ["Alpha"]),            # cluster IP, case-insensitive
    ("only", ["lab"]),                      # edge name
    ("E2", ["web"]),                        # edge name, case-insensitive
    ("198.51.100.22", ["web"]),             # edge IP
    ("2001:db8::23", ["Alpha"]),            # edge IPv6
    ("203.0.113", ["vpn"]),                 # part of an IP
    ("nothing-like-this", []),
])
def test_search(four, text, expected):
    assert four.names("--search", text) == expected


def test_search_with_sort_and_table(four):
    assert four.names("--search", "2", "--sort", "cluster-ip", "--desc") == ["Alpha", "vpn", "web", "lab"]
    assert four.ok("cluster", "list", "--search", "zzz") == "No cluster matches 'zzz'.\n"


# ---- edit / duplicate / delete / enable / disable ----

def test_edit(ctl):
    ctl.ok(*WEB)
    out = ctl.ok("cluster", "edit", "web", "--name", "www", "--cluster-ip", "198.51.100.11", "--advskew", "50",
                 "--health", "http", "--health-path", "/healthz", "--ipsec-local-termination")
    assert out.startswith("changed cluster 'www' (renamed from 'web')")
    c = ctl.json("cluster", "show", "www")
    assert c["cluster_ip"] == "198.51.100.11" and c["carp"]["advskew"] == 50 and c["carp"]["vhid"] == 10
    assert c["health"]["type"] == "http" and c["health"]["path"] == "/healthz"
    assert c["ipsec_local_termination"] is True
    assert len(c["edge"]) == 2                              # untouched
    ctl.ok("cluster", "edit", "www", "--no-ipsec-local-termination", "--disabled")
    c = ctl.json("cluster", "show", "www")
    assert c["ipsec_local_termination"] is False and c["enabled"] is False
    ctl.ok("cluster", "edit", "www", "--edge", "n1=198.51.100.41", "--edge", "n2=198.51.100.42")
    assert [e["name"] for e in ctl.json("cluster", "show", "www")["edge"]] == ["n1", "n2"]


def test_edit_passphrase(ctl, tmp_path):
    ctl.ok(*WEB)
    key = tmp_path / "k"
    key.write_text("first")
    ctl.ok("cluster", "edit", "web", "--passphrase-file", str(key))
    assert Store(ctl.db).get_cluster("web", include_secrets=True)["carp"]["passphrase"] == "first"
    ctl.ok("cluster", "edit", "web", "--clear-passphrase")
    assert ctl.json("cluster", "show", "web")["carp"]["passphrase_set"] is False


def test_edit_nothing_is_usage_error(ctl):
    ctl.ok(*WEB)
    assert "nothing to change" in ctl.fails("cluster", "edit", "web", code=2)


def test_duplicate(ctl):
    ctl.ok(*WEB)
    out = ctl.ok("cluster", "duplicate", "web", "web2", "--cluster-ip", "198.51.100.11")
    assert out == "duplicated cluster 'web' as 'web2': cluster IP 198.51.100.11, 2 service edges, CARP vhid 1\n"
    a, b = ctl.json("cluster", "show", "web"), ctl.json("cluster", "show", "web2")
    assert a["edge"] == b["edge"] and a["health"] == b["health"]
    ctl.ok("cluster", "duplicate", "web", "web3", "--cluster-ip", "198.51.100.12", "--vhid", "77")
    assert ctl.json("cluster", "show", "web3")["carp"]["vhid"] == 77
    assert "required: --cluster-ip" in ctl.fails("cluster", "duplicate", "web", "web4", code=2)
    assert "duplicate cluster name 'web2'" in ctl.fails("cluster", "duplicate", "web", "web2", "--cluster-ip",
                                                        "198.51.100.13")
    assert "cluster_ip: duplicate cluster_ip '198.51.100.10'" in ctl.fails(
        "cluster", "duplicate", "web", "web4", "--cluster-ip", "198.51.100.10")


def test_delete(ctl):
    ctl.ok(*WEB)
    assert ctl.ok("cluster", "delete", "web") == "deleted cluster 'web'\n"
    assert ctl.names() == []
    assert ctl.fails("cluster", "delete", "web") == "pydpctl: error: cluster 'web' not found\n"


def test_enable_disable(ctl):
    ctl.ok(*WEB)
    assert ctl.ok("cluster", "disable", "web") == "cluster 'web' disabled\n"
    assert ctl.json("cluster", "list")[0]["status"] == "disabled"
    assert ctl.ok("cluster", "enable", "web") == "cluster 'web' enabled\n"
    assert ctl.json("cluster", "list")[0]["status"] == "enabled"


# ---- edges ----

def test_edge_commands(ctl):
    ctl.ok(*WEB)
    assert ctl.ok("edge", "add", "web", "e3=198.51.100.23@02:00:00:00:00:23", "--weight", "4") == (
        "added edge 'e3' (198.51.100.23) to cluster 'web': 3 service edges\n")
    assert ctl.json("edge", "show", "web", "e3") == {"name": "e3", "ip": "198.51.100.23",
                                                     "mac": "02:00:00:00:00:23", "weight": 4, "state": "active"}
    assert "draining" in ctl.ok("edge", "drain", "web", "e3")
    assert ctl.json("edge", "show", "web", "e3")["state"] == "draining"
    ctl.ok("edge", "undrain", "web", "e3")
    assert ctl.json("edge", "show", "web", "e3")["state"] == "active"
    ctl.ok("edge", "disable", "web", "e3")
    assert ctl.json("edge", "show", "web", "e3")["state"] == "disabled"
    ctl.ok("edge", "enable", "web", "e3")
    ctl.ok("edge", "edit", "web", "e3", "--name", "e9", "--mac", "auto", "--weight", "7")
    assert ctl.json("edge", "show", "web", "e9") == {"name": "e9", "ip": "198.51.100.23", "mac": "", "weight": 7,
                                                     "state": "active"}
    assert [e["name"] for e in ctl.json("edge", "show", "web")] == ["e1", "e2", "e9"]
    table = ctl.ok("edge", "show", "web")
    assert table.splitlines()[0] == "Name  IP             MAC                Weight  State"
    assert "e9    198.51.100.23  auto               7       active" in table
    assert "MAC:     auto" in ctl.ok("edge", "show", "web", "e9")
    assert ctl.ok("edge", "remove", "web", "e9") == "removed edge 'e9' from cluster 'web': 2 service edges left\n"
    assert ctl.fails("edge", "show", "web", "e9") == "pydpctl: error: edge 'e9' not found in cluster 'web'\n"
    assert ctl.fails("edge", "drain", "nope", "e1") == "pydpctl: error: cluster 'nope' not found\n"


# ---- every validation rule: exit 1, one line naming the field, store unchanged ----

RULES = [
    # (command after the setup of 'web' (vhid 10) and 'lab' (standalone), text the error must contain)
    (["cluster", "add", "x", "--cluster-ip", "10.1.1.1", "--edge", "a=10.0.0.1"],
     "cluster 'x' edge: mode 'cluster' needs 2 to 16 edges, got 1"),
    (["cluster", "add", "x", "--cluster-ip", "10.1.1.1"] + [a for i in range(17)
                                                           for a in ("--edge", f"e{i}=10.0.1.{i + 1}")],
     "cluster 'x' edge: mode 'cluster' needs 2 to 16 edges, got 17"),
    (["cluster", "add", "x", "--cluster-ip", "10.1.1.1", "--standalone", "--edge", "a=10.0.0.1", "--edge",
      "b=10.0.0.2"], "cluster 'x' edge: mode 'standalone' needs exactly 1 edge, got 2"),
    (["cluster", "add", "x", "--cluster-ip", "10.1.1.1", "--standalone"],
     "cluster 'x' edge: mode 'standalone' needs exactly 1 edge, got 0"),
    (["edge", "add", "lab", "two=192.0.2.52"], "cluster 'lab' edge: mode 'standalone' needs exactly 1 edge, got 2"),
    (["edge", "remove", "web", "e1"], "cluster 'web' edge: mode 'cluster' needs 2 to 16 edges, got 1"),
    (["cluster", "edit", "web", "--standalone"], "cluster 'web' edge: mode 'standalone' needs exactly 1 edge, got 2"),
    (WEB, "name: duplicate cluster name 'web'"),
    (["cluster", "edit", "lab", "--name", "web"], "name: duplicate cluster name 'web'"),
    (["cluster", "add", "x", "--cluster-ip", "198.51.100.10", "--edge", "a=10.0.0.1", "--edge", "b=10.0.0.2"],
     "cluster 'x' cluster_ip: duplicate cluster_ip '198.51.100.10' (also at cluster 'web' cluster_ip)"),
    (["cluster", "add", "x", "--cluster-ip", "10.1.1.1", "--edge", "a=10.0.0.1", "--edge", "a=10.0.0.2"],
     "cluster 'x' edge #2 name: duplicate edge name 'a'"),
    (["edge", "add", "web", "e1=198.51.100.29"], "cluster 'web' edge name: duplicate edge name 'e1'"),
    (["edge", "edit", "web", "e2", "--name", "e1"], "cluster 'web' edge name: duplicate edge name 'e1'"),
    (["cluster", "add", "x", "--cluster-ip", "10.1.1.1", "--edge", "a=10.0.0.1", "--edge", "b=10.0.0.1"],
     "cluster 'x' edge 'b' ip: duplicate edge ip '10.0.0.1'"),
    (["edge", "add", "web", "e3=198.51.100.21"], "cluster 'web' edge 'e3' ip: duplicate edge ip '198.51.100.21'"),
    (["edge", "add", "web", "e3=198.51.100.10"], "edge 'e3' ip: '198.51.100.10' is the cluster_ip itself"),
    (["edge", "add", "web", "e3=198.51.100.300"], "edge 'e3' ip: '198.51.100.300' is not an IP address"),
    (["cluster", "edit", "web", "--cluster-ip", "224.0.0.5"], "cluster 'web' cluster_ip: '224.0.0.5' is not a "
                                                              "unicast address (multicast)"),
    (["cluster", "edit", "web", "--cluster-ip", "255.255.255.255"], "is not a unicast address (broadcast)"),
    (["cluster", "edit", "web", "--cluster-ip", "0.0.0.0"], "is not a unicast address (unspecified)"),
    (["cluster", "edit", "web", "--cluster-ip", "127.0.0.1"], "is not a unicast address (loopback)"),
    (["cluster", "edit", "web", "--cluster-ip", "169.254.0.9"], "is not a unicast address (link-local)"),
    (["cluster", "edit", "web", "--cluster-ip", "ff02::1"], "'ff02::1' is not a unicast address (multicast)"),
    (["cluster", "edit", "web", "--cluster-ip", "fe80::1"], "is not a unicast address (link-local)"),
    (["cluster", "edit", "web", "--cluster-ip", "::1"], "is not a unicast address (loopback)"),
    (["cluster", "edit", "web", "--cluster-ip", "web.example.com"], "cluster_ip: 'web.example.com' is not an IP"),
    (["cluster", "edit", "web", "--vhid", "0"], "cluster 'web' carp.vhid: must be between 1 and 255, got 0"),
    (["cluster", "edit", "web", "--vhid", "256"], "cluster 'web' carp.vhid: must be between 1 and 255, got 256"),
    (["cluster", "add", "x", "--cluster-ip", "10.1.1.1", "--edge", "a=10.0.0.1", "--edge", "b=10.0.0.2", "--vhid",
      "10"], "cluster 'x' carp.vhid: duplicate CARP vhid '10' (also at cluster 'web' carp.vhid)"),
    (["cluster", "duplicate", "web", "web2", "--cluster-ip", "10.1.1.1", "--vhid", "10"],
     "cluster 'web2' carp.vhid: duplicate CARP vhid '10'"),
    (["cluster", "edit", "web", "--advbase", "0"], "cluster 'web' carp.advbase: must be between 1 and 255"),
    (["cluster", "edit", "web", "--advskew", "255"], "cluster 'web' carp.advskew: must be between 0 and 254"),
    (["edge", "add", "web", "e3=198.51.100.23@02:00:00:00:00"], "edge 'e3' mac: '02:00:00:00:00' is not a MAC"),
    (["edge", "add", "web", "e3=198.51.100.23@ff:ff:ff:ff:ff:ff"], "edge 'e3' mac: 'ff:ff:ff:ff:ff:ff' is a "
                                                                   "multicast/broadcast MAC address"),
    (["edge", "add", "web", "e3=198.51.100.23@00:00:00:00:00:00"], "is the all-zero MAC address"),
    (["edge", "edit", "web", "e1", "--mac", "zz:00:00:00:00:01"], "cluster 'web' edge 'e1' mac: 'zz:00:00:00:00:01'"),
    (["edge", "add", "web", "e3=198.51.100.23", "--weight", "0"], "edge 'e3' weight: must be between 1 and 65535, "
                                                                  "got 0"),
    (["edge", "edit", "web", "e1", "--weight", "65536"], "edge 'e1' weight: must be between 1 and 65535, got 65536"),
    (["edge", "add", "web", "e3=198.51.100.23,state=sleeping"], "edge 'e3' state: must be one of 'active', "
                                                                "'draining', 'disabled'; got 'sleeping'"),
    (["cluster", "add", "bad name", "--cluster-ip", "10.1.1.1", "--edge", "a=10.0.0.1", "--edge", "b=10.0.0.2"],
     "name: 'bad name' is not a valid name (1 to 31 of A-Z a-z 0-9 _ . -)"),
    (["edge", "add", "web", f"{'e' * 32}=198.51.100.23"], "is not a valid name"),
    (["cluster", "edit", "web", "--health-port", "0"], "cluster 'web' health.port: must be between 1 and 65535"),
    (["cluster", "edit", "web", "--health-path", "hc"], "cluster 'web' health.path: must start with '/'"),
    (["cluster", "edit", "web", "--health-timeout", "3"], "health.timeout: must be less than interval (2), got 3"),
    (["cluster", "edit", "web", "--health-rise", "0"], "health.rise: must be between 1 and 100"),
    (["cluster", "edit", "web", "--maglev-size", "100"], "cluster 'web' maglev_size: must be a prime number"),
    (["cluster", "edit", "web", "--dsr", "ipip"], "dataplane.ipip.gateway_mac: required when a cluster uses "
                                                  "dsr = \"ipip\" (used by cluster 'web')"),
    (["cluster", "show", "nope"], "cluster 'nope' not found"),
    (["cluster", "edit", "nope", "--vhid", "3"], "cluster 'nope' not found"),
    (["edge", "drain", "web", "nope"], "edge 'nope' not found in cluster 'web'"),
]


@pytest.fixture
def web_lab(ctl):
    ctl.ok(*WEB)
    ctl.ok(*LAB)
    return ctl


@pytest.mark.parametrize("args, expected", RULES, ids=[str(i) for i in range(len(RULES))])
def test_validation_rule(web_lab, args, expected):
    err = web_lab.fails(*args)
    assert expected in err


@pytest.mark.parametrize("size, expected", [(21, "is 21 bytes (UTF-8), at most 20 allowed"), (20, None)])
def test_passphrase_length(web_lab, tmp_path, size, expected):
    key = tmp_path / "key"
    key.write_bytes(b"p" * size + b"\n")                   # one trailing newline is not part of it
    args = ["cluster", "edit", "web", "--passphrase-file", str(key)]
    if expected:
        assert "cluster 'web' carp.passphrase: " + expected in web_lab.fails(*args)
    else:
        web_lab.ok(*args)


def test_passphrase_file_unreadable(web_lab, tmp_path):
    err = web_lab.fails("cluster", "edit", "web", "--passphrase-file", str(tmp_path / "missing"))
    assert "--passphrase-file: cannot read" in err


def test_vhid_uniqueness_ignores_standalone(web_lab):
    web_lab.ok("cluster", "add", "solo", "--cluster-ip", "192.0.2.60", "--edge", "a=192.0.2.61", "--standalone",
               "--vhid", "10")


# ---- usage errors: exit 2, one line ----

@pytest.mark.parametrize("args, expected", [
    ([], "the following arguments are required: COMMAND"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["cluster"], "cluster: the following arguments are required: ACTION"),
    (["cluster", "add", "x"], "cluster add: the following arguments are required: --cluster-ip"),
    (["cluster", "add", "x", "--cluster-ip", "10.1.1.1", "--edge", "nonsense"],
     "argument --edge: 'nonsense': expected NAME=IP[@MAC][,weight=N][,state=STATE]"),
    (["cluster", "add", "x", "--cluster-ip", "10.1.1.1", "--edge", "a=10.0.0.1,weight=x"],
     "weight must be an integer, got 'x'"),
    (["cluster", "add", "x", "--cluster-ip", "10.1.1.1", "--edge", "a=10.0.0.1,colour=red"], "unknown option"),
    (["cluster", "add", "x", "--cluster-ip", "10.1.1.1", "--vhid", "ten"], "argument --vhid: invalid int value"),
    (["cluster", "add", "x", "--cluster-ip", "10.1.1.1", "--dsr", "nat"], "argument --dsr: invalid choice"),
    (["cluster", "add", "x", "--cluster-ip", "10.1.1.1", "--passphrase", "oops"], "unrecognized arguments"),
    (["cluster", "add", "x", "--cluster-ip", "10.1.1.1", "--standalone", "--mode", "cluster"], "not allowed with"),
    (["cluster", "list", "--sort", "bogus"], "argument --sort: unknown column 'bogus'"),
    (["edge", "edit", "web", "e1"], "edge edit: nothing to change"),
    (["edge", "edit", "web", "e1", "--state", "sleeping"], "argument --state: invalid choice"),
    (["export"], "export: the following arguments are required: FILE"),
])
def test_usage_errors(ctl, args, expected):
    ctl.ok(*WEB)
    err = ctl.fails(*args, code=2)
    assert expected in err


def _all_commands(parser, prefix=()):
    import argparse
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _all_commands(sub, prefix + (name,))


def test_help_everywhere_with_examples(capsys):
    commands = list(_all_commands(cli.build_parser()))
    for cmd in ("cluster list", "cluster add", "cluster edit", "cluster delete", "cluster duplicate",
                "cluster show", "cluster enable", "cluster disable", "edge add", "edge remove", "edge drain",
                "edge undrain", "edge show", "export", "import"):
        assert tuple(cmd.split()) in commands
    for cmd in [()] + commands:
        assert cli.main([*cmd, "--help"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: pydpctl"), cmd
        if not cmd or cmd[0] in ("cluster", "edge", "export", "import"):
            assert "examples:\n  pydpctl " in out, cmd
    assert cli.main(["cluster", "delete", "--help"]) == 0
    assert "no confirmation prompt" in capsys.readouterr().out


# ---- export / import ----

def test_export_import_round_trip(four, tmp_path, capsys):
    f = tmp_path / "out.toml"
    assert four.ok("export", str(f)) == f"exported 4 clusters to {f}\n"
    assert f.read_text() == four.ok("export", "-")
    other = Ctl(tmp_path / "other.db", capsys)
    assert other.ok("import", str(f)) == f"imported 4 clusters from {f}\n"
    assert other.ok("export", "-") == f.read_text()
    assert other.json("cluster", "list") == four.json("cluster", "list")


def test_export_refuses_to_overwrite(web_lab, tmp_path):
    f = tmp_path / "out.toml"
    f.write_text("precious\n")
    assert "exists; use --force" in web_lab.fails("export", str(f))
    assert f.read_text() == "precious\n"
    web_lab.ok("export", str(f), "--force")
    assert "[[cluster]]" in f.read_text()


def test_export_with_secrets_is_private(web_lab, tmp_path):
    key = tmp_path / "k"
    key.write_text("pw")
    web_lab.ok("cluster", "edit", "web", "--passphrase-file", str(key))
    f = tmp_path / "secret.toml"
    web_lab.ok("export", str(f), "--include-secrets")
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert 'passphrase = "pw"' in f.read_text()


def test_import_the_example(ctl):
    assert ctl.ok("import", str(EXAMPLE)) == f"imported 2 clusters from {EXAMPLE}\n"
    assert ctl.names() == ["vpn6", "web"]


def test_import_invalid_changes_nothing(web_lab, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace("vhid = 20", "vhid = 10").replace('mode = "cluster"', 'mode = "x"'))
    err = web_lab.fails("import", str(bad))
    assert f"{bad}: cluster[1].carp.vhid: duplicate CARP vhid '10'" in err or f"{bad}: cluster[0].mode" in err
    bad.write_text("this is = not [toml")
    assert "TOML syntax error" in web_lab.fails("import", str(bad))
    bad.write_bytes(b"\xff\xfe")
    assert "not valid UTF-8" in web_lab.fails("import", str(bad))
    assert "cannot read" in web_lab.fails("import", str(tmp_path / "missing.toml"))


def test_import_check_changes_nothing(web_lab):
    before = web_lab.state()
    assert web_lab.ok("import", "--check", str(EXAMPLE)).endswith("valid (2 clusters); nothing was changed\n")
    assert web_lab.state() == before


def test_import_keeps_passphrases(web_lab, tmp_path):
    key = tmp_path / "k"
    key.write_text("pw")
    web_lab.ok("cluster", "edit", "web", "--passphrase-file", str(key))
    f = tmp_path / "e.toml"
    web_lab.ok("export", str(f))
    assert "kept the stored CARP passphrase of 1 cluster" in web_lab.ok("import", str(f))
    assert web_lab.json("cluster", "show", "web")["carp"]["passphrase_set"] is True
    web_lab.ok("import", str(f), "--no-keep-passphrases")
    assert web_lab.json("cluster", "show", "web")["carp"]["passphrase_set"] is False


# ---- where the configuration is ----

def test_pydp_db_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PYDP_DB", str(tmp_path / "env.db"))
    assert cli.main(WEB) == 0
    capsys.readouterr()
    assert [c["name"] for c in Store(tmp_path / "env.db").list_clusters()] == ["web"]
    # --db wins over PYDP_DB
    assert cli.main(["cluster", "list", "--db", str(tmp_path / "other.db"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_global_options_after_the_command(tmp_path, capsys):
    assert cli.main([*WEB, "--db", str(tmp_path / "x.db")]) == 0
    assert Store(tmp_path / "x.db").get_cluster("web")


def test_backend_choice(tmp_path, monkeypatch):
    monkeypatch.delenv("PYDP_DB", raising=False)
    monkeypatch.delenv("PYDP_SOCKET", raising=False)
    b = backend.choose(db=str(tmp_path / "a.db"))
    assert b.kind == "store" and b.where == str(tmp_path / "a.db")
    b.close()
    # nothing listens on the socket: the default store file
    monkeypatch.setattr(backend, "DEFAULT_PATH", str(tmp_path / "default.db"))
    monkeypatch.setenv("PYDP_SOCKET", str(tmp_path / "none.sock"))
    b = backend.choose()
    assert b.kind == "store" and b.where == str(tmp_path / "default.db")
    b.close()
    # something listens: the daemon
    path = str(tmp_path / "d.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    try:
        monkeypatch.setenv("PYDP_SOCKET", path)
        b = backend.choose()
        assert b.kind == "daemon" and b.where == path
        assert backend.choose(socket=path).kind == "daemon"
        assert backend.choose(db=str(tmp_path / "a.db"), socket=path).kind == "store"     # --db wins
    finally:
        srv.close()
    # an explicit --socket that does not answer is an error, not a silent fall-back
    with pytest.raises(backend.DaemonError, match="not reachable"):
        backend.choose(socket=str(tmp_path / "none.sock"))


def test_explicit_socket_not_answering(tmp_path, capsys):
    rc = cli.main(["--socket", str(tmp_path / "none.sock"), "cluster", "list"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("pydpctl: error: pydp-control is not reachable") and err.count("\n") == 1


# ---- real processes ----

def _run(cmd, tmp_path, *args, input=None):
    env = {k: v for k, v in os.environ.items() if k not in ("PYDP_DB", "PYDP_SOCKET")}
    return subprocess.run([*cmd, "--db", str(tmp_path / "p.db"), *args], capture_output=True, text=True,
                          input=input, env=env, cwd=tmp_path, timeout=60)


def test_module_as_a_process(tmp_path):
    cmd = [sys.executable, "-P", "-m", "control.cli"]
    r = _run(cmd, tmp_path, *WEB[:-2], "--passphrase-stdin", input="from-stdin\n")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = _run(cmd, tmp_path, "cluster", "list", "--json")
    assert r.returncode == 0
    assert json.loads(r.stdout)[0]["name"] == "web"
    assert Store(tmp_path / "p.db").get_cluster("web", include_secrets=True)["carp"]["passphrase"] == "from-stdin"
    r = _run(cmd, tmp_path, "cluster", "add", "x", "--cluster-ip", "224.0.0.1", "--edge", "a=10.0.0.1",
             "--edge", "b=10.0.0.2")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == "pydpctl: error: cluster 'x' cluster_ip: '224.0.0.1' is not a unicast address (multicast)\n"
    r = _run(cmd, tmp_path, "cluster", "add", "x")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("pydpctl: error: ")


@pytest.mark.skipif(shutil.which("pydpctl") is None or os.environ.get("PYDP_SOURCE_TREE") == "1",
                    reason="the pydpctl script is not installed (or the tests run from the source tree)")
def test_installed_script(tmp_path):
    r = _run(["pydpctl"], tmp_path, *LAB)
    assert r.returncode == 0, r.stderr
    r = _run(["pydpctl"], tmp_path, "cluster", "list")
    assert r.returncode == 0 and "standalone (not for production)" in r.stdout
    r = _run(["pydpctl"], tmp_path, "export", "-")
    assert r.returncode == 0 and 'name = "lab"' in r.stdout
    r = _run(["pydpctl"], tmp_path, "cluster", "show", "nope")
    assert r.returncode == 1 and r.stderr == "pydpctl: error: cluster 'nope' not found\n"
    r = _run(["pydpctl"], tmp_path, "--help")
    assert r.returncode == 0 and "examples:" in r.stdout
