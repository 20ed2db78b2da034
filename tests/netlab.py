"""The tests' one helper module on top of the shipped lab library (control/lab/: namespaces, veths, bridges,
pydp-dataplane and pydp-control in a namespace, one appliance, the two-appliance failover topology, the virtual
lab). Only what tests alone need lives here; the rest is re-exported so tests import from one place.

Everything a test makes with these is removed when its context ends, also on failure: namespaces (and the veths in
them), processes, shared memory and DPDK runtime directories.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from control.lab.appliance import Appliance, pydpctl  # noqa: F401  (re-exported)
from control.lab.net import (ControlProcess, DataplaneProcess, addresses, bridge, bridge_host,  # noqa: F401
                             eventually, link_mac, netns, ns_run, run, terminate, veth)


def traffic(ns: str, workdir: Path, *args, timeout: float = 120.0) -> dict:
    """Runs tests/traffic.py in a namespace and returns its JSON report."""
    import json

    out = workdir / f"traffic-{uuid.uuid4().hex[:6]}.json"
    tool = Path(__file__).with_name("traffic.py")
    proc = ns_run(ns, sys.executable, "-P", str(tool), "--out", str(out), *map(str, args), timeout=timeout,
                  check=False)
    assert proc.returncode == 0, f"traffic.py failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(out.read_text())


def control_lab(stack: contextlib.ExitStack, lb_ns: str, appliance: str, workdir: Path, metrics: str,
                args=("--own-all",)) -> tuple[DataplaneProcess, "ControlProcess", Path]:
    """A data plane running `appliance` in lb_ns, its config imported into a new store, and pydp-control on both;
    stopped when stack closes. Returns (data plane, daemon, store path)."""
    dp = DataplaneProcess(lb_ns, appliance, workdir, args=["--managed"])
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


def metrics(appliance: Appliance) -> dict[str, float]:
    """An appliance's Prometheus metrics, {'name{labels}': value}, and the text itself under '__text__'."""
    text = scrape(appliance.ns, appliance.ctl.metrics)
    out: dict = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    out["__text__"] = text
    return out


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
    """How to run pydp-carp: the installed script, or its module when the tests run from the source tree
    (scripts/test.sh --quick sets PYDP_SOURCE_TREE=1)."""
    import sysconfig

    if os.environ.get("PYDP_SOURCE_TREE") == "1":
        return [sys.executable, "-P", "-m", "control.carp.cli"]
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


# ---- the failover topology (control/lab/failover.py) ----

def assert_flows_through(lab, owner: Appliance, other: Appliance, seconds: float = 1.5) -> None:
    """Datagrams sent from now on arrive through owner, none through other: waits (at most 2 x seconds) until
    owner has forwarded what the client sends in `seconds`, then checks that other forwarded none meanwhile."""
    t0 = time.time()
    want = 0.8 * lab.traffic.pps * seconds

    def why() -> str:
        return (f"{lab.traffic.since(t0)}; {owner.name}: {owner.carp()}; client's entry for the cluster IP: "
                f"{lab.client_neigh()}")

    eventually(lambda: lab.traffic.since(t0).get(owner.mac, 0) >= want, 2 * seconds,
               lambda: f"{want:.0f} datagrams through {owner.name}: {why()}", interval=0.1)
    assert lab.traffic.since(t0).get(other.mac, 0) == 0, f"datagrams through {other.name}: {why()}"


# ---- the virtual lab (control/lab/lab.py) ----

def lab_name() -> str:
    """A fresh lab name (its namespaces, files and processes all carry it)."""
    return f"pl{uuid.uuid4().hex[:8]}"


def leftovers(name: str) -> dict:
    """Everything of lab `name` still on the machine (empty lists: nothing)."""
    from control.lab.lab import RUN_ROOT, lab_namespaces

    procs = []
    for p in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            if name.encode() in Path(p).read_bytes():
                procs.append(int(p.split("/")[2]))
        except OSError:
            pass
    procs = [p for p in procs if p != os.getpid()]
    return {"namespaces": lab_namespaces(name), "processes": procs,
            "files": glob.glob(f"/dev/shm/{name}-*") + glob.glob(f"/dev/hugepages/*{name}-*"),
            "dpdk": glob.glob(f"/var/run/dpdk/pydp-{name}-*"),
            "run_dir": [str(RUN_ROOT / name)] if (RUN_ROOT / name).exists() else []}


def running_lab(topo):
    """A module fixture's body: the lab of this topology up, yielded, then removed and checked clean."""
    from control.lab.lab import Lab
    lab = Lab(topo)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
        assert_clean(topo.name)


def assert_clean(name: str) -> None:
    """Nothing of lab `name` is left on the machine."""
    left = leftovers(name)
    assert not any(left.values()), f"lab {name} left: {left}"


# ---- the one-appliance namespace tests: an appliance lb0 (af_packet, TAP pydp-p0) and edges on the client side ----

