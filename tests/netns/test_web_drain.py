"""Drain an edge from the admin page in a real browser, against pydp-control and a real pydp-dataplane (af_packet
port in a namespace) with tests/traffic.py as the clients: the drained edge gets no new flow, its existing flows go
on. pydp-control runs in this namespace (--own-all, no CARP) so the browser reaches its page on loopback; it finds
the data plane through its shared memory."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time

import pytest

from control import observe, rpc
from control.http import auth
from netlab import ControlProcess, DataplaneProcess, netns, ns_run, traffic, veth
from webapp import chromium, css, sign_in_page, wait

pytestmark = [pytest.mark.dpdk, pytest.mark.netns, pytest.mark.browser]

LB_MAC = "02:00:00:00:01:01"
VIP = "198.51.100.10"
MACS = {"e1": "02:00:00:00:02:01", "e2": "02:00:00:00:02:02"}
IPS = {"e1": "198.51.100.21", "e2": "198.51.100.22"}
PASSWORD = "drain-test-password"

APPLIANCE = f"""
[dataplane]
lcores = "0-1"
flow_capacity = 65536
hugepages = true
memory_mb = 256
mbufs = 8191
[[port]]
name = "p0"
device = "net_af_packet0,iface=lb0"
tap = "pydp-p0"
[[cluster]]
name = "web"
cluster_ip = "{VIP}"
[cluster.carp]
vhid = 1
[cluster.health]
type = "none"
[[cluster.edge]]
name = "e1"
ip = "{IPS['e1']}"
mac = "{MACS['e1']}"
[[cluster.edge]]
name = "e2"
ip = "{IPS['e2']}"
mac = "{MACS['e2']}"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _applied(ctl, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = rpc.call(ctl.socket, "status")
            if s["dataplane_up"] and s["daemon"]["revision"] == s["daemon"]["applied_revision"]:
                return s
        except ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the daemon did not apply the config:\n{ctl.log.read_text()[-3000:]}")
        time.sleep(0.1)


def _send(cl_ns, tmp, flows: int) -> dict:
    return traffic(cl_ns, tmp, "--iface", "c0", "--lb-mac", LB_MAC, "--vip", VIP, "--flows", flows, "--rounds", 3,
                   "--pps", 2000, "--settle", 1.0)


def test_an_edge_drained_from_the_page_gets_no_new_flows(tmp_path):
    shots = os.environ.get("PYDP_SCREENSHOTS") or str(tmp_path)
    os.makedirs(shots, exist_ok=True)
    with contextlib.ExitStack() as stack:
        lb_ns = stack.enter_context(netns("pydpt-wlb"))
        cl_ns = stack.enter_context(netns("pydpt-wcl"))
        veth(lb_ns, "lb0", "c0", ns_b=cl_ns, mac_a=LB_MAC)
        dp = DataplaneProcess(lb_ns, APPLIANCE, tmp_path, args=["--managed"])
        stack.callback(dp.stop)
        dp.start()
        ns_run(lb_ns, "ip", "link", "set", "pydp-p0", "up")
        ns_run(lb_ns, "ip", "addr", "add", "198.51.100.2/24", "dev", "pydp-p0")
        db = tmp_path / "pydp.db"
        (tmp_path / "appliance.toml").write_text(APPLIANCE)
        subprocess.run([sys.executable, "-P", "-m", "control.cli", "--db", str(db), "import",
                        str(tmp_path / "appliance.toml")], check=True, capture_output=True, timeout=60)
        users = str(tmp_path / "http-users")
        auth.set_entry(users, "admin", "admin", auth.hash_password(PASSWORD, n=1 << 10))
        port = _free_port()
        ctl = ControlProcess(None, tmp_path, db, dp.shm, metrics="",
                             args=["--own-all", "--http", f"127.0.0.1:{port}", "--http-users", users])
        stack.callback(ctl.stop)
        ctl.start()
        _applied(ctl)

        # flows 0..199 start while both edges are active
        first = _send(cl_ns, tmp_path, 200)
        assert first["missing"] == 0, first["missing_first"]
        before = {flow: next(iter(macs)) for flow, macs in first["per_flow"].items()}
        on_e1 = {f for f, mac in before.items() if mac == MACS["e1"]}
        assert 50 <= len(on_e1) <= 150, f"{len(on_e1)} of 200 flows on e1 (about half expected)"

        url = f"http://127.0.0.1:{port}/"
        with chromium() as driver:
            sign_in_page(driver, url, "admin", PASSWORD)
            css(driver, '#clusters tr[data-name="web"] a.cluster-link').click()
            wait(driver, lambda d: len(d.find_elements("css selector", "#edges tbody tr")) == 2, "the edges page")
            assert "down" not in css(driver, "#dp-banner").text or not css(driver, "#dp-banner").is_displayed()
            css(driver, '#edges tr[data-edge="e1"] button.drain').click()
            wait(driver, lambda d: css(d, '#edges tr[data-edge="e1"] .admin-state').text == "draining", "drained")
            _applied(ctl)
            web = observe.clusters(dp.region)["web"]
            assert web["edges"]["e1"]["state"] == "draining"

            # flows 0..199 again (existing) and 200..399 (new)
            second = _send(cl_ns, tmp_path, 400)
            assert second["missing"] == 0, second["missing_first"]
            new_on_e1 = 0
            for flow, macs in second["per_flow"].items():
                assert len(macs) == 1, f"flow {flow} split: {macs}"
                mac = next(iter(macs))
                if int(flow) < 200:
                    assert mac == before[flow], f"existing flow {flow} moved from {before[flow]} to {mac}"
                elif mac == MACS["e1"]:
                    new_on_e1 += 1
            assert new_on_e1 == 0, f"{new_on_e1} new flows reached the drained edge"
            # the page shows it: e1 draining, its traffic counted, the data plane up
            driver.refresh()
            wait(driver, lambda d: len(d.find_elements("css selector", "#edges tbody tr")) == 2, "reloaded")
            wait(driver, lambda d: not css(d, "#dp-banner").is_displayed(), "no data-plane-down banner")
            driver.save_screenshot(os.path.join(shots, "web-drain-live.png"))
            css(driver, "#nav-overview").click()
            wait(driver, lambda d: css(d, "#card-dataplane").text.endswith("up"), "the overview: data plane up")
            assert "flows" in css(driver, "#card-flows").text
            assert css(driver, '#carp tr[data-name="web"]').text.split()[3] == "master"     # --own-all
            driver.save_screenshot(os.path.join(shots, "web-overview-live.png"))
        h = subprocess.run([sys.executable, "-P", "-m", "control.cli", "--db", str(db), "history", "--limit", "1"],
                           capture_output=True, text=True, timeout=30, check=True).stdout
        assert "http" in h and "admin" in h and 'set_edge_state web/e1 state="draining"' in h
