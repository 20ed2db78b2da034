"""Flow-table management over the data plane's shared memory: flush, the occupancy alarm, the drain timeout.

The workers own their flow tables: Python never writes one. A flush is a command pushed onto each worker's ring
(struct pydp_cmd_ring, single producer): the worker clears the matching flows between two bursts and adds how many
it cleared to its flow_flushed counter, which is how the caller learns the figure. Producers are serialized by the
region's file lock (the lock config writers take), so pydp-control and a pydpctl without daemon never push at once.

    from control import flows
    flows.flush(region, cluster="web", edge="e1")     # {"scope": ..., "workers": [{"worker", "cleared"}], ...}

TableMonitor (pydp-control, every FLOW_CHECK_S) raises the occupancy alarm (flows not expired / capacity) with
hysteresis and logs growing evictions at a bounded rate; DrainTracker moves the flows of an edge drained longer than
its cluster's drain_timeout by flushing them (see docs/flows.md for why a flush and not a re-hash).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from typing import Callable

from control import observe
from pydp._ffi import ffi, lib

__all__ = ["FlushError", "flush", "TableMonitor", "DrainTracker", "drain_row", "ALARM_ON", "ALARM_OFF",
           "FLOW_CHECK_S", "EVICTION_LOG_S"]

ALARM_ON = 0.90              # flows not expired / capacity of a worker's table above which the alarm is raised ...
ALARM_OFF = 0.85             # ... and below which it clears (hysteresis: no alarm flapping around 90%)
FLOW_CHECK_S = 1.0           # pydp-control looks at the tables (alarm, drains) this often
EVICTION_LOG_S = 60.0        # at most one "flow_evictions" event per worker per this many seconds
FLUSH_TIMEOUT_S = 5.0        # a worker takes a command within a poll loop iteration; this is for a stuck one
RING_RETRY_S = 1.0           # a full command ring is retried this long before giving up

Event = Callable[..., None]   # event(name, level, **fields), as control.logs.event


class FlushError(Exception):
    """The flush was refused (kind "BadRequest": unknown cluster or edge) or could not be done (kind
    "Unavailable": no data plane, a full ring, a worker that does not answer); message says which."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


