"""Health checks of the service edges: probes, a per-edge state tracker with flap damping, and an asyncio checker.

Three layers, like control/carp:

* Probes (``tcp_connect``, ``http_get``, ``icmp_echo``; ``run_probe`` picks one from a HealthConfig): each is one
  coroutine, bounded by its timeout, that never raises for a network problem; it returns a ``ProbeResult``.
  ``source`` binds the probe's local address (the appliance's own address on the edges' network).
* ``EdgeHealth``: sans-I/O. Fed probe outcomes with the time (``observe(ok, now)``), it counts successes and
  failures in a row, decides UP/DOWN (rise/fall), damps flapping and returns a ``Transition`` when the reported
  state changes. It never reads a clock, so every rule is tested with a fake one.
* ``HealthChecker``: one asyncio task per edge; checks every interval with jitter, bounded concurrency, reports
  transitions to a callback, and exposes the state of every edge for status and metrics.

The reference is docs/health.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import errno
import inspect
import ipaddress
import itertools
import logging
import math
import os
import random
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Mapping

from pydp.config import HealthConfig

__all__ = [
    "ProbeResult", "tcp_connect", "http_get", "icmp_echo", "run_probe",
    "State", "Transition", "Damping", "EdgeHealth", "HealthChecker",
    "MAX_BODY", "JITTER",
]

log = logging.getLogger("pydp.control.health")

MAX_BODY = 64 * 1024        # bytes of an HTTP body read at most (for expect_body)
MAX_HEADER_LINES = 100      # an HTTP response with more header lines than this fails
JITTER = 0.10               # each wait between two checks of an edge is interval * uniform(1 - JITTER, 1 + JITTER)
USER_AGENT = "pydp-health/1"

# IP_BIND_ADDRESS_NO_PORT (Linux 4.2, not in Python 3.11's socket module): with a source address bound, the local
# port is still chosen at connect() time, per destination, so many probes from one address do not exhaust ports.
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


# ---- probes -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str             # "HTTP 200", "connection refused", "no echo reply in 1 s", ...
    latency_s: float        # time the probe took (to the answer, or to the failure)
    local: bool = False     # failed on this appliance's side (no route or source address): says nothing of the edge


# A probe that fails with one of these never left this appliance: its network is down (the data plane and its TAP
# restarting, the source address not yet back), not the edge. Such a result is not counted against the edge (no
# failure towards fall, no flap for damping): an appliance restarting its own data plane must not leave every edge
# with a flap penalty that holds it down for a minute at its next blip. EHOSTUNREACH (no ARP answer from the edge)
# is the edge's and still counts.
LOCAL_ERRNOS = frozenset({errno.ENETUNREACH, errno.ENETDOWN, errno.EADDRNOTAVAIL, errno.ENODEV})


def _failed(detail: str, t0: float, exc: OSError | None = None) -> ProbeResult:
    return ProbeResult(False, detail, time.monotonic() - t0,
                       local=exc is not None and exc.errno in LOCAL_ERRNOS)


def _addr(ip) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ip if isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else ipaddress.ip_address(str(ip))


def _hostport(ip, port: int) -> str:
    a = _addr(ip)
    return f"[{a}]:{port}" if a.version == 6 else f"{a}:{port}"


def _oserror(exc: OSError) -> str:
    if exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{os.strerror(exc.errno).lower()} ({name})"
    return str(exc) or type(exc).__name__


async def _connect(ip, port: int, source) -> socket.socket:
    """A connected non-blocking TCP socket from source (None: the kernel's choice) to ip:port."""
    a = _addr(ip)
    family = socket.AF_INET6 if a.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((str(_addr(source)), 0))
        await asyncio.get_running_loop().sock_connect(sock, (str(a), port))
        return sock
    except BaseException:
        sock.close()
        raise


def _reset_close(sock: socket.socket) -> None:
    """Close with a RST (SO_LINGER 0): the appliance keeps no TIME_WAIT socket per check."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def tcp_connect(ip, port: int, source=None, *, timeout: float = 1.0) -> ProbeResult:
    """Up if a TCP connection to ip:port is established within timeout. The connection is then reset."""
    t0 = time.monotonic()
    where = _hostport(ip, port)
    try:
        async with asyncio.timeout(timeout):
            sock = await _connect(ip, port, source)
    except TimeoutError:
        return ProbeResult(False, f"tcp {where}: no answer in {timeout:g} s", time.monotonic() - t0)
    except OSError as exc:
        return _failed(f"tcp {where}: {_oserror(exc)}", t0, exc)
    latency = time.monotonic() - t0
    _reset_close(sock)
    return ProbeResult(True, f"tcp {where}: connected", latency)


_tls_context: ssl.SSLContext | None = None


def _tls() -> ssl.SSLContext:
    """TLS client context without certificate verification: edges are addressed by IP, and a health check asks
    whether the service answers, not who it is."""
    global _tls_context
    if _tls_context is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
        _tls_context = ctx
    return _tls_context


def _sni(host: str) -> str:
    """The TLS server name for a Host header value: the name without a port; "" (no SNI) for an IP literal."""
    if not host or host.startswith("["):
        return ""
    name = host
    head, sep, tail = host.rpartition(":")
    if sep and tail.isdigit() and ":" not in head:
        name = head
    try:
        ipaddress.ip_address(name)
        return ""
    except ValueError:
        return name


def _default_host(ip, port: int, tls: bool) -> str:
    a = _addr(ip)
    h = f"[{a}]" if a.version == 6 else str(a)
    return h if port == (443 if tls else 80) else f"{h}:{port}"


class _BadResponse(Exception):
    pass


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    """Up to MAX_BODY bytes of the body: chunked, Content-Length, or up to the end of the connection."""
    body = bytearray()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while len(body) < MAX_BODY:
            line = await reader.readline()
            if not line:
                break
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadResponse(f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                break
            try:
                body += await reader.readexactly(min(size, MAX_BODY - len(body)))
            except asyncio.IncompleteReadError as exc:
                body += exc.partial
                break
            if len(body) >= MAX_BODY:
                break
            await reader.readline()     # the CRLF after the chunk
        return bytes(body[:MAX_BODY])
    length = headers.get("content-length")
    if length is not None:
        try:
            n = int(length)
        except ValueError:
            raise _BadResponse(f"bad Content-Length {length[:40]!r}") from None
        try:
            return await reader.readexactly(min(max(n, 0), MAX_BODY))
        except asyncio.IncompleteReadError as exc:
            return exc.partial
    while len(body) < MAX_BODY:
        chunk = await reader.read(MAX_BODY - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


async def _http_exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes,
                         want_body: bool) -> tuple[int, bytes]:
    writer.write(request)
    await writer.drain()
    while True:
        line = await reader.readline()
        if not line:
            raise _BadResponse("connection closed before a status line")
        parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (len(parts[1]) == 3 and parts[1].isdigit()):
            raise _BadResponse(f"not an HTTP/1.x status line: {line[:60]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADER_LINES + 1):
            h = await reader.readline()
            if h in (b"\r\n", b"\n"):
                break
            if not h:
                raise _BadResponse("connection closed in the headers")
            name, sep, value = h.decode("latin-1").partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        else:
            raise _BadResponse(f"more than {MAX_HEADER_LINES} header lines")
        if 100 <= status < 200 and status != 101:
            continue                    # an interim response (100 Continue, 103 Early Hints): the real one follows
        if not want_body or status in (204, 304):
            return status, b""
        return status, await _read_body(reader, headers)


async def http_get(ip, port: int, path: str = "/", host: str = "", expect_status: int = 200, expect_body: str = "",
                   tls: bool = False, source=None, *, timeout: float = 1.0) -> ProbeResult:
    """Up if ``GET path`` over HTTP/1.1 (HTTPS with tls) answers expect_status and, if expect_body is not empty,
    a body (its first MAX_BODY bytes) containing it. Host header: host, or the edge's address when empty."""
    t0 = time.monotonic()
    scheme = "https" if tls else "http"
    where = f"{scheme} {_hostport(ip, port)}"
    hosthdr = host or _default_host(ip, port, tls)
    request = (f"GET {path} HTTP/1.1\r\nHost: {hosthdr}\r\nUser-Agent: {USER_AGENT}\r\nAccept: */*\r\n"
               f"Connection: close\r\n\r\n").encode("latin-1")
    writer = None
    try:
        async with asyncio.timeout(timeout):
            sock = await _connect(ip, port, source)
            try:
                if tls:
                    reader, writer = await asyncio.open_connection(sock=sock, ssl=_tls(), server_hostname=_sni(host))
                else:
                    reader, writer = await asyncio.open_connection(sock=sock)
            except BaseException:
                sock.close()
                raise
            status, body = await _http_exchange(reader, writer, request, bool(expect_body))
    except TimeoutError:
        return ProbeResult(False, f"{where}: no complete answer in {timeout:g} s", time.monotonic() - t0)
    except ssl.SSLError as exc:
        return ProbeResult(False, f"{where}: TLS: {exc.reason or exc}", time.monotonic() - t0)
    except OSError as exc:
        return _failed(f"{where}: {_oserror(exc)}", t0, exc)
    except (_BadResponse, ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError) as exc:
        return ProbeResult(False, f"{where}: bad response: {exc}", time.monotonic() - t0)
    finally:
        if writer is not None:
            writer.transport.abort()    # no TLS close_notify exchange, no lingering: the answer is in
    latency = time.monotonic() - t0
    if status != expect_status:
        return ProbeResult(False, f"{where}{path}: HTTP {status}, expected {expect_status}", latency)
    if expect_body and expect_body.encode() not in body:
        shown = expect_body if len(expect_body) <= 40 else expect_body[:37] + "..."
        return ProbeResult(False, f"{where}{path}: HTTP {status} but the body lacks {shown!r}", latency)
    return ProbeResult(True, f"{where}{path}: HTTP {status}", latency)


_icmp_seq = itertools.count(random.randrange(0x10000))


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _icmp_socket(family: int, proto: int) -> tuple[socket.socket, bool]:
    """An ICMP datagram ("ping") socket when net.ipv4.ping_group_range allows it, else a raw socket (root or
    CAP_NET_RAW). Returns (socket, raw)."""
    try:
        return socket.socket(family, socket.SOCK_DGRAM, proto), False
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT):
            raise
    return socket.socket(family, socket.SOCK_RAW, proto), True


