"""Prometheus metrics of pydp, read from the data plane's shared memory at scrape time.

The collector copies nothing in the background and does no per-packet work: each scrape reads the counters the
workers already keep (see control.observe) and turns them into metric families. Served by prometheus_client's own
HTTP server on the configured address only (pydp-control --metrics HOST:PORT).

Metrics (counters end in _total):
    pydp_dataplane_up                                   1 while a data plane with a fresh heartbeat is attached
    pydp_config_generation                              the published config generation
    pydp_port_rx_packets_total{port}, pydp_port_rx_bytes_total{port}, pydp_port_tx_packets_total{port},
    pydp_port_tx_bytes_total{port}, pydp_port_exception_packets_total{port}, pydp_port_link_up{port}
    pydp_drops_total{port,reason}
    pydp_cluster_packets_total{cluster}, pydp_cluster_bytes_total{cluster}, pydp_cluster_drops_total{cluster,reason}
    pydp_cluster_active{cluster}                        1 if this appliance owns the cluster IP
    pydp_edge_packets_total{cluster,edge}, pydp_edge_bytes_total{cluster,edge}, pydp_edge_new_flows_total{...}
    pydp_edge_state{cluster,edge,state}                 1 for the edge's current state (up|draining|down|disabled)
    pydp_worker_polls_total{worker}, pydp_worker_idle_polls_total{worker}, pydp_worker_busy_cycles_total{worker},
    pydp_worker_rx_packets_total{worker}, pydp_worker_flow_rehashed_total{worker},
    pydp_worker_config_swaps_total{worker}, pydp_worker_flow_flushed_total{worker},
    pydp_worker_flow_installs_total{worker}
    pydp_flow_table_entries{worker,kind=capacity|live}, pydp_flow_table_occupancy_ratio{worker},
    pydp_flow_table_expired_total{worker}, pydp_flow_table_evicted_total{worker}
The daemon adds its own (extra): pydp_control_applied_revision, pydp_edge_mac_unresolved, the health checks'
    pydp_edge_health{cluster,edge} (1 up, 0 down, -1 unknown), pydp_edge_health_transitions_total{cluster,edge},
    and CARP's
    pydp_carp_state{cluster,state}, pydp_carp_demote{cluster}, pydp_carp_drops_total{cluster,reason},
    pydp_carp_transitions_total{cluster}, pydp_carp_adverts_sent_total{cluster},
    pydp_carp_adverts_received_total{cluster} (also while no data plane is attached), and the flow-table
    management's (flow_management()):
    pydp_flow_table_alarm{worker}                       1 while the worker's table is above 90% (until below 85%)
    pydp_flow_table_eviction_rate{worker}               evictions per second over the last check (1 s)
    pydp_edge_draining_flows{cluster,edge}              live flows still pinned to a draining edge
    pydp_edge_drain_time_left_seconds{cluster,edge}     until the drain timeout moves them (-1: no timeout)
    pydp_edge_drain_timeouts_total{cluster,edge}, pydp_edge_drain_flows_moved_total{cluster,edge}
"""

from __future__ import annotations

import logging
from typing import Callable, ContextManager, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

from control import observe

__all__ = ["Collector", "start", "parse_address", "flow_management"]

log = logging.getLogger("pydp.control.metrics")
EDGE_STATE_NAMES = ("up", "draining", "down", "disabled")


class Collector:
    """A prometheus_client collector. region_source() is a context manager yielding the attached Region, or None
    when there is no data plane; extra() (optional) yields the daemon's own metric families, also while no data
    plane is attached."""

    def __init__(self, region_source: Callable[[], ContextManager], extra: Callable[[], Iterable] | None = None):
        self.region_source = region_source
        self.extra = extra

    def describe(self):
        return []            # no fixed set: families are built at scrape time

    def collect(self):
        up = GaugeMetricFamily("pydp_dataplane_up", "1 while a running data plane is attached")
        try:
            with self.region_source() as region:
                st = observe.stats(region) if region is not None else None
        except Exception:  # a scrape never takes the daemon down
            log.exception("metrics scrape failed")
            st = None
        if st is None:
            up.add_metric([], 0)
            yield up
            yield from self._extra()
            return
        up.add_metric([], 1 if st["dataplane"]["alive"] else 0)
        yield up
        gen = GaugeMetricFamily("pydp_config_generation", "the published config generation")
        gen.add_metric([], st["generation"])
        yield gen
        yield from _ports(st)
        yield from _clusters(st)
        yield from _workers(st)
        yield from _flow_tables(st)
        yield from self._extra()

    def _extra(self):
        if self.extra is not None:
            try:
                yield from list(self.extra())
            except Exception:
                log.exception("daemon metrics failed")


