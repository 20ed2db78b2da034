"""The EAL command line pydp-dataplane builds from a config (pydp.dataplane.eal_args).

The port names eal_args returns are what the C side looks up with rte_eth_dev_get_port_by_name, so they must be the
names DPDK 22.11 gives the ports (tests/unit/test_device.py checks the parser they come from).
"""

from __future__ import annotations

import os

import pytest

from pydp import config as pconfig

try:
    from pydp.dataplane import LaunchError, eal_args
except ImportError as exc:  # a checkout without a build: skip, except in CI (see tests/conftest.py)
    if os.environ.get("PYDP_REQUIRE_DPDK") == "1":
        raise
    pytest.skip(f"pydp is not built: {exc}", allow_module_level=True)


def make_cfg(*ports: tuple, lcores: str = "0-2", hugepages: bool = True, memory_mb: int = 1024,
             shm_path: str = "/dev/hugepages/pydp", extra: list[str] | None = None) -> pconfig.ApplianceConfig:
    """A validated config; ports are (name, device) or (name, device, tap)."""
    lines = ["[dataplane]", f'lcores = "{lcores}"', f"hugepages = {'true' if hugepages else 'false'}",
             f"memory_mb = {memory_mb}", f'shm_path = "{shm_path}"']
    if extra is not None:
        lines.append("eal_args = [" + ", ".join(f'"{a}"' for a in extra) + "]")
    for p in ports:
        lines += ["", "[[port]]", f'name = "{p[0]}"', f'device = "{p[1]}"']
        if len(p) > 2:
            lines.append(f'tap = "{p[2]}"')
    return pconfig.loads("\n".join(lines) + "\n")


def option_values(args: list[str], option: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == option]


# ---- eal_args ----

def test_vdevs_with_arguments():
    cfg = make_cfg(("wan0", "net_af_xdp0,iface=eth1,start_queue=0,queue_count=2", ""),
                   ("lan0", "net_ring0,nodeaction=r0:0:CREATE", ""))
    args, ports, excs = eal_args(cfg)
    assert option_values(args, "--vdev") == ["net_af_xdp0,iface=eth1,start_queue=0,queue_count=2",
                                             "net_ring0,nodeaction=r0:0:CREATE"]
    assert ports == ["net_af_xdp0", "net_ring0"] and excs == ["", ""]
    assert "-a" not in args and args.count("--no-pci") == 1


def test_af_packet_gets_one_queue_pair_per_worker():
    args, ports, _ = eal_args(make_cfg(("wan0", "net_af_packet0,iface=eth1", ""), lcores="0,2-4"))
    assert option_values(args, "--vdev") == ["net_af_packet0,iface=eth1,qpairs=3"]
    assert ports == ["net_af_packet0"]
    args, _, _ = eal_args(make_cfg(("wan0", "net_af_packet0,iface=eth1,qpairs=1", ""), lcores="0,2-4"))
    assert option_values(args, "--vdev") == ["net_af_packet0,iface=eth1,qpairs=1"]     # given: kept
    args, _, _ = eal_args(make_cfg(("wan0", "net_af_packet7", ""), lcores="0-1"))
    assert option_values(args, "--vdev") == ["net_af_packet7,qpairs=1"]


@pytest.mark.parametrize("spec,allow,name", [
    ("03:00.0", "0000:03:00.0", "0000:03:00.0"),
    ("0000:03:00.0", "0000:03:00.0", "0000:03:00.0"),
    ("0000:AF:00.1", "0000:af:00.1", "0000:af:00.1"),
    ("81:00.0,rxq_cqe_comp_en=0", "0000:81:00.0,rxq_cqe_comp_en=0", "0000:81:00.0"),
])
def test_pci_ports(spec, allow, name):
    args, ports, excs = eal_args(make_cfg(("wan0", spec)))
    assert option_values(args, "-a") == [allow]
    assert "--no-pci" not in args and "--vdev" in args        # the TAP is still a vdev
    assert ports == [name] and excs == ["net_tap0"]


def test_pci_and_vdev_mixed():
    args, ports, _ = eal_args(make_cfg(("wan0", "03:00.0", ""), ("lan0", "net_af_packet1,iface=eth2", "")))
    assert option_values(args, "-a") == ["0000:03:00.0"]
    assert option_values(args, "--vdev") == ["net_af_packet1,iface=eth2,qpairs=2"]
    assert ports == ["0000:03:00.0", "net_af_packet1"] and "--no-pci" not in args


