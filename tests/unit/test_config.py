"""Tests of pydp.config: the appliance TOML file, its validation and its writer."""

from __future__ import annotations

import copy
import ipaddress
import os
import pathlib
import stat

import pytest

from pydp import config
from pydp.config import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "appliance.toml"

DELETE = object()


def base() -> dict:
    """A small valid document, as tomllib returns it."""
    return {
        "dataplane": {"lcores": "0-1", "timeouts": {}, "ipip": {}},
        "port": [{"name": "wan0", "device": "net_af_packet0,iface=eth1"}],
        "cluster": [
            {
                "name": "web",
                "cluster_ip": "198.51.100.10",
                "carp": {"vhid": 10},
                "health": {},
                "edge": [
                    {"name": "e1", "ip": "198.51.100.21", "mac": "02:00:00:00:00:21"},
                    {"name": "e2", "ip": "198.51.100.22"},
                ],
            },
        ],
    }


def edit(doc: dict, path: str, value) -> dict:
    """Set (or with DELETE remove) the key at a dotted path; numeric parts index arrays."""
    parts = path.split(".")
    node = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    elif value is DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


def errors_of(doc, **kw) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        config.from_dict(doc, **kw)
    return ei.value.errors


def edges(n: int, prefix: str = "198.51.100.", start: int = 21) -> list[dict]:
    return [{"name": f"e{i}", "ip": f"{prefix}{start + i}"} for i in range(n)]


# ---- the example and the defaults ----

def test_example_loads():
    cfg = config.load(EXAMPLE)
    assert cfg.dataplane.main_lcore == 0
    assert cfg.dataplane.worker_lcores == [1, 2]
    assert cfg.dataplane.hash_seed == 0x5EED
    assert len(cfg.ports) == 1 and cfg.ports[0].device.startswith("net_af_packet")
    web, v6 = cfg.clusters
    assert web.name == "web" and web.cluster_ip == ipaddress.ip_address("198.51.100.10")
    assert len(web.edges) == 3 and web.carp.vhid == 10 and web.dsr == "l2"
    assert web.edges[0].mac == "02:00:00:00:00:21" and web.edges[2].mac is None
    assert v6.cluster_ip.version == 6 and v6.dsr == "ipip" and v6.ipsec_local_termination is True
    assert all(e.ip.version == 6 for e in v6.edges)
    assert cfg.dataplane.ipip.gateway_mac == "02:00:00:00:00:01"


def test_example_uses_documentation_addresses_only():
    cfg = config.load(EXAMPLE)
    doc_nets = [ipaddress.ip_network(n) for n in
                ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]
    addrs = [c.cluster_ip for c in cfg.clusters] + [e.ip for c in cfg.clusters for e in c.edges]
    addrs += [cfg.dataplane.ipip.source4.network_address, cfg.dataplane.ipip.source6.network_address]
    for a in addrs:
        assert any(a in n for n in doc_nets if n.version == a.version), a
    macs = [e.mac for c in cfg.clusters for e in c.edges if e.mac] + [cfg.dataplane.ipip.gateway_mac]
    assert all(int(m[:2], 16) & 0x02 and not int(m[:2], 16) & 0x01 for m in macs)


def test_defaults():
    cfg = config.loads('[[port]]\nname = "p"\ndevice = "net_null0"\n')
    dp = cfg.dataplane
    assert (dp.lcores, dp.main_lcore, dp.worker_lcores) == ("0-1", 0, [1])
    assert dp.busy_poll is False and dp.hugepages is True and dp.eal_args == []
    assert (dp.flow_capacity, dp.maglev_size, dp.hash_seed, dp.memory_mb) == (2097152, 65537, 0x5EED, 512)
    assert dp.timeouts == config.Timeouts(30, 900, 10, 300, 60)
    assert dp.ipip.source4 == ipaddress.ip_network("192.0.2.0/24") and dp.ipip.gateway_mac is None
    assert cfg.ports[0].tap == "pydp-p" and cfg.ports[0].promiscuous is False
    assert cfg.clusters == []


def test_defaults_in_cluster():
    cfg = config.from_dict(edit(base(), "dataplane.maglev_size", 251))
    c = cfg.clusters[0]
    assert c.enabled and c.mode == "cluster" and c.dsr == "l2" and not c.ipsec_local_termination
    assert c.maglev_size == 251                      # resolved from dataplane.maglev_size
    assert c.carp == config.CarpConfig(vhid=10)
    assert c.health == config.HealthConfig()
    assert c.health.port == 80
    assert c.edges[1] == config.EdgeConfig("e2", ipaddress.ip_address("198.51.100.22"))


def test_https_default_port_and_tap_cut():
    doc = edit(base(), "cluster.0.health.type", "https")
    edit(doc, "port.0.name", "a-very-long-nam")
    cfg = config.from_dict(doc)
    assert cfg.clusters[0].health.port == 443
    assert cfg.ports[0].tap == "pydp-a-very-lon"


@pytest.mark.parametrize("spec,main,workers", [
    ("0-1", 0, [1]), ("0,2,3", 0, [2, 3]), ("3,0-1", 3, [0, 1]), ("0,4-7", 0, [4, 5, 6, 7]),
])
def test_lcores(spec, main, workers):
    cfg = config.from_dict(edit(base(), "dataplane.lcores", spec))
    assert cfg.dataplane.lcores == spec
    assert cfg.dataplane.main_lcore == main and cfg.dataplane.worker_lcores == workers


def test_mac_normalized_and_hex_seed():
    doc = edit(base(), "cluster.0.edge.0.mac", "02-AB-CD-EF-00-01")
    cfg = config.from_dict(doc)
    assert cfg.clusters[0].edges[0].mac == "02:ab:cd:ef:00:01"


