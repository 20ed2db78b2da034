"""MAC resolution for DSR l2 edges configured without a MAC: the kernel's neighbour table, ARP/ND provoked when
the entry is absent, retried with back-off, refreshed every MAC_REFRESH_S.

``NeighbourResolver`` holds the MACs resolved here (never written to the store). Its step runs on the daemon's
loop (the blocking netlink look-ups go to a reader thread); the store thread reads ``snapshot()`` when it
publishes. Its maps are guarded by one lock.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time

NUD_VALID = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80     # REACHABLE, STALE, DELAY, PROBE, NOARP, PERMANENT
RESOLVE_POLL_S = 0.25
MAC_REFRESH_S = 30.0


def lookup_neighbour(ip: str) -> str | None:
    """The MAC of ip in the kernel's neighbour table (any interface), if the entry is usable."""
    from pyroute2 import IPRoute

    addr = ipaddress.ip_address(ip)
    with IPRoute() as ipr:
        family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
        for msg in ipr.get_neighbours(family=family, dst=str(addr)):
            lladdr = msg.get_attr("NDA_LLADDR")
            dst = msg.get_attr("NDA_DST")
            if dst is not None and ipaddress.ip_address(dst) != addr:
                continue
            if lladdr and lladdr != "00:00:00:00:00:00" and msg["state"] & NUD_VALID:
                return lladdr.lower()
    return None


def provoke_neighbour(ip: str) -> None:
    """Make the kernel resolve ip: a zero-length UDP datagram to its discard port (9) starts ARP or ND."""
    addr = ipaddress.ip_address(ip)
    fam = socket.AF_INET if addr.version == 4 else socket.AF_INET6
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        with contextlib.suppress(OSError):
            s.sendto(b"", (str(addr), 9))


def mac_edges(cfg) -> set[str]:
    """IPs of the l2 edges configured without a MAC."""
    if cfg is None:
        return set()
    return {str(e.ip) for cl in cfg.clusters if cl.dsr == "l2" for e in cl.edges if not e.mac}


class NeighbourResolver:
    def __init__(self, event, lookup=lookup_neighbour, provoke=provoke_neighbour):
        self._lock = threading.Lock()
        self._macs: dict[str, str] = {}           # edge IP -> MAC
        self._due: dict[str, list] = {}           # edge IP -> [next attempt (monotonic), back-off seconds]
        self._last_refresh = time.monotonic()
        self.event = event
        self.lookup = lookup
        self.provoke = provoke

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            return dict(self._macs)

    def adopt(self, macs: dict[str, str]) -> None:
        """MACs the running data plane already had (a previous daemon resolved them)."""
        with self._lock:
            for ip, mac in macs.items():
                self._macs.setdefault(ip, mac)

    def unresolved(self, cfg) -> set[str]:
        with self._lock:
            return {ip for ip in mac_edges(cfg) if ip not in self._macs}

    async def step(self, cfg, run_blocking) -> bool:
        """One round (loop): resolve what is due, refresh the known ones every MAC_REFRESH_S. run_blocking(fn, *a)
        runs a blocking call off the loop. Returns True when a MAC was learned or changed (publish again)."""
        changed = False
        now = time.monotonic()
        wanted = mac_edges(cfg)
        with self._lock:
            for ip in [ip for ip in self._due if ip not in wanted or ip in self._macs]:
                del self._due[ip]
            todo = []
            for ip in wanted:
                if ip in self._macs:
                    continue
                due = self._due.setdefault(ip, [now, 0.5])
                if due[0] <= now:
                    todo.append(ip)
        for ip in todo:
            mac = await run_blocking(self.lookup, ip)
            with self._lock:
                if mac:
                    self._macs[ip] = mac
                    self._due.pop(ip, None)
                else:
                    due = self._due.setdefault(ip, [now, 0.5])
                    due[0] = now + due[1]
                    due[1] = min(due[1] * 2, 30.0)
            if mac:
                self.event("mac_resolved", ip=ip, mac=mac)
                changed = True
            else:
                await run_blocking(self.provoke, ip)
        if now - self._last_refresh >= MAC_REFRESH_S:
            self._last_refresh = now
            with self._lock:
                known = [(ip, mac) for ip, mac in self._macs.items() if ip in wanted]
            for ip, old in known:
                mac = await run_blocking(self.lookup, ip)
                if mac and mac != old:
                    with self._lock:
                        self._macs[ip] = mac
                    self.event("mac_changed", ip=ip, mac=mac, previous=old)
                    changed = True
        return changed
