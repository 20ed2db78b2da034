"""The scale-out lab's topology as data (control/lab/topology.py, control/lab/router.py): the appliance files it
imports are valid pydp configs with [bgp] and [sync] peers, and the router's BIRD config parses (bird -p)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from control.lab import topology as T
from control.lab.router import bird_conf
from pydp import config


@pytest.mark.parametrize("n", [2, 3, 4])
def test_scaleout_appliance_files_are_valid_configs(n):
    topo = T.Topology("sx", edges=3, clients=64, scale_out=n)
    specs = topo.appliance_specs
    assert [s.name for s in specs] == list("ABCD"[:n])
    assert len({s.addr for s in specs} | {s.mgmt for s in specs} | {s.mac for s in specs}) == 3 * n
    for s in specs:
        cfg = config.loads(topo.scaleout_text(s, f"/run/pydp-lab/sx/lb{s.name}"))
        assert [c.failover for c in cfg.clusters] == ["bgp"] and str(cfg.clusters[0].cluster_ip) == T.VIP
        assert cfg.bgp.bfd and cfg.bgp.local_as == T.APPLIANCE_AS and str(cfg.bgp.router_id) == s.addr
        assert [(str(p.address), p.asn) for p in cfg.bgp.peers] == [(T.ROUTER_ADDR, T.ROUTER_AS)]
        assert cfg.bgp.socket == f"/run/pydp-lab/sx/lb{s.name}/bird.ctl"
        assert sorted(str(p.address) for p in cfg.sync.peers) == sorted(o.mgmt for o in specs if o is not s)
    assert topo.vips() == [T.VIP]
    assert all(ip.startswith("203.0.113.") for ip in topo.client_ips())


def test_scaleout_bounds():
    for bad in (1, 5):
        with pytest.raises(ValueError, match="--scale-out"):
            T.Topology("sx", scale_out=bad)
    assert T.Topology("sx").appliance_specs == T.APPLIANCES        # 0: the CARP pair


@pytest.mark.skipif(not shutil.which("bird"), reason="BIRD 2 is not installed (scripts/setup.sh installs bird2)")
def test_router_bird_config_parses(tmp_path):
    peers = {f"lb{s.name}": s.addr for s in T.Topology("sx", scale_out=4).appliance_specs}
    text = bird_conf(tmp_path / "bird.log", peers)
    assert "merge paths on" in text and "bfd on" in text
    (tmp_path / "bird.conf").write_text(text)
    p = subprocess.run(["bird", "-p", "-c", str(tmp_path / "bird.conf")], capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""                       # no deprecation warnings either
