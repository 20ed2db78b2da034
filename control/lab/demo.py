"""`pydp-lab demo`: the whole system at work in the virtual lab, told as a story with measured figures.

1. spread   many clients (long-lived keep-alive connections and a stream of new ones) through the cluster IP:
            the share of new connections each edge took
2. DSR      replies never cross the load balancer: its port counters, and a capture on its bridge port that counts
            the reply packets (source: the cluster IP) crossing it, against the replies the clients received
3. edge     an edge's nginx killed: its connections break, the health checks take it out (detection time) and,
            nginx restarted, bring it back (rejoin time)
4. drain    an edge drained: its connections go on, it gets no new ones
5. takeover the active appliance killed (data plane and daemon): the passive takes over (CARP), and the long-lived
            connections survive (byte counts on both ends)

The lab is built first and removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from control.lab import topology as T
from control.lab.lab import Lab
from control.lab.load import Load, when
from control.lab.net import terminate

REPLIES = (f"(ip src {T.VIP} and tcp src port {T.HTTP_PORT}) or (ip6 src {T.VIP6} and tcp src port {T.HTTP_PORT})"
           f" or (ip src {T.VIP} and udp src port {T.UDP_PORT})")


class Capture:
    """tcpdump on one bridge port of the switch namespace, writing a pcap (kept as evidence)."""

    def __init__(self, lab: Lab, port: str, path: Path, expr: str = REPLIES):
        self.path = path
        self.proc = subprocess.Popen(["ip", "netns", "exec", lab.topo.sw_ns, "tcpdump", "-i", port, "-nn", "-U",
                                      "-s", "128", "-w", str(path), expr], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        lab.record("pids", self.proc.pid)
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.3)                          # tcpdump opens the file before its filter is on the socket

    def stop(self) -> int:
        """Stops the capture; returns the packets it holds."""
        terminate(self.proc, 5)
        out = subprocess.run(["tcpdump", "-r", str(self.path), "-nn", "-q"], capture_output=True, text=True,
                             timeout=60).stdout
        return len(out.splitlines())


def plot_share(load: Load, t0: float, marks: list[tuple[float, str]], path: Path, say=print) -> None:
    """PNG: each edge's share of new connections per second, with the story's events marked."""
    try:
        import matplotlib
    except ImportError:
        say("no plot: matplotlib is not installed (it comes with the lab extra: pip install 'pydp[lab]')")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = [e for e in load.new() if e["edge"]]
    edges = sorted({e["edge"] for e in events}, key=lambda n: int(n[1:]))
    end = max((e["t"] for e in events), default=t0)
    seconds = list(range(int(end - t0) + 1))
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    for edge in edges:
        ys = []
        for s in seconds:
            got = [e["edge"] for e in events if t0 + s <= e["t"] < t0 + s + 1]
            ys.append(got.count(edge) / len(got) if got else float("nan"))
        ax.plot(seconds, ys, label=edge, linewidth=1.5)
    for t, label in marks:
        ax.axvline(t - t0, color="grey", linestyle=":", linewidth=1)
        ax.text(t - t0, 1.02, label, rotation=90, fontsize=7, va="bottom", ha="center")
    ax.set_ylim(0, 1)
    ax.set_xlabel("seconds since the clients started")
    ax.set_ylabel("share of new connections")
    ax.set_title("pydp-lab: per-edge share of new connections", fontsize=10, pad=60)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def story(lab: Lab, out: Path, conns: int, say) -> dict:
    res: dict = {"edges": sorted(lab.edges), "clients": lab.topo.clients}
    marks: list[tuple[float, str]] = []
    a, b = lab.a, lab.b
    edge_names = sorted(lab.edges, key=lambda n: int(n[1:]))
    victim, drained = lab.edges[edge_names[1]], lab.edges[edge_names[-1]]

    # 1 + 2: spread, and DSR proven while it runs
    cap_lb = Capture(lab, "pA", out / "lb-port.pcap")
    cap_cl = Capture(lab, "pc", out / "client-port.pcap")
    before = a.counters()
    say(f"clients: {conns} long-lived keep-alive connections and 20 new connections/s from {lab.topo.clients} "
        f"addresses to {T.VIP}:80")
    load = Load(lab, vip=T.VIP, conns=conns).start()
    t0 = time.time()
    time.sleep(8)
    t1 = time.time()
    after = a.counters()
    res["dsr_replies_via_lb"] = cap_lb.stop()
    res["dsr_replies_at_clients"] = cap_cl.stop()
    res["edge_share"] = load.share(t0, t1)
    res["long_lived_by_edge"] = load.conns_by_edge()
    res["lb_counters"] = {k: after[k] - before[k] for k in ("rx", "tx", "web_packets")}
    res["lb_forwarded_requests"] = res["lb_counters"]["web_packets"]

    # 3: an edge fails and comes back
    say(f"killing nginx on {victim.name}")
    master = lab.master() or a
    t_kill = victim.kill()
    marks.append((t_kill, f"{victim.name} killed"))
    t_down = when(lambda: lab.edge_health(master).get(victim.name) == "down", 30)
    res["edge_detect_s"] = round(t_down - t_kill, 3) if t_down else None
    marks.append((t_down or time.time(), f"{victim.name} out"))
    time.sleep(2)
    res["edge_broken_conns"] = {}
    for c in load.broken():
        res["edge_broken_conns"][c["edge"]] = res["edge_broken_conns"].get(c["edge"], 0) + 1
    t_fix = time.time()
    victim.start()
    t_up = when(lambda: lab.edge_health(master).get(victim.name) == "up", 30)
    res["edge_rejoin_s"] = round(t_up - t_fix, 3) if t_up else None
    marks.append((t_up or time.time(), f"{victim.name} back"))
    res["new_to_failed_edge_after_detection"] = sum(
        1 for e in load.new(t_down + 0.5 if t_down else t_kill, t_fix) if e["edge"] == victim.name)
    time.sleep(3)

    # 4: drain
    say(f"draining {drained.name}")
    t_drain = time.time()
    for app in (a, b):
        app.pydpctl("edge", "drain", "web", drained.name)
    marks.append((t_drain, f"{drained.name} drained"))
    time.sleep(5)
    t_undrain = time.time()
    for app in (a, b):
        app.pydpctl("edge", "undrain", "web", drained.name)
    marks.append((t_undrain, f"{drained.name} undrained"))
    drained_conns = [c for c in load.open_conns() if c["edge"] == drained.name]
    broken_ids = {c["id"] for c in load.broken()}
    res["drain"] = {"edge": drained.name,
                    "new_connections_while_drained": sum(1 for e in load.new(t_drain + 0.5, t_undrain)
                                                         if e["edge"] == drained.name),
                    "its_connections": len(drained_conns),
                    "its_connections_alive": sum(1 for c in drained_conns if c["id"] not in broken_ids)}
    time.sleep(2)

    # 5: takeover
    alive_before = {c["id"] for c in load.open_conns()} - {c["id"] for c in load.broken()}
    say(f"killing the active appliance ({master.name}): data plane and daemon, SIGKILL")
    standby = lab.other(master)
    t_dead = master.kill()
    marks.append((t_dead, f"LB {master.name} killed"))
    t_master = when(lambda: standby.state() == "master", 30)
    res["takeover_s"] = round(t_master - t_dead, 3) if t_master else None
    marks.append((t_master or time.time(), f"LB {standby.name} master"))
    t_back = when(lambda: any(e["edge"] for e in load.new(t_dead + 0.001)), 30)
    res["traffic_back_s"] = round(t_back - t_dead, 3) if t_back else None
    time.sleep(8)                 # every connection makes requests through the new active appliance

    summary = load.stop()
    check = load.byte_check()
    by_id = {r["id"]: r for r in check["rows"]}
    res["connections_total"] = len(summary["conns"])
    res["connections_alive_at_takeover"] = len(alive_before)
    res["connections_survived_takeover"] = sum(1 for i in alive_before if by_id[i]["equal"]
                                               and by_id[i]["broken"] is None)
    res["byte_counts_equal"] = check["equal"]
    res["new_connections"] = summary["new_connections"]
    plot_share(load, t0, marks, out / "edge-share.png", say)
    return res


def report_text(res: dict) -> str:
    lines = ["pydp-lab demo", "=============", ""]
    lines.append(f"Edges {', '.join(res['edges'])}; {res['clients']} client addresses; "
                 f"{res['connections_total']} long-lived connections, {res['new_connections']} new ones.")
    lines += ["", "1. Spread of new connections over the edges (Maglev), first 8 s:", "",
              "   edge   share   long-lived connections"]
    for e in res["edges"]:
        lines.append(f"   {e:<6} {res['edge_share'].get(e, 0.0):6.1%}   {res['long_lived_by_edge'].get(e, 0)}")
    c = res["lb_counters"]
    lines += ["", "2. Direct Server Return:",
              f"   the load balancer's port: rx {c['rx']} packets, tx {c['tx']} packets "
              f"({res['lb_forwarded_requests']} client packets forwarded to edges)",
              f"   reply packets the clients received: {res['dsr_replies_at_clients']}",
              f"   reply packets crossing the load balancer's port (tcpdump): {res['dsr_replies_via_lb']}"]
    d = res["drain"]
    lines += ["", "3. Edge failure:",
              f"   detected and taken out in {res['edge_detect_s']} s; back in {res['edge_rejoin_s']} s after "
              f"nginx restarted",
              f"   connections broken, by edge: {res['edge_broken_conns'] or 'none'}; new connections to it once "
              f"out: {res['new_to_failed_edge_after_detection']}",
              "", "4. Drain:",
              f"   {d['edge']} drained 5 s: {d['new_connections_while_drained']} new connections to it; "
              f"{d['its_connections_alive']} of its {d['its_connections']} connections went on",
              "", "5. Takeover:",
              f"   active appliance killed; the passive was master after {res['takeover_s']} s, new connections "
              f"answered again after {res['traffic_back_s']} s",
              f"   long-lived connections: {res['connections_survived_takeover']} of "
              f"{res['connections_alive_at_takeover']} alive at the kill survived "
              f"(byte counts equal on client and nginx for {res['byte_counts_equal']} of "
              f"{res['connections_total']})"]
    lines += ["", f"Run time {res['run_s']} s."]
    return "\n".join(lines) + "\n"


def run(topo: T.Topology, out: Path, json_path: Path | None, conns: int, say=print) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    lab = Lab(topo)
    say(f"building the lab {topo.name!r} ({topo.edges} edges, 2 appliances)")
    lab.up(log=lambda m: say("  " + m))      # refuses a lab of that name already up (and leaves it alone)
    try:
        res = story(lab, out, conns, say)
    finally:
        say("removing the lab")
        lab.down()
    res["run_s"] = round(time.time() - t_start, 1)
    text = report_text(res)
    (out / "report.txt").write_text(text)
    json_path = json_path or out / "report.json"
    json_path.write_text(json.dumps(res, indent=2) + "\n")
    say("")
    say(text)
    plot = out / "edge-share.png"
    say(f"report: {out / 'report.txt'}, JSON: {json_path}, plot: {plot if plot.exists() else 'none'}, "
        f"captures: {out / 'lb-port.pcap'}, {out / 'client-port.pcap'}")
    return res
