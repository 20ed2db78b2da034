"""The scale-out lab (issue 15) end to end: three appliances (pydp-dataplane on af_packet + pydp-control with [bgp],
BFD, failover = "bgp", flow sync with each other) announce cluster web to an upstream router running BIRD 2, which
spreads the clients behind it over them with ECMP (the kernel's L4 hash); three nginx edges answer the clients
directly through the router (DSR).

One lab for the module. Every test leaves it as it found it (three appliances announcing, three edges): a killed
appliance is restarted, a drained one undrained, a removed edge added back. Figures (spread, reroute time, surviving
connections) are printed on the terminal; speed is not asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from control.lab import topology as T
from control.lab.appliance import pydpctl
from control.lab.demo import LB_PORT, REPLIES_V4, SYNS, Capture, ecmp_hops, lb_syns
from control.lab.lab import Lab
from control.lab.load import Load
from netlab import eventually, lab_name, report, running_lab

pytestmark = [pytest.mark.dpdk, pytest.mark.netns]

N = 3
SPREAD_TOLERANCE = 0.15          # each appliance's share of new connections within ±15% of 1/N


@pytest.fixture(scope="module")
def lab():
    yield from running_lab(T.Topology(lab_name(), edges=3, clients=64, scale_out=N))


@pytest.fixture
def steady(lab):
    """Each test starts (and is left) with every appliance running and announced and every edge up."""
    addrs = [s.addr for s in lab.topo.appliance_specs]
    lab.wait_route(addrs, 60)
    yield lab
    for a in lab.appliances.values():
        if a.ctl.proc is None or a.ctl.proc.poll() is not None or a.dp.proc is None or a.dp.proc.poll() is not None:
            lab.restart_appliance(a)
        else:
            a.pydpctl("appliance", "undrain", check=False)
    for a in lab.appliances.values():
        for name in set(lab.edges) - set(lab.edge_health(a)):        # an edge a test removed
            spec = lab.edges[name].spec
            a.pydpctl("edge", "add", "web", f"{name}={spec.ip}@{spec.mac}")
    for a in lab.appliances.values():
        lab.wait_edges_up(a, 30)
    lab.wait_route(addrs, 60)


def others(lab: Lab, name: str) -> list[str]:
    return [s.addr for s in lab.topo.appliance_specs if s.name != name]


def addr(lab: Lab, name: str) -> str:
    return next(s.addr for s in lab.topo.appliance_specs if s.name == name)


@pytest.fixture(scope="module")
def spread(lab, tmp_path_factory):
    """One run of 12 s of new connections (75/s) beside 60 long-lived ones, with a capture on every appliance's
    bridge port and on the router's: shared by the spread and the DSR tests."""
    lab.wait_route([s.addr for s in lab.topo.appliance_specs], 60)
    out = tmp_path_factory.mktemp("spread")
    caps = {n: Capture(lab, f"p{n}", out / f"lb{n}.pcap", LB_PORT) for n in lab.appliances}
    cap_rt = Capture(lab, "pr", out / "router.pcap", REPLIES_V4)
    load = Load(lab, vip=T.VIP, conns=60, new_rate=75).start()
    t0 = time.time()
    time.sleep(12)                       # the measuring window (the run's length, not a wait for something)
    t1 = time.time()
    summary = load.stop()
    for c in caps.values():
        c.stop()
    new = load.new(t0, t1)
    edges = sorted(lab.edges)
    syns = lb_syns(caps, new)
    replies = {n: len(c.times(REPLIES_V4)) for n, c in caps.items()}
    return {"syns": syns, "replies_via_lb": replies, "replies_at_router": cap_rt.stop(), "new": new,
            "summary": summary, "edge_share": load.share(t0, t1), "broken": load.broken(), "edges": edges}


def test_ecmp_spreads_new_connections_evenly_over_the_appliances(spread, request):
    new = spread["new"]
    syns = {n: len(v) for n, v in spread["syns"].items()}
    total = sum(syns.values())
    ok = [e for e in new if e["edge"]]
    report(request, f"ECMP over {N} appliances: new connections per appliance {syns} of {len(new)} "
                    f"({len(ok)} answered); edges {spread['edge_share']}")
    assert len(new) >= 200 and len(ok) == len(new), f"new connections failed: {len(new) - len(ok)}"
    # the SYN of a new connection reached one appliance, never two (the captures may miss a few under load)
    seen = [key for v in spread["syns"].values() for key in v]
    assert len(seen) == len(set(seen)) >= 0.95 * len(new), (len(seen), len(set(seen)), len(new))
    for name, n in syns.items():
        share = n / total
        assert abs(share * N - 1) <= SPREAD_TOLERANCE, f"appliance {name}: {share:.1%} of new connections ({syns})"
    # behind the appliances, Maglev spreads them over every edge
    assert set(spread["edge_share"]) == set(spread["edges"])