# ---- every rule, with its key path ----

BAD = [
    # dataplane
    ("dataplane.lcores", "0", "dataplane.lcores", "at least 2 lcores"),
    ("dataplane.lcores", "0-17", "dataplane.lcores", "at most 16 workers"),
    ("dataplane.lcores", "1-0", "dataplane.lcores", "reversed"),
    ("dataplane.lcores", "0,1,1", "dataplane.lcores", "twice"),
    ("dataplane.lcores", "0, 1", "dataplane.lcores", "not a core list"),
    ("dataplane.lcores", "", "dataplane.lcores", "non-empty"),
    ("dataplane.lcores", 1, "dataplane.lcores", "must be a string"),
    ("dataplane.busy_poll", 1, "dataplane.busy_poll", "boolean"),
    ("dataplane.busy_poll", "true", "dataplane.busy_poll", "boolean"),
    ("dataplane.idle_sleep_max_us", 0, "dataplane.idle_sleep_max_us", "between 1 and 100000"),
    ("dataplane.idle_sleep_max_us", 100001, "dataplane.idle_sleep_max_us", "between"),
    ("dataplane.idle_sleep_deep_us", -1, "dataplane.idle_sleep_deep_us", "between 0 and 100000"),
    ("dataplane.idle_sleep_deep_us", 100001, "dataplane.idle_sleep_deep_us", "between"),
    ("dataplane.tx_drain_us", 10001, "dataplane.tx_drain_us", "between 1 and 10000"),
    ("dataplane.flow_capacity", 1023, "dataplane.flow_capacity", "between 1024 and 67108864"),
    ("dataplane.flow_capacity", 67108865, "dataplane.flow_capacity", "between"),
    ("dataplane.flow_capacity", True, "dataplane.flow_capacity", "must be an integer"),
    ("dataplane.flow_capacity", 2048.0, "dataplane.flow_capacity", "must be an integer"),
    ("dataplane.maglev_size", 65536, "dataplane.maglev_size", "prime"),
    ("dataplane.maglev_size", 13, "dataplane.maglev_size", "between 17 and 655373"),
    ("dataplane.maglev_size", 655379, "dataplane.maglev_size", "between 17 and 655373"),
    ("dataplane.hash_seed", -1, "dataplane.hash_seed", "between 0 and 4294967295"),
    ("dataplane.hash_seed", 2**32, "dataplane.hash_seed", "between"),
    ("dataplane.shm_path", "dev/shm/pydp", "dataplane.shm_path", "absolute"),
    ("dataplane.shm_path", "/" + "x" * 300, "dataplane.shm_path", "too long"),
    ("dataplane.hugepages", "yes", "dataplane.hugepages", "boolean"),
    ("dataplane.memory_mb", 63, "dataplane.memory_mb", "between 64 and 65536"),
    ("dataplane.eal_args", "--foo", "dataplane.eal_args", "array of strings"),
    ("dataplane.eal_args", [1], "dataplane.eal_args", "must be a string"),
    ("dataplane.eal_args", ["-l", "0-3"], "dataplane.eal_args", "dataplane.lcores"),
    ("dataplane.eal_args", ["--no-huge"], "dataplane.eal_args", "dataplane.hugepages"),
    ("dataplane.eal_args", ["-m512"], "dataplane.eal_args", "dataplane.memory_mb"),
    ("dataplane.eal_args", [""], "dataplane.eal_args", "non-empty"),
    ("dataplane.burst", 0, "dataplane.burst", "between 1 and 256"),
    ("dataplane.burst", 257, "dataplane.burst", "between"),
    ("dataplane.rx_desc", 63, "dataplane.rx_desc", "between 64 and 16384"),
    ("dataplane.tx_desc", 16385, "dataplane.tx_desc", "between 64 and 16384"),
    ("dataplane.mbufs", 1022, "dataplane.mbufs", "between 1023 and 1048575"),
    ("dataplane.exception_pps", 0, "dataplane.exception_pps", "between 1 and 10000000"),
    ("dataplane.exception_priority_pps", 10000001, "dataplane.exception_priority_pps", "between"),
    ("dataplane.exception_carp_pps", 0, "dataplane.exception_carp_pps", "between 1 and 10000000"),
    ("dataplane.exception_control_pps", "5k", "dataplane.exception_control_pps", "integer"),
    ("dataplane.timeouts.tcp_syn", 0, "dataplane.timeouts.tcp_syn", "greater than 0"),
    ("dataplane.timeouts.tcp_established", -5.0, "dataplane.timeouts.tcp_established", "greater than 0"),
    ("dataplane.timeouts.tcp_fin", 86401, "dataplane.timeouts.tcp_fin", "at most 86400"),
    ("dataplane.timeouts.udp", "300", "dataplane.timeouts.udp", "number of seconds"),
    ("dataplane.timeouts.other", True, "dataplane.timeouts.other", "number of seconds"),
    ("dataplane.timeouts.other", float("nan"), "dataplane.timeouts.other", "finite"),
    ("dataplane.timeouts.other", float("inf"), "dataplane.timeouts.other", "finite"),
    ("dataplane.timeouts.udp", 0.0001, "dataplane.timeouts.udp", "0.001"),
    ("dataplane.ipip.source4", "2001:db8::/64", "dataplane.ipip.source4", "not an IPv4 prefix"),
    ("dataplane.ipip.source4", "192.0.2.1/24", "dataplane.ipip.source4", "host bits"),
    ("dataplane.ipip.source4", "192.0.2.0", "dataplane.ipip.source4", "address/length"),
    ("dataplane.ipip.source4", "nonsense/8", "dataplane.ipip.source4", "not an IPv4 prefix"),
    ("dataplane.ipip.source4", "0.0.0.0/0", "dataplane.ipip.source4", "must not be 0"),
    ("dataplane.ipip.source6", "192.0.2.0/24", "dataplane.ipip.source6", "not an IPv6 prefix"),
    ("dataplane.ipip.gateway_mac", "zz:00:00:00:00:00", "dataplane.ipip.gateway_mac", "not a MAC"),
    ("dataplane.ipip.gateway_mac", "ff:ff:ff:ff:ff:ff", "dataplane.ipip.gateway_mac", "unicast"),
    ("dataplane.ipip.gateway_mac", "00:00:00:00:00:00", "dataplane.ipip.gateway_mac", "all-zero"),
    # ports
    ("port", DELETE, "port", "at least one port"),
    ("port", [], "port", "at least one port"),
    ("port", {"name": "p", "device": "net_null0"}, "port", "array of tables ([[port]])"),
    ("port", [{"name": f"p{i}", "device": f"net_null{i}"} for i in range(5)], "port", "at most 4 ports"),
    ("port.0.name", DELETE, "port[0].name", "required"),
    ("port.0.name", "a" * 16, "port[0].name", "not a valid name"),
    ("port.0.name", "wan 0", "port[0].name", "not a valid name"),
    ("port.0.device", DELETE, "port[0].device", "required"),
    ("port.0.device", "eth 0", "port[0].device", "not a DPDK device"),
    ("port.0.device", "0000:03:00.9", "port[0].device", "not a DPDK device"),
    ("port.0.device", "net_" + "x" * 40, "port[0].device", "too long"),
    ("port.0.tap", "a" * 16, "port[0].tap", "too long"),
    ("port.0.tap", "a/b", "port[0].tap", "not a valid interface name"),
    ("port.0.tap", "..", "port[0].tap", "not a valid interface name"),
    ("port.0.promiscuous", 0, "port[0].promiscuous", "boolean"),
    # cluster
    ("cluster", {"name": "x"}, "cluster", "array of tables ([[cluster]])"),
    ("cluster.0.name", DELETE, "cluster[0].name", "required"),
    ("cluster.0.name", "x" * 32, "cluster[0].name", "not a valid name"),
    ("cluster.0.name", "", "cluster[0].name", "not a valid name"),
    ("cluster.0.cluster_ip", DELETE, "cluster[0].cluster_ip", "required"),
    ("cluster.0.cluster_ip", "10.0.0.300", "cluster[0].cluster_ip", "'10.0.0.300' is not an IP address"),
    ("cluster.0.cluster_ip", "224.0.0.1", "cluster[0].cluster_ip", "multicast"),
    ("cluster.0.cluster_ip", "0.0.0.0", "cluster[0].cluster_ip", "unspecified"),
    ("cluster.0.cluster_ip", "::", "cluster[0].cluster_ip", "unspecified"),
    ("cluster.0.cluster_ip", "127.0.0.1", "cluster[0].cluster_ip", "loopback"),
    ("cluster.0.cluster_ip", "169.254.1.1", "cluster[0].cluster_ip", "link-local"),
    ("cluster.0.cluster_ip", "fe80::1", "cluster[0].cluster_ip", "link-local"),
    ("cluster.0.cluster_ip", "255.255.255.255", "cluster[0].cluster_ip", "broadcast"),
    ("cluster.0.cluster_ip", "2001:db8::1%eth0", "cluster[0].cluster_ip", "zone"),
    ("cluster.0.cluster_ip", 3325256714, "cluster[0].cluster_ip", "must be a string"),
    ("cluster.0.enabled", "true", "cluster[0].enabled", "boolean"),
    ("cluster.0.mode", "active", "cluster[0].mode", "'cluster', 'standalone'"),
    ("cluster.0.dsr", "nat", "cluster[0].dsr", "'l2', 'ipip'"),
    ("cluster.0.ipsec_local_termination", 1, "cluster[0].ipsec_local_termination", "boolean"),
    ("cluster.0.maglev_size", 100, "cluster[0].maglev_size", "prime"),
    ("cluster.0.maglev_size", 1000003, "cluster[0].maglev_size", "between 17 and 655373"),
    ("cluster.0.carp", 5, "cluster[0].carp", "must be a table"),
    ("cluster.0.carp.vhid", 0, "cluster[0].carp.vhid", "between 1 and 255"),
    ("cluster.0.carp.vhid", 256, "cluster[0].carp.vhid", "between 1 and 255"),
    ("cluster.0.carp.advbase", 0, "cluster[0].carp.advbase", "between 1 and 255"),
    ("cluster.0.carp.advskew", 255, "cluster[0].carp.advskew", "between 0 and 254"),
    ("cluster.0.carp.passphrase", "x" * 21, "cluster[0].carp.passphrase", "21 bytes"),
    ("cluster.0.carp.passphrase", "é" * 11, "cluster[0].carp.passphrase", "22 bytes"),
    ("cluster.0.carp.passphrase_file", "carp.key", "cluster[0].carp.passphrase_file", "absolute"),
    ("cluster.0.carp.passphrase_file", "/nonexistent/pydp/carp.key", "cluster[0].carp.passphrase_file",
     "cannot read"),
    ("cluster.0.carp.preempt", "no", "cluster[0].carp.preempt", "boolean"),
    ("cluster.0.health.type", "udp", "cluster[0].health.type", "'tcp', 'http', 'https', 'icmp', 'none'"),
    ("cluster.0.health.port", 0, "cluster[0].health.port", "between 1 and 65535"),
    ("cluster.0.health.port", 65536, "cluster[0].health.port", "between 1 and 65535"),
    ("cluster.0.health.path", "healthz", "cluster[0].health.path", "start with '/'"),
    ("cluster.0.health.path", "/a b", "cluster[0].health.path", "spaces"),
    ("cluster.0.health.host", "a b", "cluster[0].health.host", "spaces"),
    ("cluster.0.health.expect_status", 99, "cluster[0].health.expect_status", "between 100 and 599"),
    ("cluster.0.health.expect_status", 600, "cluster[0].health.expect_status", "between 100 and 599"),
    ("cluster.0.health.expect_body", 5, "cluster[0].health.expect_body", "must be a string"),
    ("cluster.0.health.interval", 0.05, "cluster[0].health.interval", "at least 0.1"),
    ("cluster.0.health.interval", 3601, "cluster[0].health.interval", "at most 3600"),
    ("cluster.0.health.timeout", 0, "cluster[0].health.timeout", "greater than 0"),
    ("cluster.0.health.timeout", 2.0, "cluster[0].health.timeout", "less than interval"),
    ("cluster.0.health.timeout", 5, "cluster[0].health.timeout", "less than interval"),
    ("cluster.0.health.rise", 0, "cluster[0].health.rise", "between 1 and 100"),
    ("cluster.0.health.fall", 101, "cluster[0].health.fall", "between 1 and 100"),
    # edges
    ("cluster.0.edge", {"name": "e", "ip": "198.51.100.30"}, "cluster[0].edge", "[[cluster.edge]]"),
    ("cluster.0.edge", edges(1), "cluster[0].edge", "mode 'cluster' needs 2 to 16 edges, got 1"),
    ("cluster.0.edge", DELETE, "cluster[0].edge", "needs 2 to 16 edges, got 0"),
    ("cluster.0.edge", edges(17), "cluster[0].edge", "needs 2 to 16 edges, got 17"),
    ("cluster.0.edge.0.name", DELETE, "cluster[0].edge[0].name", "required"),
    ("cluster.0.edge.0.name", "a" * 32, "cluster[0].edge[0].name", "not a valid name"),
    ("cluster.0.edge.1.name", "e1", "cluster[0].edge[1].name", "duplicate edge name 'e1'"),
    ("cluster.0.edge.0.ip", DELETE, "cluster[0].edge[0].ip", "required"),
    ("cluster.0.edge.0.ip", "10.0.0.300", "cluster[0].edge[0].ip", "'10.0.0.300' is not an IP address"),
    ("cluster.0.edge.0.ip", "ff02::1", "cluster[0].edge[0].ip", "multicast"),
    ("cluster.0.edge.1.ip", "198.51.100.21", "cluster[0].edge[1].ip", "duplicate edge ip"),
    ("cluster.0.edge.0.ip", "198.51.100.10", "cluster[0].edge[0].ip", "cluster_ip itself"),
    ("cluster.0.edge.0.mac", "02:00:00:00:00", "cluster[0].edge[0].mac", "not a MAC"),
    ("cluster.0.edge.0.mac", "03:00:00:00:00:01", "cluster[0].edge[0].mac", "unicast"),
    ("cluster.0.edge.0.mac", "02:00-00:00:00:01", "cluster[0].edge[0].mac", "not a MAC"),
    ("cluster.0.edge.0.weight", 0, "cluster[0].edge[0].weight", "between 1 and 65535"),
    ("cluster.0.edge.0.weight", 65536, "cluster[0].edge[0].weight", "between 1 and 65535"),
    ("cluster.0.edge.0.weight", 1.5, "cluster[0].edge[0].weight", "must be an integer"),
    ("cluster.0.edge.0.state", "up", "cluster[0].edge[0].state", "'active', 'draining', 'disabled'"),
    # sections of the wrong type
    ("dataplane", 5, "dataplane", "must be a table"),
    ("dataplane.timeouts", [], "dataplane.timeouts", "must be a table"),
    ("cluster.0.health", "tcp", "cluster[0].health", "must be a table"),
]


