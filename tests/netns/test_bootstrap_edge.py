"""pydp-bootstrap edge, run for real inside fresh network namespaces.

An "edge" namespace with an uplink veth to a "client" namespace: the cluster IPs go on the edge's lo, the sysctls
are read back, and the client proves the point of it all: it gets no ARP answer for the cluster IP once the edge is
prepared (it did before), and no neighbour advertisement for the IPv6 cluster IP, while the edge's own addresses
still answer. A second run changes nothing; --undo puts back every previous value exactly.
"""

from __future__ import annotations

import json
import uuid

import pytest

from netlab import netns, ns_run, run, veth

pytestmark = pytest.mark.netns

VIP4, VIP6 = "198.51.100.10", "2001:db8:100::10"
KEYS = [f"net.ipv4.conf.{i}.{k}" for i in ("all", "e0") for k in ("arp_ignore", "arp_announce", "rp_filter")]


def sysctls(ns: str) -> dict[str, str]:
    return {k: ns_run(ns, "sysctl", "-n", k).stdout.strip() for k in KEYS}


def lo_addrs(ns: str) -> list[tuple[str, int, bool]]:
    """(address, prefix length, nodad) of every address on lo."""
    doc = json.loads(run("ip", "-j", "-n", ns, "addr", "show", "dev", "lo").stdout)
    return sorted((a["local"], a["prefixlen"], bool(a.get("nodad"))) for a in doc[0]["addr_info"])


def snapshot(ns: str) -> tuple:
    return sysctls(ns), lo_addrs(ns)