def test_dsr_replies_never_cross_an_appliance(spread, request):
    report(request, f"DSR: reply packets on the appliances' ports {spread['replies_via_lb']}, at the router "
                    f"{spread['replies_at_router']}")
    assert spread["replies_at_router"] > len(spread["new"]), "the clients' replies did not pass the router"
    assert all(len(v) > 0 for v in spread["syns"].values())
    assert spread["replies_via_lb"] == {n: 0 for n in spread["syns"]}
    assert spread["broken"] == []


def test_appliance_killed_connections_on_surviving_edges_survive(steady, request):
    lab = steady
    load = Load(lab, vip=T.VIP, conns=120, new_rate=20).start()
    try:
        rows = load.open_conns()
        via = dict(zip([c["id"] for c in rows], ecmp_hops(lab, rows)))
        victim = lab.appliances["B"]
        t_kill = lab.kill_appliance(victim)
        eventually(lambda: addr(lab, "B") not in lab.router.nexthops(T.VIP), 15, "the router to drop appliance B",
                   interval=0.01)
        reroute = time.time() - t_kill
        assert lab.router.nexthops(T.VIP) == others(lab, "B")
        time.sleep(5)                    # every connection makes ~10 requests through the survivors
    finally:
        load.stop()
    check = load.byte_check()
    through = [i for i, lb in via.items() if lb == "B"]
    lost = [e for e in load.new(t_kill - 1) if e["err"] or (e["connect_s"] or 0) > 0.9]
    report(request, f"appliance B killed: route rerouted in {reroute:.3f} s; {check['survived']} of {check['total']} "
                    f"long-lived connections survived ({len(through)} went through B); new connections whose "
                    f"first SYN was lost: {len(lost)}")
    assert through, "no connection went through the killed appliance"
    assert check["survived"] == check["total"] == 120, [r for r in check["rows"] if not r["equal"]][:5]
    assert load.broken() == []


def test_appliance_drained_gets_no_new_connections_established_continue(steady, tmp_path, request):
    lab = steady
    c = lab.appliances["C"]
    load = Load(lab, vip=T.VIP, conns=90, new_rate=30).start()
    try:
        rows = load.open_conns()
        via = dict(zip([r["id"] for r in rows], ecmp_hops(lab, rows)))
        t0 = time.time()
        c.pydpctl("appliance", "drain")
        eventually(lambda: lab.router.nexthops(T.VIP) == others(lab, "C"), 15, "the router to drop appliance C",
                   interval=0.02)
        withdrawn = time.time() - t0
        cap = Capture(lab, "pC", tmp_path / "drained.pcap", SYNS)
        t1 = time.time()
        time.sleep(4)                    # a window of new connections while C is drained
        syns = [t for t in cap.times() if t >= t1]
        cap.stop()
        st = c.status()
        c.pydpctl("appliance", "undrain")
        lab.wait_route([s.addr for s in lab.topo.appliance_specs], 30)
        time.sleep(1)
    finally:
        load.stop()
    check = load.byte_check()
    new_during = [e for e in load.new(t1, t1 + 4) if e["edge"]]
    report(request, f"appliance C drained: withdrawn in {withdrawn:.3f} s; SYNs to it while drained: {len(syns)} "
                    f"(of {len(new_during)} new connections); {check['survived']} of {check['total']} long-lived "
                    f"connections went on ({sum(1 for v in via.values() if v == 'C')} had gone through C)")
    assert syns == [] and len(new_during) >= 60
    assert st["bgp"]["clusters"]["web"]["announced"] is False
    assert check["survived"] == check["total"] == 90
    assert load.broken() == []


