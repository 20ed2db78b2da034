"""Golden-test harness: run packets through the real fast path (pydp-dataplane in pcap mode, DPDK net_pcap) and
compare what comes out with what a plain Python model of the forwarding rules expects.

A case is data: a description, an input frame, and the expected verdict. The model computes the flow key a
packet should hash on (independently of the C parser), the edge Maglev gives it (pydp.maglev.build, the C hash),
and the frame that should leave: the same frame with new MAC addresses (DSR l2) or inside an outer IP header
(IP-in-IP).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field

from scapy.all import (ICMP, IP, TCP, UDP, Ether, ICMPv6EchoRequest, IPerror, IPv6, IPv6ExtHdrFragment, Raw,
                       TCPerror, UDPerror, rdpcap)
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPerror6

from pydp import maglev
from pydp.pcap import write_pcap
from pydp._ffi import ffi, lib

EXCEPTION = "exception"


@dataclass
class Case:
    description: str
    frame: bytes
    cluster: str | None = None        # the cluster the packet is for (None: exception or malformed)
    verdict: str = "edge"             # "edge", "exception", or "drop:<reason>"
    group: str | None = None          # cases of one group must reach the same edge
    edge: str | None = None           # filled by the run: the edge it reached


@dataclass
class Result:
    out: list[bytes]
    exc: list[bytes]
    summary: dict
    cases: list[Case] = field(default_factory=list)


@functools.cache
def sanitized_env() -> dict | None:
    """With PYDP_SANITIZED_PATH set (scripts/test.sh does): the environment that makes pydp-dataplane load the
    fast path built with AddressSanitizer and UBSan. The directory holds a copy of the pydp package with the
    sanitized _pydp module; the sanitizer runtimes are preloaded (the Python interpreter is not instrumented).
    DPDK's own libraries are not instrumented either: mbufs live in hugepage memory ASan does not track, so it
    checks the stack, the heap and globals of the fast path (the flow tables and the config in the region are
    plain mmap'd memory, also untracked); UBSan checks every operation of the fast path."""
    path = os.environ.get("PYDP_SANITIZED_PATH")
    if not path:
        return None
    import subprocess as sp

    libs = [sp.run(["gcc", f"-print-file-name=lib{n}.so"], capture_output=True, text=True, check=True).stdout.strip()
            for n in ("asan", "ubsan")]
    env = {**os.environ, "PYTHONPATH": path, "LD_PRELOAD": " ".join(libs),
           # Python itself leaks by design at exit; a sanitizer error must fail the run
           "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:halt_on_error=1",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    probe = sp.run([sys.executable, "-P", "-c", "import pydp._pydp as m; print(m.__file__); "
                    "print(open('/proc/self/maps').read())"], capture_output=True, text=True, env=env, timeout=60)
    assert probe.returncode == 0 and probe.stdout.startswith(os.path.abspath(path)) and "libasan" in probe.stdout, \
        f"the sanitized fast path does not load from {path}:\n{probe.stdout[:300]}{probe.stderr[-2000:]}"
    return env


def run_pcap(tmp_path, config_text: str, frames: list[bytes], extra_args=()) -> Result:
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(config_text)
    pin, pout, pexc, stats = (tmp_path / n for n in ("in.pcap", "out.pcap", "exc.pcap", "stats.json"))
    write_pcap(pin, frames)
    cmd = [sys.executable, "-P", "-m", "pydp.dataplane", "--config", str(cfg), "--pcap-in", str(pin),
           "--pcap-out", str(pout), "--pcap-exception", str(pexc), "--stats-json", str(stats),
           "--shm", f"/dev/shm/pydp-golden-{os.getpid()}", *extra_args]
    env = sanitized_env()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300 if env else 120, env=env)
    assert proc.returncode == 0, f"pydp-dataplane failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    if env is not None:
        assert "Sanitizer" not in proc.stderr and "runtime error:" not in proc.stderr, proc.stderr[-3000:]
    out = [bytes(p) for p in rdpcap(str(pout))] if pout.stat().st_size > 24 else []
    exc = [bytes(p) for p in rdpcap(str(pexc))] if pexc.stat().st_size > 24 else []
    return Result(out=out, exc=exc, summary=json.loads(stats.read_text()))


# ---- the model ----

def _addr16(a: str) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(a)
    return (4, ip.packed + bytes(12)) if ip.version == 4 else (6, ip.packed)


def flow_key(src: str, dst: str, proto: int, sport: int = 0, dport: int = 0):
    fam, s = _addr16(src)
    _, d = _addr16(dst)
    key = ffi.new("struct pydp_flow_key *")
    ffi.memmove(key.src, s, 16)
    ffi.memmove(key.dst, d, 16)
    key.sport = int.from_bytes(sport.to_bytes(2, "big"), "little")   # network order in memory
    key.dport = int.from_bytes(dport.to_bytes(2, "big"), "little")
    key.proto = proto
    key.family = fam
    return key


def model_key(frame: bytes, ipsec_local: bool):
    """The flow key the forwarding rules say a frame hashes on (client -> cluster IP)."""
    pkt = Ether(frame)
    ip = pkt[IP] if IP in pkt else pkt[IPv6]
    v6 = IPv6 in pkt
    src, dst = ip.src, ip.dst
    if not v6 and (ip.flags.MF or ip.frag):
        return flow_key(src, dst, ip.proto)
    if v6 and IPv6ExtHdrFragment in pkt:
        return flow_key(src, dst, pkt[IPv6ExtHdrFragment].nh)
    inner = None
    if not v6 and ICMP in pkt and pkt[ICMP].type in (3, 11, 12):
        inner = pkt[IPerror]
    if v6 and ICMPv6PacketTooBig in pkt:
        inner = pkt[IPerror6]
    if inner is not None:
        # the embedded packet is the edge's reply: reverse it to get the client's flow
        l4 = inner.getlayer(TCPerror) or inner.getlayer(UDPerror)
        proto = inner.proto if not v6 else inner.nh
        sport, dport = (l4.dport, l4.sport) if l4 is not None else (0, 0)
        if ipsec_local and (proto in (50, 51) or (proto == 17 and {sport, dport} & {500, 4500})):
            return flow_key(inner.dst, inner.src, 50)
        return flow_key(inner.dst, inner.src, proto, sport, dport)
    proto = ip.nh if v6 else ip.proto
    sport = dport = 0
    if TCP in pkt:
        sport, dport = pkt[TCP].sport, pkt[TCP].dport
    elif UDP in pkt:
        sport, dport = pkt[UDP].sport, pkt[UDP].dport
    elif ICMP in pkt and pkt[ICMP].type in (0, 8):
        sport = pkt[ICMP].id
    elif ICMPv6EchoRequest in pkt:
        sport = pkt[ICMPv6EchoRequest].id
    if ipsec_local and (proto in (50, 51) or (proto == 17 and {sport, dport} & {500, 4500})):
        return flow_key(src, dst, 50)
    return flow_key(src, dst, proto, sport, dport)


def model_edge(frame: bytes, edges: list[str], weights=None, size: int = 65537, seed: int = 0x5EED,
               ipsec_local: bool = False) -> str:
    table = maglev.build(edges, size=size, weights=weights)
    h = lib.pydp_flow_hash(model_key(frame, ipsec_local), seed)
    return edges[table[lib.pydp_maglev_slot(h, size)]]


def ip_bytes(frame: bytes) -> bytes:
    """The IP packet of a frame without Ethernet padding."""
    pkt = Ether(frame)
    if IP in pkt:
        return bytes(pkt[IP])[: pkt[IP].len]
    return bytes(pkt[IPv6])[: 40 + pkt[IPv6].plen]


__all__ = ["Case", "Result", "run_pcap", "model_edge", "model_key", "ip_bytes", "flow_key", "EXCEPTION",
           "Raw", "IP", "IPv6", "TCP", "UDP", "ICMP", "Ether"]
