"""Health checks: the per-edge state machine with a fake clock, the HTTP body reader on canned bytes, the checker
with a fake probe, and every probe against real servers in network namespaces.

Namespace topology (each test module run builds it once and removes it, also on failure)::

    lb   eth0 198.51.100.2/24, 198.51.100.3/24, 2001:db8:51::2/64   (the appliance: probes run here)
     |   veth
    edge eth0 198.51.100.21/24, 2001:db8:51::21/64                 (nginx: 80, 443 with a self-signed cert)

198.51.100.99 is blackholed: lb has a permanent neighbour entry for it with a MAC nobody owns, so what is sent
there vanishes without an answer (the timeout cases). The probes run in lb through a small asyncio script
(``ip netns exec``): this test process stays in the root namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from control import health
from control.health import Damping, EdgeHealth, HealthChecker, ProbeResult, State
from pydp.config import HealthConfig

LB4, LB4B, EDGE4, HOLE4 = "198.51.100.2", "198.51.100.3", "198.51.100.21", "198.51.100.99"
LB6, EDGE6 = "2001:db8:51::2", "2001:db8:51::21"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


# ---- EdgeHealth: rise/fall, first decision, counters (fake clock) -----------------------------------------

def feed(h: EdgeHealth, results: str, t0: float = 0.0, step: float = 1.0):
    """Feeds "+" (success) and "-" (failure) one step apart; returns the transitions (with their index)."""
    out = []
    for i, c in enumerate(results):
        tr = h.observe(c == "+", t0 + i * step, "probe detail")
        if tr is not None:
            out.append((i, tr))
    return out


def test_first_decision_needs_rise_successes():
    h = EdgeHealth(rise=2, fall=3)
    assert h.state is State.UNKNOWN
    assert h.observe(True, 0.0) is None and h.state is State.UNKNOWN
    tr = h.observe(True, 1.0, "HTTP 200")
    assert tr is not None and tr.old is State.UNKNOWN and tr.new is State.UP and tr.up
    assert "2 successful checks in a row" in tr.reason and "HTTP 200" in tr.reason and tr.at == 1.0
    assert h.transitions == 0           # the first decision is not a state change between up and down


def test_first_decision_needs_fall_failures():
    h = EdgeHealth(rise=2, fall=3)
    assert feed(h, "+-+--") == []       # runs are reset by the other outcome
    (i, tr), = feed(h, "-", t0=5.0)
    assert (tr.old, tr.new) == (State.UNKNOWN, State.DOWN) and not tr.up
    assert h.checks == 6 and h.failures == 4 and h.transitions == 0


def test_rise_and_fall_in_a_row():
    h = EdgeHealth(rise=2, fall=3, damping=None)
    trs = feed(h, "++" "--+---" "+-++")
    assert [(i, t.new) for i, t in trs] == [(1, State.UP), (7, State.DOWN), (11, State.UP)]
    assert h.transitions == 2 and h.checks == 12 and h.failures == 6
    snap = h.snapshot(20.0)
    assert snap["state"] == "up" and snap["transitions"] == 2 and snap["since_change_s"] == 9.0


def test_rise_fall_of_one_follow_every_check():
    h = EdgeHealth(rise=1, fall=1, damping=None)
    assert [t.new for _, t in feed(h, "+-+")] == [State.UP, State.DOWN, State.UP]


def test_reconfigure_keeps_state_restarts_runs():
    h = EdgeHealth(rise=2, fall=3)
    feed(h, "++--")
    h.reconfigure(rise=1, fall=2)
    assert h.state is State.UP and h.fail_run == 0
    assert h.observe(False, 10) is None
    assert h.observe(False, 11).new is State.DOWN


# ---- flap damping (fake clock) --------------------------------------------------------------------------------

def test_default_damping_numbers():
    d = Damping()
    assert (d.half_life, d.penalty, d.suppress, d.reuse, d.max_suppress) == (30.0, 1000.0, 2500.0, 750.0, 120.0)
    assert d.ceiling == 750.0 * 16
    with pytest.raises(ValueError):
        Damping(reuse=3000.0)
    with pytest.raises(ValueError):
        Damping(suppress=20000.0)       # above the ceiling: unreachable


def test_one_outage_is_not_damped():
    h = EdgeHealth(rise=1, fall=1)
    trs = feed(h, "+-+")                # unknown -> up (no penalty), down, up: 2 flaps
    assert [t.new for _, t in trs] == [State.UP, State.DOWN, State.UP]
    assert not h.damped and h.suppressed == 0
    assert 1900 < h.penalty(2.0) < 2000


def test_penalty_decays_with_half_life():
    h = EdgeHealth(rise=1, fall=1)
    feed(h, "+-")                       # one flap at t=1
    assert h.penalty(1.0) == pytest.approx(1000.0)
    assert h.penalty(31.0) == pytest.approx(500.0)
    assert h.penalty(91.0) == pytest.approx(125.0)


def test_flapping_edge_is_held_down_until_reuse():
    h = EdgeHealth(rise=1, fall=1)
    trs = feed(h, "+-+-")               # third flap at t=3: penalty ~2900 >= 2500
    assert [t.new for _, t in trs] == [State.UP, State.DOWN, State.UP, State.DOWN]
    assert h.damped and h.suppressed == 1 and "flapping: held down" in trs[-1][1].reason
    p = h.penalty(3.0)
    assert 2800 < p < 3000
    release = h.reuse_at(3.0)
    assert release == pytest.approx(3.0 + 30.0 * math.log2(p / 750.0))
    assert 58.5 < release - 3.0 < 59.5  # about two half-lives

    # the checks succeed again: the edge stays DOWN while damped (checked state up, reported down); that change
    # is a flap too, and moves the release later
    assert h.observe(True, 4.0) is None
    assert (h.raw, h.state) == (State.UP, State.DOWN)
    assert h.penalty(4.0) == pytest.approx(p * 0.5 ** (1 / 30) + 1000.0)
    release = h.reuse_at(4.0)
    assert 70.5 < release - 4.0 < 71.5
    assert h.snapshot(4.0)["checked"] == "up" and h.snapshot(4.0)["damped"] is True
    assert h.poll(release - 0.5) is None and h.state is State.DOWN
    assert h.observe(True, release - 0.1) is None
    tr = h.poll(release)
    assert tr is not None and tr.new is State.UP and "flap damping released" in tr.reason
    assert not h.damped and h.suppressed == 1
    assert h.transitions == 4           # down, up, down, up (released): the held period is one DOWN
    assert h.observe(True, release + 1.0) is None and h.state is State.UP


def test_suppression_on_an_up_change_holds_it():
    h = EdgeHealth(rise=1, fall=1, damping=Damping(suppress=2950.0))
    feed(h, "+-+-")                     # penalty about 2930 at t=3: not yet damped
    assert not h.damped
    tr = h.observe(True, 3.1)           # the fourth flap is to UP: it is held, nothing is reported
    assert tr is None and h.damped and h.state is State.DOWN and h.suppressed == 1


def test_release_while_checks_fail_reports_nothing():
    h = EdgeHealth(rise=1, fall=1)
    feed(h, "+-+-")
    release = h.reuse_at(3.0)
    assert h.observe(False, release + 1.0) is None
    assert not h.damped and h.state is State.DOWN


def test_flaps_far_apart_are_never_damped():
    h = EdgeHealth(rise=1, fall=1)
    for i, c in enumerate("+-+-+-+-+-"):
        h.observe(c == "+", i * 60.0)   # two half-lives between flaps
    assert h.suppressed == 0 and h.transitions == 9


def test_penalty_ceiling_bounds_the_hold():
    h = EdgeHealth(rise=1, fall=1)
    feed(h, "+-" * 50, step=0.1)        # 99 flaps in 10 s
    d = h.damping
    assert h.penalty(9.9) == pytest.approx(d.ceiling)
    assert h.reuse_at(9.9) - 9.9 == pytest.approx(d.max_suppress)
    assert h.suppressed == 1            # one suppression period, however many flaps in it


def test_no_damping():
    h = EdgeHealth(rise=1, fall=1, damping=None)
    feed(h, "+-" * 20)
    assert not h.damped and h.state is State.DOWN and h.penalty(100.0) == 0.0 and h.reuse_at(100.0) is None


# ---- HTTP body reader on canned bytes ----------------------------------------------------------------------

def _read(raw: bytes, headers: dict) -> bytes:
    async def go():
        r = asyncio.StreamReader()
        r.feed_data(raw)
        r.feed_eof()
        return await health._read_body(r, headers)
    return asyncio.run(go())


def test_body_reader_chunked_length_and_eof():
    assert _read(b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", {"transfer-encoding": "chunked"}) == b"hello world"
    assert _read(b"hello world and more", {"content-length": "11"}) == b"hello world"
    assert _read(b"until the end", {}) == b"until the end"
    big = b"x" * (health.MAX_BODY + 10)
    assert len(_read(big, {})) == health.MAX_BODY
    assert len(_read(b"%x\r\n" % len(big) + big + b"\r\n0\r\n\r\n", {"transfer-encoding": "chunked"})) == health.MAX_BODY


def test_sni_and_default_host():
    assert health._sni("edge1.example") == "edge1.example"
    assert health._sni("edge1.example:8443") == "edge1.example"
    assert health._sni("198.51.100.21") == "" and health._sni("[2001:db8::1]:443") == "" and health._sni("") == ""
    assert health._default_host("198.51.100.21", 80, False) == "198.51.100.21"
    assert health._default_host("198.51.100.21", 8080, False) == "198.51.100.21:8080"
    assert health._default_host("2001:db8::1", 443, True) == "[2001:db8::1]"


# ---- HealthChecker with a fake probe -------------------------------------------------------------------------

def test_checker_targets_live_with_fake_probe():
    """Add, update and remove edges live; type none is up at once; states; close. Intervals of 50 ms."""
    fast = dict(interval=0.05, timeout=0.02, rise=2, fall=2)
    answers = {"10.0.0.1": True, "10.0.0.2": False}
    probed: list[str] = []

    async def probe(ip, cfg, source):
        probed.append(ip)
        assert source == "10.0.0.254"
        return ProbeResult(answers.get(ip, True), f"fake {ip}", 0.001)

    async def main():
        changes = []
        chk = HealthChecker(lambda c, e, up, why: changes.append((c, e, up)), source=["10.0.0.254", "2001:db8::fe"],
                            probe=probe)
        chk.set_targets({("web", "e1"): ("10.0.0.1", HealthConfig(type="tcp", **fast)),
                         ("web", "e2"): ("10.0.0.2", HealthConfig(type="tcp", **fast)),
                         ("web", "e3"): ("10.0.0.3", HealthConfig(type="none"))})
        assert changes == [("web", "e3", True)]     # at once, never probed
        await asyncio.sleep(0.4)
        assert set(changes) == {("web", "e1", True), ("web", "e2", False), ("web", "e3", True)}
        st = chk.states()
        assert st[("web", "e1")]["state"] == "up" and st[("web", "e2")]["state"] == "down"
        assert st[("web", "e3")]["checks"] == 0 and "10.0.0.3" not in probed
        e1_checks = st[("web", "e1")]["checks"]
        assert 4 <= e1_checks <= 10

        # an unchanged target is not touched; a changed one keeps its state; a removed one stops
        answers["10.0.0.2"] = True
        chk.set_targets({("web", "e1"): ("10.0.0.1", HealthConfig(type="tcp", **fast)),
                         ("web", "e2"): ("10.0.0.2", HealthConfig(type="http", **fast))})
        assert chk.states()[("web", "e1")]["checks"] == e1_checks
        assert chk.state("web", "e2") is State.DOWN and chk.state("web", "e3") is None
        await asyncio.sleep(0.4)
        assert ("web", "e2", True) in changes and chk.state("web", "e2") is State.UP
        assert chk.states()[("web", "e2")]["transitions"] == 1
        await chk.close()
        n = len(probed)
        await asyncio.sleep(0.15)
        assert len(probed) == n and chk.states() == {}

    asyncio.run(main())


def test_checker_spreads_first_checks():
    """Random initial offsets within the interval: 20 edges do not all start at the same instant."""
    starts: dict[str, float] = {}

    async def probe(ip, cfg, source):
        starts.setdefault(ip, asyncio.get_running_loop().time())
        return ProbeResult(True, "fake", 0.0)

    async def main():
        chk = HealthChecker(probe=probe)
        t0 = asyncio.get_running_loop().time()
        chk.set_targets({("c", f"e{i}"): (f"10.0.1.{i}", HealthConfig(interval=0.5, timeout=0.1))
                         for i in range(1, 21)})
        await asyncio.sleep(0.6)
        await chk.close()
        offs = sorted(t - t0 for t in starts.values())
        assert len(offs) == 20 and offs[-1] - offs[0] > 0.2 and offs[-1] <= 0.55

    asyncio.run(main())


# ---- real probes in network namespaces -------------------------------------------------------------------

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/t-body;
    proxy_temp_path {d}/t-proxy;
    fastcgi_temp_path {d}/t-fastcgi;
    uwsgi_temp_path {d}/t-uwsgi;
    scgi_temp_path {d}/t-scgi;
    default_type text/plain;
    server {{
        listen {edge4}:80;
        listen [{edge6}]:80;
        listen {edge4}:443 ssl;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        root {d}/www;
        location = /health {{ return 200 "healthy\\n"; }}
        location = /bad {{ return 503 "bad\\n"; }}
        location = /host {{ return 200 "host=$host\\n"; }}
        location = /src {{ return 200 "src=$remote_addr\\n"; }}
        location = /sni {{ return 200 "sni=[$ssl_server_name]\\n"; }}
        location /chunked/ {{ sub_filter_types *; sub_filter "MARK" "MARK"; sub_filter_once off; alias {d}/www/; }}
    }}
}}
"""


