"""control.observe, control.metrics and the read commands of pydpctl on a region of our own (no data plane):
flows are inserted with the data plane's own C flow-table code."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
import sys

import pytest

from pydp import config as pconfig
from pydp._ffi import ffi, lib
from pydp.apply import apply_config
from pydp.shm import pack_addr
from control import metrics, observe

TEXT = """
[dataplane]
lcores = "0-2"
flow_capacity = 1024
maglev_size = 1021
[[port]]
name = "p0"
device = "net_af_packet0,iface=lb0"
[[cluster]]
name = "web"
cluster_ip = "198.51.100.10"
[cluster.carp]
vhid = 1
[[cluster.edge]]
name = "e1"
ip = "198.51.100.21"
mac = "02:00:00:00:02:01"
[[cluster.edge]]
name = "e2"
ip = "198.51.100.22"
mac = "02:00:00:00:02:02"
[[cluster]]
name = "dns"
cluster_ip = "198.51.100.20"
[cluster.carp]
vhid = 2
[[cluster.edge]]
name = "d1"
ip = "198.51.100.31"
mac = "02:00:00:00:03:01"
[[cluster.edge]]
name = "d2"
ip = "198.51.100.32"
mac = "02:00:00:00:03:02"
"""


@pytest.fixture
def region(region):
    """The shared region (tests/conftest.py) with TEXT applied and its cluster web owned."""
    res = apply_config(region, pconfig.loads(TEXT))
    region.set_active(res.slots["web"], True)
    return region


def _sw(port: int) -> int:
    return ((port & 0xFF) << 8) | (port >> 8)


def insert(region, worker, client, sport, cluster, edge, proto=17, packets=1):
    cfg = region.config()
    ci = next(i for i in range(lib.PYDP_MAX_CLUSTERS) if ffi.string(cfg.clusters[i].name).decode() == cluster)
    c = cfg.clusters[ci]
    ei = next(i for i in range(lib.PYDP_MAX_EDGES) if ffi.string(c.edges[i].name).decode() == edge)
    key = ffi.new("struct pydp_flow_key *")
    fam, src = pack_addr(ipaddress.ip_address(client))
    ffi.memmove(key.src, src, 16)
    ffi.memmove(key.dst, bytes(c.vip), 16)
    key.sport, key.dport, key.proto, key.family = _sw(sport), _sw(80), proto, fam
    h = lib.pydp_flow_hash(key, cfg.hash_seed)
    t = lib.pydp_shm_flows(region._shm, worker)
    now = lib.pydp_now_ms() & 0xFFFFFFFF
    f = lib.pydp_flow_insert(t, key, h, now, cfg, ffi.new("int *"))
    f.cluster, f.cluster_uid, f.edge, f.edge_uid, f.state = ci, c.uid, ei, c.edges[ei].uid, 0
    lib.pydp_flow_touch(t, f, 0x02 if proto == 6 else 0, now)
    f.packets = packets
    return f


def test_flows_names_filters_and_limit(region):
    for i in range(10):
        insert(region, i % 2, f"203.0.113.{i + 1}", 20000 + i, "web", "e1" if i < 6 else "e2")
    insert(region, 0, "192.0.2.7", 5353, "dns", "d2", proto=6)
    rows, total = observe.find_flows(region)
    assert total == 11 and len(rows) == 11
    tcp = next(r for r in rows if r["cluster"] == "dns")
    assert tcp == {**tcp, "client": "192.0.2.7", "client_port": 5353, "port": 80, "protocol": "tcp",
                   "cluster_ip": "198.51.100.20", "edge": "d2", "state": "syn", "packets": 1}
    assert {r["edge"] for r in observe.flows(region, cluster="web")} == {"e1", "e2"}
    assert len(observe.flows(region, cluster="web", edge="e1")) == 6
    assert len(observe.flows(region, edge="e2")) == 4
    assert [r["client"] for r in observe.flows(region, client="203.0.113.3")] == ["203.0.113.3"]
    assert len(observe.flows(region, client="203.0.113.0/29")) == 7
    rows, total = observe.find_flows(region, limit=3)
    assert len(rows) == 3 and total == 11
    for bad in ({"cluster": "nope"}, {"edge": "nope"}, {"client": "not-an-ip"}, {"cluster": "dns", "edge": "e1"}):
        with pytest.raises(ValueError):
            observe.flows(region, **bad)


def test_flows_skip_torn_entries_and_removed_edges(region):
    f = insert(region, 0, "203.0.113.1", 1000, "web", "e1")
    insert(region, 1, "203.0.113.2", 1001, "web", "e2")
    # a way whose signature does not match its entry (a writer in the middle of reusing it) is not shown
    f.sig ^= 0x100
    assert [r["client"] for r in observe.flows(region)] == ["203.0.113.2"]
    f.sig ^= 0x100
    # after e2 is removed, its flow shows no edge (it re-hashes on its next packet)
    cfg = pconfig.loads(TEXT)
    cfg.clusters[0].edges.pop(1)
    cfg.clusters[0].edges.append(pconfig.EdgeConfig(name="e3", ip=ipaddress.ip_address("198.51.100.23"),
                                                    mac="02:00:00:00:02:03"))
    apply_config(region, cfg)
    by_client = {r["client"]: r for r in observe.flows(region)}
    assert by_client["203.0.113.1"]["edge"] == "e1"
    assert by_client["203.0.113.2"]["edge"] is None


def test_stats_and_info_shapes(region):
    insert(region, 0, "203.0.113.1", 1000, "web", "e1")
    st = observe.stats(region)
    assert set(st) >= {"generation", "ports", "clusters", "workers", "flow_table", "dataplane", "mono_ms"}
    assert set(st["clusters"]) == {"web", "dns"}
    assert st["clusters"]["web"]["active"] is True and st["clusters"]["dns"]["active"] is False
    assert set(st["clusters"]["web"]["edges"]) == {"e1", "e2"}
    assert st["ports"][0]["drops"].keys() >= {"malformed", "not_active", "no_edge", "tx"}
    # flow_capacity 1024 per worker, two workers: whole buckets of six ways, 256 x 6 each
    assert st["flow_table"]["capacity"] == 2 * 256 * lib.PYDP_FLOW_WAYS and st["flow_table"]["live"] == 1
    assert len(st["workers"]) == 2
    info = observe.dataplane_info(region)
    assert info["pid"] == os.getpid() and info["generation"] == st["generation"]
    json.dumps(st)
    json.dumps(info)


def test_metrics_collector(region):
    insert(region, 1, "203.0.113.1", 1000, "web", "e2")

    @contextlib.contextmanager
    def source():
        yield region

    fams = {f.name: f for f in metrics.Collector(source).collect()}
    for name in ("pydp_dataplane_up", "pydp_config_generation", "pydp_port_rx_packets", "pydp_port_tx_packets",
                 "pydp_port_exception_packets", "pydp_port_dropped_packets", "pydp_cluster_packets", "pydp_edge_packets",
                 "pydp_edge_bytes", "pydp_edge_new_flows", "pydp_worker_busy_cycles", "pydp_flow_table_live_flows", "pydp_flow_table_capacity_flows",
                 "pydp_flow_table_occupancy_ratio", "pydp_cluster_owned", "pydp_edge_state"):
        assert name in fams, name
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert samples[("pydp_cluster_owned", (("cluster", "web"),))] == 1
    assert samples[("pydp_cluster_owned", (("cluster", "dns"),))] == 0
    assert samples[("pydp_edge_state", (("cluster", "web"), ("edge", "e1"), ("state", "up")))] == 1
    assert samples[("pydp_edge_state", (("cluster", "web"), ("edge", "e1"), ("state", "down")))] == 0
    assert samples[("pydp_flow_table_live_flows", (("worker", "1"),))] == 1
    assert samples[("pydp_flow_table_capacity_flows", (("worker", "0"),))] == 256 * lib.PYDP_FLOW_WAYS


def test_exception_classes_in_stats_and_metrics(region):
    """The per-class exception counters the data plane writes come out per class in stats and in the metrics:
    bulk is what the other classes leave of exc_to_kernel, drops by the class's drop reason."""
    ws = region.worker_stats()
    names = region.drop_names()
    for w, (arp, carp, ctl, bulk) in enumerate([(10, 3, 2, 100), (5, 1, 0, 50)]):
        port = ws["port"][w][0]
        port["exc_arp"], port["exc_carp"], port["exc_control"] = arp, carp, ctl
        port["exc_to_kernel"] = arp + carp + ctl + bulk
        port["drops"][names.index("exc_arp_ratelimit")] = 1000 * (w + 1)
        port["drops"][names.index("exc_ratelimit")] = 7
        port["drops"][names.index("exc_carp_ratelimit")] = 0
        port["drops"][names.index("exc_control_ratelimit")] = 4
    st = observe.stats(region)
    classes = observe.exception_classes(st["ports"][0])
    assert classes == {"bulk": {"to_kernel": 150, "dropped": 14}, "arp": {"to_kernel": 15, "dropped": 3000},
                       "carp": {"to_kernel": 4, "dropped": 0}, "control": {"to_kernel": 2, "dropped": 8}}

    @contextlib.contextmanager
    def source():
        yield region

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in metrics.Collector(source).collect() for s in f.samples}
    port = st["ports"][0]["name"] or "0"
    key = "pydp_port_exception_class_packets_total"
    assert samples[(key, (("class", "carp"), ("port", port), ("result", "kernel")))] == 4
    assert samples[(key, (("class", "arp"), ("port", port), ("result", "dropped")))] == 3000
    assert samples[(key, (("class", "bulk"), ("port", port), ("result", "kernel")))] == 150
    assert samples[("pydp_port_dropped_packets_total", (("port", port), ("reason", "exc_carp_ratelimit")))] == 0

    @contextlib.contextmanager
    def nothing():
        yield None

    fams = list(metrics.Collector(nothing).collect())
    assert [(f.name, f.samples[0].value) for f in fams] == [("pydp_dataplane_up", 0)]


