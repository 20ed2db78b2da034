"""Flow sync among three real appliances (control/lab/failover.py with count=3 and sync=True: real data planes on
af_packet, real daemons in one CARP group, [sync] peers on a management bridge). C runs another hash seed.

One story, one test (its steps depend on each other):
1. A (master) has B and C as peers, and they it: every appliance connects to both others and accepts both.
2. 32 client flows open through A; B and C each hold a copy of every flow pinned to the edge A chose (read from
   their own shared memory).
3. The Maglev digests: A and B agree about web; C's table picks with another seed, so A reports the disagreement
   with C (status, `pydpctl status`, pydp_maglev_digest_mismatch{cluster,peer}, the maglev_disagreement event),
   and so does C about A and B.
4. C's daemon dies (SIGKILL): A's connection to C goes down, and new flows through A still reach B.
"""

from __future__ import annotations

import time

import pytest

from control.lab.failover import EDGES, MGMT, SYNC_PORT, FailoverLab, Traffic
from netlab import eventually, metrics, pydpctl, report
from test_flowsync_live import web_flows_of

pytestmark = [pytest.mark.dpdk, pytest.mark.netns]

FLOWS = 32
PPS = 320
C_SEED = 0x1234
EDGE_NAME = {mac: name for name, (_ip, mac) in EDGES.items()}


def peer(name: str) -> str:
    return f"{MGMT[name]}:{SYNC_PORT}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("flowsync3")
    with FailoverLab(tmp, preempt=False, sync=True, count=3, hash_seeds={"C": C_SEED}) as lab:
        lab.notes = []
        for ap in lab.appliances.values():
            ap.start()
        with Traffic(lab, pps=PPS, flows=0) as traffic:
            lab.traffic = traffic
            try:
                yield lab
            finally:
                report(request, "\n".join(["", "pydp flow sync (three appliances):", *lab.notes]))


def sync_status(ap) -> dict:
    return ap.status()["flowsync"]


def test_flows_reach_every_peer_a_seed_mismatch_is_reported_and_a_dead_peer_holds_nobody_back(lab):
    a, b, c = (lab.appliances[n] for n in "ABC")
    a.wait_state("master", 20)
    for ap in (b, c):
        ap.wait_state("backup", 5)

    def meshed() -> bool:
        for ap in (a, b, c):
            peers = sync_status(ap)["peers"]
            if len(peers) != 2 or not all(p["sending"] == "connected" and p["receiving"] for p in peers):
                return False
        return True

    eventually(meshed, 20, lambda: f"every flow-sync connection: {[sync_status(x)['peers'] for x in (a, b, c)]}")
    assert {p["peer"] for p in sync_status(a)["peers"]} == {peer("B"), peer("C")}

    # 2. flows through A reach B and C
    t_open = time.time()
    lab.traffic.add_flows(FLOWS, PPS)
    eventually(lambda: len(lab.traffic.edges_by_flow(t_open, via=a.mac)) >= FLOWS, 15, f"{FLOWS} flows through A")
    seen = lab.traffic.edges_by_flow(t_open, via=a.mac)
    original = {sport: EDGE_NAME[next(iter(e))] for sport, e in seen.items()}
    for ap in (b, c):
        eventually(lambda: all(web_flows_of(ap).get(p) == e for p, e in original.items()), 10,
                   lambda: f"{ap.name}'s copies of A's flows: {web_flows_of(ap)} want {original}")
    st = sync_status(a)
    per = {p["peer"]: p["counters"] for p in st["peers"]}
    assert per[peer("B")]["flows_sent"] >= FLOWS and per[peer("C")]["flows_sent"] >= FLOWS, per
    for ap in (b, c):
        cs = sync_status(ap)["counters"]
        assert cs["flows_installed"] >= FLOWS and cs["rx_auth_failures"] == 0, cs
    lab.notes.append(f"  A sent {per[peer('B')]['flows_sent']} flows to B and {per[peer('C')]['flows_sent']} to C; "
                     f"installed: B {sync_status(b)['counters']['flows_installed']}, "
                     f"C {sync_status(c)['counters']['flows_installed']}")

    # 3. the Maglev digests: A and B agree, C (another hash seed) does not
    def verdicts(ap) -> dict:
        return {p: r["agreement"] for p, r in sync_status(ap)["maglev"]["web"]["peers"].items()}

    eventually(lambda: verdicts(a) == {peer("B"): "agree", peer("C"): "mismatch"}, 15,
               lambda: f"A's verdicts on web: {verdicts(a)}")
    eventually(lambda: verdicts(c) == {peer("A"): "mismatch", peer("B"): "mismatch"}, 15,
               lambda: f"C's verdicts on web: {verdicts(c)}")
    assert verdicts(b) == {peer("A"): "agree", peer("C"): "mismatch"}
    web = sync_status(a)["maglev"]["web"]
    row = next(r for r in a.status()["clusters"] if r["name"] == "web")
    assert row["maglev_digest"] == web["digest"] == web["peers"][peer("B")]["digest"]
    assert web["peers"][peer("C")]["digest"] == sync_status(c)["maglev"]["web"]["digest"] != web["digest"]
    text = pydpctl("status", socket=a.ctl.socket).stdout
    assert f"web {web['digest']}" in text and f"{peer('C')} MISMATCH" in text and f"{peer('B')} agree" in text, text
    m = metrics(a)
    assert m[f'pydp_maglev_digest_mismatch{{cluster="web",peer="{peer("C")}"}}'] == 1
    assert m[f'pydp_maglev_digest_mismatch{{cluster="web",peer="{peer("B")}"}}'] == 0
    assert m["pydp_flowsync_maglev_mismatches_total"] >= 1
    ev = [e for e in a.events("maglev_disagreement") if e.get("peer") == peer("C")]
    assert ev and ev[0]["cluster"] == "web" and ev[0]["reason"].startswith("hash_seed differs (here 0x5eed, peer "
                                                                            f"0x{C_SEED:x})"), ev
    assert not [e for e in a.events("maglev_disagreement") if e.get("peer") == peer("B")]
    lab.notes.append(f"  web digest {web['digest']} on A and B, {web['peers'][peer('C')]['digest']} on C "
                     f"(hash_seed 0x{C_SEED:x}): reported as a mismatch")

    # 4. a dead peer holds nobody back
    c.ctl.kill()

    def a_to(name: str) -> str:
        return next(p["sending"] for p in sync_status(a)["peers"] if p["peer"] == peer(name))

    eventually(lambda: a_to("C") == "connecting", 15, lambda: f"A's connection to the dead C: {a_to('C')}")
    t_more = time.time()
    lab.traffic.add_flows(8, 80)

    def new_flows() -> dict:
        got = lab.traffic.edges_by_flow(t_more, via=a.mac)
        return {s: EDGE_NAME[next(iter(e))] for s, e in got.items() if s not in original}

    eventually(lambda: len(new_flows()) >= 8, 15, "8 new flows through A")
    more = new_flows()
    eventually(lambda: all(web_flows_of(b).get(p) == e for p, e in more.items()), 10,
               lambda: f"B's copies of the new flows: {web_flows_of(b)} want {more}")
    assert a_to("B") == "connected"
    lab.notes.append(f"  C's daemon killed: A to C {a_to('C')}, 8 new flows through A reached B")
