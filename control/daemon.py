"""pydp-control: the control daemon. It keeps the data plane's shared memory in line with the config store.

Tasks (one asyncio loop; the store and every config write run on one worker thread, one at a time):

* the RPC server for pydpctl (control.rpc) on a UNIX socket, mode 0600;
* the data-plane watcher: attaches the region when it appears, notices a restart (new region file, new pid or
  creation time) or a stale heartbeat, and re-applies the config to a new data plane;
* the store watcher: applies changes another writer committed (pydpctl --db without the daemon);
* MAC resolution for edges configured without a MAC (kernel neighbour table, ARP/ND provoked when absent);
* Prometheus metrics (control.metrics) read from the region at scrape time;
* CARP (control.carp_manager): one instance per enabled cluster in mode "cluster" on the data port's TAP; taking a
  cluster IP sets the fast path's ownership flag, puts the address on the TAP and announces it (gratuitous ARP);
* health checks (control.health): every edge of every enabled cluster, sent from the appliance's own address on the
  TAP; an edge found down is applied as DOWN (its cluster's Maglev table is rebuilt without it), one found up again
  comes back the same way. A cluster left with no edge UP demotes its CARP advertisements (control.carp_manager);
* flow sync (control.flowsync, [sync]): the flows of the clusters this appliance owns go to the peer, the peer's
  flows of the others are installed here (docs/flowsync.md).
* flow tables (control.flows): flushes on request (RPC "flush"), the occupancy alarm (above 90% of a worker's
  table; cleared below 85%), and the drain timeout: an edge draining longer than its cluster's drain_timeout has
  its remaining flows flushed, so they reach another edge at their next packet.

Apart from those flushes the daemon never clears the data plane's tables: when it stops or dies, the data plane
keeps forwarding with its last config, and a new daemon re-applies the same config without rebuilding a table or
moving a flow. On SIGTERM its CARP instances bow out (the peer takes over at once) and release their cluster IPs.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import copy
import dataclasses
import datetime as _dt
import inspect
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from control import carp_manager, flows, flowsync, observe, rpc
from control.health import HealthChecker

log = logging.getLogger("pydp.control")

DEFAULT_DB_FALLBACK = "/var/lib/pydp/config.db"
DEFAULT_METRICS = "127.0.0.1:9469"
MAX_FLOWS = 4096                  # per reply: keeps a reply well under the 1 MiB frame limit
DP_POLL_S = 0.5
STORE_POLL_S = 1.0
RESOLVE_POLL_S = 0.25
MAC_REFRESH_S = 30.0
NUD_VALID = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80     # REACHABLE, STALE, DELAY, PROBE, NOARP, PERMANENT
RESERVED_OPS = {"appliance", "close", "connect"}
HEALTH_SYNC_S = 0.5               # the health checks' targets follow the store at least this often
HEALTH_SOURCE_S = 5.0             # the probes' source address (the appliance's own on the TAP) is looked up again

EPILOG = """examples:
  pydp-control                                   # store /var/lib/pydp/config.db, socket /run/pydp/control.sock
  pydp-control --own-all --log-format text       # lab without CARP: own every enabled cluster IP
  pydp-control --carp-src 198.51.100.2           # CARP source address (default: the first IPv4 on the TAP)
  pydp-control --db /tmp/lab.db --socket /tmp/lab.sock --shm /dev/shm/pydp-lab --metrics 127.0.0.1:9470
  pydp-control --metrics ""                      # no metrics endpoint

Stop with SIGTERM or SIGINT: CARP masters bow out and release their cluster IPs, the socket is removed, the data
plane keeps forwarding on its last tables.
"""


# ---- logging ----

class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ms), level, event, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
        }
        fields = getattr(record, "fields", None)
        if fields is not None:
            out["event"] = record.msg
            out.update(fields)
        else:
            out["event"] = "log"
            out["logger"] = record.name
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """ts level event key=value ..."""

    def format(self, record: logging.LogRecord) -> str:
        ts = _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(timespec="milliseconds")
        ts = ts.replace("+00:00", "Z")
        fields = getattr(record, "fields", None)
        if fields is not None:
            parts = [ts, record.levelname.lower(), record.msg]
            for k, v in fields.items():
                v = v if isinstance(v, str) and v and " " not in v and "=" not in v else json.dumps(v, default=str)
                parts.append(f"{k}={v}")
            text = " ".join(parts)
        else:
            text = f"{ts} {record.levelname.lower()} {record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def event(name: str, level: int = logging.INFO, /, **fields) -> None:
    """A structured log line: the event name and its fields."""
    log.log(level, name, extra={"fields": fields})


def setup_logging(fmt: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


# ---- the region, shared by the loop, the worker thread and the metrics thread ----

class RegionHolder:
    """The attached region. use() lends it out; replace() swaps in another one, and the old mapping is closed
    only once nobody uses it any more (closing unmaps it: a reader must never see that)."""

    def __init__(self):
        self._cv = threading.Lock()
        self._region = None
        self._users = 0
        self._retired: list = []

    @contextlib.contextmanager
    def use(self):
        with self._cv:
            region = self._region
            self._users += 1
        try:
            yield region
        finally:
            with self._cv:
                self._users -= 1
                if self._users == 0:
                    self._close_retired()

    def _close_retired(self) -> None:
        for r in self._retired:
            with contextlib.suppress(Exception):
                r.close()
        self._retired.clear()

    def replace(self, new) -> None:
        with self._cv:
            if self._region is not None:
                self._retired.append(self._region)
            self._region = new
            if self._users == 0:
                self._close_retired()

    @property
    def current(self):
        return self._region


# ---- MAC resolution ----

def lookup_neighbour(ip: str) -> str | None:
    """The MAC of ip in the kernel's neighbour table (any interface), if the entry is usable."""
    from pyroute2 import IPRoute

    addr = ipaddress.ip_address(ip)
    with IPRoute() as ipr:
        family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
        for msg in ipr.get_neighbours(family=family, dst=str(addr)):
            lladdr = msg.get("NDA_LLADDR") if hasattr(msg, "get") else None
            if lladdr is None and hasattr(msg, "get_attr"):
                lladdr = msg.get_attr("NDA_LLADDR")
            dst = msg.get("NDA_DST") if hasattr(msg, "get") else None
            if dst is not None and ipaddress.ip_address(dst) != addr:
                continue
            state = msg["state"] if "state" in msg else 0
            if lladdr and lladdr != "00:00:00:00:00:00" and state & NUD_VALID:
                return lladdr.lower()
    return None


