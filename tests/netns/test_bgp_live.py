"""failover = "bgp" end to end: a real BIRD 2 "router" in one namespace peers (with BFD) with the BIRD that a real
pydp-control runs next to a real pydp-dataplane in another. The router's own table (`birdc show route`) shows what
the appliance announces: the cluster route appears while an edge is healthy, and is withdrawn when every edge goes
down, on `pydpctl appliance drain`, on SIGTERM of pydp-control, and comes back each time. BIRD killed under
pydp-control is started again.

The BGP and BFD packets take the appliance's real path: the router's veth -> the data plane's af_packet port ->
the exception path (TAP pydp-p0) -> the appliance's kernel -> BIRD, and back. The edges are addresses of the router's
side of the link, checked with ICMP: removing them takes the edges down.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import pytest

from netlab import ControlProcess, DataplaneProcess, NsProcess, eventually, netns, ns_run, scrape, veth
from control import rpc

pytestmark = [pytest.mark.dpdk, pytest.mark.netns]

VIP = "203.0.113.10"
APPLIANCE = "198.51.100.2"
ROUTER = "198.51.100.1"
EDGES = {"e1": "198.51.100.21", "e2": "198.51.100.22"}
METRICS = "127.0.0.1:19479"


def appliance_text(tmp) -> str:
    edges = "".join(f'[[cluster.edge]]\nname = "{n}"\nip = "{ip}"\n' for n, ip in EDGES.items())
    return f"""
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

[bgp]
local_as = 64512
router_id = "{APPLIANCE}"
communities = ["64512:100"]
bfd = true
bfd_interval_ms = 100
bfd_multiplier = 3
drain_timeout = 600
socket = "{tmp}/bird.ctl"
config_path = "{tmp}/bird.conf"
[[bgp.peer]]
address = "{ROUTER}"
as = 64500

[[cluster]]
name = "web"
cluster_ip = "{VIP}"
failover = "bgp"
[cluster.health]
type = "icmp"
interval = 0.5
timeout = 0.3
rise = 1
fall = 2
{edges}"""


ROUTER_CONF = f"""
router id {ROUTER};
timeformat protocol iso long;
protocol device {{ scan time 10; }}
protocol bfd {{ interface "*" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }}; }}
protocol bgp lb1 {{
  local {ROUTER} as 64500;
  neighbor {APPLIANCE} as 64512;
  hold time 9;
  connect retry time 1;
  error wait time 1, 5;
  bfd on;
  ipv4 {{ import all; export none; }};
}}
"""


def birdc(ns, sock, *args) -> str:
    return ns_run(ns, "birdc", "-s", str(sock), *args, check=False).stdout


def route(lab) -> str | None:
    """The router's route to the cluster IP (birdc show route all), None when it has none."""
    out = birdc(lab["rt_ns"], lab["rt_sock"], "show", "route", "for", f"{VIP}/32", "all")
    return out if f"{VIP}/32" in out and "Type: BGP" in out else None


def no_route(lab) -> bool:
    out = birdc(lab["rt_ns"], lab["rt_sock"], "show", "route", "for", f"{VIP}/32", "all")
    return "BIRD" in out and f"{VIP}/32" not in out


def status(lab) -> dict:
    return rpc.call(lab["ctl"].socket, "status")