@pytest.mark.parametrize("path,value,where,reason", BAD,
                         ids=[f"{b[0]}={'<deleted>' if b[1] is DELETE else repr(b[1])}"[:60] for b in BAD])
def test_rejected(path, value, where, reason):
    errs = errors_of(edit(base(), path, value), source="bad.toml")
    assert any(e.startswith(where + ": ") and reason in e for e in errs), errs


def test_unknown_keys_at_every_level():
    doc = base()
    doc["colour"] = "blue"
    doc["dataplane"]["flw_capacity"] = 1
    doc["dataplane"]["timeouts"]["tcp"] = 1
    doc["dataplane"]["ipip"]["gateway"] = ""
    doc["port"][0]["ifname"] = "x"
    doc["cluster"][0]["vip"] = "198.51.100.11"
    doc["cluster"][0]["carp"]["priority"] = 1
    doc["cluster"][0]["health"]["retries"] = 1
    doc["cluster"][0]["edge"][1]["wieght"] = 3
    errs = errors_of(doc)
    expected = ["colour", "dataplane.flw_capacity", "dataplane.timeouts.tcp", "dataplane.ipip.gateway",
                "port[0].ifname", "cluster[0].vip", "cluster[0].carp.priority", "cluster[0].health.retries",
                "cluster[0].edge[1].wieght"]
    for key in expected:
        assert any(e.startswith(f"{key}: unknown key") for e in errs), (key, errs)
    assert len(errs) == len(expected)
    assert "dataplane.flw_capacity: unknown key (did you mean 'flow_capacity'?)" in errs
    assert "cluster[0].edge[1].wieght: unknown key (did you mean 'weight'?)" in errs


