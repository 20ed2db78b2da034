"""pydpctl status / stats / flows as pydp-control answers them: a read-only view over the daemon's parts.

Runs on a reader thread: it reads the region (lent by the RegionHolder), the store's config as last read, and the
snapshots the other parts give (CARP, health, MACs, drains, flow sync, the reconciler); it writes nothing.
"""

from __future__ import annotations

import time

from control import carp_manager, flowsync, observe, rpc
from control.daemon.reconciler import ownership_source

MAX_FLOWS = 4096                  # per reply: keeps a reply well under the 1 MiB frame limit


def health_row(key, states: dict) -> dict:
    """The health of one edge for status: up / down / unknown (not decided yet) / unchecked (not checked)."""
    h = states.get(key)
    if h is None:
        return {"health": "unchecked", "health_detail": None, "health_since": None, "health_check": None}
    since = h.get("since_change_s")
    return {"health": h["state"], "health_detail": h.get("last_detail") or None,
            "health_since": None if since is None else round(time.time() - since, 3),
            "health_check": h}


class StatusView:
    def __init__(self, d):
        self.d = d                          # the Daemon: its parts are read, never written

    def status(self, health_states: dict | None = None) -> dict:
        d = self.d
        cfg = d.cfg
        alive = d.watch.alive
        health_states = health_states or {}
        macs = d.neighbours.snapshot()
        with d.holder.use() as region:
            dp = None
            shm_clusters: dict = {}
            st = None
            if region is not None:
                dp = observe.dataplane_info(region)
                dp["managed"] = region.managed
                dp["reload_requests"] = region.reload_requests
                st = observe.stats(region)
                shm_clusters = st["clusters"]
            # the digest of each published Maglev table: flow sync's (with the peers' verdicts), or read here when
            # flow sync does not run
            maglev = d.flowsync.maglev_status()
            if region is not None:
                for name, sc in shm_clusters.items():
                    if name not in maglev and sc.get("slot") is not None:
                        dg = flowsync.maglev_digest(region, sc["slot"])
                        if dg is not None:
                            maglev[name] = {"digest": dg["digest"], "peers": {}}
        clusters = []
        names = [cl.name for cl in cfg.clusters] if cfg else []
        names += [n for n in shm_clusters if n not in names]
        conf = {cl.name: cl for cl in cfg.clusters} if cfg else {}
        for name in names:
            cl = conf.get(name)
            sc = shm_clusters.get(name)
            active = bool(sc and sc["active"] and alive)
            bgp = cl is not None and cl.mode == "cluster" and cl.failover == "bgp"
            cs = d.carp.status(name) if cl is not None and cl.enabled and cl.mode == "cluster" and not bgp else None
            if cl is None:
                local = "removed"
            elif not cl.enabled:
                local = "disabled"
            elif cs is not None:
                local = cs["state"]
            else:
                local = "master" if active else "backup"
            row = {
                "name": name,
                "cluster_ip": str(cl.cluster_ip) if cl else sc["cluster_ip"],
                "enabled": cl.enabled if cl else sc["enabled"],
                "mode": cl.mode if cl else None,
                "failover": cl.failover if cl else None,
                "dsr": cl.dsr if cl else sc["dsr"],
                "in_store": cl is not None,
                "applied": sc is not None,
                "active": active,
                "carp": {"local": local, "peer": carp_manager.peer_text(cs) if cs else "unknown",
                         "source": ownership_source(cfg, name, d.own_all) if cfg else "unknown",
                         "vhid": cl.carp.vhid if cl else None},
                "packets": sc["packets"] if sc else 0,
                "bytes": sc["bytes"] if sc else 0,
                "edges": [],
            }
            if bgp:
                want = d.bgp_wanted.get(name, (False, "not decided yet"))
                shown = d.bgp.status()["clusters"].get(name, {})
                row["bgp"] = {"announced": bool(shown.get("announced")), "wanted": want[0], "reason": want[1],
                              "since": shown.get("since")}
            if cs is not None:
                row["carp"].update({k: v for k, v in cs.items() if k not in ("state", "vhid")})
            cedges = [e.name for e in cl.edges] if cl else []
            sedges = sc["edges"] if sc else {}
            for ename in cedges + [n for n in sedges if n not in cedges]:
                ce = next((e for e in cl.edges if e.name == ename), None) if cl else None
                se = sedges.get(ename)
                ip = str(ce.ip) if ce else se["ip"]
                if ce is not None and ce.mac:
                    mac, mac_source = ce.mac, "config"
                elif macs.get(ip):
                    mac, mac_source = macs[ip], "resolved"
                elif se and se["mac"]:
                    mac, mac_source = se["mac"], "data plane"
                else:
                    mac, mac_source = None, "unresolved"
                state = se["state"] if se else "not applied"
                row["edges"].append({
                    "name": ename, "ip": ip, "mac": mac, "mac_source": mac_source,
                    "weight": ce.weight if ce else se["weight"],
                    "admin_state": ce.state if ce else None,
                    "state": state,
                    **health_row((name, ename), health_states if ce is not None and cl.enabled else {}),
                    "packets": se["packets"] if se else 0, "bytes": se["bytes"] if se else 0,
                    "new_flows": se["new_flows"] if se else 0,
                    "drain": d.drains.row(name, ename) if ce is not None and ce.state == "draining" else None,
                })
            mg = maglev.get(name)                 # flow sync's view of the published table (control.flowsync)
            row["maglev_digest"] = mg["digest"] if mg else None
            row["maglev_peers"] = mg["peers"] if mg else {}
            clusters.append(row)
        rec = d.reconciler.status()
        return {
            "daemon": {"running": True, "pid": d.pid, "started": d.started, "socket": d.socket_path,
                       "db": d.db, "shm": d.shm, "own_all": d.own_all, "carp_src": d.carp_src,
                       "carp_src6": d.carp_src6,
                       "metrics": f"{d.metrics_addr[0]}:{d.metrics_addr[1]}" if d.metrics_addr else None,
                       "revision": d.revision, "applied_revision": rec["applied_revision"],
                       "published_generation": rec["published_generation"],
                       "drift": rec["drift"], "drifts": rec["drifts"],
                       "last_apply": d.last_apply, "applies": d.apply_count,
                       "rpc_refused": d.rpc_server.refused if d.rpc_server else 0},
            "carp_known": True,
            "dataplane": dp if dp is not None else {"running": False, "path": d.shm},
            "dataplane_up": alive,
            "clusters": clusters,
            "flow_table": d.flow_monitor.annotate(st["flow_table"]) if st else None,
            "flowsync": d.flowsync.status(),
            "bgp": self.bgp_status(),
            "drain": d.drain_status(),
        }

    def bgp_status(self) -> dict | None:
        """{engine, version, running, sessions: [{peer, as, state, since, bfd, routes}], clusters: {name:
        {announced, reason}}}; None without a [bgp] section."""
        d = self.d
        if d.cfg is None or d.cfg.bgp is None:
            return None
        out = d.bgp.status()
        for name, (want, why) in d.bgp_wanted.items():
            c = out["clusters"].setdefault(name, {"announced": False, "since": None})
            c["reason"] = why
            c["wanted"] = want
        return out

    def stats(self) -> dict:
        d = self.d
        with d.holder.use() as region:
            if region is None:
                raise rpc.RpcError("Unavailable", f"no data plane attached (waiting for {d.shm})")
            out = observe.stats(region, d.cfg)
        out["dataplane"]["up"] = d.watch.alive
        return out

    def flows(self, cluster, edge, client, limit) -> dict:
        d = self.d
        with d.holder.use() as region:
            if region is None:
                raise rpc.RpcError("Unavailable", f"no data plane attached (waiting for {d.shm})")
            try:
                rows, total = observe.find_flows(region, cluster=cluster, edge=edge, client=client, limit=limit)
            except ValueError as exc:
                raise rpc.RpcError("BadRequest", str(exc)) from None
        return {"flows": rows, "matched": total, "limit": limit}
