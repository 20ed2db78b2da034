"""Faults on a live pair of appliances (control/lab/failover.py: real data planes on af_packet, real daemons, CARP,
a client sending 500 datagrams a second to the cluster IP, a sniffer behind the edges). Each test starts with A
master and asserts the outcome of one fault:

- the data plane of the master is SIGKILLed: A's daemon demotes A ("dataplane"), B takes over and carries the
  traffic; a restarted data plane recovers: A undemotes and (preempt) takes the traffic back;
- the link of A's data port goes down: B takes over; A is demoted ("link") while it is down; link up recovers;
- a flood on A's exception path while A is master: A stays master (no flap), the flood is cut by the bulk
  class's rate limit and counted in exc_ratelimit, CARP (its own class) is never dropped.
"""

from __future__ import annotations

import time

import pytest

from control.lab.failover import APPLIANCES, FailoverLab, Traffic, interval
from netlab import assert_flows_through, eventually, ns_run

pytestmark = [pytest.mark.dpdk, pytest.mark.netns]

B_INTERVAL = interval(APPLIANCES["B"][2])
TAKEOVER_BOUND = 4 * B_INTERVAL + 1.5           # master-down of B, the daemon's 0.5 s tick, a loaded machine
PPS = 500
EXC_PPS = 2000                                   # the bulk exception class's limit per worker, low enough to hit


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with FailoverLab(tmp_path_factory.mktemp("faults"), exception_pps=EXC_PPS) as lab:
        lab.a.start()
        lab.b.start()
        with Traffic(lab, pps=PPS) as traffic:
            lab.traffic = traffic
            yield lab


def a_master_again(lab) -> None:
    eventually(lambda: lab.a.state() == "master" and lab.b.state() == "backup", 20, "A master, B backup")
    settled_on(lab, lab.a, lab.b, 10)


def settled_on(lab, owner, other, timeout: float) -> float:
    """Waits until the last half second of traffic went through owner only; returns when (wall clock)."""
    def settled():
        seen = lab.traffic.since(time.time() - 0.5)
        return seen.get(other.mac, 0) == 0 and seen.get(owner.mac, 0) >= 0.8 * PPS * 0.5 and time.time()
    return eventually(settled, timeout, f"the traffic to settle on {owner.name}", interval=0.1)


def demotions(appliance, since: float) -> list[dict]:
    from datetime import datetime

    return [e for e in appliance.events("carp_demoted")
            if datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp() >= since]


def test_a_dataplane_killed_on_master(lab):
    a, b = lab.a, lab.b
    a_master_again(lab)
    old_pid = a.dp.proc.pid
    t_kill = time.time()
    a.dp.proc.kill()
    a.dp.proc.wait(10)
    # B takes over and the traffic follows it
    eventually(lambda: b.state() == "master", TAKEOVER_BOUND, "B to take over from A's dead data plane")
    first = lab.traffic.wait_via(b.mac, t_kill, TAKEOVER_BOUND + 2)
    assert first - t_kill <= TAKEOVER_BOUND + 2
    eventually(lambda: any(e["event"] == "dataplane_lost" and e.get("pid") == old_pid for e in a.events()), 6,
               "A's daemon to notice its data plane's death")
    assert a.state() != "master", "A still claims the cluster without a data plane"
    assert_flows_through(lab, b, a)
    # a restarted data plane recovers: A's daemon re-applies the store, A undemotes and takes back (preempt)
    a.restart_dataplane()
    eventually(lambda: a.state() == "master", 30, "A to take back after its data plane restarted")
    settled_on(lab, a, b, 10)
    assert a.carp()["demote"] == 0
    assert_flows_through(lab, a, b)


def test_b_link_down_and_up(lab):
    a, b = lab.a, lab.b
    a_master_again(lab)
    t_down = time.time()
    ns_run(a.ns, "ip", "link", "set", "lb0", "down")
    try:
        eventually(lambda: b.state() == "master", TAKEOVER_BOUND, "B to take over while A's link is down")
        lab.traffic.wait_via(b.mac, t_down, TAKEOVER_BOUND + 2)
        eventually(lambda: any("link" in e.get("reasons", []) for e in demotions(a, t_down)), 5,
                   "A to demote itself for its link")
        assert a.state() != "master" or a.carp()["demote"] > 0
    finally:
        ns_run(a.ns, "ip", "link", "set", "lb0", "up")
    t_up = time.time()
    eventually(lambda: a.state() == "master" and b.state() == "backup", 20, "A to take back once its link is up")
    # B took the address while A was cut off; A re-announces it when it recovers (twice: a link just up may
    # not carry the first gratuitous ARP), so the client's entry comes back to A within a few seconds
    settled = settled_on(lab, a, b, 4 * interval(APPLIANCES["A"][2]) + 3)
    assert settled - t_up <= 4 * interval(APPLIANCES["A"][2]) + 3
    assert a.carp()["demote"] == 0
    assert any(e for e in a.events("carp_undemoted"))
    assert_flows_through(lab, a, b)


def test_c_exception_flood_on_the_master(lab):
    """20k pps of UDP to A's own address while A is master: the bulk exception class is cut to EXC_PPS and the
    excess counted; CARP adverts (priority class) still go out and in, so nobody changes state."""
    a, b = lab.a, lab.b
    a_master_again(lab)
    ta, tb = len(a.transitions()), len(b.transitions())
    before = a.counters()
    flood = lab.flood(a, pps=20000, seconds=5)
    out, _ = flood.communicate(timeout=30)
    sent, _secs = out.split()
    time.sleep(1.0)           # bounded on purpose: the data plane drains the flood's queue, CARP keeps going
    after = a.counters()
    assert len(a.transitions()) == ta and len(b.transitions()) == tb, "CARP flapped under the flood"
    assert a.state() == "master" and b.state() == "backup"
    dropped = after["drops"]["exc_ratelimit"] - before["drops"]["exc_ratelimit"]
    assert dropped >= 0.3 * int(sent), f"only {dropped} of {sent} flood frames were rate-limited"
    assert after["drops"]["exc_carp_ratelimit"] == before["drops"]["exc_carp_ratelimit"]
    assert_flows_through(lab, a, b)
