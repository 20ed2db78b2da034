"""Two pydp appliances (real data planes, real daemons) failing over with CARP: control/lab/failover.py's topology.

The cluster "web" (198.51.100.10, vhid 10, advbase 1 s) is in both stores; A has advskew 0 (interval 1 s), B
advskew 100 (interval 1.39 s, master-down 3.39 s). A client sends 500 UDP datagrams a second to the cluster IP
through its kernel for the whole module, and a sniffer behind the edges' bridge port records which appliance
forwarded each one. The tests share one lab (building it takes ~20 s) but not an order: before each test the
`pair` fixture puts it back to the same state -- both appliances running with their original stores, A master, B
backup, the client's ARP entry at A -- and a test that needs another start (B master, A backup) makes it itself.
Measured times go to a summary at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from control.lab.failover import APPLIANCES, PASSPHRASE, FailoverLab, Traffic, interval
from netlab import assert_flows_through, eventually, metrics, pydpctl, report

pytestmark = [pytest.mark.dpdk, pytest.mark.netns]

SLACK = 0.6                     # on top of 3 intervals + 1 interval: scheduling on a 2-CPU machine, the 0.5 s tick
B_INTERVAL = interval(APPLIANCES["B"][2])
TAKEOVER_BOUND = 3 * B_INTERVAL + B_INTERVAL + SLACK
PPS = 500


@pytest.fixture(scope="module")
def lab(tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("failover")
    timings: list[tuple[str, float, float]] = []
    with FailoverLab(tmp) as lab:
        lab.timings = timings
        lab.a.start()
        lab.b.start()
        with Traffic(lab, pps=PPS) as traffic:
            lab.traffic = traffic
            try:
                yield lab
            finally:
                _summary(request, timings)


def _running(ap) -> bool:
    return all(p is not None and p.poll() is None for p in (ap.dp.proc, ap.ctl.proc))


@pytest.fixture(autouse=True)
def pair(lab):
    """The start of every test: both running with their original stores, A master, B backup, the client at A."""
    a, b = lab.a, lab.b
    for ap in (a, b):
        if not _running(ap):
            ap.restart()
    for ap in (a, b):
        pydpctl("import", ap.workdir / "store.toml", socket=ap.ctl.socket)     # preempt back on, clusters as built
    a.wait_state("master", TAKEOVER_BOUND + 5)
    b.wait_state("backup", 5)
    eventually(lambda: lab.client_neigh() == a.mac, 5, "the client's ARP entry of the cluster IP to point at A")
    yield lab


def b_master_a_backup(lab) -> float:
    """From the usual start: A killed, B takes over, A back without preempt (so it stays backup). Returns the time
    A was started again."""
    a, b = lab.a, lab.b
    t_kill = a.kill()
    eventually(lambda: b.first_master_after(t_kill), TAKEOVER_BOUND + 2, "B to become master")
    a.stop()
    pydpctl("cluster", "edit", "web", "--no-preempt", db=a.db)
    t0 = time.time()
    a.start()
    # CARP's own backup state (before its instance runs, status calls a cluster not owned "backup" too)
    eventually(lambda: "adverts_received" in a.carp() and a.state() == "backup", 10, "A's CARP to run as backup")
    return t0


def _summary(request, timings) -> None:
    lines = ["", "pydp failover (two appliances, advbase 1 s, B advskew 100): measured times"]
    for what, secs, bound in timings:
        lines.append(f"  {what:<66} {secs:6.3f} s  (bound {bound:.2f} s)")
    text = "\n".join(lines)
    report(request, text)


def test_a_one_master_one_backup(lab):
    a, b = lab.a, lab.b
    a.wait_state("master", 10)
    b.wait_state("backup", 5)
    eventually(lambda: lab.client_neigh() == a.mac, 5, "the client's ARP entry of the cluster IP to point at A")
    before_a, before_b = a.counters(), b.counters()
    assert_flows_through(lab, a, b)
    after_a, after_b = a.counters(), b.counters()
    assert after_a["web_packets"] - before_a["web_packets"] >= 0.8 * PPS * 1.5
    assert after_a["rx"] > before_a["rx"]
    assert after_b["web_packets"] == before_b["web_packets"]               # nothing for the VIP reached B
    assert after_b["web_not_active"] == before_b["web_not_active"]
    # taking means all three: the ownership flag, the address on the TAP (ARP answered), gratuitous ARPs
    assert a.owns_vip() and a.active_flag() and not b.owns_vip() and b.active_flag() is False
    # the second gratuitous ARP goes out two intervals after the takeover
    eventually(lambda: a.carp()["gratuitous_sent"] >= 2, 3, "A's second gratuitous ARP")
    ca, cb = a.carp(), b.carp()
    assert ca["demote"] == 0 and ca["srcip"] == APPLIANCES["A"][1]
    assert cb["peer_advert"]["src"] == APPLIANCES["A"][1] and cb["peer_advert"]["interval"] == 1.0
    assert cb["peer"].startswith(f"{APPLIANCES['A'][1]} every 1s") and cb["adverts_received"] >= 1
    assert cb["drops"]["hmac"] == 0
    m = metrics(a)
    assert m['pydp_carp_state{cluster="web",state="master"}'] == 1
    assert m['pydp_carp_state{cluster="web",state="backup"}'] == 0
    assert m['pydp_carp_transitions_total{cluster="web"}'] >= 2               # init -> backup -> master, at least
    assert a.transitions()[-1]["state"] == "master"
    assert m['pydp_carp_dropped_adverts_total{cluster="web",reason="hmac"}'] == 0
    assert m['pydp_cluster_owned{cluster="web"}'] == 1
    assert metrics(b)['pydp_carp_state{cluster="web",state="backup"}'] == 1
    text = pydpctl("status", socket=b.ctl.socket).stdout
    assert "backup" in text and APPLIANCES["A"][1] in text and "TRANSITIONS" in text


def test_a2_master_control_killed_and_restarted_loses_no_packet(lab):
    """SIGKILL of the master's pydp-control under traffic, a new one within a second: it resumes as master
    (carp_resumed) with the flag and the cluster IP it never gave up; no datagram lost, B never moves."""
    a, b = lab.a, lab.b
    transitions_b = len(b.transitions())
    t0 = time.time()
    a.ctl.kill()
    a.ctl.stop()                                  # its socket file
    a.ctl.start()
    t_up = time.time()
    a.wait_state("master", 5)
    time.sleep(3 * B_INTERVAL)                    # past B's master-down interval counted from the kill
    t1 = time.time()
    seqs = sorted({seq for t, seq, via in lab.traffic.arrivals() if t0 - 1 <= t <= t1})
    vias = {via for t, _seq, via in lab.traffic.arrivals() if t0 - 1 <= t <= t1}
    missing = (seqs[-1] - seqs[0] + 1) - len(seqs)
    lab.timings.append(("A's pydp-control SIGKILLed -> new daemon answering", t_up - t0, 5.0))
    report_text = f"A's daemon killed and restarted: {len(seqs)} datagrams in {t1 - t0 + 1:.1f} s, {missing} lost"
    assert missing == 0, report_text
    assert len(seqs) >= 0.8 * PPS * (t1 - t0)
    assert vias == {a.mac}
    assert len(b.transitions()) == transitions_b and b.state() == "backup"
    resumed = [e for e in a.events() if e["event"] == "carp_resumed" and _after(e, t0)]
    assert [e["cluster"] for e in resumed] == ["web"]
    assert [e["reason"] for e in a.transitions() if _after(e, t0)] == \
        ["resumed: the cluster was still owned when the control plane restarted"]
    assert a.owns_vip() and a.active_flag() and not b.owns_vip()


def test_b_master_killed_backup_takes_over(lab):
    a, b = lab.a, lab.b
    t_kill = a.kill()
    t_master = eventually(lambda: b.first_master_after(t_kill), TAKEOVER_BOUND + 2, "B to become master")
    takeover = t_master - t_kill
    lab.timings.append(("A SIGKILLed -> B master (B's log)", takeover, TAKEOVER_BOUND))
    assert takeover <= TAKEOVER_BOUND, f"takeover took {takeover:.2f}s"
    first = lab.traffic.wait_via(b.mac, t_kill, TAKEOVER_BOUND + 2)
    lab.timings.append(("A SIGKILLed -> first datagram through B", first - t_kill, TAKEOVER_BOUND))
    assert first - t_kill <= TAKEOVER_BOUND
    assert b.owns_vip() and b.active_flag()
    # the client's ARP entry moved by gratuitous ARP: nobody answered a request meanwhile (A is dead)
    eventually(lambda: lab.client_neigh() == b.mac, 2, "the client's ARP entry of the cluster IP to point at B")
    assert b.carp()["gratuitous_sent"] >= 1
    assert_flows_through(lab, b, a)


def test_c_restart_without_preempt_backup_stays(lab):
    a, b = lab.a, lab.b
    t0 = b_master_a_backup(lab)
    transitions_b = len(b.transitions())
    time.sleep(3 + 1.5)             # longer than A's master-down interval: A hears B and stays backup
    assert a.state() == "backup" and b.state() == "master"
    assert [e["state"] for e in a.transitions() if _after(e, t0)] == ["backup"]
    assert len(b.transitions()) == transitions_b
    assert not a.owns_vip() and a.active_flag() is False
    assert a.carp()["peer_advert"]["src"] == APPLIANCES["B"][1]
    assert_flows_through(lab, b, a, 1.0)


def test_d_flood_on_the_exception_path_does_not_flap(lab):
    """20k pps of UDP to A's own address (the bulk exception class) for 5 s while A is backup: A must keep hearing
    B's advertisements (the CARP class), so nobody changes state."""
    a, b = lab.a, lab.b
    b_master_a_backup(lab)
    ta, tb = len(a.transitions()), len(b.transitions())
    before, heard = a.counters(), a.carp()["adverts_received"]
    flood = lab.flood(a, pps=20000, seconds=5)
    out, _ = flood.communicate(timeout=30)
    sent, secs = out.split()
    time.sleep(1.5)           # bounded on purpose: the data plane drains the flood's queue, CARP keeps going
    after = a.counters()
    assert len(a.transitions()) == ta and len(b.transitions()) == tb, "CARP flapped under the flood"
    assert a.state() == "backup" and b.state() == "master"
    assert int(sent) >= 50000, f"the flood sent only {sent} frames in {secs}s"
    assert after["rx"] - before["rx"] >= 0.8 * int(sent)
    prio = after["exc_carp"] - before["exc_carp"]
    got = a.carp()["adverts_received"] - heard
    assert got >= int(6.5 / B_INTERVAL) - 1, f"A heard only {got} of B's advertisements"
    assert prio >= got                      # they came through the CARP class
    assert after["drops"]["exc_carp_ratelimit"] == before["drops"]["exc_carp_ratelimit"]
    lab.timings.append((f"flood: {int(sent) / float(secs):,.0f} pps for {secs}s, adverts heard {got}, no flap",
                        float(secs), 5.0))
    assert_flows_through(lab, b, a, 1.0)


