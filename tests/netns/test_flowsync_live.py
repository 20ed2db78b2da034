"""Flow sync between two real appliances (control/lab/failover.py with sync=True: real data planes on af_packet,
real daemons with CARP, flow sync over the management link mg0).

One story on one lab, one test (its steps depend on each other, so they are one test, not tests in an order):
1. 64 client flows (64 UDP source ports) open while A is master; the edge sniffer records which edge each reached.
2. B, the backup, holds a copy of each flow pinned to the same edge NAME (read from B's own shared memory).
3. e3 joins the cluster on both appliances: Maglev now chooses another edge for about a third of the old flows.
4. A dies (SIGKILL, data plane and daemon). B takes over: every old flow still reaches its original edge (sniffer),
   while new flows follow the new table (some reach e3).
5. While A is down, a stranger on the management link sends B garbage, forged MACs, replays and an oversized
   frame: all counted, nothing installed, forwarding undisturbed.
6. A comes back (as backup: preempt is off): B connects and sends a full resync, which A installs.
7. A TCP connection through B: its NEW (SYN) and END (FIN) events reach A, whose copy ends in state fin.
"""

from __future__ import annotations

import sys
import time

import pytest

from control.lab.failover import CLIENT_IP, EDGES, MGMT, SPARE_EDGES, SYNC_PORT, VIP, FailoverLab, Traffic
from netlab import RAW_SENDER, eventually, link_mac, metrics, ns_run, pydpctl, report

pytestmark = [pytest.mark.dpdk, pytest.mark.netns]

FLOWS = 64
PPS = 640                        # 10 datagrams a second per flow
EDGE_NAME = {mac: name for name, (_ip, mac) in {**EDGES, **SPARE_EDGES}.items()}


