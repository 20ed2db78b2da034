"""pydpctl status | stats | flows | flows flush: what the load balancer is doing now, and flow-table flushes.

Each command asks the running pydp-control (RPC) and, when no daemon answers, reads the data plane's shared memory
directly (--shm, else the store's dataplane.shm_path, else its default /dev/hugepages/pydp). Without the daemon the
CARP state is unknown: the shared memory says only whether this appliance forwards for a cluster IP.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, Sequence

from control import flows, observe, rpc
from control.tables import format_table
from pydp.config import DataplaneConfig

PROG = "pydpctl"
DEFAULT_SHM = DataplaneConfig.shm_path          # the default of dataplane.shm_path
RPC_TIMEOUT = 10.0


class ObserveError(Exception):
    """Nothing to show (no daemon and no data plane, bad filter): the message says why."""


# ---- where the answers come from ----

class Source:
    """The daemon over RPC, or the shared memory read here."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.socket = getattr(args, "socket", None) or os.environ.get("PYDP_SOCKET") or rpc.DEFAULT_SOCKET
        self.daemon = True
        self.why_direct = None
        self._region = None
        self._appliance = None
        self._appliance_read = False
        self.drain_times: dict[tuple[str, str], float] = {}

    def call(self, method: str, params: dict | None = None) -> Any:
        """The daemon's answer, or None when no daemon answers (then the caller reads the region)."""
        if self.daemon:
            try:
                return rpc.call(self.socket, method, params, timeout=RPC_TIMEOUT)
            except rpc.Unreachable as exc:
                self.daemon = False
                self.why_direct = str(exc)
            except rpc.RpcError as exc:
                if exc.type == "Unavailable" and method in ("stats", "flows", "flush"):
                    raise ObserveError(f"pydp-control: {exc.message}") from None
                if exc.type == "BadRequest":
                    raise ObserveError(exc.message) from None
                raise ObserveError(f"pydp-control: {exc.type}: {exc.message}") from None
            except ConnectionError as exc:
                raise ObserveError(str(exc)) from None
        return None

    def appliance(self):
        """The store's config, if a store can be read (else None)."""
        if not self._appliance_read:
            self._appliance_read = True
            db = getattr(self.args, "db", None) or os.environ.get("PYDP_DB")
            try:
                from control.store import DEFAULT_PATH, Store

                path = db or DEFAULT_PATH
                if os.path.exists(path):            # a read never creates a store
                    with Store(path) as s:
                        self._appliance = s.appliance()
                        self.drain_times = {(r["cluster"], r["edge"]): r["since"] for r in s.drain_times()}
                elif db:
                    print(f"{PROG}: note: no store at {db}", file=sys.stderr)
            except Exception as exc:  # a store is optional here
                if db:
                    print(f"{PROG}: note: cannot read the store {db}: {exc}", file=sys.stderr)
        return self._appliance

    def shm_path(self) -> str:
        shm = getattr(self.args, "shm", None)
        if shm:
            return shm
        cfg = self.appliance()
        return cfg.dataplane.shm_path if cfg is not None else DEFAULT_SHM

    def region(self):
        if self._region is None:
            from pydp.shm import Region, ShmError

            path = self.shm_path()
            try:
                self._region = Region.attach(path)
            except ShmError as exc:
                raise ObserveError(f"no daemon ({self.why_direct}) and no data plane: {exc}") from None
        return self._region

    def note_direct(self) -> None:
        if not self.daemon and not getattr(self.args, "json", False):
            print(f"{PROG}: pydp-control is not running; reading {self.shm_path()} directly "
                  "(CARP state unknown)", file=sys.stderr)

    def close(self) -> None:
        if self._region is not None:
            self._region.close()
            self._region = None


# ---- formatting ----

def human(n: float | int | None, unit: str = "") -> str:
    """1234567 -> 1.23M (SI), None -> -."""
    if n is None:
        return "-"
    n = float(n)
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}" if n == int(n) else f"{n:.1f}{unit}"


def _age(ms: int | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms} ms"
    return f"{ms / 1000:.1f} s"


def _dump(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))


# ---- status ----