LB_MAC = "02:00:00:00:01:01"                     # the appliance's data port lb0
VIP = "198.51.100.10"                            # cluster web
EDGE_MACS = {"e1": "02:00:00:00:02:01", "e2": "02:00:00:00:02:02", "e3": "02:00:00:00:02:03"}
EDGE_IPS = {"e1": "198.51.100.21", "e2": "198.51.100.22", "e3": "198.51.100.23"}


def edge_toml(name: str, ip: str, mac: str | None = None, weight: int | None = None) -> str:
    """One [[cluster.edge]] table."""
    return (f'[[cluster.edge]]\nname = "{name}"\nip = "{ip}"\n' + (f'mac = "{mac}"\n' if mac else "")
            + (f"weight = {weight}\n" if weight is not None else ""))


def cluster_toml(name: str, vip: str, vhid: int, edges: str, health: str | None = 'type = "none"') -> str:
    """One [[cluster]] with its CARP vhid, its [cluster.health] lines (None: no table) and edges (edge_toml)."""
    return (f'[[cluster]]\nname = "{name}"\ncluster_ip = "{vip}"\n[cluster.carp]\nvhid = {vhid}\n'
            + (f"[cluster.health]\n{health}\n" if health is not None else "") + edges)


def appliance_toml(*clusters: str, lcores: str = "0-1", flow_capacity: int = 65536,
                   timeouts: dict | None = None) -> str:
    """The appliance file of the one-appliance namespace tests: the data plane on lb0 (af_packet) with its TAP
    pydp-p0, then the clusters (cluster_toml)."""
    text = (f'[dataplane]\nlcores = "{lcores}"\nflow_capacity = {flow_capacity}\nhugepages = true\nmemory_mb = 256\n'
            "mbufs = 8191\n")
    if timeouts:
        text += "[dataplane.timeouts]\n" + "".join(f"{k} = {v}\n" for k, v in timeouts.items())
    text += '[[port]]\nname = "p0"\ndevice = "net_af_packet0,iface=lb0"\ntap = "pydp-p0"\n'
    return text + "".join(clusters)

# a second cluster next to web, so that tests see one cluster's change leave the other alone
OTHER_TOML = cluster_toml("other", "198.51.100.20", 2, edge_toml("o1", "198.51.100.41", "02:00:00:00:03:01")
                          + edge_toml("o2", "198.51.100.42", "02:00:00:00:03:02"))


# ---- processes and a shared segment for the CARP tests ----

class NsProcess:
    """A command run in a namespace, its output appended to `log`; term() (SIGTERM, then SIGKILL) and kill()."""

    def __init__(self, name: str, ns: str, argv: list[str], log: Path):
        self.name, self.ns, self.log = name, ns, log
        with open(log, "ab") as f:
            self.p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=f, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.p.pid             # ip netns exec execs the command: same pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.p.poll() is None

    def term(self, timeout: float = 10.0) -> int | None:
        return terminate(self.p, timeout)

    def kill(self) -> None:
        if self.alive():
            self.p.kill()
            self.p.wait(5)


class Segment:
    """Namespaces h1, h2 and c (eth0 each, optionally with an address) on the bridge br0 of a switch namespace sw,
    all removed when `stack` closes; sniff() runs a capture script in c that writes JSON lines to `capture`."""

    def __init__(self, stack: contextlib.ExitStack, workdir: Path, prefix: str, addrs: dict | None = None):
        self.stack, self.workdir = stack, workdir
        self.sw, self.h1, self.h2, self.c = (stack.enter_context(netns(prefix + n)) for n in ("sw", "h1", "h2", "c"))
        bridge(self.sw, "br0")
        for host, port, key in ((self.h1, "p1", "h1"), (self.h2, "p2", "h2"), (self.c, "p3", "c")):
            bridge_host(self.sw, "br0", host, port, addr=(addrs or {}).get(key))
        self.macs = {ns: link_mac(ns, "eth0") for ns in (self.h1, self.h2, self.c)}
        self.capture = workdir / "capture.jsonl"

    def sniff(self, script: str) -> subprocess.Popen:
        """`python3 -c script CAPTURE` in c, stopped when the stack closes; returns once it wrote {"kind": "ready"}."""
        self.capture.touch()
        proc = subprocess.Popen(["ip", "netns", "exec", self.c, sys.executable, "-c", script, str(self.capture)])

        def stop():
            proc.kill()
            proc.wait(5)
        self.stack.callback(stop)
        eventually(lambda: self.frames(kind="ready"), 10, "the sniffer to start")
        return proc

    def frames(self, since: float = 0.0, **match) -> list[dict]:
        """The captured records at or after `since` whose fields equal `match`."""
        out = []
        for line in self.capture.read_text().splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if rec.get("t", 0) >= since and all(rec.get(k) == v for k, v in match.items()):
                    out.append(rec)
        return out
