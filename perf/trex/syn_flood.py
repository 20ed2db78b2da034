"""TCP SYN flood: every packet opens a new flow (the tuple generator never repeats within 2^32 - 1 packets), so
the figure is the fast path's new-flow rate (flow-table insert and Maglev pick per packet).

Tunables: flows (default 4294967295: no repeat), cluster_ip, dst_mac, dport.
"""
from pydp_trex import CLUSTER_IP, IP, L4_IP4, MAX_FLOWS, TCP, APPLIANCE_MAC, ether, frame, stream, tuple_program


class STLS1:
    def get_streams(self, direction=0, flows=MAX_FLOWS, cluster_ip=CLUSTER_IP, dst_mac=APPLIANCE_MAC, dport=80,
                    **kwargs):
        pkt = frame(ether(dst_mac) / IP(src="198.18.0.0", dst=cluster_ip)
                    / TCP(sport=1024, dport=int(dport), flags="S", seq=1000), 64)
        return [stream(pkt, tuple_program(int(flows), L4_IP4), name="syn")]


def register():
    return STLS1()