async def icmp_echo(ip, source=None, *, timeout: float = 1.0) -> ProbeResult:
    """Up if an ICMP (ICMPv6 for an IPv6 address) echo reply with our identifier, sequence number and payload
    comes back from ip within timeout."""
    t0 = time.monotonic()
    a = _addr(ip)
    v6 = a.version == 6
    family, proto = (socket.AF_INET6, socket.IPPROTO_ICMPV6) if v6 else (socket.AF_INET, socket.IPPROTO_ICMP)
    req_type, rep_type = (128, 129) if v6 else (8, 0)
    where = f"icmp {a}"
    try:
        sock, raw = _icmp_socket(family, proto)
    except OSError as exc:
        return ProbeResult(False, f"{where}: no ICMP socket (allow net.ipv4.ping_group_range or run with "
                                  f"CAP_NET_RAW): {_oserror(exc)}", time.monotonic() - t0)
    loop = asyncio.get_running_loop()
    try:
        sock.setblocking(False)
        if source is not None:
            sock.bind((str(_addr(source)), 0))
        ident = random.randrange(0x10000)
        seq = next(_icmp_seq) & 0xFFFF
        payload = os.urandom(8) + b"pydp-health-echo"
        head = struct.pack("!BBHHH", req_type, 0, 0, ident, seq)
        csum = 0 if v6 else _checksum(head + payload)     # ICMPv6: the kernel sums (it needs the pseudo-header)
        packet = struct.pack("!BBHHH", req_type, 0, csum, ident, seq) + payload
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_sendto(sock, packet, (str(a), 0))
                if not raw:
                    ident = sock.getsockname()[1]       # a ping socket's identifier is its local "port"
                while True:
                    data, frm = await loop.sock_recvfrom(sock, 65535)
                    if raw and not v6:
                        if len(data) < 20:
                            continue
                        data = data[(data[0] & 0x0F) * 4:]     # a raw IPv4 socket hands over the IP header
                    if len(data) < 8 or data[0] != rep_type or data[8:] != payload:
                        continue
                    if ipaddress.ip_address(frm[0].split("%", 1)[0]) != a:
                        continue
                    r_ident, r_seq = struct.unpack("!HH", data[4:8])
                    if r_seq == seq and (r_ident == ident or not raw):
                        break
        except TimeoutError:
            return ProbeResult(False, f"{where}: no echo reply in {timeout:g} s", time.monotonic() - t0)
        except OSError as exc:
            return _failed(f"{where}: {_oserror(exc)}", t0, exc)
        latency = time.monotonic() - t0
        return ProbeResult(True, f"{where}: echo reply seq {seq} ({'raw' if raw else 'ping'} socket)", latency)
    except OSError as exc:
        return ProbeResult(False, f"{where}: {_oserror(exc)}", time.monotonic() - t0)
    finally:
        sock.close()


