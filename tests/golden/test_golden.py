"""Golden packet tests: every traffic class through the real DPDK fast path (net_pcap), checked field by field."""

import ipaddress
import random

import pytest
from scapy.all import (ARP, ICMP, IP, TCP, UDP, Ether, ICMPv6EchoRequest, ICMPv6ND_NS, IPv6, IPv6ExtHdrFragment,
                       Raw, fragment, fragment6)
from scapy.layers.inet6 import ICMPv6PacketTooBig

from harness import EXCEPTION, Case, ip_bytes, model_edge, run_pcap

pytestmark = pytest.mark.dpdk

VIP4, VIP6 = "198.51.100.10", "2001:db8::10"
VPN, TUN, TUN6, OFF, DARK, BACKUP = ("198.51.100.20", "198.51.100.30", "2001:db8::30", "198.51.100.40",
                                     "198.51.100.50", "198.51.100.60")
APPLIANCE = "198.51.100.2"
GATEWAY_MAC = "02:00:00:00:00:fe"
LB_MAC = "02:00:00:00:00:01"          # where clients send (any MAC: pcap mode does not filter)

EDGES = {
    "web": [("e1", "198.51.100.21"), ("e2", "198.51.100.22"), ("e3", "198.51.100.23")],
    "web6": [("e1", "2001:db8::21"), ("e2", "2001:db8::22"), ("e3", "2001:db8::23")],
    "vpn": [("v1", "198.51.100.31"), ("v2", "198.51.100.32"), ("v3", "198.51.100.33")],
    "tun": [("t1", "203.0.113.41"), ("t2", "203.0.113.42")],
    "tun6": [("t1", "2001:db8:1::41"), ("t2", "2001:db8:1::42")],
}


def edge_mac(cluster: str, i: int) -> str:
    return f"02:00:00:{list(EDGES).index(cluster) + 1:02x}:00:{i + 1:02x}"


def _edges_toml(cluster, state="active"):
    out = []
    for i, (name, ip) in enumerate(EDGES.get(cluster, [("x1", "198.51.100.91"), ("x2", "198.51.100.92")])):
        mac = edge_mac(cluster, i) if cluster in EDGES else f"02:00:00:0f:00:{i + 1:02x}"
        out.append(f'[[cluster.edge]]\nname = "{name}"\nip = "{ip}"\nmac = "{mac}"\nstate = "{state}"\n')
    return "".join(out)


def config_text() -> str:
    clusters = [("web", VIP4, ""), ("web6", VIP6, ""), ("vpn", VPN, "ipsec_local_termination = true\n"),
                ("tun", TUN, 'dsr = "ipip"\n'), ("tun6", TUN6, 'dsr = "ipip"\n'), ("off", OFF, "enabled = false\n"),
                ("dark", DARK, ""), ("backup", BACKUP, "")]
    text = f"""
[dataplane]
lcores = "0-1"
flow_capacity = 65536
[dataplane.ipip]
gateway_mac = "{GATEWAY_MAC}"
source4 = "192.0.2.0/24"
source6 = "2001:db8:ffff::/64"
[[port]]
name = "p0"
device = "net_null0"
tap = ""
"""
    for vhid, (name, ip, extra) in enumerate(clusters, start=1):
        text += f'[[cluster]]\nname = "{name}"\ncluster_ip = "{ip}"\n{extra}[cluster.carp]\nvhid = {vhid}\n'
        text += _edges_toml(name, "disabled" if name == "dark" else "active")
    return text


def eth(payload):
    return bytes(Ether(dst=LB_MAC, src="02:00:00:00:aa:01") / payload)


