"""`pydp-lab chaos`: the virtual lab under a seeded series of faults, with the system's promises checked after each.

The lab of control/lab/lab.py is built, long-lived TCP connections (byte counts on both ends), a stream of new
connections and UDP flows run all along (control/lab/load.py), and each round injects one fault, lets the lab settle
and checks the invariants. The schedule comes from the seed alone (random.Random), so a failing run is replayed with
the same --seed (and --kinds).

Pieces, each testable on its own (tests/unit/test_chaos.py):
* schedule(): the fault of each round, and round_rng() for the round's own choices (which edge, ...);
* FAULTS: one small class per fault kind with inject(), recover(), the edges whose connections may break
  legitimately (may_break) and the windows in which an edge must get no new connection (no_new);
* the invariant checks, plain functions of observations (states, events, store and live config, samples);
* report(): the JSON document.

With --scale-out K the lab is the scale-out one (`pydp-lab up --scale-out K`: K appliances announcing cluster web
over BGP to an ECMP router, flow sync among them, no CARP): the kinds are those of FAULTS that apply to it (scale_out)
plus its own (an appliance killed, the router restarted, a BGP session reset, an appliance drained), and the
invariants are checked for every appliance (announce, the router's route, Maglev agreement) instead of CARP's.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from control.lab import topology as T

RSS_LIMIT_KIB = 5 * 1024          # the target: RSS growth below 5 MiB per process
FD_LIMIT = 8                      # open descriptors a process may gain over a run
SETTLE_S = 45.0                   # after a fault's recovery, the lab must satisfy every invariant within this
HOLD_S = 3.0                      # how long a fault lasts before it is recovered
NEW_GRACE_S = 0.5                 # a change is live this long after pydpctl/the API returned
TRAFFIC_S = 10.0                  # after settling, new connections must be answered within this

CARP_CLUSTERS = ("web", "web6", "ipsec")      # clusters with CARP on both appliances (off is disabled)


# ---------------------------------------------------------------- the schedule

def schedule(seed: int, rounds: int, kinds: list[str]) -> list[str]:
    """The fault kind of each round: the kinds in a seeded random order, reshuffled after each pass, so every kind
    comes once per len(kinds) rounds. Depends on (seed, rounds, kinds) only."""
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, not {rounds}")
    if not kinds:
        raise ValueError("no fault kinds to draw from")
    rng = random.Random(seed)
    out: list[str] = []
    deck: list[str] = []
    while len(out) < rounds:
        if not deck:
            deck = sorted(kinds)
            rng.shuffle(deck)
            if out and deck[0] == out[-1] and len(deck) > 1:
                deck[0], deck[-1] = deck[-1], deck[0]       # never the same fault twice in a row
        out.append(deck.pop(0))
    return out


def round_rng(seed: int, n: int) -> random.Random:
    """The random choices inside round n (which edge, ...): independent of what earlier rounds did."""
    return random.Random(f"pydp-chaos:{seed}:{n}")


# ---------------------------------------------------------------- invariant checks (pure)

@dataclass
class Violation:
    round: int
    fault: str
    invariant: str
    evidence: dict

    def row(self) -> dict:
        return {"round": self.round, "fault": self.fault, "invariant": self.invariant, "evidence": self.evidence}


def check_carp(states: dict[str, dict[str, str | None]]) -> list[str]:
    """Exactly one CARP master per cluster. states: {cluster: {appliance: its own CARP state or None}}."""
    out = []
    for cluster, by in sorted(states.items()):
        masters = sorted(a for a, s in by.items() if s == "master")
        if len(masters) != 1:
            states = ", ".join(f"{a}={s}" for a, s in sorted(by.items()))
            out.append(f"cluster {cluster}: {len(masters)} masters ({states})")
    return out


def split_broken(broken: list[dict], rounds: list[dict]) -> tuple[list[dict], list[dict]]:
    """Broken long-lived connections, (expected, unexpected). A connection broke between its last good request
    (last_ok) and the failure (broken: at once for a reset, a request timeout later for silence): the break is
    expected when a round overlapping that interval may break its edge, and is attributed to that round (else to the
    first round overlapping it). rounds: [{"round", "fault", "t0", "t1", "may_break"}], windows [t0, t1)."""
    expected, unexpected = [], []
    for c in broken:
        if c.get("edge") is None:
            continue                    # never established (a failed connect): not a broken connection
        end = c.get("broken") or 0.0
        start = c.get("last_ok") or c.get("opened") or end
        overlap = [r for r in rounds if r["t0"] <= end and start < r["t1"]]
        ok = [r for r in overlap if c.get("edge") in r["may_break"]]
        rnd = (ok or overlap or [None])[0]
        row = {**c, "round": rnd["round"] if rnd else None, "fault": rnd["fault"] if rnd else None}
        (expected if ok else unexpected).append(row)
    return expected, unexpected


def check_no_new(events: list[dict], windows: list[tuple[str, float, float]]) -> list[dict]:
    """New connections or UDP flows answered by an edge inside one of its no-new windows (edge, t0, t1): an edge
    down, drained or removed must take no new connection."""
    return [e for e in events for edge, t0, t1 in windows if e.get("edge") == edge and t0 <= e["t"] < t1]


def store_summary(clusters: list[dict]) -> dict:
    """{cluster: {"cluster_ip", "enabled", "edges": {name: (ip, weight, state)}}} of list_clusters' rows."""
    return {c["name"]: {"cluster_ip": c["cluster_ip"], "enabled": c["enabled"],
                        "edges": {e["name"]: (e["ip"], e.get("weight", 1), e.get("state", "active"))
                                  for e in c.get("edge", [])}}
            for c in clusters}