async def run_probe(ip, cfg: HealthConfig, source=None) -> ProbeResult:
    """The probe a HealthConfig asks for, with its timeout. Type "none" is always up (nothing is sent)."""
    t = cfg.type
    if t == "tcp":
        return await tcp_connect(ip, cfg.port, source, timeout=cfg.timeout)
    if t in ("http", "https"):
        return await http_get(ip, cfg.port, cfg.path, cfg.host, cfg.expect_status, cfg.expect_body,
                              tls=(t == "https"), source=source, timeout=cfg.timeout)
    if t == "icmp":
        return await icmp_echo(ip, source, timeout=cfg.timeout)
    if t == "none":
        return ProbeResult(True, "not checked (type none)", 0.0)
    raise ValueError(f"unknown health check type {t!r}")


# ---- the per-edge state (sans-I/O) -----------------------------------------------------------------------

class State(enum.Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True)
class Transition:
    """A change of the reported state of an edge."""
    old: State
    new: State
    reason: str
    at: float               # the `now` of the observation that caused it

    @property
    def up(self) -> bool:
        return self.new is State.UP


@dataclass(frozen=True)
class Damping:
    """Flap damping, as BGP route-flap damping (RFC 2439) but on a scale of seconds.

    Every UP<->DOWN change of the checked state adds ``penalty``; the penalty halves every ``half_life`` seconds.
    When it reaches ``suppress`` the edge is held DOWN (whatever the checks say) until it has decayed to
    ``reuse``. The penalty never exceeds ``ceiling`` = reuse * 2**(max_suppress / half_life), so an edge is never
    held down for longer than ``max_suppress`` seconds after its last flap.

    The defaults: one outage (down, then up: 2 changes, < 2000) is never damped; a third change within about a
    half-life (down, up, down) suppresses; held down ~ 2 half-lives (60 s) after that, at most 120 s."""

    half_life: float = 30.0
    penalty: float = 1000.0
    suppress: float = 2500.0
    reuse: float = 750.0
    max_suppress: float = 120.0

    def __post_init__(self) -> None:
        if not (self.half_life > 0 and self.penalty > 0 and self.max_suppress > 0):
            raise ValueError("half_life, penalty and max_suppress must be > 0")
        if not 0 < self.reuse < self.suppress:
            raise ValueError("need 0 < reuse < suppress")
        if self.suppress > self.ceiling:
            raise ValueError(f"suppress ({self.suppress:g}) is above the ceiling ({self.ceiling:g}): it could never "
                             "be reached; raise max_suppress")

    @property
    def ceiling(self) -> float:
        return self.reuse * 2.0 ** (self.max_suppress / self.half_life)