# ---- cross-field rules ----

def two_clusters() -> dict:
    doc = base()
    doc["cluster"].append({"name": "api", "cluster_ip": "198.51.100.11", "carp": {"vhid": 11},
                           "edge": edges(2, start=31)})
    return doc


def test_two_clusters_valid():
    cfg = config.from_dict(two_clusters())
    assert [c.name for c in cfg.clusters] == ["web", "api"]


@pytest.mark.parametrize("path,value,where,reason", [
    ("cluster.1.name", "web", "cluster[1].name", "duplicate cluster name 'web' (also at cluster[0].name)"),
    ("cluster.1.cluster_ip", "198.51.100.10", "cluster[1].cluster_ip", "duplicate cluster_ip"),
    ("cluster.1.carp.vhid", 10, "cluster[1].carp.vhid", "duplicate CARP vhid '10'"),
    ("cluster.1.carp", {}, "cluster[1].carp.vhid", "duplicate CARP vhid"),
])
def test_rejected_across_clusters(path, value, where, reason):
    doc = two_clusters()
    if path == "cluster.1.carp":
        doc["cluster"][0]["carp"] = {}
    errs = errors_of(edit(doc, path, value))
    assert any(e.startswith(where + ": ") and reason in e for e in errs), errs


def test_cluster_ip_unique_across_spellings():
    doc = two_clusters()
    doc["cluster"][0]["cluster_ip"] = "2001:db8::10"
    doc["cluster"][0]["edge"] = edges(2, prefix="2001:db8::", start=20)
    doc["cluster"][1]["cluster_ip"] = "2001:0db8:0:0::10"
    doc["cluster"][1]["edge"] = edges(2, prefix="2001:db8::", start=30)
    assert any(e.startswith("cluster[1].cluster_ip: duplicate") for e in errors_of(doc))


