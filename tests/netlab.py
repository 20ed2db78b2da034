"""Test topologies made of network namespaces, and a pydp-dataplane process run inside one.

Everything a test makes here is removed when its context ends, also on failure: namespaces (and the veths in
them), the data-plane process, its shared memory and its DPDK runtime directory. No shell is involved: commands
are argument lists.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from pydp.shm import Region, ShmError


def run(*args, check=True, timeout=30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, timeout=timeout, capture_output=True, text=True, **kw)


def ns_run(ns: str, *args, **kw) -> subprocess.CompletedProcess:
    return run("ip", "netns", "exec", ns, *args, **kw)


def terminate(proc: subprocess.Popen | None, timeout: float) -> int | None:
    """SIGTERM, then SIGKILL if it has not ended within timeout; returns its exit status (None: no process)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


@contextlib.contextmanager
def netns(prefix: str = "pydpt"):
    """A fresh namespace with its loopback up; deleted (with every interface in it) at the end."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    run("ip", "netns", "add", name)
    try:
        ns_run(name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        run("ip", "netns", "del", name, check=False)


def veth(ns: str, a: str, b: str, ns_b: str | None = None, mac_a: str | None = None, mac_b: str | None = None):
    """A veth pair a (in ns) <-> b (in ns_b, default ns), both up."""
    run("ip", "-n", ns, "link", "add", a, "type", "veth", "peer", "name", b, "netns", ns_b or ns)
    if mac_a:
        run("ip", "-n", ns, "link", "set", a, "address", mac_a)
    if mac_b:
        run("ip", "-n", ns_b or ns, "link", "set", b, "address", mac_b)
    for n, i in ((ns, a), (ns_b or ns, b)):
        run("ip", "-n", n, "link", "set", i, "up")
        # no IPv6 autoconfiguration chatter on test links
        ns_run(n, "sysctl", "-qw", f"net.ipv6.conf.{i}.disable_ipv6=1", check=False)


class DataplaneProcess:
    """pydp-dataplane run in a namespace, as the appliance would run it."""

    def __init__(self, ns: str, config_text: str, workdir: Path, args=()):
        self.ns = ns
        self.workdir = workdir
        self.shm = f"/dev/shm/pydp-test-{uuid.uuid4().hex[:8]}"
        self.config = workdir / "appliance.toml"
        self.config.write_text(config_text)
        self.args = list(args)
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "dataplane.log"
        self.region: Region | None = None

    def start(self, timeout: float = 30.0) -> Region:
        logf = open(self.log, "w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-P", "-m", "pydp.dataplane", "--config",
             str(self.config), "--shm", self.shm, *self.args], stdout=logf, stderr=subprocess.STDOUT)
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pydp-dataplane exited with {self.proc.returncode}:\n{self.log.read_text()}")
            if os.path.exists(self.shm):
                try:
                    region = Region.attach(self.shm)
                except ShmError:
                    region = None
                if region is not None and region.generation >= 1 and "forwarding on" in self.log.read_text():
                    self.region = region
                    return region
                if region is not None:
                    region.close()
            time.sleep(0.05)
        raise RuntimeError(f"pydp-dataplane did not come up in {timeout}s:\n{self.log.read_text()}")

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.region is not None:
            self.region.close()
            self.region = None
        rc = terminate(self.proc, timeout)
        self.proc = None
        # a data plane that was killed leaves its region and runtime directory: remove them like a restart would
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.shm)
        prefix = "pydp-" + re.sub(r"[^A-Za-z0-9_-]", "_", os.path.basename(self.shm))
        shutil.rmtree(f"/var/run/dpdk/{prefix}", ignore_errors=True)
        return rc

    def __enter__(self) -> "DataplaneProcess":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def traffic(ns: str, workdir: Path, *args, timeout: float = 120.0) -> dict:
    """Runs tests/traffic.py in a namespace and returns its JSON report."""
    import json

    out = workdir / f"traffic-{uuid.uuid4().hex[:6]}.json"
    tool = Path(__file__).with_name("traffic.py")
    proc = ns_run(ns, sys.executable, "-P", str(tool), "--out", str(out), *map(str, args), timeout=timeout,
                  check=False)
    assert proc.returncode == 0, f"traffic.py failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(out.read_text())


class ControlProcess:
    """pydp-control run in a namespace (ns None: in ours) with its own store, socket and metrics address; stopped
    (or killed) at the end, its socket file removed."""

    def __init__(self, ns: str | None, workdir: Path, db: Path, shm: str, *, metrics: str = "127.0.0.1:19469",
                 args=()):
        self.ns = ns
        self.workdir = workdir
        self.db = db
        self.shm = shm
        self.socket = str(workdir / f"ctl-{uuid.uuid4().hex[:6]}.sock")
        self.metrics = metrics
        self.args = list(args)
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "control.log"
        self.starts = 0

    def start(self, timeout: float = 20.0) -> "ControlProcess":
        from control import rpc

        logf = open(self.log, "a")
        self.proc = subprocess.Popen(
            [*(["ip", "netns", "exec", self.ns] if self.ns else []), sys.executable, "-P", "-m", "control.daemon",
             "--db", str(self.db),
             "--socket", self.socket, "--shm", self.shm, "--metrics", self.metrics, *self.args],
            stdout=logf, stderr=subprocess.STDOUT)
        logf.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pydp-control exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                rpc.call(self.socket, "ping", timeout=1.0)
                return self
            except ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"pydp-control did not come up in {timeout}s:\n{self.log.read_text()}")

    def events(self, name: str | None = None) -> list[dict]:
        """The daemon's structured log lines (JSON), optionally only one event."""
        import json

        out = []
        for line in self.log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if name is None or rec.get("event") == name:
                out.append(rec)
        return out

    def kill(self) -> None:
        """SIGKILL: the daemon dies without cleaning up (its socket file stays)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        rc = terminate(self.proc, timeout)
        self.proc = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)
        return rc

    def __enter__(self) -> "ControlProcess":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def pydpctl(*args, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """pydpctl with these arguments (give --socket or --db first); check: fail on a non-zero exit status."""
    p = subprocess.run([sys.executable, "-P", "-m", "control.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout)
    if check:
        assert p.returncode == 0, f"pydpctl {' '.join(map(str, args))}: {p.stderr}"
    return p


def control_lab(stack: contextlib.ExitStack, lb_ns: str, appliance: str, workdir: Path, metrics: str,
                args=("--own-all",)) -> tuple[DataplaneProcess, "ControlProcess", Path]:
    """A data plane running `appliance` in lb_ns, its config imported into a new store, and pydp-control on both;
    stopped when stack closes. Returns (data plane, daemon, store path)."""
    dp = DataplaneProcess(lb_ns, appliance, workdir)
    stack.callback(dp.stop)
    dp.start()
    db = workdir / "pydp.db"
    pydpctl("--db", db, "import", dp.config)
    ctl = ControlProcess(lb_ns, workdir, db, dp.shm, metrics=metrics, args=args)
    stack.callback(ctl.stop)
    ctl.start()
    return dp, ctl, db


def scrape(ns: str, address: str) -> str:
    """The Prometheus text pydp-control serves on address (HOST:PORT) inside ns."""
    code = ("import urllib.request, sys; "
            f"sys.stdout.write(urllib.request.urlopen('http://{address}/metrics', timeout=5).read().decode())")
    return ns_run(ns, sys.executable, "-c", code).stdout


def bridge(ns: str, name: str = "br0") -> str:
    """A Linux bridge in ns, up: no STP, no multicast snooping (every port sees every multicast, as on a plain
    switch), no IPv6 chatter."""
    run("ip", "-n", ns, "link", "add", name, "type", "bridge", "stp_state", "0", "mcast_snooping", "0")
    ns_run(ns, "sysctl", "-qw", f"net.ipv6.conf.{name}.disable_ipv6=1", check=False)
    run("ip", "-n", ns, "link", "set", name, "up")
    return name


def bridge_host(switch_ns: str, br: str, host_ns: str, port: str, ifname: str = "eth0",
                addr: str | None = None, mac: str | None = None) -> None:
    """Attaches host_ns to the bridge br in switch_ns: a veth with `port` on the bridge and `ifname` (optionally
    with the address `addr`, CIDR, and MAC `mac`) in the host."""
    veth(switch_ns, port, ifname, host_ns, mac_b=mac)
    run("ip", "-n", switch_ns, "link", "set", port, "master", br)
    if addr:
        run("ip", "-n", host_ns, "addr", "add", addr, "dev", ifname)


def addresses(ns: str, dev: str | None = None, family: str = "inet") -> list[str]:
    """The addresses (without prefix length) configured in ns, on one interface or on all."""
    import json

    args = ["ip", "-j", "-n", ns, "-f", family, "addr", "show"] + (["dev", dev] if dev else [])
    out = run(*args, check=False).stdout or "[]"
    return [a["local"] for link in json.loads(out) for a in link.get("addr_info", [])]


def link_mac(ns: str, dev: str) -> str:
    import json

    return json.loads(run("ip", "-j", "-n", ns, "link", "show", "dev", dev).stdout)[0]["address"]


def wait_until(pred, timeout: float, what: str, step: float = 0.05):
    """Polls pred until it returns something true (returned); AssertionError naming `what` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(step)


def report(request, text: str) -> None:
    """Prints measured figures on the terminal even though pytest captures output."""
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        if tr is not None:
            tr.write_line(text)
        else:
            print(text)


def pydp_carp_argv() -> list[str]:
    """How to run pydp-carp: the installed script."""
    import sysconfig

    return [os.path.join(sysconfig.get_path("scripts"), "pydp-carp")]


# Run in a namespace as `python3 -c RAW_SENDER HEXFRAME...`: sends each frame on eth0, 20 ms apart (forged
# packets for the drop-counter tests).
RAW_SENDER = r"""
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for h in sys.argv[1:]:
    s.send(bytes.fromhex(h))
    time.sleep(0.02)
"""