def check_drift(store: dict, live: dict, health: dict[tuple[str, str], str], owned: dict[str, bool]) -> list[str]:
    """The data plane's live config against the store (store_summary), edge by edge: the same clusters, addresses,
    switches, weights, and states (an active edge whose health is down is live as down). owned: {cluster: whether
    this appliance should forward it}, compared with the live ownership."""
    out = []
    for name in sorted(set(store) | set(live)):
        s, lv = store.get(name), live.get(name)
        if s is None or lv is None:
            out.append(f"cluster {name}: {'not in the store' if s is None else 'not live'}")
            continue
        if s["cluster_ip"] != lv["cluster_ip"]:
            out.append(f"cluster {name}: live cluster IP {lv['cluster_ip']}, store {s['cluster_ip']}")
        if s["enabled"] != lv["enabled"]:
            out.append(f"cluster {name}: live enabled={lv['enabled']}, store {s['enabled']}")
        if name in owned and owned[name] != lv["active"]:
            out.append(f"cluster {name}: live owned={lv['active']}, CARP says {owned[name]}")
        for en in sorted(set(s["edges"]) | set(lv["edges"])):
            se, le = s["edges"].get(en), lv["edges"].get(en)
            if se is None or le is None:
                out.append(f"cluster {name}: edge {en} {'live but not in the store' if se is None else 'not live'}")
                continue
            ip, weight, state = se
            want = {"active": "down" if health.get((name, en)) == "down" else "up"}.get(state, state)
            if (le["ip"], le["weight"], le["state"]) != (ip, weight, want):
                out.append(f"cluster {name}: edge {en} live {le['ip']}/{le['weight']}/{le['state']}, "
                           f"store {ip}/{weight}/{want}")
    return out


def check_edge_sets(stores: dict[str, dict], clusters=CARP_CLUSTERS) -> list[str]:
    """Both appliances have the same edges (address, weight, state) in every shared cluster."""
    names = sorted(stores)
    out = []
    for c in clusters:
        sets = {a: stores[a].get(c, {}).get("edges") for a in names}
        if len({json.dumps(v, sort_keys=True) for v in sets.values()}) > 1:
            out.append(f"cluster {c}: " + "; ".join(f"{a}: {sets[a]}" for a in names))
    return out


def bird_routes(text: str) -> dict[str, list[str]]:
    """`birdc show route all` (or `show route`) → {prefix: sorted next hops}: each route's "via X on dev" lines,
    those of its continuation lines (ECMP, other paths) included."""
    out: dict[str, set] = {}
    prefix = None
    for line in text.splitlines():
        f = line.split()
        if not f:
            continue
        if not line[0].isspace() and "/" in f[0] and f[0][0].isdigit():
            prefix = f[0]
            out.setdefault(prefix, set())
        if prefix and "via" in f and f.index("via") + 1 < len(f):
            out[prefix].add(f[f.index("via") + 1])
    return {p: sorted(h, key=lambda a: tuple(int(x) for x in a.split(".")) if a.count(".") == 3 else (999, a))
            for p, h in out.items()}


def check_routes(announced: dict[str, bool], addrs: dict[str, str], bird: list[str], kernel: list[str]) -> list[str]:
    """Scale-out: every appliance announces (announced: {appliance: its status says cluster web announced}), and the
    router's BIRD route (bird: next hops) and kernel route (kernel) to the cluster IP list exactly the appliances
    that announce. addrs: {appliance: its address, the next hop}."""
    out = [f"appliance {a}: not announcing" for a, on in sorted(announced.items()) if not on]
    want = sorted((addrs[a] for a, on in announced.items() if on), key=lambda a: tuple(int(x) for x in a.split(".")))
    if bird != want:
        out.append(f"router BIRD route via {bird}, announced by {want}")
    if kernel != want:
        out.append(f"router kernel route via {kernel}, announced by {want}")
    return out


def check_maglev(peers: dict[str, dict[str, dict]]) -> list[str]:
    """Scale-out: every appliance agrees with every peer on the Maglev digest of each cluster. peers: {appliance:
    {cluster: its status' maglev_peers ({peer: {digest, agreement}})}}; every peer row must say "agree"."""
    out = []
    for a, by in sorted(peers.items()):
        for c, rows in sorted(by.items()):
            bad = {p: r.get("agreement") for p, r in sorted((rows or {}).items()) if r.get("agreement") != "agree"}
            if bad:
                out.append(f"appliance {a}: cluster {c}: maglev {bad}")
            elif not rows:
                out.append(f"appliance {a}: cluster {c}: no maglev peers")
    return out


def check_counters(prev: dict[str, int], cur: dict[str, int]) -> list[str]:
    """Counters of one process instance never go backwards."""
    return [f"{k}: {prev[k]} -> {cur[k]}" for k in sorted(prev) if k in cur and cur[k] < prev[k]]


def flat_counters(stats: dict) -> dict[str, int]:
    """The cumulative counters of control.observe.stats(): per port, worker, cluster and edge (gauges left out).
    A cluster's and an edge's counters belong to their slot in the region: an edge removed and added again may
    land in another slot, which is another series."""
    from control.observe import _PORT_COUNTERS, _WORKER_COUNTERS

    out = {}
    for p in stats.get("ports", []):
        out.update({f"port{p['port']}.{k}": p[k] for k in _PORT_COUNTERS if k in p})
        out.update({f"port{p['port']}.drops.{k}": v for k, v in (p.get("drops") or {}).items()})
    for w in stats.get("workers", []):
        out.update({f"worker{w['worker']}.{k}": w[k] for k in _WORKER_COUNTERS if k in w})
    for name, c in stats.get("clusters", {}).items():
        if c.get("slot") is None:
            continue
        out.update({f"{name}@{c['slot']}.{k}": c[k] for k in ("packets", "bytes", "drop_not_active",
                                                              "drop_disabled", "drop_no_edge") if k in c})
        for en, e in (c.get("edges") or {}).items():
            out.update({f"{name}@{c['slot']}.{en}@{e['slot']}.{k}": e[k] for k in ("packets", "bytes", "new_flows")
                        if k in e})
    return out


WARMUP_ROUNDS = 3                 # a process's first rounds (imports, first roles, first resync) are its warm-up


class Resources:
    """RSS (KiB) and open descriptors of each process role ("A.dataplane", ...) sampled after every round. A
    restarted process is a new instance. An instance's growth runs from its sample after WARMUP_ROUNDS rounds to
    its last; an instance that lived through fewer rounds than that plus 2 has too short a life to tell growth
    from warm-up and is not counted. A role's growth is the largest of its instances'."""

    def __init__(self) -> None:
        self.samples: dict[str, dict[int, list[tuple[int, int]]]] = {}
        self.series: dict[str, list[list[int]]] = {}       # role: [[round, pid, rss KiB, fds], ...] (the report)

    def add(self, role: str, pid: int, rss_kib: int, fds: int, rnd: int = 0) -> None:
        self.samples.setdefault(role, {}).setdefault(pid, []).append((rss_kib, fds))
        self.series.setdefault(role, []).append([rnd, pid, rss_kib, fds])

    def growth(self) -> tuple[dict[str, int], dict[str, int]]:
        rss, fds = {}, {}
        for role, by_pid in sorted(self.samples.items()):
            rss[role], fds[role] = 0, 0
            for s in by_pid.values():
                if len(s) < WARMUP_ROUNDS + 2:
                    continue
                base = s[WARMUP_ROUNDS - 1]
                rss[role] = max(rss[role], s[-1][0] - base[0])
                fds[role] = max(fds[role], s[-1][1] - base[1])
        return rss, fds

    def check(self, rss_limit: int = RSS_LIMIT_KIB, fd_limit: int = FD_LIMIT) -> list[str]:
        rss, fds = self.growth()
        return ([f"{r}: RSS grew {v} KiB (limit {rss_limit})" for r, v in rss.items() if v > rss_limit]
                + [f"{r}: {v} more open descriptors (limit {fd_limit})" for r, v in fds.items() if v > fd_limit])


