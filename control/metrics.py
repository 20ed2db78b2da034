"""Prometheus metrics of pydp, read from the data plane's shared memory at scrape time.

The collector copies nothing in the background and does no per-packet work: each scrape reads the counters the
workers already keep (see control.observe) and turns them into metric families. Served by prometheus_client's own
HTTP server on the configured address only (pydp-control --metrics HOST:PORT).

Naming follows Prometheus' conventions: a unit noun in every name (packets, bytes, flows, seconds, ...), ``_total``
on counters only, one meaning per family (a label splits it, never changes what is counted), no sentinel values
(a series is absent while its value is unknown) and no precomputed rates (rate() in the query). docs/operations.md
lists every family with what to do about it; deploy/prometheus/alerts.yml and deploy/grafana/pydp.json use them.

From the data plane's shared memory:
    pydp_dataplane_up, pydp_dataplane_heartbeat_age_seconds, pydp_config_generation
    pydp_port_{rx,tx}_{packets,bytes}_total{port}, pydp_port_exception_packets_total{port},
    pydp_port_from_kernel_packets_total{port}, pydp_port_link_up{port}, pydp_port_dropped_packets_total{port,reason}
    pydp_cluster_{packets,bytes}_total{cluster}, pydp_cluster_dropped_packets_total{cluster,reason},
    pydp_cluster_owned{cluster}
    pydp_edge_{packets,bytes,new_flows}_total{cluster,edge}, pydp_edge_state{cluster,edge,state},
    pydp_edge_active_flows{cluster,edge}, pydp_edge_inactive_flows{cluster,edge}   (ipvsadm ActiveConn/InActConn)
    pydp_worker_{polls,idle_polls,busy_cycles,rx_packets,rehashed_flows,config_swaps,flushed_flows,
    installed_flows}_total{worker}
    pydp_flow_table_capacity_flows{worker}, pydp_flow_table_live_flows{worker}, pydp_flow_table_occupancy_ratio,
    pydp_flow_table_{expired,evicted}_flows_total{worker}
The daemon's own (extra, also while no data plane is attached): pydp_build_info, process_* of pydp-control and
pydp_dataplane_process_* of the data plane, the store/apply, health, CARP, flow-sync and flow-management families
(flow_management()).
"""

from __future__ import annotations

import logging
from typing import Callable, ContextManager, Iterable

from prometheus_client import ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import CollectorRegistry

from control import observe

__all__ = ["Collector", "start", "parse_address", "flow_management"]

log = logging.getLogger("pydp.control.metrics")
EDGE_STATE_NAMES = ("up", "draining", "down", "disabled")


class Collector:
    """A prometheus_client collector. region_source() is a context manager yielding the attached Region, or None
    when there is no data plane; extra() (optional) yields the daemon's own metric families, also while no data
    plane is attached."""

    def __init__(self, region_source: Callable[[], ContextManager], extra: Callable[[], Iterable] | None = None,
                 dataplane_pid: Callable[[], int] | None = None):
        self.region_source = region_source
        self.extra = extra
        self.dataplane_pid = dataplane_pid      # for the data plane's process metrics (None: none)

    def describe(self):
        return []            # no fixed set: families are built at scrape time

    def collect(self):
        up = GaugeMetricFamily("pydp_dataplane_up", "1 while a running data plane is attached")
        try:
            with self.region_source() as region:
                st = observe.stats(region) if region is not None else None
                if st is not None:
                    st["edge_flows"] = observe.edge_flow_states(region)
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
        age = GaugeMetricFamily("pydp_dataplane_heartbeat_age_seconds", "time since the data plane's main loop last "
                                "wrote its heartbeat (it does every 100 ms)")
        age.add_metric([], st["dataplane"]["heartbeat_age_ms"] / 1000)
        yield age
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


class BuildInfo:
    """pydp_build_info{version, python} 1: what runs (joins with any other series on instance)."""

    def describe(self):
        return []

    def collect(self):
        import platform

        import pydp

        info = InfoMetricFamily("pydp_build", "the pydp version running and the Python it runs on")
        info.add_metric([], {"version": pydp.__version__, "python": platform.python_version()})
        yield info


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
    drops = CounterMetricFamily("pydp_port_dropped_packets", "frames received on the port and dropped, by reason",
                                labels=["port", "reason"])
    exc = CounterMetricFamily("pydp_port_exception_class_packets",
                              "exception path per class (bulk, arp, carp, control): frames handed to the kernel "
                              "(result=kernel) and dropped over the class's rate (result=dropped)",
                              labels=["port", "class", "result"])
    for p in st["ports"]:
        name = p["name"] or str(p["port"])
        for k, fam in fams.items():
            fam.add_metric([name], p[k])
        link.add_metric([name], 1 if p["link_up"] else 0)
        for reason, n in p["drops"].items():
            drops.add_metric([name, reason], n)
        for cls, c in observe.exception_classes(p).items():
            exc.add_metric([name, cls, "kernel"], c["to_kernel"])
            exc.add_metric([name, cls, "dropped"], c["dropped"])
    yield from fams.values()
    yield link
    yield drops
    yield exc