def _direct_status(src: Source) -> dict:
    from control import flows, observe

    region = src.region()
    info = observe.dataplane_info(region)
    st = observe.stats(region, src.appliance())
    cfg = src.appliance()
    conf = {cl.name: cl for cl in cfg.clusters} if cfg else {}
    clusters = []
    counts = observe.edge_flow_counts(region) if info["alive"] else {}
    now = time.time()
    for name, c in st["clusters"].items():
        cl = conf.get(name)
        forwarding = bool(c["active"]) and info["alive"]
        row = {
            "name": name, "cluster_ip": c["cluster_ip"], "enabled": c["enabled"],
            "mode": cl.mode if cl else None, "dsr": c["dsr"], "in_store": cl is not None,
            "applied": c.get("applied", True), "active": forwarding,
            "carp": {"local": "unknown", "peer": "unknown", "source": "no daemon",
                     "vhid": cl.carp.vhid if cl else None, "forwarding": forwarding},
            "packets": c["packets"], "bytes": c["bytes"], "edges": [],
        }
        for ename, e in c["edges"].items():
            ce = next((x for x in cl.edges if x.name == ename), None) if cl else None
            drain = None
            if ce is not None and ce.state == "draining":
                drain = flows.drain_row(src.drain_times.get((name, ename)), cl.drain_timeout,
                                        counts.get((name, ename), 0) if info["alive"] else None, now)
            row["edges"].append({"name": ename, "ip": e["ip"], "mac": e["mac"],
                                 "mac_source": "data plane" if e["mac"] else "unresolved", "weight": e["weight"],
                                 "admin_state": ce.state if ce else None, "state": e["state"],
                                 "health": "unknown (no daemon)", "packets": e["packets"], "bytes": e["bytes"],
                                 "new_flows": e["new_flows"], "drain": drain})
        clusters.append(row)
    return {"daemon": {"running": False, "reason": src.why_direct}, "carp_known": False, "dataplane": info,
            "dataplane_up": info["alive"], "clusters": clusters,
            "flow_table": flows.annotate_direct(st["flow_table"])}


