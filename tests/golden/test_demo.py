"""The pcap demo (`pydp-demo`, python3 -m pydp.demo) runs and reports real decisions."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.dpdk


def test_demo_reports_shares_exception_path_and_dsr(tmp_path):
    out = tmp_path / "demo.json"
    proc = subprocess.run([sys.executable, "-P", "-m", "pydp.demo", "--flows", "400", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "DSR check" in proc.stdout and "cluster web:" in proc.stdout
    s = json.loads(out.read_text())
    web = s["clusters"]["web"]["edges"]
    flows = {name: e["new_flows"] for name, e in web.items()}
    assert sum(flows.values()) == 400 + 50           # TCP and UDP flows (fragments never open a flow)
    # edge-c has weight 2 of 4
    assert 0.4 < flows["edge-c"] / sum(flows.values()) < 0.6
    assert s["exc_to_kernel"] == 3
    assert s["drops"] == {"malformed": 2}
    assert s["dsr_rewrites_verified"] == s["tx_packets"] > 0
