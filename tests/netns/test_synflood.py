"""Fault: the flow table filled by a SYN flood from random sources.

A real pydp-dataplane (one worker, a 6144-flow table, af_packet port in a namespace) with pydp-control (--own-all);
tests/traffic.py keeps long-lived UDP flows going (one datagram per flow every ~0.5 s) while a raw sender in the
client namespace floods the cluster IP with TCP SYNs from random sources and ports, several times the table's
size. Expected outcome:

* the established flows keep reaching their edge, every datagram, and stay the same flow-table entries (created
  before the flood): a full bucket evicts half-open (SYN) flows first, so the flood only pushes out its own kind.
  One edge is drained before the flood: its flows reach it only as long as their entries survive (a re-created
  entry would be hashed to another edge), which makes any eviction of an established flow visible;
* the evictions are counted (worker counters, table counters, metrics, one rate-limited log event);
* the occupancy alarm fires (log event, metric, pydpctl status) and clears once the SYN flows have expired;
* nothing crashes: the data plane and the daemon are alive and answering afterwards.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
import time
from pathlib import Path

import pytest

from netlab import (LB_MAC, VIP, appliance_toml, cluster_toml, control_lab, edge_toml, eventually, netns, ns_run,
                    pydpctl, report, scrape, traffic, veth)
from netlab import EDGE_MACS as MACS

pytestmark = [pytest.mark.dpdk, pytest.mark.netns]

CAPACITY = 6144                   # 1024 buckets of six ways: the table holds exactly what is asked
SYN_TIMEOUT = 6
FLOOD = 40000                     # SYNs per burst: six and a half times the table
FLOWS, ROUNDS, PPS = 64, 44, 128  # established flows: one datagram per flow every 0.5 s for 22 s
METRICS = "127.0.0.1:19474"

APPLIANCE = appliance_toml(
    cluster_toml("web", VIP, 1, "".join(edge_toml(e, f"198.51.100.2{e[1]}", MACS[e]) for e in MACS)),
    flow_capacity=CAPACITY, timeouts={"tcp_syn": SYN_TIMEOUT})

# Run in the client namespace: `python3 -c SYN_FLOOD COUNT LB_MAC VIP TESTS_DIR SEED`. TCP SYNs to VIP:80 from random sources in
# 192.0.2.0/24 and random ports (the established flows come from 203.0.113.0/24), sent as fast as one socket goes.
SYN_FLOOD = r"""
import random, socket, struct, sys
sys.path.insert(0, sys.argv[4])
from traffic import csum, mac_bytes
count, lb, vip = int(sys.argv[1]), mac_bytes(sys.argv[2]), socket.inet_aton(sys.argv[3])
me = mac_bytes("02:00:00:00:aa:02")
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("c0", 0))
rnd = random.Random(int(sys.argv[5]))
for i in range(count):
    src = bytes([192, 0, 2, rnd.randrange(1, 255)])
    tcp = struct.pack("!HHIIBBHHH", rnd.randrange(1024, 65536), 80, rnd.getrandbits(32), 0, 5 << 4, 0x02, 64240,
                      0, 0)
    tcp = tcp[:16] + struct.pack("!H", csum(src + vip + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), i & 0xFFFF, 0, 64, 6, 0, src, vip)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    s.send(lb + me + b"\x08\x00" + ip + tcp)
