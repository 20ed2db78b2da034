"""Reading the data plane's shared memory: counters, flow tables, ports, for pydp-control and pydpctl.

Everything here reads a pydp.shm.Region and nothing else: cluster and edge names come from the config slot the
workers use now, so the answers are right whether or not pydp-control runs. The data plane keeps writing while we
read; counters are read as they are (each 64-bit value is written atomically), and flow entries are copied with
the signature protocol of native/src/flow.c (signature, entry, signature again; an entry whose signature changed
meanwhile is skipped).

    from pydp.shm import Region
    from control import observe
    r = Region.attach("/dev/hugepages/pydp")
    observe.stats(r)["clusters"]["web"]["edges"]["e1"]["packets"]
    observe.flows(r, cluster="web", client="203.0.113.0/24", limit=50)
"""

from __future__ import annotations

import ipaddress
import os
import time

import numpy as np

from pydp._ffi import ffi, lib
from pydp.shm import Region, unpack_addr

__all__ = ["HEARTBEAT_STALE_MS", "now_ms", "dataplane_info", "clusters", "stats", "flows", "find_flows",
           "EDGE_STATES", "FLOW_STATES", "dataplane_alive", "flow_table_stats", "edge_flow_counts", "edge_flow_states", "active_flows"]

HEARTBEAT_STALE_MS = 3000

EDGE_STATES = {lib.PYDP_EDGE_EMPTY: "empty", lib.PYDP_EDGE_UP: "up", lib.PYDP_EDGE_DRAINING: "draining",
               lib.PYDP_EDGE_DOWN: "down", lib.PYDP_EDGE_DISABLED: "disabled"}
FLOW_STATES = {lib.PYDP_FLOW_EMPTY: "new", lib.PYDP_FLOW_TCP_SYN: "syn", lib.PYDP_FLOW_TCP_EST: "established",
               lib.PYDP_FLOW_TCP_FIN: "fin", lib.PYDP_FLOW_UDP: "udp", lib.PYDP_FLOW_OTHER: "other"}
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 51: "ah", 58: "icmpv6", 132: "sctp"}
DSR_NAMES = {lib.PYDP_DSR_L2: "l2", lib.PYDP_DSR_IPIP: "ipip"}

_PORT_COUNTERS = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "exc_to_kernel", "exc_arp",
                  "exc_carp", "exc_control", "exc_from_kernel")
_WORKER_COUNTERS = ("polls", "idle_polls", "sleeps", "busy_cycles", "flow_lookups", "flow_hits", "flow_inserts",
                    "flow_evictions", "flow_rehashed", "cls_tcp", "cls_udp", "cls_icmp", "cls_fragment",
                    "cls_icmp_error", "cls_ipsec", "cls_ipv6", "cls_other", "config_swaps", "cmds", "flow_flushed",
                    "flow_installs")


def now_ms() -> int:
    """CLOCK_MONOTONIC in milliseconds: the clock of every time in the region."""
    return int(lib.pydp_now_ms())


def _s(raw) -> str:
    return ffi.string(raw).decode(errors="replace")


def _mac(raw) -> str:
    return ":".join(f"{b:02x}" for b in bytes(ffi.buffer(raw, 6)))