def _print_status(s: dict) -> None:
    d = s["daemon"]
    dp = s["dataplane"]
    if d.get("running"):
        rev = d.get("revision")
        applied = d.get("applied_revision")
        print(f"daemon:     pid {d['pid']}, store revision {rev}"
              + ("" if applied == rev else f" (applied: {applied if applied is not None else 'not yet'})")
              + (", owning every enabled cluster (--own-all)" if d.get("own_all") else ""))
        drift = d.get("drift")
        if drift:
            print(f"DRIFT:      the data plane runs generation {drift['generation']}, which this daemon did not "
                  f"publish (it published {drift['published']}); re-applying the store")
            for line in drift.get("differences") or []:
                print(f"              {line}")
        if dp.get("managed") is False and dp.get("pid") is not None:
            print("            the data plane runs without --managed: its SIGHUP would publish its file's clusters")
    else:
        print("daemon:     not running (CARP state unknown)")
    if dp.get("pid") is not None:
        ports = ", ".join(f"{p['name']} {p['mac']} link {'up' if p['link_up'] else 'down'}" for p in dp["ports"])
        state = "running" if dp.get("alive") else "NOT RUNNING (stale heartbeat)"
        print(f"data plane: {state}, pid {dp['pid']}, {len(dp['workers'])} worker(s), generation "
              f"{dp['generation']}, heartbeat {_age(dp['heartbeat_age_ms'])} ago")
        print(f"ports:      {ports or '-'}")
    else:
        print(f"data plane: not running (waiting for {dp.get('path')})")
    ft = s.get("flow_table")
    if ft:
        print(f"flows:      {ft['live']} live of {ft['capacity']} ({ft['occupancy_pct']:.1f}%), "
              f"{ft['evicted']} evicted" + _alarm_text(ft))
    if (s.get("flowsync") or {}).get("enabled"):
        from control.flowsync import maglev_lines, summary
        print(f"flow sync:  {summary(s['flowsync'])}")
        for i, line in enumerate(maglev_lines(s["flowsync"])):
            print(f"{'maglev:' if i == 0 else '':<12}{line}")
    _print_bgp(s)
    if not s["clusters"]:
        print("\nno clusters")
        return
    print()
    rows = []
    for c in s["clusters"]:
        if c.get("bgp") is not None:        # failover bgp: owned or not, announced or not (no CARP peer)
            local = ("owned" if c["active"] else "not owned") + ", " + \
                ("announced" if c["bgp"]["announced"] else f"withdrawn ({c['bgp']['reason']})")
            peer = "-"
        else:
            local = c["carp"]["local"] if s.get("carp_known") else \
                ("unknown (forwarding)" if c["carp"].get("forwarding") else "unknown (not forwarding)")
            peer = c["carp"]["peer"]
        rows.append([c["name"], c["cluster_ip"], "enabled" if c["enabled"] else "disabled", local, peer,
                     c["carp"].get("source") or "-", human(c["packets"]), human(c["bytes"], "B")])
    print(format_table(["CLUSTER", "CLUSTER IP", "STATUS", "THIS APPLIANCE", "PEER", "OWNERSHIP", "PACKETS", "BYTES"],
                       rows, right={6, 7}))
    carp = [c for c in s["clusters"] if "transitions" in c["carp"]]
    if carp:
        print()
        rows = []
        for c in carp:
            k = c["carp"]
            demote = "-" if k.get("demote") is None else str(k["demote"])
            if k.get("demote_reasons"):
                demote += f" ({','.join(k['demote_reasons'])})"
            dropped = {r: n for r, n in (k.get("drops") or {}).items() if n}
            rows.append([c["name"], k.get("vhid") or "-", k["local"], demote, k.get("interface") or "-",
                         k.get("srcip") or "-", k.get("adverts_sent", 0), k.get("adverts_received", 0),
                         ", ".join(f"{r} {n}" for r, n in sorted(dropped.items())) or "0",
                         k.get("transitions", 0)])
        print(format_table(["CLUSTER", "VHID", "CARP", "DEMOTE", "INTERFACE", "SOURCE", "SENT", "RECEIVED", "DROPPED",
                            "TRANSITIONS"], rows, right={6, 7, 9}))
        for c in carp:
            if c["carp"].get("problem"):
                print(f"  {c['name']}: CARP not running: {c['carp']['problem']}")
    print()
    rows = []
    for c in s["clusters"]:
        for e in c["edges"]:
            rows.append([c["name"], e["name"], e["ip"], e["mac"] or "(unresolved)", e["weight"],
                         e.get("admin_state") or "-", e["state"], _health_text(e), human(e["packets"]),
                         human(e["bytes"], "B"), human(e["new_flows"]), _short(e.get("health_detail"))])
    print(format_table(["CLUSTER", "EDGE", "IP", "MAC", "WEIGHT", "ADMIN", "STATE", "HEALTH", "PACKETS", "BYTES",
                        "NEW FLOWS", "LAST CHECK"], rows, right={4, 8, 9, 10}))
    drains = [(c["name"], e["name"], e["drain"]) for c in s["clusters"] for e in c["edges"] if e.get("drain")]
    if drains:
        print()
        print(format_table(["CLUSTER", "DRAINING EDGE", "SINCE", "TIMEOUT", "TIME LEFT", "FLOWS LEFT", "STATE"],
                           [[c, e, _since_text(d["since"]), f"{d['timeout_s']:g} s" if d["timeout_s"] else "none",
                             _left_text(d), "-" if d["remaining_flows"] is None else d["remaining_flows"],
                             _drain_state(d)]
                            for c, e, d in drains], right={5}))


def _print_bgp(s: dict) -> None:
    """The appliance drain, the BGP sessions and what each bgp cluster announces (pydp-control's status)."""
    dr = s.get("drain") or {}
    if dr.get("draining"):
        print(f"drain:      DRAINING since {_since_text(dr['since'])}: bgp clusters withdrawn; "
              + ("timeout passed, bgp clusters let go" if dr.get("expired") else
                 f"established flows go on for {dr['left']:.0f} s more") + " ('pydpctl appliance undrain')")
    b = s.get("bgp")
    if not b:
        return
    engine = f"{b['engine']} {b.get('version') or ''}".strip()
    state = f"running, pid {b['pid']}" if b.get("running") else "NOT RUNNING"
    print(f"bgp:        {engine} {state}" + (f", restarted {b['restarts']} time(s)" if b.get("restarts") else "")
          + (f"; error: {b['error']}" if b.get("error") else ""))
    rows = [[x["peer"], x["as"], x["state"], _since_text(x.get("since")), x.get("bfd") or "-", x.get("routes", 0),
             x.get("last_error") or ""] for x in b.get("sessions", [])]
    if rows:
        print()
        print(format_table(["BGP PEER", "AS", "STATE", "SINCE", "BFD", "ROUTES", "LAST ERROR"], rows, right={5}))
    rows = [[name, "announced" if c.get("announced") else "withdrawn", c.get("reason") or "-",
             _since_text(c.get("since"))] for name, c in sorted((b.get("clusters") or {}).items())]
    if rows:
        print()
        print(format_table(["BGP CLUSTER", "ROUTE", "REASON", "SINCE"], rows))


