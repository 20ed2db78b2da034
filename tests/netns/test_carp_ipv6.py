"""IPv6 CARP (OpenBSD semantics: ff02::12, hop limit 255) with real packets, pydp-carp against pydp-carp.

ucarp is IPv4 only, so both ends are pydp-carp. Topology: a bridge in the namespace "sw"; h1 (2001:db8::1, the
preferred node, advskew 0) and h2 (its link-local address as the source, advskew 100) run pydp-carp for the
cluster IP 2001:db8::50, vhid 7, advbase 1 s; c is the observer: it captures every CARP advertisement and every
neighbour advertisement on the segment (AF_PACKET) and forges advertisements. DAD is off on the test links.

Every namespace and process is removed at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import struct
import sys
import time
from pathlib import Path

import pytest

from netlab import RAW_SENDER, NsProcess, Segment, addresses, eventually, ns_run, pydp_carp_argv, run
from control.carp import codec

VHID = 7
VIP = "2001:db8::50"
H1 = "2001:db8::1"
PASS = b"six-carp-pass"
ADVBASE = 1
SLOW_SKEW = 100
MASTER_DOWN = 3 * ADVBASE + SLOW_SKEW / 256         # the backup's (ucarp mode): advbase x 3 + advskew/256




SNIFFER = r"""
import json, socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind(("eth0", 0))
out = open(sys.argv[1], "a", buffering=1)
out.write(json.dumps({"kind": "ready", "t": time.monotonic()}) + "\n")
while True:
    frame, meta = s.recvfrom(65535)
    if meta[2] == socket.PACKET_OUTGOING or len(frame) < 54 or frame[12:14] != b"\x86\xdd":
        continue
    t = time.monotonic()
    ip6 = frame[14:54]
    nxt, hlim = ip6[6], ip6[7]
    src, dst = socket.inet_ntop(socket.AF_INET6, ip6[8:24]), socket.inet_ntop(socket.AF_INET6, ip6[24:40])
    body = frame[54:54 + struct.unpack("!H", ip6[4:6])[0]]
    rec = None
    if nxt == 112 and len(body) >= 36:
        rec = {"kind": "carp", "src_mac": frame[6:12].hex(":"), "dst_mac": frame[0:6].hex(":"), "src": src,
               "dst": dst, "hlim": hlim, "vhid": body[1], "advskew": body[2], "advbase": body[5]}
    elif nxt == 58 and len(body) >= 24 and body[0] == 136:
        opt = body[24:32]
        rec = {"kind": "na", "src_mac": frame[6:12].hex(":"), "dst_mac": frame[0:6].hex(":"), "src": src,
               "dst": dst, "hlim": hlim, "flags": struct.unpack("!I", body[4:8])[0],
               "target": socket.inet_ntop(socket.AF_INET6, body[8:24]),
               "lladdr": opt[2:8].hex(":") if opt[:2] == b"\x02\x01" else None,
               "raw": (ip6 + body).hex()}
    if rec:
        rec["t"] = t
        out.write(json.dumps(rec) + "\n")
