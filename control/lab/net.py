"""Network-namespace plumbing shared by the virtual lab (pydp-lab) and the namespace tests: commands run in a
namespace, veths and a bridge, and pydp-dataplane / pydp-control run inside a namespace as an appliance runs them.

No shell is involved: commands are argument lists. Every process started here can be stopped (and what it leaves
removed) by the object that started it.
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


class Started:
    """A process started by start() and stopped by stop(); as a context manager, stopped also when start fails."""

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class DataplaneProcess(Started):
    """pydp-dataplane run in a namespace, as the appliance would run it."""

    def __init__(self, ns: str, config_text: str, workdir: Path, args=(), shm: str | None = None):
        self.ns = ns
        self.workdir = workdir
        self.shm = shm or f"/dev/shm/pydp-test-{uuid.uuid4().hex[:8]}"
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
                if region is not None and region.generation >= 1 and "dataplane_started" in self.log.read_text():
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


class ControlProcess(Started):
    """pydp-control run in a namespace (ns None: in ours) with its own store, socket and metrics address; stopped
    (or killed) at the end, its socket file removed."""

    def __init__(self, ns: str | None, workdir: Path, db: Path, shm: str, *, metrics: str = "127.0.0.1:19469",
                 args=(), pass_fds=()):
        self.ns = ns
        self.workdir = workdir
        self.db = db
        self.shm = shm
        self.socket = str(workdir / f"ctl-{uuid.uuid4().hex[:6]}.sock")
        self.metrics = metrics
        self.args = list(args)
        self.pass_fds = tuple(pass_fds)          # e.g. the admin page's listening socket (--http fd:N)
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
            stdout=logf, stderr=subprocess.STDOUT, pass_fds=self.pass_fds)
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


def eventually(fn, timeout: float = 10.0, what=None, *, interval: float = 0.05):
    """Polls fn() every `interval` seconds until it returns something true, and returns that. After `timeout`
    seconds (fn is always called once more at the deadline) AssertionError naming `what`: a string, or a callable
    whose result describes the state at the timeout. The one polling wait of the lab and the tests."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() >= deadline:
            value = fn()
            if value:
                return value
            why = what() if callable(what) else (what or getattr(fn, "__name__", "a condition"))
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {why}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


@contextlib.contextmanager
def netns(prefix: str = "pydpt"):
    """A fresh namespace PREFIX-<8 hex digits> with its loopback up; deleted (with every interface in it) at the
    end, also on failure."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    run("ip", "netns", "add", name)
    try:
        ns_run(name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        run("ip", "netns", "del", name, check=False)



def kernel_ignores(ns: str, dev: str) -> None:
    """The kernel of ns stops answering on dev, as if dev were a NIC bound to DPDK: an af_packet port's frames
    reach the kernel too, and with the cluster IP on the TAP (weak host model) it would answer a client's SYN with
    a RST. IPv4 arriving on dev is blackholed (the rule sits before the local table) and no ARP is answered there;
    IPv6 is off on dev (veth())."""
    run("ip", "-n", ns, "rule", "add", "pref", "1", "iif", dev, "blackhole")
    run("ip", "-n", ns, "rule", "add", "pref", "2", "lookup", "local")
    run("ip", "-n", ns, "rule", "del", "pref", "0")
    ns_run(ns, "sysctl", "-qw", f"net.ipv4.conf.{dev}.arp_ignore=8")


def full_checksums(ns: str, dev: str) -> None:
    """The kernel computes checksums itself on dev instead of leaving them to the (virtual) NIC: a veth hands
    frames over with partial checksums, and a frame that a data plane reads through af_packet and sends on keeps
    its partial checksum, which the receiver then drops."""
    ns_run(ns, "ethtool", "-K", dev, "tx", "off")
