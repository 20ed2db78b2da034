"""pydp-control against a real pydp-dataplane (af_packet port in a namespace) while tests/traffic.py runs.

Changes go through the real pydpctl over the daemon's socket. The tests share one lab (one data plane, one daemon)
to stay within about two minutes, in any order: each starts from a config it imports itself.
"""

from __future__ import annotations

import contextlib
import json
import platform
import subprocess
import sys
import threading
import time

import pytest

from netlab import (LB_MAC, OTHER_TOML, VIP, ControlProcess, DataplaneProcess, appliance_toml, cluster_toml, edge_toml,
                    eventually, netns, ns_run, scrape, traffic, veth)
from netlab import EDGE_IPS as IPS, EDGE_MACS as MACS
from control import rpc
import pydp

pytestmark = [pytest.mark.dpdk, pytest.mark.netns]

METRICS = "127.0.0.1:19469"


def appliance_text(edges=("e1", "e2"), macless=()) -> str:
    """web with these edges (the macless ones without their MAC: the daemon resolves it) and the other cluster; the
    edges serve nothing, so their health is type none: always up (tests/netns/test_health_live.py checks)."""
    web = "".join(edge_toml(e, IPS[e], None if e in macless else MACS[e]) for e in edges)
    return appliance_toml(cluster_toml("web", VIP, 1, web), OTHER_TOML)


def pydpctl(lab, *args, check=True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-P", "-m", "control.cli", "--socket", lab["ctl"].socket, *map(str, args)],
                       capture_output=True, text=True, timeout=60)
    if check:
        assert p.returncode == 0, f"pydpctl {' '.join(map(str, args))}: {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def wait_applied(lab, timeout=15.0) -> dict:
    """Waits until the daemon has applied the store's current revision to a running data plane."""
    def applied():
        try:
            s = rpc.call(lab["ctl"].socket, "status")
        except ConnectionError:
            return None
        d = s["daemon"]
        return s if s["dataplane_up"] and d["revision"] == d["applied_revision"] else None

    return eventually(applied, timeout, interval=0.1,
                      what=lambda: f"the daemon to apply the config:\n{lab['ctl'].log.read_text()[-3000:]}")


def reset(lab, edges=("e1", "e2"), macless=()) -> None:
    f = lab["tmp"] / "reset.toml"
    f.write_text(appliance_text(edges, macless))
    pydpctl(lab, "import", f)
    wait_applied(lab)


def region_web(lab) -> dict:
    from control import observe

    return observe.clusters(lab["dp"].region)["web"]


def send(lab, *extra, flows=200, rounds=20, pps=2000, start_file=None, settle=1.5) -> dict:
    args = ["--iface", "c0", "--lb-mac", LB_MAC, "--vip", VIP, "--flows", flows, "--rounds", rounds, "--pps", pps,
            "--settle", settle, *extra]
    if start_file is not None:
        args += ["--start-file", start_file]
    return traffic(lab["cl_ns"], lab["tmp"], *args)


def during(lab, fn, delay: float):
    """Runs fn in a thread delay seconds after the traffic starts; returns (start_file, thread, errors)."""
    start_file = lab["tmp"] / f"started-{time.monotonic_ns()}"
    errors: list = []

    def run():
        try:
            eventually(start_file.exists, 60, "the traffic to start", interval=0.01)
            time.sleep(delay)           # bounded on purpose: fn runs this far into the traffic
            fn()
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    return start_file, t, errors


