"""Flow-table management end to end: a real pydp-dataplane (two workers on an af_packet port in a namespace), a
real pydp-control (--own-all), tests/traffic.py for the UDP flows, pydpctl for every command.

    lb namespace:  lb0 (the data port)      client namespace: c0 (traffic.py sends and sees the DSR output)

The edges are MAC addresses only (DSR rewrites the destination MAC; traffic.py records which MAC each datagram
reached), with no health check: the tests move flows by flushes and drains alone. UDP flows time out after
UDP_TIMEOUT seconds, so "the flows of a draining edge end" can be watched in the test's time.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time

import pytest

from netlab import (LB_MAC, OTHER_TOML, VIP, appliance_toml, cluster_toml, control_lab, edge_toml, eventually, netns,
                    pydpctl, scrape, traffic, veth)
from netlab import EDGE_MACS as MACS

pytestmark = [pytest.mark.dpdk, pytest.mark.netns]

EDGE_OF = {m: e for e, m in MACS.items()}
UDP_TIMEOUT = 15
METRICS = "127.0.0.1:19473"

APPLIANCE = appliance_toml(
    cluster_toml("web", VIP, 1, "".join(edge_toml(e, f"198.51.100.2{e[1]}", MACS[e]) for e in MACS)), OTHER_TOML,
    lcores="0@0,1@1,2@1", flow_capacity=4096, timeouts={"udp": UDP_TIMEOUT})


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flows-live")
    with contextlib.ExitStack() as stack:
        lb_ns = stack.enter_context(netns("pydpt-flb"))
        cl_ns = stack.enter_context(netns("pydpt-fcl"))
        veth(lb_ns, "lb0", "c0", ns_b=cl_ns, mac_a=LB_MAC)
        dp, ctl, db = control_lab(stack, lb_ns, APPLIANCE, tmp, METRICS)
        yield {"lb_ns": lb_ns, "cl_ns": cl_ns, "dp": dp, "ctl": ctl, "tmp": tmp, "db": db}


def cli(lab, *args, ok: bool = True, daemon: bool = True) -> subprocess.CompletedProcess:
    """pydpctl through the lab's daemon, or (daemon=False) straight on the shared memory and the store."""
    where = (["--socket", lab["ctl"].socket] if daemon else
             ["--socket", str(lab["tmp"] / "no-daemon.sock"), "--db", str(lab["db"])])
    extra = ["--shm", lab["dp"].shm] if not daemon and args[0] in ("flows", "status") else []
    return pydpctl(*where, *args, *extra, check=ok)


def send(lab, flows: int, first_port: int = 20000) -> dict[int, str]:
    """flows UDP flows, one datagram each: {flow: edge name it reached}."""
    report = traffic(lab["cl_ns"], lab["tmp"], "--iface", "c0", "--lb-mac", LB_MAC, "--vip", VIP, "--flows", flows,
                     "--rounds", 1, "--pps", 3000, "--settle", 0.5)
    assert report["missing"] == 0 and report["duplicates"] == 0, report["missing_first"]
    return {int(f): EDGE_OF[next(iter(m))] for f, m in report["per_flow"].items()}


def edge_counts(lab, daemon: bool = True) -> dict[str, int]:
    out = {}
    for e in MACS:
        res = json.loads(cli(lab, "flows", "--cluster", "web", "--edge", e, "--limit", "0", "--json",
                             daemon=daemon).stdout)
        out[e] = res["matched"]
    return out


def web_edge(status: dict, name: str) -> dict:
    return next(e for c in status["clusters"] if c["name"] == "web" for e in c["edges"] if e["name"] == name)


def test_flush_an_edge_then_all_reports_each_worker_and_changes_nothing_else(lab):
    dp = lab["dp"]
    before = send(lab, 300)
    counts = edge_counts(lab)
    assert sum(counts.values()) == 300 and all(counts.values()), counts
    gen = dp.region.generation
    inserts = int(dp.region.worker_stats()["flow_inserts"].sum())

    res = json.loads(cli(lab, "flows", "flush", "--cluster", "web", "--edge", "e1", "--json").stdout)
    assert res["via"] == "pydp-control" and res["scope"] == {"all": False, "cluster": "web", "edge": "e1"}
    assert res["cleared"] == counts["e1"], (res, counts)
    assert [w["worker"] for w in res["workers"]] == [0, 1]
    assert sum(w["cleared"] for w in res["workers"]) == res["cleared"]
    assert all(w["cleared"] > 0 for w in res["workers"]), res       # both workers held some of e1's flows
    after = edge_counts(lab)
    assert after == {"e1": 0, "e2": counts["e2"], "e3": counts["e3"]}, after
    assert dp.region.generation == gen                               # no config was published
    assert int(dp.region.worker_stats()["flow_flushed"].sum()) == res["cleared"]
    ev = lab["ctl"].events("flows_flushed")
    assert ev and ev[-1]["cleared"] == res["cleared"] and ev[-1]["edge"] == "e1", ev

    # bad requests: clear errors, nothing flushed
    for args, msg in ((("--cluster", "nope"), "no cluster 'nope'"), (("--cluster", "web", "--edge", "e9"),
                                                                      "no edge 'e9' in cluster 'web'"),
                      (("--edge", "e1"), "--edge needs --cluster"), ((), "say what to flush")):
        p = cli(lab, "flows", "flush", *args, ok=False)
        assert p.returncode == 1 and msg in p.stderr, (args, p.stderr)
    assert edge_counts(lab) == after

    # the next packets of e1's flows are new flows, hashed again (to e1: nothing else changed); the others hit
    again = send(lab, 300)
    assert again == before
    new = int(dp.region.worker_stats()["flow_inserts"].sum()) - inserts
    assert new == counts["e1"], (new, counts)

    # without the daemon: straight through the shared memory, every flow
    res = json.loads(cli(lab, "flows", "flush", "--all", "--json", daemon=False).stdout)
    assert res["via"] == "shared memory" and res["scope"]["all"] is True and res["cleared"] == 300, res
    assert edge_counts(lab, daemon=False) == {"e1": 0, "e2": 0, "e3": 0}
    text = cli(lab, "flows", "flush", "--cluster", "other").stdout
    assert "the flows of cluster 'other': 0 flow(s) cleared (worker 0: 0, worker 1: 0)" in text, text