"""


@pytest.fixture
def lab(tmp_path):
    with contextlib.ExitStack() as stack:
        lb_ns = stack.enter_context(netns("pydpt-slb"))
        cl_ns = stack.enter_context(netns("pydpt-scl"))
        veth(lb_ns, "lb0", "c0", ns_b=cl_ns, mac_a=LB_MAC)
        dp, ctl, _ = control_lab(stack, lb_ns, APPLIANCE, tmp_path, METRICS)
        yield {"lb_ns": lb_ns, "cl_ns": cl_ns, "dp": dp, "ctl": ctl, "tmp": tmp_path}


def ctl_out(lab, *args) -> str:
    return pydpctl("--socket", lab["ctl"].socket, *args).stdout


def test_syn_flood_fills_the_table_and_established_flows_keep_their_edge(lab, request):
    dp, ctl, tmp = lab["dp"], lab["ctl"], lab["tmp"]
    region = dp.region
    start_file = tmp / "started"
    result: dict = {}

    def established():
        result["report"] = traffic(lab["cl_ns"], tmp, "--iface", "c0", "--lb-mac", LB_MAC, "--vip", VIP, "--flows",
                                   FLOWS, "--rounds", ROUNDS, "--pps", PPS, "--start-file", start_file,
                                   "--settle", 1.0, timeout=120)

    t = threading.Thread(target=established)
    t.start()
    try:
        eventually(start_file.exists, 30, "traffic.py to start")
        eventually(lambda: json.loads(ctl_out(lab, "flows", "--client", "203.0.113.0/24", "--limit", "0",
                                              "--json"))["matched"] == FLOWS, 10, "the established flows")
        ctl_out(lab, "edge", "drain", "web", "e1")       # e1 keeps its flows only as long as their entries live
        time.sleep(1.0)                                  # a round or two on the drained edge
        created = {(f["client"], f["client_port"]): f["age_s"] for f in
                   json.loads(ctl_out(lab, "flows", "--client", "203.0.113.0/24", "--json"))["flows"]}
        t_flood = time.monotonic()
        tool_dir = str(Path(__file__).resolve().parent.parent)
        sent = 0
        for seed in range(4):          # a loaded machine's port may drop much of a burst: send more until full
            ns_run(lab["cl_ns"], sys.executable, "-c", SYN_FLOOD, str(FLOOD), LB_MAC, VIP, tool_dir, str(seed),
                   timeout=120)
            sent += FLOOD
            if region.flow_tables()["live"] >= 0.97 * CAPACITY:
                break
        flood_s = time.monotonic() - t_flood
        tables = region.flow_tables()
        ws = region.worker_stats()
        evictions = int(ws["flow_evictions"].sum())
        syn_rx = int(ws["cls_tcp"].sum())
        assert tables["capacity"] == CAPACITY
        assert tables["live"] / CAPACITY > 0.95, tables          # the flood filled the table
        assert evictions > 0 and tables["evicted"] == evictions, (evictions, tables)
        alarm = eventually(lambda: ctl.events("flow_table_alarm"), 10, "the flow_table_alarm event")
        assert alarm[0]["level"] == "warning" and alarm[0]["worker"] == 0 and alarm[0]["occupancy_pct"] > 90
        st = json.loads(ctl_out(lab, "status", "--json"))
        assert st["flow_table"]["alarm"] is True and st["flow_table"]["workers"][0]["alarm"] is True, st["flow_table"]
        assert "ALARM: worker 0" in ctl_out(lab, "status")
        text = scrape(lab["lb_ns"], METRICS)
        assert 'pydp_flow_table_alarm{worker="0"} 1.0' in text, text[-3000:]
        m = re.search(r'^pydp_flow_table_evicted_flows_total\{worker="0"\} (\S+)$', text, re.M)
        assert m and float(m[1]) >= evictions, text[-3000:]
        assert "pydp_flow_table_eviction_rate" not in text      # a rate is the query's job: rate(..._total[1m])
    finally:
        t.join(150)
    rep = result["report"]
    # each established flow stayed on one edge (those on the drained e1 too) and kept being delivered after the
    # flood; the only losses are frames the flooded port itself dropped while the flood ran (the af_packet ring)
    assert rep["duplicates"] == 0
    assert rep["missing"] <= 0.05 * rep["sent"], rep["missing_first"]
    late = {f for f, r in map(tuple, rep["missing_first"]) if r >= ROUNDS - 4}
    assert not late, f"flows {late} lost datagrams in the last rounds, well after the flood"
    per_edge = {}
    for flow, macs in rep["per_flow"].items():
        assert len(macs) == 1, f"flow {flow} was split over {macs} (its entry was evicted and re-hashed)"
        per_edge.setdefault(next(iter(macs)), []).append(flow)
    assert per_edge.get(MACS["e1"]), "no established flow was on e1"
    # and they are still the entries made before the flood
    now = {(f["client"], f["client_port"]): f["age_s"] for f in
           json.loads(ctl_out(lab, "flows", "--client", "203.0.113.0/24", "--json"))["flows"]}
    assert set(now) == set(created)
    for key, age in now.items():
        assert age >= created[key], f"flow {key} was created again after the flood ({age} s < {created[key]} s)"
    # the eviction log event is rate-limited: one for the whole flood
    ev = ctl.events("flow_evictions")
    assert len(ev) == 1 and ev[0]["level"] == "warning" and ev[0]["evicted"] > 0, ev
    # the SYN flows expire: the alarm clears (INFO, once)
    cleared = eventually(lambda: ctl.events("flow_table_alarm_cleared"), SYN_TIMEOUT + 15, "the alarm to clear")
    assert cleared[0]["level"] == "info" and cleared[0]["occupancy_pct"] < 85, cleared
    assert len(ctl.events("flow_table_alarm")) == 1
    assert 'pydp_flow_table_alarm{worker="0"} 0.0' in scrape(lab["lb_ns"], METRICS)
    # nothing crashed
    assert dp.proc.poll() is None and ctl.proc.poll() is None
    assert json.loads(ctl_out(lab, "status", "--json"))["dataplane"]["alive"] is True
    report(request, f"\nSYN flood: {sent} SYNs sent in {flood_s:.2f} s, {syn_rx} reached the worker, "
                    f"{evictions} evictions, table {tables['live']}/{CAPACITY}; {FLOWS} established flows "
                    f"({len(per_edge.get(MACS['e1'], []))} on the drained edge) kept their edge and their entries; "
                    f"{rep['missing']} of {rep['sent']} of their datagrams lost on the flooded port")