@contextlib.contextmanager
def _producer_lock(region):
    fcntl.flock(region._shm.fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(region._shm.fd, fcntl.LOCK_UN)


def _scope(region, all_flows: bool, cluster: str | None, edge: str | None) -> tuple[int, int, int, dict]:
    """(op, arg0, arg1, scope) of a flush, the names resolved to slots of the config the workers use now."""
    if all_flows:
        if cluster is not None or edge is not None:
            raise FlushError("BadRequest", "flush: --all cannot be combined with --cluster or --edge")
        return lib.PYDP_CMD_FLUSH_ALL, 0, 0, {"all": True, "cluster": None, "edge": None}
    if cluster is None:
        raise FlushError("BadRequest", "flush: say what to flush: --all, or --cluster NAME [--edge NAME]")
    cl = observe.clusters(region)
    if cluster not in cl:
        raise FlushError("BadRequest", f"no cluster {cluster!r} in the data plane (clusters: "
                                       f"{', '.join(sorted(cl)) or 'none'})")
    c = cl[cluster]
    if edge is None:
        return lib.PYDP_CMD_FLUSH_CLUSTER, c["slot"], 0, {"all": False, "cluster": cluster, "edge": None}
    if edge not in c["edges"]:
        raise FlushError("BadRequest", f"no edge {edge!r} in cluster {cluster!r} (edges: "
                                       f"{', '.join(sorted(c['edges'])) or 'none'})")
    return (lib.PYDP_CMD_FLUSH_EDGE, c["slot"], c["edges"][edge]["slot"],
            {"all": False, "cluster": cluster, "edge": edge})


def _push(region, worker: int, cmd, deadline: float) -> int:
    """Pushes cmd onto the worker's ring, retrying while it is full; returns the ring position after it."""
    ring = lib.pydp_shm_cmds(region._shm, worker)
    while lib.pydp_cmd_push(region._shm, worker, cmd) != 0:
        if time.monotonic() > deadline:
            raise FlushError("Unavailable", f"worker {worker}'s command ring stayed full for {RING_RETRY_S:g} s "
                                            "(the worker is not taking commands); nothing was pushed to it")
        time.sleep(0.01)
    return int(ring.head)


def flush(region, *, all_flows: bool = False, cluster: str | None = None, edge: str | None = None,
          timeout: float = FLUSH_TIMEOUT_S) -> dict:
    """Clears the flows of every worker's table: all of them, a cluster's, or one edge's of a cluster. Waits until
    each worker has done it and returns {"scope", "workers": [{"worker", "cleared"}], "cleared", "generation"}.
    Nothing else changes: no config is published, no counter but flow_flushed and the tables' live moves."""
    if not observe.dataplane_alive(region):
        age = observe.now_ms() - int(region.hdr.heartbeat_ms)
        raise FlushError("Unavailable", f"the data plane is not running (heartbeat {age / 1000:.1f} s old)")
    op, arg0, arg1, scope = _scope(region, all_flows, cluster, edge)
    cmd = ffi.new("struct pydp_cmd *")
    cmd.op, cmd.arg0, cmd.arg1 = op, arg0, arg1
    online = [w for w in range(region.nb_workers) if region.hdr.workers[w].online]
    if not online:
        raise FlushError("Unavailable", "no worker of the data plane is online")
    stats = region.worker_stats()
    with _producer_lock(region):
        before = {w: int(stats["flow_flushed"][w]) for w in online}
        deadline = time.monotonic() + RING_RETRY_S
        targets = {w: _push(region, w, cmd, deadline) for w in online}
        deadline = time.monotonic() + timeout
        waiting = set(online)
        while waiting:
            for w in list(waiting):
                tail = int(lib.pydp_shm_cmds(region._shm, w).tail)
                if ((tail - targets[w]) & 0xFFFFFFFF) < 0x80000000:     # tail has reached our command
                    waiting.discard(w)
            if not waiting:
                break
            if time.monotonic() > deadline:
                raise FlushError("Unavailable", f"worker(s) {', '.join(map(str, sorted(waiting)))} did not take the "
                                                f"flush within {timeout:g} s (the others did)")
            time.sleep(0.001)
        rows = [{"worker": w, "cleared": int(stats["flow_flushed"][w]) - before[w]} for w in online]
    return {"scope": scope, "workers": rows, "cleared": sum(r["cleared"] for r in rows),
            "generation": int(region.hdr.generation)}


class TableMonitor:
    """The occupancy alarm of each worker's flow table, and its eviction rate. check() is fed
    observe.flow_table_stats() rows; it logs one WARNING event when a table passes ALARM_ON, one INFO event when
    it falls below ALARM_OFF, and at most one "flow_evictions" WARNING per worker per EVICTION_LOG_S while
    evictions grow."""

    def __init__(self, event: Event, clock: Callable[[], float] = time.monotonic):
        self.event = event
        self.clock = clock
        self.state: dict[int, dict] = {}      # worker -> alarm, since, evicted, at, rate, logged_at, logged_evicted

    def reset(self) -> None:
        """A new data plane: its tables start empty, its counters at zero."""
        self.state.clear()

    @staticmethod
    def rows(region) -> list[dict]:
        """observe.flow_table_stats() rows with "active": the flows not expired. The alarm uses those: an expired
        flow is reclaimed by the next insert without an eviction, so a table left full of expired flows after a
        flood is not under pressure. The scan runs only when the worker's live counter is above ALARM_OFF."""
        rows = observe.flow_table_stats(region)["workers"]
        for row in rows:
            full = row["capacity"] and row["live"] / row["capacity"] >= ALARM_OFF
            row["active"] = observe.active_flows(region, row["worker"]) if full else row["live"]
        return rows

    def check(self, rows: list[dict]) -> None:
        now = self.clock()
        for row in rows:
            w, cap, live, ev = row["worker"], row["capacity"], row.get("active", row["live"]), row["evicted"]
            ratio = live / cap if cap else 0.0
            st = self.state.get(w)
            if st is None:
                st = self.state[w] = {"alarm": False, "since": None, "evicted": ev, "at": now, "rate": 0.0,
                                      "logged_at": None, "logged_evicted": ev}
            st["active"] = live
            dt = now - st["at"]
            if dt > 0:
                st["rate"] = max(ev - st["evicted"], 0) / dt
            grew = ev > st["evicted"]
            st["evicted"], st["at"] = ev, now
            if not st["alarm"] and ratio > ALARM_ON:
                st["alarm"], st["since"] = True, time.time()
                self.event("flow_table_alarm", logging.WARNING, worker=w, active=live, capacity=cap,
                           occupancy_pct=round(100 * ratio, 1), threshold_pct=round(100 * ALARM_ON),
                           evicted=ev)
            elif st["alarm"] and ratio < ALARM_OFF:
                self.event("flow_table_alarm_cleared", logging.INFO, worker=w, active=live, capacity=cap,
                           occupancy_pct=round(100 * ratio, 1), threshold_pct=round(100 * ALARM_OFF),
                           alarm_s=round(time.time() - st["since"], 1))
                st["alarm"], st["since"] = False, None
            if grew and (st["logged_at"] is None or now - st["logged_at"] >= EVICTION_LOG_S):
                self.event("flow_evictions", logging.WARNING, worker=w, evicted=ev - st["logged_evicted"],
                           evicted_total=ev, rate_per_s=round(st["rate"], 1),
                           occupancy_pct=round(100 * ratio, 1),
                           note="live flows pushed out of full buckets; the table may be too small or flooded")
                st["logged_at"], st["logged_evicted"] = now, ev

    def annotate(self, flow_table: dict) -> dict:
        """flow_table (observe.flow_table_stats()) with alarm, alarm_since and eviction_rate per worker and
        alarm (any worker) in the total."""
        for row in flow_table.get("workers", []):
            st = self.state.get(row["worker"], {})
            row["active"] = st.get("active")
            row["alarm"] = bool(st.get("alarm"))
            row["alarm_since"] = st.get("since")
            row["eviction_rate"] = round(st.get("rate", 0.0), 1)
        flow_table["alarm"] = any(r["alarm"] for r in flow_table.get("workers", []))
        flow_table["alarm_source"] = "pydp-control"
        return flow_table

    def snapshot(self) -> dict[int, dict]:
        return {w: {"alarm": st["alarm"], "eviction_rate": st["rate"]} for w, st in self.state.items()}


def annotate_direct(flow_table: dict) -> dict:
    """Without pydp-control: the alarm as the occupancy says now (the worker's live counter: expired flows not yet
    reclaimed count; no hysteresis, no eviction rate)."""
    for row in flow_table.get("workers", []):
        row["active"] = None
        row["alarm"] = row["capacity"] > 0 and row["live"] / row["capacity"] > ALARM_ON
        row["alarm_since"] = None
        row["eviction_rate"] = None
    flow_table["alarm"] = any(r["alarm"] for r in flow_table.get("workers", []))
    flow_table["alarm_source"] = "occupancy now (no daemon)"
    return flow_table


def drain_row(since: float | None, timeout: float, remaining: int | None, now: float) -> dict:
    """What status shows of a draining edge. since: Unix time the drain started (None: unknown); timeout: the
    cluster's drain_timeout (0: none); remaining: live flows still pinned to the edge (None: unknown)."""
    elapsed = None if since is None else max(0.0, now - since)
    left = None
    if timeout > 0 and elapsed is not None:
        left = max(0.0, timeout - elapsed)
    return {"since": since, "elapsed_s": None if elapsed is None else round(elapsed, 1),
            "timeout_s": timeout, "time_left_s": None if left is None else round(left, 1),
            "expired": left == 0.0, "remaining_flows": remaining, "drained": remaining == 0}


class DrainTracker:
    """The drain timeout (pydp-control): an edge draining for longer than its cluster's drain_timeout has its
    remaining flows flushed (they reach another edge at their next packet); an edge whose flows all ended is
    reported drained. check() runs every FLOW_CHECK_S on the daemon's worker thread."""

    def __init__(self, event: Event, flush_fn: Callable[..., dict] = flush):
        self.event = event
        self.flush_fn = flush_fn
        self.rows: dict[tuple[str, str], dict] = {}          # (cluster, edge) -> drain_row(...)
        self.episodes: dict[tuple[str, str], dict] = {}      # (cluster, edge) -> {since, expired, drained}
        self.moved: dict[tuple[str, str], int] = {}          # flows flushed by drain timeouts, per edge
        self.timeouts: dict[tuple[str, str], int] = {}       # drain timeouts that fired, per edge

    def check(self, region, cfg, since: dict[tuple[str, str], float], now: float | None = None) -> None:
        """cfg: the store's ApplianceConfig; since: store.drain_times() as {(cluster, edge): Unix time}."""
        now = time.time() if now is None else now
        draining = {(cl.name, e.name): cl.drain_timeout for cl in (cfg.clusters if cfg else []) if cl.enabled
                    for e in cl.edges if e.state == "draining"}
        for key in [k for k in self.episodes if k not in draining]:
            del self.episodes[key]
        if not draining or region is None or not observe.dataplane_alive(region):
            self.rows = {k: drain_row(since.get(k), t, None, now) for k, t in draining.items()}
            return
        counts = observe.edge_flow_counts(region)
        rows = {}
        for key, timeout in draining.items():
            start = since.get(key)
            ep = self.episodes.get(key)
            if ep is None or (start is not None and ep["since"] != start):
                # no recorded start (a store written by hand): the clock starts when pydp-control first sees it
                ep = self.episodes[key] = {"since": start if start is not None else now, "expired": False,
                                           "drained": False}
            start = ep["since"]
            remaining = counts.get(key, 0)
            row = drain_row(start, timeout, remaining, now)
            if row["expired"] and remaining > 0:
                remaining = self._move(key, ep, row, region)
                row = drain_row(start, timeout, remaining, now)
            if remaining == 0 and not ep["drained"]:
                ep["drained"] = True
                self.event("edge_drained", cluster=key[0], edge=key[1], after_s=row["elapsed_s"],
                           by="drain timeout" if ep["expired"] else "its flows ended")
            rows[key] = row
        self.rows = rows

    def _move(self, key, ep: dict, row: dict, region) -> int:
        """Flushes the edge's flows; returns the flows still pinned to it (0 unless the flush failed)."""
        cluster, edge = key
        try:
            res = self.flush_fn(region, cluster=cluster, edge=edge)
        except FlushError as exc:
            self.event("drain_timeout_failed", logging.ERROR, cluster=cluster, edge=edge, error=exc.message)
            return row["remaining_flows"]
        self.moved[key] = self.moved.get(key, 0) + res["cleared"]
        if not ep["expired"]:
            ep["expired"] = True
            self.timeouts[key] = self.timeouts.get(key, 0) + 1
            self.event("drain_timeout", logging.WARNING, cluster=cluster, edge=edge, since=ep["since"],
                       timeout_s=row["timeout_s"], flows_moved=res["cleared"],
                       workers={r["worker"]: r["cleared"] for r in res["workers"]})
        return 0

    def row(self, cluster: str, edge: str) -> dict | None:
        return self.rows.get((cluster, edge))