# ---- appliance drain ----

def cmd_appliance_drain(args: argparse.Namespace) -> int:
    on = args.command_name == "appliance drain"

    def run(src: Source) -> int:
        params = {"timeout": args.timeout} if on and args.timeout is not None else {}
        res = src.call("drain" if on else "undrain", params)
        if res is None:
            raise ObserveError(f"appliance {'drain' if on else 'undrain'} needs the running pydp-control "
                               f"({src.why_direct})")
        if args.json:
            _dump(res)
        elif res["draining"]:
            print(f"draining: every bgp cluster is withdrawn; established flows go on for {res['left']:.0f} s "
                  "(then this appliance stops forwarding for them)")
        else:
            print("not draining: bgp clusters are announced again where fit")
        return 0
    return _with_source(args, run)


def _alarm_text(ft: dict) -> str:
    hot = [w for w in ft.get("workers", []) if w.get("alarm")]
    if not hot:
        return ""
    return ("; ALARM: " + ", ".join(f"worker {w['worker']} {w['occupancy_pct']:.0f}% full" for w in hot)
            + f" (above {flows.ALARM_ON:.0%})")


def _since_text(since: float | None) -> str:
    if since is None:
        return "unknown"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) + f" ({_duration(time.time() - since)} ago)"


def _left_text(d: dict) -> str:
    if not d["timeout_s"]:
        return "- (until the flows end)"
    return "expired" if d["expired"] else _duration(d["time_left_s"])


def _drain_state(d: dict) -> str:
    if d["drained"]:
        return "drained"
    if d["expired"]:
        return "timed out: flows moved"
    return "draining" if d["remaining_flows"] is not None else "draining (flows unknown)"


def drain_info(args: argparse.Namespace, cluster: dict, edge: str, since: float | None) -> dict:
    """The drain of one edge for `pydpctl edge show`: pydp-control's view when it runs, else computed here from
    the store's drain start and the data plane's flow tables (remaining_flows None when neither answers)."""
    from control import observe

    src = Source(args)
    try:
        try:
            s = src.call("status")
        except ObserveError:
            s = None
        for c in (s or {}).get("clusters", []):
            for e in c["edges"] if c["name"] == cluster["name"] else []:
                if e["name"] == edge and e.get("drain"):
                    return e["drain"]
        remaining = None
        try:
            region = src.region()
            if observe.dataplane_alive(region):
                remaining = observe.edge_flow_counts(region).get((cluster["name"], edge), 0)
        except ObserveError:
            pass
        return flows.drain_row(since, float(cluster.get("drain_timeout") or 0), remaining, time.time())
    finally:
        src.close()


def _health_text(e: dict) -> str:
    """up / down / unknown, with how long ago it became so ("down 12s"), "damped" when held down for flapping."""
    text = e["health"]
    h = e.get("health_check") or {}
    if h.get("damped"):
        text += " (damped)"
    since = e.get("health_since")
    if since is not None:
        text += f" {_duration(time.time() - since)}"
    return text


def _duration(s: float) -> str:
    s = max(0, int(s))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def _short(text: str | None, width: int = 48) -> str:
    if not text:
        return "-"
    return text if len(text) <= width else text[:width - 3] + "..."


def cmd_status(args: argparse.Namespace) -> int:
    def run(src: Source) -> int:
        s = src.call("status")
        if s is None:
            s = _direct_status(src)
            src.note_direct()
        if args.json:
            _dump(s)
        else:
            _print_status(s)
        return 0
    return _with_source(args, run)


# ---- stats ----

def _sample(src: Source) -> dict:
    s = src.call("stats")
    if s is None:
        from control import observe

        s = observe.stats(src.region(), src.appliance())
    return s


def _rate(new: int, old: int, dt: float) -> float:
    return round(max(new - old, 0) / dt, 1) if dt > 0 else 0.0