def _ports(st):
    fams = {
        "rx_packets": CounterMetricFamily("pydp_port_rx_packets", "frames received", labels=["port"]),
        "rx_bytes": CounterMetricFamily("pydp_port_rx_bytes", "bytes received", labels=["port"]),
        "tx_packets": CounterMetricFamily("pydp_port_tx_packets", "frames sent", labels=["port"]),
        "tx_bytes": CounterMetricFamily("pydp_port_tx_bytes", "bytes sent", labels=["port"]),
        "exc_to_kernel": CounterMetricFamily("pydp_port_exception_packets",
                                             "frames handed to the kernel (exception path)", labels=["port"]),
        "exc_from_kernel": CounterMetricFamily("pydp_port_from_kernel_packets",
                                               "frames the kernel sent out through the port", labels=["port"]),
    }
    link = GaugeMetricFamily("pydp_port_link_up", "1 if the port's link is up", labels=["port"])
    drops = CounterMetricFamily("pydp_drops", "frames dropped, by reason", labels=["port", "reason"])
    for p in st["ports"]:
        name = p["name"] or str(p["port"])
        for k, fam in fams.items():
            fam.add_metric([name], p[k])
        link.add_metric([name], 1 if p["link_up"] else 0)
        for reason, n in p["drops"].items():
            drops.add_metric([name, reason], n)
    yield from fams.values()
    yield link
    yield drops


def _clusters(st):
    cp = CounterMetricFamily("pydp_cluster_packets", "frames forwarded for the cluster", labels=["cluster"])
    cb = CounterMetricFamily("pydp_cluster_bytes", "bytes forwarded for the cluster", labels=["cluster"])
    cd = CounterMetricFamily("pydp_cluster_drops", "frames for the cluster IP dropped, by reason",
                             labels=["cluster", "reason"])
    act = GaugeMetricFamily("pydp_cluster_active", "1 if this appliance owns the cluster IP", labels=["cluster"])
    ep = CounterMetricFamily("pydp_edge_packets", "frames forwarded to the edge", labels=["cluster", "edge"])
    eb = CounterMetricFamily("pydp_edge_bytes", "bytes forwarded to the edge", labels=["cluster", "edge"])
    en = CounterMetricFamily("pydp_edge_new_flows", "flows assigned to the edge", labels=["cluster", "edge"])
    es = GaugeMetricFamily("pydp_edge_state", "1 for the edge's current state", labels=["cluster", "edge", "state"])
    for cname, c in st["clusters"].items():
        if not c.get("applied", True):
            continue
        cp.add_metric([cname], c["packets"])
        cb.add_metric([cname], c["bytes"])
        for reason in ("not_active", "disabled", "no_edge"):
            cd.add_metric([cname, reason], c["drop_" + reason])
        act.add_metric([cname], 1 if c["active"] else 0)
        for ename, e in c["edges"].items():
            ep.add_metric([cname, ename], e["packets"])
            eb.add_metric([cname, ename], e["bytes"])
            en.add_metric([cname, ename], e["new_flows"])
            for s in EDGE_STATE_NAMES:
                es.add_metric([cname, ename, s], 1 if e["state"] == s else 0)
    yield from (cp, cb, cd, act, ep, eb, en, es)


def _workers(st):
    fams = {
        "polls": CounterMetricFamily("pydp_worker_polls", "poll-loop iterations", labels=["worker"]),
        "idle_polls": CounterMetricFamily("pydp_worker_idle_polls", "iterations that received nothing",
                                          labels=["worker"]),
        "busy_cycles": CounterMetricFamily("pydp_worker_busy_cycles",
                                           "TSC cycles spent on iterations that received packets",
                                           labels=["worker"]),
        "rx_packets": CounterMetricFamily("pydp_worker_rx_packets", "frames received by the worker",
                                          labels=["worker"]),
        "flow_rehashed": CounterMetricFamily("pydp_worker_flow_rehashed",
                                             "flows moved because their edge went down or was removed",
                                             labels=["worker"]),
        "config_swaps": CounterMetricFamily("pydp_worker_config_swaps", "config generations picked up",
                                            labels=["worker"]),
        "flow_flushed": CounterMetricFamily("pydp_worker_flow_flushed",
                                            "flows cleared by flushes (pydpctl flows flush, drain timeouts)",
                                            labels=["worker"]),
        "flow_installs": CounterMetricFamily("pydp_worker_flow_installs",
                                             "flows installed or refreshed by flow sync from the peer",
                                             labels=["worker"]),
    }
    for w in st["workers"]:
        for k, fam in fams.items():
            fam.add_metric([str(w["worker"])], w[k])
    yield from fams.values()