def test_edge_removed_then_appliance_killed_flow_sync_keeps_flows(steady, request):
    lab = steady
    load = Load(lab, vip=T.VIP, conns=120, new_rate=10).start()
    try:
        by_edge = load.conns_by_edge()
        # the edge set changes on every appliance (e3 removed; and a new edge added, if the lab has none beyond
        # e3 yet, so that Maglev moves a good part of every edge's slots): the flows stay on their edges
        for a in lab.appliances.values():
            a.pydpctl("edge", "remove", "web", "e3")
        if len(lab.edges) == 3:
            lab.add_edge()
        want = set(lab.edges) - {"e3"}
        eventually(lambda: all({n for n, h in lab.edge_health(a).items() if h == "up"} == want
                               for a in lab.appliances.values()), 15, f"{sorted(want)} up, e3 gone everywhere")
        time.sleep(2)                    # flows keep going to their edges after the change (and sync refreshes)
        installed = {n: a.status()["flowsync"]["counters"]["flows_installed"] for n, a in lab.appliances.items()}
        rows = [r for r in load.open_conns() if r["edge"] != "e3"]
        via = dict(zip([r["id"] for r in rows], ecmp_hops(lab, rows)))
        t_kill = lab.kill_appliance(lab.appliances["A"])
        eventually(lambda: addr(lab, "A") not in lab.router.nexthops(T.VIP), 15, "the router to drop appliance A",
                   interval=0.02)
        after = dict(zip([r["id"] for r in rows], ecmp_hops(lab, rows)))
        time.sleep(5)                    # every connection makes ~10 requests through the survivors
    finally:
        load.stop()                      # the fixture restarts A and adds e3 back everywhere
    check = load.byte_check()
    kept = [r for r in check["rows"] if r["edge"] != "e3"]
    moved = sum(1 for i in via if via[i] != after.get(i))
    report(request, f"edge e3 removed (edges now {sorted(want)}), then appliance A killed: "
                    f"{sum(r['equal'] and r['broken'] is None for r in kept)} of {len(kept)} connections on the "
                    f"other edges survived; {moved} of them changed appliance; connections per edge before "
                    f"{by_edge}; flows installed from peers {installed}")
    assert moved > 0 and all(n > 0 for n in installed.values())
    assert all(r["equal"] and r["broken"] is None for r in kept), [r for r in kept if not r["equal"]][:5]


def test_router_restarted_announcements_come_back(steady, request):
    lab = steady
    t = lab.router.kill()
    lab.router.flush_routes()            # what a reboot does to its FIB
    assert lab.router.nexthops(T.VIP) == []
    lab.router.start()
    lab.record("pids", lab.router.proc.pid)
    back = lab.wait_route([s.addr for s in lab.topo.appliance_specs], 60)
    sessions = eventually(lambda: (lambda s: s if all(v.get("bfd") == "Up" and v.get("bgp_state") == "Established"
                                                      for v in s.values()) and len(s) == N else None)(
        lab.router.sessions()), 30, "every session established with BFD up")
    report(request, f"router restarted: every announcement back after {time.time() - t:.2f} s "
                    f"(route {back:.2f} s after BIRD started)")
    assert set(sessions) == {f"lb{s.name}" for s in lab.topo.appliance_specs}
    ok = lab.client("curl", "-s", "-m", "3", f"http://{T.VIP}/")
    assert ok.returncode == 0 and ok.stdout.startswith("edge "), ok


def test_bad_bgp_section_refused_with_a_clear_error(lab, tmp_path):
    a = lab.appliances["A"]
    before = tmp_path / "before.toml"
    a.pydpctl("export", before)
    text = before.read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace(f"local_as = {T.APPLIANCE_AS}", "local_as = 0"))
    assert bad.read_text() != text
    p = a.pydpctl("import", bad, check=False)
    assert p.returncode != 0 and "bgp.local_as" in (p.stderr + p.stdout), p
    # a bgp cluster without any [bgp] section
    nobgp = tmp_path / "nobgp.toml"
    head, rest = text.split("[bgp]", 1)
    nobgp.write_text(head + rest[rest.index("[[cluster]]"):])
    p = pydpctl("import", nobgp, db=tmp_path / "x.db", check=False)
    assert p.returncode != 0 and "bgp" in (p.stderr + p.stdout), p
    after = tmp_path / "after.toml"
    a.pydpctl("export", after)
    assert after.read_text() == text


def test_status_shows_the_scaleout_lab(steady):
    lab = steady
    p = subprocess.run([sys.executable, "-P", "-m", "control.lab.cli", "status", "--name", lab.topo.name, "--json"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    st = json.loads(p.stdout)
    assert st["ready"] and st["router"]["route"][T.VIP] == [s.addr for s in lab.topo.appliance_specs]
    assert {n: s["bfd"] for n, s in st["router"]["sessions"].items()} == {f"lb{n}": "Up" for n in "ABC"}
    for name in "ABC":
        a = st["appliances"][name]
        assert a["clusters"]["web"]["failover"] == "bgp" and a["clusters"]["web"]["announced"] is True
        assert [s["state"] for s in a["bgp_sessions"]] == ["Established"]
    text = subprocess.run([sys.executable, "-P", "-m", "control.lab.cli", "status", "--name", lab.topo.name],
                          capture_output=True, text=True, timeout=60).stdout
    assert f"router route {T.VIP}: ECMP via 198.51.100.2, 198.51.100.3, 198.51.100.4" in text
    assert "bird" in st["namespaces"][lab.topo.router_ns][0]["cmd"]