def test_duplicate_pci_in_two_forms_is_refused():
    with pytest.raises(pconfig.ConfigError, match=r"port\[1\]\.device: duplicate device"):
        make_cfg(("wan0", "03:00.0"), ("lan0", "0000:03:00.0"))


def test_taps():
    cfg = make_cfg(("wan0", "net_af_packet0,iface=eth1"), ("lan0", "net_af_packet1,iface=eth2", "lan-exc"),
                   ("mgmt", "net_null2", ""))
    args, ports, excs = eal_args(cfg)
    assert option_values(args, "--vdev") == ["net_af_packet0,iface=eth1,qpairs=2", "net_tap0,iface=pydp-wan0",
                                             "net_af_packet1,iface=eth2,qpairs=2", "net_tap1,iface=lan-exc",
                                             "net_null2"]
    assert ports == ["net_af_packet0", "net_af_packet1", "net_null2"]
    assert excs == ["net_tap0", "net_tap1", ""]


def test_exception_taps_never_take_a_data_ports_name():
    cfg = make_cfg(("wan0", "net_tap0,iface=dp-wan0"), ("lan0", "net_af_packet1,iface=eth2"))
    args, ports, excs = eal_args(cfg)
    assert ports == ["net_tap0", "net_af_packet1"]
    assert excs == ["net_tap2", "net_tap1"]
    assert option_values(args, "--vdev") == ["net_tap0,iface=dp-wan0", "net_tap2,iface=pydp-wan0",
                                             "net_af_packet1,iface=eth2,qpairs=2", "net_tap1,iface=pydp-lan0"]


@pytest.mark.parametrize("hugepages", [True, False])
def test_hugepages_memory_and_lcores(hugepages):
    args, _, _ = eal_args(make_cfg(("wan0", "net_null0", ""), lcores="3,1@5,2@5", hugepages=hugepages,
                                   memory_mb=2048))
    assert ("--huge-unlink" in args) == hugepages
    assert ("--no-huge" in args) == (not hugepages)
    assert option_values(args, "-m") == ["2048"]
    assert option_values(args, "--lcores") == ["3,1@5,2@5"]
    assert option_values(args, "--main-lcore") == ["3"]


def test_file_prefix_follows_the_shared_memory_path():
    cfg = make_cfg(("wan0", "net_null0", ""), shm_path="/dev/hugepages/pydp a.b")
    args, _, _ = eal_args(cfg)
    assert args[0] == "pydp-dataplane"
    assert option_values(args, "--file-prefix") == ["pydp-pydp_a_b"]
    args, _, _ = eal_args(cfg, shm_path="/dev/shm/other-dp")
    assert option_values(args, "--file-prefix") == ["pydp-other-dp"]
    assert "--no-telemetry" in args


def test_extra_eal_args_come_last():
    cfg = make_cfg(("wan0", "net_null0", ""), extra=["--in-memory", "--log-level=pmd.net.af_packet:debug"])
    args, _, _ = eal_args(cfg)
    assert args[-2:] == ["--in-memory", "--log-level=pmd.net.af_packet:debug"]
    assert args[-3] == "--no-pci"


def test_pcap_mode(tmp_path):
    cfg = make_cfg(("wan0", "0000:03:00.0"), lcores="2-3")
    pcap = {"in": str(tmp_path / "in.pcap"), "out": str(tmp_path / "out.pcap"), "exception": None}
    args, ports, excs = eal_args(cfg, pcap=pcap)
    assert option_values(args, "--file-prefix") == [f"pydp-pcap-{os.getpid()}"]
    assert option_values(args, "-l") == ["2"] and "--lcores" not in args
    assert "--no-huge" in args and "--no-pci" in args and "-a" not in args
    assert option_values(args, "--vdev") == [f"net_pcap0,rx_pcap={pcap['in']},tx_pcap={pcap['out']}",
                                             "net_null1,no-rx=1"]
    assert ports == ["net_pcap0"] and excs == ["net_null1"]
    pcap["exception"] = str(tmp_path / "exc.pcap")
    args, ports, excs = eal_args(cfg, pcap=pcap)
    assert option_values(args, "--vdev")[1] == f"net_pcap1,tx_pcap={pcap['exception']}"
    assert excs == ["net_pcap1"]


def test_pcap_path_with_a_comma_is_refused(tmp_path):
    cfg = make_cfg(("wan0", "net_null0", ""))
    with pytest.raises(LaunchError, match="cannot hold a ','"):
        eal_args(cfg, pcap={"in": str(tmp_path / "a,b.pcap"), "out": str(tmp_path / "o.pcap")})