def proc_usage(pid: int) -> tuple[int, int] | None:
    """(VmRSS in KiB, open descriptors) of a process, None if it is gone."""
    try:
        rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return None


def report(seed: int, rounds: int, kinds: dict[str, int], violations: list[Violation], opened: int,
           expected: int, unexpected: int, rss: dict[str, int], fds: dict[str, int], run_s: float,
           extra: dict | None = None) -> dict:
    """The JSON document of a chaos run (docs/lab.md)."""
    return {"seed": seed, "rounds": rounds, "faults": dict(sorted(kinds.items())),
            "violations": [v.row() for v in violations],
            "connections": {"opened": opened, "broken_expected": expected, "broken_unexpected": unexpected},
            "rss_growth_kib": rss, "fd_growth": fds, "run_s": round(run_s, 1), **(extra or {})}


# ---------------------------------------------------------------- the HTTP API client (lab side)

class Api:
    """A signed-in session on an appliance's /api/v1 (the admin user of the lab)."""

    csrf: str | None = None

    def __init__(self, base: str, user: str, password: str):
        self.base = base.rstrip("/")
        self.user, self.password = user, password
        self.sign_in()

    def sign_in(self) -> None:
        self.csrf = None
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.csrf = self.call("POST", "/api/v1/session", {"user": self.user, "password": self.password})["csrf"]

    def call(self, method: str, path: str, body: dict | None = None, etag: str | None = None) -> dict:
        return self._open(method, path, body, etag)[0]

    def _open(self, method: str, path: str, body: dict | None, etag: str | None) -> tuple[dict, str | None]:
        headers = {"Content-Type": "application/json"}
        if self.csrf:
            headers["X-CSRF-Token"] = self.csrf
        if etag:
            headers["If-Match"] = etag
        req = urllib.request.Request(self.base + path, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
        with self.opener.open(req, timeout=20) as r:
            return json.loads(r.read() or b"{}"), r.headers.get("ETag")

    def change(self, cluster: str, method: str, path: str, body: dict | None = None) -> dict:
        """A change as the admin page makes it: read the cluster, then write with its ETag in If-Match. A restarted
        daemon forgot the session (401): signed in again, as a person would."""
        import urllib.error

        try:
            _, etag = self._open("GET", f"/api/v1/clusters/{cluster}", None, None)
        except urllib.error.HTTPError as e:
            if e.code != 401:
                raise
            self.sign_in()
            _, etag = self._open("GET", f"/api/v1/clusters/{cluster}", None, None)
        return self.call(method, path, body, etag)


# ---------------------------------------------------------------- faults

@dataclass
class Round:
    n: int
    kind: str
    rng: random.Random
    target: object = None                 # the appliance (or edge) the fault hits
    details: dict = field(default_factory=dict)
    may_break: set = field(default_factory=set)
    no_new: list = field(default_factory=list)      # (edge, t0, t1); t1 None: until recovered
    private: dict = field(default_factory=dict)     # what a fault keeps between inject and check
    t0: float = 0.0
    t1: float = 0.0


class Fault:
    """One kind of fault. inject() and recover() act on the lab; they fill rnd.may_break (edges whose connections may
    break) and rnd.no_new (edge windows with no new connection allowed) as they go."""

    kind = ""
    group = ""
    carp = True                   # a fault of the CARP pair's lab
    scale_out = False             # a fault of the scale-out lab (--scale-out)

    def inject(self, run: "Chaos", rnd: Round) -> None:
        raise NotImplementedError

    def recover(self, run: "Chaos", rnd: Round) -> None:
        pass

    def check(self, run: "Chaos", rnd: Round) -> list[str]:
        """Violations only this fault can tell (e.g. a CARP transition hostile adverts caused)."""
        return []


# -- the active appliance

class DataplaneKill(Fault):
    kind, group = "dataplane_kill", "appliance"

    def inject(self, run, rnd):
        a = rnd.target
        a.dp.proc.send_signal(signal.SIGKILL)
        a.dp.proc.wait(10)
        time.sleep(HOLD_S)

    def recover(self, run, rnd):
        rnd.target.restart_dataplane()


class DaemonKill(Fault):
    kind, group = "daemon_kill", "appliance"

    def inject(self, run, rnd):
        rnd.target.ctl.kill()
        time.sleep(HOLD_S)

    def recover(self, run, rnd):
        rnd.target.ctl.stop()
        rnd.target.ctl.start()


class BothKill(Fault):
    kind, group = "both_kill", "appliance"

    def inject(self, run, rnd):
        rnd.target.kill()
        time.sleep(HOLD_S)

    def recover(self, run, rnd):
        rnd.target.restart()


class DaemonTerm(Fault):
    """SIGTERM: the daemon bows out (the backup takes over at once) and stays down a while."""
    kind, group = "daemon_sigterm", "appliance"

    def inject(self, run, rnd):
        rnd.details["exit"] = rnd.target.ctl.stop()
        time.sleep(HOLD_S)

    def recover(self, run, rnd):
        rnd.target.ctl.start()


class DataplaneHup(Fault):
    kind, group = "dataplane_sighup", "appliance"
    scale_out = True

    def inject(self, run, rnd):
        rnd.target.dp.proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)


class DaemonRestart(Fault):
    kind, group = "daemon_restart", "appliance"

    def inject(self, run, rnd):
        rnd.target.ctl.stop()
        rnd.target.ctl.start()


class DataLinkFlap(Fault):
    """The active appliance's data port loses its link (the switch side goes down), then gets it back."""
    kind, group = "data_link_flap", "appliance"

    def inject(self, run, rnd):
        run.link(run.lab.topo.sw_ns, f"p{rnd.target.name}", False)
        time.sleep(HOLD_S + 2)            # long enough for the backup to take over

    def recover(self, run, rnd):
        run.link(run.lab.topo.sw_ns, f"p{rnd.target.name}", True)


