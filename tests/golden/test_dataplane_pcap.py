"""pcap runs of the pydp-dataplane launcher that go through DPDK: an unknown --inactive cluster is an error, and
an exception-path frame without --pcap-exception sends nothing (the command-line checks before DPDK:
tests/unit/test_dataplane_cli.py)."""

from __future__ import annotations

import struct

import pytest

from launcher import config_file, no_leftovers, pcap_file, run  # noqa: F401  (fixtures)


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