def _flow_tables(st):
    ent = GaugeMetricFamily("pydp_flow_table_entries", "flow-table entries", labels=["worker", "kind"])
    occ = GaugeMetricFamily("pydp_flow_table_occupancy_ratio", "live entries / capacity", labels=["worker"])
    exp = CounterMetricFamily("pydp_flow_table_expired", "expired flows reclaimed", labels=["worker"])
    ev = CounterMetricFamily("pydp_flow_table_evicted", "live flows pushed out of a full bucket",
                             labels=["worker"])
    for row in st["flow_table"]["workers"]:
        w = str(row["worker"])
        ent.add_metric([w, "capacity"], row["capacity"])
        ent.add_metric([w, "live"], row["live"])
        occ.add_metric([w], row["live"] / row["capacity"] if row["capacity"] else 0.0)
        exp.add_metric([w], row["expired"])
        ev.add_metric([w], row["evicted"])
    yield from (ent, occ, exp, ev)


def flow_management(alarms: dict[int, dict], drains) -> Iterable:
    """The daemon's flow-table families: alarms is control.flows.TableMonitor.snapshot(), drains a
    control.flows.DrainTracker."""
    alarm = GaugeMetricFamily("pydp_flow_table_alarm", "1 while the worker's flow table is above 90% full (it "
                              "clears below 85%)", labels=["worker"])
    rate = GaugeMetricFamily("pydp_flow_table_eviction_rate", "live flows pushed out of full buckets per second "
                             "(over the last check)", labels=["worker"])
    for w, st in sorted(alarms.items()):
        alarm.add_metric([str(w)], 1 if st["alarm"] else 0)
        rate.add_metric([str(w)], st["eviction_rate"])
    left = GaugeMetricFamily("pydp_edge_drain_time_left_seconds", "seconds until the drain timeout moves the "
                             "draining edge's flows (-1: no timeout, the flows end on their own)",
                             labels=["cluster", "edge"])
    remaining = GaugeMetricFamily("pydp_edge_draining_flows", "live flows still pinned to the draining edge",
                                  labels=["cluster", "edge"])
    fired = CounterMetricFamily("pydp_edge_drain_timeouts", "drain timeouts that moved an edge's flows",
                                labels=["cluster", "edge"])
    moved = CounterMetricFamily("pydp_edge_drain_flows_moved", "flows flushed from draining edges by drain timeouts",
                                labels=["cluster", "edge"])
    for (c, e), row in sorted(drains.rows.items()):
        left.add_metric([c, e], -1 if row["time_left_s"] is None else row["time_left_s"])
        if row["remaining_flows"] is not None:
            remaining.add_metric([c, e], row["remaining_flows"])
    for key in sorted(set(drains.moved) | set(drains.timeouts)):
        fired.add_metric(list(key), drains.timeouts.get(key, 0))
        moved.add_metric(list(key), drains.moved.get(key, 0))
    yield from (alarm, rate, left, remaining, fired, moved)


def parse_address(text: str) -> tuple[str, int] | None:
    """HOST:PORT (IPv6 as [ADDR]:PORT) -> (host, port); "" -> None (metrics off). ValueError if malformed."""
    text = text.strip()
    if not text:
        return None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected [IPV6]:PORT")
        port_s = rest[1:]
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:9469")
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"{text!r}: the port must be a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: the port must be 0..65535")
    return host, port


def start(address: tuple[str, int], collector: Collector):
    """Serves the collector (alone, no process metrics of the default registry) on host:port. Returns the server
    (whose server_port tells the port when 0 was asked) or None with an older prometheus_client."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    host, port = address
    res = start_http_server(port, addr=host, registry=registry)
    return res[0] if isinstance(res, tuple) else res

