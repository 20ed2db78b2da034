"""pydp-control: the control daemon. The store is the configuration of record; this daemon is the only writer of
the data plane's live configuration while it runs, and keeps it equal to the store.

The daemon is wiring around parts that each own their state (docs/architecture.md):

* ``Reconciler`` (control.daemon.reconciler, sans-I/O): decides when and what to publish -- the store's config,
  edge health, ownership (CARP, standalone, --own-all) and resolved MACs, in one generation. It notices any
  generation it did not publish (drift) and a managed data plane's reload request, and re-applies the store;
* ``DataplaneWatch`` + ``RegionHolder`` (control.daemon.regions): attach the data plane's region when it appears,
  notice a restart (new region file, pid or creation time) or a stale heartbeat;
* ``HealthState`` (control.daemon.health_state) fed by the checker (control.health): an edge found down is
  published as DOWN (its cluster's Maglev table is rebuilt without it). A cluster left with no edge UP demotes its
  CARP advertisements (control.carp_manager);
* ``NeighbourResolver`` (control.daemon.neighbours): MACs of l2 edges configured without one;
* ``CarpManager`` (control.carp_manager): one CARP instance per enabled cluster in mode "cluster" on the data
  port's TAP; taking a cluster IP publishes the cluster as owned, puts the address on the TAP and announces it;
* ``BgpManager`` (control.bgp): with a [bgp] section, BIRD as a child process; the clusters with failover "bgp"
  are owned while the data plane lives, and announced or withdrawn as the Reconciler decides (data plane fresh,
  an edge healthy, the appliance not draining: `pydpctl appliance drain`);
* flow sync (control.flowsync), flow-table checks (control.flows: occupancy alarm, drain timeout, flushes);
* ``StatusView`` (control.daemon.status) for status/stats/flows; the RPC server (control.rpc) for pydpctl and the
  admin page with its HTTP API (control.http, --http, on this loop), both dispatching store operations through the
  one table of control.ops (Daemon.store_op); Prometheus metrics (control.metrics).

Threads and who owns what:

* the asyncio loop: CARP, the health checker and HealthState's writes, the neighbour resolver, RPC, HTTP, flow sync;
* the store thread (one worker, "pydp-store"): the store handle, the Reconciler, DataplaneWatch and every write to
  the region (publishes, flushes, commands). Everything that changes the live configuration runs here, one at a
  time: a publish never interleaves with another;
* reader threads: status, stats, flows (read-only); the metrics thread: scrapes (read-only).
* Shared values cross threads as immutable snapshots (``carp_owned`` is a frozenset replaced whole; the store's
  config object is replaced, never changed) or behind the lock of the part that owns them (HealthState,
  NeighbourResolver, RegionHolder).

Apart from flushes the daemon never clears the data plane's tables: when it stops or dies, the data plane keeps
forwarding with its last config, and a new daemon publishes the same config without rebuilding a table or moving
a flow. On SIGTERM its CARP instances bow out (the peer takes over at once) and release their cluster IPs.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
import os
import signal
import sys
import time
from typing import Any

from control import carp_manager, flows, flowsync, memory, observe, ops, rpc
from control.bgp.manager import BgpManager
from control import store as store_mod
from control.daemon.health_state import HealthState, targets_of
from control.daemon.neighbours import RESOLVE_POLL_S, NeighbourResolver
from control.daemon.reconciler import Apply, Event, Inputs, DataplaneView, Reconciler, ownership_source
from control.daemon.regions import DataplaneWatch, RegionHolder
from control.daemon.status import MAX_FLOWS, StatusView
from control.health import HealthChecker
from control.logs import add_log_options, event, setup_logging
from pydp import add_version_option, service

log = logging.getLogger("pydp.control")

DEFAULT_METRICS = "127.0.0.1:9469"
DP_POLL_S = 0.5                   # data plane watch and drift check: a foreign generation is repaired within 1 s
STORE_POLL_S = 1.0
TRIM_EVERY_S = 30.0              # malloc_trim cadence (control.memory)
HEALTH_SYNC_S = 0.5               # the health checks' targets follow the store at least this often
HEALTH_SOURCE_S = 5.0             # the probes' source address (the appliance's own on the TAP) is looked up again

EPILOG = """examples:
  pydp-control                                   # store /var/lib/pydp/pydp.db, socket /run/pydp/control.sock
  pydp-control --own-all --log-format text       # lab without CARP: own every enabled cluster IP
  pydp-control --carp-src 198.51.100.2           # CARP source address (default: the first IPv4 on the TAP)
  pydp-control --db /tmp/lab.db --socket /tmp/lab.sock --shm /dev/shm/pydp-lab --metrics 127.0.0.1:9470
  pydp-control --metrics ""                      # no metrics endpoint

The data plane it drives runs with `pydp-dataplane --managed`: its clusters and their ownership come from this
daemon only. Anything else that publishes a generation is drift: logged (config_drift) and repaired within a
second. `kill -HUP` of a managed data plane (systemctl reload) asks this daemon to re-apply the store.

Stop with SIGTERM or SIGINT: bgp clusters are withdrawn and BIRD stopped, CARP masters bow out and release their
cluster IPs, the socket is removed, the data plane keeps forwarding on its last tables.