def test_too_many_clusters():
    doc = base()
    doc["cluster"] = [{"name": f"c{i}", "cluster_ip": f"198.51.100.{i + 1}", "carp": {"vhid": i + 1},
                       "edge": [{"name": "a", "ip": "203.0.113.1"}, {"name": "b", "ip": "203.0.113.2"}]}
                      for i in range(65)]
    assert "cluster: at most 64 clusters (PYDP_MAX_CLUSTERS), got 65" in errors_of(doc)
    doc["cluster"].pop()
    assert len(config.from_dict(doc).clusters) == 64


def test_standalone():
    doc = two_clusters()
    doc["cluster"][1]["mode"] = "standalone"
    doc["cluster"][1]["carp"]["vhid"] = 10              # ignored for standalone: no vhid clash
    doc["cluster"][1]["edge"] = edges(1)
    cfg = config.from_dict(doc)
    assert cfg.clusters[1].mode == "standalone"
    doc["cluster"][1]["edge"] = edges(2)
    assert "cluster[1].edge: mode 'standalone' needs exactly 1 edge, got 2" in errors_of(doc)
    doc["cluster"][1]["edge"] = []
    assert "cluster[1].edge: mode 'standalone' needs exactly 1 edge, got 0" in errors_of(doc)


def test_sixteen_edges_accepted():
    doc = edit(base(), "cluster.0.edge", edges(16, start=100))
    edit(doc, "cluster.0.maglev_size", 17)
    assert len(config.from_dict(doc).clusters[0].edges) == 16


def ipip_doc() -> dict:
    doc = base()
    doc["cluster"][0]["dsr"] = "ipip"
    doc["dataplane"]["ipip"]["gateway_mac"] = "02:00:00:00:00:01"
    return doc


def test_ipip_valid():
    cfg = config.from_dict(ipip_doc())
    assert cfg.clusters[0].dsr == "ipip" and cfg.dataplane.ipip.gateway_mac == "02:00:00:00:00:01"


def test_ipip_requires_gateway_mac():
    doc = ipip_doc()
    doc["dataplane"]["ipip"]["gateway_mac"] = ""
    errs = errors_of(doc)
    assert errs == ['dataplane.ipip.gateway_mac: required when a cluster uses dsr = "ipip" '
                    "(used by cluster[0] 'web')"]
    doc["cluster"][0]["dsr"] = "l2"                     # l2 needs no gateway
    config.from_dict(doc)


def test_ipip_edge_family():
    doc = ipip_doc()
    doc["cluster"][0]["edge"][1]["ip"] = "2001:db8::22"
    errs = errors_of(doc)
    assert len(errs) == 1 and errs[0].startswith("cluster[0].edge[1].ip: '2001:db8::22' is IPv6 but cluster_ip")
    doc["cluster"][0]["dsr"] = "l2"                     # l2 DSR: the edge address is only for health and ARP/ND
    config.from_dict(doc)


def test_maglev_size_override():
    doc = edit(base(), "cluster.0.maglev_size", 17)
    assert config.from_dict(doc).clusters[0].maglev_size == 17


def test_maglev_size_at_least_edges():
    # 17 (the smallest prime allowed) >= 16 (PYDP_MAX_EDGES): in a file this rule cannot fire on its own, so it is
    # checked here on a config changed in code.
    cfg = config.from_dict(base())
    cfg.clusters[0].maglev_size = 1
    ctx = config._Ctx("x")
    config._cross_check(ctx, cfg)
    assert ctx.errors == ["cluster[0].maglev_size: must be at least the number of edges (2), got 1"]


def test_port_uniqueness():
    doc = base()
    doc["port"].append({"name": "wan0", "device": "net_af_packet0,iface=eth2"})
    errs = errors_of(doc)
    assert "port[1].name: duplicate port name 'wan0' (also at port[0].name)" in errs
    assert any(e.startswith("port[1].device: duplicate device 'net_af_packet0,iface=eth2'") for e in errs)
    assert not any(e.startswith("port[1].tap") for e in errs)   # follows from the name: not reported twice


