"""Test topologies made of network namespaces, and a pydp-dataplane process run inside one.

Everything a test makes here is removed when its context ends, also on failure: namespaces (and the veths in
them), the data-plane process, its shared memory and its DPDK runtime directory. The plumbing itself lives in
control/lab/net.py (the virtual lab uses it too); this module adds what only tests need.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

from control.lab.net import (ControlProcess, DataplaneProcess, addresses, bridge, bridge_host,  # noqa: F401
                             link_mac, ns_run, run, terminate, veth, wait_until)


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


def traffic(ns: str, workdir: Path, *args, timeout: float = 120.0) -> dict:
    """Runs tests/traffic.py in a namespace and returns its JSON report."""
    import json

    out = workdir / f"traffic-{uuid.uuid4().hex[:6]}.json"
    tool = Path(__file__).with_name("traffic.py")
    proc = ns_run(ns, sys.executable, "-P", str(tool), "--out", str(out), *map(str, args), timeout=timeout,
                  check=False)
    assert proc.returncode == 0, f"traffic.py failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(out.read_text())


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