def rates(a: dict, b: dict) -> dict:
    """Per-second rates between two stats samples (b later than a)."""
    dt = (b["mono_ms"] - a["mono_ms"]) / 1000.0
    out: dict[str, Any] = {"interval_s": round(dt, 3), "ports": {}, "clusters": {}, "workers": []}
    pa = {p["port"]: p for p in a["ports"]}
    for p in b["ports"]:
        o = pa.get(p["port"])
        if o is None:
            continue
        out["ports"][p["name"] or str(p["port"])] = {
            "rx_pps": _rate(p["rx_packets"], o["rx_packets"], dt),
            "tx_pps": _rate(p["tx_packets"], o["tx_packets"], dt),
            "rx_bps": _rate(p["rx_bytes"] * 8, o["rx_bytes"] * 8, dt),
            "tx_bps": _rate(p["tx_bytes"] * 8, o["tx_bytes"] * 8, dt),
            "exception_pps": _rate(p["exc_to_kernel"], o["exc_to_kernel"], dt),
            "drops_ps": _rate(sum(p["drops"].values()), sum(o["drops"].values()), dt),
        }
    for name, c in b["clusters"].items():
        o = a["clusters"].get(name)
        if o is None or not c.get("applied", True):
            continue
        edges = {}
        for en, e in c["edges"].items():
            oe = o["edges"].get(en)
            if oe is None or oe.get("slot") != e.get("slot"):
                continue
            edges[en] = {"pps": _rate(e["packets"], oe["packets"], dt),
                         "bps": _rate(e["bytes"] * 8, oe["bytes"] * 8, dt),
                         "new_flows_ps": _rate(e["new_flows"], oe["new_flows"], dt)}
        out["clusters"][name] = {"pps": _rate(c["packets"], o["packets"], dt),
                                 "bps": _rate(c["bytes"] * 8, o["bytes"] * 8, dt), "edges": edges}
    wa = {w["worker"]: w for w in a["workers"]}
    for w in b["workers"]:
        o = wa.get(w["worker"])
        if o is None:
            continue
        rx = w["rx_packets"] - o["rx_packets"]
        polls = w["polls"] - o["polls"]
        busy = polls - (w["idle_polls"] - o["idle_polls"])
        out["workers"].append({
            "worker": w["worker"], "rx_pps": _rate(w["rx_packets"], o["rx_packets"], dt),
            "busy_polls_pct": round(100.0 * busy / polls, 1) if polls > 0 else 0.0,
            "cycles_per_packet": round((w["busy_cycles"] - o["busy_cycles"]) / rx, 1) if rx > 0 else None})
    return out


