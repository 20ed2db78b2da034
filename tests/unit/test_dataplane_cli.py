"""Tests of the pydp-dataplane launcher's command line: usage errors and config errors, run as a subprocess.

None of them gets as far as DPDK (the pcap runs that do: tests/golden/test_dataplane_pcap.py), and none may leave
anything in /dev/shm or /var/run/dpdk.
"""

from __future__ import annotations


import pytest

from launcher import CONFIG, config_file, no_leftovers, pcap_file, run  # noqa: F401  (fixtures)


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
