"""IKE and ESP to the cluster IP: IKE on UDP 500, NAT-traversal on UDP 4500 and ESP (IP protocol 50), each from
many peers; each peer's ESP has its own SPI.

Tunables: flows (peers per stream, default 10000), cluster_ip, dst_mac.
"""
import struct

from pydp_trex import (CLUSTER_IP, IP, L4_IP4, UDP, APPLIANCE_MAC, Raw, STLVmWrFlowVar, ether, frame, stream,
                       tuple_program)

# stream name, UDP port (None: ESP), packet weight
STREAMS = (("ike", 500, 1), ("natt", 4500, 4), ("esp", None, 5))


class STLS1:
    def get_streams(self, direction=0, flows=10000, cluster_ip=CLUSTER_IP, dst_mac=APPLIANCE_MAC, **kwargs):
        out = []
        for name, port, weight in STREAMS:
            if port is None:
                # ESP header: SPI, sequence number; each peer has its own SPI (its address as a number)
                pkt = frame(ether(dst_mac) / IP(src="198.18.0.0", dst=cluster_ip, proto=50)
                            / Raw(struct.pack("!II", 0x1000, 1)), 128)
                prog = tuple_program(int(flows), L4_IP4)[:3] + [STLVmWrFlowVar(fv_name="t.ip", pkt_offset=L4_IP4)]
            else:
                pkt = frame(ether(dst_mac) / IP(src="198.18.0.0", dst=cluster_ip)
                            / UDP(sport=port, dport=port, chksum=0), 128)
                # the source port stays the IKE port: only the address varies (one flow per peer)
                prog = tuple_program(int(flows), L4_IP4)[:3]
            out.append(stream(pkt, prog, pps=weight, name=name))
        return out


def register():
    return STLS1()