def assert_clean(report, sent):
    assert report["missing"] == 0, report["missing_first"]
    assert report["duplicates"] == 0
    assert report["unique"] == report["sent"] == sent


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ctl-live")
    with contextlib.ExitStack() as stack:
        lb_ns = stack.enter_context(netns("pydpt-lb"))
        cl_ns = stack.enter_context(netns("pydpt-cl"))
        # c0 has no address: traffic.py uses raw sockets, and the client namespace's only address is e3's, so its
        # ARP traffic always carries e3's MAC
        veth(lb_ns, "lb0", "c0", ns_b=cl_ns, mac_a=LB_MAC)
        # e3 answers ARP for its address (a macvlan with e3's MAC): the daemon resolves an edge added without a MAC
        ns_run(cl_ns, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1")     # only e3 answers for e3's address
        ns_run(cl_ns, "ip", "link", "add", "link", "c0", "name", "e3", "address", MACS["e3"], "type", "macvlan",
               "mode", "private")
        ns_run(cl_ns, "ip", "addr", "add", f"{IPS['e3']}/24", "dev", "e3")
        ns_run(cl_ns, "ip", "link", "set", "e3", "up")
        # the data plane starts with a config of its own and owns nothing: ownership and the store's config
        # come from the daemon
        dp = DataplaneProcess(lb_ns, appliance_text(), tmp, args=["--managed"])
        stack.callback(dp.stop)
        dp.start()
        ns_run(lb_ns, "ip", "link", "set", "pydp-p0", "up")
        ns_run(lb_ns, "ip", "addr", "add", "198.51.100.2/24", "dev", "pydp-p0")
        db = tmp / "pydp.db"
        (tmp / "appliance.toml").write_text(appliance_text())
        imp = subprocess.run([sys.executable, "-P", "-m", "control.cli", "--db", str(db), "import",
                              str(tmp / "appliance.toml")], capture_output=True, text=True, timeout=60)
        assert imp.returncode == 0, imp.stderr
        ctl = ControlProcess(lb_ns, tmp, db, dp.shm, metrics=METRICS, args=["--own-all"])
        stack.callback(ctl.stop)
        ctl.start()
        lab = {"lb_ns": lb_ns, "cl_ns": cl_ns, "dp": dp, "ctl": ctl, "tmp": tmp, "db": db}
        wait_applied(lab)
        yield lab


def test_a_added_edge_gets_new_flows_and_existing_flows_stay(lab):
    reset(lab)
    # e3 is added without a MAC: the daemon provokes ARP and reads the answer from the kernel's neighbour table.
    # The ARP request goes out through the data plane's exception path; the macvlan with e3's address and MAC in
    # the client namespace (the lab fixture) answers it, and the answer comes back the same way.
    ns_run(lab["lb_ns"], "ip", "neigh", "flush", "to", IPS["e3"], check=False)
    version = region_web(lab)["table_version"]
    start, t, errors = during(lab, lambda: pydpctl(lab, "edge", "add", "web", f"e3={IPS['e3']}"), 0.8)
    report = send(lab, flows=200, rounds=25, pps=2000, start_file=start)
    t.join(60)
    assert not errors, errors
    assert_clean(report, 200 * 25)
    before = {}
    for flow, macs in report["per_flow"].items():
        assert len(macs) == 1, f"flow {flow} moved: {macs}"
        assert MACS["e3"] not in macs           # every flow existed before e3 came
        before[flow] = next(iter(macs))
    web = region_web(lab)
    assert web["edges"]["e3"]["mac"] == MACS["e3"] and web["edges"]["e3"]["state"] == "up"
    assert web["table_version"] > version
    assert any(e["event"] == "mac_resolved" and e.get("ip") == IPS["e3"] for e in lab["ctl"].events())
    # flows 200..399 are new: some reach e3; flows 0..199 keep their edges
    report = send(lab, flows=400, rounds=4, pps=2000)
    assert_clean(report, 400 * 4)
    new_on_e3 = 0
    for flow, macs in report["per_flow"].items():
        assert len(macs) == 1, f"flow {flow} split: {macs}"
        mac = next(iter(macs))
        if int(flow) < 200:
            assert mac == before[flow], f"flow {flow} moved from {before[flow]} to {mac}"
        elif mac == MACS["e3"]:
            new_on_e3 += 1
    assert 30 <= new_on_e3 <= 110, f"{new_on_e3} of 200 new flows reached e3 (a third expected)"


def test_b_removed_edge_moves_only_its_flows(lab):
    reset(lab, edges=("e1", "e2", "e3"))
    start, t, errors = during(lab, lambda: pydpctl(lab, "edge", "remove", "web", "e1"), 1.0)
    report = send(lab, flows=300, rounds=20, pps=2000, start_file=start)
    t.join(60)
    assert not errors, errors
    assert_clean(report, 300 * 20)
    moved = 0
    for flow, macs in report["per_flow"].items():
        if MACS["e1"] in macs:
            assert len(macs) == 2, f"flow {flow}: {macs}"      # e1, then e2 or e3
            moved += 1
        else:
            assert len(macs) == 1, f"flow {flow} moved although its edge stayed: {macs}"
    assert moved > 30, f"only {moved} flows were on e1"
    assert "e1" not in region_web(lab)["edges"]


def test_c_daemon_killed_and_restarted_disturbs_nothing(lab):
    # e3 has no MAC in the store: the restarted daemon takes the one its predecessor resolved from the data plane
    # (the kernel's entry is gone meanwhile), so e3 never goes down and no table is rebuilt
    reset(lab, edges=("e1", "e2", "e3"), macless=("e3",))
    ctl = lab["ctl"]
    web = region_web(lab)
    applied_before = len(ctl.events("config_applied"))

    def kill_and_restart():
        ctl.kill()
        ns_run(lab["lb_ns"], "ip", "neigh", "flush", "to", IPS["e3"], check=False)
        time.sleep(0.8)                 # the data plane forwards alone on its last tables
        ctl.start()

    start, t, errors = during(lab, kill_and_restart, 0.8)
    report = send(lab, flows=200, rounds=30, pps=2000, start_file=start)
    t.join(60)
    assert not errors, errors
    assert_clean(report, 200 * 30)
    for flow, macs in report["per_flow"].items():
        assert len(macs) == 1, f"flow {flow} moved during the daemon's restart: {macs}"
    wait_applied(lab)
    after = region_web(lab)
    assert after["table_version"] == web["table_version"], "the restart rebuilt the Maglev table"
    assert after["uid"] == web["uid"] and after["slot"] == web["slot"]
    assert {n: (e["slot"], e["uid"], e["mac"], e["state"]) for n, e in after["edges"].items()} == \
        {n: (e["slot"], e["uid"], e["mac"], e["state"]) for n, e in web["edges"].items()}
    applied = ctl.events("config_applied")
    assert len(applied) > applied_before and applied[-1]["rebuilt"] == []


def test_d_dataplane_restart_gets_the_config_back(lab):
    reset(lab, edges=("e2", "e3"))
    dp, ctl = lab["dp"], lab["ctl"]
    old_pid = dp.proc.pid
    # the data plane dies (SIGKILL: its region stays, with a heartbeat that stops)
    dp.proc.kill()
    dp.proc.wait(10)
    eventually(lambda: any(e["event"] == "dataplane_lost" and e.get("pid") == old_pid for e in ctl.events()), 10,
               "the daemon to notice the data plane's death", interval=0.2)
    s = rpc.call(ctl.socket, "status")
    assert s["dataplane_up"] is False and s["dataplane"]["alive"] is False
    # the daemon keeps taking changes meanwhile; they are applied to the next data plane
    pydpctl(lab, "edge", "edit", "web", "e3", "--weight", "2")
    dp.stop()
    # the new data plane starts from its own file (e1, e2; no ownership): the daemon re-applies the store's
    dp.start()
    ns_run(lab["lb_ns"], "ip", "link", "set", "pydp-p0", "up")
    def reapplied():
        s = wait_applied(lab)
        web = next(c for c in s["clusters"] if c["name"] == "web")
        return (s["dataplane"]["pid"] != old_pid and web["active"]
                and [e["name"] for e in web["edges"] if e["state"] == "up"] == ["e2", "e3"])

    eventually(reapplied, 20, lambda: f"the store re-applied to the new data plane: {wait_applied(lab)}",
               interval=0.2)
    assert set(region_web(lab)["edges"]) == {"e2", "e3"} and region_web(lab)["edges"]["e3"]["weight"] == 2
    assert any(e["event"] in ("dataplane_restarted", "dataplane_attached") and e.get("pid") != old_pid
               for e in ctl.events())
    report = send(lab, flows=100, rounds=5, pps=2000, settle=1.0)
    assert_clean(report, 100 * 5)
    for flow, macs in report["per_flow"].items():
        assert len(macs) == 1 and set(macs) <= {MACS["e2"], MACS["e3"]}, f"flow {flow}: {macs}"


def test_e_metrics(lab):
    reset(lab, edges=("e1", "e2"))
    send(lab, flows=50, rounds=4, pps=2000, settle=0.5)
    text = scrape(lab["lb_ns"], METRICS)
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    names = {k.split("{")[0] for k in samples}
    for name in ("pydp_port_rx_packets_total", "pydp_port_tx_packets_total", "pydp_port_exception_packets_total",
                 "pydp_port_dropped_packets_total", "pydp_cluster_packets_total", "pydp_edge_packets_total",
                 "pydp_edge_bytes_total", "pydp_edge_new_flows_total", "pydp_worker_busy_cycles_total",
                 "pydp_flow_table_live_flows", "pydp_flow_table_capacity_flows", "pydp_flow_table_occupancy_ratio", "pydp_cluster_owned",
                 "pydp_edge_state", "pydp_config_generation", "pydp_dataplane_up"):
        assert name in names, f"{name} missing from\n{text[:2000]}"
    assert samples["pydp_dataplane_up"] == 1
    assert samples['pydp_cluster_owned{cluster="web"}'] == 1
    assert samples['pydp_port_rx_packets_total{port="net_af_packet0"}'] >= 200
    assert samples['pydp_cluster_packets_total{cluster="web"}'] >= 200
    assert samples['pydp_edge_state{cluster="web",edge="e1",state="up"}'] == 1
    assert samples['pydp_edge_state{cluster="web",edge="e1",state="down"}'] == 0
    assert samples['pydp_port_dropped_packets_total{port="net_af_packet0",reason="malformed"}'] == 0
    # flow_capacity 65536 asked: whole buckets of six ways, 16384 of them
    assert samples['pydp_flow_table_capacity_flows{worker="0"}'] == 16384 * 6
    live = samples['pydp_flow_table_live_flows{worker="0"}']
    assert live >= 50
    assert samples['pydp_flow_table_occupancy_ratio{worker="0"}'] == pytest.approx(live / (16384 * 6))
    assert samples['pydp_worker_busy_cycles_total{worker="0"}'] > 0
    assert samples["pydp_config_generation"] >= 1
    # per-edge flows as ipvsadm counts connections: the UDP flows are live and not TCP-established (InActConn)
    inactive = sum(v for k, v in samples.items() if k.startswith('pydp_edge_inactive_flows{cluster="web"'))
    active = sum(v for k, v in samples.items() if k.startswith('pydp_edge_active_flows{cluster="web"'))
    assert inactive >= 50 and active == 0
    assert samples[f'pydp_build_info{{python="{platform.python_version()}",version="{pydp.__version__}"}}'] == 1
    assert samples["process_resident_memory_bytes"] > 0 and samples["pydp_dataplane_process_resident_memory_bytes"] > 0
    assert 0 <= samples["pydp_dataplane_heartbeat_age_seconds"] < 3
    assert not any(v < 0 for v in samples.values()), "a -1 sentinel in the scrape"
    assert not any(n.endswith("_rate") for n in names)
    # Prometheus' own linter accepts the exposition (names, units, _total on counters only, help text)
    lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0 and lint.stdout + lint.stderr == "", lint.stdout + lint.stderr
    # the shipped dashboard and alert rules name only metrics this live scrape declares
    from promql_names import exposed_names, used_names
    assert sorted(used_names() - exposed_names(text)) == []


def test_f_pydpctl_read_commands(lab):
    reset(lab, edges=("e1", "e2"))
    send(lab, flows=60, rounds=3, pps=2000, settle=0.5)
    s = json.loads(pydpctl(lab, "status", "--json").stdout)
    assert s["daemon"]["running"] and s["carp_known"] and s["dataplane_up"]
    web = next(c for c in s["clusters"] if c["name"] == "web")
    assert web["carp"] == {**web["carp"], "local": "master", "peer": "unknown", "source": "own-all"}
    assert [(e["name"], e["state"], e["mac"]) for e in web["edges"]] == [("e1", "up", MACS["e1"]),
                                                                      ("e2", "up", MACS["e2"])]
    assert sum(e["packets"] for e in web["edges"]) >= 180
    text = pydpctl(lab, "status").stdout
    assert "master" in text and "e2" in text
    st = json.loads(pydpctl(lab, "stats", "--json", "--interval", "0.3").stdout)
    assert {"ports", "clusters", "workers", "flow_table", "rates"} <= set(st)
    assert st["clusters"]["web"]["edges"]["e1"]["packets"] > 0
    assert st["rates"]["interval_s"] > 0
    watch = pydpctl(lab, "stats", "--watch", "0.2", "--count", "2", "--json").stdout.strip().splitlines()
    assert len(watch) == 2 and all("rates" in json.loads(line) for line in watch)
    f = json.loads(pydpctl(lab, "flows", "--json", "--cluster", "web", "--edge", "e2", "--limit", "5").stdout)
    assert f["matched"] > 0 and 0 < len(f["flows"]) <= 5
    assert all(x["edge"] == "e2" and x["cluster"] == "web" and x["protocol"] == "udp" for x in f["flows"])
    one = f["flows"][0]["client"]
    f = json.loads(pydpctl(lab, "flows", "--json", "--client", one).stdout)
    assert f["flows"] and all(x["client"] == one for x in f["flows"])
    bad = pydpctl(lab, "flows", "--cluster", "nope", check=False)
    assert bad.returncode == 1 and "nope" in bad.stderr


def test_g_other_writer_and_graceful_stop(lab):
    """A change written straight into the store (pydpctl --db) is applied by the store watcher; SIGTERM removes the
    socket and leaves the data plane forwarding on its tables and ownership."""
    reset(lab, edges=("e1", "e2"))
    ctl = lab["ctl"]
    p = subprocess.run([sys.executable, "-P", "-m", "control.cli", "--db", str(lab["db"]), "edge", "drain", "web",
                        "e2"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    eventually(lambda: region_web(lab)["edges"]["e2"]["state"] == "draining", 10,
               lambda: f"e2 draining in the region:\n{ctl.log.read_text()[-2000:]}", interval=0.1)
    assert any(e["event"] == "config_applied" and "another writer" in e["reason"] for e in ctl.events())
    web = region_web(lab)
    gen = lab["dp"].region.generation
    assert ctl.stop() == 0
    assert not (lab["tmp"] / ctl.socket).exists()
    after = region_web(lab)
    assert lab["dp"].region.generation == gen and after == web and after["active"]
    # flows 0..99 may still be pinned to e2 from earlier tests (draining keeps them); 100..299 are new: all on e1
    report = send(lab, flows=300, rounds=2, pps=2000, settle=0.5)
    assert_clean(report, 300 * 2)
    assert all(set(m) == {MACS["e1"]} for f, m in report["per_flow"].items() if int(f) >= 100)
    ctl.start()
    wait_applied(lab)
    events = [e["event"] for e in ctl.events()]
    assert "daemon_stopped" in events


def _log_tail(lab):
    return lambda: f"the daemon (log tail below)\n{lab['ctl'].log.read_text()[-3000:]}"


def test_h_foreign_publish_is_drift_and_repaired_within_a_second(lab):
    """Issue 12, story 1: e1 drained and e3 removed through pydpctl, then another writer publishes the file's
    clusters (what an unmanaged data plane's SIGHUP does). The daemon notices the generation it did not publish,
    logs what differed, and puts the store back within a second; new flows then reach e2 only."""
    from pydp import config as pconfig
    from pydp.apply import apply_config

    reset(lab, edges=("e1", "e2", "e3"))
    pydpctl(lab, "edge", "drain", "web", "e1")
    pydpctl(lab, "edge", "remove", "web", "e3")
    wait_applied(lab)
    assert {n: e["state"] for n, e in region_web(lab)["edges"].items()} == {"e1": "draining", "e2": "up"}
    ctl, region = lab["ctl"], lab["dp"].region
    drifts_before = len(ctl.events("config_drift"))
    published = region.generation
    file_cfg = pconfig.loads(appliance_text(("e1", "e2", "e3")))
    t0 = time.monotonic()
    foreign = apply_config(region, file_cfg, owned={"web", "other"}).generation
    assert foreign == published + 1
    eventually(lambda: region.generation > foreign and {n: e["state"] for n, e in region_web(lab)["edges"].items()}
               == {"e1": "draining", "e2": "up"}, 5, _log_tail(lab))
    repaired_s = time.monotonic() - t0
    assert repaired_s < 2.0, f"repair took {repaired_s:.2f} s"     # watch period 0.5 s + one publish
    print(f"\ndrift: a foreign generation was repaired {repaired_s:.3f} s after it was published")
    drift = ctl.events("config_drift")[drifts_before:]
    assert len(drift) == 1 and drift[0]["generation"] == foreign and drift[0]["published_generation"] == published
    text = " | ".join(drift[0]["differences"])
    assert "edge e3 is live but was not published" in text and "edge e1" in text and "draining" in text
    st = rpc.call(ctl.socket, "status")["daemon"]
    assert st["drifts"] >= 1 and st["drift"] is None and st["published_generation"] == region.generation
    # earlier tests left flows pinned to e1 (draining keeps them): cleared, every flow below is new: e2 only
    pydpctl(lab, "flows", "flush", "--cluster", "web")
    report = send(lab, flows=300, rounds=2, pps=2000, settle=0.5)
    assert_clean(report, 300 * 2)
    for flow, macs in report["per_flow"].items():
        assert set(macs) == {MACS["e2"]}, f"new flow {flow} went to {macs}"


def test_i_sighup_of_a_managed_data_plane_reapplies_the_store(lab):
    """`systemctl reload` (SIGHUP) of a managed data plane publishes nothing itself: it asks the daemon, which
    re-applies the store (reload_requested, config_applied), and no drift is seen."""
    import os
    import signal

    reset(lab, edges=("e1", "e2", "e3"))
    pydpctl(lab, "edge", "remove", "web", "e3")
    wait_applied(lab)
    ctl, dp = lab["ctl"], lab["dp"]
    drifts = len(ctl.events("config_drift"))
    reloads = len(ctl.events("reload_requested"))
    before = dp.region.reload_requests
    pid = int(dp.region.hdr.dp_pid)
    os.kill(pid, signal.SIGHUP)
    eventually(lambda: len(ctl.events("reload_requested")) > reloads, 5, _log_tail(lab))
    assert dp.region.reload_requests == before + 1
    eventually(lambda: any(e["reason"].startswith("reload requested") for e in ctl.events("config_applied")), 5,
               _log_tail(lab))
    assert set(region_web(lab)["edges"]) == {"e1", "e2"}         # the file's e3 never came back
    assert len(ctl.events("config_drift")) == drifts
    assert '"event":"reload_requested"' in dp.log.read_text()     # the data plane logs the same event name