def test_drain_timeout_moves_the_flows_and_survives_a_daemon_restart(lab):
    ctl = lab["ctl"]
    cli(lab, "cluster", "edit", "web", "--drain-timeout", "4")
    before = send(lab, 300, )
    on_e2 = [f for f, e in before.items() if e == "e2"]
    assert on_e2
    t0 = time.time()
    cli(lab, "edge", "drain", "web", "e2")
    d = eventually(lambda: web_edge(json.loads(cli(lab, "status", "--json").stdout), "e2")["drain"], 10,
                   "the drain in status")
    assert d["timeout_s"] == 4 and 0 < d["time_left_s"] <= 4 and d["remaining_flows"] == len(on_e2), d
    assert t0 - 1 <= d["since"] <= time.time() and not d["drained"]
    show = cli(lab, "edge", "show", "web", "e2").stdout
    assert "Draining since:" in show and "Drain timeout:  4 s" in show and "Flows left:" in show, show

    # the daemon restarts meanwhile: the drain's start comes from the store, the countdown goes on
    ctl.stop()
    ctl.start()
    ev = eventually(lambda: ctl.events("drain_timeout"), 15, "the drain_timeout event")[-1]
    assert ev["cluster"] == "web" and ev["edge"] == "e2" and ev["flows_moved"] == len(on_e2), ev
    assert abs(ev["since"] - d["since"]) < 0.01
    fired_after = time.time() - d["since"]
    assert fired_after >= 4, fired_after
    st = web_edge(json.loads(cli(lab, "status", "--json").stdout), "e2")["drain"]
    assert st["expired"] and st["drained"] and st["remaining_flows"] == 0 and st["time_left_s"] == 0, st
    drained = ctl.events("edge_drained")
    assert drained and drained[-1]["edge"] == "e2" and drained[-1]["by"] == "drain timeout", drained
    assert "timed out" in cli(lab, "status").stdout or "drained" in cli(lab, "status").stdout
    text = scrape(lab["lb_ns"], METRICS)
    assert 'pydp_edge_drain_timeouts_total{cluster="web",edge="e2"} 1.0' in text, text[-3000:]
    assert f'pydp_edge_drain_moved_flows_total{{cluster="web",edge="e2"}} {float(len(on_e2))}' in text

    # e2's flows reach the other edges at their next packet; every other flow keeps its edge
    after = send(lab, 300)
    for f, e in after.items():
        if f in on_e2:
            assert e != "e2", f"flow {f} still reaches the drained edge"
        else:
            assert e == before[f], f"flow {f} moved from {before[f]} to {e}"
    cli(lab, "edge", "undrain", "web", "e2")
    cli(lab, "cluster", "edit", "web", "--drain-timeout", "0")


def test_edge_whose_flows_end_is_reported_drained(lab):
    """No drain timeout: the flows of a draining edge stay until they end on their own (UDP timeout), then the edge
    is reported drained."""
    ctl = lab["ctl"]
    cli(lab, "flows", "flush", "--all")
    before = send(lab, 200)
    on_e3 = sum(1 for e in before.values() if e == "e3")
    cli(lab, "edge", "drain", "web", "e3")
    d = eventually(lambda: web_edge(json.loads(cli(lab, "status", "--json").stdout), "e3")["drain"], 10,
                   "the drain in status")
    assert d["timeout_s"] == 0 and d["time_left_s"] is None and d["remaining_flows"] == on_e3, d
    ev = eventually(lambda: [e for e in ctl.events("edge_drained") if e["edge"] == "e3"], UDP_TIMEOUT + 10,
                    "e3 drained")[-1]
    assert ev["by"] == "its flows ended" and ev["after_s"] >= UDP_TIMEOUT - 2, ev
    st = web_edge(json.loads(cli(lab, "status", "--json").stdout), "e3")["drain"]
    assert st["drained"] and not st["expired"] and st["remaining_flows"] == 0, st
    assert not ctl.events("drain_timeout") or all(e["edge"] != "e3" for e in ctl.events("drain_timeout"))
    cli(lab, "edge", "undrain", "web", "e3")
