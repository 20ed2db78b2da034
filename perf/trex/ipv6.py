"""64-byte UDP/IPv6 to an IPv6 cluster IP over many flows (the low 32 bits of the source and the source port).

Tunables: flows (default 1000000), size (default 78: the smallest IPv6 frame with 16 payload bytes), cluster_ip,
dst_mac.
"""
from pydp_trex import (CLUSTER_IP6, IP6_SRC_LOW32, IPv6, L4_IP6, UDP, APPLIANCE_MAC, ether, frame, stream,
                       tuple_program)


class STLS1:
    def get_streams(self, direction=0, flows=1000000, size=78, cluster_ip=CLUSTER_IP6, dst_mac=APPLIANCE_MAC,
                    **kwargs):
        # the UDP checksum is not recomputed per packet: pydp does not check it (a checksum offload would)
        pkt = frame(ether(dst_mac) / IPv6(src="2001:db8:1::c612:0", dst=cluster_ip) / UDP(sport=1024, dport=8080),
                    int(size))
        return [stream(pkt, tuple_program(int(flows), L4_IP6, ip_offset=IP6_SRC_LOW32, ipv4=False), name="udp6")]


def register():
    return STLS1()
