"""Hostile traffic for the chaos run (control/lab/chaos.py), sent as raw frames from one interface of a namespace:

    carp   CARP advertisements for one vhid that must all be dropped: half with a wrong HMAC (advskew 0, demote 0,
           a fresh counter: they would win the election if accepted), half replays of a real advertisement
           captured first on the same segment
    arp    ARP requests for the appliance's own address and ICMP echo requests to it, in turn: the exception path
    syn    TCP SYNs to the cluster IP from random sources (203.0.113.0/24) and ports: new flows for the flow table

    python -m control.lab.hostile --mode syn --iface eth0 --dst-mac 02:00:00:00:01:0a --dst-ip 198.51.100.10 \
        --pps 2000 --seconds 3

Prints one JSON line: {"mode", "sent", "seconds", "replayed_from"}. Bounded in time by --seconds (and 10 s of
waiting for an advertisement to replay).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import struct
import time

CARP_GROUP_MAC = bytes.fromhex("01005e000012")


def mac(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, ttl: int = 64) -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), random.getrandbits(16), 0, ttl, proto, 0, src,
                       dst)
    return head[:10] + struct.pack("!H", csum(head)) + head[12:] + payload


def syn_frame(dst_mac: bytes, src_mac: bytes, dst_ip: bytes, dport: int, rng: random.Random) -> bytes:
    src = bytes([203, 0, 113, rng.randrange(1, 255)])
    sport = rng.randrange(1024, 65536)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, rng.getrandbits(32), 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = src + dst_ip + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
    return dst_mac + src_mac + b"\x08\x00" + ipv4(src, dst_ip, 6, tcp)


def arp_frame(src_mac: bytes, sender_ip: bytes, target_ip: bytes) -> bytes:
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, src_mac, sender_ip, bytes(6), target_ip)
    return b"\xff" * 6 + src_mac + b"\x08\x06" + arp


def icmp_frame(dst_mac: bytes, src_mac: bytes, src_ip: bytes, dst_ip: bytes, seq: int) -> bytes:
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x7070, seq & 0xFFFF) + b"pydp-chaos"
    icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
    return dst_mac + src_mac + b"\x08\x00" + ipv4(src_ip, dst_ip, 1, icmp)


def capture_advert(iface: str, vhid: int, timeout: float) -> bytes | None:
    """One real CARP advertisement (a whole frame) for vhid seen on iface, or None."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    s.bind((iface, 0))
    s.settimeout(0.2)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                f = s.recv(2048)
            except socket.timeout:
                continue
            if len(f) >= 14 + 20 + 36 and f[23] == 112:
                off = 14 + (f[14] & 15) * 4
                if f[off + 1] == vhid:
                    return f
        return None
    finally:
        s.close()


def bad_hmac_frame(src_mac: bytes, src_ip: str, vhid: int, vip: str, counter: int) -> bytes:
    from control.carp import codec

    carp = codec.encode(vhid, 1, 0, 0, counter, b"not-the-passphrase", [vip])
    return CARP_GROUP_MAC + src_mac + b"\x08\x00" + codec.ipv4_packet(src_ip, carp)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("carp", "arp", "syn"), required=True)
    ap.add_argument("--iface", default="eth0")
    ap.add_argument("--dst-mac", help="the appliance's data port MAC (arp, syn)")
    ap.add_argument("--dst-ip", required=True, help="arp: the appliance's address; syn and carp: the cluster IP")
    ap.add_argument("--src-ip", default="198.51.100.99", help="our source address (carp, arp)")
    ap.add_argument("--vhid", type=int, default=10)
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--pps", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((args.iface, 0))
    own = s.getsockname()[4][:6]
    dst_ip = socket.inet_aton(args.dst_ip)
    src_ip = socket.inet_aton(args.src_ip)
    replay = None
    if args.mode == "carp":
        replay = capture_advert(args.iface, args.vhid, 10.0)
    counter = rng.getrandbits(63)
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < args.seconds:
        for _ in range(20):
            if args.mode == "syn":
                f = syn_frame(mac(args.dst_mac), own, dst_ip, args.port, rng)
            elif args.mode == "arp":
                if sent % 2:
                    f = arp_frame(own, bytes([198, 51, 100, 200 + sent % 50]), dst_ip)
                else:
                    f = icmp_frame(mac(args.dst_mac), own, src_ip, dst_ip, sent)
            else:
                if replay is not None and sent % 2:
                    f = replay
                else:
                    counter += 1
                    f = bad_hmac_frame(own, args.src_ip, args.vhid, args.dst_ip, counter)
            try:
                s.send(f)
                sent += 1
            except OSError:
                pass
        ahead = start + sent / args.pps - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    print(json.dumps({"mode": args.mode, "sent": sent, "seconds": round(time.monotonic() - start, 3),
                      "replayed_from": replay[6:12].hex(":") if replay else None, "pid": os.getpid()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
