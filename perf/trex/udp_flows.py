"""64-byte UDP to the cluster IP over many flows (the tuple generator): the fast path's headline figure.

Tunables: flows (default 1000000), size (frame bytes without FCS, default 64), cluster_ip, dst_mac, dport.
"""
from pydp_trex import CLUSTER_IP, IP, L4_IP4, UDP, APPLIANCE_MAC, ether, frame, stream, tuple_program


class STLS1:
    def get_streams(self, direction=0, flows=1000000, size=64, cluster_ip=CLUSTER_IP, dst_mac=APPLIANCE_MAC,
                    dport=8080, **kwargs):
        pkt = frame(ether(dst_mac) / IP(src="198.18.0.0", dst=cluster_ip) / UDP(sport=1024, dport=int(dport),
                                                                               chksum=0), int(size))
        return [stream(pkt, tuple_program(int(flows), L4_IP4), name="udp")]


def register():
    return STLS1()