def _print_stats(s: dict, r: dict | None) -> None:
    rp = (r or {}).get("ports", {})
    head = f"generation {s['generation']}"
    if r:
        head += f", rates over {r['interval_s']:.1f} s"
    print(head)
    rows = []
    for p in s["ports"]:
        name = p["name"] or str(p["port"])
        x = rp.get(name, {})
        drops = sum(p["drops"].values())
        rows.append([name, "up" if p["link_up"] else "down", human(p["rx_packets"]), human(x.get("rx_pps")),
                     human(x.get("rx_bps"), "b/s"), human(p["tx_packets"]), human(x.get("tx_pps")),
                     human(x.get("tx_bps"), "b/s"), human(p["exc_to_kernel"]), human(drops),
                     human(x.get("drops_ps"))])
    print(format_table(["PORT", "LINK", "RX", "RX/s", "RX bit/s", "TX", "TX/s", "TX bit/s", "TO KERNEL", "DROPS",
                        "DROPS/s"], rows, right=set(range(2, 11))))
    drops = [(p["name"] or str(p["port"]), reason, n) for p in s["ports"] for reason, n in p["drops"].items() if n]
    if drops:
        print()
        print(format_table(["PORT", "DROP REASON", "COUNT"], [[a, b, human(c)] for a, b, c in drops], right={2}))
    rows = []
    for p in s["ports"]:
        if not p.get("exception") or "exc_carp" not in p:
            continue
        for cls, c in observe.exception_classes(p).items():
            rows.append([p["name"] or str(p["port"]), cls, human(c["to_kernel"]), human(c["dropped"])])
    if rows:
        print()
        print(format_table(["PORT", "EXCEPTION CLASS", "TO KERNEL", "DROPPED"], rows, right={2, 3}))
    rc = (r or {}).get("clusters", {})
    rows = []
    for name, c in s["clusters"].items():
        x = rc.get(name, {})
        rows.append([name, "", human(c["packets"]), human(x.get("pps")), human(c["bytes"], "B"),
                     human(x.get("bps"), "b/s"), "", ""])
        for en, e in c["edges"].items():
            y = x.get("edges", {}).get(en, {})
            rows.append(["", en, human(e["packets"]), human(y.get("pps")), human(e["bytes"], "B"),
                         human(y.get("bps"), "b/s"), human(e["new_flows"]), human(y.get("new_flows_ps"))])
    if rows:
        print()
        print(format_table(["CLUSTER", "EDGE", "PACKETS", "PPS", "BYTES", "BIT/s", "NEW FLOWS", "NEW FLOWS/s"], rows,
                           right=set(range(2, 8))))
    rw = {w["worker"]: w for w in (r or {}).get("workers", [])}
    rows = []
    for w in s["workers"]:
        x = rw.get(w["worker"], {})
        rows.append([w["worker"], w["lcore"], "yes" if w["online"] else "no", human(w["polls"]),
                     human(w["idle_polls"]), f"{x['busy_polls_pct']:.1f}%" if "busy_polls_pct" in x else "-",
                     human(w["rx_packets"]), human(x.get("rx_pps")),
                     x.get("cycles_per_packet") if x.get("cycles_per_packet") is not None
                     else (w["cycles_per_packet"] if w["cycles_per_packet"] is not None else "-"),
                     human(w["flow_rehashed"])])
    print()
    print(format_table(["WORKER", "LCORE", "ONLINE", "POLLS", "IDLE", "BUSY", "RX", "RX/s", "CYCLES/PKT", "REHASHED"],
                       rows, right=set(range(3, 10))))
    ft = s["flow_table"]
    print()
    print(format_table(["FLOW TABLE", "CAPACITY", "LIVE", "OCCUPANCY", "EXPIRED", "EVICTED"],
                       [[f"worker {x['worker']}", x["capacity"], x["live"], f"{x['occupancy_pct']:.1f}%",
                         human(x["expired"]), human(x["evicted"])] for x in ft["workers"]]
                       + [["total", ft["capacity"], ft["live"], f"{ft['occupancy_pct']:.1f}%", human(ft["expired"]),
                           human(ft["evicted"])]], right=set(range(1, 6))))


def cmd_stats(args: argparse.Namespace) -> int:
    if args.watch is not None and args.watch <= 0:
        raise ObserveError("--watch needs a positive number of seconds")
    if args.count is not None and args.count < 1:
        raise ObserveError("--count must be at least 1")

    def run(src: Source) -> int:
        interval = args.watch if args.watch is not None else args.interval
        count = args.count if args.count is not None else (None if args.watch is not None else 1)
        prev = _sample(src)
        src.note_direct()
        shown = 0
        while count is None or shown < count:
            time.sleep(interval)
            cur = _sample(src)
            r = rates(prev, cur)
            out = dict(cur)
            out["rates"] = r
            if args.json:
                print(json.dumps(out, default=str) if args.watch is not None else json.dumps(out, indent=2,
                                                                                              default=str))
            else:
                if args.watch is not None and sys.stdout.isatty():
                    print("\033[H\033[2J", end="")
                _print_stats(cur, r)
                if args.watch is not None:
                    print()
            sys.stdout.flush()
            prev = cur
            shown += 1
        return 0
    return _with_source(args, run)


# ---- flows ----

def cmd_flows(args: argparse.Namespace) -> int:
    if not 0 <= args.limit <= 4096:
        raise ObserveError("--limit must be 0..4096")

    def run(src: Source) -> int:
        params = {"cluster": args.cluster, "edge": args.edge, "client": args.client, "limit": args.limit}
        res = src.call("flows", params)
        if res is None:
            from control import observe

            try:
                rows, total = observe.find_flows(src.region(), cluster=args.cluster, edge=args.edge,
                                                 client=args.client, limit=args.limit)
            except ValueError as exc:
                raise ObserveError(str(exc)) from None
            res = {"flows": rows, "matched": total, "limit": args.limit}
            src.note_direct()
        if args.json:
            _dump(res)
            return 0
        rows = [[f["client"], f["client_port"], f["protocol"], f["cluster"] or "?", f["edge"] or "(gone)",
                 f["state"], f"{f['age_s']:.1f}s", f"{f['idle_s']:.1f}s", f["packets"], f["worker"]]
                for f in res["flows"]]
        if rows:
            print(format_table(["CLIENT", "PORT", "PROTO", "CLUSTER", "EDGE", "STATE", "AGE", "IDLE", "PACKETS",
                                       "WORKER"], rows, right={1, 6, 7, 8, 9}))
        shown = len(res["flows"])
        print(f"{shown} of {res['matched']} matching flows shown"
              + (" (raise --limit to see more)" if shown < res["matched"] else ""))
        return 0
    return _with_source(args, run)


