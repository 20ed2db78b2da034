#!/usr/bin/env -S python3 -P
"""Atheris (libFuzzer for CPython) harness of the CARP codec: whatever arrives on the wire, the receive path
(accept_ipv4 / accept_ipv6: parse, decode, vhid, HMAC) either accepts an advertisement or raises CarpError with
a reason it counts. Any other exception, or a count that disagrees with the outcome, is a bug.

    scripts/fuzz.sh carp                      (a bounded run on a copy of tests/fuzz/corpus/carp)
    python -P tests/fuzz/fuzz_carp.py -runs=1 tests/fuzz/corpus/carp/*   (replay inputs, e.g. a crash)

The first byte of an input picks the path (even: a whole IPv4 packet, odd: the CARP bytes of an IPv6 packet
with that byte as the hop limit); the rest is the packet.
"""

import sys

import atheris

with atheris.instrument_imports():
    from control.carp import codec

KEY = b"fuzz passphrase"
VIP4 = "198.51.100.10"
VIP6 = "2001:db8::10"
VHID = 10


def _counted(counters: codec.Counters) -> dict[str, int]:
    return {k: n for k, n in counters.as_dict().items() if n}


def one(data: bytes) -> None:
    if not data:
        return
    sel, packet = data[0], data[1:]
    counters = codec.Counters()
    try:
        if sel % 2 == 0:
            src, adv = codec.accept_ipv4(packet, KEY, [VIP4], VHID, counters)
            if src.version != 4:
                raise AssertionError(f"accepted an IPv4 advert from {src}")
        else:
            adv = codec.accept_ipv6(packet, sel, KEY, [VIP6], VHID, counters)
    except codec.CarpError as exc:
        if exc.reason not in codec.REASONS or _counted(counters) != {exc.reason: 1}:
            raise AssertionError(f"drop {exc.reason!r} counted as {counters.as_dict()}") from None
        return
    if _counted(counters) != {"ok": 1} or adv.vhid != VHID:
        raise AssertionError(f"accepted {adv} counted as {counters.as_dict()}")
    # what was accepted encodes back to the same header
    again = codec.encode(adv.vhid, adv.advbase, adv.advskew, adv.demote, adv.counter, KEY,
                         [VIP4 if sel % 2 == 0 else VIP6])
    if codec.decode(again) != adv:
        raise AssertionError(f"{adv} does not survive encode/decode")


def main() -> None:
    atheris.Setup(sys.argv, lambda data: one(bytes(data)))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