@pytest.mark.parametrize("text, want", [("127.0.0.1:9469", ("127.0.0.1", 9469)), ("[::1]:80", ("::1", 80)),
                                        ("", None), ("localhost:0", ("localhost", 0))])
def test_metrics_address(text, want):
    assert metrics.parse_address(text) == want


@pytest.mark.parametrize("text", ["9469", "host:", "host:x", "[::1]80", "h:70000"])
def test_metrics_address_errors(text):
    with pytest.raises(ValueError):
        metrics.parse_address(text)


def _ctl(*args):
    return subprocess.run([sys.executable, "-P", "-m", "control.cli", "--socket", "/nonexistent/pydp.sock", *args],
                          capture_output=True, text=True, timeout=60)


def test_pydpctl_reads_the_region_without_the_daemon(region):
    insert(region, 0, "203.0.113.9", 4242, "web", "e2")
    p = _ctl("status", "--shm", region.path, "--json")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["carp_known"] is False and s["daemon"]["running"] is False
    web = next(c for c in s["clusters"] if c["name"] == "web")
    assert web["carp"]["local"] == "unknown" and [e["name"] for e in web["edges"]] == ["e1", "e2"]
    p = _ctl("status", "--shm", region.path)
    assert p.returncode == 0 and "CARP state unknown" in p.stdout + p.stderr
    assert "web" in p.stdout and "e2" in p.stdout
    p = _ctl("flows", "--shm", region.path, "--cluster", "web", "--json")
    assert p.returncode == 0, p.stderr
    f = json.loads(p.stdout)
    assert f["matched"] == 1 and f["flows"][0]["client"] == "203.0.113.9" and f["flows"][0]["edge"] == "e2"
    p = _ctl("flows", "--shm", region.path)
    assert p.returncode == 0 and "203.0.113.9" in p.stdout and "1 of 1" in p.stdout
    p = _ctl("stats", "--shm", region.path, "--json", "--interval", "0.2")
    assert p.returncode == 0, p.stderr
    st = json.loads(p.stdout)
    assert st["rates"]["interval_s"] > 0 and "web" in st["rates"]["clusters"]
    p = _ctl("stats", "--shm", region.path, "--watch", "0.1", "--count", "2", "--json")
    assert p.returncode == 0 and len(p.stdout.strip().splitlines()) == 2
    p = _ctl("stats", "--shm", region.path, "--interval", "0.1")
    assert p.returncode == 0 and "CYCLES/PKT" in p.stdout and "FLOW TABLE" in p.stdout
    p = _ctl("flows", "--shm", region.path, "--cluster", "nope")
    assert p.returncode == 1 and "no cluster 'nope'" in p.stderr
    p = _ctl("status", "--shm", "/dev/shm/pydp-does-not-exist")
    assert p.returncode == 1 and "no data plane" in p.stderr


