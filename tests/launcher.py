"""The pydp-dataplane launcher run as a subprocess, for the command-line tests (tests/unit/test_dataplane_cli.py)
and its pcap runs (tests/golden/test_dataplane_pcap.py): a config, a one-frame pcap and a check that nothing is
left in /dev/shm or /var/run/dpdk. Import the fixtures into the test module."""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest

CONFIG = """\
[dataplane]
lcores = "0-1"
flow_capacity = 1024
hugepages = false
shm_path = "/dev/shm/pydp-clitest-%d"

[[port]]
name = "wan0"
device = "net_af_packet0,iface=eth1"

[[cluster]]
name = "web"
cluster_ip = "198.51.100.10"
maglev_size = 1021

[cluster.carp]
vhid = 10

[[cluster.edge]]
name = "e1"
ip = "198.51.100.21"
mac = "02:00:00:00:00:21"

[[cluster.edge]]
name = "e2"
ip = "198.51.100.22"
mac = "02:00:00:00:00:22"
""" % os.getpid()

LEFTOVER_DIRS = ("/dev/shm", "/var/run/dpdk")
_PIDS: list[int] = []        # the launcher processes of the running test


def _listing() -> dict[str, set[str]]:
    return {d: set(os.listdir(d)) if os.path.isdir(d) else set() for d in LEFTOVER_DIRS}


@pytest.fixture(autouse=True)
def no_leftovers():
    """Nothing new in /dev/shm or /var/run/dpdk that one of our launchers could have made: names carry the
    launcher's pid (pcap mode) or come from the config's shm_path (other tools on the host may add their own)."""
    _PIDS.clear()
    before = _listing()
    yield
    after = _listing()
    ours = {f"pydp-clitest-{os.getpid()}", f"pydp-pydp-clitest-{os.getpid()}", "pydp", "pydp-pydp"}
    for d in LEFTOVER_DIRS:
        new = after[d] - before[d]
        left = {n for n in new if n in ours or any(n.endswith(f"-{pid}") or f"-{pid}-" in n for pid in _PIDS)}
        assert left == set(), f"left behind in {d}"


def run(*args, cwd):
    """python3 -P -m pydp.dataplane ARGS: the installed package, not the source tree."""
    proc = subprocess.Popen([sys.executable, "-P", "-m", "pydp.dataplane", *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _PIDS.append(proc.pid)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def write_pcap(path, frames=()):
    """A classic pcap file (microsecond, Ethernet) with the given frames."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, frame in enumerate(frames):
            f.write(struct.pack("<IIII", 1, i, len(frame), len(frame)))
            f.write(frame)
    return path


@pytest.fixture
def config_file(tmp_path):
    p = tmp_path / "appliance.toml"
    p.write_text(CONFIG)
    return p


@pytest.fixture
def pcap_file(tmp_path):
    frame = bytes.fromhex("ffffffffffff020000000001") + b"\x08\x06" + bytes(28)   # an ARP-sized frame
    return write_pcap(tmp_path / "in.pcap", [frame])