def cases() -> list[Case]:
    c = []
    # TCP over IPv4: a handshake's packets stay together, many clients spread out
    for i in range(12):
        cl = f"203.0.113.{i + 1}"
        c.append(Case(f"TCP SYN from {cl}", eth(IP(src=cl, dst=VIP4) / TCP(sport=40000 + i, dport=80, flags="S")),
                      "web", group=f"tcp{i}"))
        c.append(Case(f"TCP ACK from {cl}", eth(IP(src=cl, dst=VIP4) / TCP(sport=40000 + i, dport=80, flags="A")
                                                / Raw(b"GET / HTTP/1.1\r\n\r\n")), "web", group=f"tcp{i}"))
    c.append(Case("TCP FIN", eth(IP(src="203.0.113.1", dst=VIP4) / TCP(sport=40000, dport=80, flags="FA")),
                  "web", group="tcp0"))
    c.append(Case("UDP to IPv4 cluster", eth(IP(src="203.0.113.50", dst=VIP4) / UDP(sport=5353, dport=53)), "web"))
    c.append(Case("ICMP echo to the cluster IP", eth(IP(src="203.0.113.51", dst=VIP4) / ICMP(type=8, id=77)), "web"))
    c.append(Case("tiny TCP with Ethernet padding",
                  eth(IP(src="203.0.113.52", dst=VIP4) / TCP(sport=1, dport=80, flags="S")) + bytes(6), "web"))
    # IPv4 fragments: all of a datagram on one edge
    for j, frag in enumerate(fragment(IP(src="203.0.113.60", dst=VIP4, id=4242) / UDP(sport=7, dport=9) /
                                      Raw(b"x" * 2400), fragsize=800)):
        c.append(Case(f"IPv4 fragment {j}", eth(frag), "web", group="frag4"))
    # ICMP fragmentation-needed about a flow: the edge of that flow
    c.append(Case("flow for ICMP error", eth(IP(src="203.0.113.70", dst=VIP4) / TCP(sport=5555, dport=443, flags="S")),
                  "web", group="icmp4"))
    c.append(Case("ICMP frag needed", eth(IP(src="192.0.2.254", dst=VIP4) / ICMP(type=3, code=4, nexthopmtu=1400) /
                                          IP(src=VIP4, dst="203.0.113.70") / TCP(sport=443, dport=5555, flags="A")),
                  "web", group="icmp4"))
    # IPv6
    c.append(Case("TCP SYN over IPv6", eth(IPv6(src="2001:db8:2::1", dst=VIP6) / TCP(sport=999, dport=80, flags="S")),
                  "web6", group="icmp6"))
    c.append(Case("ICMPv6 packet too big", eth(IPv6(src="2001:db8:3::1", dst=VIP6) / ICMPv6PacketTooBig(mtu=1280) /
                                               IPv6(src=VIP6, dst="2001:db8:2::1") / TCP(sport=80, dport=999)),
                  "web6", group="icmp6"))
    c.append(Case("UDP over IPv6", eth(IPv6(src="2001:db8:2::2", dst=VIP6) / UDP(sport=1000, dport=53)), "web6"))
    c.append(Case("ICMPv6 echo", eth(IPv6(src="2001:db8:2::3", dst=VIP6) / ICMPv6EchoRequest(id=5)), "web6"))
    for j, frag in enumerate(fragment6(IPv6(src="2001:db8:2::4", dst=VIP6) / IPv6ExtHdrFragment(id=99) /
                                       UDP(sport=1, dport=2) / Raw(b"y" * 3000), 1280)):
        c.append(Case(f"IPv6 fragment {j}", eth(frag), "web6", group="frag6"))
    # IPSec local termination: IKE, NAT-T and ESP of one client on one edge
    for i in range(6):
        cl = f"203.0.113.{100 + i}"
        g = f"ipsec{i}"
        c.append(Case(f"IKE from {cl}", eth(IP(src=cl, dst=VPN) / UDP(sport=500, dport=500) / Raw(bytes(28))), "vpn",
                      group=g))
        c.append(Case(f"NAT-T from {cl}", eth(IP(src=cl, dst=VPN) / UDP(sport=4501 + i, dport=4500) / Raw(bytes(40))),
                      "vpn", group=g))
        c.append(Case(f"ESP from {cl}", eth(IP(src=cl, dst=VPN, proto=50) / Raw(bytes.fromhex("0000abcd00000001")
                                                                              + bytes(32))), "vpn", group=g))
    c.append(Case("IKE to a cluster without local termination hashes on ports",
                  eth(IP(src="203.0.113.100", dst=VIP4) / UDP(sport=500, dport=500)), "web"))
    # IP-in-IP
    for i in range(4):
        c.append(Case(f"IPv4 in IPv4 #{i}", eth(IP(src=f"203.0.113.{150 + i}", dst=TUN, tos=0x28) /
                                              TCP(sport=2000 + i, dport=80, flags="S")), "tun"))
        c.append(Case(f"IPv6 in IPv6 #{i}", eth(IPv6(src=f"2001:db8:4::{i + 1}", dst=TUN6) /
                                              UDP(sport=3000 + i, dport=53)), "tun6"))
    c.append(Case("IP-in-IP with Ethernet padding",
                  eth(IP(src="203.0.113.160", dst=TUN) / TCP(sport=9, dport=80, flags="S")) + bytes(6), "tun"))
    # exception path: everything that is not for a cluster IP
    c.append(Case("ARP for the cluster IP", bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=VIP4)), verdict=EXCEPTION))
    c.append(Case("CARP advertisement", bytes(Ether(dst="01:00:5e:00:00:12") / IP(dst="224.0.0.18", proto=112, ttl=255)
                                             / Raw(bytes(36))), verdict=EXCEPTION))
    c.append(Case("ping to the appliance", eth(IP(src="203.0.113.9", dst=APPLIANCE) / ICMP()), verdict=EXCEPTION))
    c.append(Case("SSH to the appliance", eth(IP(src="203.0.113.9", dst=APPLIANCE) / TCP(dport=22, flags="S")),
                  verdict=EXCEPTION))
    c.append(Case("neighbour solicitation for the IPv6 cluster IP",
                  eth(IPv6(src="2001:db8:2::9", dst="ff02::1:ff00:10", hlim=255) / ICMPv6ND_NS(tgt=VIP6)),
                  verdict=EXCEPTION))
    c.append(Case("LLDP", bytes(Ether(dst="01:80:c2:00:00:0e", type=0x88CC) / Raw(bytes(30))), verdict=EXCEPTION))
    # drops
    c.append(Case("disabled cluster", eth(IP(src="203.0.113.9", dst=OFF) / TCP(flags="S")), "off",
                  verdict="drop:disabled"))
    c.append(Case("cluster with no edge up", eth(IP(src="203.0.113.9", dst=DARK) / TCP(flags="S")), "dark",
                  verdict="drop:no_edge"))
    c.append(Case("cluster owned by the peer", eth(IP(src="203.0.113.9", dst=BACKUP) / TCP(flags="S")), "backup",
                  verdict="drop:not_active"))
    good = eth(IP(src="203.0.113.9", dst=VIP4) / TCP(sport=1, dport=80, flags="S"))
    c.append(Case("IPv4 header cut short", good[:14 + 12], verdict="drop:malformed"))
    c.append(Case("IPv4 total length beyond the frame", good[:14 + 30], verdict="drop:malformed"))
    c.append(Case("IPv4 IHL 4", good[:14] + bytes([0x44]) + good[15:], verdict="drop:malformed"))
    c.append(Case("TCP header cut short", eth(IP(src="203.0.113.9", dst=VIP4, proto=6) / Raw(bytes(10))),
                  verdict="drop:malformed"))
    c.append(Case("IPv6 payload length beyond the frame",
                  eth(IPv6(src="2001:db8:2::9", dst=VIP6, plen=400) / UDP()), verdict="drop:malformed"))
    c.append(Case("ICMP error with a truncated quote",
                  eth(IP(src="192.0.2.254", dst=VIP4) / ICMP(type=3, code=4) / Raw(bytes([0x45]) + bytes(10))),
                  verdict="drop:malformed"))
    return c


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("golden")
    cs = cases()
    res = run_pcap(tmp, config_text(), [c.frame for c in cs], extra_args=["--inactive", "backup"])
    res.cases = cs
    return res


