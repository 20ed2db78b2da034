"""pydp-dataplane on a real af_packet port in a namespace: exception path to the kernel, and config swaps under load."""

import contextlib
import threading
import time

import pytest

from netlab import DataplaneProcess, netns, ns_run, traffic, veth
from pydp import config as pconfig
from pydp.apply import apply_config

pytestmark = [pytest.mark.dpdk, pytest.mark.netns]

LB_MAC = "02:00:00:00:01:01"
VIP = "198.51.100.10"
EDGE_MACS = {"e1": "02:00:00:00:02:01", "e2": "02:00:00:00:02:02", "e3": "02:00:00:00:02:03"}


def config_text(weights=(1, 1, 1), other_edges=2, lcores="0-1") -> str:
    text = f"""
[dataplane]
lcores = "{lcores}"
flow_capacity = 65536
hugepages = true
memory_mb = 256
mbufs = 8191
[[port]]
name = "p0"
device = "net_af_packet0,iface=lb0"
tap = "pydp-p0"
[[cluster]]
name = "web"
cluster_ip = "198.51.100.10"
[cluster.carp]
vhid = 1
"""
    for (name, mac), w in zip(EDGE_MACS.items(), weights):
        text += f'[[cluster.edge]]\nname = "{name}"\nip = "198.51.100.2{name[1]}"\nmac = "{mac}"\nweight = {w}\n'
    text += '[[cluster]]\nname = "other"\ncluster_ip = "198.51.100.20"\n[cluster.carp]\nvhid = 2\n'
    for i in range(other_edges):
        text += f'[[cluster.edge]]\nname = "o{i}"\nip = "198.51.100.{40 + i}"\nmac = "02:00:00:00:03:{i:02x}"\n'
    return text


@contextlib.contextmanager
def topology(tmp_path, text):
    """client namespace --veth-- load-balancer namespace running pydp-dataplane on an af_packet port."""
    with netns("pydpt-lb") as lb_ns, netns("pydpt-cl") as cl_ns:
        veth(lb_ns, "lb0", "c0", ns_b=cl_ns, mac_a=LB_MAC)
        ns_run(cl_ns, "ip", "addr", "add", "198.51.100.99/24", "dev", "c0")
        with DataplaneProcess(lb_ns, text, tmp_path, args=["--own-all"]) as dp:
            yield lb_ns, cl_ns, dp, tmp_path


@pytest.fixture
def lab(tmp_path):
    with topology(tmp_path, config_text()) as t:
        yield t