def provoke_neighbour(ip: str) -> None:
    """Make the kernel resolve ip: a zero-length UDP datagram to its discard port (9) starts ARP or ND."""
    addr = ipaddress.ip_address(ip)
    fam = socket.AF_INET if addr.version == 4 else socket.AF_INET6
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        with contextlib.suppress(OSError):
            s.sendto(b"", (str(addr), 9))


# ---- the daemon ----

class Daemon:
    def __init__(self, *, db: str, socket_path: str, shm: str | None, metrics: tuple[str, int] | None,
                 own_all: bool = False, store_factory=None, carp_src: str | None = None,
                 carp_src6: str | None = None):
        self.db = db
        self.socket_path = socket_path
        self.shm = shm
        self.metrics_addr = metrics
        self.own_all = own_all
        self.store_factory = store_factory
        self.started = time.time()
        self.worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pydp-store")
        self.readers = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="pydp-read")
        self.holder = RegionHolder()
        self.store = None
        self.store_mod = None
        self.allowed_ops: set[str] = set()
        self.mutating: set[str] = set()
        self.cfg = None                       # the store's config at the last read (ApplianceConfig)
        self.revision = None                  # its revision
        self.applied_revision = None          # the revision last applied to the attached data plane
        self.applied_gen = None
        self.last_apply: dict = {}
        self.failed: tuple | None = None      # (revision, monotonic time) of the last failed apply
        self.dp_identity = None               # (inode, pid, created_ms) of the attached region
        self.dp_alive = False
        self.macs: dict[str, str] = {}        # edge IP -> MAC resolved here (never written to the store)
        self.unresolved: dict[str, list] = {}  # edge IP -> [next attempt (monotonic), back-off seconds]
        self.rpc_server: rpc.Server | None = None
        self.metrics_server = None
        self.stop_event: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.apply_count = 0
        # ownership: the CARP hooks (loop) and the applies (worker thread) write the flags under one lock
        self.own_lock = threading.Lock()
        self.carp_owned: set[str] = set()     # clusters whose CARP instance is MASTER
        self.slots: dict[str, int] = {}       # cluster name -> slot in the data plane, as of the last apply
        self.carp_src = carp_src
        self.carp_src6 = carp_src6
        self.carp = carp_manager.CarpManager(set_owned=self.set_owned, interface=self.carp_interface,
                                             health=self.carp_health, event=event, carp_src=carp_src,
                                             carp_src6=carp_src6)
        self.carp.enabled = not own_all
        # health checks: the checker runs on the loop; the map below is read by applies (worker thread) and by
        # metrics scrapes, under health_lock. An edge not in `health` (not decided yet) counts as up.
        self.checker: HealthChecker | None = None
        self.health_lock = threading.Lock()
        self.health: dict[tuple[str, str], bool] = {}
        self.health_transitions: dict[tuple[str, str], int] = {}
        self.health_targets: dict = {}        # (cluster, edge) -> (ip, HealthConfig) last given to the checker
        self.health_source: list[str] = []
        self.health_wake: asyncio.Event | None = None
        # flow sync ([sync]): follows ownership from the region's flags itself (CARP, --own-all and standalone alike)
        self.flowsync = flowsync.FlowSync(holder=self.holder, config=lambda: self.cfg, run_worker=self.run_worker,
                                          event=event, alive=lambda: self.dp_alive)
        # >>> flow-table management: occupancy alarm and drain timeouts (control.flows), checked on the worker thread
        self.flow_monitor = flows.TableMonitor(event)
        self.drains = flows.DrainTracker(event)
        self.flow_monitor_identity = None
        # <<< flow-table management

    # ---- worker thread: the store and every write to the region ----
    def _open_store(self) -> None:
        from control import store as store_mod

        self.store_mod = store_mod
        factory = self.store_factory or store_mod.Store
        self.store = factory(self.db)
        mutating = set(getattr(store_mod, "MUTATING", ()))
        read_only = set(getattr(store_mod, "READ_ONLY", ()))
        if not mutating and not read_only:      # the store did not declare them: the documented set
            mutating = {"add_cluster", "edit_cluster", "delete_cluster", "duplicate_cluster", "set_cluster_enabled",
                        "add_edge", "edit_edge", "remove_edge", "set_edge_state", "import_text"}
            read_only = {"list_clusters", "get_cluster", "export_text", "revision"}
        ops = (mutating | read_only) - RESERVED_OPS
        self.allowed_ops = {op for op in ops if not op.startswith("_") and callable(getattr(self.store, op, None))}
        self.mutating = mutating & self.allowed_ops
        self.cfg = self.store.appliance()
        self.revision = self.store.revision()

    def _reload_store(self) -> None:
        self.revision = self.store.revision()
        self.cfg = self.store.appliance()
        self._wake_health()

    def _store_op(self, op: str, args: dict) -> tuple[Any, list[str]]:
        fn = getattr(self.store, op)
        try:
            inspect.signature(fn).bind(**args)
        except TypeError as exc:
            raise rpc.RpcError("BadRequest", f"op {op!r}: {exc}") from None
        try:
            result = fn(**args)
        except self.store_mod.NotFound as exc:
            raise rpc.RpcError("NotFound", str(exc)) from None
        except self.store_mod.StoreError as exc:
            raise rpc.RpcError("StoreError", str(exc)) from None
        except (TypeError, ValueError, KeyError) as exc:
            raise rpc.RpcError("BadRequest", f"op {op!r}: {type(exc).__name__}: {exc}") from None
        warnings: list[str] = []
        if op in self.mutating:
            names = {k: v for k, v in args.items() if k in ("name", "cluster", "edge", "new_name", "state",
                                                                 "enabled") and isinstance(v, (str, bool))}
            for k in ("cluster", "edge"):          # add_cluster / add_edge pass the new item itself
                if isinstance(args.get(k), dict) and isinstance(args[k].get("name"), str):
                    names[k] = args[k]["name"]
            event("config_changed", op=op, via="rpc", revision=self.store.revision(), **names)
            try:
                info = self._apply(f"rpc {op}")
            except Exception as exc:  # the store committed; the data plane did not follow
                log.exception("apply after %s failed", op)
                info = {"applied": False, "error": f"{type(exc).__name__}: {exc}"}
            if not info.get("applied"):
                warnings.append("saved in the store but not applied to the data plane: "
                                + (info.get("error") or info.get("reason") or "unknown reason"))
            warnings.extend(info.get("warnings", []))
        return result, warnings

    def _apply(self, reason: str) -> dict:
        """Reads the store and publishes its config to the attached data plane (worker thread only)."""
        from pydp.apply import ApplyError, apply_config
        from pydp.shm import ShmError

        try:
            self._reload_store()
        except Exception as exc:  # e.g. a CARP passphrase file that cannot be read any more
            self.failed = (self.revision, time.monotonic())
            event("apply_failed", logging.ERROR, revision=self.revision, reason=reason,
                  error=f"cannot read the store: {exc}")
            return {"applied": False, "error": f"cannot read the store: {exc}"}
        rev = self.revision
        with self.holder.use() as region:
            if region is None or not self.dp_alive:
                return {"applied": False, "reason": "no data plane is running; the config is applied when one "
                                                    "starts"}
            cfg = self._with_macs(self.cfg, region)
            before = observe.clusters(region)
            before_active = {name: c["active"] for name, c in before.items()}
            try:
                result = apply_config(region, cfg, edge_health=self._edge_health())
            except (ApplyError, ShmError) as exc:
                self.failed = (rev, time.monotonic())
                event("apply_failed", logging.ERROR, revision=rev, reason=reason, error=str(exc))
                return {"applied": False, "error": str(exc)}
            ownership = self._set_ownership(region, cfg, result.slots)
            self.apply_count += 1
            self.applied_revision = rev
            self.applied_gen = result.generation
            self.failed = None
            for w in result.warnings:
                event("apply_warning", logging.WARNING, message=w)
            event("config_applied", revision=rev, generation=result.generation, reason=reason,
                  clusters=sorted(result.slots), rebuilt=result.rebuilt)
            for name, active in ownership.items():
                old = before_active.get(name)
                source = self._ownership_source(cfg, name)
                if (old is None or old != active) and source != "carp":     # CARP logs its own transitions
                    event("carp_transition", cluster=name, state="master" if active else "backup",
                          previous=None if old is None else ("master" if old else "backup"), source=source)
            self._log_edge_changes(self._edge_states(before), self._edge_states(observe.clusters(region)))
            self.last_apply = {"time": time.time(), "revision": rev, "generation": result.generation,
                               "rebuilt": result.rebuilt, "reason": reason, "warnings": result.warnings}
            return {"applied": True, "generation": result.generation, "rebuilt": result.rebuilt,
                    "warnings": result.warnings}

    def _ownership_source(self, cfg, name: str) -> str:
        for cl in cfg.clusters:
            if cl.name == name:
                if not cl.enabled:
                    return "disabled"
                if cl.mode == "standalone":
                    return "standalone"
                return "own-all" if self.own_all else "carp"
        return "removed"

    def _wants_active(self, cl) -> bool:
        return bool(cl.enabled and (self.own_all or cl.mode == "standalone" or cl.name in self.carp_owned))

    def _set_ownership(self, region, cfg, slots: dict) -> dict:
        from pydp._ffi import lib

        with self.own_lock:
            want = [False] * lib.PYDP_MAX_CLUSTERS
            out = {}
            for cl in cfg.clusters:
                active = self._wants_active(cl)
                want[slots[cl.name]] = active
                out[cl.name] = active
            for i, active in enumerate(want):
                if region.is_active(i) != active:
                    region.set_active(i, active)
            self.slots = dict(slots)
        return out

    # ---- CARP's side (called on the loop by control.carp_manager) ----
    def set_owned(self, name: str, owned: bool) -> None:
        """CARP took (or released) a cluster IP: its ownership flag follows at once (the next apply keeps it)."""
        with self.own_lock:
            if owned:
                self.carp_owned.add(name)
            else:
                self.carp_owned.discard(name)
            cfg = self.cfg
            cl = next((c for c in cfg.clusters if c.name == name), None) if cfg is not None else None
            slot = self.slots.get(name)
            active = bool(owned and cl is not None and self._wants_active(cl))
            with self.holder.use() as region:
                if region is not None and slot is not None and region.is_active(slot) != active:
                    region.set_active(slot, active)

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

    def _with_macs(self, cfg, region):
        """A copy of cfg with the MACs resolved here filled in for l2 edges configured without one."""
        need = [(cl, e) for cl in cfg.clusters if cl.dsr == "l2" for e in cl.edges if not e.mac]
        if not need:
            return cfg
        in_region = observe.clusters(region)
        out = copy.deepcopy(cfg)
        by_name = {cl.name: cl for cl in out.clusters}
        now = time.monotonic()
        for cl, e in need:
            ip = str(e.ip)
            mac = self.macs.get(ip)
            if mac is None:
                # the data plane may still hold the MAC a previous daemon resolved: keep it, so a daemon restart
                # changes nothing (no edge goes down, no table is rebuilt, no flow moves)
                prev = in_region.get(cl.name, {}).get("edges", {}).get(e.name)
                if prev and prev["ip"] == ip and prev["mac"]:
                    mac = prev["mac"]
                    self.macs[ip] = mac
            if mac is None:
                try:
                    mac = lookup_neighbour(ip)
                except Exception as exc:
                    log.debug("neighbour lookup of %s failed: %s", ip, exc)
                if mac is not None:
                    self.macs[ip] = mac
                    event("mac_resolved", cluster=cl.name, edge=e.name, ip=ip, mac=mac)
            if mac is None:
                if ip not in self.unresolved:
                    self.unresolved[ip] = [now, 0.5]
                continue
            for oe in by_name[cl.name].edges:
                if oe.name == e.name:
                    oe.mac = mac
        return out

    @staticmethod
    def _edge_states(clusters: dict) -> dict:
        return {(cname, ename): e["state"] for cname, c in clusters.items() for ename, e in c["edges"].items()}

    def _log_edge_changes(self, before: dict, after: dict) -> None:
        """One event per edge whose state in the data plane changed with this apply."""
        for key, state in after.items():
            old = before.get(key)
            if old != state:
                level = logging.WARNING if state == "down" else logging.INFO
                event("edge_" + state if state != "up" else "edge_up", level, cluster=key[0], edge=key[1],
                      state=state, previous=old)
        for key in set(before) - set(after):
            event("edge_removed", cluster=key[0], edge=key[1], previous=before[key])

    def _poll_store(self) -> None:
        rev = self.store.revision()
        if rev != self.revision:
            event("store_changed", revision=rev, previous=self.revision)
            self.revision = rev
            try:
                self.cfg = self.store.appliance()
                self._wake_health()
            except Exception as exc:
                self.failed = (rev, time.monotonic())
                event("apply_failed", logging.ERROR, revision=rev, reason="store changed by another writer",
                      error=f"cannot read the store: {exc}")
                return
        if self.holder.current is None or not self.dp_alive:
            return
        if self.applied_revision != self.revision:
            if self.failed and self.failed[0] == self.revision and time.monotonic() - self.failed[1] < 10:
                return                          # a failed apply is retried every 10 s, not every second
            self._apply("store changed by another writer" if self.applied_revision is not None
                        else "data plane attached")

    # ---- health checks ----
    def _edge_health(self) -> dict:
        """{(cluster, edge): up} of the edges decided so far (any thread): apply_config makes the False ones DOWN."""
        with self.health_lock:
            return dict(self.health)

    def _wake_health(self) -> None:
        """The store's config was read again (any thread): the health checks' targets follow at once."""
        loop, wake = self.loop, self.health_wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):     # the loop is closing
                loop.call_soon_threadsafe(wake.set)

    @staticmethod
    def _health_targets_of(cfg) -> dict:
        """Every edge of every enabled cluster (draining and disabled ones too), with its cluster's settings."""
        if cfg is None:
            return {}
        return {(cl.name, e.name): (str(e.ip), dataclasses.replace(cl.health))
                for cl in cfg.clusters if cl.enabled for e in cl.edges}

    def _sync_health(self) -> None:
        """Gives the checker the store's edges when they changed (loop). Unchanged edges keep their state."""
        if self.checker is None:
            return
        targets = self._health_targets_of(self.cfg)
        if targets == self.health_targets:
            return
        self.checker.set_targets(targets)
        with self.health_lock:
            self.health_targets = targets
            for key in [k for k in self.health if k not in targets]:
                del self.health[key]
            for key in [k for k in self.health_transitions if k not in targets]:
                del self.health_transitions[key]

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
        """The checker decided that an edge is up or down (loop): record, log, count, and apply if it matters."""
        key = (cluster, edge)
        with self.health_lock:
            if key not in self.health_targets:
                return
            before = self.health.get(key, True)         # unknown counts as up
            self.health[key] = up
            self.health_transitions[key] = self.health_transitions.get(key, 0) + 1
        event("edge_health", logging.INFO if up else logging.WARNING, cluster=cluster, edge=edge, up=up,
              reason=reason, ip=self.health_targets[key][0])
        if before != up:        # only this cluster's table changes; flows on the other edges stay
            await self.run_worker(self._apply_logged, f"health: edge {edge} of cluster {cluster} "
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

    def _health_row(self, key, states: dict) -> dict:
        """The health of one edge for status: up / down / unknown (not decided yet) / unchecked (not checked)."""
        h = states.get(key)
        if h is None:
            return {"health": "unchecked", "health_detail": None, "health_since": None, "health_check": None}
        since = h.get("since_change_s")
        return {"health": h["state"], "health_detail": h.get("last_detail") or None,
                "health_since": None if since is None else round(time.time() - since, 3),
                "health_check": h}

    # >>> flow-table management
    def _check_flows(self) -> None:
        """Every FLOW_CHECK_S (worker thread): the tables' occupancy alarm, then the drain timeouts."""
        with self.holder.use() as region:
            if region is None or not self.dp_alive:
                self.drains.check(None, self.cfg, {})
                return
            if self.flow_monitor_identity != self.dp_identity:      # a new data plane: new tables, new counters
                self.flow_monitor.reset()
                self.flow_monitor_identity = self.dp_identity
            self.flow_monitor.check(self.flow_monitor.rows(region))
            since = {(r["cluster"], r["edge"]): r["since"] for r in self.store.drain_times()}
            self.drains.check(region, self.cfg, since)

    async def watch_flows(self) -> None:
        while True:
            await asyncio.sleep(flows.FLOW_CHECK_S)
            try:
                await self.run_worker(self._check_flows)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("flow-table checks")

    def _flush(self, params: dict) -> dict:
        """The flush RPC (worker thread: the one writer of the region)."""
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
    # <<< flow-table management

    # ---- the loop's tasks ----
    async def run_worker(self, fn, *args):
        return await self.loop.run_in_executor(self.worker, fn, *args)

    def _check_dataplane(self, resume: bool = False) -> str | None:
        """Attaches, re-attaches or notes the data plane; returns why the config must be applied, or None.
        resume: the daemon is starting; clusters the data plane has as owned are kept so (_seed_resume)."""
        from pydp.shm import Region, ShmError

        path = self.shm
        try:
            ino = os.stat(path).st_ino
        except (FileNotFoundError, NotADirectoryError):
            ino = None
        region = self.holder.current
        now = observe.now_ms()
        if region is not None:
            same_file = ino == self.dp_identity[0]
            h = region.hdr
            identity_same = (int(h.dp_pid), int(h.created_ms)) == self.dp_identity[1:]
            alive = now - int(h.heartbeat_ms) <= observe.HEARTBEAT_STALE_MS
            if same_file and identity_same:
                if alive and not self.dp_alive:
                    self.dp_alive = True
                    event("dataplane_resumed", pid=int(h.dp_pid), path=path)
                    return "data plane resumed"
                if not alive and self.dp_alive:
                    self.dp_alive = False
                    event("dataplane_lost", logging.ERROR, pid=int(h.dp_pid), path=path,
                          heartbeat_age_ms=now - int(h.heartbeat_ms))
                return None
            # another region (or none) at the path: the data plane restarted or stopped
            if self.dp_alive and (ino is None or not alive):
                self.dp_alive = False
                event("dataplane_lost", logging.ERROR, pid=int(h.dp_pid), path=path,
                      reason="region removed" if ino is None else "region replaced")
        if ino is None:
            return None
        try:
            new = Region.attach(path)
        except ShmError as exc:
            log.debug("cannot attach %s yet: %s", path, exc)
            return None
        h = new.hdr
        ready = (int(h.generation) >= 1 and now - int(h.heartbeat_ms) <= observe.HEARTBEAT_STALE_MS
                 and (int(h.heartbeat_ms) > int(h.created_ms) or any(h.workers[w].online
                                                                      for w in range(h.nb_workers))))
        try:
            new_ino = os.fstat(new._shm.fd).st_ino
        except OSError:
            new_ino = None
        identity = (new_ino, int(h.dp_pid), int(h.created_ms))
        if not ready or (region is not None and identity == self.dp_identity):
            new.close()
            return None
        restarted = region is not None
        if resume and not restarted:
            self._seed_resume(new)
        self.holder.replace(new)
        self.dp_identity = identity
        self.dp_alive = True
        event("dataplane_restarted" if restarted else "dataplane_attached", pid=identity[1], path=path,
              workers=int(h.nb_workers), generation=int(h.generation))
        return "data plane restarted" if restarted else "data plane attached"

    def _seed_resume(self, region) -> None:
        """A data plane found running when the daemon starts: the previous pydp-control may have been killed while
        master. Clusters run by CARP whose ownership flag is still set stay owned through the first apply, and
        CARP resumes them as MASTER if their cluster IP is still on the TAP (control.carp_manager), so a restart
        of the control plane drops no packet."""
        if self.own_all or self.cfg is None or not self.carp.enabled:
            return
        try:
            found = observe.clusters(region)
        except Exception:
            log.exception("reading the ownership flags of the running data plane")
            return
        owned = {cl.name for cl in self.cfg.clusters if cl.enabled and cl.mode == "cluster"
                 and found.get(cl.name, {}).get("active")}
        if owned:
            with self.own_lock:
                self.carp_owned |= owned
            self.carp.resume = set(owned)

    def _watch_once(self, resume: bool = False) -> None:
        """One look at the data plane, and the apply it calls for (worker thread: no change slips between)."""
        try:
            why = self._check_dataplane(resume)
        except Exception:
            log.exception("data-plane watcher")
            return
        if why:
            self._apply_logged(why)

    async def watch_dataplane(self) -> None:
        while True:
            await asyncio.sleep(DP_POLL_S)
            await self.run_worker(self._watch_once)

    def _apply_logged(self, why: str) -> None:
        try:
            self._apply(why)
        except Exception:
            log.exception("apply (%s) failed", why)

    async def watch_store(self) -> None:
        while True:
            await asyncio.sleep(STORE_POLL_S)
            try:
                await self.run_worker(self._poll_store)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("store watcher")

    async def resolve_macs(self) -> None:
        last_refresh = time.monotonic()
        while True:
            await asyncio.sleep(RESOLVE_POLL_S)
            try:
                changed = False
                now = time.monotonic()
                wanted = self._unresolved_wanted()
                for ip in list(self.unresolved):
                    if ip not in wanted or ip in self.macs:
                        self.unresolved.pop(ip, None)
                for ip in wanted:
                    if ip in self.macs:
                        continue
                    due = self.unresolved.setdefault(ip, [now, 0.5])
                    if due[0] > now:
                        continue
                    mac = await self.loop.run_in_executor(self.readers, lookup_neighbour, ip)
                    if mac:
                        self.macs[ip] = mac
                        self.unresolved.pop(ip, None)
                        event("mac_resolved", ip=ip, mac=mac)
                        changed = True
                    else:
                        await self.loop.run_in_executor(self.readers, provoke_neighbour, ip)
                        due[0] = now + due[1]
                        due[1] = min(due[1] * 2, 30.0)
                if now - last_refresh >= MAC_REFRESH_S:
                    last_refresh = now
                    for ip in [ip for ip in list(self.macs) if ip in self._mac_edges()]:
                        mac = await self.loop.run_in_executor(self.readers, lookup_neighbour, ip)
                        if mac and mac != self.macs[ip]:
                            event("mac_changed", ip=ip, mac=mac, previous=self.macs[ip])
                            self.macs[ip] = mac
                            changed = True
                if changed:
                    await self.run_worker(self._apply_logged, "edge MAC resolved")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("MAC resolver")

    def _mac_edges(self) -> set[str]:
        cfg = self.cfg
        if cfg is None:
            return set()
        return {str(e.ip) for cl in cfg.clusters if cl.dsr == "l2" for e in cl.edges if not e.mac}

    def _unresolved_wanted(self) -> set[str]:
        return {ip for ip in self._mac_edges() if ip not in self.macs}

    # ---- RPC ----
    async def handle(self, method: str, params: dict) -> Any:
        if method == "ping":
            return {"daemon": "pydp-control", "protocol": rpc.PROTOCOL_VERSION, "pid": os.getpid()}
        if method == "store":
            return await self._rpc_store(params)
        if method == "status":
            _only(params, set())
            states = self.checker.states() if self.checker is not None else {}     # on the loop: it owns them
            return await self.loop.run_in_executor(self.readers, self.status, states)
        if method == "stats":
            _only(params, set())
            return await self.loop.run_in_executor(self.readers, self.stats)
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
            return await self.loop.run_in_executor(self.readers, self.flows, params.get("cluster"),
                                                   params.get("edge"), params.get("client"), limit)
        if method == "flush":
            _only(params, {"all", "cluster", "edge"})
            for k in ("cluster", "edge"):
                if params.get(k) is not None and not isinstance(params[k], str):
                    raise rpc.RpcError("BadRequest", f"flush: {k} must be a string")
            if not isinstance(params.get("all", False), bool):
                raise rpc.RpcError("BadRequest", "flush: all must be true or false")
            return await self.run_worker(self._flush, params)
        raise rpc.RpcError("BadRequest", f"unknown method {method!r}")

    async def _rpc_store(self, params: dict) -> Any:
        _only(params, {"op", "args"})
        op = params.get("op")
        if not isinstance(op, str) or op not in self.allowed_ops:
            shown = op[:64] if isinstance(op, str) else type(op).__name__
            raise rpc.RpcError("BadRequest", f"store op {shown!r} is not allowed; allowed: "
                                             f"{', '.join(sorted(self.allowed_ops))}")
        args = params.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise rpc.RpcError("BadRequest", "store: args must be a map of keyword arguments")
        result, warnings = await self.run_worker(self._store_op, op, args)
        return rpc.Reply(result, warnings)

    def status(self, health_states: dict | None = None) -> dict:
        cfg = self.cfg
        health_states = health_states or {}
        with self.holder.use() as region:
            dp = None
            shm_clusters: dict = {}
            st = None
            if region is not None:
                dp = observe.dataplane_info(region)
                st = observe.stats(region)
                shm_clusters = st["clusters"]
        clusters = []
        names = [cl.name for cl in cfg.clusters] if cfg else []
        names += [n for n in shm_clusters if n not in names]
        conf = {cl.name: cl for cl in cfg.clusters} if cfg else {}
        for name in names:
            cl = conf.get(name)
            sc = shm_clusters.get(name)
            active = bool(sc and sc["active"] and self.dp_alive)
            cs = self.carp.status(name) if cl is not None and cl.enabled and cl.mode == "cluster" else None
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
                "dsr": cl.dsr if cl else sc["dsr"],
                "in_store": cl is not None,
                "applied": sc is not None,
                "active": active,
                "carp": {"local": local, "peer": carp_manager.peer_text(cs) if cs else "unknown",
                         "source": self._ownership_source(cfg, name) if cfg else "unknown",
                         "vhid": cl.carp.vhid if cl else None},
                "packets": sc["packets"] if sc else 0,
                "bytes": sc["bytes"] if sc else 0,
                "edges": [],
            }
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
                elif self.macs.get(ip):
                    mac, mac_source = self.macs[ip], "resolved"
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
                    **self._health_row((name, ename), health_states if ce is not None and cl.enabled else {}),
                    "packets": se["packets"] if se else 0, "bytes": se["bytes"] if se else 0,
                    "new_flows": se["new_flows"] if se else 0,
                    "drain": self.drains.row(name, ename) if ce is not None and ce.state == "draining" else None,
                })
            clusters.append(row)
        return {
            "daemon": {"running": True, "pid": os.getpid(), "started": self.started, "socket": self.socket_path,
                       "db": self.db, "shm": self.shm, "own_all": self.own_all, "carp_src": self.carp_src,
                       "carp_src6": self.carp_src6,
                       "metrics": f"{self.metrics_addr[0]}:{self.metrics_addr[1]}" if self.metrics_addr else None,
                       "revision": self.revision, "applied_revision": self.applied_revision,
                       "last_apply": self.last_apply, "applies": self.apply_count,
                       "rpc_refused": self.rpc_server.refused if self.rpc_server else 0},
            "carp_known": True,
            "dataplane": dp if dp is not None else {"running": False, "path": self.shm},
            "dataplane_up": self.dp_alive,
            "clusters": clusters,
            "flow_table": self.flow_monitor.annotate(st["flow_table"]) if st else None,
            "flowsync": self.flowsync.status(),
        }

    def stats(self) -> dict:
        with self.holder.use() as region:
            if region is None:
                raise rpc.RpcError("Unavailable", f"no data plane attached (waiting for {self.shm})")
            out = observe.stats(region, self.cfg)
        out["dataplane"]["up"] = self.dp_alive
        return out

    def flows(self, cluster, edge, client, limit) -> dict:
        with self.holder.use() as region:
            if region is None:
                raise rpc.RpcError("Unavailable", f"no data plane attached (waiting for {self.shm})")
            try:
                rows, total = observe.find_flows(region, cluster=cluster, edge=edge, client=client, limit=limit)
            except ValueError as exc:
                raise rpc.RpcError("BadRequest", str(exc)) from None
        return {"flows": rows, "matched": total, "limit": limit}

    # ---- metrics ----
    def _metrics_extra(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        g = GaugeMetricFamily("pydp_control_applied_revision", "store revision last applied to the data plane")
        g.add_metric([], self.applied_revision if self.applied_revision is not None else -1)
        yield g
        u = GaugeMetricFamily("pydp_edge_mac_unresolved", "edges without a MAC yet (they get no traffic)")
        u.add_metric([], len(self._unresolved_wanted()))
        yield u
        r = CounterMetricFamily("pydp_rpc_refused", "RPC connections refused: the peer was not root")
        r.add_metric([], self.rpc_server.refused if self.rpc_server else 0)
        yield r
        yield from self._health_metrics()
        yield from self._carp_metrics()
        yield from self.flowsync.metrics()
        from control import metrics

        yield from metrics.flow_management(self.flow_monitor.snapshot(), self.drains)

    def _health_metrics(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        g = GaugeMetricFamily("pydp_edge_health", "the edge's health check: 1 up, 0 down, -1 unknown (not decided "
                              "yet: counts as up)", labels=["cluster", "edge"])
        t = CounterMetricFamily("pydp_edge_health_transitions", "changes of the edge's health (the first "
                                "decision included)", labels=["cluster", "edge"])
        with self.health_lock:
            keys = list(self.health_targets)
            health = dict(self.health)
            trans = dict(self.health_transitions)
        for key in keys:
            up = health.get(key)
            g.add_metric(list(key), -1 if up is None else 1 if up else 0)
            t.add_metric(list(key), trans.get(key, 0))
        yield from (g, t)

    def _carp_metrics(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        state = GaugeMetricFamily("pydp_carp_state", "1 for the CARP state of this appliance for the cluster "
                                  "(inactive: no instance runs, see pydpctl status)", labels=["cluster", "state"])
        demote = GaugeMetricFamily("pydp_carp_demote", "this appliance's CARP demotion for the cluster",
                                   labels=["cluster"])
        drops = CounterMetricFamily("pydp_carp_drops", "CARP advertisements dropped, by reason",
                                    labels=["cluster", "reason"])
        trans = CounterMetricFamily("pydp_carp_transitions", "CARP state changes", labels=["cluster"])
        sent = CounterMetricFamily("pydp_carp_adverts_sent", "CARP advertisements sent", labels=["cluster"])
        heard = CounterMetricFamily("pydp_carp_adverts_received", "CARP advertisements accepted",
                                    labels=["cluster"])
        for name, s in self.carp.metrics():
            for st in carp_manager.STATES + ("inactive",):
                state.add_metric([name, st], 1 if s["state"] == st else 0)
            demote.add_metric([name], s["demote"] or 0)
            for reason, n in s["drops"].items():
                drops.add_metric([name, reason], n)
            trans.add_metric([name], s["transitions"])
            sent.add_metric([name], s["adverts_sent"])
            heard.add_metric([name], s["adverts_received"])
        yield from (state, demote, drops, trans, sent, heard)

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
        _make_socket_dir(self.socket_path)
        try:
            self.rpc_server = await rpc.serve(self.socket_path, self.handle,
                                              methods={"ping", "store", "status", "stats", "flows", "flush"})
        except (OSError, RuntimeError) as exc:
            event("daemon_failed", logging.ERROR, error=f"cannot listen on {self.socket_path}: {exc}")
            return 1
        # queued on the worker thread before any request can be: a running data plane is attached and gets the
        # config before the first change is taken
        first = self.loop.run_in_executor(self.worker, self._watch_once, True)
        if self.metrics_addr is not None:
            from control import metrics

            try:
                self.metrics_server = metrics.start(self.metrics_addr,
                                                    metrics.Collector(self._metrics_region(), self._metrics_extra))
            except OSError as exc:
                await self.rpc_server.close()
                with contextlib.suppress(Exception):
                    await first
                event("daemon_failed", logging.ERROR, error=f"cannot serve metrics on "
                      f"{self.metrics_addr[0]}:{self.metrics_addr[1]}: {exc}")
                return 1
        for s in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(s, self.stop_event.set)
        event("daemon_started", pid=os.getpid(), socket=self.socket_path, db=self.db, shm=self.shm,
              metrics=f"{self.metrics_addr[0]}:{self.metrics_addr[1]}" if self.metrics_addr else None,
              own_all=self.own_all, carp_src=self.carp_src, carp_src6=self.carp_src6, revision=self.revision,
              ops=sorted(self.allowed_ops))
        await first
        self.health_wake = asyncio.Event()
        self.checker = HealthChecker(self._on_health)
        tasks = [asyncio.create_task(c) for c in (self.watch_dataplane(), self.watch_store(), self.resolve_macs(),
                                                  self.watch_health(), self.flowsync.run(),
                                                  self.watch_flows())]
        carp_stop = asyncio.Event()
        carp_task = asyncio.create_task(self.carp.run(lambda: self.cfg, carp_stop))
        try:
            await self.stop_event.wait()
        finally:
            event("daemon_stopping", reason="signal")
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
            self.worker.shutdown(wait=True)     # an apply under way completes
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
    env = os.environ.get("PYDP_DB")
    if env:
        return env
    try:
        from control import store
    except ImportError:
        return DEFAULT_DB_FALLBACK
    for name in ("DEFAULT_DB", "DEFAULT_PATH", "DEFAULT_DB_PATH"):
        v = getattr(store, name, None)
        if isinstance(v, str):
            return v
    return DEFAULT_DB_FALLBACK


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="pydp-control", description=__doc__.splitlines()[0], epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
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
    ap.add_argument("--log-format", choices=("json", "text"), default="json",
                    help="json (default): one object per line; text: key=value")
    ap.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    args = ap.parse_args(argv)
    from control.metrics import parse_address

    try:
        args.metrics_addr = parse_address(args.metrics)
    except ValueError as exc:
        ap.error(f"--metrics: {exc}")
    if args.db is None:
        args.db = default_db()
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
    setup_logging(args.log_format, getattr(logging, args.log_level.upper()))
    if args.log_level == "info":
        # the driver's own lines repeat the daemon's carp_* events; its warnings (send errors, split brain) stay
        logging.getLogger("pydp.carp").setLevel(logging.WARNING)
    daemon = Daemon(db=args.db, socket_path=args.socket, shm=args.shm, metrics=args.metrics_addr,
                    own_all=args.own_all, carp_src=args.carp_src, carp_src6=args.carp_src6)
    try:
        return asyncio.run(daemon.run())
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