# ---- flows flush ----

def cmd_flush(args: argparse.Namespace) -> int:
    if args.all and (args.cluster is not None or args.edge is not None):
        raise ObserveError("flows flush: --all cannot be combined with --cluster or --edge")
    if not args.all and args.cluster is None:
        raise ObserveError("flows flush: say what to flush: --all, or --cluster NAME [--edge NAME]"
                           if args.edge is None else "flows flush: --edge needs --cluster (edge names are per cluster)")

    def run(src: Source) -> int:
        params = {"all": args.all, "cluster": args.cluster, "edge": args.edge}
        res = src.call("flush", params)
        via = "pydp-control"
        if res is None:
            try:
                res = flows.flush(src.region(), all_flows=args.all, cluster=args.cluster, edge=args.edge)
            except flows.FlushError as exc:
                raise ObserveError(exc.message) from None
            via = "shared memory"
            src.note_direct()
        res = dict(res, via=via)
        if args.json:
            _dump(res)
            return 0
        sc = res["scope"]
        what = ("every flow" if sc["all"] else f"the flows of cluster {sc['cluster']!r}" if sc["edge"] is None
                else f"the flows of edge {sc['edge']!r} of cluster {sc['cluster']!r}")
        per = ", ".join(f"worker {w['worker']}: {w['cleared']}" for w in res["workers"])
        print(f"flushed {what}: {res['cleared']} flow(s) cleared ({per}); their next packets are hashed again")
        return 0
    return _with_source(args, run)


# ---- plumbing ----

def _with_source(args: argparse.Namespace, fn: Callable[[Source], int]) -> int:
    src = Source(args)
    try:
        return fn(src)
    except ObserveError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        src.close()


def _guarded(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except ObserveError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 1
    run.__name__ = fn.__name__
    return run


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("where to look")
    g.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                   help=f"the pydp-control socket (default: $PYDP_SOCKET, else {rpc.DEFAULT_SOCKET})")
    g.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS,
                   help="without the daemon: the store whose dataplane.shm_path is read (default: $PYDP_DB)")
    g.add_argument("--shm", metavar="PATH", default=argparse.SUPPRESS,
                   help="without the daemon: the data plane's shared memory (default: from the store, else "
                        f"{DEFAULT_SHM})")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return p


def _epilog(*examples: str, notes: str = "") -> str:
    return "examples:\n" + "\n".join(f"  {e}" for e in examples) + (f"\n\n{notes}" if notes else "")


NOTE = ("The running pydp-control answers; without it the data plane's shared memory is read directly\n"
        "(then the CARP state is unknown).")


