"""`pydp-lab chaos` on the virtual lab: a short run with a fixed seed whose rounds cover the fault groups (the
active appliance, an edge, the management link, configuration through pydpctl and the HTTP API, hostile traffic)
ends with every invariant held, the JSON report complete and replayable, and nothing left behind; so does a short
run on the scale-out lab (--scale-out 3: BGP to an ECMP router, flow sync among the appliances) whose rounds cover
its own kinds. (The long runs: docs/lab.md.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from control.lab import chaos
from netlab import assert_clean, lab_name, report

pytestmark = [pytest.mark.dpdk, pytest.mark.netns]

SEED = 17
KINDS = ["dataplane_kill", "daemon_sigterm", "edge_kill", "drain", "weight_change", "mgmt_link_cut",
         "carp_bad_adverts", "syn_flood"]
RSS_LIMIT = 20 * 1024


def test_short_chaos_run_holds_every_invariant(tmp_path, request):
    name = lab_name()
    js = tmp_path / "chaos.json"
    p = subprocess.run([sys.executable, "-P", "-m", "control.lab.cli", "chaos", "--name", name, "--rounds",
                        str(len(KINDS)), "--seed", str(SEED), "--kinds", ",".join(KINDS), "--conns", "60",
                        # a short run cannot tell warm-up from growth: it only catches a gross leak; the 5 MiB
                        # target is the long run's (docs/lab.md)
                        "--rss-limit-kib", str(RSS_LIMIT), "--json", str(js)],
                       capture_output=True, text=True, timeout=600)
    assert_clean(name)
    res = json.loads(js.read_text())
    report(request, f"chaos: {res['rounds']} rounds in {res['run_s']} s, {len(res['violations'])} violations, "
                    f"connections {res['connections']}, RSS growth KiB {res['rss_growth_kib']}, "
                    f"fd growth {res['fd_growth']}")
    assert p.returncode == 0 and res["violations"] == [], p.stdout[-4000:] + p.stderr[-3000:]
    assert {"seed", "rounds", "faults", "violations", "connections", "rss_growth_kib", "fd_growth",
            "run_s"} <= set(res)
    # the seed replays: the schedule is the one chaos.schedule() draws, one round of each kind asked for
    assert res["seed"] == SEED and res["rounds"] == len(KINDS)
    assert res["schedule"] == chaos.schedule(SEED, len(KINDS), KINDS)
    assert res["faults"] == {k: 1 for k in KINDS}
    c = res["connections"]
    assert c["broken_unexpected"] == 0 and c["opened"] > 60
    # the edge killed takes its own connections with it, and only those
    assert res["long_lived"]["survived"] == res["long_lived"]["total"] - c["broken_expected"]
    assert res["new_connections"]["answered"] > 0 and res["udp_flows"]["answered"] > 0
    assert set(res["rss_growth_kib"]) == {"A.dataplane", "A.control", "B.dataplane", "B.control"}
    assert all(v < RSS_LIMIT for v in res["rss_growth_kib"].values())
    assert all(v <= chaos.FD_LIMIT for v in res["fd_growth"].values())
    assert "0 violations" in p.stdout


SCALE_OUT = 3
SCALE_OUT_KINDS = ["appliance_kill", "router_restart", "bgp_session_reset", "appliance_drain", "edge_kill",
                   "weight_change", "syn_flood"]


def test_short_scale_out_chaos_run_holds_every_invariant(tmp_path, request):
    name = lab_name()
    js = tmp_path / "chaos.json"
    p = subprocess.run([sys.executable, "-P", "-m", "control.lab.cli", "chaos", "--name", name, "--scale-out",
                        str(SCALE_OUT), "--rounds", str(len(SCALE_OUT_KINDS)), "--seed", str(SEED), "--kinds",
                        ",".join(SCALE_OUT_KINDS), "--conns", "60", "--rss-limit-kib", str(RSS_LIMIT),
                        "--json", str(js)], capture_output=True, text=True, timeout=600)
    assert_clean(name)
    res = json.loads(js.read_text())
    report(request, f"chaos --scale-out {SCALE_OUT}: {res['rounds']} rounds in {res['run_s']} s, "
                    f"{len(res['violations'])} violations, connections {res['connections']}, "
                    f"long-lived {res['long_lived']}, RSS growth KiB {res['rss_growth_kib']}")
    assert p.returncode == 0 and res["violations"] == [], p.stdout[-4000:] + p.stderr[-3000:]
    assert {"seed", "rounds", "faults", "violations", "connections", "rss_growth_kib", "fd_growth",
            "run_s"} <= set(res)
    assert res["schedule"] == chaos.schedule(SEED, len(SCALE_OUT_KINDS), SCALE_OUT_KINDS)
    assert res["faults"] == {k: 1 for k in SCALE_OUT_KINDS}
    c = res["connections"]
    # an appliance killed, the router restarted, a session reset, an appliance drained: no connection breaks
    # (flow sync); only the killed edge's may
    assert c["broken_unexpected"] == 0 and c["opened"] > 60
    assert res["long_lived"]["survived"] == res["long_lived"]["total"] - c["broken_expected"]
    assert res["new_connections"]["answered"] > 0
    assert set(res["rss_growth_kib"]) == {f"{a}.{r}" for a in "ABC" for r in ("dataplane", "control")}
    assert all(v <= chaos.FD_LIMIT for v in res["fd_growth"].values())
    assert "0 violations" in p.stdout