def test_edge_flow_states_like_ipvsadm(region):
    """ActiveConn/InActConn: TCP past the handshake is active; half-open, closing, UDP flows are inactive."""
    insert(region, 0, "203.0.113.1", 20001, "web", "e1")                     # UDP
    syn = insert(region, 1, "203.0.113.2", 20002, "web", "e1", proto=6)      # SYN only: half-open
    est = insert(region, 0, "203.0.113.3", 20003, "web", "e1", proto=6)
    now = lib.pydp_now_ms() & 0xFFFFFFFF
    lib.pydp_flow_touch(lib.pydp_shm_flows(region._shm, 0), est, 0x10, now)  # the client's ACK: established
    fin = insert(region, 0, "203.0.113.4", 20004, "web", "e2", proto=6)
    lib.pydp_flow_touch(lib.pydp_shm_flows(region._shm, 0), fin, 0x10, now)
    lib.pydp_flow_touch(lib.pydp_shm_flows(region._shm, 0), fin, 0x01, now)  # FIN: closing
    assert syn.state == lib.PYDP_FLOW_TCP_SYN and est.state == lib.PYDP_FLOW_TCP_EST
    assert fin.state == lib.PYDP_FLOW_TCP_FIN
    got = observe.edge_flow_states(region)
    assert got == {("web", "e1"): {"active": 1, "inactive": 2}, ("web", "e2"): {"active": 0, "inactive": 1}}
    assert observe.edge_flow_counts(region) == {("web", "e1"): 3, ("web", "e2"): 1}

    @contextlib.contextmanager
    def source():
        yield region

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in metrics.Collector(source).collect() for s in f.samples}
    assert samples[("pydp_edge_active_flows", (("cluster", "web"), ("edge", "e1")))] == 1
    assert samples[("pydp_edge_inactive_flows", (("cluster", "web"), ("edge", "e1")))] == 2
    assert samples[("pydp_edge_inactive_flows", (("cluster", "web"), ("edge", "e2")))] == 1
    assert samples[("pydp_edge_active_flows", (("cluster", "dns"), ("edge", "d1")))] == 0
