"""Tests of the pydp-dataplane launcher's command line: usage errors and config errors, run as a subprocess.

Only the last test gets as far as the DPDK part of the launcher (marked dpdk). None of them may leave anything in
/dev/shm or /var/run/dpdk.
"""

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


def test_help(tmp_path):
    r = run("--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "usage: pydp-dataplane" in r.stdout
    assert "examples:" in r.stdout
    assert "pydp-dataplane --config /etc/pydp/appliance.toml" in r.stdout
    assert "--pcap-in in.pcap --pcap-out out.pcap" in r.stdout
    for opt in ("--config", "--shm", "--own-all", "--inactive", "--pcap-in", "--pcap-out", "--stats-json"):
        assert opt in r.stdout


def test_config_required(tmp_path):
    r = run(cwd=tmp_path)
    assert r.returncode == 2
    assert "--config" in r.stderr


def test_unknown_key(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text(CONFIG.replace("flow_capacity = 1024", "flow_capacity = 1024\nbogus_key = 3"))
    r = run("--config", p, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert str(p) in r.stderr
    assert "dataplane.bogus_key" in r.stderr
    assert "unknown key" in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_key_in_edge(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text(CONFIG.replace('name = "e2"', 'name = "e2"\nwieght = 2'))
    r = run("--config", p, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert str(p) in r.stderr
    assert "cluster[0].edge[1].wieght" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_config(tmp_path):
    p = tmp_path / "nope" / "appliance.toml"
    r = run("--config", p, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert str(p) in r.stderr
    assert "Traceback" not in r.stderr


def test_pcap_in_without_out(tmp_path, config_file, pcap_file):
    r = run("--config", config_file, "--pcap-in", pcap_file, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "usage:" in r.stderr
    assert "--pcap-out" in r.stderr
    assert not (tmp_path / "out.pcap").exists()


def test_pcap_out_without_in(tmp_path, config_file):
    r = run("--config", config_file, "--pcap-out", tmp_path / "out.pcap", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "usage:" in r.stderr
    assert "--pcap-in" in r.stderr
    assert not (tmp_path / "out.pcap").exists()


@pytest.mark.parametrize("opt", ["--pcap-exception", "--stats-json"])
def test_pcap_extras_without_in(tmp_path, config_file, opt):
    r = run("--config", config_file, opt, tmp_path / "x", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "--pcap-in" in r.stderr


def test_pcap_in_missing_file(tmp_path, config_file):
    missing = tmp_path / "missing.pcap"
    r = run("--config", config_file, "--pcap-in", missing, "--pcap-out", tmp_path / "out.pcap", cwd=tmp_path)
    assert r.returncode != 0
    assert str(missing) in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out.pcap").exists()


def test_bad_config_wins_over_pcap_run(tmp_path, pcap_file):
    p = tmp_path / "bad.toml"
    p.write_text(CONFIG.replace('maglev_size = 1021', 'maglev_size = 1000'))
    r = run("--config", p, "--pcap-in", pcap_file, "--pcap-out", tmp_path / "out.pcap", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "cluster[0].maglev_size" in r.stderr
    assert not (tmp_path / "out.pcap").exists()


@pytest.mark.dpdk
def test_inactive_unknown_cluster(tmp_path, config_file, pcap_file):
    out = tmp_path / "out.pcap"
    r = run("--config", config_file, "--pcap-in", pcap_file, "--pcap-out", out, "--inactive", "web",
            "--inactive", "NOPE", cwd=tmp_path)
    assert r.returncode > 0, f"exit {r.returncode}: {r.stderr}"     # an error exit, not a signal
    assert "NOPE" in r.stderr
    assert "named web" not in r.stderr                                 # only the unknown name is reported
    assert "Traceback" not in r.stderr


def _pcap_frames(path) -> list[bytes]:
    data = open(path, "rb").read()
    frames, off = [], 24
    while off + 16 <= len(data):
        caplen = struct.unpack_from("<I", data, off + 8)[0]
        frames.append(data[off + 16:off + 16 + caplen])
        off += 16 + caplen
    return frames


@pytest.mark.dpdk
def test_pcap_run_sends_nothing_from_nowhere(tmp_path, config_file, pcap_file):
    """A pcap run of one ARP frame (exception path) without --pcap-exception: nothing comes out of the data port,
    and the run leaves no EAL or shared-memory files."""
    out = tmp_path / "out.pcap"
    r = run("--config", config_file, "--pcap-in", pcap_file, "--pcap-out", out, "--inactive", "web", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert '"rx_packets": 1' in r.stdout
    assert '"exc_to_kernel": 1' in r.stdout
    assert _pcap_frames(out) == []
    assert '"tx_packets": 0' in r.stdout
