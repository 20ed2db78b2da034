"""perf/run end to end: the smoke mode runs every part of the harness (the three forwarders: testpmd io, pydp and
DPDK's l3fwd-EM; scaling, new flows, swaps, idle CPU, Maglev) on real DPDK memif ports and writes the JSON schema
docs/performance.md describes.
No speed is asserted: only that every figure is there and consistent."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from perfpaths import PERF, ROOT

RUN = [sys.executable, str(PERF / "run")]


@pytest.mark.dpdk
def test_smoke_run_writes_the_schema(tmp_path):
    out, plots = tmp_path / "smoke.json", tmp_path / "plots"
    done = subprocess.run(RUN + ["--smoke", "--json", str(out), "--plots", str(plots)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["profiles"]) == {"udp_flows", "syn_flood"}
    for name, fig in res["profiles"].items():
        for key in ("pydp_mpps", "baseline_mpps", "ratio", "cycles_per_packet", "baseline_cycles_per_packet"):
            assert isinstance(fig[key], (int, float)) and fig[key] > 0, (name, key)
        assert fig["ratio"] == pytest.approx(fig["pydp_mpps"] / fig["baseline_mpps"], rel=0.01)
        assert fig["ratio_min"] <= fig["ratio"] <= fig["ratio_max"]
        (pair,) = fig["pairs"]                # smoke: one round
        assert pair["ratio"] == fig["ratio"] and pair["order"] == ["baseline", "pydp"] + (
            ["l3fwd"] if name == "udp_flows" else [])
        assert 0 <= pair["other_load"] <= 1 and 0 <= pair["steal"] <= 1 and fig["reruns"] == 0
        assert isinstance(fig["drops"], dict)
    peer = res["peers"]["l3fwd_em"]
    assert peer["mpps"] > 0 and peer["ratio_vs_io"] > 0 and peer["cycles_per_packet"] > 0
    assert peer["pydp_over_peer"] == pytest.approx(res["profiles"]["udp_flows"]["pydp_mpps"] / peer["mpps"],
                                                   rel=0.02)
    assert res["reruns"]["total"] == 0 and res["reruns"]["budget"] == 0
    # SYN flood: every packet is a new flow
    syn = res["profiles"]["syn_flood"]["flows"]
    assert syn["inserts"] >= 0.95 * syn["lookups"] > 0
    nf = res["new_flows_per_s"]
    assert nf["pydp"] > 0 and nf["baseline"] > 0 and nf["ratio"] == pytest.approx(nf["pydp"] / nf["baseline"],
                                                                                   rel=0.01)
    assert set(res["maglev_build_ms"]) == {f"{n}@{s}" for n in range(2, 17) for s in (65537, 655373)}
    assert all(v > 0 for v in res["maglev_build_ms"].values())
    assert set(res["maglev_build_ms_median"]) == set(res["maglev_build_ms"])
    assert all(res["maglev_build_ms_median"][k] >= v for k, v in res["maglev_build_ms"].items())
    # the C build alone (pydp-bench-maglev, built with pydp-gen): every point built the same table every time
    mb = res["maglev_bench"]["points"]
    assert set(mb) == {"2@65537", "16@65537", "2@655373", "16@655373"}
    assert all(0 < p["cpu_ms_min"] <= p["cpu_ms_median"] and len(p["checksum"]) == 16 for p in mb.values())
    assert isinstance(res["swap_lost_packets"], int) and res["swap_lost_packets"] >= 0
    sw = res["swap"]
    assert sw["swaps"] == 100 and sw["generations"] == 100 and sw["sent"] > 0
    assert sw["lost"] == sw["sent"] - sw["received"]
    assert "not_active" not in sw["drops"]    # the swaps publish the clusters owned, as the data plane runs
    assert 0 <= res["idle"]["dataplane_cpu_share"] < 1 and res["idle"]["wakeups_per_s"] >= 0
    assert res["flow_scaling"]["10000"]["pydp_mpps"] > 0
    m = res["machine"]
    assert m["cpu"] and m["cores"] >= 1 and m["dpdk"] and m["vdev"] == "net_memif"
    assert res["method"]["burst"] == 64
    assert {p.name for p in plots.iterdir()} == {"mpps_vs_flows.png", "ratio_per_profile.png"}
    assert "profile" in done.stdout and "table swaps" in done.stdout and "l3fwd-EM peer" in done.stdout
