"""What the pydp TRex profiles share: the TRex API import, the lab's addresses and the tuple-generator program.

The profiles are TRex stateless profiles (``register()`` returning an object with ``get_streams()``). They load
with the official client of a TRex release (``trex.stl.api``) and with ``trex_stl_lib`` from PyPI; the second
is what perf/run and the tests use to compile a profile for pydp-gen (perf/trex/compile.py).

Field offsets are given as numbers, not as scapy field names ("IP.src"): trex_stl_lib 0.3 resolves names through
a private scapy attribute that current scapy no longer has, while numbers work with every client.
"""

try:                                   # the client shipped with a TRex release
    from trex.stl.api import *         # noqa: F401,F403
    from trex.stl.api import STLPktBuilder, STLScVmRaw, STLStream, STLTXCont, STLVmFixIpv4, STLVmTupleGen, \
        STLVmWrFlowVar
except ImportError:                    # PyPI: trex_stl_lib
    from trex_stl_lib.api import *     # noqa: F401,F403
    from trex_stl_lib.api import STLPktBuilder, STLScVmRaw, STLStream, STLTXCont, STLVmFixIpv4, STLVmTupleGen, \
        STLVmWrFlowVar

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

CLUSTER_IP = "198.51.100.10"           # the appliance's cluster IP (documentation range)
CLUSTER_IP6 = "2001:db8::10"
APPLIANCE_MAC = "02:00:00:00:00:02"    # the appliance's data port
SENDER_MAC = "02:00:00:00:00:01"
SRC_MIN, SRC_MAX = "198.18.0.0", "198.19.255.255"   # RFC 2544 benchmarking range: 131072 sources
PORT_MIN, PORT_MAX = 1024, 65535
ETH_LEN, IP4_LEN, IP6_LEN = 14, 20, 40
IP4_SRC = ETH_LEN + 12                 # offsets in an Ethernet + IPv4 frame
L4_IP4 = ETH_LEN + IP4_LEN
IP6_SRC_LOW32 = ETH_LEN + 8 + 12       # the last 32 bits of the IPv6 source address
L4_IP6 = ETH_LEN + IP6_LEN
MAX_FLOWS = 2 ** 32 - 1                # TRex's limit_flows is 32 bits


def frame(pkt, size: int):
    """pkt padded with a payload to size bytes (without FCS); never shorter than the headers."""
    pad = size - len(pkt)
    return pkt / Raw(bytes(i & 0xFF for i in range(pad))) if pad > 0 else pkt


def ether(dst_mac: str = APPLIANCE_MAC):
    return Ether(src=SENDER_MAC, dst=dst_mac)


def tuple_program(flows: int, l4_offset: int, ip_offset: int = IP4_SRC, ipv4: bool = True, name: str = "t"):
    """Flows distinct (source address, source port) pairs: the address walks the benchmarking range, the port
    steps when it wraps (TRex's tuple generator). The IPv4 checksum is fixed afterwards."""
    if not 1 <= flows <= MAX_FLOWS:
        raise ValueError(f"flows must be in 1..{MAX_FLOWS}, not {flows}")
    ins = [STLVmTupleGen(name=name, ip_min=SRC_MIN, ip_max=SRC_MAX, port_min=PORT_MIN, port_max=PORT_MAX,
                         limit_flows=flows),
           STLVmWrFlowVar(fv_name=f"{name}.ip", pkt_offset=ip_offset)]
    if ipv4:
        ins.append(STLVmFixIpv4(offset=ETH_LEN))
    ins.append(STLVmWrFlowVar(fv_name=f"{name}.port", pkt_offset=l4_offset))
    return ins


def stream(pkt, instructions, pps: float = 1.0, name: str | None = None):
    """A continuous stream; pps is the stream's share when a profile mixes streams (perf/run scales the total)."""
    return STLStream(name=name, packet=STLPktBuilder(pkt=pkt, vm=STLScVmRaw(instructions)),
                     mode=STLTXCont(pps=pps))