def test_d2_arp_and_icmp_flood_at_both_does_not_flap(lab):
    """Issue 17: the chaos run's ARP/ICMP flood (control/lab/hostile.py: broadcast ARP requests, which reach both
    appliances, and ICMP echo to the backup) at 30k pps for 4 s. ARP has its own class and CARP its own, so the
    backup keeps hearing the master: no transition on either side, no CARP advert dropped, the ARP frames counted
    in the ARP class (handed to the kernel or dropped as exc_arp_ratelimit)."""
    a, b = lab.a, lab.b
    ta, tb = len(a.transitions()), len(b.transitions())
    before = {ap.name: ap.counters() for ap in (a, b)}
    heard = b.carp()["adverts_received"]
    p = subprocess.run(["ip", "netns", "exec", lab.client_ns, sys.executable, "-m", "control.lab.hostile",
                        "--mode", "arp", "--iface", "eth0", "--dst-mac", b.mac, "--dst-ip", b.addr,
                        "--pps", "30000", "--seconds", "4"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    time.sleep(1.5)           # bounded on purpose: the data plane drains the flood's queue, CARP keeps going
    after = {ap.name: ap.counters() for ap in (a, b)}
    assert len(a.transitions()) == ta and len(b.transitions()) == tb, "CARP flapped under the ARP/ICMP flood"
    assert a.state() == "master" and b.state() == "backup"
    arp_sent = out["sent"] // 2
    got = b.carp()["adverts_received"] - heard
    assert got >= int(5.5 / B_INTERVAL) - 1, f"B heard only {got} of A's advertisements"
    for ap in (a, b):
        x, y = before[ap.name], after[ap.name]
        assert y["drops"]["exc_carp_ratelimit"] == x["drops"]["exc_carp_ratelimit"], ap.name
        arp = (y["exc_arp"] - x["exc_arp"]) + (y["drops"]["exc_arp_ratelimit"] - x["drops"]["exc_arp_ratelimit"])
        assert arp >= 0.8 * arp_sent, f"{ap.name}: only {arp} of {arp_sent} ARP frames in the ARP class"
    xb, yb = before[b.name], after[b.name]
    assert yb["exc_carp"] - xb["exc_carp"] >= got
    arp_dropped = {ap.name: after[ap.name]["drops"]["exc_arp_ratelimit"] - before[ap.name]["drops"]["exc_arp_ratelimit"]
                   for ap in (a, b)}
    icmp_dropped = yb["drops"]["exc_ratelimit"] - xb["drops"]["exc_ratelimit"]
    # 30k pps of which half ARP against a 5000 pps ARP budget: both cut it, and count it in the ARP class
    assert all(n > 0 for n in arp_dropped.values()), arp_dropped
    lab.timings.append((f"ARP/ICMP flood {out['sent'] / out['seconds']:,.0f} pps: ARP dropped {arp_dropped}, "
                        f"ICMP dropped {icmp_dropped}, adverts heard {got}, no flap", out["seconds"], 4.0))
    assert_flows_through(lab, a, b)


def test_e_restart_with_preempt_takes_back(lab):
    a, b = lab.a, lab.b
    b_master_a_backup(lab)
    t_kill = a.kill()               # A is backup: nothing moves
    assert b.state() == "master"
    a.stop()
    pydpctl("cluster", "edit", "web", "--preempt", db=a.db)
    a.start()
    t_start = time.time()
    a.wait_state("master", B_INTERVAL + 2)
    t_master = a.first_master_after(t_kill)
    lab.timings.append(("A restarted with preempt -> A master (after its daemon is up)", t_master - t_start,
                        B_INTERVAL + 1))
    b.wait_state("backup", 3)
    assert a.owns_vip() and not b.owns_vip() and b.active_flag() is False
    eventually(lambda: lab.client_neigh() == a.mac, 3, "the client's ARP entry to point at A again")
    first = lab.traffic.wait_via(a.mac, t_master, 3)
    assert first - t_master < 1.0
    assert_flows_through(lab, a, b)


def test_f_demotion_follows_edge_health(lab):
    """A's cluster loses every edge (disabled): A demotes itself, B takes over at once; edges back: A undemotes
    and takes back (preempt)."""
    a, b = lab.a, lab.b
    t0 = time.time()
    for e in ("e1", "e2"):
        pydpctl("edge", "disable", "web", e, socket=a.ctl.socket)
    b.wait_state("master", 3)
    a.wait_state("backup", 3)
    lab.timings.append(("A demoted (no edge up) -> B master", b.first_master_after(t0) - t0, 2.0))
    ca = a.carp()
    assert ca["demote"] == 1 and ca["demote_reasons"] == ["edges"]
    assert any(e["event"] == "carp_demoted" and e["reasons"] == ["edges"] for e in a.events())
    assert b.carp()["peer_advert"] is None or b.carp()["peer_advert"]["src"] == APPLIANCES["A"][1]
    t1 = time.time()
    for e in ("e1", "e2"):
        pydpctl("edge", "enable", "web", e, socket=a.ctl.socket)
    a.wait_state("master", B_INTERVAL + 2)
    b.wait_state("backup", 3)
    lab.timings.append(("A undemoted -> A master again (preempt)", a.first_master_after(t1) - t1,
                        B_INTERVAL + 1))
    assert a.carp()["demote"] == 0
    assert any(e["event"] == "carp_undemoted" for e in a.events())
    assert_flows_through(lab, a, b)


def test_g_cluster_disabled_and_enabled_live(lab):
    """On the backup: disabling the cluster stops its instance (the master is undisturbed); enabling starts it."""
    a, b = lab.a, lab.b
    ta = len(a.transitions())
    pydpctl("cluster", "disable", "web", socket=b.ctl.socket)
    eventually(lambda: b.state() == "disabled", 3, "B's CARP for web to stop")
    eventually(lambda: any(e["event"] == "carp_stopped" and e["reason"] == "disabled" for e in b.events()), 2,
               "B's carp_stopped event")
    assert b.carp()["local"] == "disabled" and b.active_flag() is False
    pydpctl("cluster", "enable", "web", socket=b.ctl.socket)
    b.wait_state("backup", 3)
    time.sleep(1.5)           # bounded on purpose: longer than A's advertisement interval: A stays master
    assert len(a.transitions()) == ta and a.state() == "master"
    assert_flows_through(lab, a, b, 1.0)


def test_g2_backup_slot_reuse_never_forwards_a_cluster_it_does_not_own(lab):
    """Issue 12, story 3, on the backup B: web deleted, "other" added in web's slot (B becomes its master), then
    web comes back into that slot from another writer (what an unmanaged data plane's SIGHUP did). Ownership is
    published with the cluster, so B drops web's packets sent straight to it (not owned), forwards none, and the
    daemon puts the store back (config_drift). A stays master of web throughout."""
    import os
    import signal

    from control import observe
    from control.lab.failover import CLIENT_IP, FLOODER, VIP
    from netlab import run
    from pydp import config as pconfig
    from pydp.apply import apply_config

    a, b = lab.a, lab.b
    ta = len(a.transitions())
    web_slot = observe.clusters(b.dp.region)["web"]["slot"]
    pydpctl("cluster", "delete", "web", socket=b.ctl.socket)
    key = b.workdir / "other.key"
    key.write_text("other-carp-key")
    key.chmod(0o600)
    pydpctl("cluster", "add", "other", "--cluster-ip", "198.51.100.11", "--vhid", "11", "--health", "none",
            "--passphrase-file", key, "--edge", "o1=198.51.100.21@02:00:00:00:02:01",
            "--edge", "o2=198.51.100.22@02:00:00:00:02:02", socket=b.ctl.socket)
    eventually(lambda: b.state("other") == "master", 3 * 1.0 + 4, "B to become master of other")
    live = observe.clusters(b.dp.region)
    assert set(live) == {"other"} and live["other"]["slot"] == web_slot and live["other"]["active"]
    drifts = len(b.events("config_drift"))
    os.kill(b.ctl.proc.pid, signal.SIGSTOP)               # hold B's daemon: the foreign generation stays live
    try:
        foreign = pconfig.loads(b.dp.config.read_text())
        apply_config(b.dp.region, foreign, owned=())      # an unmanaged data plane without --own-all
        live = observe.clusters(b.dp.region)
        assert set(live) == {"web"} and live["web"]["slot"] == web_slot and not live["web"]["active"]
        before = b.counters()
        client_mac = json.loads(run("ip", "-j", "-n", lab.client_ns, "link", "show", "eth0").stdout)[0]["address"]
        sent = subprocess.run(["ip", "netns", "exec", lab.client_ns, sys.executable, "-c", FLOODER, "eth0", b.mac,
                               client_mac, CLIENT_IP, VIP, "200", "1"], capture_output=True, text=True,
                              timeout=30, check=True)
        n = int(sent.stdout.split()[0])
        eventually(lambda: b.counters()["web_not_active"] - before["web_not_active"] >= n, 3,
                   "B to count web's frames as not owned")
        after = b.counters()
        assert after["web_packets"] == before["web_packets"], "B forwarded a cluster it does not own"
        assert_flows_through(lab, a, b, 1.0)
    finally:
        os.kill(b.ctl.proc.pid, signal.SIGCONT)
    eventually(lambda: set(observe.clusters(b.dp.region)) == {"other"}, 3, "B's daemon to repair the drift")
    assert observe.clusters(b.dp.region)["other"]["active"]
    assert len(b.events("config_drift")) == drifts + 1
    # back as it was: web on B again (backup), other gone; A never moved
    pydpctl("cluster", "delete", "other", socket=b.ctl.socket)
    pydpctl("import", str(b.dp.config), socket=b.ctl.socket)
    b.wait_state("backup", 5)
    assert len(a.transitions()) == ta and a.state() == "master"
    assert_flows_through(lab, a, b, 1.0)


def test_h_sigterm_bows_out(lab):
    """SIGTERM on A's daemon: A bows out, B takes over at once (not after its master-down interval); A's data plane
    keeps its tables but no longer owns the cluster IP. A's daemon back: it takes over again (preempt)."""
    a, b = lab.a, lab.b
    from control import observe

    gen = a.dp.region.generation
    tables = {n: {**c, "active": None} for n, c in observe.clusters(a.dp.region).items()}
    t0 = time.time()
    assert a.ctl.stop() == 0
    t_master = eventually(lambda: b.first_master_after(t0), 2, "B to take over from A's bow-out")
    lab.timings.append(("A's daemon SIGTERMed (bow-out) -> B master", t_master - t0, 1.0))
    assert t_master - t0 < 1.0
    # one publish: the cluster as not owned (ownership is part of the generation); the tables are untouched
    assert a.dp.region.generation == gen + 1 and a.active_flag() is False and not a.owns_vip()
    assert {n: {**c, "active": None} for n, c in observe.clusters(a.dp.region).items()} == tables
    assert any(e["event"] == "carp_transition" and e["reason"] == "shutdown: bowed out" for e in a.events())
    a.ctl.start()
    a.wait_state("master", B_INTERVAL + 3)
    b.wait_state("backup", 3)
    assert_flows_through(lab, a, b)


def test_i_passphrase_never_shown(lab):
    for ap in (lab.a, lab.b):
        texts = {
            "control log": ap.ctl.log.read_text(),
            "data-plane log": ap.dp.log.read_text(),
            "status --json": pydpctl("status", "--json", socket=ap.ctl.socket).stdout,
            "status": pydpctl("status", socket=ap.ctl.socket).stdout,
            "cluster show --json": pydpctl("cluster", "show", "web", "--json", socket=ap.ctl.socket).stdout,
            "metrics": metrics(ap)["__text__"],
            "ps": subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout,
        }
        for proc in (ap.ctl.proc, ap.dp.proc):
            with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
                texts[f"cmdline {proc.pid}"] = f.read().replace(b"\0", b" ").decode()
        for what, text in texts.items():
            assert text, what
            assert PASSPHRASE not in text, f"the passphrase appears in {what} of {ap.name}"
        s = json.loads(texts["status --json"])
        assert "passphrase" not in json.dumps(s["clusters"]).replace("passphrase_set", "")


def _after(e: dict, t_wall: float) -> bool:
    from datetime import datetime

    return datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp() >= t_wall