def pydpctl(lab, *args) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-P", "-m", "control.cli", "--socket", lab["ctl"].socket, *args],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"pydpctl {' '.join(args)}: {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def announced(lab) -> tuple | None:
    """(announced, reason) of web in pydp-control's status."""
    try:
        c = (status(lab).get("bgp") or {}).get("clusters", {}).get("web")
    except ConnectionError:
        return None
    return (c["announced"], c.get("reason")) if c else None


def log_tail(lab) -> str:
    return lab["ctl"].log.read_text()[-4000:]


def edges(lab, present: bool) -> None:
    for ip in EDGES.values():
        ns_run(lab["rt_ns"], "ip", "addr", "add" if present else "del", f"{ip}/24", "dev", "r0", check=False)


def wait_announced(lab, timeout=30.0) -> str:
    return eventually(lambda: route(lab), timeout,
                      lambda: f"the route to {VIP} on the router: {announced(lab)}\n"
                              f"{birdc(lab['rt_ns'], lab['rt_sock'], 'show', 'protocols', 'all', 'lb1')}\n"
                              f"{log_tail(lab)}", interval=0.1)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bgp-live")
    with contextlib.ExitStack() as stack:
        lb_ns = stack.enter_context(netns("pydpt-bgplb"))
        rt_ns = stack.enter_context(netns("pydpt-bgprt"))
        veth(lb_ns, "lb0", "r0", ns_b=rt_ns, mac_a="02:00:00:00:01:01", mac_b="02:00:00:00:0a:01")
        ns_run(rt_ns, "ip", "addr", "add", f"{ROUTER}/24", "dev", "r0")
        text = appliance_text(tmp)
        dp = DataplaneProcess(lb_ns, text, tmp, args=["--managed"])
        stack.callback(dp.stop)
        dp.start()
        ns_run(lb_ns, "ip", "link", "set", "pydp-p0", "up")
        ns_run(lb_ns, "ip", "addr", "add", f"{APPLIANCE}/24", "dev", "pydp-p0")
        # the router: BIRD with BFD, importing what the appliance announces
        (tmp / "router.conf").write_text(ROUTER_CONF)
        rt_sock = tmp / "router.ctl"
        router = NsProcess("router-bird", rt_ns, ["bird", "-f", "-c", str(tmp / "router.conf"), "-s", str(rt_sock)],
                           tmp / "router.log")
        stack.callback(router.term)
        db = tmp / "pydp.db"
        (tmp / "appliance.toml").write_text(text)
        imp = subprocess.run([sys.executable, "-P", "-m", "control.cli", "--db", str(db), "import",
                              str(tmp / "appliance.toml")], capture_output=True, text=True, timeout=60)
        assert imp.returncode == 0, imp.stderr
        ctl = ControlProcess(lb_ns, tmp, db, dp.shm, metrics=METRICS)
        stack.callback(ctl.stop)
        ctl.start()
        lab = {"lb_ns": lb_ns, "rt_ns": rt_ns, "dp": dp, "ctl": ctl, "tmp": tmp, "db": db, "rt_sock": rt_sock,
               "router": router}
        edges(lab, True)
        yield lab


def test_session_with_bfd_and_the_route_on_the_router(lab):
    edges(lab, True)
    r = wait_announced(lab)
    assert f"via {APPLIANCE}" in r and "(64512,100)" in r and "BGP.as_path: 64512" in r
    # BFD runs on the router's side of the session too
    eventually(lambda: "Up" in birdc(lab["rt_ns"], lab["rt_sock"], "show", "bfd", "sessions"), 10,
               "the router's BFD session up")
    s = eventually(lambda: (lambda st: st if st["bgp"]["sessions"] and st["bgp"]["sessions"][0]["bfd"] == "Up"
                            and st["bgp"]["sessions"][0]["routes"] == 1 else None)(status(lab)), 10,
                   lambda: json.dumps(status(lab).get("bgp"), indent=1))
    b = s["bgp"]
    assert b["engine"] == "bird" and b["running"] and b["version"].startswith("2.")
    sess = b["sessions"][0]
    assert (sess["peer"], sess["as"], sess["state"]) == (ROUTER, 64500, "Established") and sess["since"]
    assert b["clusters"]["web"]["announced"] and b["clusters"]["web"]["reason"] == "fit"
    row = next(c for c in s["clusters"] if c["name"] == "web")
    assert row["active"] and row["failover"] == "bgp" and row["bgp"]["announced"]
    text = pydpctl(lab, "status").stdout
    assert "Established" in text and "announced" in text and ROUTER in text
    m = scrape(lab["lb_ns"], METRICS)
    assert f'pydp_bgp_session_up{{peer="{ROUTER}"}} 1.0' in m and 'pydp_bgp_announced{cluster="web"} 1.0' in m
    assert lab["ctl"].events("bgp_session_up") and lab["ctl"].events("bgp_announce")


def test_session_down_and_up_are_seen(lab):
    edges(lab, True)
    wait_announced(lab)
    eventually(lambda: status(lab)["bgp"]["sessions"][0]["established"], 15, "the session established")
    downs = len(lab["ctl"].events("bgp_session_down"))
    birdc(lab["rt_ns"], lab["rt_sock"], "disable", "lb1")          # the router ends the session
    s = eventually(lambda: (lambda st: st if not st["bgp"]["sessions"][0]["established"] else None)(status(lab)),
                   10, "the session seen down")
    assert s["bgp"]["sessions"][0]["state"] != "Established"
    eventually(lambda: len(lab["ctl"].events("bgp_session_down")) > downs, 5, "bgp_session_down logged")
    assert f'pydp_bgp_session_up{{peer="{ROUTER}"}} 0.0' in scrape(lab["lb_ns"], METRICS)
    birdc(lab["rt_ns"], lab["rt_sock"], "enable", "lb1")
    wait_announced(lab)
    eventually(lambda: status(lab)["bgp"]["sessions"][0]["established"], 15, "the session established again")
    assert status(lab)["bgp"]["sessions"][0]["changes"] >= 2


def test_all_edges_down_withdraws_and_an_edge_back_announces(lab):
    edges(lab, True)
    wait_announced(lab)
    edges(lab, False)
    eventually(lambda: no_route(lab), 30, lambda: f"the route withdrawn: {announced(lab)}\n{log_tail(lab)}",
               interval=0.1)
    assert announced(lab) == (False, "no healthy edge")
    assert any(e.get("reason") == "no healthy edge" for e in lab["ctl"].events("bgp_withdraw"))
    edges(lab, True)
    wait_announced(lab)
    assert announced(lab) == (True, "fit")


def test_drain_withdraws_keeps_forwarding_and_undrain_announces(lab):
    edges(lab, True)
    wait_announced(lab)
    out = json.loads(pydpctl(lab, "appliance", "drain", "--timeout", "600", "--json").stdout)
    assert out["draining"] and out["timeout"] == 600
    eventually(lambda: no_route(lab), 10, lambda: f"the route withdrawn on drain: {log_tail(lab)}", interval=0.1)
    s = status(lab)
    assert s["drain"]["draining"] and s["bgp"]["clusters"]["web"]["reason"] == "draining"
    # still owned: the data plane keeps forwarding the established flows until the timeout
    assert next(c for c in s["clusters"] if c["name"] == "web")["active"]
    assert "DRAINING" in pydpctl(lab, "status").stdout
    pydpctl(lab, "appliance", "undrain")
    wait_announced(lab)
    assert not status(lab)["drain"]["draining"]
    # a drain past its timeout lets the cluster go: the data plane stops forwarding for it
    pydpctl(lab, "appliance", "drain", "--timeout", "0")
    eventually(lambda: not next(c for c in status(lab)["clusters"] if c["name"] == "web")["active"], 10,
               "web let go after the drain timeout")
    assert no_route(lab)
    pydpctl(lab, "appliance", "undrain")
    wait_announced(lab)


def test_bgp_changes_reconfigure_bird_without_dropping_the_session(lab):
    edges(lab, True)
    wait_announced(lab)
    eventually(lambda: status(lab)["bgp"]["sessions"][0]["established"], 15, "the session established")
    changes = status(lab)["bgp"]["sessions"][0]["changes"]
    try:
        pydpctl(lab, "bgp", "set", "--community", "64512:200")
        eventually(lambda: (route(lab) or "").count("(64512,200)") == 1, 15,
                   lambda: f"the new community on the router: {route(lab)}\n{log_tail(lab)}", interval=0.1)
        assert "(64512,100)" not in route(lab)
        assert lab["ctl"].events("bgp_engine_reconfigured")
        # a refused change changes nothing: the running BIRD keeps its config
        p = subprocess.run([sys.executable, "-P", "-m", "control.cli", "--socket", lab["ctl"].socket, "bgp", "set",
                            "--bfd-multiplier", "0"], capture_output=True, text=True, timeout=60)
        assert p.returncode == 1 and "bgp.bfd_multiplier" in p.stderr
    finally:
        pydpctl(lab, "bgp", "set", "--community", "64512:100")
    eventually(lambda: "(64512,100)" in (route(lab) or ""), 15, "the community back")
    s = status(lab)["bgp"]["sessions"][0]
    assert s["established"] and s["changes"] == changes          # the session stayed up through both changes


def test_sigterm_withdraws_first_and_a_restart_announces_again(lab):
    edges(lab, True)
    wait_announced(lab)
    bird_pid = status(lab)["bgp"]["pid"]
    lab["ctl"].stop()
    eventually(lambda: no_route(lab), 10, "the route withdrawn on SIGTERM", interval=0.1)
    names = [e["event"] for e in lab["ctl"].events() if e.get("event") in ("bgp_withdraw", "daemon_stopped")]
    assert names[-2:] == ["bgp_withdraw", "daemon_stopped"], names
    assert lab["ctl"].events("bgp_withdraw")[-1]["reason"] == "pydp-control stopping"
    # BIRD went with pydp-control
    eventually(lambda: ns_run(lab["lb_ns"], "kill", "-0", str(bird_pid), check=False).returncode != 0, 10,
               "the appliance's BIRD to exit")
    lab["ctl"].start()
    wait_announced(lab)


def test_bird_killed_is_started_again(lab):
    edges(lab, True)
    wait_announced(lab)
    eventually(lambda: status(lab)["bgp"]["sessions"][0]["established"], 15, "the session established")
    pid = status(lab)["bgp"]["pid"]
    ns_run(lab["lb_ns"], "kill", "-9", str(pid))
    # no graceful restart: the router drops the route at once, it does not keep it as stale
    eventually(lambda: no_route(lab), 10, "the route dropped by the router when BIRD died", interval=0.05)
    eventually(lambda: lab["ctl"].events("bgp_engine_restarted"), 15,
               lambda: f"bgp_engine_restarted: {log_tail(lab)}")
    wait_announced(lab)
    s = eventually(lambda: (lambda st: st if st["bgp"]["sessions"][0]["established"] else None)(status(lab)), 15,
                   "the session established again")
    assert s["bgp"]["pid"] != pid and s["bgp"]["restarts"] >= 1