"""





def enable_ipv6(ns: str, addr: str | None = None) -> None:
    """IPv6 on eth0 without DAD (the veths come with IPv6 disabled), optionally a /64 from 2001:db8::/64."""
    ns_run(ns, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0", "net.ipv6.conf.eth0.accept_ra=0",
           "net.ipv6.conf.eth0.disable_ipv6=0")
    if addr:
        run("ip", "-n", ns, "addr", "add", f"{addr}/64", "dev", "eth0", "nodad")


def v6(ns: str) -> list[str]:
    return addresses(ns, "eth0", family="inet6")


class Lab(Segment):
    def __init__(self, stack: contextlib.ExitStack, workdir: Path):
        super().__init__(stack, workdir, "carp6")
        self.h2_src = ""

    def holders(self) -> set[str]:
        return {name for name, ns in (("h1", self.h1), ("h2", self.h2)) if VIP in v6(ns)}

    def send(self, *frames: bytes) -> None:
        ns_run(self.c, sys.executable, "-c", RAW_SENDER, *(f.hex() for f in frames))


class Carp(NsProcess):
    """pydp-carp in a namespace, with its --json-status file and log."""

    def __init__(self, lab: Lab, name: str, ns: str, src: str, *, skew: int, extra=()):
        self.status_path = lab.workdir / f"{name}.json"
        with contextlib.suppress(FileNotFoundError):
            self.status_path.unlink()
        passfile = lab.workdir / f"{name}.key"
        passfile.write_bytes(PASS + b"\n")
        passfile.chmod(0o600)
        argv = [*pydp_carp_argv(), "-i", "eth0", "-s", src, "-v", str(VHID), "--passfile", str(passfile), "-a", VIP,
                "-b", str(ADVBASE), "-k", str(skew), "--json-status", str(self.status_path), "--log-level",
                "debug", *extra]
        super().__init__(name, ns, argv, lab.workdir / f"{name}.log")

    def status(self) -> dict:
        def read():
            with contextlib.suppress(FileNotFoundError, ValueError):
                return json.loads(self.status_path.read_text())
            return None
        return eventually(read, 2, lambda: f"{self.name}'s status file\n{self.text()}")

    def state(self) -> str | None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return json.loads(self.status_path.read_text()).get("state")
        return None


@pytest.fixture
def lab(tmp_path):
    with contextlib.ExitStack() as stack:
        lab = Lab(stack, tmp_path)
        enable_ipv6(lab.h1, H1)
        enable_ipv6(lab.h2)
        lab.h2_src = eventually(lambda: next((a for a in v6(lab.h2) if a.startswith("fe80:")), None), 5,
                                "h2's link-local address")
        procs: list[Carp] = []
        lab.start = lambda *a, **kw: procs.append(Carp(lab, *a, **kw)) or procs[-1]
        stack.callback(lambda: [p.kill() for p in procs])
        lab.sniff(SNIFFER)
        yield lab


@pytest.mark.netns
def test_ipv6_failover_na_bowout_and_hop_limit(lab):
    h1 = lab.start("h1", lab.h1, H1, skew=0)
    eventually(lambda: lab.holders() == {"h1"} and h1.state() == "MASTER", 6, "h1 to become master")
    h2 = lab.start("h2", lab.h2, f"{lab.h2_src}%eth0", skew=SLOW_SKEW)
    eventually(lambda: h2.status()["received_ok"] >= 2 and h2.state() == "BACKUP", 6, "h2 to hear h1 as backup")
    assert lab.holders() == {"h1"}
    s2 = h2.status()
    assert s2["srcip"] == lab.h2_src and s2["addr"] == VIP

    # h1's advertisements on the wire: ff02::12 (33:33:00:00:00:12), hop limit 255, from its address and MAC
    ads = lab.frames(kind="carp", src=H1)
    assert ads and all(a["dst"] == "ff02::12" and a["dst_mac"] == "33:33:00:00:00:12" and a["hlim"] == 255
                       and a["src_mac"] == lab.macs[lab.h1] and a["vhid"] == VHID and a["advskew"] == 0
                       for a in ads)
    # h1 announced the cluster IP when it took it: an unsolicited NA with its MAC, to ff02::1, hop limit 255
    nas = lab.frames(kind="na", target=VIP, lladdr=lab.macs[lab.h1])
    assert nas and all(n["dst"] == "ff02::1" and n["hlim"] == 255 and n["flags"] == 0x20000000 for n in nas)

    # advertisements with hop limit 254 (routed: not from the segment) are dropped and counted under "ttl", even
    # with a correct HMAC; the backup stays backup
    ttl0 = h2.status()["drops"]["ttl"]
    ok0 = h2.status()["received_ok"]
    forged = []
    for counter in (1, 2, 3):
        packet = bytearray(codec.ipv6_packet("2001:db8::99", codec.encode(VHID, 1, 0, 0, counter, PASS, [VIP])))
        packet[7] = 254
        forged.append(codec.GROUP6_MAC + bytes.fromhex(lab.macs[lab.c].replace(":", "")) + b"\x86\xdd"
                      + bytes(packet))
    lab.send(*forged)
    eventually(lambda: h2.status()["drops"]["ttl"] >= ttl0 + 3, 3, "h2 to count the hop-limit drops")
    assert h2.state() == "BACKUP" and h2.status()["received_ok"] >= ok0

    # SIGKILL the master: the backup takes over within its master-down interval + 1 s and announces the cluster
    # IP with an unsolicited NA carrying its own MAC (and a second one about two intervals later)
    t0 = time.monotonic()
    h1.kill()
    bound = MASTER_DOWN + 1.0
    eventually(lambda: VIP in v6(lab.h2) and h2.state() == "MASTER", bound + 0.5, "h2 to take over")
    took = time.monotonic() - t0
    assert took <= bound, f"takeover took {took:.2f} s, bound {bound:.2f} s"
    mac2 = lab.macs[lab.h2]
    nas = eventually(lambda: (lambda g: g if len(g) >= 2 else None)(lab.frames(t0, kind="na", target=VIP)), 4,
                     "two unsolicited NAs from h2")
    assert all(n["lladdr"] == mac2 and n["src_mac"] == mac2 and n["flags"] == 0x20000000 and n["hlim"] == 255
               and n["dst"] == "ff02::1" and n["dst_mac"] == "33:33:00:00:00:01" for n in nas)
    assert nas[0]["t"] - t0 <= bound and 1.5 <= nas[1]["t"] - nas[0]["t"] <= 3.0
    raw = bytes.fromhex(nas[0]["raw"])
    assert codec.checksum(raw[8:40] + struct.pack("!I3xB", len(raw) - 40, 58) + raw[40:]) == 0
    ads2 = lab.frames(t0, kind="carp", src=lab.h2_src)
    assert ads2 and all(a["hlim"] == 255 and a["advskew"] == SLOW_SKEW for a in ads2)

    # the killed master left the address behind (as after a crash); restarted without --preempt it releases it at
    # once and stays backup
    h1 = lab.start("h1b", lab.h1, H1, skew=0)
    eventually(lambda: VIP not in v6(lab.h1) and h1.state() == "BACKUP" and h1.status()["received_ok"] >= 1, 6,
               "h1 to come back as backup")
    assert lab.holders() == {"h2"}

    # SIGTERM: h2 bows out (advbase 255, advskew 255), removes the address, and h1 takes over at once
    t1 = time.monotonic()
    assert h2.term() == 0
    eventually(lambda: lab.holders() == {"h1"} and h1.state() == "MASTER", 2.0, "h1 to take over on the bow-out")
    assert time.monotonic() - t1 < 2.0
    assert lab.frames(t1, kind="carp", src=lab.h2_src, advbase=255, advskew=255)
    assert "bowed out" in h1.status()["reason"]
    assert eventually(lambda: lab.frames(t1, kind="na", target=VIP, lladdr=lab.macs[lab.h1]), 2, "h1's NA")
    assert h1.term() == 0
    assert VIP not in v6(lab.h1) and PASS.decode() not in h1.log.read_text()
