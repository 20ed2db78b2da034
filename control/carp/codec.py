"""CARP v2 advertisements on the wire: encode, decode, authenticate. Pure functions, no I/O.

The 36-byte CARP header (all multi-byte fields big-endian)::

    0  version << 4 | type (0x21)     1  vhid         2  advskew      3  authlen (7)
    4  demote                         5  advbase      6-7  Internet checksum of the 36 bytes
    8-15  counter (64 bit)            16-35  HMAC-SHA1

The HMAC key is the passphrase bytes as they are; the message is 0x02 0x01, the vhid, the virtual addresses
(IPv4 ones ascending, then IPv6 ones ascending) and the 8 counter bytes as on the wire.

IPv6 advertisements (OpenBSD; ucarp is IPv4 only) go to ff02::12 (Ethernet 33:33:00:00:00:12) with next header
112 and hop limit 255 (:func:`ipv6_packet`); the HMAC then covers the 16-byte IPv6 cluster address. Taking an IPv6
cluster address is announced with an unsolicited neighbour advertisement (:func:`neighbour_advert`).

A received IPv4 advertisement goes through :func:`parse_ipv4` (IP header, TTL 255), :func:`decode` (length,
checksum, version, type), :func:`check_vhid` and :func:`verify` (HMAC); :func:`accept_ipv4` runs the lot and
counts the outcome in :class:`Counters`. Every refusal is a :class:`CarpError` whose ``reason`` is one of
:data:`REASONS`. :class:`ReplayGuard` refuses an authenticated advertisement seen before ("replay").
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import ipaddress
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

CARP_PROTO = 112
CARP_VERSION = 2
CARP_ADVERTISEMENT = 1
CARP_TTL = 255
CARP_AUTHLEN = 7
GROUP4 = "224.0.0.18"
GROUP6 = "ff02::12"
GROUP4_MAC = bytes.fromhex("01005e000012")
GROUP6_MAC = bytes.fromhex("333300000012")
ALL_NODES6 = "ff02::1"
ALL_NODES6_MAC = bytes.fromhex("333300000001")
ICMPV6_PROTO = 58
ND_NEIGHBOR_ADVERT = 136
ND_NA_FLAG_OVERRIDE = 0x20000000
ND_OPT_TARGET_LLADDR = 2
HEADER_LEN = 36
KEY_MAX = 20
BOWOUT_ADVBASE = 255
BOWOUT_ADVSKEW = 255
COUNTER_MASK = (1 << 64) - 1

REASONS = ("short", "ttl", "version", "type", "checksum", "hmac", "vhid", "family", "replay")

_HDR = struct.Struct("!BBBBBBH Q 20s")
_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP_DF = 0x4000
_IP6 = struct.Struct("!IHBB16s16s")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class CarpError(ValueError):
    """An advertisement that is dropped; ``reason`` (one of :data:`REASONS`) names the check that failed."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown CARP drop reason {reason!r}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class Advert:
    """A decoded advertisement (the fields a state machine needs, plus the counter and digest)."""

    vhid: int
    advbase: int
    advskew: int
    demote: int
    counter: int
    hmac: bytes

    @property
    def interval(self) -> float:
        """Seconds between advertisements: advbase + advskew/256 (smaller is the preferred master)."""
        return self.advbase + self.advskew / 256

    @property
    def ticks(self) -> int:
        """The interval in exact 1/256 s units, for comparisons without rounding."""
        return self.advbase * 256 + self.advskew

    @property
    def is_bowout(self) -> bool:
        """advbase 255 and advskew 255: a master leaving gracefully."""
        return self.advbase == BOWOUT_ADVBASE and self.advskew == BOWOUT_ADVSKEW


