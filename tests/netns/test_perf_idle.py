"""perf/idle end to end: an idle data plane on an af_packet port with its TAP in a namespace, its CPU use, wake-ups
and the first packets after idle (docs/performance.md). No speed is asserted: only that every figure is there and
that the data plane, idle and backed off, still answers through its TAP."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from perfpaths import PERF, ROOT

pytestmark = [pytest.mark.dpdk, pytest.mark.netns]


def test_idle_run_writes_its_figures_and_the_idle_data_plane_still_answers(tmp_path):
    out = tmp_path / "idle.json"
    done = subprocess.run([sys.executable, "-P", str(PERF / "idle"), "--windows", "2", "--seconds", "1",
                           "--pings", "3", "--interval", "0.3", "--sleep-deep", "800", "--json", str(out)],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["sleep_deep_us"] == 800 and res["sleep_max_us"] is None
    idle = res["idle"]
    cpu = idle["dataplane_cpu_share"]
    assert cpu["n"] == 2 and 0 <= cpu["min"] <= cpu["median"] <= cpu["max"] < 1
    # with no traffic the worker backs off: it sleeps, many times a second
    assert idle["worker_wakeups_per_s"]["min"] > 10
    assert 0 <= idle["other_load"]["median"] <= 1
    # every ping, after 0.3 s of idle and while awake, came back through the worker and the TAP
    first = res["first_packet_after_idle"]
    assert first["rtt_ms"]["n"] == 3 and 0 < first["rtt_ms"]["min"] <= first["rtt_ms"]["max"]
    assert first["awake_rtt_ms"]["n"] == 3      # one reply each: only the data plane answers
    # nothing is left behind: its namespaces are gone
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "perf-idle-" not in ns