Memory: SIGUSR2 logs the event memory (RSS and its parts, threads); PYDP_TRACEMALLOC=N in the environment at
start adds the Python source lines whose allocations grew most since the last report (tracemalloc, N frames).
malloc runs with 2 arenas and a fixed mmap threshold unless MALLOC_ARENA_MAX / MALLOC_MMAP_THRESHOLD_ are set.
"""


class Daemon:
    def __init__(self, *, db: str, socket_path: str, shm: str | None, metrics: tuple[str, int] | None,
                 own_all: bool = False, store_factory=None, carp_src: str | None = None,
                 carp_src6: str | None = None, http=None):
        self.db = db
        self.socket_path = socket_path
        self.shm = shm
        self.metrics_addr = metrics
        self.own_all = own_all
        self.store_factory = store_factory or store_mod.Store
        self.pid = os.getpid()
        self.started = time.time()
        self.worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pydp-store")
        self.readers = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="pydp-read")
        self.holder = RegionHolder()
        self.watch: DataplaneWatch | None = None            # made once the region path is known
        self.reconciler = Reconciler()
        self.store = None
        self.http_settings = http                 # control.http.Settings; None or listen None: no HTTP
        self.http_server = None
        self.cfg = None                       # the store's config at the last read (ApplianceConfig), replaced whole
        self.revision = None                  # its revision
        self.last_apply: dict = {}
        self.apply_count = 0
        self.rpc_server: rpc.Server | None = None
        self.metrics_server = None
        self.stop_event: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.carp_owned: frozenset = frozenset()   # clusters whose CARP instance is MASTER (loop writes, whole)
        self.carp_src = carp_src
        self.carp_src6 = carp_src6
        self.carp = carp_manager.CarpManager(set_owned=self.set_owned, interface=self.carp_interface,
                                             health=self.carp_health, event=event, carp_src=carp_src,
                                             carp_src6=carp_src6)
        self.carp.enabled = not own_all
        self.checker: HealthChecker | None = None
        self.health = HealthState()
        self.health_source: list[str] = []
        self.health_wake: asyncio.Event | None = None
        self.neighbours = NeighbourResolver(event)
        # flow sync ([sync]): follows ownership from the region's flags itself (CARP, --own-all and standalone alike)
        self.flowsync = flowsync.FlowSync(holder=self.holder, config=lambda: self.cfg, run_worker=self.run_worker,
                                          event=event, alive=lambda: self.dp_alive)
        self.flow_monitor = flows.TableMonitor(event)
        self.drains = flows.DrainTracker(event)
        self.flow_monitor_identity = None
        self.view = StatusView(self)
        self.bgp = BgpManager(event=event)
        self.bgp_wanted: dict = {}              # {bgp cluster: (announce, reason)}: replaced whole (store thread)
        self.drain: tuple | None = None         # (monotonic start, Unix start, timeout or None) of an appliance drain

    @property
    def dp_alive(self) -> bool:
        return self.watch is not None and self.watch.alive

    # ---- store thread: the store, the reconciler and every write to the region ----
    def _open_store(self) -> None:
        self.store = self.store_factory(self.db)
        self.cfg = self.store.appliance()
        self.revision = self.store.revision()

    def _reload_store(self) -> None:
        self.revision = self.store.revision()
        self.cfg = self.store.appliance()
        self._wake_health()

    def store_op(self, op: str, args: Any, via: str = "rpc", user: str = "",
                 if_match: int | None = None) -> tuple[Any, dict, list[str]]:
        """One operation of the table (control.ops) from the RPC or the HTTP API (store thread): checked and run
        by ops.call (control.ops.OpError if refused: nothing changed), then, after a change, the same
        apply-after-change path for both. Returns (result, info, warnings)."""
        result, info = ops.call(self.store, op, args, via=via, user=user, if_match=if_match)
        warnings: list[str] = []
        if ops.OPS[op].write and info["changed"]:
            names = {k: v for k, v in args.items() if k in ("name", "cluster", "edge", "new_name", "state",
                                                                 "enabled") and isinstance(v, (str, bool))}
            for k in ("cluster", "edge"):          # add_cluster / add_edge pass the new item itself
                if isinstance(args.get(k), dict) and isinstance(args[k].get("name"), str):
                    names[k] = args[k]["name"]
            event("config_changed", op=op, via=via, user=user, revision=info["revision"], **names)
            warnings = self._apply_after_change(f"{via} {op}")
        return result, info, warnings

    def _apply_after_change(self, reason: str) -> list[str]:
        """After a committed store change: publish it now; the warnings say what did not follow."""
        try:
            info = self._apply(reason)
        except Exception as exc:  # the store committed; the data plane did not follow
            log.exception("apply after %s failed", reason)
            info = {"applied": False, "error": f"{type(exc).__name__}: {exc}"}
        warnings = []
        if not info.get("applied"):
            warnings.append("saved in the store but not applied to the data plane: "
                            + (info.get("error") or info.get("reason") or "unknown reason"))
        warnings.extend(info.get("warnings", []))
        return warnings

    def _inputs(self, region) -> Inputs:
        dp = None
        if region is not None and self.watch is not None and self.watch.identity is not None:
            h = region.hdr
            dp = DataplaneView(identity=self.watch.identity, alive=self.watch.alive, generation=int(h.generation),
                               clusters=observe.clusters(region), managed=bool(h.managed),
                               reload_requests=int(h.reload_requests))
        fresh = region is not None and observe.now_ms() - int(region.hdr.heartbeat_ms) <= \
            carp_manager.HEARTBEAT_DEMOTE_MS
        drain = self.drain
        return Inputs(config=self.cfg, revision=self.revision, dataplane=dp, health=self.health.decided(),
                      carp_owned=self.carp_owned, own_all=self.own_all, macs=self.neighbours.snapshot(),
                      now=time.monotonic(), dp_fresh=fresh, draining_since=drain[0] if drain else None,
                      drain_timeout=drain[2] if drain else None)

    def _decide_bgp(self, inputs: Inputs) -> None:
        """The announcements the inputs call for (store thread); the BGP manager is woken when they change."""
        wanted = self.reconciler.announcements(inputs)
        if wanted != self.bgp_wanted:
            self.bgp_wanted = wanted
            if self.loop is not None:
                self.loop.call_soon_threadsafe(self.bgp.wake.set)

    def _apply(self, reason: str) -> dict:
        """Reads the store again and reconciles (store thread only)."""
        try:
            self._reload_store()
        except Exception as exc:  # e.g. a CARP passphrase file that cannot be read any more
            event("apply_failed", logging.ERROR, revision=self.revision, reason=reason,
                  error=f"cannot read the store: {exc}")
            return {"applied": False, "error": f"cannot read the store: {exc}"}
        return self._reconcile(reason)

    def _reconcile(self, reason: str | None = None) -> dict:
        """One reconciler step and its actions (store thread only). Returns what the last publish did."""
        with self.holder.use() as region:
            if region is None or not self.dp_alive:
                self._decide_bgp(self._inputs(None))
                return {"applied": False, "reason": "no data plane is running; the config is applied when one "
                                                    "starts"}
            inputs = self._inputs(region)
            try:
                return self._reconcile_actions(region, inputs, reason)
            finally:
                self._decide_bgp(inputs)

    def _reconcile_actions(self, region, inputs: Inputs, reason: str | None) -> dict:
        from pydp.apply import ApplyError, apply_config
        from pydp.shm import ShmError

        actions = self.reconciler.step(inputs, reason)
        if self.reconciler.adopted:
            self.neighbours.adopt(self.reconciler.adopted)
        info: dict = {"applied": True, "unchanged": True, "generation": int(region.generation),
                      "rebuilt": [], "warnings": []}
        for action in actions:
            if isinstance(action, Event):
                event(action.name, action.level, **action.fields)
                continue
            assert isinstance(action, Apply)
            before = inputs.dataplane.clusters
            try:
                result = apply_config(region, action.desired.config, owned=action.desired.owned,
                                      edge_health=action.desired.edge_health)
            except (ApplyError, ShmError) as exc:
                self.reconciler.failed_apply(action, time.monotonic())
                event("apply_failed", logging.ERROR, revision=action.revision, reason=action.reason,
                      error=str(exc))
                return {"applied": False, "error": str(exc)}
            after = observe.clusters(region)
            self.reconciler.applied(action, self.watch.identity, result.generation, after)
            self.apply_count += 1
            for w in result.warnings:
                event("apply_warning", logging.WARNING, message=w)
            event("config_applied", revision=action.revision, generation=result.generation,
                  reason=action.reason, clusters=sorted(result.slots), rebuilt=result.rebuilt,
                  owned=sorted(action.desired.owned))
            self._log_ownership(before, after, action.desired.config)
            self._log_edge_changes(before, after)
            self.last_apply = {"time": time.time(), "revision": action.revision,
                               "generation": result.generation, "rebuilt": result.rebuilt,
                               "reason": action.reason, "warnings": result.warnings}
            info = {"applied": True, "generation": result.generation, "rebuilt": result.rebuilt,
                    "warnings": result.warnings}
        return info

    def _log_ownership(self, before: dict, after: dict, cfg) -> None:
        for name, c in after.items():
            old = before.get(name, {}).get("active")
            source = ownership_source(cfg, name, self.own_all)
            if old != c["active"] and source != "carp":       # CARP logs its own transitions
                event("carp_transition", cluster=name, state="master" if c["active"] else "backup",
                      previous=None if old is None else ("master" if old else "backup"), source=source)

    @staticmethod
    def _log_edge_changes(before: dict, after: dict) -> None:
        """One event per edge whose state in the data plane changed with this publish."""
        b = {(cn, en): e["state"] for cn, c in before.items() for en, e in c["edges"].items()}
        a = {(cn, en): e["state"] for cn, c in after.items() for en, e in c["edges"].items()}
        for key, state in a.items():
            old = b.get(key)
            if old != state:
                level = logging.WARNING if state == "down" else logging.INFO
                event("edge_" + state, level, cluster=key[0], edge=key[1], state=state, previous=old)
        for key in set(b) - set(a):
            event("edge_removed", cluster=key[0], edge=key[1], previous=b[key])

    def _reconcile_logged(self, reason: str | None = None) -> None:
        try:
            self._reconcile(reason)
        except Exception:
            log.exception("reconcile (%s) failed", reason)

    def _poll_store(self) -> None:
        rev = self.store.revision()
        if rev != self.revision:
            event("store_changed", revision=rev, previous=self.revision)
            try:
                self._reload_store()
            except Exception as exc:
                self.revision = rev
                event("apply_failed", logging.ERROR, revision=rev, reason="store changed by another writer",
                      error=f"cannot read the store: {exc}")
                return
            self._reconcile("store changed by another writer")

    # ---- CARP's side (called on the loop by control.carp_manager) ----
    def set_owned(self, name: str, owned: bool):
        """CARP took (or released) a cluster IP: a generation with the cluster owned (or not) is published at
        once on the store thread (ownership travels with the clusters, never beside them). Returns the pending
        publish (CARP awaits it before it announces the address), or None when nothing changes."""
        if owned == (name in self.carp_owned):
            return None
        self.carp_owned = (self.carp_owned | {name}) if owned else (self.carp_owned - {name})
        why = f"carp: {'master' if owned else 'backup'} of cluster {name}"
        if self.loop is None:
            return None
        return self.loop.run_in_executor(self.worker, self._reconcile_logged, why)

    def carp_interface(self) -> str | None:
        """The TAP CARP runs on: the exception interface of the first data port that has one (store's config)."""
        cfg = self.cfg
        for port in (cfg.ports if cfg is not None else []):
            if port.tap:
                return port.tap
        return None

    def carp_health(self, tap: str) -> tuple[list[str], dict[str, bool]]:
        """(reasons common to every cluster, {cluster: has an edge UP}) for CARP's demotion. "dataplane": none
        attached or its heartbeat is older than 1 s; "link": the link of the port whose TAP is `tap` is down;
        "flowsync": just started, and the peer's flows are not installed yet (control.flowsync)."""
        from pydp._ffi import ffi

        with self.holder.use() as region:
            if region is None:
                return ["dataplane"], {}
            h = region.hdr
            if observe.now_ms() - int(h.heartbeat_ms) > carp_manager.HEARTBEAT_DEMOTE_MS:
                return ["dataplane"], {}
            # a master is never demoted for flow sync; CARP's own view says so at once, also for a cluster resumed
            # after a restart before flow sync has read the ownership flags
            reasons = [] if self.carp_owned else self.flowsync.demote_reasons()
            # the config port whose TAP this is, and its data-plane port: by device name, else by position
            ports = self.cfg.ports if self.cfg is not None else []
            index = next((i for i, p in enumerate(ports) if p.tap == tap), None)
            port = None
            if index is not None:
                names = [ffi.string(h.ports[p].name).decode(errors="replace") for p in range(h.nb_ports)]
                dev = ports[index].device_name
                port = names.index(dev) if dev in names else (index if index < h.nb_ports else None)
            if port is None or not h.ports[port].link_up:
                reasons.append("link")
            edges_up = {name: any(e["state"] == "up" for e in c["edges"].values())
                        for name, c in observe.clusters(region).items() if c["enabled"]}
        return reasons, edges_up

    def health_local_down(self) -> str | None:
        """Why this appliance cannot probe its edges right now (its data plane gone or stale, a data port's link
        down), else None: a failed probe then says nothing about the edge and is not counted (control.health)."""
        with self.holder.use() as region:
            if region is None:
                return "no data plane"
            h = region.hdr
            if observe.now_ms() - int(h.heartbeat_ms) > carp_manager.HEARTBEAT_DEMOTE_MS:
                return "data plane not running"
            down = [p for p in range(h.nb_ports) if not h.ports[p].link_up]
            return f"data port {down[0]} link down" if down else None

    # ---- health checks ----
    def _wake_health(self) -> None:
        """The store's config was read again (any thread): the health checks' targets follow at once."""
        loop, wake = self.loop, self.health_wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):     # the loop is closing
                loop.call_soon_threadsafe(wake.set)

    def _sync_health(self) -> None:
        """Gives the checker the store's edges when they changed (loop). Unchanged edges keep their state."""
        if self.checker is None:
            return
        targets = targets_of(self.cfg)
        if self.health.set_targets(targets):
            self.checker.set_targets(targets)

    def _probe_source(self) -> list[str]:
        """The probes' source addresses: the appliance's own on the TAP, as CARP uses them (--carp-src /
        --carp-src6, else the TAP's first IPv4 address and first global IPv6 address that are not cluster IPs).
        Empty when unknown (no TAP yet): the kernel then chooses. Blocking (netlink): run off the loop."""
        cfg = self.cfg
        v4, v6 = self.carp_src, self.carp_src6
        if v4 is None or v6 is None:
            tap = self.carp_interface()
            try:
                info = carp_manager.tap_info(tap) if tap else None
            except Exception as exc:
                log.debug("cannot read the addresses of %s: %s", tap, exc)
                info = None
            if info is not None:
                vips = {ipaddress.ip_address(str(cl.cluster_ip)) for cl in (cfg.clusters if cfg else [])}
                own = []
                for a in info[2]:
                    with contextlib.suppress(ValueError):
                        ip = ipaddress.ip_address(a.partition("%")[0])
                        if ip not in vips:
                            own.append(ip)
                if v4 is None:
                    v4 = next((str(a) for a in own if a.version == 4), None)
                if v6 is None:
                    v6 = next((str(a) for a in own if a.version == 6 and not a.is_link_local), None)
        return [a for a in (v4, v6) if a is not None]

    async def _on_health(self, cluster: str, edge: str, up: bool, reason: str) -> None:
        """The checker decided that an edge is up or down (loop): record, log, and publish if it matters."""
        got = self.health.record((cluster, edge), up)
        if got is None:
            return
        changed, ip = got
        event("edge_health", logging.INFO if up else logging.WARNING, cluster=cluster, edge=edge, up=up,
              reason=reason, ip=ip)
        if changed:        # only this cluster's table changes; flows on the other edges stay
            await self.run_worker(self._reconcile_logged, f"health: edge {edge} of cluster {cluster} "
                                                          f"{'up' if up else 'down'}")

    async def watch_health(self) -> None:
        next_source = 0.0
        while True:
            self.health_wake.clear()
            try:
                if time.monotonic() >= next_source:
                    next_source = time.monotonic() + HEALTH_SOURCE_S
                    src = await self.loop.run_in_executor(self.readers, self._probe_source)
                    if src != self.health_source:
                        self.checker.set_source(src)
                        self.health_source = src
                        event("health_source", source=src)
                self._sync_health()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("health checks")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.health_wake.wait(), HEALTH_SYNC_S)

    # ---- flow tables ----
    def _check_flows(self) -> None:
        """Every FLOW_CHECK_S (store thread): the tables' occupancy alarm, then the drain timeouts."""
        with self.holder.use() as region:
            if region is None or not self.dp_alive:
                self.drains.check(None, self.cfg, {})
                return
            if self.flow_monitor_identity != self.watch.identity:   # a new data plane: new tables and counters
                self.flow_monitor.reset()
                self.flow_monitor_identity = self.watch.identity
            self.flow_monitor.check(self.flow_monitor.rows(region))
            since = {(r["cluster"], r["edge"]): r["since"] for r in self.store.drain_times()}
            self.drains.check(region, self.cfg, since)

    async def watch_flows(self) -> None:
        await self._every(flows.FLOW_CHECK_S, self._check_flows, "flow-table checks")

    def _flush(self, params: dict) -> dict:
        """The flush RPC (store thread: the one writer of the region)."""
        with self.holder.use() as region:
            if region is None or not self.dp_alive:
                raise rpc.RpcError("Unavailable", f"no data plane is running (waiting for {self.shm})")
            try:
                res = flows.flush(region, all_flows=bool(params.get("all")), cluster=params.get("cluster"),
                                  edge=params.get("edge"))
            except flows.FlushError as exc:
                raise rpc.RpcError(exc.kind, exc.message) from None
        event("flows_flushed", via="rpc", cleared=res["cleared"], **res["scope"],
              workers={r["worker"]: r["cleared"] for r in res["workers"]})
        return res

    # ---- the loop's tasks ----
    async def run_worker(self, fn, *args):
        return await self.loop.run_in_executor(self.worker, fn, *args)

    def _seed_resume(self) -> None:
        """A data plane found running when the daemon starts: the previous pydp-control may have been killed while
        master. Clusters run by CARP whose ownership is still published stay owned through the first publish, and
        CARP resumes them as MASTER if their cluster IP is still on the TAP (control.carp_manager), so a restart
        of the control plane drops no packet."""
        if self.own_all or self.cfg is None or not self.carp.enabled:
            return
        with self.holder.use() as region:
            try:
                found = observe.clusters(region)
            except Exception:
                log.exception("reading the ownership of the running data plane")
                return
        owned = {cl.name for cl in self.cfg.clusters if cl.enabled and cl.mode == "cluster"
                 and cl.failover != "bgp" and found.get(cl.name, {}).get("active")}
        if owned:
            self.carp_owned = self.carp_owned | owned
            self.carp.resume = set(owned)

    def _watch_once(self, resume: bool = False) -> None:
        """One look at the data plane and the publish it calls for: attach, restart, drift or a reload request
        (store thread: no change slips between)."""
        try:
            why = self.watch.check()
        except Exception:
            log.exception("data-plane watcher")
            return
        if why == "data plane attached" and resume:
            self._seed_resume()
        if why is not None and why != "data plane resumed":
            self.reconciler.forget_dataplane()
        self._reconcile_logged(why)

    async def watch_dataplane(self) -> None:
        await self._every(DP_POLL_S, self._watch_once, "data-plane watcher")

    async def watch_store(self) -> None:
        await self._every(STORE_POLL_S, self._poll_store, "store watcher")

    async def _every(self, period: float, fn, what: str) -> None:
        """Runs fn on the store thread every period seconds, for ever; a failure is logged and the next round runs."""
        while True:
            await asyncio.sleep(period)
            try:
                await self.run_worker(fn)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s", what)

    async def resolve_macs(self) -> None:
        async def blocking(fn, *args):
            return await self.loop.run_in_executor(self.readers, fn, *args)

        while True:
            await asyncio.sleep(RESOLVE_POLL_S)
            try:
                if await self.neighbours.step(self.cfg, blocking):
                    await self.run_worker(self._reconcile_logged, "edge MAC resolved")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("MAC resolver")

    # ---- RPC ----
    async def handle(self, method: str, params: dict) -> Any:
        if method == "ping":
            return {"daemon": "pydp-control", "protocol": rpc.PROTOCOL_VERSION, "pid": os.getpid()}
        if method == "store":
            return await self._rpc_store(params)
        if method == "status":
            _only(params, set())
            states = self.checker.states() if self.checker is not None else {}     # on the loop: it owns them
            return await self.loop.run_in_executor(self.readers, self.view.status, states)
        if method == "stats":
            _only(params, set())
            return await self.loop.run_in_executor(self.readers, self.view.stats)
        if method == "flows":
            _only(params, {"cluster", "edge", "client", "limit"})
            for k in ("cluster", "edge", "client"):
                if params.get(k) is not None and not isinstance(params[k], str):
                    raise rpc.RpcError("BadRequest", f"flows: {k} must be a string")
            limit = params.get("limit", 1000)
            if limit is None:
                limit = 1000
            if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_FLOWS:
                raise rpc.RpcError("BadRequest", f"flows: limit must be an integer 0..{MAX_FLOWS}")
            return await self.loop.run_in_executor(self.readers, self.view.flows, params.get("cluster"),
                                                   params.get("edge"), params.get("client"), limit)
        if method == "flush":
            _only(params, {"all", "cluster", "edge"})
            for k in ("cluster", "edge"):
                if params.get(k) is not None and not isinstance(params[k], str):
                    raise rpc.RpcError("BadRequest", f"flush: {k} must be a string")
            if not isinstance(params.get("all", False), bool):
                raise rpc.RpcError("BadRequest", "flush: all must be true or false")
            return await self.run_worker(self._flush, params)
        if method == "drain":
            _only(params, {"timeout"})
            timeout = params.get("timeout")
            if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                        or not 0 <= timeout <= 86400):
                raise rpc.RpcError("BadRequest", "drain: timeout must be a number of seconds 0..86400")
            return await self.set_drain(True, timeout)
        if method == "undrain":
            _only(params, set())
            return await self.set_drain(False, None)
        raise rpc.RpcError("BadRequest", f"unknown method {method!r}")

    # ---- appliance drain (bgp clusters) ----
    async def set_drain(self, on: bool, timeout: float | None) -> dict:
        """pydpctl appliance drain / undrain: every bgp cluster is withdrawn at once; established flows keep being
        forwarded until the timeout ([bgp] drain_timeout unless given), then the clusters are let go."""
        was = self.drain
        if on:
            if was is None or timeout is not None:
                self.drain = (time.monotonic() if was is None else was[0], time.time() if was is None else was[1],
                              None if timeout is None else float(timeout))
        else:
            self.drain = None
        if (was is None) != (self.drain is None):
            event("appliance_drain" if on else "appliance_undrain", logging.WARNING if on else logging.INFO,
                  timeout=self.drain_timeout(), bgp_clusters=sorted(self.bgp_wanted))
        await self.run_worker(self._reconcile_logged, "appliance drained" if on else "appliance undrained")
        self.bgp.wake.set()
        return self.drain_status()

    def drain_timeout(self) -> float | None:
        d = self.drain
        if d is None:
            return None
        if d[2] is not None:
            return d[2]
        cfg = self.cfg
        return cfg.bgp.drain_timeout if cfg is not None and cfg.bgp is not None else 0.0

    def drain_status(self) -> dict:
        """The appliance's drain for status: draining, since (Unix), timeout, left (s), expired."""
        d = self.drain
        if d is None:
            return {"draining": False, "since": None, "timeout": None, "left": None, "expired": False}
        timeout = self.drain_timeout()
        left = max(0.0, timeout - (time.monotonic() - d[0]))
        return {"draining": True, "since": d[1], "timeout": timeout, "left": round(left, 3), "expired": left <= 0}

    async def _rpc_store(self, params: dict) -> Any:
        """The "store" method: {"op", "args", "user"?, "if_match"?} dispatched through control.ops."""
        _only(params, {"op", "args", "user", "if_match"})
        op = params.get("op")
        if not isinstance(op, str) or op not in ops.OPS:
            shown = op[:64] if isinstance(op, str) else type(op).__name__
            raise rpc.RpcError("BadRequest", f"store op {shown!r} is not allowed; allowed: "
                                             f"{', '.join(sorted(ops.OPS))}")
        args = params.get("args", {})
        if not isinstance(args, dict) and args is not None:
            raise rpc.RpcError("BadRequest", "store: args must be a map of keyword arguments")
        user = params.get("user") or "root"
        if not isinstance(user, str):
            raise rpc.RpcError("BadRequest", "store: user must be a string")
        try:
            result, _, warnings = await self.run_worker(self.store_op, op, args or {}, "rpc", user[:64],
                                                        params.get("if_match"))
        except ops.OpError as exc:
            raise rpc.RpcError(ops.RPC_TYPES[exc.kind], exc.message) from None
        return rpc.Reply(result, warnings)

    # ---- metrics ----
    def _metrics_extra(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        rec = self.reconciler.status()
        g = GaugeMetricFamily("pydp_control_applied_revision", "store revision last applied to the data plane "
                              "(absent until the first apply)")
        if rec["applied_revision"] is not None:
            g.add_metric([], rec["applied_revision"])
        yield g
        d = CounterMetricFamily("pydp_control_config_drifts", "generations found in the data plane that this daemon "
                                "did not publish (each one re-applied)")
        d.add_metric([], rec["drifts"])
        yield d
        dd = GaugeMetricFamily("pydp_control_config_drift", "1 while the live config differs from what this daemon "
                               "published")
        dd.add_metric([], 1 if rec["drift"] else 0)
        yield dd
        u = GaugeMetricFamily("pydp_unresolved_mac_edges", "edges without a MAC yet (they get no traffic)")
        u.add_metric([], len(self.neighbours.unresolved(self.cfg)))
        yield u
        r = CounterMetricFamily("pydp_rpc_refused_connections", "RPC connections refused: the peer was not root")
        r.add_metric([], self.rpc_server.refused if self.rpc_server else 0)
        yield r
        yield from self._health_metrics()
        yield from self._carp_metrics()
        yield from self.bgp.metrics()
        dr = GaugeMetricFamily("pydp_appliance_draining", "1 while the appliance is drained (pydpctl appliance drain:"
                               " its bgp clusters are withdrawn)")
        dr.add_metric([], 1 if self.drain is not None else 0)
        yield dr
        yield from self.flowsync.metrics()
        from control import metrics

        yield from metrics.flow_management(self.flow_monitor.snapshot(), self.drains)

    def _health_metrics(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        g = GaugeMetricFamily("pydp_edge_health_state", "1 for the edge's health-check verdict: up, down, or unknown "
                              "(not decided yet: counts as up)", labels=["cluster", "edge", "state"])
        t = CounterMetricFamily("pydp_edge_health_transitions", "changes of the edge's health (the first "
                                "decision included)", labels=["cluster", "edge"])
        for key, up, n in self.health.rows():
            verdict = "unknown" if up is None else "up" if up else "down"
            for s in ("up", "down", "unknown"):
                g.add_metric([*key, s], 1 if s == verdict else 0)
            t.add_metric(list(key), n)
        yield from (g, t)

    def _carp_metrics(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        state = GaugeMetricFamily("pydp_carp_state", "1 for the CARP state of this appliance for the cluster "
                                  "(inactive: no instance runs, see pydpctl status)", labels=["cluster", "state"])
        demote = GaugeMetricFamily("pydp_carp_demote", "this appliance's CARP demotion for the cluster",
                                   labels=["cluster"])
        drops = CounterMetricFamily("pydp_carp_dropped_adverts", "CARP advertisements dropped, by reason",
                                    labels=["cluster", "reason"])
        trans = CounterMetricFamily("pydp_carp_transitions", "CARP state changes", labels=["cluster"])
        sent = CounterMetricFamily("pydp_carp_adverts_sent", "CARP advertisements sent", labels=["cluster"])
        heard = CounterMetricFamily("pydp_carp_adverts_received", "CARP advertisements accepted",
                                    labels=["cluster"])
        suspect = GaugeMetricFamily("pydp_carp_split_brain_suspected", "1 while adverts for this cluster's vhid "
                                    "fail authentication while this appliance is master (a peer with another "
                                    "passphrase may be master too)", labels=["cluster"])
        alarms = CounterMetricFamily("pydp_carp_split_brain_alarms", "split-brain alarms raised", labels=["cluster"])
        for name, s in self.carp.metrics():
            for st in carp_manager.STATES + ("inactive",):
                state.add_metric([name, st], 1 if s["state"] == st else 0)
            demote.add_metric([name], s["demote"] or 0)
            for reason, n in s["drops"].items():
                drops.add_metric([name, reason], n)
            trans.add_metric([name], s["transitions"])
            sent.add_metric([name], s["adverts_sent"])
            heard.add_metric([name], s["adverts_received"])
            suspect.add_metric([name], 1 if s["auth_alarm"] else 0)
            alarms.add_metric([name], s["auth_alarms"])
        yield from (state, demote, drops, trans, sent, heard, suspect, alarms)

    async def feed_watchdog(self) -> None:
        """WATCHDOG=1 to systemd while this event loop turns (WatchdogSec= of the unit; nothing outside systemd)."""
        watchdog = service.Watchdog(lambda: True)
        if not watchdog.enabled:
            return
        while True:
            await asyncio.sleep(watchdog.interval / 2)
            watchdog.tick()

    async def trim_memory(self) -> None:
        """malloc_trim every TRIM_EVERY_S (on the default executor): the free pages that flow-table scans,
        resyncs and takeovers leave in the malloc arenas go back to the kernel (control.memory)."""
        while True:
            await asyncio.sleep(TRIM_EVERY_S)
            await self.loop.run_in_executor(None, memory.trim)

    def _memory_report(self) -> None:
        """SIGUSR2: the event "memory" (RSS and its parts, threads, and with PYDP_TRACEMALLOC the Python
        allocation sites that grew most since the last report), computed off the loop."""
        def done(fut) -> None:
            if fut.exception() is not None:
                log.error("memory report failed", exc_info=fut.exception())
            else:
                event("memory", **fut.result())
        self.loop.run_in_executor(None, memory.report).add_done_callback(done)

    def _dataplane_pid(self) -> int:
        """The attached data plane's pid (for its process metrics); a pid that names no process yields none."""
        with self.holder.use() as region:
            return int(region.hdr.dp_pid) if region is not None and self.dp_alive else 0

    def _metrics_region(self):
        holder = self.holder
        daemon = self

        @contextlib.contextmanager
        def source():
            with holder.use() as region:
                yield region if (region is not None and daemon.dp_alive) else None
        return source

    # ---- life cycle ----
    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        try:
            await self.run_worker(self._open_store)
        except Exception as exc:
            event("daemon_failed", logging.ERROR, error=f"cannot open the store {self.db}: {exc}")
            return 1
        if self.shm is None:
            self.shm = self.cfg.dataplane.shm_path
        self.watch = DataplaneWatch(self.holder, self.shm)
        _make_socket_dir(self.socket_path)
        try:
            self.rpc_server = await rpc.serve(self.socket_path, self.handle,
                                              methods={"ping", "store", "status", "stats", "flows", "flush",
                                                       "drain", "undrain"})
        except (OSError, RuntimeError) as exc:
            event("daemon_failed", logging.ERROR, error=f"cannot listen on {self.socket_path}: {exc}")
            return 1
        if self.http_settings is not None and self.http_settings.listen is not None:
            from control import http
            from control.http.backend import DaemonBackend

            st = self.http_settings
            try:
                self.http_server = await http.start(DaemonBackend(self), *st.listen, users_file=st.users,
                                                    tls_cert=st.tls_cert, tls_key=st.tls_key)
            except (OSError, ValueError) as exc:
                where = f"{st.listen[0]}:{st.listen[1]}"
                if st.explicit or isinstance(exc, ValueError):
                    await self.rpc_server.close()
                    event("daemon_failed", logging.ERROR, error=f"cannot serve the admin page on {where}: {exc}")
                    return 1
                # the default address taken (e.g. another pydp-control on this host): run on without the page
                event("http_unavailable", logging.ERROR, address=where, error=str(exc),
                      hint="give --http HOST:PORT (or \"\" to disable the admin page)")
        # queued on the store thread before any request can be: a running data plane is attached and gets the
        # config before the first change is taken
        first = self.loop.run_in_executor(self.worker, self._watch_once, True)
        if self.metrics_addr is not None:
            from control import metrics

            try:
                self.metrics_server = metrics.start(self.metrics_addr,
                                                    metrics.Collector(self._metrics_region(), self._metrics_extra,
                                                                      self._dataplane_pid))
            except OSError as exc:
                await self.rpc_server.close()
                with contextlib.suppress(Exception):
                    await first
                event("daemon_failed", logging.ERROR, error=f"cannot serve metrics on "
                      f"{self.metrics_addr[0]}:{self.metrics_addr[1]}: {exc}")
                return 1
        for s in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(s, self.stop_event.set)
        self.loop.add_signal_handler(signal.SIGUSR2, self._memory_report)
        event("daemon_started", pid=os.getpid(), socket=self.socket_path, db=self.db, shm=self.shm,
              metrics=f"{self.metrics_addr[0]}:{self.metrics_addr[1]}" if self.metrics_addr else None,
              own_all=self.own_all, carp_src=self.carp_src, carp_src6=self.carp_src6, revision=self.revision,
              ops=sorted(ops.OPS), http=self.http_server.url if self.http_server else None)
        await first
        self.health_wake = asyncio.Event()
        self.checker = HealthChecker(self._on_health, local_down=self.health_local_down)
        tasks = [asyncio.create_task(c) for c in (self.watch_dataplane(), self.watch_store(), self.resolve_macs(),
                                                  self.watch_health(), self.flowsync.run(),
                                                  self.watch_flows(), self.feed_watchdog(), self.trim_memory())]
        # systemd (Type=notify): serving now, the socket listens and a running data plane has the config
        service.notify("READY=1", f"STATUS=serving {self.socket_path}")
        carp_stop = asyncio.Event()
        carp_task = asyncio.create_task(self.carp.run(lambda: self.cfg, carp_stop))
        bgp_stop = asyncio.Event()
        bgp_task = asyncio.create_task(self.bgp.run(lambda: self.cfg, lambda: self.bgp_wanted, bgp_stop))
        try:
            await self.stop_event.wait()
        finally:
            event("daemon_stopping", reason="signal")
            service.notify("STOPPING=1")
            bgp_stop.set()                      # withdraw every bgp cluster first, then stop BIRD
            self.bgp.wake.set()
            try:
                await asyncio.wait_for(bgp_task, 15)
            except Exception:
                log.exception("stopping BGP")
            if self.http_server is not None:
                await self.http_server.close()
            await self.rpc_server.close()
            carp_stop.set()                     # masters bow out and release their cluster IPs
            try:
                await asyncio.wait_for(carp_task, 10)
            except Exception:
                log.exception("stopping CARP")
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await asyncio.wait_for(self.checker.close(), 10)
            except Exception:
                log.exception("stopping the health checks")
            if self.metrics_server is not None:
                with contextlib.suppress(Exception):
                    self.metrics_server.shutdown()
                    self.metrics_server.server_close()
            self.worker.shutdown(wait=True)     # a publish under way completes
            self.readers.shutdown(wait=True)
            self.holder.replace(None)           # unmaps only: the data plane keeps its tables and forwards
            event("daemon_stopped")
        return 0


def _only(params: dict, allowed: set) -> None:
    extra = set(params) - allowed
    if extra:
        raise rpc.RpcError("BadRequest", f"unknown parameters: {', '.join(sorted(extra))}"
                                         + (f" (accepted: {', '.join(sorted(allowed))})" if allowed else ""))


def _make_socket_dir(path: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        os.makedirs(d, mode=0o700, exist_ok=True)
        os.chmod(d, 0o700)


def default_db() -> str:
    return os.environ.get("PYDP_DB") or store_mod.DEFAULT_PATH


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pydp-control", description=__doc__.splitlines()[0], epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_option(ap)
    ap.add_argument("--db", default=None, metavar="FILE",
                    help="config store (default: $PYDP_DB, else the store's default path)")
    ap.add_argument("--socket", default=rpc.DEFAULT_SOCKET, metavar="PATH",
                    help=f"RPC socket for pydpctl, mode 0600 (default {rpc.DEFAULT_SOCKET})")
    ap.add_argument("--shm", default=None, metavar="PATH",
                    help="the data plane's shared memory (default: the store's dataplane.shm_path)")
    ap.add_argument("--metrics", default=DEFAULT_METRICS, metavar="HOST:PORT",
                    help=f'Prometheus endpoint (default {DEFAULT_METRICS}; "" disables it)')
    ap.add_argument("--own-all", action="store_true",
                    help="own every enabled cluster IP and run no CARP (labs; standalone clusters are always "
                         "owned)")
    ap.add_argument("--carp-src", default=None, metavar="IP",
                    help="source address of CARP advertisements: this appliance's own IPv4 address on the data "
                         "port's TAP (default: the first IPv4 address on the TAP that is not a cluster IP)")
    ap.add_argument("--carp-src6", default=None, metavar="IP6",
                    help="source address of CARP advertisements for IPv6 clusters: this appliance's own IPv6 "
                         "address on the TAP (default: its first global IPv6 address, else its link-local one)")
    ap.add_argument("--http", default=None, metavar="HOST:PORT",
                    help='the admin page and HTTP API (default: http.listen of --config, else 127.0.0.1:8470; '
                         '"" disables it; docs/web.md)')
    ap.add_argument("--http-users", default=None, metavar="FILE",
                    help="who may sign in (default: http.users, else /etc/pydp/http-users; pydpctl http-user)")
    ap.add_argument("--http-cert", default=None, metavar="FILE", help="TLS certificate (with --http-key)")
    ap.add_argument("--http-key", default=None, metavar="FILE", help="TLS private key (with --http-cert)")
    ap.add_argument("--config", default=None, metavar="FILE",
                    help="pydp-control's settings file (default /etc/pydp/control.toml if it exists: [http])")
    add_log_options(ap)
    return ap


def parse_args(argv=None) -> argparse.Namespace:
    ap = build_parser()
    args = ap.parse_args(argv)
    from control.metrics import parse_address

    try:
        args.metrics_addr = parse_address(args.metrics)
    except ValueError as exc:
        ap.error(f"--metrics: {exc}")
    if args.db is None:
        args.db = default_db()
    from control import http

    if args.config and not os.path.exists(args.config):
        ap.error(f"--config: {args.config}: no such file")
    try:
        args.http_settings = http.settings(listen=args.http, users=args.http_users, tls_cert=args.http_cert,
                                           tls_key=args.http_key, config_path=args.config or http.CONTROL_CONFIG)
    except ValueError as exc:
        ap.error(str(exc))
    if args.carp_src is not None:
        try:
            args.carp_src = str(ipaddress.IPv4Address(args.carp_src))
        except ValueError:
            ap.error(f"--carp-src: {args.carp_src!r} is not an IPv4 address")
    if args.carp_src6 is not None:
        try:
            args.carp_src6 = str(ipaddress.IPv6Address(args.carp_src6.partition("%")[0]))
        except ValueError:
            ap.error(f"--carp-src6: {args.carp_src6!r} is not an IPv6 address")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_format, getattr(logging, args.log_level.upper()), program="pydp-control")
    # before any thread: few malloc arenas, a fixed mmap threshold (control.memory); PYDP_TRACEMALLOC=N traces
    tuned = memory.tune()
    traced = memory.start_tracing()
    if tuned or traced:
        log.debug("malloc %s, tracemalloc frames %d", tuned, traced)
    if args.log_level == "info":
        # the driver's own lines repeat the daemon's carp_* events; its warnings (send errors, split brain) stay
        logging.getLogger("pydp.carp").setLevel(logging.WARNING)
    daemon = Daemon(db=args.db, socket_path=args.socket, shm=args.shm, metrics=args.metrics_addr,
                    own_all=args.own_all, carp_src=args.carp_src, carp_src6=args.carp_src6,
                    http=args.http_settings)
    try:
        return asyncio.run(daemon.run())
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
