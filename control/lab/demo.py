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
        return len(self.times())

    def times(self, expr: str = "") -> list[float]:
        """The timestamps (wall clock) of the captured packets that match expr (all of them by default)."""
        return [t for t, _, _ in self.packets(expr)]

    def packets(self, expr: str = "") -> list[tuple[float, str, int]]:
        """(timestamp, source address, source port) of the captured IPv4 packets that match expr."""
        out = subprocess.run(["tcpdump", "-r", str(self.path), "-nn", "-q", "-tt", *([expr] if expr else [])],
                             capture_output=True, text=True, timeout=60).stdout
        rows = []
        for line in out.splitlines():
            f = line.split()
            if len(f) >= 3 and line[:1].isdigit():
                src, _, port = f[2].rpartition(".") if f[1] == "IP" else (f[2], "", "")
                rows.append((float(f[0]), src, int(port) if port.isdigit() else 0))
        return rows


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
    if topo.scale_out:
        say(f"building the scale-out lab {topo.name!r} ({topo.edges} edges, {topo.scale_out} appliances "
            "behind a BGP/ECMP router)")
    else:
        say(f"building the lab {topo.name!r} ({topo.edges} edges, 2 appliances)")
    lab.up(log=lambda m: say("  " + m))      # refuses a lab of that name already up (and leaves it alone)
    try:
        res = scaleout_story(lab, out, conns, say) if topo.scale_out else story(lab, out, conns, say)
    finally:
        say("removing the lab")
        lab.down()
    res["run_s"] = round(time.time() - t_start, 1)
    text = scaleout_report(res) if topo.scale_out else report_text(res)
    (out / "report.txt").write_text(text)
    json_path = json_path or out / "report.json"
    json_path.write_text(json.dumps(res, indent=2) + "\n")
    say("")
    say(text)
    plot = out / "edge-share.png"
    caps = sorted(str(c) for c in out.glob("*.pcap"))
    say(f"report: {out / 'report.txt'}, JSON: {json_path}, plot: {plot if plot.exists() else 'none'}, "
        f"captures: {', '.join(caps)}")
    return res


# ---------------------------------------------------------------------------------------------------------------
# The scale-out story (pydp-lab demo --scale-out N): N appliances announce cluster web over BGP, the router spreads
# the clients over them (ECMP, L4 hash), flow sync runs among all of them.

REPLIES_V4 = f"ip src {T.VIP} and tcp src port {T.HTTP_PORT}"
# the SYNs the router sent (an appliance's port also carries the same SYN forwarded on to an edge: its source MAC is
# the appliance's)
SYNS = (f"ether src {T.ROUTER_MAC} and ip dst {T.VIP} and tcp dst port {T.HTTP_PORT} and "
        "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn")
LB_PORT = f"({REPLIES_V4}) or ({SYNS})"


def lb_captures(lab: Lab, out: Path, tag: str) -> dict[str, Capture]:
    """One capture per appliance's bridge port: the replies crossing it (DSR says none) and the SYNs the router
    sent it (the ECMP spread)."""
    return {name: Capture(lab, f"p{name}", out / f"{tag}-lb{name}.pcap", LB_PORT) for name in lab.appliances}


def lb_syns(caps: dict[str, Capture], new: list[dict]) -> dict[str, set[tuple[str, int]]]:
    """Appliance → the new connections (client address, port) whose SYN the router sent it, of those in `new`."""
    want = {(e["src"], e["sport"]) for e in new if e.get("sport")}
    return {n: {(src, port) for _, src, port in c.packets(SYNS)} & want for n, c in caps.items()}


def ecmp_hops(lab: Lab, rows: list[dict]) -> list[str | None]:
    """The appliance the router's kernel picks for each (src, sport) to VIP:80 (`ip route get` with the L4 hash):
    which appliance a connection passes, without touching it."""
    specs = {s.addr: s.name for s in lab.topo.appliance_specs}
    batch = "".join(f"route get {T.VIP} from {r['src']} iif eth1 ipproto tcp sport {r.get('sport') or r['port']} dport "
                    f"{T.HTTP_PORT}\n" for r in rows)
    if not batch:
        return []
    p = subprocess.run(["ip", "-n", lab.topo.router_ns, "-batch", "-"], input=batch, capture_output=True,
                       text=True, timeout=60)
    out = []
    for line in p.stdout.splitlines():
        if line.startswith(T.VIP):
            f = line.split()
            out.append(specs.get(f[f.index("via") + 1]) if "via" in f else None)
    return out