def test_port_pci_uniqueness_and_tap():
    doc = base()
    doc["port"] = [{"name": "a", "device": "0000:03:00.0"}, {"name": "b", "device": "03:00.0,txq_inline=128"},
                   {"name": "c", "device": "net_null0", "tap": "pydp-a"}]
    errs = errors_of(doc)
    assert any(e.startswith("port[1].device: duplicate device") for e in errs)
    assert any(e.startswith("port[2].tap: duplicate TAP interface name 'pydp-a'") for e in errs)


def test_port_default_taps_collide():
    doc = base()
    doc["port"] = [{"name": "uplink-number-1", "device": "net_null0"},
                   {"name": "uplink-number-2", "device": "net_null1"}]
    errs = errors_of(doc)
    assert errs == ["port[1].tap: duplicate TAP interface name 'pydp-uplink-num' (also at port[0].tap) "
                    "(derived from the port name: set tap explicitly)"]


def test_no_tap_and_devices():
    doc = base()
    doc["port"] = [{"name": "a", "device": "0000:03:00.0", "tap": ""},
                   {"name": "b", "device": "0000:03:00.1,rxq_cqe_comp_en=0,representor=[0-3]", "tap": ""},
                   {"name": "c", "device": "net_pcap0,iface=eth0,infinite_rx=1"}]
    cfg = config.from_dict(doc)
    assert [p.tap for p in cfg.ports] == ["", "", "pydp-c"]
    assert cfg.ports[1].device_name == "0000:03:00.1"


# ---- CARP passphrases ----

def test_passphrase_file(tmp_path):
    key = tmp_path / "carp.key"
    key.write_bytes("sécret\n".encode())
    cfg = config.from_dict(edit(base(), "cluster.0.carp.passphrase_file", str(key)))
    assert cfg.clusters[0].carp.passphrase == "sécret"
    key.write_bytes(b"two\n\n")
    assert config.from_dict(edit(base(), "cluster.0.carp.passphrase_file", str(key))).clusters[0].carp.passphrase \
        == "two\n"


@pytest.mark.parametrize("content,reason", [
    (b"x" * 21, "21 bytes"),
    (b"x" * 20 + b"\n\n", "21 bytes"),
    (b"\xff\xfe", "not valid UTF-8"),
])
def test_passphrase_file_rejected(tmp_path, content, reason):
    key = tmp_path / "carp.key"
    key.write_bytes(content)
    errs = errors_of(edit(base(), "cluster.0.carp.passphrase_file", str(key)))
    assert len(errs) == 1 and errs[0].startswith("cluster[0].carp.passphrase_file: ") and reason in errs[0]


def test_passphrase_exclusive(tmp_path):
    key = tmp_path / "carp.key"
    key.write_text("abc\n")
    doc = edit(base(), "cluster.0.carp.passphrase_file", str(key))
    edit(doc, "cluster.0.carp.passphrase", "abc")
    assert errors_of(doc) == ["cluster[0].carp.passphrase_file: cannot be used together with passphrase "
                              "(set only one)"]


def test_passphrase_twenty_bytes_ok():
    cfg = config.from_dict(edit(base(), "cluster.0.carp.passphrase", "é" * 10))
    assert cfg.clusters[0].carp.passphrase == "é" * 10


# ---- error reporting ----

def test_multiple_errors_reported_together():
    doc = base()
    doc["dataplane"]["burst"] = 0
    doc["dataplane"]["busy_poll"] = "no"
    doc["port"][0]["device"] = "bad device"
    doc["cluster"][0]["cluster_ip"] = "198.51.100.999"
    doc["cluster"][0]["edge"][0]["ip"] = "10.0.0.300"
    doc["cluster"][0]["edge"][1]["name"] = "e1"
    doc["cluster"][0]["health"]["timeout"] = 9
    errs = errors_of(doc, source="multi.toml")
    for key in ("dataplane.burst", "dataplane.busy_poll", "port[0].device", "cluster[0].cluster_ip",
                "cluster[0].edge[0].ip", "cluster[0].edge[1].name", "cluster[0].health.timeout"):
        assert any(e.startswith(key + ": ") for e in errs), (key, errs)
    assert len(errs) == 7


def test_error_str_names_the_file(tmp_path):
    path = tmp_path / "appliance.toml"
    path.write_text('[dataplane]\nflw_capacity = 1\nburst = 0\n[[port]]\nname = "p"\ndevice = "net_null0"\n')
    with pytest.raises(ConfigError) as ei:
        config.load(path)
    e = ei.value
    assert e.source == str(path)
    assert isinstance(e, ValueError)
    lines = str(e).splitlines()
    assert lines == [f"{path}: dataplane.flw_capacity: unknown key (did you mean 'flow_capacity'?)",
                     f"{path}: dataplane.burst: must be between 1 and 256, got 0"]