def _edge_of(cluster, mac_bytes):
    for i, (name, _ip) in enumerate(EDGES[cluster]):
        if bytes.fromhex(edge_mac(cluster, i).replace(":", "")) == mac_bytes:
            return name
    return None


def test_every_case_gets_its_verdict(golden):
    port_mac = bytes.fromhex(golden.summary["ports"][0]["mac"].replace(":", ""))
    out, exc = list(golden.out), list(golden.exc)
    drops = {}
    for case in golden.cases:
        if case.verdict == EXCEPTION:
            assert exc, f"{case.description}: nothing reached the exception path"
            assert exc.pop(0) == case.frame, f"{case.description}: exception frame altered"
            continue
        if case.verdict.startswith("drop:"):
            reason = case.verdict.split(":", 1)[1]
            drops[reason] = drops.get(reason, 0) + 1
            continue
        assert out, f"{case.description}: nothing forwarded"
        frame = out.pop(0)
        names = [n for n, _ in EDGES[case.cluster]]
        vpn = case.cluster == "vpn"
        want = model_edge(case.frame, names, ipsec_local=vpn)
        if case.cluster in ("tun", "tun6"):
            pkt = Ether(frame)
            outer = pkt[IP] if case.cluster == "tun" else pkt[IPv6]
            edge_ip = dict(EDGES[case.cluster])[want]
            assert pkt.dst == GATEWAY_MAC and bytes.fromhex(pkt.src.replace(":", "")) == port_mac
            assert outer.dst == edge_ip, f"{case.description}: tunnel to {outer.dst}, model says {edge_ip}"
            if case.cluster == "tun":
                assert outer.proto == 4 and outer.ttl == 64 and outer.flags.DF
                assert ipaddress.ip_address(outer.src) in ipaddress.ip_network("192.0.2.0/24")
                assert outer.tos == Ether(case.frame)[IP].tos
                recomputed = IP(bytes(IP(bytes(outer)[:20])))
                del recomputed.chksum
                assert IP(bytes(recomputed)).chksum == outer.chksum, "outer IPv4 checksum"
                assert outer.len == 20 + len(ip_bytes(case.frame))
                inner = bytes(outer)[20:outer.len]
            else:
                assert outer.nh == 41 and outer.hlim == 64
                assert ipaddress.ip_address(outer.src) in ipaddress.ip_network("2001:db8:ffff::/64")
                assert outer.plen == len(ip_bytes(case.frame))
                inner = bytes(outer)[40:40 + outer.plen]
            assert inner == ip_bytes(case.frame), f"{case.description}: inner packet altered"
            case.edge = want
            continue
        got = _edge_of(case.cluster, frame[:6])
        assert got == want, f"{case.description}: sent to {got}, the model says {want}"
        assert frame[6:12] == port_mac, f"{case.description}: source MAC is not the appliance's"
        assert frame[12:] == case.frame[12:], f"{case.description}: DSR l2 must leave the IP packet untouched"
        case.edge = got
    assert not out, f"{len(out)} frames forwarded beyond the cases"
    assert not exc, f"{len(exc)} frames on the exception path beyond the cases"
    assert golden.summary["drops"] == drops
    stats = golden.summary["clusters"]
    assert stats["off"]["drop_disabled"] == 1
    assert stats["dark"]["drop_no_edge"] == 1
    assert stats["backup"]["drop_not_active"] == 1


