"""systemd's service notification protocol (sd_notify), written out: no libsystemd, no new dependency.

A unit with ``Type=notify`` hands the service an AF_UNIX datagram socket in ``$NOTIFY_SOCKET`` (a path, or an
abstract name written with a leading ``@``); the service sends newline-separated ``KEY=VALUE`` assignments to it:
``READY=1`` when it serves, ``STATUS=...`` a line for ``systemctl status``, ``STOPPING=1``, ``RELOADING=1`` and
``WATCHDOG=1`` at least every ``$WATCHDOG_USEC`` microseconds when the unit has ``WatchdogSec=``. Outside systemd
every call here is a no-op returning False, so the programs run the same by hand.

``Watchdog`` feeds systemd's watchdog only while a liveness check passes: the data plane proves that its workers
are still polling, pydp-control that its event loop still turns. A stuck process then stops feeding and systemd
kills and restarts it (``Restart=on-failure``).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Callable

__all__ = ["notify", "watchdog_interval", "Watchdog", "WorkerProgress"]


def _address(env=os.environ) -> str | None:
    path = env.get("NOTIFY_SOCKET", "")
    if not path or not (path.startswith("/") or path.startswith("@")):
        return None
    return "\0" + path[1:] if path.startswith("@") else path


def notify(*assignments: str, env=os.environ) -> bool:
    """Sends KEY=VALUE lines to systemd in one datagram. False when not run by systemd or the send failed."""
    addr = _address(env)
    if addr is None or not assignments:
        return False
    msg = "\n".join(a.replace("\n", " ") for a in assignments).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(msg, addr)
        return True
    except OSError:
        return False


def watchdog_interval(env=os.environ) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of $WATCHDOG_USEC (sd_watchdog_enabled's rule: only when
    $WATCHDOG_PID is unset or this process). None without a watchdog."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2e6


class Watchdog:
    """Sends WATCHDOG=1 every interval while alive() says so; tick() is called from the program's main loop."""

    def __init__(self, alive: Callable[[], bool], *, env=os.environ, clock=time.monotonic):
        self.alive = alive
        self.env = env
        self.clock = clock
        self.interval = watchdog_interval(env)
        self.last = clock()
        self.fed = 0          # pings sent
        self.starved = 0      # checks that failed (no ping sent)

    @property
    def enabled(self) -> bool:
        return self.interval is not None

    def tick(self) -> bool:
        """True when a ping went out now."""
        if self.interval is None:
            return False
        now = self.clock()
        if now - self.last < self.interval:
            return False
        self.last = now
        if not self.alive():
            self.starved += 1
            return False
        self.fed += 1
        return notify("WATCHDOG=1", env=self.env)


class WorkerProgress:
    """Liveness of the data plane's worker lcores: every online worker's poll counter moved since the last call.

    A worker passes its poll loop at least once per idle back-off (microseconds) or burst, so between two
    watchdog checks (seconds apart) a worker whose counter stood still is stuck."""

    def __init__(self, region):
        self.region = region
        self.last: list[int] | None = None

    def __call__(self) -> bool:
        hdr = self.region.hdr
        stats = self.region.worker_stats()
        now = [int(stats[w]["polls"]) for w in range(self.region.nb_workers)]
        online = [bool(hdr.workers[w].online) for w in range(self.region.nb_workers)]
        before, self.last = self.last, now
        if before is None:
            return True
        return all(n != b for n, b, on in zip(now, before, online) if on)