def test_exception_path_reaches_the_kernel_and_back(lab):
    lb_ns, cl_ns, dp, _ = lab
    ns_run(lb_ns, "ip", "addr", "add", "198.51.100.2/24", "dev", "pydp-p0")
    ns_run(lb_ns, "ip", "link", "set", "pydp-p0", "up")
    ping = ns_run(cl_ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", "198.51.100.2", check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    port = dp.region.worker_stats()["port"][:, 0]
    assert port["exc_to_kernel"].sum() >= 4          # ARP request + 3 echo requests
    assert port["exc_from_kernel"].sum() >= 4        # ARP reply + 3 echo replies
    # the kernel side of the TAP carries the data port's MAC, so its ARP replies point at the data port
    link = ns_run(lb_ns, "ip", "-br", "link", "show", "pydp-p0").stdout
    assert LB_MAC in link


def test_hundred_swaps_under_traffic_lose_nothing_and_keep_flows(lab):
    lb_ns, cl_ns, dp, tmp = lab
    start_file = tmp / "started"
    swaps_before = int(dp.region.worker_stats()["config_swaps"].sum())
    cfgs = [pconfig.loads(config_text(weights=w, other_edges=n)) for w, n in
            (((1, 1, 1), 2), ((1, 2, 3), 3), ((3, 1, 1), 4), ((1, 1, 2), 2))]
    errors = []
    done = []

    def swapper():
        try:
            deadline = time.monotonic() + 60
            while not start_file.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            for i in range(100):
                apply_config(dp.region, cfgs[i % len(cfgs)], owned={"web"})   # the data plane runs --own-all
                time.sleep(0.02)
            done.append(time.monotonic())
        except Exception as exc:  # reported by the test thread
            errors.append(exc)

    t = threading.Thread(target=swapper)
    t.start()
    report = traffic(cl_ns, tmp, "--iface", "c0", "--lb-mac", LB_MAC, "--vip", VIP, "--flows", 200,
                     "--rounds", 40, "--pps", 2000, "--start-file", start_file, "--settle", 1.5)
    t.join(120)
    assert not errors, errors
    assert done, "the swaps did not finish"
    swaps = int(dp.region.worker_stats()["config_swaps"].sum()) - swaps_before
    assert swaps >= 100, f"the worker saw {swaps} new generations"
    assert report["missing"] == 0, report["missing_first"]
    assert report["duplicates"] == 0
    assert report["unique"] == report["sent"] == 200 * 40
    # every flow stayed on the edge it started on, whatever the tables said meanwhile
    for flow, macs in report["per_flow"].items():
        assert len(macs) == 1, f"flow {flow} was split over {macs}"
        assert set(macs) <= set(EDGE_MACS.values())


def test_two_workers_share_the_flows_and_keep_each_on_one_edge(tmp_path):
    """Two workers (both pinned to CPU 1), two af_packet queues: the kernel's fanout hash plays RSS."""
    with topology(tmp_path, config_text(lcores="0@0,1@1,2@1")) as (lb_ns, cl_ns, dp, tmp):
        assert dp.region.nb_workers == 2
        report = traffic(cl_ns, tmp, "--iface", "c0", "--lb-mac", LB_MAC, "--vip", VIP, "--flows", 200,
                         "--rounds", 10, "--pps", 2000, "--settle", 1.0)
        assert report["missing"] == 0 and report["duplicates"] == 0, report["missing_first"]
        for flow, macs in report["per_flow"].items():
            assert len(macs) == 1, f"flow {flow} was split over {macs}"
        rx = dp.region.worker_stats()["port"][:, 0]["rx_packets"]
        assert (rx > 0).all(), f"a worker got nothing: {rx}"
        tables = dp.region.flow_tables()
        assert tables["live"] >= 200


def test_edge_down_moves_only_its_flows(lab):
    """An edge goes down mid-traffic: its flows re-hash to the others on their next packet, no other flow moves,
    nothing is lost; a draining edge keeps its flows."""
    lb_ns, cl_ns, dp, tmp = lab
    start_file = tmp / "started"
    cfg = pconfig.loads(config_text())
    errors = []

    def fail_e1():
        try:
            deadline = time.monotonic() + 60
            while not start_file.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(1.5)               # flows are established on all edges
            cfg.clusters[0].edges[1].state = "draining"
            apply_config(dp.region, cfg, owned={"web"}, edge_health={("web", "e1"): False})
        except Exception as exc:
            errors.append(exc)

    t = threading.Thread(target=fail_e1)
    t.start()
    report = traffic(cl_ns, tmp, "--iface", "c0", "--lb-mac", LB_MAC, "--vip", VIP, "--flows", 150,
                     "--rounds", 30, "--pps", 1500, "--start-file", start_file, "--settle", 1.0)
    t.join(60)
    assert not errors, errors
    assert report["missing"] == 0 and report["duplicates"] == 0
    e1, e2 = EDGE_MACS["e1"], EDGE_MACS["e2"]
    moved = [f for f, macs in report["per_flow"].items() if e1 in macs]
    assert moved, "no flow was on e1 before it failed"
    for flow, macs in report["per_flow"].items():
        if e1 in macs:
            assert len(macs) == 2 and e2 not in macs, f"flow {flow}: {macs}"   # e1, then e3 (e2 is draining)
        else:
            assert len(macs) == 1, f"flow {flow} moved although its edge stayed up: {macs}"
    assert int(dp.region.worker_stats()["flow_rehashed"].sum()) >= len(moved)