class EdgeHealth:
    """The health of one edge from its check results: rise/fall and flap damping. No clock, no I/O.

    ``raw`` is what the checks say: UNKNOWN until the first decision (``rise`` successes or ``fall`` failures in
    a row), then UP after ``rise`` successes in a row, DOWN after ``fall`` failures in a row. ``state`` is what is
    reported: ``raw``, except that an edge damped for flapping is DOWN. ``observe`` and ``poll`` return a
    Transition when ``state`` changes (the first decision, out of UNKNOWN, included).

    Counters: ``checks``, ``failures`` (checks that failed), ``transitions`` (UP<->DOWN changes of ``state``; the
    first decision is not counted), ``suppressed`` (times damping began to hold the edge down)."""

    def __init__(self, rise: int = 2, fall: int = 3, damping: Damping | None = Damping()):
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be >= 1")
        self.rise = rise
        self.fall = fall
        self.damping = damping
        self.raw = State.UNKNOWN
        self.state = State.UNKNOWN
        self.damped = False
        self.ok_run = 0
        self.fail_run = 0
        self.checks = 0
        self.failures = 0
        self.transitions = 0
        self.suppressed = 0
        self.last_change: float | None = None
        self.last_ok: bool | None = None
        self.last_detail = ""
        self._penalty = 0.0
        self._penalty_at = 0.0

    # -- damping arithmetic --

    def penalty(self, now: float) -> float:
        if self._penalty == 0.0 or self.damping is None:
            return 0.0
        return self._penalty * 0.5 ** (max(0.0, now - self._penalty_at) / self.damping.half_life)

    def reuse_at(self, now: float) -> float | None:
        """When a damped edge is released (the penalty decays to ``reuse``); None if it is not damped."""
        if not self.damped or self.damping is None:
            return None
        p = self.penalty(now)
        d = self.damping
        return now + (d.half_life * math.log2(p / d.reuse) if p > d.reuse else 0.0)

    def _flap(self, now: float) -> None:
        d = self.damping
        if d is None:
            return
        self._penalty = min(self.penalty(now) + d.penalty, d.ceiling)
        self._penalty_at = now

    # -- inputs --

    def observe(self, ok: bool, now: float, detail: str = "") -> Transition | None:
        """One check result at time now (monotonic seconds)."""
        self.checks += 1
        self.last_ok = ok
        self.last_detail = detail
        if ok:
            self.ok_run += 1
            self.fail_run = 0
        else:
            self.failures += 1
            self.fail_run += 1
            self.ok_run = 0
        reason = ""
        if ok and self.raw is not State.UP and self.ok_run >= self.rise:
            new, reason = State.UP, f"{self.ok_run} successful checks in a row"
        elif not ok and self.raw is not State.DOWN and self.fail_run >= self.fall:
            new, reason = State.DOWN, f"{self.fail_run} failed checks in a row"
        else:
            new = self.raw
        if detail and reason:
            reason += f" ({detail})"
        if new is not self.raw:
            if self.raw is not State.UNKNOWN:
                self._flap(now)
            self.raw = new
        return self._settle(now, reason)

    def poll(self, now: float) -> Transition | None:
        """No check, only time passing: releases a damped edge once its penalty has decayed to ``reuse``."""
        return self._settle(now, "")

    def force(self, state: State, now: float, reason: str) -> Transition | None:
        """Sets the checked state without a check (type "none": always UP). Not a flap: no penalty."""
        self.raw = state
        self.ok_run = self.fail_run = 0
        self.damped = False
        return self._settle(now, reason)

    def reconfigure(self, rise: int, fall: int) -> None:
        """New rise/fall for a changed check: the state and the damping stay, the runs start again."""
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be >= 1")
        self.rise, self.fall = rise, fall
        self.ok_run = self.fail_run = 0

    def _settle(self, now: float, reason: str) -> Transition | None:
        d = self.damping
        if d is not None:
            p = self.penalty(now)
            if not self.damped and p >= d.suppress:
                self.damped = True
                self.suppressed += 1
                reason = (reason + "; " if reason else "") + (
                    f"flapping: held down (penalty {p:.0f} >= suppress {d.suppress:g}) for "
                    f"{d.half_life * math.log2(p / d.reuse):.0f} s")
            elif self.damped and p <= d.reuse * (1 + 1e-9):
                self.damped = False
                if self.raw is State.UP:
                    reason = f"flap damping released (penalty {p:.0f} <= reuse {d.reuse:g})"
        want = State.DOWN if (self.damped and self.raw is State.UP) else self.raw
        if want is self.state:
            return None
        old, self.state = self.state, want
        if old is not State.UNKNOWN:
            self.transitions += 1
        self.last_change = now
        return Transition(old, want, reason or "state changed", now)

    def snapshot(self, now: float) -> dict[str, Any]:
        return {
            "state": self.state.value, "checked": self.raw.value, "damped": self.damped,
            "penalty": round(self.penalty(now), 1), "reuse_in_s": (None if not self.damped else
                                                                    round(self.reuse_at(now) - now, 3)),
            "rise": self.rise, "fall": self.fall, "ok_in_a_row": self.ok_run, "failed_in_a_row": self.fail_run,
            "checks": self.checks, "failures": self.failures, "transitions": self.transitions,
            "suppressed": self.suppressed, "last_ok": self.last_ok, "last_detail": self.last_detail,
            "since_change_s": None if self.last_change is None else round(now - self.last_change, 3),
        }


