"""Established and new flows together: TCP ACKs over a set of established flows, and SYNs that each open a new
flow, in the ratio (1 - new_share) : new_share of packets.

Tunables: flows (established, default 100000), new_share (default 0.1), cluster_ip, dst_mac, dport.
"""
from pydp_trex import (CLUSTER_IP, IP, IP4_SRC, L4_IP4, MAX_FLOWS, TCP, APPLIANCE_MAC, STLVmFixIpv4, STLVmTupleGen,
                       STLVmWrFlowVar, ETH_LEN, ether, frame, stream, tuple_program)


class STLS1:
    def get_streams(self, direction=0, flows=100000, new_share=0.1, cluster_ip=CLUSTER_IP, dst_mac=APPLIANCE_MAC,
                    dport=80, **kwargs):
        share = float(new_share)
        if not 0 < share < 1:
            raise ValueError(f"new_share must be between 0 and 1, not {share}")
        est = frame(ether(dst_mac) / IP(src="198.18.0.0", dst=cluster_ip)
                    / TCP(sport=1024, dport=int(dport), flags="A", seq=2000, ack=1), 64)
        syn = frame(ether(dst_mac) / IP(src="198.19.0.0", dst=cluster_ip)
                    / TCP(sport=1024, dport=int(dport), flags="S", seq=1000), 64)
        # new flows come from a range of their own (198.19.0.0/16), so they never meet the established ones
        new_prog = [STLVmTupleGen(name="n", ip_min="198.19.0.0", ip_max="198.19.255.255", port_min=1024,
                                  port_max=65535, limit_flows=MAX_FLOWS),
                    STLVmWrFlowVar(fv_name="n.ip", pkt_offset=IP4_SRC),
                    STLVmFixIpv4(offset=ETH_LEN),
                    STLVmWrFlowVar(fv_name="n.port", pkt_offset=L4_IP4)]
        return [stream(est, _established(int(flows)), pps=round((1 - share) * 1000), name="established"),
                stream(syn, new_prog, pps=round(share * 1000), name="new")]


def _established(flows: int):
    """Established flows live in 198.18.0.0/16 only."""
    prog = tuple_program(flows, L4_IP4)
    prog[0].ip_max = prog[0].ip_min + 65535
    return prog


def register():
    return STLS1()