def register(subparsers) -> None:
    """Adds status, stats and flows to pydpctl's sub-commands."""
    common = _common()
    kw = {"parents": [common], "formatter_class": argparse.RawDescriptionHelpFormatter}
    p = subparsers.add_parser(
        "status", help="CARP state, edges and their traffic, per cluster",
        description="Per cluster: the CARP state of this appliance and of its peer; per edge: its state, health "
                    "and traffic.",
        epilog=_epilog("pydpctl status", "pydpctl status --json | jq '.clusters[].carp'",
                       "pydpctl status --shm /dev/shm/pydp-lab      # no daemon: read the data plane directly",
                       notes=NOTE), **kw)
    p.set_defaults(func=_guarded(cmd_status), command_name="status")

    p = subparsers.add_parser(
        "stats", help="counters and rates (ports, drops, clusters, edges, workers, flow tables)",
        description="Counters and per-second rates, computed between two samples --watch (or --interval) "
                    "seconds apart.",
        epilog=_epilog("pydpctl stats", "pydpctl stats --watch 2              # refresh every 2 s until Ctrl-C",
                       "pydpctl stats --watch 1 --count 10 --json   # one JSON object per line",
                       notes=NOTE), **kw)
    p.add_argument("--watch", metavar="SECONDS", type=float, default=None,
                   help="refresh every SECONDS (until Ctrl-C, or --count times)")
    p.add_argument("--count", metavar="N", type=int, default=None, help="stop after N refreshes")
    p.add_argument("--interval", metavar="SECONDS", type=float, default=1.0,
                   help="without --watch: seconds between the two samples the rates come from (default 1)")
    p.set_defaults(func=_guarded(cmd_stats), command_name="stats")

    p = subparsers.add_parser(
        "flows", help="live flows from the workers' flow tables",
        description="Live flows: client, cluster, edge, protocol, state, age and packets; longest-lived first.",
        epilog=_epilog("pydpctl flows --cluster web", "pydpctl flows --cluster web --edge e1 --limit 20",
                       "pydpctl flows --client 203.0.113.0/24 --json", notes=NOTE), **kw)
    p.add_argument("--cluster", metavar="NAME", help="only this cluster's flows")
    p.add_argument("--edge", metavar="NAME", help="only flows to this edge")
    p.add_argument("--client", metavar="IP[/LEN]", help="only flows from this address or prefix")
    p.add_argument("--limit", metavar="N", type=int, default=100, help="show at most N flows (default 100, max 4096)")
    p.set_defaults(func=_guarded(cmd_flows), command_name="flows")
    sub = p.add_subparsers(dest="flows_command", metavar="ACTION")
    f = sub.add_parser(
        "flush", help="clear flows from the workers' flow tables (all, a cluster's, or an edge's)",
        description="Clears flows from every worker's flow table: every flow (--all), a cluster's, or one edge's of "
                    "a cluster. Their next packets are hashed again (Maglev) as new flows: a TCP connection whose "
                    "edge changes that way is reset by its new edge. Prints how many flows each worker cleared.",
        epilog=_epilog("pydpctl flows flush --cluster web --edge e1   # e.g. an edge drained for too long",
                       "pydpctl flows flush --cluster web --json",
                       "pydpctl flows flush --all",
                       notes=NOTE + "\nExit status: 0 flushed, 1 error (unknown cluster or edge, no data plane, "
                                    "a worker that does not take the command)."), **kw)
    g = f.add_mutually_exclusive_group()
    g.add_argument("--all", action="store_true", help="every flow of every cluster")
    g.add_argument("--cluster", metavar="NAME", help="the flows of this cluster")
    f.add_argument("--edge", metavar="NAME", help="with --cluster: only the flows pinned to this edge")
    f.set_defaults(func=_guarded(cmd_flush), command_name="flows flush")

    a = subparsers.add_parser(
        "appliance", help="drain or undrain this appliance (its bgp clusters)",
        description="The appliance as a whole: drain withdraws every cluster with failover bgp from the routers at "
                    "once and keeps forwarding established flows until the timeout; undrain announces them again.",
        epilog=_epilog("pydpctl appliance drain                 # [bgp] drain_timeout",
                       "pydpctl appliance drain --timeout 120", "pydpctl appliance undrain",
                       notes="Needs the running pydp-control. A restart of pydp-control ends a drain."), **kw)
    asub = a.add_subparsers(dest="appliance_command", metavar="ACTION", required=True)
    p = asub.add_parser("drain", help="withdraw every bgp cluster, keep established flows until the timeout",
                        description="Withdraws every bgp cluster's route at once; established flows keep being "
                                    "forwarded until the timeout.", **kw)
    p.add_argument("--timeout", metavar="SECONDS", type=float, default=None,
                   help="how long established flows go on (default: [bgp] drain_timeout)")
    p.set_defaults(func=_guarded(cmd_appliance_drain), command_name="appliance drain")
    p = asub.add_parser("undrain", help="end a drain: bgp clusters are announced again where fit",
                        description="Ends a drain: the bgp clusters are owned and announced again where fit.", **kw)
    p.set_defaults(func=_guarded(cmd_appliance_drain), command_name="appliance undrain")


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (python -m control.cli_observe ...); pydpctl itself registers these commands."""
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("--socket", default=None)
    ap.add_argument("--db", default=None)
    sub = ap.add_subparsers(dest="command", required=True)
    register(sub)
    args = ap.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
