"""control.flows without a data plane: the occupancy alarm's hysteresis and rate limits, the drain tracker's
decisions and the flush's refusals, on a region of our own whose flows are inserted with the C flow-table code
(tests/unit/test_observe.py's insert). The flush reaching real workers is tested in test_flows_live.py."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from control import flows, metrics, observe
from pydp import config as pconfig
from pydp._ffi import lib
from test_observe import TEXT, insert
from test_observe import region  # noqa: F401  (a fixture)


class Events(list):
    def __call__(self, name, level=logging.INFO, /, **fields):
        self.append((name, level, fields))

    def names(self):
        return [n for n, _, _ in self]


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def row(live, evicted=0, worker=0, capacity=1000):
    return {"worker": worker, "capacity": capacity, "live": live, "evicted": evicted}


def test_alarm_has_hysteresis_and_logs_once_per_crossing():
    ev, clock = Events(), Clock()
    mon = flows.TableMonitor(ev, clock)
    for live in (500, 899, 905, 950, 880, 851, 900, 849, 800, 920):
        clock.t += 1
        mon.check([row(live)])
    assert ev.names() == ["flow_table_alarm", "flow_table_alarm_cleared", "flow_table_alarm"]
    on, off = ev[0], ev[1]
    assert on[1] == logging.WARNING and on[2]["active"] == 905 and on[2]["occupancy_pct"] == 90.5
    assert off[1] == logging.INFO and off[2]["active"] == 849 and off[2]["threshold_pct"] == 85
    assert mon.snapshot() == {0: {"alarm": True, "eviction_rate": 0.0}}
    ft = mon.annotate({"workers": [row(920)]})
    assert ft["alarm"] is True and ft["workers"][0]["alarm"] and ft["workers"][0]["alarm_since"] is not None


def test_alarm_uses_flows_not_expired_when_given():
    ev = Events()
    mon = flows.TableMonitor(ev, Clock())
    mon.check([dict(row(990), active=300)])          # full of expired flows: no pressure, no alarm
    assert ev == []


def test_eviction_events_are_rate_limited_and_rates_measured():
    ev, clock = Events(), Clock()
    mon = flows.TableMonitor(ev, clock)
    mon.check([row(100, 0)])
    for i in range(1, 31):                            # evictions grow by 50 every 2 s for a minute
        clock.t += 2
        mon.check([row(100, 50 * i)])
    assert ev.names() == ["flow_evictions"]
    assert ev[0][1] == logging.WARNING and ev[0][2]["evicted"] == 50 and ev[0][2]["rate_per_s"] == 25.0
    clock.t += 2
    mon.check([row(100, 50 * 31)])                    # 60 s after the first: the next event, with the count since
    assert ev.names() == ["flow_evictions", "flow_evictions"] and ev[1][2]["evicted"] == 50 * 30
    assert mon.snapshot()[0]["eviction_rate"] == 25.0
    clock.t += 2
    mon.check([row(100, 50 * 31)])
    assert mon.snapshot()[0]["eviction_rate"] == 0.0
    mon.reset()
    assert mon.snapshot() == {}


def test_metrics_families():
    mon = flows.TableMonitor(Events(), Clock())
    mon.check([row(950, worker=0), row(10, worker=1)])
    tracker = flows.DrainTracker(Events())
    tracker.rows = {("web", "e1"): flows.drain_row(100.0, 30, 4, 110.0)}
    tracker.moved, tracker.timeouts = {("web", "e2"): 7}, {("web", "e2"): 1}
    fams = {f.name: f for f in metrics.flow_management(mon.snapshot(), tracker)}
    assert [s.value for s in fams["pydp_flow_table_alarm"].samples] == [1, 0]
    assert [(s.labels, s.value) for s in fams["pydp_edge_drain_time_left_seconds"].samples] == [
        ({"cluster": "web", "edge": "e1"}, 20.0)]
    assert [s.value for s in fams["pydp_edge_draining_flows"].samples] == [4]
    assert [s.value for s in fams["pydp_edge_drain_moved_flows"].samples if s.name.endswith("_total")] == [7]


def test_drain_row():
    assert flows.drain_row(100.0, 0, 5, 160.0) == {
        "since": 100.0, "elapsed_s": 60.0, "timeout_s": 0, "time_left_s": None, "expired": False,
        "remaining_flows": 5, "drained": False}
    r = flows.drain_row(100.0, 30, 0, 160.0)
    assert r["time_left_s"] == 0.0 and r["expired"] and r["drained"]
    assert flows.drain_row(None, 30, None, 160.0)["time_left_s"] is None


def _alive(region):
    region.hdr.heartbeat_ms = lib.pydp_now_ms()


def test_edge_flow_counts_and_active_flows(region):  # noqa: F811
    for i in range(6):
        insert(region, i % 2, f"203.0.113.{i + 1}", 20000 + i, "web", "e1" if i < 4 else "e2")
    insert(region, 0, "192.0.2.9", 999, "dns", "d1")
    assert observe.edge_flow_counts(region) == {("web", "e1"): 4, ("web", "e2"): 2, ("dns", "d1"): 1}
    assert observe.active_flows(region, 0) == 4 and observe.active_flows(region, 1) == 3


def test_drain_tracker_times_out_then_reports_drained(region):  # noqa: F811
    for i in range(5):
        insert(region, i % 2, f"203.0.113.{i + 1}", 20000 + i, "web", "e1")
    insert(region, 0, "203.0.113.99", 30000, "web", "e2")
    _alive(region)
    cfg = pconfig.loads(TEXT)
    cfg.clusters[0].drain_timeout = 30.0
    cfg.clusters[0].edges[0].state = "draining"
    calls = []

    def fake_flush(r, *, cluster, edge):
        """What the workers do with a FLUSH_EDGE command: the C flush of each table."""
        calls.append((cluster, edge))
        c = observe.clusters(r)[cluster]
        cleared = [int(lib.pydp_flow_flush(lib.pydp_shm_flows(r._shm, w), c["slot"], c["edges"][edge]["slot"]))
                   for w in range(r.nb_workers)]
        return {"cleared": sum(cleared), "workers": [{"worker": w, "cleared": n} for w, n in enumerate(cleared)]}

    ev = Events()
    tr = flows.DrainTracker(ev, flush_fn=fake_flush)
    since = {("web", "e1"): 1000.0}
    tr.check(region, cfg, since, now=1010.0)
    assert tr.row("web", "e1") == {"since": 1000.0, "elapsed_s": 10.0, "timeout_s": 30.0, "time_left_s": 20.0,
                                   "expired": False, "remaining_flows": 5, "drained": False}
    assert ev == [] and calls == []
    tr.check(region, cfg, since, now=1031.0)
    assert calls == [("web", "e1")]
    assert ev.names() == ["drain_timeout", "edge_drained"]
    assert ev[0][1] == logging.WARNING and ev[0][2]["flows_moved"] == 5 and ev[0][2]["workers"] == {0: 3, 1: 2}
    assert ev[1][2]["by"] == "drain timeout"
    assert tr.row("web", "e1")["drained"] and tr.moved == {("web", "e1"): 5} and tr.timeouts == {("web", "e1"): 1}
    assert observe.edge_flow_counts(region) == {("web", "e2"): 1}            # e2's flow stayed
    tr.check(region, cfg, since, now=1040.0)                                 # nothing more to do, nothing logged
    assert len(ev) == 2 and len(calls) == 1
    # undrained: forgotten; drained again later: a new episode with its own start
    cfg.clusters[0].edges[0].state = "active"
    tr.check(region, cfg, {}, now=1050.0)
    assert tr.row("web", "e1") is None


def test_drain_tracker_without_timeout_waits_for_the_flows(region):  # noqa: F811
    insert(region, 0, "203.0.113.1", 20000, "web", "e2")
    _alive(region)
    cfg = pconfig.loads(TEXT)
    cfg.clusters[0].edges[1].state = "draining"
    ev = Events()
    tr = flows.DrainTracker(ev, flush_fn=lambda *a, **k: pytest.fail("no flush without a drain timeout"))
    tr.check(region, cfg, {("web", "e2"): 1.0}, now=1e9)
    assert tr.row("web", "e2")["remaining_flows"] == 1 and tr.row("web", "e2")["time_left_s"] is None
    lib.pydp_flow_flush(lib.pydp_shm_flows(region._shm, 0), -1, -1)       # the flow ends
    tr.check(region, cfg, {("web", "e2"): 1.0}, now=1e9)
    assert ev.names() == ["edge_drained"] and ev[0][2]["by"] == "its flows ended"


def test_flush_refusals(region):  # noqa: F811
    region.hdr.heartbeat_ms = lib.pydp_now_ms() - 10000
    with pytest.raises(flows.FlushError, match="data plane is not running") as e:
        flows.flush(region, all_flows=True)
    assert e.value.kind == "Unavailable"
    _alive(region)
    for kw, msg in (({"cluster": "nope"}, "no cluster 'nope' in the data plane"),
                    ({"cluster": "web", "edge": "x"}, "no edge 'x' in cluster 'web' \\(edges: e1, e2\\)"),
                    ({"all_flows": True, "cluster": "web"}, "cannot be combined"), ({}, "say what to flush")):
        with pytest.raises(flows.FlushError, match=msg) as e:
            flows.flush(region, **kw)
        assert e.value.kind == "BadRequest"
    with pytest.raises(flows.FlushError, match="no worker of the data plane is online"):
        flows.flush(region, cluster="web")
    assert int(lib.pydp_shm_cmds(region._shm, 0).head) == 0                # nothing was pushed


@pytest.mark.parametrize("args, msg", [
    ((), "say what to flush"), (("--edge", "e1"), "--edge needs --cluster"),
])
def test_cli_flush_arguments(args, msg, tmp_path):
    p = subprocess.run([sys.executable, "-P", "-m", "control.cli", "--socket", str(tmp_path / "none.sock"), "flows",
                        "flush", *args], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and msg in p.stderr, p.stderr
    p = subprocess.run([sys.executable, "-P", "-m", "control.cli", "flows", "flush", "--all", "--cluster", "web"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "not allowed with argument" in p.stderr