@pytest.fixture
def lab(tmp_path):
    """edge (e0: 192.0.2.2/24, 2001:db8:1::2/64, default route) <-> client (c0: 192.0.2.1, 2001:db8:1::1)."""
    with netns("pydpt-edge") as edge, netns("pydpt-cli") as client:
        veth(edge, "e0", "c0", client, mac_a="02:00:00:00:0e:02", mac_b="02:00:00:00:0c:01")
        for ns, dev, n in ((edge, "e0", 2), (client, "c0", 1)):
            ns_run(ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=0")
            run("ip", "-n", ns, "addr", "add", f"192.0.2.{n}/24", "dev", dev)
            run("ip", "-n", ns, "addr", "add", f"2001:db8:1::{n}/64", "dev", dev, "nodad")
        run("ip", "-n", edge, "route", "add", "default", "via", "192.0.2.1")
        # the client reaches the cluster IPs on its link, so it asks the segment who has them
        run("ip", "-n", client, "route", "add", f"{VIP4}/32", "dev", "c0")
        run("ip", "-n", client, "-6", "route", "add", f"{VIP6}/128", "dev", "c0")
        yield edge, client, tmp_path / "state"


def answers(client: str, ip: str) -> bool:
    """Whether the client resolves ip on its link (a neighbour answer) and gets a ping reply."""
    ns_run(client, "ip", "neigh", "flush", "dev", "c0", check=False)
    return ns_run(client, "ping", "-c", "1", "-W", "1", ip, check=False).returncode == 0


def test_edge_applies_is_idempotent_and_undoes_exactly(lab, bootstrap):
    edge, client, state_dir = lab
    # non-default starting values, so "restored" cannot be confused with "reset to the defaults"
    ns_run(edge, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.e0.arp_announce=1")
    before = snapshot(edge)
    args = ["edge", "--cluster-ip", VIP4, "--cluster-ip", VIP6, "--state-dir", str(state_dir)]

    dry = bootstrap(edge, *args, "--dry-run", "--json")
    doc = json.loads(dry.stdout)
    assert doc["dry_run"] and doc["changed"] == 0
    assert {s["status"] for s in doc["steps"]} == {"would-change"}
    assert {s["step"] for s in doc["steps"]} == {
        f"address {VIP4}/32", f"address {VIP6}/128",
        *(f"sysctl net.ipv4.conf.{i}.{k}" for i in ("all", "e0") for k in ("arp_ignore", "arp_announce")),
        "sysctl net.ipv4.conf.e0.rp_filter"}          # the uplink is the default route's interface
    assert snapshot(edge) == before, "a dry run changed something"
    assert not state_dir.exists()

    first = json.loads(bootstrap(edge, *args, "--json").stdout)
    assert first["changed"] == len(doc["steps"]) and first["ok"]
    assert (VIP4, 32, False) in lo_addrs(edge) and (VIP6, 128, True) in lo_addrs(edge)
    applied = snapshot(edge)
    now = applied[0]
    assert now["net.ipv4.conf.all.arp_ignore"] == now["net.ipv4.conf.e0.arp_ignore"] == "1"
    assert now["net.ipv4.conf.all.arp_announce"] == now["net.ipv4.conf.e0.arp_announce"] == "2"
    assert now["net.ipv4.conf.e0.rp_filter"] == "2" and now["net.ipv4.conf.all.rp_filter"] == "1"

    second = bootstrap(edge, *args)
    assert "nothing to do: every step is already done" in second.stdout
    assert snapshot(edge) == applied

    undo_dry = json.loads(bootstrap(edge, "edge", "--undo", "--dry-run", "--json", "--state-dir",
                                     str(state_dir)).stdout)
    assert len(undo_dry["steps"]) == len(doc["steps"]) and sysctls(edge) == now
    bootstrap(edge, "edge", "--undo", "--state-dir", str(state_dir))
    assert snapshot(edge) == before
    assert list(state_dir.iterdir()) == [], "the state file outlived --undo"
    again = bootstrap(edge, "edge", "--undo", "--state-dir", str(state_dir))
    assert "nothing to do" in again.stdout


def test_prepared_edge_stays_silent_on_the_segment(lab, bootstrap):
    """The reason for it all: the client gets no ARP / ND answer for a cluster IP on the edge's lo."""
    edge, client, state_dir = lab
    run("ip", "-n", edge, "addr", "add", f"{VIP4}/32", "dev", "lo")
    # Linux's default (arp_ignore = 0) answers ARP for any local address: the bug DSR edges must avoid
    assert answers(client, VIP4)
    run("ip", "-n", edge, "addr", "del", f"{VIP4}/32", "dev", "lo")

    bootstrap(edge, "edge", "--cluster-ip", VIP4, "--cluster-ip", VIP6, "--interface", "e0",
              "--state-dir", str(state_dir))
    assert not answers(client, VIP4)
    assert not answers(client, VIP6)          # no sysctl needed: ND answers only for the receiving interface
    states = ns_run(client, "ip", "neigh", "show", "dev", "c0").stdout
    assert f"{VIP4} " not in states or "FAILED" in states
    # the edge's own addresses still answer: the silence is specific to the cluster IPs
    assert answers(client, "192.0.2.2") and answers(client, "2001:db8:1::2")
    # and the edge does accept packets for the cluster IP (the load balancer's DSR frames are addressed to it)
    got = ns_run(edge, "ip", "route", "get", VIP4).stdout
    assert got.startswith(f"local {VIP4}")
    bootstrap(edge, "edge", "--undo", "--state-dir", str(state_dir))


def test_what_was_there_before_is_left_alone(lab, bootstrap):
    """An address or value already in place before the first run is not recorded, so --undo keeps it."""
    edge, _, state_dir = lab
    run("ip", "-n", edge, "addr", "add", f"{VIP4}/32", "dev", "lo")
    ns_run(edge, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1")
    out = json.loads(bootstrap(edge, "edge", "--cluster-ip", VIP4, "--state-dir", str(state_dir), "--json").stdout)
    status = {s["step"]: s["status"] for s in out["steps"]}
    assert status[f"address {VIP4}/32"] == "ok" and status["sysctl net.ipv4.conf.all.arp_ignore"] == "ok"
    assert status["sysctl net.ipv4.conf.all.arp_announce"] == "changed"
    bootstrap(edge, "edge", "--undo", "--state-dir", str(state_dir))
    assert (VIP4, 32, False) in lo_addrs(edge)
    assert sysctls(edge)["net.ipv4.conf.all.arp_ignore"] == "1"
    assert sysctls(edge)["net.ipv4.conf.all.arp_announce"] == "0"


@pytest.mark.parametrize("args, message", [
    (["--cluster-ip", "198.51.100"], "is not an IPv4 or IPv6 address"),
    (["--cluster-ip", "224.0.0.18"], "is not a unicast address"),
    (["--cluster-ip", VIP4, "--interface", "eth9"], "unknown interface 'eth9'"),
    (["--cluster-ip", VIP4, "--interface", "e0;reboot"], "unknown interface"),
    ([], "give at least one --cluster-ip"),
    (["--undo", "--cluster-ip", "203.0.113.1"], "edge --undo takes back everything recorded"),
])
def test_bad_input_is_refused_and_changes_nothing(lab, bootstrap, args, message):
    edge, _, state_dir = lab
    before = snapshot(edge)
    proc = bootstrap(edge, "edge", *args, "--state-dir", str(state_dir), check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and proc.stderr.count("\n") == 1
    assert snapshot(edge) == before and not state_dir.exists()


def test_uplink_with_a_dot_in_its_name(lab, bootstrap):
    """A VLAN-style name (eth0.100): sysctl keys write the dot as '/', as sysctl(8) does."""
    edge, _, state_dir = lab
    veth(edge, "up.7", "pp.7")
    path = "/proc/sys/net/ipv4/conf/up.7/arp_ignore"
    out = json.loads(bootstrap(edge, "edge", "--cluster-ip", VIP4, "--interface", "up.7", "--state-dir",
                               str(state_dir), "--json").stdout)
    assert {"sysctl net.ipv4.conf.up/7.arp_ignore", "sysctl net.ipv4.conf.up/7.arp_announce"} <= \
        {s["step"] for s in out["steps"]}
    assert ns_run(edge, "cat", path).stdout.strip() == "1"
    bootstrap(edge, "edge", "--undo", "--state-dir", str(state_dir))
    assert ns_run(edge, "cat", path).stdout.strip() == "0"


def test_record_of_a_deleted_namespace_by_the_same_name_is_dropped(tmp_path, bootstrap):
    """A lab that deletes an edge's namespace without --undo and makes one by the same name again: the old record
    went with the old namespace, the new run starts afresh instead of refusing."""
    name = f"pydpt-same-{uuid.uuid4().hex[:8]}"
    state_dir = tmp_path / "state"
    try:
        for _ in range(2):
            run("ip", "netns", "add", name)
            ns_run(name, "ip", "link", "set", "lo", "up")
            out = json.loads(bootstrap(name, "edge", "--cluster-ip", VIP4, "--state-dir", str(state_dir),
                                       "--json").stdout)
            assert out["ok"] and {s["status"] for s in out["steps"]} == {"changed"}
            assert out["state_file"] == str(state_dir / f"bootstrap-edge@{name}.json")
            run("ip", "netns", "del", name)
    finally:
        run("ip", "netns", "del", name, check=False)