@pytest.fixture(scope="module")
def lab(tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("flowsync")
    with FailoverLab(tmp, preempt=False, sync=True) as lab:
        lab.notes = []
        lab.a.start()
        lab.b.start()
        with Traffic(lab, pps=PPS, flows=0) as traffic:     # the sniffer now; the flows once A is master
            lab.traffic = traffic
            try:
                yield lab
            finally:
                report(request, "\n".join(["", "pydp flow sync (two appliances, 64 flows):", *lab.notes]))


def sync_status(ap) -> dict:
    return ap.status()["flowsync"]


def counter(ap, name: str) -> int:
    return sync_status(ap)["counters"][name]


def pinned(ap) -> dict[int, tuple[str | None, int]]:
    """{client source port: (edge name, flow hash)} of cluster web's UDP flows in ap's own flow tables."""
    from control import observe

    r = ap.dp.region
    cl = observe.clusters(r)["web"]
    names = {(e["slot"], e["uid"]): n for n, e in cl["edges"].items()}
    out = {}
    for w in range(r.nb_workers):
        fl, _ = observe._snapshot(r, w)
        for f in fl[(fl["cluster"] == cl["slot"]) & (fl["cluster_uid"] == cl["uid"]) & (fl["key"]["proto"] == 17)]:
            sport = int.from_bytes(int(f["key"]["sport"]).to_bytes(2, "little"), "big")
            out[sport] = (names.get((int(f["edge"]), int(f["edge_uid"]))), int(f["hash"]))
    return out


def web_flows_of(ap) -> dict[int, str | None]:
    return {p: e for p, (e, _h) in pinned(ap).items()}


def _a_flows_open_on_a_and_reach_b(lab):
    a, b = lab.a, lab.b
    a.wait_state("master", 15)
    b.wait_state("backup", 5)
    eventually(lambda: sync_status(a)["sending"]["state"] == "connected" and
               sync_status(b)["sending"]["state"] == "connected", 15, "both flow-sync connections")
    lab.t_open = time.time()
    lab.traffic.add_flows(FLOWS, PPS)
    eventually(lambda: len(lab.traffic.edges_by_flow(lab.t_open, via=a.mac)) >= FLOWS, 15,
               f"{FLOWS} flows through A")
    # bounded on purpose: two more datagrams a flow, each must stay on its edge
    time.sleep(1.0)
    seen = lab.traffic.edges_by_flow(lab.t_open, via=a.mac)
    assert all(len(e) == 1 for e in seen.values()), f"a flow reached two edges through A: {seen}"
    lab.original = {sport: EDGE_NAME[next(iter(e))] for sport, e in seen.items()}
    assert set(lab.original.values()) == {"e1", "e2"}, lab.original
    # B's own tables: every flow, pinned to the edge A chose (by name), installed through the command rings
    eventually(lambda: all(web_flows_of(b).get(p) == e for p, e in lab.original.items()), 10,
               "B's copies of A's flows")
    st = sync_status(b)["counters"]
    assert st["flows_installed"] >= FLOWS and st["rx_auth_failures"] == 0, st
    assert sync_status(a)["counters"]["flows_sent"] >= FLOWS
    installs = int(b.dp.region.worker_stats()["flow_installs"].sum())
    assert installs >= FLOWS
    lab.notes.append(f"  B installed {st['flows_installed']} synced flows ({installs} worker installs)")


def _b_edge_set_changes_on_both(lab):
    a, b = lab.a, lab.b
    ip, mac = SPARE_EDGES["e3"]
    for ap in (a, b):
        pydpctl("edge", "add", "web", f"e3={ip}@{mac}", socket=ap.ctl.socket)
    from control import observe
    from pydp._ffi import lib

    def moved() -> int:
        """Old flows for which B's Maglev table (with e3) now names another edge than their own."""
        r = b.dp.region
        cl = observe.clusters(r)["web"]
        if "e3" not in cl["edges"]:
            return 0
        table = r.maglev_table(cl["slot"])
        names = {e["slot"]: n for n, e in cl["edges"].items()}
        hashes = {p: h for p, (_e, h) in pinned(b).items()}
        out = 0
        for sport, edge in lab.original.items():
            h = hashes.get(sport)
            if h is not None and names[int(table[lib.pydp_maglev_slot(h, len(table))])] != edge:
                out += 1
        return out

    lab.moved = eventually(moved, 10, "B's table with e3")
    assert lab.moved >= FLOWS // 8, f"only {lab.moved} of {FLOWS} flows would move: the test proves little"
    lab.notes.append(f"  after adding e3, Maglev would move {lab.moved} of the {FLOWS} old flows")
    # A keeps the old flows on their edges meanwhile (its own flow table)
    t = time.time()
    # bounded on purpose: a second of traffic in which no old flow may move
    time.sleep(1.0)
    seen = lab.traffic.edges_by_flow(t, via=a.mac)
    assert {p: EDGE_NAME[next(iter(e))] for p, e in seen.items() if p in lab.original} == \
        {p: lab.original[p] for p in seen if p in lab.original}


def _c_takeover_keeps_every_old_flow_on_its_edge(lab):
    a, b = lab.a, lab.b
    time.sleep(1.0)                                  # bounded on purpose: the flow events of the last second reach B
    t_kill = a.kill()
    b.wait_state("master", 10)
    t_b = lab.traffic.wait_via(b.mac, t_kill, 10)
    lab.notes.append(f"  takeover: first datagram through B {t_b - t_kill:.2f} s after A was killed")
    time.sleep(2.0)                                  # bounded on purpose: old flows run through B for a while
    lab.t_new = time.time()
    lab.traffic.add_flows(FLOWS, PPS)                # new flows after the takeover
    time.sleep(2.5)                                  # bounded on purpose: a window of old and new flows through B
    seen = lab.traffic.edges_by_flow(t_b, via=b.mac)
    old = {p: e for p, e in seen.items() if p in lab.original}
    assert len(old) == FLOWS, f"only {len(old)} old flows through B"
    broken = {p: (lab.original[p], sorted(EDGE_NAME[m] for m in e)) for p, e in old.items()
              if {EDGE_NAME[m] for m in e} != {lab.original[p]}}
    assert not broken, f"old flows that changed edge after the takeover (port: before, after): {broken}"
    new = {p: e for p, e in lab.traffic.edges_by_flow(lab.t_new, via=b.mac).items() if p not in lab.original}
    assert len(new) >= FLOWS * 3 // 4, f"only {len(new)} new flows seen"
    on_e3 = sum(1 for e in new.values() if EDGE_NAME[next(iter(e))] == "e3")
    assert on_e3 >= 1, "no new flow reached e3: the new table is not in use"
    lab.notes.append(f"  after the takeover: {len(old)}/{FLOWS} old flows on their original edge "
                     f"({lab.moved} of them against the current Maglev choice); {on_e3}/{len(new)} new flows on e3")


GARBAGE = r"""
import hashlib, hmac, os, socket, struct, sys
host, port = sys.argv[1], int(sys.argv[2])
def conn():
    s = socket.create_connection((host, port), timeout=5)
    n = struct.unpack("!I", s.recv(4))[0]
    s.recv(n)
    return s
def frame(seq, name, mac, payload):
    body = struct.pack("!Q", seq) + bytes([len(name)]) + name + mac + payload
    return struct.pack("!I", len(body)) + body
s = conn()
s.sendall(frame(1, b"web", os.urandom(32), os.urandom(100)))          # forged MAC
s.sendall(frame(2, b"nope", os.urandom(32), b"x"))                   # unknown cluster
s.sendall(struct.pack("!I", 7) + b"\x00" * 7)                          # too short to be a frame
s.close()
s = conn()
s.sendall(struct.pack("!I", 64 << 20) + b"\x00" * 64)                 # oversized
s.close()
print("sent")
"""


def _d_garbage_from_the_management_link_changes_nothing(lab):
    a, b = lab.a, lab.b
    before = sync_status(b)["counters"]
    installed = before["flows_installed"]
    t0 = time.time()
    # A's namespace still has its management address: act as a stranger there while A is down
    out = ns_run(a.ns, sys.executable, "-c", GARBAGE, MGMT["B"], str(SYNC_PORT), timeout=30).stdout
    assert "sent" in out
    after = eventually(lambda: (lambda c: c if c["rx_oversized"] > before["rx_oversized"] else None)(
        sync_status(b)["counters"]), 5, "B to count the oversized frame")
    assert after["rx_auth_failures"] > before["rx_auth_failures"]
    assert after["rx_unknown_cluster"] > before["rx_unknown_cluster"]
    assert after["rx_garbage"] > before["rx_garbage"]
    assert after["flows_installed"] == installed
    assert b.state() == "master"
    # bounded on purpose: a second of forwarding that must not be disturbed
    time.sleep(1.0)
    got = sum(lab.traffic.since(t0).values())
    assert got >= 0.8 * 2 * PPS * (time.time() - t0 - 0.5), f"forwarding disturbed: {got} datagrams"
    # the peer being down is counted, and did not disturb forwarding either (test c)
    assert sync_status(b)["sending"]["state"] == "connecting"
    assert after["connect_failures"] > 0


def _e_a_returns_and_gets_a_full_resync(lab):
    a, b = lab.a, lab.b
    sent_before = counter(b, "resyncs_sent")
    a.restart()
    a.wait_state("backup", 15)
    eventually(lambda: counter(b, "resyncs_sent") > sent_before, 15, "B's resync to A")
    eventually(lambda: counter(a, "resyncs_received") >= 1, 10, "A to receive the resync")
    flows_b = web_flows_of(b)
    eventually(lambda: len(web_flows_of(a)) >= len(flows_b) * 9 // 10, 10, "A to install B's flows")
    copies = web_flows_of(a)
    wrong = {p: (e, copies.get(p)) for p, e in lab.original.items() if copies.get(p) not in (None, e)}
    assert not wrong, f"A's copies of the old flows point elsewhere: {wrong}"
    lab.notes.append(f"  A back: full resync of {len(copies)} flows from B "
                     f"({counter(a, 'flows_installed')} installed)")
    assert a.state() == "backup" and b.state() == "master"
    assert counter(a, "rx_auth_failures") == 0
    # a returning appliance is demoted ("flowsync") until the resync is installed, then no more
    eventually(lambda: a.carp()["demote"] == 0, 10, "A's flowsync demotion to end")
    demoted = [e for e in a.events("carp_demoted") if "flowsync" in (e.get("reasons") or [])]
    lab.notes.append(f"  A demoted for flow sync while it waited: {'yes' if demoted else 'not seen'}")
    # what an operator sees: pydpctl status and the Prometheus metrics
    text = pydpctl("status", socket=b.ctl.socket).stdout
    assert "flow sync:  to 192.0.2.1:7470 connected (web), from peer connected" in text, text
    m = metrics(a)
    assert m['pydp_flowsync_received_resyncs_total'] >= 1
    assert m['pydp_flowsync_connected{direction="in"}'] == 1


def tcp_state_on(ap, sport: int) -> str | None:
    from control import observe

    rows, _ = observe.find_flows(ap.dp.region, cluster="web", client=CLIENT_IP, limit=100000)
    return next((r["state"] for r in rows if r["protocol"] == "tcp" and r["client_port"] == sport), None)


def _f_tcp_open_and_close_events_reach_the_peer(lab):
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    a, b = lab.a, lab.b
    sport = 40123
    eth = Ether(dst=b.mac, src=link_mac(lab.client_ns, "eth0"))

    def send(flags: str, seq: int) -> None:
        frame = eth / IP(src=CLIENT_IP, dst=VIP) / TCP(sport=sport, dport=80, flags=flags, seq=seq, ack=1)
        ns_run(lab.client_ns, sys.executable, "-c", RAW_SENDER, bytes(frame).hex())

    send("S", 100)
    assert eventually(lambda: tcp_state_on(a, sport), 5, "A's copy of the new TCP flow") == "syn"
    send("A", 101)
    send("FA", 101)
    eventually(lambda: tcp_state_on(a, sport) == "fin", 5, "the END event to reach A")
    assert tcp_state_on(b, sport) == "fin"


def test_flow_sync_story(lab):
    """The story of the module doc, step by step (each step is a function above)."""
    _a_flows_open_on_a_and_reach_b(lab)
    _b_edge_set_changes_on_both(lab)
    _c_takeover_keeps_every_old_flow_on_its_edge(lab)
    _d_garbage_from_the_management_link_changes_nothing(lab)
    _e_a_returns_and_gets_a_full_resync(lab)
    _f_tcp_open_and_close_events_reach_the_peer(lab)