# -- an edge

class EdgeKill(Fault):
    kind, group = "edge_kill", "edge"
    scale_out = True

    def inject(self, run, rnd):
        e = rnd.target = run.pick_edge(rnd)
        rnd.may_break.add(e.name)
        e.kill()
        rnd.details["detected"] = run.wait_health(e.name, "down")
        rnd.no_new.append((e.name, rnd.details["detected"] + NEW_GRACE_S, None))
        time.sleep(1.0)

    def recover(self, run, rnd):
        rnd.no_new[-1] = (*rnd.no_new[-1][:2], time.time())
        rnd.target.start()
        run.wait_health(rnd.target.name, "up")


class EdgeLinkFlap(Fault):
    kind, group = "edge_link_flap", "edge"
    scale_out = True

    def inject(self, run, rnd):
        e = rnd.target = run.pick_edge(rnd)
        rnd.may_break.add(e.name)
        run.link(run.lab.topo.sw_ns, e.name, False)
        rnd.details["detected"] = run.wait_health(e.name, "down")
        rnd.no_new.append((e.name, rnd.details["detected"] + NEW_GRACE_S, None))
        time.sleep(1.0)

    def recover(self, run, rnd):
        rnd.no_new[-1] = (*rnd.no_new[-1][:2], time.time())
        run.link(run.lab.topo.sw_ns, rnd.target.name, True)
        run.wait_health(rnd.target.name, "up")


# -- the management link

class MgmtCut(Fault):
    kind, group = "mgmt_link_cut", "mgmt"

    def inject(self, run, rnd):
        run.link(run.lab.a.ns, "mg0", False)
        time.sleep(HOLD_S + 1)

    def recover(self, run, rnd):
        run.link(run.lab.a.ns, "mg0", True)


# -- configuration under traffic (pydpctl and the HTTP API, on both appliances)

class Drain(Fault):
    """pydpctl edge drain on both appliances, then undrain: the edge keeps its connections and gets no new ones."""
    kind, group = "drain", "config"
    scale_out = True

    def inject(self, run, rnd):
        e = rnd.target = run.pick_edge(rnd)
        for a in run.lab.appliances.values():
            a.pydpctl("edge", "drain", "web", e.name)
        rnd.no_new.append((e.name, time.time() + NEW_GRACE_S, None))
        time.sleep(HOLD_S)

    def recover(self, run, rnd):
        rnd.no_new[-1] = (*rnd.no_new[-1][:2], time.time())
        for a in run.lab.appliances.values():
            a.pydpctl("edge", "undrain", "web", rnd.target.name)


class EdgeRemoveAdd(Fault):
    """pydpctl edge remove on both appliances, then add it back: its connections may break, it takes no new ones
    while removed."""
    kind, group = "edge_remove_add", "config"
    scale_out = True

    def inject(self, run, rnd):
        e = rnd.target = run.pick_edge(rnd)
        rnd.may_break.add(e.name)
        for a in run.lab.appliances.values():
            a.pydpctl("edge", "remove", "web", e.name)
        rnd.no_new.append((e.name, time.time() + NEW_GRACE_S, None))
        time.sleep(HOLD_S)

    def recover(self, run, rnd):
        s = rnd.target.spec
        rnd.no_new[-1] = (*rnd.no_new[-1][:2], time.time())
        for a in run.lab.appliances.values():
            a.pydpctl("edge", "add", "web", f"{s.name}={s.ip}@{s.mac}")
        run.wait_health(s.name, "up")


class Weight(Fault):
    """An edge's weight changed through the HTTP API (PUT .../weight) on both appliances, then set back."""
    kind, group = "weight_change", "config"
    scale_out = True

    def inject(self, run, rnd):
        e = rnd.target = run.pick_edge(rnd)
        rnd.details["weight"] = w = rnd.rng.choice((2, 3, 5))
        for api in run.apis():
            api.change("web", "PUT", f"/api/v1/clusters/web/edges/{e.name}/weight", {"weight": w})
        time.sleep(HOLD_S)

    def recover(self, run, rnd):
        for api in run.apis():
            api.change("web", "PUT", f"/api/v1/clusters/web/edges/{rnd.target.name}/weight", {"weight": 1})


class ClusterToggle(Fault):
    """A cluster that carries no long-lived connections disabled and enabled again through the HTTP API: the
    other clusters' traffic goes on."""
    kind, group = "cluster_toggle", "config"
    CLUSTERS = ("ipsec", "web6")

    def inject(self, run, rnd):
        rnd.details["cluster"] = c = rnd.rng.choice(self.CLUSTERS)
        for api in run.apis():
            api.change(c, "POST", f"/api/v1/clusters/{c}/disable")
        time.sleep(HOLD_S)

    def recover(self, run, rnd):
        for api in run.apis():
            c = rnd.details["cluster"]
            api.change(c, "POST", f"/api/v1/clusters/{c}/enable")


# -- hostile traffic

class Hostile(Fault):
    group = "hostile"
    mode = ""
    pps = 1000.0
    seconds = 3.0

    def inject(self, run, rnd):
        a = rnd.target
        rnd.private["transitions"] = {n: len(x.transitions()) for n, x in run.lab.appliances.items()}
        if run.scaled:
            rnd.private["bgp_changes"] = run.bgp_changes()
        dst_ip = a.addr if self.mode == "arp" else T.VIP
        # scale-out: the clients are behind the router, whose ECMP spreads the flood over every appliance
        dst_mac = T.ROUTER_CLIENT_MAC if run.scaled else a.mac
        p = subprocess.run(["ip", "netns", "exec", run.lab.topo.client_ns, sys.executable, "-P", "-m",
                            "control.lab.hostile", "--mode", self.mode, "--dst-mac", dst_mac, "--dst-ip", dst_ip,
                            "--src-ip", run.lab.topo.client_ips()[0], "--pps", str(self.pps), "--seconds",
                            str(self.seconds), "--seed", str(rnd.rng.getrandbits(32))],
                           capture_output=True, text=True, timeout=self.seconds + 30)
        if p.returncode != 0:
            raise RuntimeError(f"control.lab.hostile --mode {self.mode}: {p.stderr[-2000:]}")
        sent = json.loads(p.stdout.splitlines()[-1])
        rnd.details["sent"] = sent["sent"]
        if self.mode == "carp":
            rnd.details["replayed_from"] = sent["replayed_from"]

    def check(self, run, rnd):
        after = {n: len(x.transitions()) for n, x in run.lab.appliances.items()}
        if after != rnd.private["transitions"]:
            return [f"CARP transitions during {self.kind}: {rnd.private['transitions']} -> {after}"]
        if run.scaled and run.bgp_changes() != rnd.private["bgp_changes"]:
            # the BGP and BFD packets share the exception path with the flood: no session may drop for it
            return [f"BGP session changes during {self.kind}: {rnd.private['bgp_changes']} -> {run.bgp_changes()}"]
        return []


