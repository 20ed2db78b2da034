"""The README's main job: scripts/demo.sh runs `pydp-lab demo`, which tells the whole story with measured figures,
writes the JSON, the plot and the captures, and leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from netlab import assert_clean, lab_name, report

pytestmark = [pytest.mark.dpdk, pytest.mark.netns]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "demo.sh"


def test_demo_script_runs_the_story(tmp_path, request):
    name = lab_name()
    out, js = tmp_path / "demo", tmp_path / "figures.json"
    p = subprocess.run([str(SCRIPT), "--name", name, "--out", str(out), "--json", str(js)], capture_output=True,
                       text=True, timeout=600, env={"PYTHON": sys.executable, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert_clean(name)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads(js.read_text())
    report(request, f"demo: {res['run_s']} s; shares {res['edge_share']}; DSR replies via LB "
                    f"{res['dsr_replies_via_lb']} (clients got {res['dsr_replies_at_clients']}); edge detect "
                    f"{res['edge_detect_s']} s, rejoin {res['edge_rejoin_s']} s; takeover {res['takeover_s']} s, "
                    f"{res['connections_survived_takeover']}/{res['connections_alive_at_takeover']} survived")
    assert set(res["edge_share"]) == {"e1", "e2", "e3"} and abs(sum(res["edge_share"].values()) - 1) < 1e-9
    assert res["dsr_replies_via_lb"] == 0 and res["dsr_replies_at_clients"] > 100
    assert res["edge_detect_s"] is not None and res["edge_rejoin_s"] is not None
    assert set(res["edge_broken_conns"]) == {"e2"} and res["new_to_failed_edge_after_detection"] == 0
    assert res["drain"]["new_connections_while_drained"] == 0
    assert res["drain"]["its_connections_alive"] == res["drain"]["its_connections"] > 0
    assert res["takeover_s"] is not None and res["connections_total"] == 200
    assert res["connections_survived_takeover"] == res["connections_alive_at_takeover"] > 0
    assert (out / "edge-share.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "report.txt").read_text()
    assert "reply packets crossing the load balancer's port (tcpdump): 0" in text and text in p.stdout