def _clusters(st):
    cp = CounterMetricFamily("pydp_cluster_packets", "frames forwarded for the cluster", labels=["cluster"])
    cb = CounterMetricFamily("pydp_cluster_bytes", "bytes forwarded for the cluster", labels=["cluster"])
    cd = CounterMetricFamily("pydp_cluster_dropped_packets", "frames for the cluster IP dropped, by reason",
                             labels=["cluster", "reason"])
    act = GaugeMetricFamily("pydp_cluster_owned", "1 if this appliance owns the cluster IP (forwards for it)",
                            labels=["cluster"])
    ep = CounterMetricFamily("pydp_edge_packets", "frames forwarded to the edge", labels=["cluster", "edge"])
    eb = CounterMetricFamily("pydp_edge_bytes", "bytes forwarded to the edge", labels=["cluster", "edge"])
    en = CounterMetricFamily("pydp_edge_new_flows", "flows assigned to the edge", labels=["cluster", "edge"])
    es = GaugeMetricFamily("pydp_edge_state", "1 for the edge's current state", labels=["cluster", "edge", "state"])
    fa = GaugeMetricFamily("pydp_edge_active_flows", "live TCP flows past the handshake pinned to the edge "
                           "(ipvsadm's ActiveConn)", labels=["cluster", "edge"])
    fi = GaugeMetricFamily("pydp_edge_inactive_flows", "other live flows pinned to the edge: half-open, closing, UDP "
                           "and other protocols (ipvsadm's InActConn)", labels=["cluster", "edge"])
    flows = st.get("edge_flows") or {}
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
            n = flows.get((cname, ename), {"active": 0, "inactive": 0})
            fa.add_metric([cname, ename], n["active"])
            fi.add_metric([cname, ename], n["inactive"])
    yield from (cp, cb, cd, act, ep, eb, en, es, fa, fi)


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
        "flow_rehashed": CounterMetricFamily("pydp_worker_rehashed_flows",
                                             "flows moved because their edge went down or was removed",
                                             labels=["worker"]),
        "config_swaps": CounterMetricFamily("pydp_worker_config_swaps", "config generations picked up",
                                            labels=["worker"]),
        "flow_flushed": CounterMetricFamily("pydp_worker_flushed_flows",
                                            "flows cleared by flushes (pydpctl flows flush, drain timeouts)",
                                            labels=["worker"]),
        "flow_installs": CounterMetricFamily("pydp_worker_installed_flows",
                                             "flows installed or refreshed by flow sync from the peer",
                                             labels=["worker"]),
    }
    for w in st["workers"]:
        for k, fam in fams.items():
            fam.add_metric([str(w["worker"])], w[k])
    yield from fams.values()


def _flow_tables(st):
    cap = GaugeMetricFamily("pydp_flow_table_capacity_flows", "flows the worker's table can hold", labels=["worker"])
    live = GaugeMetricFamily("pydp_flow_table_live_flows", "occupied entries of the worker's table (expired ones "
                             "not reclaimed yet included)", labels=["worker"])
    occ = GaugeMetricFamily("pydp_flow_table_occupancy_ratio", "live entries / capacity", labels=["worker"])
    exp = CounterMetricFamily("pydp_flow_table_expired_flows", "expired flows reclaimed", labels=["worker"])
    ev = CounterMetricFamily("pydp_flow_table_evicted_flows", "live flows pushed out of a full bucket",
                             labels=["worker"])
    for row in st["flow_table"]["workers"]:
        w = str(row["worker"])
        cap.add_metric([w], row["capacity"])
        live.add_metric([w], row["live"])
        occ.add_metric([w], row["live"] / row["capacity"] if row["capacity"] else 0.0)
        exp.add_metric([w], row["expired"])
        ev.add_metric([w], row["evicted"])
    yield from (cap, live, occ, exp, ev)


def flow_management(alarms: dict[int, dict], drains) -> Iterable:
    """The daemon's flow-table families: alarms is control.flows.TableMonitor.snapshot(), drains a
    control.flows.DrainTracker."""
    alarm = GaugeMetricFamily("pydp_flow_table_alarm", "1 while the worker's flow table is above 90% full (it "
                              "clears below 85%)", labels=["worker"])
    for w, st in sorted(alarms.items()):
        alarm.add_metric([str(w)], 1 if st["alarm"] else 0)
    left = GaugeMetricFamily("pydp_edge_drain_time_left_seconds", "seconds until the drain timeout moves the "
                             "draining edge's flows (absent: no timeout, the flows end on their own)",
                             labels=["cluster", "edge"])
    remaining = GaugeMetricFamily("pydp_edge_draining_flows", "live flows still pinned to the draining edge",
                                  labels=["cluster", "edge"])
    fired = CounterMetricFamily("pydp_edge_drain_timeouts", "drain timeouts that moved an edge's flows",
                                labels=["cluster", "edge"])
    moved = CounterMetricFamily("pydp_edge_drain_moved_flows", "flows flushed from draining edges by drain timeouts",
                                labels=["cluster", "edge"])
    for (c, e), row in sorted(drains.rows.items()):
        if row["time_left_s"] is not None:
            left.add_metric([c, e], row["time_left_s"])
        if row["remaining_flows"] is not None:
            remaining.add_metric([c, e], row["remaining_flows"])
    for key in sorted(set(drains.moved) | set(drains.timeouts)):
        fired.add_metric(list(key), drains.timeouts.get(key, 0))
        moved.add_metric(list(key), drains.moved.get(key, 0))
    yield from (alarm, left, remaining, fired, moved)


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
    registry.register(BuildInfo())
    # process_* of pydp-control itself, pydp_dataplane_process_* of the data plane (its pid from the region)
    ProcessCollector(registry=registry)
    if collector.dataplane_pid is not None:
        ProcessCollector(namespace="pydp_dataplane", pid=collector.dataplane_pid, registry=registry)
    host, port = address
    res = start_http_server(port, addr=host, registry=registry)
    return res[0] if isinstance(res, tuple) else res