class CarpHostile(Hostile):
    """Adverts with a wrong HMAC and replays of a real one, at a high rate: no transition may follow."""
    kind, mode, pps = "carp_bad_adverts", "carp", 500.0


class ExceptionFlood(Hostile):
    """ARP requests and pings for the active appliance's own address at the exception path's limit."""
    kind, mode, pps, seconds = "arp_icmp_flood", "arp", 20000.0, 2.0


class SynFlood(Hostile):
    """SYNs to the cluster IP from random sources: new flows, none of them completing."""
    kind, mode, pps = "syn_flood", "syn", 2000.0
    scale_out = True


# -- the scale-out lab: appliances, the router, BGP

class ApplianceKill(Fault):
    """Every process of one appliance SIGKILLed at once (data plane, pydp-control, its BIRD), as a power loss, then
    started again as the lab does it. BFD takes its route away; the router rehashes its flows onto the others, which
    have them from flow sync: no connection may break."""
    kind, group, carp, scale_out = "appliance_kill", "appliance", False, True

    WITHDRAWN_S = 10.0            # BFD (3 x 100 ms) or the closed session: the router drops it well within this

    def inject(self, run, rnd):
        rnd.details["killed"] = run.lab.kill_appliance(rnd.target)
        rnd.private["want"] = [x for x in run.addrs() if x != run.addr_of(rnd.target)]
        deadline = time.monotonic() + self.WITHDRAWN_S
        while time.monotonic() < deadline and run.lab.router.nexthops(T.VIP) != rnd.private["want"]:
            time.sleep(0.05)
        rnd.private["hops"] = run.lab.router.nexthops(T.VIP)
        if rnd.private["hops"] == rnd.private["want"]:
            rnd.details["withdrawn_s"] = round(time.time() - rnd.details["killed"], 2)
        time.sleep(max(0.0, HOLD_S - (time.time() - rnd.details["killed"])))

    def recover(self, run, rnd):
        run.lab.restart_appliance(rnd.target)

    def check(self, run, rnd):
        if rnd.private.get("hops") != rnd.private.get("want"):
            return [f"appliance {rnd.target.name} killed: the router's route to {T.VIP} still via "
                    f"{rnd.private.get('hops')} after {self.WITHDRAWN_S} s, want {rnd.private.get('want')}"]
        return []


class RouterRestart(Fault):
    """The router's BIRD SIGKILLed and started again: every session comes back, the route over every appliance
    too."""
    kind, group, carp, scale_out = "router_restart", "router", False, True

    def inject(self, run, rnd):
        rnd.details["killed"] = run.lab.router.kill()
        time.sleep(1.0)

    def recover(self, run, rnd):
        run.lab.record("pids", run.lab.router.start())


class BgpSessionReset(Fault):
    """One BGP session restarted with `birdc restart`, on the router's side or on the appliance's (drawn)."""
    kind, group, carp, scale_out = "bgp_session_reset", "appliance", False, True

    def inject(self, run, rnd):
        a = rnd.target
        rnd.details["side"] = side = rnd.rng.choice(("router", "appliance"))
        if side == "router":
            p = run.lab.router.birdc("restart", f"lb{a.name}")
        else:
            sock = str(a.workdir / "bird.ctl")
            p = subprocess.run(["birdc", "-s", sock, "restart", "pydp_peer_1"], capture_output=True, text=True,
                               timeout=10)
        if p.returncode != 0 or "restarted" not in p.stdout:
            raise RuntimeError(f"birdc restart on the {side} for appliance {a.name}: {p.stdout}{p.stderr}")
        time.sleep(1.0)


class ApplianceDrain(Fault):
    """`pydpctl appliance drain` on one appliance, then undrain: the router must drop it from the route (checked),
    and its established flows go on (through it until the route goes, then through the others)."""
    kind, group, carp, scale_out = "appliance_drain", "appliance", False, True
    TIMEOUT_S = 60

    def inject(self, run, rnd):
        a = rnd.target
        a.pydpctl("appliance", "drain", "--timeout", str(self.TIMEOUT_S))
        others = [x for x in run.addrs() if x != run.addr_of(a)]
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline and run.lab.router.nexthops(T.VIP) != others:
            time.sleep(0.1)
        rnd.private["hops_drained"] = run.lab.router.nexthops(T.VIP)
        rnd.private["want"] = others
        time.sleep(HOLD_S)

    def recover(self, run, rnd):
        rnd.target.pydpctl("appliance", "undrain")

    def check(self, run, rnd):
        if rnd.private.get("hops_drained") != rnd.private.get("want"):
            return [f"appliance {rnd.target.name} drained: the router's route to {T.VIP} is via "
                    f"{rnd.private.get('hops_drained')}, want {rnd.private.get('want')} within 15 s"]
        return []


FAULTS: dict[str, Fault] = {f.kind: f for f in (
    DataplaneKill(), DaemonKill(), BothKill(), DaemonTerm(), DataplaneHup(), DaemonRestart(), DataLinkFlap(),
    EdgeKill(), EdgeLinkFlap(), MgmtCut(), Drain(), EdgeRemoveAdd(), Weight(), ClusterToggle(),
    CarpHostile(), ExceptionFlood(), SynFlood(), ApplianceKill(), RouterRestart(), BgpSessionReset(),
    ApplianceDrain())}

# the faults only the scale-out lab has
SCALE_OUT_KINDS = ("appliance_drain", "appliance_kill", "bgp_session_reset", "router_restart")


def fault_kinds(scale_out: int = 0) -> list[str]:
    """The fault kinds of the CARP pair's lab, or (scale_out: K appliances) of the scale-out lab."""
    if scale_out:
        return sorted(k for k, f in FAULTS.items() if f.scale_out)
    return sorted(k for k, f in FAULTS.items() if f.carp)