def test_groups_share_an_edge(golden):
    test_every_case_gets_its_verdict(golden)   # fills case.edge
    groups = {}
    for case in golden.cases:
        if case.group:
            groups.setdefault(case.group, set()).add(case.edge)
    assert groups and all(len(edges) == 1 for edges in groups.values()), groups
    # IPSec clients are spread over the edges, not all pinned to one
    assert len({next(iter(groups[f"ipsec{i}"])) for i in range(6)}) > 1


def test_counters_add_up(golden):
    """The worker adds most counters once per pass of packets, not per packet: every one must still add up."""
    s = golden.summary
    assert s["rx_packets"] == len(golden.cases)
    assert s["rx_packets"] == s["tx_packets"] + s["exc_to_kernel"] + sum(s["drops"].values())
    assert s["flows"]["inserts"] > 0 and s["flows"]["hits"] > 0
    assert s["rx_bytes"] == sum(len(c.frame) for c in golden.cases)
    forwarded = [c for c in golden.cases if c.verdict == "edge"]
    assert len(forwarded) == len(golden.out) == s["tx_packets"]
    assert s["tx_bytes"] == sum(len(f) for f in golden.out)
    for name, cl in s["clusters"].items():
        sent = [f for c, f in zip(forwarded, golden.out) if c.cluster == name]
        assert cl["packets"] == len(sent) == sum(e["packets"] for e in cl["edges"].values()), name
        assert cl["bytes"] == sum(len(f) for f in sent) == sum(e["bytes"] for e in cl["edges"].values()), name
    # every packet that reached the flow table (forwarded, or dropped there for want of an edge) was looked up
    # once and counted in exactly one class
    looked_up = forwarded + [c for c in golden.cases if c.verdict == "drop:no_edge"]
    assert s["flows"]["lookups"] == len(looked_up)
    classes = dict(s["classes"])
    assert classes.pop("ipv6") == sum(1 for c in looked_up if c.frame[12:14] == b"\x86\xdd") > 0
    assert sum(classes.values()) == len(looked_up)
    assert classes["tcp"] > 0 and classes["udp"] > 0 and classes["ipsec"] > 0