class Nginx:
    """nginx in one namespace, single process, everything in its own directory."""

    def __init__(self, ns: str, d: Path):
        self.ns, self.d = ns, d
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        pid = self.d / "nginx.pid"
        with contextlib.suppress(FileNotFoundError):
            pid.unlink()
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, NGINX, "-p", str(self.d), "-c",
                                      str(self.d / "nginx.conf"), "-e", str(self.d / "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not pid.exists():         # written after the listening sockets are open
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("nginx did not start:\n" + (self.d / "error.log").read_text())
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)       # fast shutdown: listeners closed at once
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from netlab import netns, ns_run, run, veth

    d = tmp_path_factory.mktemp("health")
    (d / "www").mkdir()
    # a 96 KiB file: MARK-EARLY at the start, MARK-LATE beyond the 64 KiB the probe reads
    (d / "www" / "big.txt").write_bytes(b"MARK-EARLY\n" + b"." * (90 * 1024) + b"\nMARK-LATE\n")
    (d / "nginx.conf").write_text(NGINX_CONF.format(d=d, edge4=EDGE4, edge6=EDGE6))
    run(OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=edge1", "-days", "1",
        "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"))
    with contextlib.ExitStack() as stack:
        lb = stack.enter_context(netns("pydph"))
        edge = stack.enter_context(netns("pydph"))
        veth(lb, "eth0", "eth0", edge)
        for ns, addrs in ((lb, [f"{LB4}/24", f"{LB4B}/24"]), (edge, [f"{EDGE4}/24"])):
            for a in addrs:
                run("ip", "-n", ns, "addr", "add", a, "dev", "eth0")
        for ns, a6 in ((lb, LB6), (edge, EDGE6)):
            ns_run(ns, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0")
            run("ip", "-n", ns, "addr", "add", f"{a6}/64", "dev", "eth0", "nodad")
        run("ip", "-n", lb, "neigh", "add", HOLE4, "lladdr", "02:00:00:00:00:99", "dev", "eth0", "nud", "permanent")
        ng = Nginx(edge, d)
        stack.callback(ng.stop)
        ng.start()
        yield {"lb": lb, "edge": edge, "dir": d, "nginx": ng}


PROBE_SCRIPT = r"""
import asyncio, json, sys
from control import health

async def one(c):
    r = await getattr(health, c["fn"])(*c.get("args", []), **c.get("kw", {}))
    return c["name"], {"ok": r.ok, "detail": r.detail, "latency_s": r.latency_s}

async def main():
    cases = json.loads(sys.argv[1])
    print(json.dumps(dict(await asyncio.gather(*(one(c) for c in cases)))))

asyncio.run(main())
"""


def probes_in(lab, cases: list[dict]) -> dict:
    """Runs the cases concurrently in the lb namespace; {name: {"ok", "detail", "latency_s"}}."""
    from netlab import ns_run

    script = lab["dir"] / "probe.py"
    script.write_text(PROBE_SCRIPT)
    p = ns_run(lab["lb"], sys.executable, "-P", str(script), json.dumps(cases), check=False, timeout=30)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def case(name, fn, *args, **kw):
    kw.setdefault("timeout", 0.5)
    return {"name": name, "fn": fn, "args": list(args), "kw": kw}


@pytest.mark.netns
def test_probes_against_nginx(lab):
    cases = [
        case("tcp_ok", "tcp_connect", EDGE4, 80),
        case("tcp_refused", "tcp_connect", EDGE4, 81),
        case("tcp_timeout", "tcp_connect", HOLE4, 80),
        case("tcp_v6", "tcp_connect", EDGE6, 80),
        case("tcp_source", "tcp_connect", EDGE4, 80, source=LB4B),
        case("http_ok", "http_get", EDGE4, 80, "/health"),
        case("http_503", "http_get", EDGE4, 80, "/bad"),
        case("http_503_expected", "http_get", EDGE4, 80, "/bad", expect_status=503),
        case("http_404", "http_get", EDGE4, 80, "/nothing-here"),
        case("body_ok", "http_get", EDGE4, 80, "/health", expect_body="healthy"),
        case("body_missing", "http_get", EDGE4, 80, "/health", expect_body="sick"),
        case("host_default", "http_get", EDGE4, 80, "/host", expect_body=f"host={EDGE4}\n"),
        case("host_set", "http_get", EDGE4, 80, "/host", host="edge1.example", expect_body="host=edge1.example\n"),
        case("host_v6", "http_get", EDGE6, 80, "/host", expect_body=f"host=[{EDGE6}]\n"),
        case("source_http", "http_get", EDGE4, 80, "/src", source=LB4B, expect_body=f"src={LB4B}\n"),
        case("source_default", "http_get", EDGE4, 80, "/src", expect_body=f"src={LB4}\n"),
        case("big_early", "http_get", EDGE4, 80, "/big.txt", expect_body="MARK-EARLY"),
        case("big_late", "http_get", EDGE4, 80, "/big.txt", expect_body="MARK-LATE"),
        case("chunked_early", "http_get", EDGE4, 80, "/chunked/big.txt", expect_body="MARK-EARLY"),
        case("http_refused", "http_get", EDGE4, 81, "/health"),
        case("http_timeout", "http_get", HOLE4, 80, "/health"),
        case("https_ok", "http_get", EDGE4, 443, "/health", tls=True, expect_body="healthy"),
        case("https_sni_name", "http_get", EDGE4, 443, "/sni", "edge1.example", tls=True,
             expect_body="sni=[edge1.example]"),
        case("https_no_sni_for_ip", "http_get", EDGE4, 443, "/sni", tls=True, expect_body="sni=[]"),
        case("https_on_plain_port", "http_get", EDGE4, 80, "/health", tls=True),
        case("icmp_ok", "icmp_echo", EDGE4),
        case("icmp_source", "icmp_echo", EDGE4, source=LB4B),
        case("icmp_v6", "icmp_echo", EDGE6),
        case("icmp_timeout", "icmp_echo", HOLE4),
    ]
    r = probes_in(lab, cases)
    for name, res in sorted(r.items()):
        print(f"  {name:22} {'ok  ' if res['ok'] else 'FAIL'} {res['latency_s'] * 1000:7.1f} ms  {res['detail']}")
    expect_ok = {"tcp_ok", "tcp_v6", "tcp_source", "http_ok", "http_503_expected", "body_ok", "host_default",
                 "host_set", "host_v6", "source_http", "source_default", "big_early", "chunked_early", "https_ok",
                 "https_sni_name", "https_no_sni_for_ip", "icmp_ok", "icmp_source", "icmp_v6"}
    assert {n for n, res in r.items() if res["ok"]} == expect_ok
    assert "refused" in r["tcp_refused"]["detail"] and r["tcp_refused"]["latency_s"] < 0.3
    for name in ("tcp_timeout", "http_timeout", "icmp_timeout"):
        assert 0.45 <= r[name]["latency_s"] < 0.8, (name, r[name])
        assert "no " in r[name]["detail"]
    assert "HTTP 503, expected 200" in r["http_503"]["detail"]
    assert "HTTP 404" in r["http_404"]["detail"]
    assert "lacks 'sick'" in r["body_missing"]["detail"]
    assert "lacks 'MARK-LATE'" in r["big_late"]["detail"]      # beyond the 64 KiB read
    assert "TLS" in r["https_on_plain_port"]["detail"]
    assert "raw socket" in r["icmp_ok"]["detail"]              # ping_group_range excludes root by default


@pytest.mark.netns
def test_icmp_ping_socket(lab):
    """With net.ipv4.ping_group_range allowing us, ICMP goes through an unprivileged datagram socket."""
    from netlab import ns_run

    ns_run(lab["lb"], "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")
    try:
        r = probes_in(lab, [case("v4", "icmp_echo", EDGE4), case("v6", "icmp_echo", EDGE6),
                            case("v4_source", "icmp_echo", EDGE4, source=LB4B),
                            case("timeout", "icmp_echo", HOLE4)])
    finally:
        ns_run(lab["lb"], "sysctl", "-qw", "net.ipv4.ping_group_range=1 0")
    print(json.dumps(r, indent=1))
    assert r["v4"]["ok"] and r["v6"]["ok"] and r["v4_source"]["ok"] and not r["timeout"]["ok"]
    assert "ping socket" in r["v4"]["detail"] and "ping socket" in r["v6"]["detail"]


CHECKER_SCRIPT = r"""
import asyncio, json, sys, threading, time
from control.health import HealthChecker
from pydp.config import HealthConfig

def emit(**kw):
    print(json.dumps(dict(kw, t=time.monotonic())), flush=True)

async def main():
    loop = asyncio.get_running_loop()
    stdin_closed = asyncio.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stdin_closed.set)),
                     daemon=True).start()
    chk = HealthChecker(lambda c, e, up, why: emit(ev="change", edge=e, up=up, reason=why,
                                                   state=chk.states()[(c, e)]), source=sys.argv[2])
    timing = dict(interval=float(sys.argv[3]), timeout=float(sys.argv[4]), rise=int(sys.argv[5]),
                  fall=int(sys.argv[6]))
    chk.set_targets({("web", "e1"): (sys.argv[1], HealthConfig(type="http", path="/health", **timing)),
                     ("web", "e2"): (sys.argv[1], HealthConfig(type="tcp", port=81, **timing)),
                     ("web", "e3"): (sys.argv[1], HealthConfig(type="none"))})
    try:
        await asyncio.wait_for(stdin_closed.wait(), 40)
    finally:
        await chk.close()
        emit(ev="closed", tasks=len([t for t in asyncio.all_tasks() if t is not asyncio.current_task()]))

asyncio.run(main())
"""


@pytest.mark.netns
def test_checker_end_to_end(lab):
    """nginx stopped: e1 DOWN after about fall x interval; restarted: UP after about rise x interval."""
    interval, timeout, rise, fall = 0.2, 0.15, 2, 3
    script = lab["dir"] / "checker.py"
    script.write_text(CHECKER_SCRIPT)
    proc = subprocess.Popen(["ip", "netns", "exec", lab["lb"], sys.executable, "-P", str(script), EDGE4, LB4,
                             str(interval), str(timeout), str(rise), str(fall)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(json.loads(s)) for s in proc.stdout], daemon=True).start()

    def next_event(deadline_s: float, **match) -> dict:
        end = time.monotonic() + deadline_s
        while True:
            try:
                ev = lines.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no event {match} in {deadline_s} s") from None
            if all(ev.get(k) == v for k, v in match.items()):
                return ev

    ng: Nginx = lab["nginx"]
    try:
        next_event(3, ev="change", edge="e3", up=True)
        next_event(3, ev="change", edge="e1", up=True)
        next_event(3, ev="change", edge="e2", up=False)

        t_stop = time.monotonic()
        ng.stop()
        down = next_event(5, ev="change", edge="e1", up=False)
        detection = down["t"] - t_stop
        ng.start()
        t_start = time.monotonic()
        up = next_event(5, ev="change", edge="e1", up=True)
        rejoin = up["t"] - t_start
        proc.stdin.close()
        closed = next_event(5, ev="closed")
        assert proc.wait(10) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if ng.proc is None:
            ng.start()
    print(f"\n  detection {detection:.3f} s (fall {fall} x interval {interval} s), "
          f"rejoin {rejoin:.3f} s (rise {rise} x interval {interval} s)")
    print(f"  down: {down['reason']}\n  up:   {up['reason']}")
    # between (n-1) and n+1 jittered intervals, plus a check's duration and scheduling slack
    assert (fall - 1) * interval * 0.9 - 0.05 <= detection <= (fall + 1) * interval * 1.1 + timeout + 0.2
    assert (rise - 1) * interval * 0.9 - 0.05 <= rejoin <= (rise + 1) * interval * 1.1 + timeout + 0.2
    assert "failed checks in a row" in down["reason"] and "refused" in down["reason"]
    st = up["state"]
    assert st["transitions"] == 2 and st["suppressed"] == 0 and not st["damped"] and st["ip"] == EDGE4
    assert closed["tasks"] == 0