def bgp_info(lab: Lab) -> dict:
    """Engine, version and BFD as the appliances report them (pydpctl status), the router's view beside it."""
    out = {"engine": "bird", "version": None, "bfd": None, "router": {"engine": "bird",
                                                                      "version": lab.router.version()}}
    for a in lab.appliances.values():
        try:
            b = a.status().get("bgp") or {}
        except (ConnectionError, OSError):
            continue
        if b:
            out["engine"] = b.get("engine", "bird")
            out["version"] = b.get("version")
            out["bfd"] = all(s.get("bfd") in (True, "up", "Up") for s in b.get("sessions", [])) and \
                bool(b.get("sessions"))
            break
    sessions = lab.router.sessions()
    out["router"]["sessions"] = sessions
    out["router"]["bfd_up"] = sum(1 for s in sessions.values() if s.get("bfd") == "Up")
    if out["bfd"] is None:
        out["bfd"] = out["router"]["bfd_up"] == len(lab.appliances)
    return out


def scaleout_story(lab: Lab, out: Path, conns: int, say) -> dict:
    lbs = sorted(lab.appliances)
    edge_names = sorted(lab.edges, key=lambda n: int(n[1:]))
    res: dict = {"lbs": lbs, "edges": edge_names, "clients": len(lab.topo.client_ips()), "scale_out": len(lbs)}
    marks: list[tuple[float, str]] = []
    res["bgp"] = bgp_info(lab)
    res["router_route"] = lab.router.nexthops(T.VIP)

    # 1 + 2: ECMP spread over the appliances, Maglev over the edges, DSR proven on every appliance's port
    caps = lb_captures(lab, out, "spread")
    cap_rt = Capture(lab, "pr", out / "router-port.pcap", REPLIES_V4)
    say(f"clients: {conns} long-lived keep-alive connections and 40 new connections/s from "
        f"{res['clients']} addresses to {T.VIP}:80, through the router")
    load = Load(lab, vip=T.VIP, conns=conns, new_rate=40).start()
    t0 = time.time()
    time.sleep(10)                              # the measuring window
    t1 = time.time()
    for c in caps.values():
        c.stop()
    syns = lb_syns(caps, load.new(t0, t1))
    total = sum(len(v) for v in syns.values())
    res["lb_new_connections"] = {n: len(v) for n, v in syns.items()}
    res["lb_share"] = {n: round(len(v) / total, 4) if total else 0.0 for n, v in syns.items()}
    res["dsr_replies_via_lb_by_lb"] = {n: len(c.times(REPLIES_V4)) for n, c in caps.items()}
    res["dsr_replies_via_lb"] = sum(res["dsr_replies_via_lb_by_lb"].values())
    res["dsr_replies_at_router"] = cap_rt.stop()
    res["edge_share"] = load.share(t0, t1)
    res["long_lived_by_edge"] = load.conns_by_edge()
    res["new_connections_window"] = len(load.new(t0, t1))

    # 3: an edge fails, seen by every appliance
    victim = lab.edges[edge_names[1]]
    say(f"killing nginx on {victim.name}")
    t_kill = victim.kill()
    marks.append((t_kill, f"{victim.name} killed"))
    detect = {}
    for a in lab.appliances.values():
        t = when(lambda: lab.edge_health(a).get(victim.name) == "down", 30)
        detect[a.name] = round(t - t_kill, 3) if t else None
    time.sleep(2)
    broken: dict[str, int] = {}
    for c in load.broken():
        broken[c["edge"]] = broken.get(c["edge"], 0) + 1
    t_down = t_kill + max((v for v in detect.values() if v is not None), default=0)
    t_fix = time.time()
    victim.start()
    rejoin = {}
    for a in lab.appliances.values():
        t = when(lambda: lab.edge_health(a).get(victim.name) == "up", 30)
        rejoin[a.name] = round(t - t_fix, 3) if t else None
    marks.append((t_fix, f"{victim.name} back"))
    res["edge_failure"] = {"edge": victim.name, "appliances": len(lbs), "detect_s": detect, "rejoin_s": rejoin,
                           "broken_by_edge": broken,
                           "new_to_it_after_detection": sum(1 for e in load.new(t_down + 0.5, t_fix)
                                                            if e["edge"] == victim.name)}
    time.sleep(2)

    # 4: an appliance drained: BGP withdraw, no new connections on it, its established ones go on elsewhere
    drained = lab.appliances[lbs[-1]]
    say(f"draining appliance {drained.name} (pydpctl appliance drain)")
    cap = Capture(lab, f"p{drained.name}", out / f"drain-lb{drained.name}.pcap", SYNS)
    broken_before = {c["id"] for c in load.broken()}
    t_drain = time.time()
    p = drained.pydpctl("appliance", "drain", check=False)
    if p.returncode == 0:
        others = [s.addr for s in lab.topo.appliance_specs if s.name != drained.name]
        t_w = when(lambda: lab.router.nexthops(T.VIP) == others, 30)
        marks.append((t_drain, f"LB {drained.name} drained"))
        time.sleep(5)                           # a window of new connections while it is drained
        t_end = time.time()
        syn_times = [t for t in cap.times() if (t_w or t_drain) + 0.5 <= t < t_end]
        drained.pydpctl("appliance", "undrain", check=False)
        t_back = when(lambda: len(lab.router.nexthops(T.VIP)) == len(lbs), 30)
        res["lb_drain"] = {"lb": drained.name, "withdrawn_s": round(t_w - t_drain, 3) if t_w else None,
                           "new_connections_to_it_while_drained": len(syn_times),
                           "connections_broken_while_drained": len({c["id"] for c in load.broken()}
                                                                   - broken_before),
                           "back_s": round(t_back - t_end, 3) if t_back else None}
    else:
        res["lb_drain"] = {"lb": drained.name, "error": (p.stderr or p.stdout).strip()[-300:]}
    cap.stop()
    time.sleep(2)

    # 5a: an appliance frozen (SIGSTOP): nothing closes its BGP session, BFD alone tells the router
    frozen = lab.appliances[lbs[0]]
    faddr = next(s.addr for s in lab.topo.appliance_specs if s.name == frozen.name)
    broken_before = {c["id"] for c in load.broken()}
    say(f"freezing appliance {frozen.name} (SIGSTOP: silent, only BFD notices)")
    t_freeze = lab.freeze_appliance(frozen)
    marks.append((t_freeze, f"LB {frozen.name} frozen"))
    t_gone = when(lambda: faddr not in lab.router.nexthops(T.VIP), 30)
    time.sleep(3)                               # its connections go on through the others
    t_thaw = lab.freeze_appliance(frozen, False)
    t_back = when(lambda: len(lab.router.nexthops(T.VIP)) == len(lbs), 60)
    res["lb_freeze"] = {"lb": frozen.name, "reroute_s": round(t_gone - t_freeze, 3) if t_gone else None,
                        "connections_broken": len({c["id"] for c in load.broken()} - broken_before),
                        "back_after_thaw_s": round(t_back - t_thaw, 3) if t_back else None}
    time.sleep(2)

    # 5b: an appliance SIGKILLed under load (every process: data plane, pydp-control, BIRD)
    victim_lb = lab.appliances[lbs[1]]
    vaddr = next(s.addr for s in lab.topo.appliance_specs if s.name == victim_lb.name)
    open_rows = [c for c in load.open_conns() if c["id"] not in {b["id"] for b in load.broken()}]
    via = dict(zip([c["id"] for c in open_rows], ecmp_hops(lab, open_rows)))
    alive = {c["id"] for c in open_rows}
    say(f"killing appliance {victim_lb.name} (SIGKILL: data plane, pydp-control, BIRD) under load")
    t_dead = lab.kill_appliance(victim_lb)
    marks.append((t_dead, f"LB {victim_lb.name} killed"))
    t_route = when(lambda: vaddr not in lab.router.nexthops(T.VIP), 30)
    time.sleep(8)                               # every connection makes requests through the survivors
    summary = load.stop()
    check = load.byte_check()
    by_id = {r["id"]: r for r in check["rows"]}
    lost = [e for e in load.new(t_dead - 1.0) if e.get("err") or (e.get("connect_s") or 0) > 0.9]
    survived = [i for i in alive if by_id.get(i, {}).get("equal") and by_id[i]["broken"] is None]
    res["lb_failure"] = {
        "lb": victim_lb.name, "reroute_s": round(t_route - t_dead, 3) if t_route else None,
        "route_after": lab.router.nexthops(T.VIP),
        "connections_alive_at_kill": len(alive),
        "connections_through_it": sum(1 for i in alive if via.get(i) == victim_lb.name),
        "connections_survived": len(survived),
        "connections_through_it_survived": sum(1 for i in survived if via.get(i) == victim_lb.name),
        "new_connections_first_syn_lost": len(lost),
        "last_lost_syn_after_s": round(max(e["t"] for e in lost) - t_dead, 3) if lost else None}
    res["connections_total"] = len(summary["conns"])
    res["new_connections"] = summary["new_connections"]
    res["byte_counts_equal"] = check["equal"]
    plot_share(load, t0, marks, out / "edge-share.png", say)
    return res