def test_distribution_follows_maglev(tmp_path):
    """3000 new flows: each lands where the model says, and the shares are even."""
    rng = random.Random(7)
    frames = [eth(IP(src=str(ipaddress.IPv4Address(0xCB007100 + rng.randrange(256))), dst=VIP4) /
                  TCP(sport=rng.randrange(1024, 65535), dport=80, flags="S")) for _ in range(3000)]
    res = run_pcap(tmp_path, config_text(), frames)
    names = [n for n, _ in EDGES["web"]]
    counts = dict.fromkeys(names, 0)
    assert len(res.out) == len(frames)
    for frame, out in zip(frames, res.out):
        got = _edge_of("web", out[:6])
        assert got == model_edge(frame, names)
        counts[got] += 1
    for n in names:
        assert abs(counts[n] / len(frames) - 1 / 3) < 0.05, counts


def test_garbage_never_crashes_and_is_accounted(tmp_path):
    """Mutated and random frames among good ones: the worker survives and every frame is accounted for."""
    rng = random.Random(11)
    base = [eth(IP(src="203.0.113.9", dst=VIP4) / TCP(sport=5, dport=80, flags="S")),
            eth(IPv6(src="2001:db8:2::9", dst=VIP6) / IPv6ExtHdrFragment() / UDP()),
            eth(IP(src="192.0.2.254", dst=VIP4) / ICMP(type=3, code=4) / IP(src=VIP4, dst="203.0.113.9") / UDP())]
    frames = []
    for i in range(3000):
        f = bytearray(rng.choice(base))
        for _ in range(rng.randrange(1, 6)):
            f[rng.randrange(len(f))] = rng.randrange(256)
        if rng.random() < 0.3:
            f = f[: rng.randrange(1, len(f))]
        if rng.random() < 0.1:
            f = bytearray(rng.randbytes(rng.randrange(1, 120)))
        frames.append(bytes(f))
    good = eth(IP(src="203.0.113.77", dst=VIP4) / TCP(sport=77, dport=80, flags="S"))
    frames.append(good)
    res = run_pcap(tmp_path, config_text(), frames)
    s = res.summary
    assert s["rx_packets"] == len(frames)
    assert s["rx_packets"] == s["tx_packets"] + s["exc_to_kernel"] + sum(s["drops"].values())
    assert s["drops"].get("malformed", 0) > 0
    assert res.out and res.out[-1][12:] == good[12:], "the good frame after the garbage was forwarded"


