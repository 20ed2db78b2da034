"""The one parser of DPDK device specs (pydp/device.py), shared by the config loader, pydp-dataplane's eal_args and
the bootstrap. The port name it gives is what the C side looks up with rte_eth_dev_get_port_by_name, so it must be the
name DPDK 22.11 gives the port: PCI addresses as PCI_PRI_FMT prints them (checked against the installed rte_pci.h),
vdevs by their name without arguments."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from pydp import config as pconfig
from pydp import device as pdevice


def port_cfg(spec: str) -> pconfig.ApplianceConfig:
    return pconfig.loads(f'[[port]]\nname = "wan0"\ndevice = "{spec}"\n')


# ---- the parser ----

@pytest.mark.parametrize("spec,kind,name,args", [
    ("0000:03:00.0", "pci", "0000:03:00.0", ()),
    ("03:00.0", "pci", "0000:03:00.0", ()),
    ("0000:0A:1F.7", "pci", "0000:0a:1f.7", ()),
    ("00ff:81:00.1,rxq_cqe_comp_en=0,txq_inline", "pci", "00ff:81:00.1", (("rxq_cqe_comp_en", "0"),
                                                                         ("txq_inline", None))),
    ("0000:03:00.0,representor=[0,2-3]", "pci", "0000:03:00.0", (("representor", "[0,2-3]"),)),
    ("net_af_packet0,iface=eth1", "vdev", "net_af_packet0", (("iface", "eth1"),)),
    ("net_af_xdp1,iface=ens1f0,start_queue=0,queue_count=4", "vdev", "net_af_xdp1",
     (("iface", "ens1f0"), ("start_queue", "0"), ("queue_count", "4"))),
    ("net_null0", "vdev", "net_null0", ()),
    ("net_ring0,nodeaction=r1:0:CREATE", "vdev", "net_ring0", (("nodeaction", "r1:0:CREATE"),)),
])
def test_parse(spec, kind, name, args):
    dev = pdevice.parse(spec)
    assert (dev.kind, dev.name, dev.args) == (kind, name, args)
    assert dev.is_pci == (kind == "pci")
    assert pdevice.port_name(spec) == name
    assert pconfig.PortConfig(name="p", device=spec).device_name == name


@pytest.mark.parametrize("spec", [
    "", "03:00", "0000:03:00.8", "0000:03:20.0", "003:00.0", "3:00.0", "0000:03:00.0,", "net_null0,,x=1",
    "net_null0,a b", "net_null0,x=[1", "0net_null0", "net-null0", "pci:0000:03:00.0", "net_null0 ",
])
def test_parse_refuses(spec):
    with pytest.raises(ValueError, match=re.escape(repr(spec))):
        pdevice.parse(spec)
    with pytest.raises(pconfig.ConfigError, match=r"port\[0\]\.device"):
        port_cfg(spec)


def test_arg_lookup():
    dev = pdevice.parse("net_af_packet0,iface=eth1,qpairs=2,iface=eth2,flag")
    assert dev.arg("iface") == "eth2"            # the last one wins, as in DPDK's kvargs
    assert dev.arg("missing", "x") == "x" and dev.arg("flag") is None
    assert dev.has_arg("flag") and dev.has_arg("qpairs") and not dev.has_arg("qpair")


def test_pci_address():
    assert pdevice.pci_address("3b:00.1") == "0000:3b:00.1"
    assert pdevice.pci_address("0000:3B:00.1") == "0000:3b:00.1"
    assert pdevice.pci_address("0000:3b:00.1,x=1") is None
    assert pdevice.pci_address("eth0") is None


def _pci_pri_fmt() -> str:
    """PCI_PRI_FMT of the installed DPDK, as a Python %-format ("%.4" PRIx32 ":%.2" PRIx8 ... -> "%.4x:%.2x...")."""
    cflags = subprocess.run(["pkg-config", "--cflags-only-I", "libdpdk"], capture_output=True, text=True,
                            check=True).stdout.split()
    dirs = [f[2:] for f in cflags if f.startswith("-I")] + ["/usr/include/dpdk", "/usr/local/include"]
    header = next(os.path.join(d, "rte_pci.h") for d in dirs if os.path.exists(os.path.join(d, "rte_pci.h")))
    with open(header) as f:
        m = re.search(r"#define\s+PCI_PRI_FMT\s+(.*)", f.read())
    tokens = re.findall(r'"[^"]*"|PRIx(?:8|16|32|64)', m.group(1))
    return "".join(t[1:-1] if t.startswith('"') else "x" for t in tokens)


def test_pci_names_follow_dpdk_pci_pri_fmt():
    """DPDK names a PCI device (and the ethdev port on it) with rte_pci_device_name: PCI_PRI_FMT of the address."""
    fmt = _pci_pri_fmt()
    assert fmt.count("%") == 4
    for domain, bus, dev, fn, spec in [(0, 3, 0, 0, "03:00.0"), (0, 0x3B, 0x1F, 7, "0000:3B:1f.7"),
                                       (0xABCD, 0x81, 0, 1, "abcd:81:00.1,x=1")]:
        assert pdevice.port_name(spec) == fmt % (domain, bus, dev, fn)
