"""IKE and ESP to the cluster IP: IKE on UDP 500, NAT-traversal on UDP 4500 and ESP (IP protocol 50), each from
many peers; the ESP SPI changes with the peer.

Tunables: flows (peers per stream, default 10000), cluster_ip, dst_mac.
"""
import struct

from pydp_trex import (CLUSTER_IP, IP, IP4_SRC, L4_IP4, UDP, APPLIANCE_MAC, ETH_LEN, Raw, STLVmFixIpv4,
                       STLVmTupleGen, STLVmWrFlowVar, ether, frame, stream, tuple_program)

# stream name, UDP port (None: ESP), packet weight
STREAMS = (("ike", 500, 1), ("natt", 4500, 4), ("esp", None, 5))


class STLS1:
    def get_streams(self, direction=0, flows=10000, cluster_ip=CLUSTER_IP, dst_mac=APPLIANCE_MAC, **kwargs):
        out = []
        for name, port, weight in STREAMS:
            ip = IP(src="198.18.0.0", dst=cluster_ip)
            if port is None:
                # ESP header: SPI, sequence number; the SPI follows the peer's source (tuple "port" variable)
                pkt = frame(ether(dst_mac) / IP(src="198.18.0.0", dst=cluster_ip, proto=50)
                            / Raw(struct.pack("!II", 0x1000, 1)), 128)
                prog = [STLVmTupleGen(name="e", ip_min="198.18.0.0", ip_max="198.19.255.255", port_min=256,
                                      port_max=65535, limit_flows=int(flows)),
                        STLVmWrFlowVar(fv_name="e.ip", pkt_offset=IP4_SRC),
                        STLVmFixIpv4(offset=ETH_LEN),
                        STLVmWrFlowVar(fv_name="e.port", pkt_offset=L4_IP4 + 2)]
            else:
                pkt = frame(ether(dst_mac) / ip / UDP(sport=port, dport=port, chksum=0), 128)
                # the source port stays the IKE port: only the address varies (one flow per peer)
                prog = tuple_program(int(flows), L4_IP4)[:3]
            out.append(stream(pkt, prog, pps=weight, name=name))
        return out


def register():
    return STLS1()