def test_syntax_error_has_line_and_column(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('[dataplane]\nburst = = 3\n')
    with pytest.raises(ConfigError) as ei:
        config.load(path)
    assert ei.value.source == str(path)
    assert len(ei.value.errors) == 1
    assert "TOML syntax error" in ei.value.errors[0] and "line 2" in ei.value.errors[0]
    assert str(ei.value).startswith(f"{path}: ")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as ei:
        config.load(path)
    assert ei.value.source == str(path) and "cannot read" in ei.value.errors[0]


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[[port]]\nname = "p\xe9"\n')
    with pytest.raises(ConfigError) as ei:
        config.load(path)
    assert "UTF-8" in ei.value.errors[0]


def test_toml_types_rejected_in_text():
    text = ('[dataplane]\nbusy_poll = 1\nhugepages = "true"\nflow_capacity = true\nlcores = 2020-01-01\n'
            '[[port]]\nname = "p"\ndevice = "net_null0"\n')
    errs = errors_of(__import__("tomllib").loads(text))
    assert errs == ["dataplane.busy_poll: must be a boolean (true or false), got 1 (integer)",
                    "dataplane.hugepages: must be a boolean (true or false), got 'true' (string)",
                    "dataplane.flow_capacity: must be an integer, got true (boolean)",
                    "dataplane.lcores: must be a string, got 2020-01-01 (date/time)"]


def test_top_level_not_table():
    assert errors_of([1]) == ["(top level): must be a table, got an array"]


# ---- writing ----

def test_round_trip_example():
    cfg = config.load(EXAMPLE)
    text = config.dumps(cfg)
    assert config.loads(text) == cfg
    assert config.dumps(config.loads(text)) == text
    assert "hash_seed = 0x5eed" in text


def test_round_trip_awkward_strings():
    cfg = config.from_dict(base())
    cfg.dataplane.eal_args = ["--log-level=lib.eal:debug", 'quote"s', "back\\slash", "tab\tnew\nline",
                              "uni ☃ code", "ctl \x01\x1f\x7f", "'single'", "#hash", "[x]", "="]
    cfg.clusters[0].health.expect_body = '"}\\n\r\n\b\f\x00 ok'
    cfg.clusters[0].health.host = "höst.example"
    cfg.clusters[0].carp.passphrase = 'p"\\w'
    text = config.dumps(cfg, include_secrets=True)
    assert config.loads(text) == cfg


def test_round_trip_all_non_defaults(tmp_path):
    key = tmp_path / "k"
    key.write_text("kk\n")
    doc = ipip_doc()
    doc["dataplane"].update(lcores="2,4-6", busy_poll=True, idle_sleep_max_us=7, idle_sleep_deep_us=0, tx_drain_us=9, flow_capacity=4096,
                            maglev_size=17, hash_seed=0, shm_path="/run/pydp/shm", hugepages=False, memory_mb=64,
                            eal_args=["--in-memory"], burst=1, rx_desc=64, tx_desc=16384, mbufs=1023,
                            exception_pps=1, exception_priority_pps=10000000,
                            exception_carp_pps=300, exception_control_pps=2,
                            timeouts={"tcp_syn": 0.5, "tcp_established": 86400, "tcp_fin": 1e-3, "udp": 1,
                                      "other": 2.25},
                            ipip={"source4": "203.0.113.128/25", "source6": "2001:db8:1::/48",
                                  "gateway_mac": "02:AA:BB:CC:DD:EE"})
    doc["port"][0].update(tap="", promiscuous=True)
    c = doc["cluster"][0]
    c.update(enabled=False, ipsec_local_termination=True, maglev_size=655373,
             carp={"vhid": 255, "advbase": 255, "advskew": 254, "passphrase_file": str(key), "preempt": False},
             health={"type": "https", "port": 8443, "path": "/h?x=1", "host": "a.example", "expect_status": 204,
                     "expect_body": "OK", "interval": 3600, "timeout": 0.001, "rise": 100, "fall": 1})
    c["edge"][0].update(weight=65535, state="disabled")
    c["edge"][1].update(state="draining", mac="02:00:00:00:00:99")
    cfg = config.from_dict(doc)
    assert cfg.clusters[0].carp.passphrase == "kk"
    for secrets in (False, True):
        text = config.dumps(cfg, include_secrets=secrets)
        assert "kk" not in text.replace(str(key), "")     # from a file: the path is written, never the secret
        assert config.loads(text) == cfg


def test_secrets_omitted_by_default():
    cfg = config.from_dict(edit(base(), "cluster.0.carp.passphrase", "s3cret"))
    text = config.dumps(cfg)
    assert "s3cret" not in text
    assert config.to_dict(cfg)["cluster"][0]["carp"]["passphrase"] == ""
    back = config.loads(text)
    assert back.clusters[0].carp.passphrase == ""
    back.clusters[0].carp.passphrase = "s3cret"
    assert back == cfg
    assert "s3cret" in config.dumps(cfg, include_secrets=True)
    assert config.to_dict(cfg, include_secrets=True)["cluster"][0]["carp"]["passphrase"] == "s3cret"
    assert config.loads(config.dumps(cfg, include_secrets=True)) == cfg


def test_to_dict_writes_everything():
    d = config.to_dict(config.from_dict(base()))
    assert set(d["dataplane"]) == set(config._DATAPLANE_SPEC)
    assert set(d["dataplane"]["timeouts"]) == set(config._TIMEOUTS_SPEC)
    assert set(d["dataplane"]["ipip"]) == set(config._IPIP_SPEC)
    assert set(d["port"][0]) == set(config._PORT_SPEC)
    assert set(d["cluster"][0]) == set(config._CLUSTER_SPEC)
    assert set(d["cluster"][0]["carp"]) == set(config._CARP_SPEC)
    assert set(d["cluster"][0]["health"]) == set(config._HEALTH_SPEC)
    assert set(d["cluster"][0]["edge"][0]) == set(config._EDGE_SPEC)


def test_validate_built_in_code():
    cfg = config.ApplianceConfig(
        ports=[config.PortConfig("wan0", "net_null0")],
        clusters=[config.ClusterConfig("web", ipaddress.ip_address("198.51.100.10"), edges=[
            config.EdgeConfig("a", ipaddress.ip_address("198.51.100.21")),
            config.EdgeConfig("b", ipaddress.ip_address("198.51.100.22"), weight=3)])])
    norm = config.validate(cfg)
    assert norm.clusters[0].maglev_size == 65537 and norm.ports[0].tap == "pydp-wan0"
    cfg.clusters[0].edges.pop()
    with pytest.raises(ConfigError) as ei:
        config.validate(cfg)
    assert ei.value.errors == ["cluster[0].edge: mode 'cluster' needs 2 to 16 edges, got 1"]


# ---- atomic dump ----

def test_dump_and_load(tmp_path):
    cfg = config.load(EXAMPLE)
    path = tmp_path / "appliance.toml"
    config.dump(cfg, path)
    assert config.load(path) == cfg
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["appliance.toml"]


def test_dump_with_secrets_is_private(tmp_path):
    cfg = config.from_dict(edit(base(), "cluster.0.carp.passphrase", "s3cret"))
    path = tmp_path / "appliance.toml"
    path.write_text("old")
    path.chmod(0o640)
    config.dump(cfg, path, include_secrets=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert config.load(path) == cfg


def test_dump_failure_leaves_target_intact(tmp_path, monkeypatch):
    path = tmp_path / "appliance.toml"
    path.write_text("# the old file\n")

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(config.os, "replace", boom)
    with pytest.raises(OSError):
        config.dump(config.load(EXAMPLE), path)
    assert path.read_text() == "# the old file\n"
    assert os.listdir(tmp_path) == ["appliance.toml"]       # the temporary file is gone


def test_dump_failure_during_write(tmp_path, monkeypatch):
    path = tmp_path / "appliance.toml"
    path.write_text("# the old file\n")

    def boom(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(config.os, "fsync", boom)
    with pytest.raises(OSError):
        config.dump(config.load(EXAMPLE), path)
    assert path.read_text() == "# the old file\n"
    assert os.listdir(tmp_path) == ["appliance.toml"]


def test_dump_parent_missing(tmp_path):
    with pytest.raises(OSError):
        config.dump(config.load(EXAMPLE), tmp_path / "no" / "such" / "appliance.toml")
    assert os.listdir(tmp_path) == []


def test_dump_refuses_invalid_config(tmp_path):
    cfg = config.load(EXAMPLE)
    cfg.clusters[1].carp.vhid = 10
    path = tmp_path / "appliance.toml"
    with pytest.raises(ConfigError) as ei:
        config.dump(cfg, path)
    assert ei.value.errors == ["cluster[1].carp.vhid: duplicate CARP vhid '10' (also at cluster[0].carp.vhid)"]
    assert not path.exists()


# ---- property: random valid configs survive dumps/loads ----

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

names = st.from_regex(r"[A-Za-z0-9_.-]{1,31}", fullmatch=True)
text = st.text(max_size=30)
seconds = st.one_of(st.integers(1, 86400), st.floats(0.001, 86400, allow_nan=False, allow_infinity=False))
primes = st.sampled_from([17, 251, 4099, 65537, 655373])


@st.composite
def configs(draw):
    n_workers = draw(st.integers(1, 16))
    lcores = list(range(n_workers + 1))
    dp = config.DataplaneConfig(
        lcores=",".join(map(str, draw(st.permutations(lcores)))),
        busy_poll=draw(st.booleans()),
        flow_capacity=draw(st.integers(1024, 67108864)),
        maglev_size=draw(primes),
        hash_seed=draw(st.integers(0, 2**32 - 1)),
        eal_args=draw(st.lists(text.filter(lambda s: s and "\0" not in s and not s.startswith("-")), max_size=3)),
        timeouts=config.Timeouts(*(float(draw(seconds)) for _ in range(5))),
        ipip=config.IpipConfig(gateway_mac=draw(st.sampled_from([None, "02:00:5e:00:00:01"]))),
    )
    ports = [config.PortConfig(f"p{i}", f"net_null{i}", promiscuous=draw(st.booleans()))
             for i in range(draw(st.integers(1, 4)))]
    clusters = []
    for i, cname in enumerate(draw(st.lists(names, unique=True, max_size=4))):
        v6 = draw(st.booleans())
        vip = ipaddress.ip_address(f"2001:db8:{i}::1" if v6 else f"198.51.100.{i + 1}")
        standalone = draw(st.booleans())
        n = 1 if standalone else draw(st.integers(2, 16))
        enames = draw(st.lists(names, unique=True, min_size=n, max_size=n))
        edges_ = [config.EdgeConfig(en, ipaddress.ip_address(f"2001:db8:{i}::{j + 100:x}" if v6
                                                              else f"203.0.{i}.{j + 10}"),
                                    mac=draw(st.sampled_from([None, f"02:00:00:00:{i:02x}:{j:02x}"])),
                                    weight=draw(st.integers(1, 65535)),
                                    state=draw(st.sampled_from(config.EDGE_STATES)))
                  for j, en in enumerate(enames)]
        interval = draw(st.floats(0.1, 3600, allow_nan=False))
        health = config.HealthConfig(type=draw(st.sampled_from(config.HEALTH_TYPES)),
                                     expect_body=draw(text), interval=interval,
                                     timeout=draw(st.floats(0.001, interval * 0.99, allow_nan=False)),
                                     path="/" + draw(st.from_regex(r"[a-z0-9/?=&]{0,10}", fullmatch=True)))
        carp = config.CarpConfig(vhid=i + 1, advskew=draw(st.integers(0, 254)),
                                 passphrase=draw(st.text(max_size=5).filter(lambda s: "\0" not in s)))
        clusters.append(config.ClusterConfig(
            cname, vip, enabled=draw(st.booleans()), mode="standalone" if standalone else "cluster",
            dsr="ipip" if dp.ipip.gateway_mac and draw(st.booleans()) else "l2",
            ipsec_local_termination=draw(st.booleans()), maglev_size=draw(st.one_of(st.none(), primes)),
            carp=carp, health=health, edges=edges_))
    return config.ApplianceConfig(dp, ports, clusters)


@hypothesis.settings(max_examples=60, deadline=None, database=None)
@hypothesis.given(configs())
def test_round_trip_property(cfg):
    norm = config.validate(cfg)
    back = config.loads(config.dumps(norm, include_secrets=True))
    assert back == norm
    assert config.dumps(back, include_secrets=True) == config.dumps(norm, include_secrets=True)
