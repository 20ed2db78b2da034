"""The lab edges' UDP service: answers every datagram with "edge <name> " and the datagram, from the cluster IP
it was sent to (so a connected client socket accepts the answer: Direct Server Return). It also records the ESP
packets that reach the edge (IPsec local termination test), one line per packet: "esp <source> <SPI>".

    python -m control.lab.udpecho --edge e1 --bind 198.51.100.10:53 --bind [2001:db8::10]:53 --esp-log FILE
"""

from __future__ import annotations

import argparse
import selectors
import socket
import struct


def parse_bind(spec: str) -> tuple[int, str, int]:
    host, _, port = spec.rpartition(":")
    if host.startswith("["):
        return socket.AF_INET6, host[1:-1], int(port)
    return socket.AF_INET, host, int(port)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edge", required=True)
    ap.add_argument("--bind", action="append", default=[], metavar="ADDR:PORT")
    ap.add_argument("--esp-log", default=None, metavar="FILE")
    args = ap.parse_args(argv)
    sel = selectors.DefaultSelector()
    for spec in args.bind:
        family, host, port = parse_bind(spec)
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        sel.register(s, selectors.EVENT_READ, "udp")
    esp_log = None
    if args.esp_log:
        esp = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)
        sel.register(esp, selectors.EVENT_READ, "esp")
        esp_log = open(args.esp_log, "a", buffering=1)
    prefix = f"edge {args.edge} ".encode()
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            if key.data == "udp":
                data, peer = s.recvfrom(2048)
                s.sendto(prefix + data, peer)
            else:
                pkt, peer = s.recvfrom(2048)
                ihl = (pkt[0] & 15) * 4
                spi = struct.unpack("!I", pkt[ihl:ihl + 4])[0] if len(pkt) >= ihl + 4 else 0
                esp_log.write(f"esp {peer[0]} {spi}\n")


if __name__ == "__main__":
    raise SystemExit(main())