def parse_kinds(text: str | None, scale_out: int = 0) -> list[str]:
    """--kinds: comma-separated fault kinds (default all of this mode); unknown kinds are an error."""
    known = fault_kinds(scale_out)
    if not text:
        return known
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in known]
    if bad or not kinds:
        raise ValueError(f"--kinds: unknown fault kind(s) {', '.join(bad) or '(none given)'}; "
                         f"known: {', '.join(known)}")
    return sorted(set(kinds))


# ---------------------------------------------------------------- the run

class Chaos:
    """Runs the rounds on an up lab with its load running; collects violations and samples."""

    def __init__(self, lab, load, seed: int, kinds: list[str], say=print):
        self.lab, self.load, self.seed, self.kinds, self.say = lab, load, seed, kinds, say
        self.violations: list[Violation] = []
        self.rounds: list[Round] = []
        self.resources = Resources()
        self.counters: dict[tuple[str, int], dict[str, int]] = {}
        self._apis: list[Api] | None = None
        self.damped_until = 0.0          # monotonic time flap damping releases the last edge it holds down
        self.scaled = bool(getattr(lab.topo, "scale_out", 0))     # the scale-out lab: BGP, no CARP

    def addrs(self) -> list[str]:
        """Scale-out: every appliance's address (the router's next hop for it), in order."""
        return [s.addr for s in self.lab.topo.appliance_specs]

    def addr_of(self, a) -> str:
        return next(s.addr for s in self.lab.topo.appliance_specs if s.name == a.name)

    # -- helpers the faults use

    def link(self, ns: str, dev: str, up: bool) -> None:
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "up" if up else "down"], check=True, timeout=30,
                       capture_output=True)

    def pick_edge(self, rnd: Round):
        names = sorted(self.lab.edges, key=lambda n: int(n[1:]))
        return self.lab.edges[rnd.rng.choice(names)]

    def master(self):
        return None if self.scaled else self.lab.master("web")

    def health(self, a, cluster: str = "web") -> dict[str, str]:
        """Edge → "up", "down", or "damped" (down, held by flap damping, which releases it within max_suppress)."""
        try:
            c = next(c for c in a.status()["clusters"] if c["name"] == cluster)
        except (ConnectionError, OSError, StopIteration):
            return {}
        return {e["name"]: "damped" if e["health"] == "down" and (e.get("health_check") or {}).get("damped")
                else e["health"] for e in c["edges"]}

    def wait_health(self, edge: str, want: str, timeout: float = 30.0) -> float:
        """Waits until every running appliance's health checks say `want` for the edge (for "up": or held down by
        flap damping, which the settle step waits out); returns the time."""
        from control.lab.net import eventually

        ok = {want, "damped"} if want == "up" else {want, "damped"} if want == "down" else {want}
        eventually(lambda: all(self.health(a).get(edge) in ok for a in self.lab.appliances.values()),
                   timeout, lambda: f"edge {edge} {want}: " + ", ".join(
                       f"{a.name} {self.health(a)}" for a in self.lab.appliances.values()), interval=0.1)
        return time.time()

    def apis(self) -> list[Api]:
        if self._apis is None:
            web = self.lab.state["web"]
            self._apis = [Api(web[n], web["user"], web["password"]) for n in sorted(self.lab.appliances)]
        return self._apis

    def carp_states(self) -> dict[str, dict[str, str | None]]:
        if self.scaled:
            return {}
        return {c: {n: a.state(c) for n, a in sorted(self.lab.appliances.items())} for c in CARP_CLUSTERS}

    def bgp_changes(self) -> dict[str, int | None]:
        """Scale-out: each appliance's count of BGP session state changes (None: its daemon does not answer)."""
        out = {}
        for n, a in sorted(self.lab.appliances.items()):
            try:
                out[n] = sum(x.get("changes", 0) for x in (a.status().get("bgp") or {}).get("sessions", []))
            except (ConnectionError, OSError):
                out[n] = None
        return out

    def router_view(self) -> tuple[list[str], list[str]]:
        """Scale-out: the next hops of the router's route to the cluster IP, as BIRD has it (`birdc show route
        all`) and as the kernel has it (ECMP)."""
        p = self.lab.router.birdc("show", "route", "all")
        return bird_routes(p.stdout).get(f"{T.VIP}/32", []), self.lab.router.nexthops(T.VIP)

    # -- observation and the invariants

    def observe(self) -> list[str]:
        """Every invariant that can be read from the lab at this moment (an empty list: all hold)."""
        from control import observe, rpc

        out = [f"carp: {x}" for x in check_carp(self.carp_states())]
        stores = {}
        announced: dict[str, bool] = {}
        maglev: dict[str, dict] = {}
        for n, a in sorted(self.lab.appliances.items()):
            try:
                st = a.status()
                stores[n] = store_summary(rpc.call(a.ctl.socket, "store", {"op": "list_clusters", "args": {}},
                                                         timeout=5.0))
            except (ConnectionError, OSError) as e:
                out.append(f"appliance {n}: pydp-control not answering ({e})")
                continue
            d = st["daemon"]
            if not st["dataplane_up"] or a.dp.region is None:
                out.append(f"appliance {n}: data plane not up")
                continue
            if d["drift"] or d["applied_revision"] != d["revision"]:
                out.append(f"appliance {n}: live config behind the store (revision {d['revision']}, applied "
                           f"{d['applied_revision']}, drift {d['drift']})")
            health = {(c["name"], e["name"]): e["health"] for c in st["clusters"] for e in c["edges"]}
            if self.scaled:
                # a bgp cluster is owned while the data plane lives and the appliance is not past its drain timeout
                expired = bool((st.get("drain") or {}).get("expired"))
                owned = {c["name"]: not expired for c in st["clusters"] if c.get("failover") == "bgp"
                         and stores[n].get(c["name"], {}).get("enabled")}
                bgp = st.get("bgp") or {}
                announced[n] = bool(((bgp.get("clusters") or {}).get("web") or {}).get("announced"))
                if (st.get("drain") or {}).get("draining"):
                    out.append(f"appliance {n}: draining")
                down = [x for x in bgp.get("sessions", []) if not x.get("established")]
                if down or not bgp.get("running"):
                    out.append(f"appliance {n}: BGP not up (running {bgp.get('running')}, sessions "
                               f"{[(x.get('peer'), x.get('state'), x.get('bfd')) for x in bgp.get('sessions', [])]})")
                maglev[n] = {c["name"]: c.get("maglev_peers") or {} for c in st["clusters"]
                             if c.get("failover") == "bgp" and stores[n].get(c["name"], {}).get("enabled")}
            else:
                owned = {c["name"]: c["carp"]["local"] == "master" for c in st["clusters"]
                         if c["name"] in CARP_CLUSTERS and stores[n].get(c["name"], {}).get("enabled")}
            try:
                live = observe.clusters(a.dp.region)
            except Exception as e:               # a region being replaced
                out.append(f"appliance {n}: live config unreadable ({e})")
                continue
            out += [f"drift {n}: {x}" for x in check_drift(stores[n], live, health, owned)]
            for c in st["clusters"]:
                for e in c["edges"]:
                    hc = e.get("health_check") or {}
                    if hc.get("damped") and hc.get("reuse_in_s") is not None:
                        self.damped_until = max(self.damped_until, time.monotonic() + hc["reuse_in_s"])
            # the pair is redundant again only when no appliance is demoted: its data plane and link are up, its
            # edges are, and (flowsync) a restarted one has the peer's flows installed; a fault before that is a
            # double fault (the next round would take the master away from a peer that does not know its flows)
            demoted = {c["name"]: c["carp"].get("demote_reasons") for c in st["clusters"]
                       if c["name"] in CARP_CLUSTERS and (c.get("carp") or {}).get("demote_reasons")}
            if demoted:
                out.append(f"appliance {n}: CARP demoted {demoted}")
            fs = st.get("flowsync") or {}
            peers = fs.get("peers") or [{"peer": fs.get("peer"), "sending": fs.get("sending", {}).get("state"),
                                         "receiving": fs.get("receiving", {}).get("peer")}]
            down = [p for p in peers if p["sending"] != "connected" or not p["receiving"]]
            if fs.get("enabled") and down:
                # flow sync down one way: the peer would take over without this appliance's flows
                out.append(f"appliance {n}: flow sync not up both ways: " + ", ".join(
                    f"{p['peer']} sending {p['sending']}, receiving from {p['receiving']}" for p in down))
            down = [e for (c, e), h in health.items() if c == "web" and h != "up"]
            if down:
                out.append(f"appliance {n}: edges of web not up: {sorted(down)}")
        if len(stores) == len(self.lab.appliances):
            out += [f"edge sets: {x}" for x in check_edge_sets(stores, ("web",) if self.scaled else CARP_CLUSTERS)]
        if self.scaled:
            addrs = {s.name: s.addr for s in self.lab.topo.appliance_specs}
            bird, kernel = self.router_view()
            out += [f"route: {x}" for x in check_routes({n: announced.get(n, False) for n in addrs}, addrs, bird,
                                                        kernel)]
            out += [f"maglev: {x}" for x in check_maglev(maglev)]
        return out

    def sample(self, rnd: Round) -> None:
        """Counters (per data plane instance) and each process's RSS and descriptors."""
        from control import observe

        for n, a in sorted(self.lab.appliances.items()):
            for role, proc in (("dataplane", a.dp.proc), ("control", a.ctl.proc)):
                if proc is not None and proc.poll() is None:
                    u = proc_usage(proc.pid)
                    if u:
                        self.resources.add(f"{n}.{role}", proc.pid, *u, rnd=rnd.n)
            if a.dp.proc is None or a.dp.region is None:
                continue
            key = (n, a.dp.proc.pid)
            cur = flat_counters(observe.stats(a.dp.region))
            if key in self.counters:
                for x in check_counters(self.counters[key], cur):
                    self.violate(rnd, "counters_monotonic", {"appliance": n, "counter": x})
            self.counters[key] = cur

    def violate(self, rnd: Round, invariant: str, evidence: dict) -> None:
        v = Violation(rnd.n, rnd.kind, invariant, evidence)
        self.violations.append(v)
        self.say(f"  VIOLATION round {rnd.n} ({rnd.kind}): {invariant}: {evidence}")

    def settle(self, rnd: Round) -> list[str]:
        """Polls observe() until it is clean or SETTLE_S passes (or, while flap damping holds an edge down, until
        its release plus SETTLE_S; damping bounds that by its max_suppress); returns what still failed (empty:
        settled)."""
        deadline = time.monotonic() + SETTLE_S
        self.damped_until = 0.0
        while True:
            bad = self.observe()
            if self.damped_until:
                rnd.details["damped_s"] = max(rnd.details.get("damped_s", 0.0),
                                              round(self.damped_until - time.monotonic(), 1))
            if not bad or time.monotonic() >= max(deadline, self.damped_until + SETTLE_S):
                return bad
            time.sleep(0.5)

    def wait_answered(self, since: float, timeout: float, want: int = 3) -> bool:
        """At least `want` new connections started after `since` answered, within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(1 for e in self.load.new(since) if e["edge"]) >= want:
                return True
            time.sleep(0.3)
        return False

    def round_windows(self) -> list[dict]:
        return [{"round": r.n, "fault": r.kind, "t0": r.t0, "t1": r.t1, "may_break": sorted(r.may_break)}
                for r in self.rounds]

    def run_round(self, n: int, kind: str) -> None:
        fault = FAULTS[kind]
        rnd = Round(n, kind, round_rng(self.seed, n))
        rnd.t0 = time.time()
        if self.scaled:          # no master: the appliance hit is drawn (from the round's own generator)
            rnd.target = self.lab.appliances[random.Random(f"pydp-chaos-target:{self.seed}:{n}").choice(
                sorted(self.lab.appliances))]
        else:
            rnd.target = self.master() or self.lab.a
        self.rounds.append(rnd)
        self.say(f"round {n}: {kind}" + (f" on appliance {rnd.target.name}" if fault.group in ("appliance",
                                                                                               "hostile") else ""))
        try:
            try:
                fault.inject(self, rnd)
            finally:
                fault.recover(self, rnd)
        except BaseException:
            rnd.t1 = time.time()
            raise
        for i, (edge, t0, t1) in enumerate(rnd.no_new):
            rnd.no_new[i] = (edge, t0, t1 or time.time())
        bad = self.settle(rnd)
        t_settled = time.time()
        time.sleep(1.0)                      # every long-lived connection makes a request on the settled lab
        if bad:
            self.violate(rnd, "settled_within_bound", {"seconds": SETTLE_S, "still": bad})
        # traffic flows: new connections started after the settle are answered (a lab that looks settled but
        # black-holes the cluster IP, e.g. the clients' ARP pointing at a backup, fails here)
        if not self.wait_answered(t_settled, TRAFFIC_S):
            self.violate(rnd, "traffic_flows", {"seconds": TRAFFIC_S,
                                                "new_since_settled": self.load.new(t_settled)[-10:]})
        rnd.t1 = time.time()
        for x in fault.check(self, rnd):
            self.violate(rnd, "fault_specific", {"what": x})
        hits = check_no_new(self.load.new(rnd.t0, rnd.t1) + self.load.udp(rnd.t0, rnd.t1), rnd.no_new)
        if hits:
            self.violate(rnd, "no_new_to_unavailable_edge", {"windows": rnd.no_new, "events": hits[:10]})
        _, unexpected = split_broken(self.load.broken(), self.round_windows())
        for c in unexpected:
            if c["round"] == n:
                self.violate(rnd, "no_unexpected_break", {"connection": c})
        self.sample(rnd)
        self.say(f"  settled: {len(self.load.broken())} broken so far; {rnd.details or ''}")

    def run(self, rounds: int) -> None:
        plan = schedule(self.seed, rounds, self.kinds)
        for n, kind in enumerate(plan, 1):
            self.run_round(n, kind)


def run(topo: T.Topology, rounds: int, seed: int, json_path: Path | None, *, conns: int = 100,
        kinds: list[str] | None = None, rss_limit_kib: int = RSS_LIMIT_KIB, say=print) -> dict:
    """Builds the lab, runs the chaos rounds, removes the lab; returns the report (also written to json_path).
    A fault that cannot be injected or recovered (the lab itself failing) ends the run as a violation."""
    from control.lab.lab import Lab
    from control.lab.load import Load

    t_start = time.time()
    lab = Lab(topo)
    kinds = kinds or fault_kinds(topo.scale_out)
    n = topo.scale_out or 2
    say(f"building the lab {topo.name!r} ({topo.edges} edges, {n} appliances"
        + (" announcing over BGP to an ECMP router" if topo.scale_out else ", CARP") + f"), seed {seed}, "
        f"{rounds} rounds")
    lab.up(log=lambda m: say("  " + m))      # refuses a lab of that name already up; removes what it built on failure
    try:
        load = Load(lab, vip=T.VIP, conns=conns, new_rate=10.0, udp_every=2, reopen=True).start()
        chaos = Chaos(lab, load, seed, kinds, say)
        try:
            chaos.run(rounds)
        except Exception as e:                       # the lab failed under a fault: evidence, then the report
            r = chaos.rounds[-1] if chaos.rounds else Round(0, "none", random.Random())
            chaos.violate(r, "fault_completed", {"error": f"{type(e).__name__}: {e}"[:4000]})
        finally:
            say("stopping the clients (each finishes its request)")
            summary = load.stop()
            check = load.byte_check()
            new, udp = load.new(), load.udp()
        res = finish(chaos, seed, summary, check, new, udp, time.time() - t_start, rss_limit_kib)
        if res["violations"] and json_path:
            try:
                res["evidence_dir"] = keep_logs(lab.run_dir, json_path)
                say(f"violations: the lab's logs are kept in {res['evidence_dir']}")
            except OSError as e:              # the report matters more than the copy of the logs
                res["evidence_dir"] = None
                say(f"violations: the lab's logs could not be kept: {e}")
    finally:
        say("removing the lab")
        lab.down()
    res["run_s"] = round(time.time() - t_start, 1)
    if json_path:
        json_path.write_text(json.dumps(res, indent=2) + "\n")
    return res


def keep_logs(run_dir: Path, json_path: Path) -> str:
    """The lab's logs (daemons, data planes, nginx, clients) copied next to the report, as evidence."""
    import shutil

    import stat

    dest = json_path.with_name(json_path.stem + "-logs")
    shutil.rmtree(dest, ignore_errors=True)
    skip = shutil.ignore_patterns("*.db", "*.db-*", "tmp", "http-users")

    def ignore(path: str, names: list[str]) -> set[str]:
        # sockets (the daemons' *.sock, BIRD's *.ctl), FIFOs and devices cannot be copied: only files and folders
        out = set(skip(path, names))
        for n in names:
            try:
                mode = os.lstat(os.path.join(path, n)).st_mode
            except OSError:
                out.add(n)
                continue
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
                out.add(n)
        return out

    shutil.copytree(run_dir, dest, ignore=ignore, ignore_dangling_symlinks=True)
    return str(dest)