def scaleout_report(res: dict) -> str:
    n = len(res["lbs"])
    b = res["bgp"]
    lines = ["pydp-lab demo --scale-out", "=========================", "",
             f"{n} appliances ({', '.join(res['lbs'])}) announce cluster web ({T.VIP}) over BGP to the router "
             f"({b['engine']} {b.get('version') or b['router']['version']}, BFD {'on' if b['bfd'] else 'off'}); "
             f"the router spreads the clients with ECMP (L4 hash).",
             f"Edges {', '.join(res['edges'])}; {res['clients']} client addresses; {res['connections_total']} "
             f"long-lived connections, {res['new_connections']} new ones.",
             "", "1. Spread of new connections, 10 s window:", "",
             "   appliance  share   new connections (SYNs on its port)"]
    for lb in res["lbs"]:
        lines.append(f"   {lb:<10} {res['lb_share'].get(lb, 0.0):6.1%}   {res['lb_new_connections'].get(lb, 0)}")
    lines += ["", f"   even would be {1 / n:.1%} each", "", "   edge   share   long-lived connections"]
    for e in res["edges"]:
        lines.append(f"   {e:<6} {res['edge_share'].get(e, 0.0):6.1%}   {res['long_lived_by_edge'].get(e, 0)}")
    lines += ["", "2. Direct Server Return:",
              f"   reply packets crossing any appliance's port (tcpdump on each): {res['dsr_replies_via_lb']} "
              f"{res['dsr_replies_via_lb_by_lb']}",
              f"   reply packets the edges sent to the router (to the clients): {res['dsr_replies_at_router']}"]
    ef = res["edge_failure"]
    lines += ["", f"3. Edge failure ({ef['edge']} killed, {ef['appliances']} appliances checking):",
              f"   detected in {ef['detect_s']} s; back in {ef['rejoin_s']} s after nginx restarted",
              f"   connections broken, by edge: {ef['broken_by_edge'] or 'none'}; new connections to it once out: "
              f"{ef['new_to_it_after_detection']}"]
    d = res["lb_drain"]
    if "error" in d:
        lines += ["", f"4. Appliance drain: not run ({d['error']})"]
    else:
        lines += ["", f"4. Appliance {d['lb']} drained (BGP withdraw):",
                  f"   the router dropped it after {d['withdrawn_s']} s; new connections to it while drained: "
                  f"{d['new_connections_to_it_while_drained']}; connections broken meanwhile: "
                  f"{d['connections_broken_while_drained']}; back {d['back_s']} s after undrain"]
    f = res["lb_failure"]
    z = res["lb_freeze"]
    lines += ["", f"5. Appliance {z['lb']} frozen (SIGSTOP, its BGP session left open: BFD alone tells the router):",
              f"   the router's route dropped it after {z['reroute_s']} s; connections broken meanwhile: "
              f"{z['connections_broken']}; announced again {z['back_after_thaw_s']} s after SIGCONT"]
    last = f"{f['last_lost_syn_after_s']} s" if f["last_lost_syn_after_s"] is not None else "-"
    lines += ["", f"6. Appliance {f['lb']} SIGKILLed under load (data plane, pydp-control and BIRD at once):",
              f"   the router's route dropped it after {f['reroute_s']} s; route now via "
              f"{', '.join(f['route_after'])}",
              f"   new connections whose first SYN was lost: {f['new_connections_first_syn_lost']} (the last one "
              f"started {last} after the kill)",
              f"   long-lived connections: {f['connections_survived']} of {f['connections_alive_at_kill']} alive at "
              f"the kill survived ({f['connections_through_it_survived']} of the {f['connections_through_it']} "
              f"that went through {f['lb']}); byte counts equal for {res['byte_counts_equal']} of "
              f"{res['connections_total']}"]
    lines += ["", f"Run time {res['run_s']} s."]
    return "\n".join(lines) + "\n"