def test_arp_and_icmp_floods_do_not_starve_carp_or_bgp(tmp_path):
    """Issue 17: a broadcast ARP storm and an ICMP flood, each 10x over its class's budget, with forged CARP (TTL
    64: not from the link) among them. Every real CARP advert (TTL 255, IPv4 and IPv6) and every BGP/BFD packet to
    the appliance reaches the kernel; the ARP storm is cut and counted in the ARP class, the ICMP flood and the
    forged CARP in the bulk class, nothing in the CARP or control classes."""
    text = config_text().replace("flow_capacity = 65536",
                                 "flow_capacity = 65536\nexception_pps = 1000\nexception_priority_pps = 1000")
    carp4 = bytes(Ether(dst="01:00:5e:00:00:12") / IP(src="198.51.100.3", dst="224.0.0.18", proto=112, ttl=255)
                  / Raw(bytes(36)))
    carp6 = bytes(Ether(dst="33:33:00:00:00:12") / IPv6(src="fe80::3", dst="ff02::12", nh=112, hlim=255)
                  / Raw(bytes(36)))
    forged = bytes(Ether(dst="01:00:5e:00:00:12") / IP(src="203.0.113.66", dst="224.0.0.18", proto=112, ttl=64)
                   / Raw(bytes(36)))
    bgp = [eth(IP(src="198.51.100.9", dst=APPLIANCE) / TCP(sport=179, dport=40000 + i, flags="A")) for i in range(20)]
    bgp += [eth(IP(src="198.51.100.9", dst=APPLIANCE) / TCP(sport=40000 + i, dport=179, flags="S")) for i in range(20)]
    bfd = [eth(IP(src="198.51.100.9", dst=APPLIANCE) / UDP(sport=49152 + i, dport=3784) / Raw(bytes(24)))
           for i in range(20)]
    control = bgp + bfd
    frames = []
    for i in range(20000):
        if i % 2 == 0:
            frames.append(bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:07:01")
                                / ARP(op=1, psrc=f"198.51.100.{i % 200 + 10}", pdst=APPLIANCE)))
        else:
            frames.append(eth(IP(src=f"203.0.113.{i % 250 + 1}", dst=APPLIANCE) / ICMP(type=8, id=i % 65536)))
        if i % 10 == 0:
            frames.append(forged)
        if i % 400 == 0:            # 50 adverts: in the CARP class's burst (the pcap run takes milliseconds)
            frames.append(carp4 if i % 800 == 0 else carp6)
        if i % 333 == 0:
            frames.append(control[(i // 333) % len(control)])
    res = run_pcap(tmp_path, text, frames)
    s = res.summary
    assert sum(1 for f in res.exc if f in (carp4, carp6)) == 50, "a CARP advert was crowded out"
    assert s["exc_carp"] == 50
    sent_control = sum(1 for f in frames if f in control)
    assert sum(1 for f in res.exc if f in control) == sent_control and s["exc_control"] == sent_control
    d = s["drops"]
    assert d.get("exc_carp_ratelimit", 0) == 0 and d.get("exc_control_ratelimit", 0) == 0
    arp_passed = sum(1 for f in res.exc if f[12:14] == b"\x08\x06")
    assert s["exc_arp"] == arp_passed and arp_passed < 500, f"{arp_passed} ARP frames passed a 1000 pps budget"
    assert d["exc_arp_ratelimit"] == 10000 - arp_passed
    forged_passed = sum(1 for f in res.exc if f == forged)
    icmp_passed = len(res.exc) - arp_passed - 50 - sent_control - forged_passed
    assert d["exc_ratelimit"] == 10000 + 2000 - icmp_passed - forged_passed
    assert s["exc_to_kernel"] == len(res.exc)


def test_a_forged_carp_flood_is_bounded(tmp_path):
    """A flood of TTL-255 CARP (the data plane cannot tell forged from real: the HMAC is the CARP instance's
    job) is cut to exception_carp_pps and counted in exc_carp_ratelimit; the other classes keep their budgets."""
    text = config_text().replace("flow_capacity = 65536", "flow_capacity = 65536\nexception_carp_pps = 300")
    carp = bytes(Ether(dst="01:00:5e:00:00:12") / IP(src="198.51.100.66", dst="224.0.0.18", proto=112, ttl=255)
                 / Raw(bytes(36)))
    arp = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:07:01") / ARP(op=1, psrc="198.51.100.7",
                                                                             pdst=APPLIANCE))
    frames = [carp] * 5000 + [arp] * 10
    res = run_pcap(tmp_path, text, frames)
    s = res.summary
    assert 0 < s["exc_carp"] < 300, f"{s['exc_carp']} forged adverts passed a 300 pps budget"
    assert s["drops"]["exc_carp_ratelimit"] == 5000 - s["exc_carp"]
    assert s["exc_arp"] == 10 and s["drops"].get("exc_arp_ratelimit", 0) == 0


def test_exception_flood_is_bounded_and_carp_gets_through(tmp_path):
    """5000 frames for the appliance, 50 CARP adverts among them, 200 client packets: the bulk class is cut to its
    budget, every CARP advert reaches the kernel, every client packet is forwarded."""
    text = config_text().replace("flow_capacity = 65536",
                                 "flow_capacity = 65536\nexception_pps = 1000\nexception_priority_pps = 1000")
    carp = bytes(Ether(dst="01:00:5e:00:00:12") / IP(dst="224.0.0.18", proto=112, ttl=255) / Raw(bytes(36)))
    frames = []
    for i in range(5000):
        frames.append(eth(IP(src=f"203.0.113.{i % 250 + 1}", dst=APPLIANCE) / UDP(sport=i % 60000 + 1, dport=9)))
        if i % 100 == 0:
            frames.append(carp)
        if i % 25 == 0:
            frames.append(eth(IP(src="203.0.113.5", dst=VIP4) / TCP(sport=i + 1, dport=80, flags="S")))
    res = run_pcap(tmp_path, text, frames)
    s = res.summary
    assert sum(1 for f in res.exc if f == carp) == 50, "a CARP advert was crowded out"
    assert s["drops"].get("exc_carp_ratelimit", 0) == 0
    bulk_passed = len(res.exc) - 50
    assert bulk_passed < 500, f"{bulk_passed} bulk frames passed a 1000 pps budget in a burst"
    assert s["drops"]["exc_ratelimit"] == 5000 - bulk_passed
    assert s["tx_packets"] == 200