# ---- the checker (asyncio) -----------------------------------------------------------------------------------

Key = tuple[str, str]                               # (cluster, edge)
OnChange = Callable[[str, str, bool, str], Any]     # (cluster, edge, up, reason); may return an awaitable
Probe = Callable[[str, HealthConfig, "str | None"], Awaitable[ProbeResult]]


@dataclass
class _Edge:
    ip: str
    cfg: HealthConfig
    health: EdgeHealth
    task: asyncio.Task | None = None
    last: ProbeResult | None = None
    local_failures: int = 0          # probes that failed on this appliance's side (not counted against the edge)


class HealthChecker:
    """Checks every edge of every cluster, each in its own task, and reports transitions.

    ``set_targets`` may be called at any time (on the loop) with the full set of edges: new ones start (after a
    random offset within their interval, so checks do not bunch up), removed ones stop, changed ones (address or
    any [cluster.health] key) restart their checks but keep their state and damping, unchanged ones are not
    touched. Each edge is checked every ``interval`` * uniform(0.9, 1.1) seconds (measured start to start); at most
    ``max_concurrency`` probes are in flight. ``on_change(cluster, edge, up, reason)`` is called on every change
    of an edge's reported state, the first decision included; type "none" reports UP once, at once, and is never
    probed. ``source``: the appliance's own address(es); a probe goes out from the one of the edge's family.
    """

    def __init__(self, on_change: OnChange | None = None, *, source: str | Iterable[str] | None = None,
                 max_concurrency: int = 64, damping: Damping | None = Damping(), probe: Probe | None = None,
                 rng: random.Random | None = None, local_down: Callable[[], str | None] | None = None):
        self._on_change = on_change
        self._local_down = local_down
        self._damping = damping
        self._probe = probe or run_probe
        self._rng = rng or random.Random()
        self._sem = asyncio.Semaphore(max_concurrency)
        self._edges: dict[Key, _Edge] = {}
        self._stopping: set[asyncio.Task] = set()
        self._sources: dict[int, str] = {}
        self._closed = False
        self.set_source(source)

    # -- configuration --

    def set_source(self, source: str | Iterable[str] | None) -> None:
        """The local address(es) probes are sent from, at most one per family (None: the kernel's choice).
        Takes effect from each edge's next check."""
        srcs: dict[int, str] = {}
        items = [] if source is None else [source] if isinstance(source, (str, ipaddress.IPv4Address,
                                                                         ipaddress.IPv6Address)) else list(source)
        for s in items:
            a = _addr(s)
            if a.version in srcs:
                raise ValueError(f"two source addresses of IPv{a.version}: {srcs[a.version]} and {a}")
            srcs[a.version] = str(a)
        self._sources = srcs

    def set_targets(self, targets: Mapping[Key, tuple[Any, HealthConfig]]) -> None:
        """The complete set of edges to check: {(cluster, edge): (ip, HealthConfig)}. Call from the loop."""
        if self._closed:
            raise RuntimeError("HealthChecker is closed")
        loop = asyncio.get_running_loop()
        wanted = {key: (str(_addr(ip)), dataclasses.replace(cfg)) for key, (ip, cfg) in targets.items()}
        for key in [k for k in self._edges if k not in wanted]:
            self._stop(self._edges.pop(key))
            log.info("health check removed: cluster %s edge %s", *key)
        for key, (ip, cfg) in wanted.items():
            e = self._edges.get(key)
            if e is not None and e.ip == ip and e.cfg == cfg:
                continue
            if e is None:
                e = _Edge(ip, cfg, EdgeHealth(cfg.rise, cfg.fall, self._damping))
                self._edges[key] = e
            else:
                self._stop(e)
                e.ip, e.cfg = ip, cfg
                e.health.reconfigure(cfg.rise, cfg.fall)
            if cfg.type == "none":
                r = self._report(key, e.health.force(State.UP, loop.time(), "health check type none: always up"))
                if r is not None:
                    self._track(loop.create_task(self._await_callback(key, r)))
            else:
                e.task = loop.create_task(self._run(key, e), name=f"health {key[0]}/{key[1]}")

    def _stop(self, e: _Edge) -> None:
        if e.task is not None:
            e.task.cancel()
            self._track(e.task)
            e.task = None

    def _track(self, task: asyncio.Task) -> None:
        """Keeps a task that is ending (or a callback's) until it has ended; close() waits for them."""
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    # -- status --

    def states(self) -> dict[Key, dict[str, Any]]:
        """Every edge: address, check type, state ("unknown", "up", "down"), damping, counters, last result."""
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:
            now = time.monotonic()      # asyncio's default clock
        out = {}
        for key, e in self._edges.items():
            s = e.health.snapshot(now)
            s.update(ip=e.ip, type=e.cfg.type, interval=e.cfg.interval,
                     last_latency_s=None if e.last is None else round(e.last.latency_s, 6),
                     local_failures=e.local_failures)
            if e.last is not None and e.last.local:
                s["last_detail"] = f"not counted (this appliance's side): {e.last.detail}"
            out[key] = s
        return out

    def state(self, cluster: str, edge: str) -> State | None:
        e = self._edges.get((cluster, edge))
        return None if e is None else e.health.state

    async def close(self) -> None:
        """Stops every check and waits for the tasks to end. No callback is called afterwards."""
        self._closed = True
        for e in self._edges.values():
            self._stop(e)
        tasks = list(self._stopping)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._edges.clear()

    # -- the per-edge task --

    async def _run(self, key: Key, e: _Edge) -> None:
        loop = asyncio.get_running_loop()
        cfg, ip = e.cfg, e.ip
        await asyncio.sleep(self._rng.uniform(0, cfg.interval))
        while True:
            start = loop.time()
            async with self._sem:
                try:
                    async with asyncio.timeout(cfg.timeout + 1.0):     # a guard: the probes bound themselves
                        res = await self._probe(ip, cfg, self._sources.get(_addr(ip).version))
                except TimeoutError:
                    res = ProbeResult(False, f"probe did not end in {cfg.timeout:g} s", loop.time() - start)
                except Exception as exc:        # a bug in a probe must not end the checks of the edge
                    log.exception("health probe of cluster %s edge %s failed", *key)
                    res = ProbeResult(False, f"probe error: {exc!r}", loop.time() - start)
            if not res.ok and not res.local and self._local_down is not None:
                why = self._local_down()
                if why:
                    res = dataclasses.replace(res, detail=f"{res.detail} ({why})", local=True)
            e.last = res
            if res.local:
                e.local_failures += 1           # this appliance's network is down: nothing learnt about the edge
            else:
                await self._report_async(key, e.health.observe(res.ok, loop.time(), res.detail))
            next_at = start + cfg.interval * self._rng.uniform(1 - JITTER, 1 + JITTER)
            while (now := loop.time()) < next_at:
                release = e.health.reuse_at(now)
                if release is not None and release < next_at:
                    await asyncio.sleep(max(0.0, release - now) + 0.001)
                    await self._report_async(key, e.health.poll(loop.time()))
                else:
                    await asyncio.sleep(next_at - now)

    def _report(self, key: Key, t: Transition | None) -> Awaitable | None:
        if t is None:
            return None
        cluster, edge = key
        e = self._edges.get(key)
        ip = e.ip if e else "?"
        level = logging.WARNING if t.new is State.DOWN else logging.INFO
        log.log(level, "edge %s of cluster %s (%s): %s -> %s: %s", edge, cluster, ip, t.old.value, t.new.value,
                t.reason)
        if self._on_change is None or self._closed:
            return None
        try:
            r = self._on_change(cluster, edge, t.up, t.reason)
        except Exception:
            log.exception("health on_change callback failed (cluster %s edge %s)", cluster, edge)
            return None
        return r if inspect.isawaitable(r) else None

    async def _report_async(self, key: Key, t: Transition | None) -> None:
        r = self._report(key, t)
        if r is not None:
            await self._await_callback(key, r)

    @staticmethod
    async def _await_callback(key: Key, r: Awaitable) -> None:
        try:
            await r
        except Exception:
            log.exception("health on_change callback failed (cluster %s edge %s)", key[0], key[1])
