#!/usr/bin/env python3
"""Test traffic: UDP flows to a cluster IP through a raw socket, recording which edge MAC each datagram reached.

Run inside a test namespace on the interface facing the load balancer. Every datagram carries (flow, sequence),
so the report says exactly what was lost, duplicated or sent to another edge. Bounded in count and in time.
"""

import argparse
import json
import socket
import struct
import threading
import time

MAGIC = b"PYDP"
ETH_P_ALL = 0x0003


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def csum(data: bytes) -> int:
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def frame(dst_mac: bytes, src_mac: bytes, src_ip: bytes, dst_ip: bytes, sport: int, flow: int, seq: int) -> bytes:
    payload = MAGIC + struct.pack("!II", flow, seq) + bytes(20)
    udp = struct.pack("!HHHH", sport, 9, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), seq & 0xFFFF, 0, 64, 17, 0, src_ip, dst_ip)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + udp


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iface", required=True)
    ap.add_argument("--lb-mac", required=True, help="the load balancer's port MAC")
    ap.add_argument("--vip", required=True)
    ap.add_argument("--flows", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=10, help="datagrams per flow")
    ap.add_argument("--pps", type=int, default=2000)
    ap.add_argument("--client-mac", default="02:00:00:00:aa:01")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds to keep receiving after the last send")
    ap.add_argument("--max-seconds", type=float, default=90.0)
    ap.add_argument("--start-file", help="touch this file when sending starts")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    lb, me = mac_bytes(args.lb_mac), mac_bytes(args.client_mac)
    vip = socket.inet_aton(args.vip)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((args.iface, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.settimeout(0.1)
    seen: dict[tuple[int, int], list[str]] = {}
    stop = threading.Event()

    def receive():
        while not stop.is_set():
            try:
                data = sock.recv(2048)
            except socket.timeout:
                continue
            if len(data) < 14 + 28 + 12 or data[6:12] != lb or data[12:14] != b"\x08\x00":
                continue
            off = 14 + (data[14] & 0x0F) * 4 + 8
            if data[off:off + 4] != MAGIC:
                continue
            flow, seq = struct.unpack("!II", data[off + 4:off + 12])
            seen.setdefault((flow, seq), []).append(data[0:6].hex(":"))

    rx = threading.Thread(target=receive, daemon=True)
    rx.start()
    out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    out.bind((args.iface, 0))
    start = time.monotonic()
    if args.start_file:
        open(args.start_file, "w").close()
    sent = 0
    interval = 1.0 / args.pps
    for seq in range(args.rounds):
        for flow in range(args.flows):
            src = struct.pack("!I", 0xCB007100 + 1 + flow % 250)       # 203.0.113.x
            out.send(frame(lb, me, src, vip, 20000 + flow, flow, seq))
            sent += 1
            ahead = start + sent * interval - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            if time.monotonic() - start > args.max_seconds:
                break
    time.sleep(args.settle)
    stop.set()
    rx.join(2)
    per_flow: dict[int, dict[str, int]] = {}
    for (flow, _seq), macs in seen.items():
        for m in macs:
            per_flow.setdefault(flow, {}).setdefault(m, 0)
            per_flow[flow][m] += 1
    missing = [(f, s) for s in range(args.rounds) for f in range(args.flows) if (f, s) not in seen]
    report = {
        "sent": sent,
        "received": sum(len(v) for v in seen.values()),
        "unique": len(seen),
        "duplicates": sum(len(v) - 1 for v in seen.values()),
        "missing": len(missing),
        "missing_first": missing[:20],
        "per_flow": {str(k): v for k, v in per_flow.items()},
        "seconds": round(time.monotonic() - start, 3),
    }
    with open(args.out, "w") as f:
        json.dump(report, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