def _mac_bytes(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def dataplane_alive(region: Region, now: int | None = None) -> bool:
    """The data plane behind the region is running: its heartbeat is fresh."""
    now = now_ms() if now is None else now
    return now - int(region.hdr.heartbeat_ms) <= HEARTBEAT_STALE_MS


def _pid_exists(pid: int) -> bool | None:
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dataplane_info(region: Region) -> dict:
    """Process, workers, ports and config generation of the data plane behind region."""
    h = region.hdr
    now = now_ms()
    workers = []
    for w in range(h.nb_workers):
        ws = h.workers[w]
        online = bool(ws.online)
        workers.append({"worker": w, "lcore": int(ws.lcore), "online": online,
                        "generation": None if ws.seen_gen == 2**64 - 1 else int(ws.seen_gen),
                        "heartbeat_age_ms": max(0, now - int(ws.heartbeat_ms)) if online else None})
    ports = []
    for p in range(h.nb_ports):
        pi = h.ports[p]
        ports.append({"port": p, "name": _s(pi.name), "exception": _s(pi.exc_name) or None,
                      "mac": _mac(pi.mac), "link_up": bool(pi.link_up), "speed_mbps": int(pi.link_speed_mbps)})
    age = max(0, now - int(h.heartbeat_ms))
    return {
        "path": region.path,
        "pid": int(h.dp_pid),
        "pid_exists": _pid_exists(int(h.dp_pid)),
        "alive": age <= HEARTBEAT_STALE_MS,
        "created_ms": int(h.created_ms),
        "uptime_s": round(max(0, now - int(h.created_ms)) / 1000.0, 3),
        "heartbeat_age_ms": age,
        "generation": int(h.generation),
        "layout_version": int(h.layout_version),
        "workers": workers,
        "ports": ports,
        "flow_capacity": int(h.flow_capacity),
        "maglev_max": int(h.maglev_max),
    }


def clusters(region: Region) -> dict[str, dict]:
    """The clusters of the config in use, by name: slot, identity, ownership and edges (by name)."""
    cfg = region.config()
    out = {}
    for i in range(lib.PYDP_MAX_CLUSTERS):
        c = cfg.clusters[i]
        if c.family == lib.PYDP_AF_NONE:
            continue
        edges = {}
        for e in range(lib.PYDP_MAX_EDGES):
            ed = c.edges[e]
            if ed.state == lib.PYDP_EDGE_EMPTY:
                continue
            mac = bytes(ffi.buffer(ed.mac, 6))
            edges[_s(ed.name)] = {"slot": e, "uid": int(ed.uid), "ip": str(unpack_addr(ed.family, ed.addr)),
                                  "mac": _mac_bytes(mac) if any(mac) else None,
                                  "state": EDGE_STATES.get(ed.state, str(ed.state)), "weight": int(ed.weight)}
        out[_s(c.name)] = {"slot": i, "uid": int(c.uid), "cluster_ip": str(unpack_addr(c.family, c.vip)),
                           "enabled": bool(c.enabled), "active": bool(c.owned),
                           "dsr": DSR_NAMES.get(c.dsr_mode, str(c.dsr_mode)), "maglev_size": int(c.maglev_size),
                           "table_version": int(c.table_version), "edges": edges}
    return out


def flow_table_stats(region: Region) -> dict:
    """Occupancy of each worker's flow table and the sum: capacity, live (occupied ways, expired ones not yet
    reclaimed included), expired, evicted, occupancy_pct; "workers" lists the per-worker rows."""
    per = []
    tot = {"capacity": 0, "live": 0, "expired": 0, "evicted": 0}
    for w in range(region.nb_workers):
        t = lib.pydp_shm_flows(region._shm, w)
        row = {"worker": w, "capacity": int(t.nb_buckets) * lib.PYDP_FLOW_WAYS, "live": int(t.live),
               "expired": int(t.expired), "evicted": int(t.evicted)}
        row["occupancy_pct"] = round(100.0 * row["live"] / row["capacity"], 3) if row["capacity"] else 0.0
        per.append(row)
        for k in tot:
            tot[k] += row[k]
    tot["occupancy_pct"] = round(100.0 * tot["live"] / tot["capacity"], 3) if tot["capacity"] else 0.0
    tot["workers"] = per
    return tot


def stats(region: Region, appliance=None) -> dict:
    """Every counter, summed over workers where that makes sense, with names instead of slots.

    appliance (optional, a pydp.config.ApplianceConfig): clusters configured there but absent from the data plane
    are listed with "applied": false.
    """
    h = region.hdr
    now = now_ms()
    ws = region.worker_stats().copy()
    cs = region.cluster_stats().copy()
    drop_names = region.drop_names()
    ports = []
    for p in range(h.nb_ports):
        pst = ws["port"][:, p]
        row = {"port": p, "name": _s(h.ports[p].name), "exception": _s(h.ports[p].exc_name) or None,
               "link_up": bool(h.ports[p].link_up)}
        for k in _PORT_COUNTERS:
            row[k] = int(pst[k].sum())
        drops = pst["drops"].sum(axis=0)
        row["drops"] = {name: int(drops[i]) for i, name in enumerate(drop_names)}
        ports.append(row)
    workers = []
    for w in range(h.nb_workers):
        row = {"worker": w, "lcore": int(h.workers[w].lcore), "online": bool(h.workers[w].online)}
        for k in _WORKER_COUNTERS:
            row[k] = int(ws[k][w])
        rx = int(ws["port"][w]["rx_packets"].sum())
        row["rx_packets"] = rx
        row["busy_polls"] = row["polls"] - row["idle_polls"]
        row["cycles_per_packet"] = round(row["busy_cycles"] / rx, 1) if rx else None
        workers.append(row)
    out_clusters = {}
    for name, c in clusters(region).items():
        i = c["slot"]
        cst = cs[:, i]
        row = {k: c[k] for k in ("slot", "cluster_ip", "enabled", "active", "dsr")}
        row["applied"] = True
        for k in ("packets", "bytes", "drop_not_active", "drop_disabled", "drop_no_edge"):
            row[k] = int(cst[k].sum())
        edges = {}
        est = cst["edges"]
        for ename, e in c["edges"].items():
            s = e["slot"]
            edges[ename] = {"slot": s, "ip": e["ip"], "mac": e["mac"], "state": e["state"], "weight": e["weight"],
                            "packets": int(est["packets"][:, s].sum()), "bytes": int(est["bytes"][:, s].sum()),
                            "new_flows": int(est["new_flows"][:, s].sum())}
        row["edges"] = edges
        out_clusters[name] = row
    if appliance is not None:
        for cl in appliance.clusters:
            if cl.name not in out_clusters:
                out_clusters[cl.name] = {"slot": None, "cluster_ip": str(cl.cluster_ip), "enabled": cl.enabled,
                                         "active": False, "dsr": cl.dsr, "applied": False, "packets": 0,
                                         "bytes": 0, "drop_not_active": 0, "drop_disabled": 0, "drop_no_edge": 0,
                                         "edges": {}}
    return {
        "time": time.time(),
        "mono_ms": now,
        "generation": int(h.generation),
        "dataplane": {"pid": int(h.dp_pid), "alive": now - int(h.heartbeat_ms) <= HEARTBEAT_STALE_MS,
                      "heartbeat_age_ms": max(0, now - int(h.heartbeat_ms)), "created_ms": int(h.created_ms)},
        "ports": ports,
        "clusters": out_clusters,
        "workers": workers,
        "flow_table": flow_table_stats(region),
    }


# ---- flows ----

def _client_filter(client: str):
    """(family, 16-byte mask, 16-byte network) of an address or prefix; ValueError if it is neither."""
    net = ipaddress.ip_network(client.strip(), strict=False)
    if net.version == 4:
        fam = lib.PYDP_AF_INET
        mask = net.netmask.packed + bytes(12)
        addr = net.network_address.packed + bytes(12)
    else:
        fam = lib.PYDP_AF_INET6
        mask = net.netmask.packed
        addr = net.network_address.packed
    return fam, np.frombuffer(mask, dtype=np.uint8), np.frombuffer(addr, dtype=np.uint8)


def _timeouts(cfg) -> np.ndarray:
    t = np.zeros(8, dtype=np.int64)
    t[lib.PYDP_FLOW_EMPTY] = cfg.tcp_syn_timeout_ms
    t[lib.PYDP_FLOW_TCP_SYN] = cfg.tcp_syn_timeout_ms
    t[lib.PYDP_FLOW_TCP_EST] = cfg.tcp_est_timeout_ms
    t[lib.PYDP_FLOW_TCP_FIN] = cfg.tcp_fin_timeout_ms
    t[lib.PYDP_FLOW_UDP] = cfg.udp_timeout_ms
    t[lib.PYDP_FLOW_OTHER] = cfg.other_timeout_ms
    return t


def _swap16(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.uint32)
    return ((a >> 8) | (a << 8)) & 0xFFFF


def _snapshot(region: Region, worker: int) -> tuple[np.ndarray, np.ndarray]:
    """(flows, last_ms) of the published ways of one worker's table, copied consistently (packets include the
    ways' hot counters)."""
    b = region.flow_buckets(worker)
    sig1 = b["sig"].copy()
    bi, wi = np.nonzero(sig1)
    fl = b["flows"][bi, wi]                 # fancy indexing copies
    last = b["last_ms"][bi, wi]
    pkts = b["pkts"][bi, wi]                # the hot packet counter, not yet folded into the record's packets
    sig2 = b["sig"][bi, wi]
    s1 = sig1[bi, wi]
    # bit 1 of a signature is the half-open flag (PYDP_FLOW_SIG_SYN); the record keeps the signature without it
    syn = np.uint32(lib.PYDP_FLOW_SIG_SYN)
    ok = (sig2 == s1) & ((fl["sig"] | syn) == (s1 | syn))
    fl["packets"] += pkts
    return fl[ok], last[ok]


def active_flows(region: Region, worker: int) -> int:
    """The flows of one worker's table that have not expired (its live counter also holds expired flows not yet
    reclaimed). A scan of the signature lines in C: run it when the counter alone cannot tell."""
    t = lib.pydp_shm_flows(region._shm, worker)
    return int(lib.pydp_flow_count(t, now_ms() & 0xFFFFFFFF, region.config()))


def edge_flow_counts(region: Region) -> dict[tuple[str, str], int]:
    """{(cluster, edge): live flows pinned to that edge} over every worker's table (edges without flows are
    absent). Reads only the fields it needs, so it is cheap enough to run every second."""
    return {k: v["active"] + v["inactive"] for k, v in edge_flow_states(region).items()}


def edge_flow_states(region: Region) -> dict[tuple[str, str], dict[str, int]]:
    """{(cluster, edge): {"active": n, "inactive": m}}: the live flows pinned to each edge, split as ipvsadm's
    ActiveConn/InActConn are: active = TCP flows past the handshake (established), inactive = every other live
    flow (half-open, closing, UDP, other protocols). Edges without flows are absent."""
    by_key = {}
    for cname, c in clusters(region).items():
        for ename, e in c["edges"].items():
            by_key[(c["slot"], c["uid"], e["slot"], e["uid"])] = (cname, ename)
    if not by_key:
        return {}
    timeouts = _timeouts(region.config())
    now32 = np.uint32(now_ms() & 0xFFFFFFFF)
    out: dict[tuple[str, str], dict[str, int]] = {}
    for w in range(region.nb_workers):
        b = region.flow_buckets(w)
        sig = b["sig"].copy()
        bi, wi = np.nonzero(sig)
        if len(bi) == 0:
            continue
        fl = b["flows"][["cluster", "cluster_uid", "edge", "edge_uid", "state"]][bi, wi]
        idle = (now32 - b["last_ms"][bi, wi]).astype(np.int32).astype(np.int64)
        live = (idle <= timeouts[np.minimum(fl["state"], 7)]) & (b["sig"][bi, wi] == sig[bi, wi])
        est = (fl["state"][live] == lib.PYDP_FLOW_TCP_EST).astype(np.int64)
        keys = np.stack([fl["cluster"][live].astype(np.int64), fl["cluster_uid"][live].astype(np.int64),
                         fl["edge"][live].astype(np.int64), fl["edge_uid"][live].astype(np.int64), est], axis=1)
        if len(keys) == 0:
            continue
        uniq, counts = np.unique(keys, axis=0, return_counts=True)
        for k, n in zip(map(tuple, uniq.tolist()), counts.tolist()):
            name = by_key.get(k[:4])
            if name is not None:
                row = out.setdefault(name, {"active": 0, "inactive": 0})
                row["active" if k[4] else "inactive"] += int(n)
    return out


def find_flows(region: Region, *, cluster: str | None = None, edge: str | None = None,
               client: str | None = None, limit: int = 1000, include_expired: bool = False) -> tuple[list, int]:
    """(flows, number that matched): the live flows of every worker's table that match the filters, at most limit
    of them, longest-lived first. client is an address or a prefix. ValueError for a bad filter."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    fam_mask = None
    if client:
        try:
            fam_mask = _client_filter(client)
        except ValueError:
            raise ValueError(f"client {client!r} is not an IP address or prefix") from None
    cfg = region.config()
    cl = clusters(region)
    if cluster is not None and cluster not in cl:
        raise ValueError(f"no cluster {cluster!r} in the data plane (clusters: {', '.join(sorted(cl)) or 'none'})")
    if edge is not None:
        holders = [n for n, c in cl.items() if edge in c["edges"] and (cluster is None or n == cluster)]
        if not holders:
            raise ValueError(f"no edge {edge!r}" + (f" in cluster {cluster!r}" if cluster else ""))
    by_slot = {c["slot"]: (n, c) for n, c in cl.items()}
    timeouts = _timeouts(cfg)
    now32 = np.uint32(now_ms() & 0xFFFFFFFF)
    parts = []
    for w in range(region.nb_workers):
        fl, last = _snapshot(region, w)
        if len(fl) == 0:
            continue
        keep = np.ones(len(fl), dtype=bool)
        idle = (now32 - last).astype(np.int32).astype(np.int64)
        if not include_expired:
            keep &= idle <= timeouts[np.minimum(fl["state"], 7)]
        if cluster is not None:
            c = cl[cluster]
            keep &= (fl["cluster"] == c["slot"]) & (fl["cluster_uid"] == c["uid"])
        if edge is not None:
            emask = np.zeros(len(fl), dtype=bool)
            for n in holders:
                c = cl[n]
                e = c["edges"][edge]
                emask |= ((fl["cluster"] == c["slot"]) & (fl["cluster_uid"] == c["uid"]) &
                          (fl["edge"] == e["slot"]) & (fl["edge_uid"] == e["uid"]))
            keep &= emask
        if fam_mask is not None:
            fam, mask, net = fam_mask
            src = fl["key"]["src"]
            keep &= (fl["key"]["family"] == fam) & np.all((src & mask) == net, axis=1)
        idx = np.nonzero(keep)[0]
        if len(idx):
            parts.append((w, fl[idx], last[idx], idle[idx]))
    if not parts:
        return [], 0
    wid = np.concatenate([np.full(len(p[1]), p[0], dtype=np.int32) for p in parts])
    fl = np.concatenate([p[1] for p in parts])
    idle = np.concatenate([p[3] for p in parts])
    total = len(fl)
    age = (now32 - fl["created_ms"]).astype(np.int32).astype(np.int64)
    order = np.argsort(-age, kind="stable")[:limit]      # longest-lived first
    sports = _swap16(fl["key"]["sport"])
    dports = _swap16(fl["key"]["dport"])
    out = []
    for j in order:
        f = fl[j]
        k = f["key"]
        fam = int(k["family"])
        slot = int(f["cluster"])
        cname, ename = None, None
        if slot in by_slot and by_slot[slot][1]["uid"] == int(f["cluster_uid"]):
            cname, c = by_slot[slot]
            for n, e in c["edges"].items():
                if e["slot"] == int(f["edge"]) and e["uid"] == int(f["edge_uid"]):
                    ename = n
                    break
        proto = int(k["proto"])
        src = unpack_addr(fam, k["src"].tobytes())
        dst = unpack_addr(fam, k["dst"].tobytes())
        out.append({
            "worker": int(wid[j]),
            "client": str(src) if src is not None else None,
            "client_port": int(sports[j]),
            "cluster_ip": str(dst) if dst is not None else None,
            "port": int(dports[j]),
            "protocol": PROTOCOLS.get(proto, str(proto)),
            "cluster": cname,
            "edge": ename,
            "state": FLOW_STATES.get(int(f["state"]), str(int(f["state"]))),
            "age_s": round(max(int(age[j]), 0) / 1000.0, 3),
            "idle_s": round(max(int(idle[j]), 0) / 1000.0, 3),
            "packets": int(f["packets"]),
        })
    return out, total


def flows(region: Region, cluster: str | None = None, edge: str | None = None, client: str | None = None,
          limit: int = 1000) -> list[dict]:
    """The live flows matching the filters (see find_flows), at most limit."""
    return find_flows(region, cluster=cluster, edge=edge, client=client, limit=limit)[0]


EXCEPTION_CLASSES = ("bulk", "arp", "carp", "control")


def exception_classes(port: dict) -> dict:
    """A port's exception path per class (the data plane's enum pydp_exc_class): frames handed to the kernel and
    frames dropped over the class's rate. bulk is what the other classes leave of exc_to_kernel."""
    arp, carp, control = port["exc_arp"], port["exc_carp"], port["exc_control"]
    to_kernel = {"bulk": max(0, port["exc_to_kernel"] - arp - carp - control), "arp": arp, "carp": carp,
                 "control": control}
    d = port["drops"]
    dropped = {"bulk": d.get("exc_ratelimit", 0), "arp": d.get("exc_arp_ratelimit", 0),
               "carp": d.get("exc_carp_ratelimit", 0), "control": d.get("exc_control_ratelimit", 0)}
    return {k: {"to_kernel": to_kernel[k], "dropped": dropped[k]} for k in EXCEPTION_CLASSES}