def finish(chaos: Chaos, seed: int, summary: dict, check: dict, new: list, udp: list, run_s: float,
           rss_limit_kib: int = RSS_LIMIT_KIB) -> dict:
    """The end-of-run checks (every break by round, also those that took the client's request timeout to show;
    byte counts of the connections that lived; resource growth) and the report."""
    broken = [c for c in summary["conns"] if c["broken"] is not None]
    expected, unexpected = split_broken(broken, chaos.round_windows())
    seen = {(v.round, v.evidence.get("connection", {}).get("id")) for v in chaos.violations}
    last = chaos.rounds[-1] if chaos.rounds else Round(0, "none", random.Random())
    for c in unexpected:
        if (c["round"], c["id"]) not in seen:
            r = next((x for x in chaos.rounds if x.n == c["round"]), last)
            chaos.violate(r, "no_unexpected_break", {"connection": c})
    rows = [r for r in check["rows"] if r["edge"] is not None]      # answered at least once
    for row in rows:
        if row["broken"] is None and not row["equal"]:
            chaos.violate(last, "byte_counts_equal", {"connection": row})
    for x in chaos.resources.check(rss_limit_kib):
        chaos.violate(last, "resources_bounded", {"what": x})
    rss, fds = chaos.resources.growth()
    counts: dict[str, int] = {}
    for r in chaos.rounds:
        counts[r.kind] = counts.get(r.kind, 0) + 1
    return report(seed, len(chaos.rounds), counts, chaos.violations, len(rows) + len(new),
                  len(expected), len(unexpected), rss, fds, run_s,
                  {"long_lived": {"total": len(rows), "survived": sum(r["equal"] and r["broken"] is None
                                                                      for r in rows),
                                  "byte_counts_equal": sum(r["equal"] for r in rows),
                                  "never_answered": len(check["rows"]) - len(rows)},
                   "new_connections": {"total": len(new), "answered": sum(1 for e in new if e["edge"])},
                   "udp_flows": {"total": len(udp), "answered": sum(1 for e in udp if e["edge"])},
                   "kinds": chaos.kinds, "schedule": [r.kind for r in chaos.rounds],
                   "limits": {"rss_growth_kib": rss_limit_kib, "fd_growth": FD_LIMIT},
                   "resource_samples": chaos.resources.series})
