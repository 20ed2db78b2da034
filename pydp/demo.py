"""pydp demo: a capture of mixed client traffic through the real fast path, and what it decided.

Builds a capture (TCP from many clients to an IPv4 and an IPv6 cluster, UDP, fragments, IKE/ESP to a cluster with
IPSec local termination, ARP, CARP, and some malformed frames), runs it through pydp-dataplane in pcap mode (DPDK
net_pcap: the same C code that forwards on a NIC), and prints the per-edge shares, the exception path, the drops,
and a check that every forwarded frame is a DSR rewrite (only the MAC addresses changed).

    python3 -m pydp.demo [--flows 3000] [--json FILE] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pydp import add_version_option
from pydp.pcap import write_pcap

DEMO_CONFIG = """
# pydp demo appliance: one port (replaced by pcap files in pcap mode), three clusters
[dataplane]
lcores = "0-1"
flow_capacity = 262144

[[port]]
name = "wan0"
device = "net_null0"
tap = ""

[[cluster]]
name = "web"
cluster_ip = "198.51.100.10"
[cluster.carp]
vhid = 10
[[cluster.edge]]
name = "edge-a"
ip = "198.51.100.21"
mac = "02:00:00:00:00:21"
[[cluster.edge]]
name = "edge-b"
ip = "198.51.100.22"
mac = "02:00:00:00:00:22"
[[cluster.edge]]
name = "edge-c"
ip = "198.51.100.23"
mac = "02:00:00:00:00:23"
weight = 2

[[cluster]]
name = "web6"
cluster_ip = "2001:db8::10"
[cluster.carp]
vhid = 11
[[cluster.edge]]
name = "edge-a"
ip = "2001:db8::21"
mac = "02:00:00:00:00:21"
[[cluster.edge]]
name = "edge-b"
ip = "2001:db8::22"
mac = "02:00:00:00:00:22"

