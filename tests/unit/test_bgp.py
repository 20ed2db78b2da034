"""failover = "bgp" (issue 15), everything that needs no root: the [bgp] section's validation, the store (migration,
round trip, refusals), pydpctl bgp / cluster --failover, BIRD's generated configuration (checked by the real
`bird -p` when installed) and the parsing of birdc's answers captured from a real BIRD 2.0.12
(tests/unit/data/bird/). The decisions (announce, withdraw, drain) are in test_reconciler.py; the real sessions in
tests/netns/test_bgp_live.py."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from control import cli, ops
from control.bgp import birdc, birdconf
from control.store import SCHEMA_VERSION, Store, StoreError
from pydp import config

DATA = Path(__file__).parent / "data" / "bird"

BGP = """
[bgp]
local_as = 64512
router_id = "198.51.100.11"
communities = ["64512:100", "64512:200"]
[[bgp.peer]]
address = "198.51.100.1"
as = 64500
[[bgp.peer]]
address = "2001:db8::1"
as = 64500
port = 1179
source = "2001:db8::11"
password = "s3cret"
"""

WEB = """
[[cluster]]
name = "web"
cluster_ip = "203.0.113.10"
failover = "bgp"
[[cluster.edge]]
name = "e1"
ip = "198.51.100.21"
[[cluster.edge]]
name = "e2"
ip = "198.51.100.22"
"""


def errors(text: str) -> list[str]:
    with pytest.raises(config.ConfigError) as ei:
        config.loads(text, require_ports=False)
    return ei.value.errors


# ---- the configuration ----

def test_bgp_section_loads_with_defaults_and_round_trips():
    cfg = config.loads(BGP + WEB, require_ports=False)
    b = cfg.bgp
    assert (b.local_as, str(b.router_id), b.hold_time, b.bfd, b.bfd_interval_ms, b.bfd_multiplier) == \
        (64512, "198.51.100.11", 9, True, 100, 3)
    assert b.socket == "/run/pydp/bird.ctl" and b.config_path == "/run/pydp/bird.conf" and b.drain_timeout == 30
    assert [(str(p.address), p.asn, p.port) for p in b.peers] == [("198.51.100.1", 64500, 179),
                                                                   ("2001:db8::1", 64500, 1179)]
    assert cfg.clusters[0].failover == "bgp"
    text = config.dumps(cfg, include_secrets=True)
    assert config.loads(text, require_ports=False) == cfg
    # secrets stay out of an ordinary export
    assert "s3cret" not in config.dumps(cfg) and 'password = ""' in config.dumps(cfg)
    # no [bgp]: none written, carp is the default
    plain = config.loads(WEB.replace('failover = "bgp"\n', ""), require_ports=False)
    assert plain.bgp is None and plain.clusters[0].failover == "carp" and "bgp" not in config.to_dict(plain)


@pytest.mark.parametrize("text, want", [
    (WEB, 'cluster[0].failover: "bgp" needs a [bgp] section with at least one [[bgp.peer]]'),
    ("[bgp]\nlocal_as = 1\nrouter_id = \"192.0.2.1\"\n", "bgp.peer: at least one peer is required"),
    ("[bgp]\nrouter_id = \"192.0.2.1\"\n[[bgp.peer]]\naddress = \"192.0.2.2\"\nas = 1\n",
     "bgp.local_as: required key is missing"),
    (BGP.replace("local_as = 64512", "local_as = 4294967296"), "bgp.local_as: must be between 1 and 4294967295"),
    (BGP.replace('router_id = "198.51.100.11"', 'router_id = "2001:db8::1"'), "bgp.router_id: '2001:db8::1' is not "
                                                                              "in IPv4 address form"),
    (BGP.replace("[bgp]", "[bgp]\nhold_time = 2"), "bgp.hold_time: must be 0 (no keepalives) or 3..65535"),
    (BGP.replace('"64512:200"', '"64512:70000"'), "bgp.communities: '64512:70000' is not a standard community"),
    (BGP.replace("[bgp]", "[bgp]\nbfd_interval_ms = 5"), "bgp.bfd_interval_ms: must be between 10 and 10000"),
    (BGP.replace("[bgp]", "[bgp]\nengine = \"frr\""), "bgp.engine: must be one of"),
    (BGP.replace("[bgp]", "[bgp]\nsocket = \"bird.ctl\""), "bgp.socket: must be an absolute path"),
    (BGP.replace("as = 64500\nport", "as = true\nport"), "bgp.peer[1].as: must be an integer"),
    (BGP.replace('address = "2001:db8::1"', 'address = "198.51.100.1"'), "bgp.peer[1].address: duplicate peer "
                                                                          "address"),
    (BGP.replace('source = "2001:db8::11"', 'source = "198.51.100.11"'), "bgp.peer[1].source: '198.51.100.11' is "
                                                                         "IPv4 but the peer's address is IPv6"),
    (BGP.replace("[bgp]", "[bgp]\npeers = 1"), "bgp.peers: unknown key (did you mean 'peer'?)"),
    (BGP.split("[[bgp.peer]]\naddress = \"2001")[0] + WEB.replace("203.0.113.10", "2001:db8::10"),
     "cluster[0].cluster_ip: '2001:db8::10' is IPv6 but no [[bgp.peer]] is"),
    (BGP + WEB.replace('failover = "bgp"', 'failover = "ospf"'), "cluster[0].failover: must be one of"),
])
def test_bad_bgp_is_refused_naming_the_key(text, want):
    errs = errors(text)
    assert any(e.startswith(want) for e in errs), errs


def test_bgp_clusters_need_no_unique_vhid():
    two = WEB + WEB.replace('"web"', '"api"').replace("203.0.113.10", "203.0.113.11")
    cfg = config.loads(BGP + two, require_ports=False)
    assert [c.carp.vhid for c in cfg.clusters] == [1, 1]
    assert any("duplicate CARP vhid" in e for e in errors(BGP + two.replace('failover = "bgp"\n', "")))


# ---- the store ----

def test_store_round_trip_set_and_remove(tmp_path):
    with Store(tmp_path / "s.db") as s:
        s.import_text(BGP + WEB)
        assert s.appliance().bgp.local_as == 64512
        b = s.get_bgp()
        assert "password" not in b["peer"][1] and b["peer"][1]["password_set"] and not b["peer"][0]["password_set"]
        assert s.get_bgp(include_secrets=True)["peer"][1]["password"] == "s3cret"
        assert s.get_cluster("web")["failover"] == "bgp"
        # an export without secrets imported back keeps the stored password
        rev = s.revision()
        res = s.import_text(s.export_text())
        assert res["passphrases_kept"] == 1 and s.revision() == rev
        # set: keys merged, peers replaced; a peer given again keeps its password
        s.set_bgp({"hold_time": 30, "bfd": False, "peer": [{"address": "198.51.100.2", "as": 64501},
                                                            {"address": "2001:db8::1", "as": 64501}]})
        b = s.get_bgp(include_secrets=True)
        assert b["hold_time"] == 30 and not b["bfd"] and b["local_as"] == 64512
        assert [(p["address"], p["password"]) for p in b["peer"]] == [("198.51.100.2", ""), ("2001:db8::1", "s3cret")]
        # refused: nothing changes
        rev = s.revision()
        with pytest.raises(StoreError, match=r"bgp.peer\[0\].as: must be between"):
            s.set_bgp({"peer": [{"address": "198.51.100.1", "as": 0}]})
        with pytest.raises(StoreError, match="needs a \\[bgp\\] section"):
            s.remove_bgp()
        with pytest.raises(StoreError, match="cluster 'web' cluster_ip: '203.0.113.10' is IPv4 but no"):
            s.set_bgp({"peer": [{"address": "2001:db8::1", "as": 64501}]})
        assert s.revision() == rev
        s.edit_cluster("web", {"failover": "carp"})
        assert s.get_cluster("web")["carp"]["vhid"] == 1
        s.remove_bgp()
        assert s.get_bgp() == {} and s.appliance().bgp is None
        h = s.history(limit=3)
        assert [x["op"] for x in h][:2] == ["remove_bgp", "edit_cluster"]


def test_store_refuses_bad_bgp_without_change(tmp_path):
    with Store(tmp_path / "s.db") as s:
        s.import_text(BGP + WEB)
        rev, text = s.revision(), s.export_text(include_secrets=True)
        for bad in ({"local_as": "x"}, {"router_id": "300.1.1.1"}, {"peer": []}, {"communities": ["1"]},
                    {"unknown": 1}):
            with pytest.raises(StoreError):
                s.set_bgp(bad)
        with pytest.raises(StoreError, match="failover"):
            s.edit_cluster("web", {"failover": "vrrp"})
        with pytest.raises(StoreError, match="bgp.hold_time"):
            s.import_text(BGP.replace("[bgp]", "[bgp]\nhold_time = 1") + WEB)
        assert s.revision() == rev and s.export_text(include_secrets=True) == text


def test_store_migrates_a_schema_4_store(tmp_path):
    p = tmp_path / "old.db"
    with Store(p) as s:
        s.import_text(WEB.replace('failover = "bgp"\n', ""))
    con = sqlite3.connect(p)
    con.execute("ALTER TABLE clusters DROP COLUMN failover")
    con.execute("ALTER TABLE appliance DROP COLUMN bgp")
    con.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with Store(p) as s:
        assert s.schema_version == SCHEMA_VERSION == 5
        assert s.get_cluster("web")["failover"] == "carp" and s.get_bgp() == {}
        assert s.appliance().clusters[0].edges[1].name == "e2"


def test_ops_keep_bgp_passwords_off_http(tmp_path):
    with Store(tmp_path / "s.db") as s:
        s.import_text(BGP + WEB)
        with pytest.raises(ops.OpError) as ei:
            ops.call(s, "get_bgp", {"include_secrets": True}, via="http", user="admin")
        assert ei.value.kind == "forbidden"
        b, _ = ops.call(s, "get_bgp", {}, via="http", user="admin")
        assert "password" not in b["peer"][1]
        ops.call(s, "set_bgp", {"bgp": {"peer": [{"address": "198.51.100.1", "as": 64500, "password": "x2"}]}},
                 via="rpc", user="alice")
        assert s.history(limit=1)[0]["args"]["bgp"]["peer"][0]["password"] == "***"


# ---- pydpctl ----

def test_pydpctl_bgp_and_failover(tmp_path, capsys):
    db = str(tmp_path / "s.db")

    def ctl(*args):
        capsys.readouterr()
        rc = cli.main(["--db", db, *args])
        out, err = capsys.readouterr()
        return rc, out, err

    rc, out, err = ctl("cluster", "add", "web", "--cluster-ip", "203.0.113.10", "--edge", "e1=198.51.100.21",
                       "--edge", "e2=198.51.100.22", "--failover", "bgp")
    assert rc == 1 and "needs a [bgp] section" in err and not Store(db).list_clusters()
    rc, out, err = ctl("bgp", "set", "--local-as", "64512", "--router-id", "198.51.100.11", "--peer",
                       "198.51.100.1=64500,port=1179", "--community", "64512:100", "--bfd-interval-ms", "50")
    assert rc == 0, err
    rc, out, err = ctl("cluster", "add", "web", "--cluster-ip", "203.0.113.10", "--edge", "e1=198.51.100.21",
                       "--edge", "e2=198.51.100.22", "--failover", "bgp")
    assert rc == 0 and "failover bgp" in out, err
    rc, out, _ = ctl("bgp", "show")
    assert "64512" in out and "198.51.100.1" in out and "1179" in out and "50 ms x 3" in out
    rc, out, _ = ctl("cluster", "show", "web")
    assert "announced over BGP" in out
    rc, out, err = ctl("bgp", "set", "--peer", "198.51.100.1=abc")
    assert rc == 2 and "ADDRESS=AS" in err
    rc, out, err = ctl("bgp", "set", "--hold-time", "2")
    assert rc == 1 and "bgp.hold_time" in err
    rc, out, err = ctl("bgp", "remove")
    assert rc == 1 and "needs a [bgp] section" in err
    rc, out, err = ctl("export", "-")
    assert "[bgp]" in out and "[[bgp.peer]]" in out and 'failover = "bgp"' in out


# ---- BIRD's configuration ----

def test_bird_config_has_sessions_bfd_and_one_static_per_bgp_cluster():
    cfg = config.loads(BGP + WEB + WEB.replace('"web"', '"db.x"').replace("203.0.113.10", "203.0.113.11")
                       .replace('failover = "bgp"\n', 'failover = "carp"\n'), require_ports=False)
    text = birdconf.render(cfg.bgp, cfg.clusters, {"web": True})
    assert "router id 198.51.100.11;" in text
    assert "protocol bfd pydp_bfd" in text and "min tx interval 100 ms;" in text and "multiplier 3;" in text
    web = birdconf.static_name("web")
    assert f"protocol static {web} {{" in text and "route 203.0.113.10/32 blackhole;" in text
    assert "disabled no;" in text and "203.0.113.11" not in text          # the carp cluster is not announced
    assert "neighbor 198.51.100.1 port 179 as 64500;" in text and "local as 64512;" in text
    assert "neighbor 2001:db8::1 port 1179 as 64500;" in text and "local 2001:db8::11 as 64512;" in text
    assert text.count("bfd on;") == 2 and 'password "s3cret";' in text
    assert "bgp_community.add((64512, 100));" in text and "bgp_community.add((64512, 200));" in text
    assert "import none;" in text and "next hop self;" in text
    withdrawn = birdconf.render(cfg.bgp, cfg.clusters, {})
    assert "disabled yes;" in withdrawn and "disabled no;" not in withdrawn
    cfg.bgp.bfd = False
    cfg.bgp.next_hop = config.ipaddress.ip_address("198.51.100.99")
    text = birdconf.render(cfg.bgp, cfg.clusters)
    assert "protocol bfd" not in text and "bfd on;" not in text
    assert "next hop address 198.51.100.99;" in text


def test_static_names_are_bird_symbols_and_distinct():
    a, b = birdconf.static_name("web.1"), birdconf.static_name("web-1")
    assert a != b and a.startswith("pydp_c_web_1_") and all(ch.isalnum() or ch == "_" for ch in a + b)


@pytest.mark.skipif(shutil.which("bird") is None, reason="bird (Debian bird2) is not installed")
def test_real_bird_accepts_the_generated_config(tmp_path):
    cfg = config.loads(BGP + WEB + WEB.replace('"web"', '"v6"').replace("203.0.113.10", "2001:db8::10"),
                       require_ports=False)
    cfg.bgp.next_hop = None
    for announced in ({}, {"web": True, "v6": True}):
        path = tmp_path / "bird.conf"
        path.write_text(birdconf.render(cfg.bgp, cfg.clusters, announced))
        r = subprocess.run(["bird", "-p", "-c", str(path)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr + path.read_text()


# ---- birdc's answers (captured from BIRD 2.0.12 peering a BIRD router, see the module doc) ----

def test_parse_show_protocols_all_established():
    p = birdc.parse_protocols((DATA / "show_protocols_all_up.txt").read_text())
    assert set(p) == {"device1", "pydp_bfd", "pydp_c_web_4b5e57", "pydp_peer_1"}
    peer = p["pydp_peer_1"]
    assert (peer["proto"], peer["state"], peer["bgp_state"], peer["info"]) == ("BGP", "up", "Established",
                                                                              "Established")
    assert (peer["neighbor_address"], peer["neighbor_as"], peer["local_as"]) == ("198.51.100.1", 64500, 64512)
    assert (peer["imported"], peer["exported"]) == (0, 1) and peer["source_address"] == "198.51.100.11"
    assert peer["since"] == birdc.parse_time("2026-12-06 04:00:43")
    assert p["pydp_c_web_4b5e57"]["imported"] == 1 and p["pydp_c_web_4b5e57"]["state"] == "up"


def test_parse_show_protocols_all_session_down():
    p = birdc.parse_protocols((DATA / "show_protocols_all_down.txt").read_text())
    peer = p["pydp_peer_1"]
    assert (peer["state"], peer["bgp_state"]) == ("start", "Active")
    assert peer["last_error"] == "Socket: Connection refused" and "exported" not in peer
    short = birdc.parse_protocols((DATA / "show_protocols.txt").read_text())
    assert short["pydp_peer_1"]["state"] == "start" and "bgp_state" not in short["pydp_peer_1"]


def test_parse_bfd_sessions_and_version():
    up = birdc.parse_bfd((DATA / "bfd_up.txt").read_text())
    assert up == {"198.51.100.1": {"interface": "bgp-av", "state": "Up",
                                   "since": birdc.parse_time("2026-12-06 04:00:43"), "interval": 0.1,
                                   "timeout": 0.3}}
    assert birdc.parse_bfd((DATA / "bfd_down.txt").read_text())["198.51.100.1"]["state"] == "Down"
    assert birdc.version((DATA / "bfd_up.txt").read_text()) == "2.0.12"
    assert birdc.version((DATA / "show_status.txt").read_text()) == "2.0.12"
    assert "disabled" in (DATA / "disable.txt").read_text() and "already" in (DATA / "disable_again.txt").read_text()
    assert birdc.parse_time("not a time") is None


def test_a_socket_another_bird_answers_on_is_not_taken(tmp_path):
    """The manager never unlinks the control socket of a BIRD that runs (another appliance's, Debian's own)."""
    import asyncio
    import socket

    from control.bgp.manager import BgpManager, BirdError

    path = str(tmp_path / "bird.ctl")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(path)
        other.listen(1)
        cfg = config.loads(BGP.replace("[bgp]", f'[bgp]\nsocket = "{path}"\nconfig_path = "{tmp_path}/bird.conf"')
                           + WEB, require_ports=False)
        m = BgpManager(event=lambda *a, **k: None)
        with pytest.raises(BirdError, match="another BIRD already answers"):
            asyncio.run(m._start(cfg.bgp, birdconf.render(cfg.bgp, cfg.clusters)))
        assert __import__("os").path.exists(path) and m.proc is None
