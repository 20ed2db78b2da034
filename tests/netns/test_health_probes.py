"""Health checks: every probe against real servers in network namespaces (the state machine and the checker
with a fake probe: tests/unit/test_health.py).

Namespace topology (each test module run builds it once and removes it, also on failure)::

    lb   eth0 198.51.100.2/24, 198.51.100.3/24, 2001:db8:51::2/64   (the appliance: probes run here)
     |   veth
    edge eth0 198.51.100.21/24, 2001:db8:51::21/64                 (nginx: 80, 443 with a self-signed cert)

198.51.100.99 is blackholed: lb has a permanent neighbour entry for it with a MAC nobody owns, so what is sent
there vanishes without an answer (the timeout cases). The probes run in lb through a small asyncio script
(``ip netns exec``): this test process stays in the root namespace.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from netlab import eventually

LB4, LB4B, EDGE4, HOLE4 = "198.51.100.2", "198.51.100.3", "198.51.100.21", "198.51.100.99"
LB6, EDGE6 = "2001:db8:51::2", "2001:db8:51::21"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


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
        try:                            # the pid file is written after the listening sockets are open
            eventually(lambda: pid.exists() or self.proc.poll() is not None, 10, "nginx", interval=0.01)
            if not pid.exists():
                raise RuntimeError(f"nginx exited with {self.proc.returncode}")
        except BaseException as exc:
            self.stop()
            raise RuntimeError("nginx did not start:\n" + (self.d / "error.log").read_text()) from exc

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