[[cluster]]
name = "vpn"
cluster_ip = "198.51.100.20"
ipsec_local_termination = true
[cluster.carp]
vhid = 12
[[cluster.edge]]
name = "vpn-a"
ip = "198.51.100.31"
mac = "02:00:00:00:00:31"
[[cluster.edge]]
name = "vpn-b"
ip = "198.51.100.32"
mac = "02:00:00:00:00:32"
"""


def build_capture(flows: int, seed: int = 1):
    import random

    from scapy.all import ARP, ICMP, IP, TCP, UDP, Ether, IPv6, Raw, fragment

    rng = random.Random(seed)
    lb = "02:00:00:00:00:01"
    frames = []
    for i in range(flows):
        src = f"203.0.113.{rng.randrange(1, 255)}"
        sport = rng.randrange(1024, 65535)
        for flags in ("S", "A", "PA", "FA"):
            frames.append(Ether(dst=lb) / IP(src=src, dst="198.51.100.10") / TCP(sport=sport, dport=443, flags=flags))
    for i in range(flows // 4):
        src = f"2001:db8:5::{rng.randrange(1, 0xffff):x}"
        frames.append(Ether(dst=lb) / IPv6(src=src, dst="2001:db8::10") / TCP(sport=rng.randrange(1024, 65535),
                                                                             dport=443, flags="S"))
    for i in range(50):
        frames.append(Ether(dst=lb) / IP(src=f"203.0.113.{i + 1}", dst="198.51.100.10") / UDP(sport=5000 + i, dport=53))
    frames += [Ether(dst=lb) / f for f in fragment(IP(src="203.0.113.7", dst="198.51.100.10") / UDP(sport=9, dport=9)
                                                   / Raw(b"z" * 3000), fragsize=1000)]
    for i in range(40):
        cl = f"203.0.113.{100 + i}"
        frames.append(Ether(dst=lb) / IP(src=cl, dst="198.51.100.20") / UDP(sport=500, dport=500) / Raw(bytes(40)))
        frames.append(Ether(dst=lb) / IP(src=cl, dst="198.51.100.20", proto=50) / Raw(bytes(48)))
    frames.append(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="198.51.100.10"))
    frames.append(Ether(dst="01:00:5e:00:00:12") / IP(dst="224.0.0.18", proto=112, ttl=255) / Raw(bytes(36)))
    frames.append(Ether(dst=lb) / IP(src="203.0.113.9", dst="198.51.100.2") / ICMP())
    good = bytes(Ether(dst=lb) / IP(src="203.0.113.9", dst="198.51.100.10") / TCP(flags="S"))
    raw = [good[:20], good[:14] + b"\x46" + good[15:30]]
    return [bytes(f) for f in frames] + raw


def run(workdir: Path, flows: int) -> dict:
    from scapy.all import rdpcap

    cfg = workdir / "demo.toml"
    cfg.write_text(DEMO_CONFIG)
    frames = build_capture(flows)
    pin, pout, pexc, stats = (workdir / n for n in ("in.pcap", "out.pcap", "kernel.pcap", "stats.json"))
    write_pcap(pin, frames)
    proc = subprocess.run([sys.executable, "-P", "-m", "pydp.dataplane", "--config", str(cfg), "--pcap-in", str(pin),
                           "--pcap-out", str(pout), "--pcap-exception", str(pexc), "--stats-json", str(stats)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"pydp-dataplane failed:\n{proc.stderr}")
    summary = json.loads(stats.read_text())
    port_mac = bytes.fromhex(summary["ports"][0]["mac"].replace(":", ""))
    outs = [bytes(p) for p in rdpcap(str(pout))]
    # DSR l2: every forwarded frame left with our source MAC and its IP packet byte for byte as it came
    ins = {f[12:] for f in frames}
    dsr_ok = sum(1 for o in outs if o[6:12] == port_mac and o[12:] in ins)
    summary["dsr_rewrites_verified"] = dsr_ok
    summary["frames_in"] = len(frames)
    return summary


def report(s: dict) -> str:
    lines = [f"pydp demo: {s['frames_in']} frames through the fast path (DPDK net_pcap)", ""]
    for name, c in s["clusters"].items():
        total = sum(e["new_flows"] for e in c["edges"].values()) or 1
        lines.append(f"cluster {name}: {c['packets']} packets forwarded")
        for edge, e in c["edges"].items():
            share = e["new_flows"] / total
            lines.append(f"  {edge:<8} {e['new_flows']:>6} new flows  {share:6.1%}  {'#' * round(share * 40)}")
    lines += ["",
              f"exception path (ARP, CARP, traffic for the appliance): {s['exc_to_kernel']} frames",
              f"drops: {', '.join(f'{k} {v}' for k, v in s['drops'].items()) or 'none'}",
              f"flow table: {s['flow_table']['live']} flows live of {s['flow_table']['capacity']} entries",
              f"DSR check: {s['dsr_rewrites_verified']} of {s['tx_packets']} forwarded frames are the client's IP "
              "packet untouched with new MAC addresses"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pydp-demo", description=__doc__.splitlines()[0])
    add_version_option(ap)
    ap.add_argument("--flows", type=int, default=3000, help="TCP flows to the IPv4 cluster (default 3000)")
    ap.add_argument("--json", metavar="FILE", help="write the full summary as JSON")
    ap.add_argument("--keep", metavar="DIR", help="keep the config and captures in DIR")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if os.geteuid() != 0:
        print("pydp-demo: run as root (DPDK)", file=sys.stderr)
        return 1
    if args.keep:
        work = Path(args.keep)
        work.mkdir(parents=True, exist_ok=True)
        summary = run(work, args.flows)
    else:
        with tempfile.TemporaryDirectory(prefix="pydp-demo-") as d:
            summary = run(Path(d), args.flows)
    print(report(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return 0 if summary["dsr_rewrites_verified"] == summary["tx_packets"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
