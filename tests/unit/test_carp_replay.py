"""CARP: an advertisement sent again (a captured advert replayed) is refused and counted as "replay"; forged ones
(wrong key, vhid, checksum, TTL, ...) are covered live in tests/netns/test_carp_interop.py. The receive path is
the driver's own (Instance.receive / receive6), fed with bytes as the raw socket gives them."""

import ipaddress

from control.carp import codec
from control.carp.driver import Config, Instance

KEY = b"replay test secret"
VIP4, PEER4 = "198.51.100.10", "198.51.100.3"
VIP6, PEER6 = "2001:db8::10", "2001:db8::3"


def _instance(vip: str, src: str) -> Instance:
    return Instance(Config(interface="lo", srcip=src, vhid=10, addr=vip, key=KEY))


def test_replayed_ipv4_advert_is_refused_and_counted():
    inst = _instance(VIP4, "198.51.100.2")
    adverts = [codec.ipv4_packet(PEER4, codec.encode(10, 1, 50, 0, c, KEY, [VIP4])) for c in (7, 123456789, 8)]
    assert [inst.receive(a, 1.0) for a in adverts] == [True, True, True]
    assert inst.receive(adverts[1], 2.0) is False                   # the same bytes again
    assert inst.receive(adverts[0], 2.0) is False
    assert inst.counters["replay"] == 2 and inst.counters["ok"] == 3
    # another sender may carry the same counter (ucarp adopts counters it heard): not a replay
    other = codec.ipv4_packet("198.51.100.4", codec.encode(10, 1, 50, 0, 7, KEY, [VIP4]))
    assert inst.receive(other, 3.0) is True
    assert inst.status()["drops"]["replay"] == 2


def test_replayed_ipv6_advert_is_refused_and_counted():
    inst = _instance(VIP6, "2001:db8::2")
    carp = codec.encode(10, 1, 50, 0, 99, KEY, [VIP6])
    assert inst.receive6(carp, PEER6 + "%lo", 255, 1.0) is True
    assert inst.receive6(carp, PEER6, 255, 1.5) is False
    assert inst.counters["replay"] == 1 and inst.counters["ok"] == 1


def test_replay_memory_is_bounded():
    guard = codec.ReplayGuard(memory=4, sources=2)
    adv = lambda c: codec.Advert(vhid=10, advbase=1, advskew=0, demote=0, counter=c, hmac=b"\0" * 20)  # noqa: E731
    for c in range(6):
        guard.check(ipaddress.ip_address(PEER4), adv(c))
    guard.check(ipaddress.ip_address(PEER4), adv(0))                # forgotten: older than the memory
    for c in (3, 4, 5):
        try:
            guard.check(ipaddress.ip_address(PEER4), adv(c))
        except codec.CarpError as exc:
            assert exc.reason == "replay"
        else:
            raise AssertionError(f"counter {c} accepted twice")
    for s in ("198.51.100.5", "198.51.100.6"):                     # a third source pushes the oldest out
        guard.check(ipaddress.ip_address(s), adv(1))
    guard.check(ipaddress.ip_address(PEER4), adv(5))
