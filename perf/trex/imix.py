"""IMIX: 64, 594 and 1518-byte frames (with FCS) in the 7:4:1 packet mix, UDP to the cluster IP over many flows.

Tunables: flows (per size, default 100000), cluster_ip, dst_mac.
"""
from pydp_trex import CLUSTER_IP, IP, L4_IP4, UDP, APPLIANCE_MAC, ether, frame, stream, tuple_program

# frame size without FCS, packets-per-second weight
IMIX = ((60, 28), (590, 16), (1514, 4))


class STLS1:
    def get_streams(self, direction=0, flows=100000, cluster_ip=CLUSTER_IP, dst_mac=APPLIANCE_MAC, **kwargs):
        out = []
        for size, pps in IMIX:
            pkt = frame(ether(dst_mac) / IP(src="198.18.0.0", dst=cluster_ip) / UDP(sport=1024, dport=8080,
                                                                                   chksum=0), size)
            out.append(stream(pkt, tuple_program(int(flows), L4_IP4), pps=pps, name=f"imix{size + 4}"))
        return out


def register():
    return STLS1()
