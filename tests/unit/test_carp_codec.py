"""The CARP codec: real ucarp advertisements, round trips, known answers, and every drop reason.

The fixture tests/unit/data/ucarp_vhid7.pcap holds three advertisements sent by ucarp 1.5.2 (Debian
1.5.2+git20192404.1a9aaf7-1). It was made by ``recapture()`` below (run ``python3 tests/unit/test_carp_codec.py
--recapture`` as root to make it again): two network namespaces joined by a veth, ucarp on one end::

    ucarp --interface=ca --srcip=192.0.2.1 --vhid=7 --pass=secret --addr=192.0.2.100 \
          --advbase=1 --advskew=50 --upscript=/bin/true --downscript=/bin/true

and ``tcpdump -w … -c 3 'ip proto 112'`` on the other end. Alone on the link, ucarp goes MASTER after its
master-down interval and advertises every 1 + 50/256 s. (With no peer heard, ucarp draws a fresh random counter
for each advertisement, which is why the three counters are unrelated.)
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from control.carp import codec
from control.carp.codec import Advert, CarpError, Counters

DATA = Path(__file__).resolve().parent / "data"
PCAP = DATA / "ucarp_vhid7.pcap"
KEY = b"secret"
VIP = "192.0.2.100"


# ---- helpers ------------------------------------------------------------------------------------------------

def read_pcap(path: Path) -> list[tuple[float, bytes]]:
    """(timestamp, frame) for each record of a classic little-endian, microsecond, Ethernet pcap file."""
    data = path.read_bytes()
    magic, _vmaj, _vmin, _tz, _sig, _snap, linktype = struct.unpack_from("<IHHiIII", data)
    assert magic == 0xA1B2C3D4 and linktype == 1, "expected a microsecond Ethernet pcap"
    out, off = [], 24
    while off < len(data):
        sec, usec, incl, _orig = struct.unpack_from("<IIII", data, off)
        off += 16
        out.append((sec + usec / 1e6, data[off:off + incl]))
        off += incl
    return out


def fix_checksum(carp: bytes) -> bytes:
    """The same CARP header with its checksum recomputed (to reach the checks after the checksum)."""
    raw = carp[:6] + b"\0\0" + carp[8:]
    return raw[:6] + struct.pack("!H", codec.checksum(raw)) + raw[8:]


def good_carp(**kw) -> bytes:
    args = dict(vhid=7, advbase=1, advskew=50, demote=0, counter=0x0102030405060708, key=KEY, addrs=[VIP])
    args.update(kw)
    return codec.encode(**args)


def good_packet(carp: bytes | None = None) -> bytes:
    return codec.ipv4_packet("192.0.2.1", good_carp() if carp is None else carp, ident=0x1234)


def set_ip_byte(packet: bytes, offset: int, value: int) -> bytes:
    """Change one byte of the IPv4 header and fix the header checksum."""
    b = bytearray(packet)
    b[offset] = value
    b[10:12] = b"\0\0"
    b[10:12] = struct.pack("!H", codec.checksum(bytes(b[:20])))
    return bytes(b)


# ---- the real capture ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def capture():
    frames = read_pcap(PCAP)
    assert len(frames) == 3
    return frames


def test_capture_ethernet_and_ip(capture):
    for _ts, frame in capture:
        dst, src, ethertype = frame[0:6], frame[6:12], struct.unpack_from("!H", frame, 12)[0]
        assert ethertype == 0x0800
        assert dst == codec.GROUP4_MAC                      # 01:00:5e:00:00:12
        assert src == codec.ucarp_advert_mac(7)             # ucarp's 00:00:5e:00:00:<vhid>
        ip = frame[14:]
        assert ip[0] == 0x45 and ip[1] == 0x10              # TOS low delay
        assert ip[8] == 255                                 # TTL
        assert ip[9] == codec.CARP_PROTO
        assert struct.unpack_from("!H", ip, 6)[0] == 0x4000  # DF
        assert ipaddress.ip_address(ip[16:20]) == ipaddress.ip_address(codec.GROUP4)
        src_ip, carp = codec.parse_ipv4(ip)
        assert src_ip == ipaddress.ip_address("192.0.2.1")
        assert len(carp) == codec.HEADER_LEN


def test_capture_fields_checksum_and_hmac(capture):
    counters = set()
    for _ts, frame in capture:
        _src, carp = codec.parse_ipv4(frame[14:])
        assert codec.checksum(carp) == 0                    # the checksum over the 36 bytes is right
        assert carp[0] == 0x21 and carp[3] == codec.CARP_AUTHLEN
        adv = codec.decode(carp)
        assert (adv.vhid, adv.advbase, adv.advskew, adv.demote) == (7, 1, 50, 0)
        assert adv.interval == pytest.approx(1 + 50 / 256)
        codec.verify(adv, KEY, [VIP])
        codec.verify(adv, KEY, [ipaddress.IPv4Address(VIP)])
        counters.add(adv.counter)
    assert len(counters) == 3


@pytest.mark.parametrize("key, addrs, vhid", [
    (b"Secret", [VIP], 7),            # wrong passphrase
    (b"secre", [VIP], 7),
    (b"secret\0x", [VIP], 7),
    (KEY, ["192.0.2.101"], 7),        # wrong virtual address
    (KEY, [VIP, "192.0.2.101"], 7),   # an extra address
])
def test_capture_wrong_secret_fails(capture, key, addrs, vhid):
    _src, carp = codec.parse_ipv4(capture[0][1][14:])
    adv = codec.decode(carp)
    with pytest.raises(CarpError) as err:
        codec.verify(adv, key, addrs)
    assert err.value.reason == "hmac"


def test_capture_trailing_nul_in_key_is_the_same_key(capture):
    # ucarp copies the passphrase with its NUL into a zeroed 20-byte key: zero padding does not change HMAC
    _src, carp = codec.parse_ipv4(capture[0][1][14:])
    codec.verify(codec.decode(carp), b"secret\0", [VIP])


def test_encode_reproduces_ucarp_bytes_exactly(capture):
    for _ts, frame in capture:
        ip = frame[14:]
        src, carp = codec.parse_ipv4(ip)
        adv = codec.decode(carp)
        ours = codec.encode(7, 1, 50, 0, adv.counter, KEY, [VIP])
        assert ours == carp
        ident = struct.unpack_from("!H", ip, 4)[0]
        assert codec.ipv4_packet(src, ours, ident=ident) == ip


def test_capture_spacing_matches_the_interval(capture):
    times = [ts for ts, _ in capture]
    for a, b in zip(times, times[1:]):
        assert b - a == pytest.approx(1 + 50 / 256, abs=0.05)


# ---- round trips and known answers --------------------------------------------------------------------------

@pytest.mark.parametrize("vhid, advbase, advskew, demote, counter", [
    (1, 1, 0, 0, 0),
    (7, 1, 50, 0, 0x0102030405060708),
    (255, 255, 255, 255, (1 << 64) - 1),
    (42, 3, 100, 17, 1 << 63),
    (9, 255, 255, 0, 12345),          # a bow-out
])
def test_round_trip(vhid, advbase, advskew, demote, counter):
    addrs = ["10.0.0.9", "10.0.0.10"]
    carp = codec.encode(vhid, advbase, advskew, demote, counter, KEY, addrs)
    assert len(carp) == 36 and codec.checksum(carp) == 0
    adv = codec.decode(carp)
    assert adv == Advert(vhid, advbase, advskew, demote, counter, adv.hmac)
    codec.verify(adv, KEY, list(reversed(addrs)))
    assert adv.is_bowout == (advbase == 255 and advskew == 255)
    assert adv.ticks == advbase * 256 + advskew
    src, carp2 = codec.parse_ipv4(codec.ipv4_packet("192.0.2.1", carp))
    assert (str(src), carp2) == ("192.0.2.1", carp)


def test_decode_ignores_trailing_bytes():
    carp = good_carp()
    assert codec.decode(carp + b"\xff" * 8) == codec.decode(carp)


def test_known_answer_header_layout():
    carp = good_carp(vhid=7, advbase=1, advskew=50, demote=3, counter=0x0102030405060708)
    assert carp[:6] == bytes([0x21, 7, 50, 7, 3, 1])
    assert carp[8:16] == bytes(range(1, 9))


def test_known_answer_checksum_rfc1071():
    # the worked example of RFC 1071 section 3: the sum is 0xddf2, the checksum its complement
    assert codec.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert codec.checksum(bytes.fromhex("0001f203f4f5f6f7220d")) == 0
    assert codec.checksum(b"\x01") == 0xFEFF             # odd length: padded with a zero byte


def test_known_answer_hmac_built_by_hand():
    """HMAC-SHA1 computed from its definition (ipad/opad over a zero-padded 64-byte key) with hashlib."""
    vhid, counter = 7, 0x1122334455667788
    msg = bytes([2, 1, vhid]) + bytes([10, 0, 0, 1]) + bytes([10, 0, 0, 2]) + counter.to_bytes(8, "big")
    k = KEY.ljust(64, b"\0")
    inner = hashlib.sha1(bytes(x ^ 0x36 for x in k) + msg).digest()
    expected = hashlib.sha1(bytes(x ^ 0x5C for x in k) + inner).digest()
    assert codec.hmac_message(vhid, ["10.0.0.2", "10.0.0.1"], counter) == msg
    assert codec.hmac_digest(KEY, vhid, ["10.0.0.2", "10.0.0.1"], counter) == expected
    assert codec.encode(vhid, 1, 0, 0, counter, KEY, ["10.0.0.1", "10.0.0.2"])[16:] == expected


def test_hmac_addresses_sorted_numerically_ipv4_before_ipv6():
    msg = codec.hmac_message(1, ["2001:db8::1", "10.0.0.10", "10.0.0.9", "2001:db8::"], 0)
    assert msg[3:] == (ipaddress.ip_address("10.0.0.9").packed + ipaddress.ip_address("10.0.0.10").packed
                       + ipaddress.ip_address("2001:db8::").packed + ipaddress.ip_address("2001:db8::1").packed
                       + bytes(8))


def test_hmac_ipv6_cluster():
    addrs = ["2001:db8::100"]
    carp = codec.encode(3, 1, 0, 0, 99, KEY, addrs)
    adv = codec.accept_ipv6(carp, 255, KEY, addrs, 3)
    assert adv.counter == 99
    with pytest.raises(CarpError) as err:
        codec.verify(adv, KEY, ["2001:db8::101"])
    assert err.value.reason == "hmac"


@pytest.mark.parametrize("key", [b"", b"x", b"k" * 19, b"k" * 20])
def test_key_lengths_accepted(key):
    carp = codec.encode(1, 1, 0, 0, 5, key, [VIP])
    codec.verify(codec.decode(carp), key, [VIP])


def test_key_too_long_or_text():
    with pytest.raises(ValueError, match="at most 20"):
        codec.hmac_digest(b"k" * 21, 1, [VIP], 0)
    with pytest.raises(TypeError):
        codec.hmac_digest("secret", 1, [VIP], 0)


@pytest.mark.parametrize("kw", [
    dict(vhid=0), dict(vhid=256), dict(advbase=256), dict(advskew=-1), dict(demote=300),
    dict(counter=1 << 64), dict(counter=-1),
])
def test_encode_rejects_out_of_range(kw):
    with pytest.raises(ValueError):
        good_carp(**kw)


def test_ipv4_packet_header():
    pkt = codec.ipv4_packet("192.0.2.1", good_carp(), ident=7)
    assert len(pkt) == 56
    assert pkt[:12] == bytes.fromhex("45100038 0007 4000 ff70") + pkt[10:12]
    assert codec.checksum(pkt[:20]) == 0
    assert pkt[12:20] == bytes([192, 0, 2, 1, 224, 0, 0, 18])
    unicast = codec.ipv4_packet("192.0.2.1", good_carp(), dst="192.0.2.2", tos=0)
    assert unicast[16:20] == bytes([192, 0, 2, 2]) and unicast[1] == 0
    with pytest.raises(ValueError):
        codec.ipv4_packet("2001:db8::1", good_carp())


def test_macs():
    assert codec.virtual_mac(7) == bytes.fromhex("00005e000107")
    assert codec.ucarp_advert_mac(255) == bytes.fromhex("00005e0000ff")


# ---- drop reasons -------------------------------------------------------------------------------------------

def _corrupt_hmac(carp: bytes) -> bytes:
    b = bytearray(carp)
    b[20] ^= 0x01
    return fix_checksum(bytes(b))


def _carp_byte(offset: int, value: int):
    def f(carp: bytes) -> bytes:
        b = bytearray(carp)
        b[offset] = value
        return fix_checksum(bytes(b))
    return f


def _bad_checksum(carp: bytes) -> bytes:
    b = bytearray(carp)
    b[6] ^= 0xFF
    return bytes(b)


DROPS = [
    # (name, packet builder, reason)
    ("truncated-ip", lambda: good_packet()[:19], "short"),
    ("truncated-carp", lambda: good_packet()[:20 + 35], "short"),
    ("ip-length-short", lambda: set_ip_byte(good_packet(), 3, 20 + 30), "short"),
    ("ttl-254", lambda: set_ip_byte(good_packet(), 8, 254), "ttl"),
    ("ttl-1", lambda: set_ip_byte(good_packet(), 8, 1), "ttl"),
    ("version-1", lambda: good_packet(_carp_byte(0, 0x11)(good_carp())), "version"),
    ("version-3", lambda: good_packet(_carp_byte(0, 0x31)(good_carp())), "version"),
    ("type-2", lambda: good_packet(_carp_byte(0, 0x22)(good_carp())), "type"),
    ("carp-checksum", lambda: good_packet(_bad_checksum(good_carp())), "checksum"),
    ("carp-bit-flip", lambda: good_packet(good_carp()[:10] + b"\xee" + good_carp()[11:]), "checksum"),
    ("ip-checksum", lambda: good_packet()[:10] + b"\0\0" + good_packet()[12:], "checksum"),
    ("hmac", lambda: good_packet(_corrupt_hmac(good_carp())), "hmac"),
    ("hmac-advskew-changed", lambda: good_packet(_carp_byte(2, 0)(good_carp())), "ok"),  # advskew is not hashed
    ("hmac-counter-changed", lambda: good_packet(_carp_byte(15, 0)(good_carp())), "hmac"),
    ("other-vhid", lambda: good_packet(good_carp(vhid=8)), "vhid"),
    ("not-ipv4", lambda: b"\x60" + good_packet()[1:], "family"),
    ("not-carp", lambda: set_ip_byte(good_packet(), 9, 17), "family"),
    ("good", good_packet, "ok"),
]


@pytest.mark.parametrize("build, reason", [d[1:] for d in DROPS], ids=[d[0] for d in DROPS])
def test_drop_reason(build, reason):
    counters = Counters()
    packet = build()
    if reason == "ok":
        src, adv = codec.accept_ipv4(packet, KEY, [VIP], 7, counters)
        assert str(src) == "192.0.2.1" and adv.vhid == 7
    else:
        with pytest.raises(CarpError) as err:
            codec.accept_ipv4(packet, KEY, [VIP], 7, counters)
        assert err.value.reason == reason
        assert isinstance(err.value, ValueError)
    assert counters[reason] == 1
    assert sum(counters.values()) == 1


def test_counters_accumulate_per_reason():
    counters = Counters()
    for _name, build, _reason in DROPS:
        try:
            codec.accept_ipv4(build(), KEY, [VIP], 7, counters)
        except CarpError:
            pass
    expected = {k: 0 for k in Counters.KEYS}
    for _name, _build, reason in DROPS:
        expected[reason] += 1
    assert counters.as_dict() == expected
    assert counters.dropped == sum(v for k, v in expected.items() if k != "ok")
    assert set(counters) == set(codec.REASONS) | {"ok"}


def test_counters_api():
    c = Counters()
    assert c.count("ttl") == 1
    assert c.count(CarpError("ttl"), 2) == 3
    assert c["ttl"] == 3 and len(c) == len(codec.REASONS) + 1
    with pytest.raises(KeyError):
        c.count("bogus")
    with pytest.raises(ValueError):
        CarpError("bogus")


@pytest.mark.parametrize("hoplimit, reason", [(255, None), (254, "ttl"), (64, "ttl"), (1, "ttl")])
def test_ipv6_hop_limit(hoplimit, reason):
    counters = Counters()
    carp = codec.encode(3, 1, 0, 0, 1, KEY, ["2001:db8::100"])
    if reason is None:
        codec.check_hoplimit(hoplimit)
        codec.accept_ipv6(carp, hoplimit, KEY, ["2001:db8::100"], 3, counters)
        assert counters["ok"] == 1
    else:
        with pytest.raises(CarpError) as err:
            codec.accept_ipv6(carp, hoplimit, KEY, ["2001:db8::100"], 3, counters)
        assert err.value.reason == reason and counters[reason] == 1


def test_decode_short_and_vhid_checks_directly():
    with pytest.raises(CarpError) as err:
        codec.decode(good_carp()[:35])
    assert err.value.reason == "short"
    with pytest.raises(CarpError) as err:
        codec.check_vhid(codec.decode(good_carp()), 9)
    assert err.value.reason == "vhid"


# ---- how the fixture was made -------------------------------------------------------------------------------

def recapture(out: Path = PCAP, seconds: float = 7.0) -> None:
    """Capture ucarp advertisements into ``out`` (root, ucarp, tcpdump, iproute2). Namespaces are removed."""
    tag = uuid.uuid4().hex[:6]
    a, b = f"carpA-{tag}", f"carpB-{tag}"

    def run(*args):
        subprocess.run(list(args), check=True, timeout=30)

    made = []
    procs = []
    try:
        for ns in (a, b):
            run("ip", "netns", "add", ns)
            made.append(ns)
        run("ip", "-n", a, "link", "add", "ca", "type", "veth", "peer", "name", "cb", "netns", b)
        run("ip", "-n", a, "addr", "add", "192.0.2.1/24", "dev", "ca")
        run("ip", "-n", b, "addr", "add", "192.0.2.2/24", "dev", "cb")
        run("ip", "-n", a, "link", "set", "ca", "up")
        run("ip", "-n", b, "link", "set", "cb", "up")
        procs.append(subprocess.Popen(["ip", "netns", "exec", b, "tcpdump", "-i", "cb", "-U", "-c", "3", "-w",
                                       str(out), "ip proto 112"]))
        time.sleep(1)      # a manual tool, not a test: tcpdump gets a second to open its socket before ucarp starts
        procs.append(subprocess.Popen(["ip", "netns", "exec", a, "ucarp", "--interface=ca", "--srcip=192.0.2.1",
                                       "--vhid=7", "--pass=secret", "--addr=192.0.2.100", "--advbase=1",
                                       "--advskew=50", "--upscript=/bin/true", "--downscript=/bin/true"]))
        procs[0].wait(timeout=seconds + 10)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=10)
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    if sys.argv[1:] == ["--recapture"]:
        recapture()
        print(f"wrote {PCAP}")
    else:
        sys.exit("usage: test_carp_codec.py --recapture   (as root; rewrites the ucarp fixture)")


# ---- IPv6 on the wire ---------------------------------------------------------------------------------------

def test_ipv6_advert_round_trip():
    """An IPv6 advertisement as the driver sends it: 40-byte header (next header 112, hop limit 255, to ff02::12),
    then the CARP header whose HMAC covers the 16-byte cluster address (0x02 0x01 vhid addr counter)."""
    vip, counter = "2001:db8::50", 0x0102030405060708
    carp = codec.encode(9, 1, 100, 2, counter, KEY, [vip])
    packet = codec.ipv6_packet("fe80::1%eth0", carp)
    assert len(packet) == 40 + 36
    assert packet[0] >> 4 == 6 and struct.unpack("!H", packet[4:6])[0] == 36
    assert packet[6] == 112 and packet[7] == 255
    assert packet[8:24] == ipaddress.IPv6Address("fe80::1").packed
    assert packet[24:40] == ipaddress.IPv6Address("ff02::12").packed
    msg = bytes((2, 1, 9)) + ipaddress.IPv6Address(vip).packed + struct.pack("!Q", counter)
    assert codec.hmac_message(9, [vip], counter) == msg
    assert carp[16:] == __import__("hmac").new(KEY, msg, hashlib.sha1).digest()
    src, body = codec.parse_ipv6(packet)
    assert src == ipaddress.IPv6Address("fe80::1") and body == carp
    adv = codec.accept_ipv6(body, 255, KEY, [vip], 9)
    assert (adv.vhid, adv.advbase, adv.advskew, adv.demote, adv.counter) == (9, 1, 100, 2, counter)
    assert codec.multicast_mac6(codec.GROUP6) == codec.GROUP6_MAC == bytes.fromhex("333300000012")


@pytest.mark.parametrize("mutate, reason", [
    (lambda p: p[:7] + b"\xfe" + p[8:], "ttl"),
    (lambda p: p[:6] + b"\x11" + p[7:], "family"),
    (lambda p: b"\x45" + p[1:], "family"),
    (lambda p: p[:50], "short"),
])
def test_parse_ipv6_refusals(mutate, reason):
    packet = codec.ipv6_packet("2001:db8::1", codec.encode(9, 1, 0, 0, 1, KEY, ["2001:db8::50"]))
    with pytest.raises(CarpError) as err:
        codec.parse_ipv6(mutate(packet))
    assert err.value.reason == reason


def test_unsolicited_neighbour_advert():
    mac = bytes.fromhex("020000000001")
    packet = codec.neighbour_advert("2001:db8::50", mac)
    assert packet[6] == 58 and packet[7] == 255
    assert packet[8:24] == packet[48:64] == ipaddress.IPv6Address("2001:db8::50").packed
    assert packet[24:40] == ipaddress.IPv6Address("ff02::1").packed
    icmp = packet[40:]
    assert len(icmp) == struct.unpack("!H", packet[4:6])[0] == 32
    assert icmp[0] == 136 and icmp[1] == 0
    assert struct.unpack("!I", icmp[4:8])[0] == 0x20000000          # override; not solicited, not router
    assert icmp[24:26] == b"\x02\x01" and icmp[26:32] == mac          # target link-layer address option
    # the checksum verifies over the pseudo-header (a correct one sums to 0 with the field included)
    pseudo = packet[8:40] + struct.pack("!I3xB", 32, 58)
    assert codec.checksum(pseudo + icmp) == 0
    # a known answer, computed independently (RFC 1071 sum by hand over the same fields)
    words = pseudo + icmp[:2] + b"\0\0" + icmp[4:]
    total = sum(struct.unpack(f"!{len(words) // 2}H", words))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert struct.unpack("!H", icmp[2:4])[0] == ~total & 0xFFFF
    with pytest.raises(ValueError):
        codec.neighbour_advert("192.0.2.1", mac)