def _addr(a) -> IPAddress:
    return a if isinstance(a, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else ipaddress.ip_address(a)


def _key(key: bytes) -> bytes:
    if isinstance(key, str):
        raise TypeError("the CARP key is bytes (encode the passphrase first)")
    key = bytes(key)
    if len(key) > KEY_MAX:
        raise ValueError(f"CARP passphrase is {len(key)} bytes; at most {KEY_MAX} (19 to interoperate with "
                         "ucarp and OpenBSD)")
    return key


def _byte(name: str, value: int, lo: int = 0, hi: int = 255) -> int:
    if not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, not {value!r}")
    return value


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``; over data that carries a correct checksum it is 0."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def hmac_message(vhid: int, addrs: Iterable, counter: int) -> bytes:
    """The bytes the HMAC covers: version, type, vhid, the virtual addresses sorted, the counter."""
    parsed = [_addr(a) for a in addrs]
    v4 = sorted(a for a in parsed if a.version == 4)
    v6 = sorted(a for a in parsed if a.version == 6)
    return (bytes((CARP_VERSION, CARP_ADVERTISEMENT, _byte("vhid", vhid)))
            + b"".join(a.packed for a in v4 + v6)
            + struct.pack("!Q", counter & COUNTER_MASK))


def hmac_digest(key: bytes, vhid: int, addrs: Iterable, counter: int) -> bytes:
    """HMAC-SHA1 of :func:`hmac_message` with the passphrase as key (20 bytes)."""
    return hmac.new(_key(key), hmac_message(vhid, addrs, counter), hashlib.sha1).digest()


def encode(vhid: int, advbase: int, advskew: int, demote: int, counter: int, key: bytes, addrs: Iterable) -> bytes:
    """The 36-byte CARP header of an advertisement, checksum and HMAC filled in."""
    _byte("vhid", vhid, 1)
    for name, value in (("advbase", advbase), ("advskew", advskew), ("demote", demote)):
        _byte(name, value)
    if not isinstance(counter, int) or not 0 <= counter <= COUNTER_MASK:
        raise ValueError(f"counter must fit in 64 bits, not {counter!r}")
    digest = hmac_digest(key, vhid, addrs, counter)
    raw = _HDR.pack(CARP_VERSION << 4 | CARP_ADVERTISEMENT, vhid, advskew, CARP_AUTHLEN, demote, advbase, 0,
                    counter, digest)
    return raw[:6] + struct.pack("!H", checksum(raw)) + raw[8:]


def decode(data: bytes) -> Advert:
    """Parse a CARP header (bytes after the IP header; anything past 36 bytes is ignored).

    Checks in OpenBSD's order: length ("short"), checksum, then version and type."""
    if len(data) < HEADER_LEN:
        raise CarpError("short", f"{len(data)} bytes, a CARP header is {HEADER_LEN}")
    head = bytes(data[:HEADER_LEN])
    if checksum(head) != 0:
        raise CarpError("checksum", f"header checksum 0x{struct.unpack_from('!H', head, 6)[0]:04x} is wrong")
    vt, vhid, advskew, _authlen, demote, advbase, _sum, counter, digest = _HDR.unpack(head)
    if vt >> 4 != CARP_VERSION:
        raise CarpError("version", f"version {vt >> 4}, expected {CARP_VERSION}")
    if vt & 0x0F != CARP_ADVERTISEMENT:
        raise CarpError("type", f"type {vt & 0x0F}, expected {CARP_ADVERTISEMENT} (advertisement)")
    return Advert(vhid=vhid, advbase=advbase, advskew=advskew, demote=demote, counter=counter, hmac=digest)


def verify(adv: Advert, key: bytes, addrs: Iterable) -> None:
    """Raise CarpError("hmac") unless the advertisement's digest matches (compared in constant time)."""
    expected = hmac_digest(key, adv.vhid, addrs, adv.counter)
    if not hmac.compare_digest(expected, adv.hmac):
        raise CarpError("hmac", "digest mismatch: check the vhid, the passphrase and the virtual address")


def check_vhid(adv: Advert, vhid: int) -> None:
    """Raise CarpError("vhid") when the advertisement is for another virtual host."""
    if adv.vhid != vhid:
        raise CarpError("vhid", f"vhid {adv.vhid}, ours is {vhid}")


def check_hoplimit(hoplimit: int) -> None:
    """IPv6 (the kernel builds and strips the header): the hop limit must be 255, as an IPv4 TTL."""
    if hoplimit != CARP_TTL:
        raise CarpError("ttl", f"hop limit {hoplimit} != {CARP_TTL}")


def ipv4_packet(src, carp: bytes, tos: int = 0x10, *, ident: int = 0, dst=GROUP4) -> bytes:
    """A whole IPv4 advertisement as ucarp and OpenBSD send it: 20-byte header, TOS low-delay, DF, TTL 255,
    protocol 112, to 224.0.0.18 (or a unicast ``dst``), header checksum filled in, then ``carp``."""
    s, d = _addr(src), _addr(dst)
    if s.version != 4 or d.version != 4:
        raise ValueError("ipv4_packet needs IPv4 source and destination addresses")
    total = 20 + len(carp)
    head = _IP4.pack(0x45, tos & 0xFF, total, ident & 0xFFFF, _IP_DF, CARP_TTL, CARP_PROTO, 0, s.packed, d.packed)
    head = head[:10] + struct.pack("!H", checksum(head)) + head[12:]
    return head + bytes(carp)


def parse_ipv4(packet: bytes) -> tuple[ipaddress.IPv4Address, bytes]:
    """Split a received IPv4 packet (as a raw IPPROTO 112 socket returns it) into (source, CARP bytes).

    Raises CarpError: "short" (truncated), "family" (not IPv4, or not protocol 112), "ttl" (TTL != 255),
    "checksum" (IP header checksum)."""
    if len(packet) < 20:
        raise CarpError("short", f"{len(packet)} bytes, shorter than an IPv4 header")
    ver_ihl, _tos, total, _id, _off, ttl, proto, _sum, src, _dst = _IP4.unpack_from(packet)
    if ver_ihl >> 4 != 4:
        raise CarpError("family", f"IP version {ver_ihl >> 4}")
    ihl = (ver_ihl & 0x0F) * 4
    if ihl < 20 or len(packet) < ihl:
        raise CarpError("short", f"IPv4 header length {ihl} in a {len(packet)}-byte packet")
    if proto != CARP_PROTO:
        raise CarpError("family", f"IP protocol {proto}, not {CARP_PROTO}")
    if ttl != CARP_TTL:
        raise CarpError("ttl", f"TTL {ttl} != {CARP_TTL}")
    end = min(total, len(packet)) if total >= ihl else len(packet)
    if end - ihl < HEADER_LEN:
        raise CarpError("short", f"{end - ihl} bytes after the IP header, a CARP header is {HEADER_LEN}")
    if checksum(packet[:ihl]) != 0:
        raise CarpError("checksum", "IPv4 header checksum is wrong")
    return ipaddress.IPv4Address(src), bytes(packet[ihl:end])


def ipv6_packet(src, payload: bytes, *, next_header: int = CARP_PROTO, dst=GROUP6,
                hop_limit: int = CARP_TTL) -> bytes:
    """A whole IPv6 packet: the 40-byte header (traffic class 0, flow label 0, hop limit 255 unless told), then
    ``payload``. By default a CARP advertisement (next header 112) to ff02::12, as OpenBSD sends it."""
    s, d = _addr(_unscoped(src)), _addr(_unscoped(dst))
    if s.version != 6 or d.version != 6:
        raise ValueError("ipv6_packet needs IPv6 source and destination addresses")
    return _IP6.pack(6 << 28, len(payload), next_header & 0xFF, _byte("hop_limit", hop_limit), s.packed,
                     d.packed) + bytes(payload)


def parse_ipv6(packet: bytes) -> tuple[ipaddress.IPv6Address, bytes]:
    """Split a whole IPv6 packet (as captured on the link) into (source, CARP bytes). No extension headers.

    Raises CarpError: "short", "family" (not IPv6, or next header not 112), "ttl" (hop limit != 255)."""
    if len(packet) < _IP6.size:
        raise CarpError("short", f"{len(packet)} bytes, shorter than an IPv6 header")
    vtf, plen, nxt, hlim, src, _dst = _IP6.unpack_from(packet)
    if vtf >> 28 != 6:
        raise CarpError("family", f"IP version {vtf >> 28}")
    if nxt != CARP_PROTO:
        raise CarpError("family", f"IPv6 next header {nxt}, not {CARP_PROTO}")
    check_hoplimit(hlim)
    body = bytes(packet[_IP6.size:_IP6.size + plen])
    if len(body) < HEADER_LEN:
        raise CarpError("short", f"{len(body)} bytes after the IPv6 header, a CARP header is {HEADER_LEN}")
    return ipaddress.IPv6Address(src), body


def icmpv6_checksum(src, dst, icmp: bytes) -> int:
    """The ICMPv6 checksum: the Internet checksum over the IPv6 pseudo-header (source, destination, upper-layer
    length, next header 58) and the ICMPv6 message (its checksum field zero)."""
    s, d = _addr(_unscoped(src)), _addr(_unscoped(dst))
    pseudo = s.packed + d.packed + struct.pack("!I3xB", len(icmp), ICMPV6_PROTO)
    return checksum(pseudo + bytes(icmp))


def neighbour_advert(target, mac: bytes, *, src=None, dst=ALL_NODES6) -> bytes:
    """An unsolicited neighbour advertisement (RFC 4861 7.2.6) as a whole IPv6 packet: ICMPv6 type 136, override
    flag, target = ``target``, target link-layer address option = ``mac``; from ``src`` (default: the target) to
    ff02::1, hop limit 255, checksum filled in."""
    t = _addr(_unscoped(target))
    if t.version != 6:
        raise ValueError("a neighbour advertisement is for an IPv6 address")
    mac = bytes(mac)
    if len(mac) != 6:
        raise ValueError("the link-layer address is 6 bytes")
    src = t if src is None else src
    icmp = struct.pack("!BBHI16sBB6s", ND_NEIGHBOR_ADVERT, 0, 0, ND_NA_FLAG_OVERRIDE, t.packed,
                       ND_OPT_TARGET_LLADDR, 1, mac)
    icmp = icmp[:2] + struct.pack("!H", icmpv6_checksum(src, dst, icmp)) + icmp[4:]
    return ipv6_packet(src, icmp, next_header=ICMPV6_PROTO, dst=dst)


def multicast_mac6(group) -> bytes:
    """The Ethernet address of an IPv6 multicast group: 33:33 and the group's last 4 bytes."""
    return b"\x33\x33" + _addr(_unscoped(group)).packed[12:]


def _unscoped(a):
    """An address without a %scope suffix (the scope is the interface; it is not part of the packet)."""
    return a.split("%", 1)[0] if isinstance(a, str) else a


class Counters(Mapping):
    """Received advertisements by outcome: one counter per drop reason, plus "ok". Read like a dict."""

    KEYS = REASONS + ("ok",)

    def __init__(self):
        self._c = dict.fromkeys(self.KEYS, 0)

    def count(self, reason: str | CarpError, n: int = 1) -> int:
        """Add ``n`` to a reason's counter (a CarpError counts under its reason); returns the new value."""
        key = reason.reason if isinstance(reason, CarpError) else reason
        if key not in self._c:
            raise KeyError(f"unknown counter {key!r}; known: {', '.join(self.KEYS)}")
        self._c[key] += n
        return self._c[key]

    def __getitem__(self, key: str) -> int:
        return self._c[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._c)

    def __len__(self) -> int:
        return len(self._c)

    @property
    def dropped(self) -> int:
        return sum(v for k, v in self._c.items() if k != "ok")

    def as_dict(self) -> dict[str, int]:
        return dict(self._c)

    def __repr__(self) -> str:
        return f"Counters({self._c!r})"


def accept_ipv4(packet: bytes, key: bytes, addrs: Iterable, vhid: int,
                counters: Counters | None = None) -> tuple[ipaddress.IPv4Address, Advert]:
    """The whole receive path for one IPv4 packet: parse, decode, vhid, HMAC. Counts "ok" or the drop reason
    in ``counters`` (when given) and re-raises the CarpError on a drop."""
    try:
        src, carp = parse_ipv4(packet)
        adv = decode(carp)
        check_vhid(adv, vhid)
        verify(adv, key, addrs)
    except CarpError as exc:
        if counters is not None:
            counters.count(exc)
        raise
    if counters is not None:
        counters.count("ok")
    return src, adv


def accept_ipv6(carp: bytes, hoplimit: int, key: bytes, addrs: Iterable, vhid: int,
                counters: Counters | None = None) -> Advert:
    """The receive path for IPv6 (the CARP bytes and the hop limit from IPV6_RECVHOPLIMIT); counts like
    :func:`accept_ipv4`."""
    try:
        check_hoplimit(hoplimit)
        adv = decode(carp)
        check_vhid(adv, vhid)
        verify(adv, key, addrs)
    except CarpError as exc:
        if counters is not None:
            counters.count(exc)
        raise
    if counters is not None:
        counters.count("ok")
    return adv


class ReplayGuard:
    """Refuses an advertisement whose (source, counter) was accepted before: a captured advert sent again.

    CARP has no timestamp and ucarp draws a new counter at random for every advert, so no order can be required;
    but a legitimate sender never repeats a 64-bit counter, so a repeat is a replay. The last ``memory`` counters
    of up to ``sources`` sources are remembered (only authenticated adverts get here, so the table cannot be
    flooded by anyone without the passphrase). An advert older than the memory is not recognised: the protocol
    cannot tell it from a new one."""

    def __init__(self, memory: int = 1024, sources: int = 16):
        self.memory = memory
        self.sources = sources
        self._seen: dict[Any, tuple[collections.deque, set]] = {}

    def check(self, src, adv: Advert) -> None:
        """Raise CarpError("replay") if src sent this counter before; else remember it."""
        entry = self._seen.get(src)
        if entry is None:
            if len(self._seen) >= self.sources:
                self._seen.pop(next(iter(self._seen)))
            entry = self._seen[src] = (collections.deque(), set())
        order, seen = entry
        if adv.counter in seen:
            raise CarpError("replay", f"counter {adv.counter:#x} from {src} was accepted before")
        order.append(adv.counter)
        seen.add(adv.counter)
        if len(order) > self.memory:
            seen.discard(order.popleft())


def virtual_mac(vhid: int) -> bytes:
    """OpenBSD's virtual MAC for a vhid, 00:00:5e:00:01:<vhid> (source of adverts and owner of the VIP)."""
    return bytes((0x00, 0x00, 0x5E, 0x00, 0x01, _byte("vhid", vhid, 1)))


def ucarp_advert_mac(vhid: int) -> bytes:
    """The source MAC ucarp puts on its advertisements, 00:00:5e:00:00:<vhid> (the VIP keeps the real MAC)."""
    return bytes((0x00, 0x00, 0x5E, 0x00, 0x00, _byte("vhid", vhid, 1)))
