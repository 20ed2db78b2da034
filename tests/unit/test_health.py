"""Health checks: the per-edge state machine with a fake clock, the HTTP body reader on canned bytes, the checker
with a fake probe. Every probe against real servers in network namespaces: tests/netns/test_health_probes.py.
"""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from control import health
from control.health import Damping, EdgeHealth, HealthChecker, ProbeResult, State
from pydp.config import HealthConfig
from netlab import eventually



# ---- EdgeHealth: rise/fall, first decision, counters (fake clock) -----------------------------------------

def feed(h: EdgeHealth, results: str, t0: float = 0.0, step: float = 1.0):
    """Feeds "+" (success) and "-" (failure) one step apart; returns the transitions (with their index)."""
    out = []
    for i, c in enumerate(results):
        tr = h.observe(c == "+", t0 + i * step, "probe detail")
        if tr is not None:
            out.append((i, tr))
    return out


def test_first_decision_needs_rise_successes():
    h = EdgeHealth(rise=2, fall=3)
    assert h.state is State.UNKNOWN
    assert h.observe(True, 0.0) is None and h.state is State.UNKNOWN
    tr = h.observe(True, 1.0, "HTTP 200")
    assert tr is not None and tr.old is State.UNKNOWN and tr.new is State.UP and tr.up
    assert "2 successful checks in a row" in tr.reason and "HTTP 200" in tr.reason and tr.at == 1.0
    assert h.transitions == 0           # the first decision is not a state change between up and down


def test_first_decision_needs_fall_failures():
    h = EdgeHealth(rise=2, fall=3)
    assert feed(h, "+-+--") == []       # runs are reset by the other outcome
    (i, tr), = feed(h, "-", t0=5.0)
    assert (tr.old, tr.new) == (State.UNKNOWN, State.DOWN) and not tr.up
    assert h.checks == 6 and h.failures == 4 and h.transitions == 0


def test_rise_and_fall_in_a_row():
    h = EdgeHealth(rise=2, fall=3, damping=None)
    trs = feed(h, "++" "--+---" "+-++")
    assert [(i, t.new) for i, t in trs] == [(1, State.UP), (7, State.DOWN), (11, State.UP)]
    assert h.transitions == 2 and h.checks == 12 and h.failures == 6
    snap = h.snapshot(20.0)
    assert snap["state"] == "up" and snap["transitions"] == 2 and snap["since_change_s"] == 9.0


def test_rise_fall_of_one_follow_every_check():
    h = EdgeHealth(rise=1, fall=1, damping=None)
    assert [t.new for _, t in feed(h, "+-+")] == [State.UP, State.DOWN, State.UP]


def test_reconfigure_keeps_state_restarts_runs():
    h = EdgeHealth(rise=2, fall=3)
    feed(h, "++--")
    h.reconfigure(rise=1, fall=2)
    assert h.state is State.UP and h.fail_run == 0
    assert h.observe(False, 10) is None
    assert h.observe(False, 11).new is State.DOWN


# ---- flap damping (fake clock) --------------------------------------------------------------------------------

def test_default_damping_numbers():
    d = Damping()
    assert (d.half_life, d.penalty, d.suppress, d.reuse, d.max_suppress) == (30.0, 1000.0, 2500.0, 750.0, 120.0)
    assert d.ceiling == 750.0 * 16
    with pytest.raises(ValueError):
        Damping(reuse=3000.0)
    with pytest.raises(ValueError):
        Damping(suppress=20000.0)       # above the ceiling: unreachable


def test_one_outage_is_not_damped():
    h = EdgeHealth(rise=1, fall=1)
    trs = feed(h, "+-+")                # unknown -> up (no penalty), down, up: 2 flaps
    assert [t.new for _, t in trs] == [State.UP, State.DOWN, State.UP]
    assert not h.damped and h.suppressed == 0
    assert 1900 < h.penalty(2.0) < 2000


def test_penalty_decays_with_half_life():
    h = EdgeHealth(rise=1, fall=1)
    feed(h, "+-")                       # one flap at t=1
    assert h.penalty(1.0) == pytest.approx(1000.0)
    assert h.penalty(31.0) == pytest.approx(500.0)
    assert h.penalty(91.0) == pytest.approx(125.0)


def test_flapping_edge_is_held_down_until_reuse():
    h = EdgeHealth(rise=1, fall=1)
    trs = feed(h, "+-+-")               # third flap at t=3: penalty ~2900 >= 2500
    assert [t.new for _, t in trs] == [State.UP, State.DOWN, State.UP, State.DOWN]
    assert h.damped and h.suppressed == 1 and "flapping: held down" in trs[-1][1].reason
    p = h.penalty(3.0)
    assert 2800 < p < 3000
    release = h.reuse_at(3.0)
    assert release == pytest.approx(3.0 + 30.0 * math.log2(p / 750.0))
    assert 58.5 < release - 3.0 < 59.5  # about two half-lives

    # the checks succeed again: the edge stays DOWN while damped (checked state up, reported down); that change
    # is a flap too, and moves the release later
    assert h.observe(True, 4.0) is None
    assert (h.raw, h.state) == (State.UP, State.DOWN)
    assert h.penalty(4.0) == pytest.approx(p * 0.5 ** (1 / 30) + 1000.0)
    release = h.reuse_at(4.0)
    assert 70.5 < release - 4.0 < 71.5
    assert h.snapshot(4.0)["checked"] == "up" and h.snapshot(4.0)["damped"] is True
    assert h.poll(release - 0.5) is None and h.state is State.DOWN
    assert h.observe(True, release - 0.1) is None
    tr = h.poll(release)
    assert tr is not None and tr.new is State.UP and "flap damping released" in tr.reason
    assert not h.damped and h.suppressed == 1
    assert h.transitions == 4           # down, up, down, up (released): the held period is one DOWN
    assert h.observe(True, release + 1.0) is None and h.state is State.UP


def test_suppression_on_an_up_change_holds_it():
    h = EdgeHealth(rise=1, fall=1, damping=Damping(suppress=2950.0))
    feed(h, "+-+-")                     # penalty about 2930 at t=3: not yet damped
    assert not h.damped
    tr = h.observe(True, 3.1)           # the fourth flap is to UP: it is held, nothing is reported
    assert tr is None and h.damped and h.state is State.DOWN and h.suppressed == 1


def test_release_while_checks_fail_reports_nothing():
    h = EdgeHealth(rise=1, fall=1)
    feed(h, "+-+-")
    release = h.reuse_at(3.0)
    assert h.observe(False, release + 1.0) is None
    assert not h.damped and h.state is State.DOWN


def test_flaps_far_apart_are_never_damped():
    h = EdgeHealth(rise=1, fall=1)
    for i, c in enumerate("+-+-+-+-+-"):
        h.observe(c == "+", i * 60.0)   # two half-lives between flaps
    assert h.suppressed == 0 and h.transitions == 9


def test_penalty_ceiling_bounds_the_hold():
    h = EdgeHealth(rise=1, fall=1)
    feed(h, "+-" * 50, step=0.1)        # 99 flaps in 10 s
    d = h.damping
    assert h.penalty(9.9) == pytest.approx(d.ceiling)
    assert h.reuse_at(9.9) - 9.9 == pytest.approx(d.max_suppress)
    assert h.suppressed == 1            # one suppression period, however many flaps in it


def test_no_damping():
    h = EdgeHealth(rise=1, fall=1, damping=None)
    feed(h, "+-" * 20)
    assert not h.damped and h.state is State.DOWN and h.penalty(100.0) == 0.0 and h.reuse_at(100.0) is None


# ---- HTTP body reader on canned bytes ----------------------------------------------------------------------

def _read(raw: bytes, headers: dict) -> bytes:
    async def go():
        r = asyncio.StreamReader()
        r.feed_data(raw)
        r.feed_eof()
        return await health._read_body(r, headers)
    return asyncio.run(go())


def test_body_reader_chunked_length_and_eof():
    assert _read(b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", {"transfer-encoding": "chunked"}) == b"hello world"
    assert _read(b"hello world and more", {"content-length": "11"}) == b"hello world"
    assert _read(b"until the end", {}) == b"until the end"
    big = b"x" * (health.MAX_BODY + 10)
    assert len(_read(big, {})) == health.MAX_BODY
    assert len(_read(b"%x\r\n" % len(big) + big + b"\r\n0\r\n\r\n", {"transfer-encoding": "chunked"})) == health.MAX_BODY


def test_sni_and_default_host():
    assert health._sni("edge1.example") == "edge1.example"
    assert health._sni("edge1.example:8443") == "edge1.example"
    assert health._sni("198.51.100.21") == "" and health._sni("[2001:db8::1]:443") == "" and health._sni("") == ""
    assert health._default_host("198.51.100.21", 80, False) == "198.51.100.21"
    assert health._default_host("198.51.100.21", 8080, False) == "198.51.100.21:8080"
    assert health._default_host("2001:db8::1", 443, True) == "[2001:db8::1]"


# ---- HealthChecker with a fake probe -------------------------------------------------------------------------

def test_checker_targets_live_with_fake_probe():
    """Add, update and remove edges live; type none is up at once; states; close. Intervals of 50 ms."""
    fast = dict(interval=0.05, timeout=0.02, rise=2, fall=2)
    answers = {"10.0.0.1": True, "10.0.0.2": False}
    probed: list[str] = []

    async def probe(ip, cfg, source):
        probed.append(ip)
        assert source == "10.0.0.254"
        return ProbeResult(answers.get(ip, True), f"fake {ip}", 0.001)

    async def main():
        loop = asyncio.get_running_loop()
        changes = []
        chk = HealthChecker(lambda c, e, up, why: changes.append((c, e, up)), source=["10.0.0.254", "2001:db8::fe"],
                            probe=probe)
        chk.set_targets({("web", "e1"): ("10.0.0.1", HealthConfig(type="tcp", **fast)),
                         ("web", "e2"): ("10.0.0.2", HealthConfig(type="tcp", **fast)),
                         ("web", "e3"): ("10.0.0.3", HealthConfig(type="none"))})
        assert changes == [("web", "e3", True)]     # at once, never probed
        t0 = loop.time()
        await asyncio.to_thread(eventually, lambda: set(changes) == {("web", "e1", True), ("web", "e2", False),
                                                                     ("web", "e3", True)}
                                and chk.states()[("web", "e1")]["checks"] >= 4, 5, lambda: f"changes {changes}")
        st = chk.states()
        assert st[("web", "e1")]["state"] == "up" and st[("web", "e2")]["state"] == "down"
        assert st[("web", "e3")]["checks"] == 0 and "10.0.0.3" not in probed
        e1_checks = st[("web", "e1")]["checks"]
        assert e1_checks <= (loop.time() - t0) / fast["interval"] + 2      # one check an interval, no more

        # an unchanged target is not touched; a changed one keeps its state; a removed one stops
        answers["10.0.0.2"] = True
        chk.set_targets({("web", "e1"): ("10.0.0.1", HealthConfig(type="tcp", **fast)),
                         ("web", "e2"): ("10.0.0.2", HealthConfig(type="http", **fast))})
        assert chk.states()[("web", "e1")]["checks"] == e1_checks
        assert chk.state("web", "e2") is State.DOWN and chk.state("web", "e3") is None
        await asyncio.to_thread(eventually, lambda: ("web", "e2", True) in changes, 5, "e2 up after its change")
        assert chk.state("web", "e2") is State.UP
        assert chk.states()[("web", "e2")]["transitions"] == 1
        await chk.close()
        n = len(probed)
        await asyncio.sleep(0.15)       # bounded on purpose: three intervals in which a live check would probe
        assert len(probed) == n and chk.states() == {}

    asyncio.run(main())


def test_checker_spreads_first_checks():
    """Random initial offsets within the interval: 20 edges do not all start at the same instant."""
    starts: dict[str, float] = {}

    async def probe(ip, cfg, source):
        starts.setdefault(ip, asyncio.get_running_loop().time())
        return ProbeResult(True, "fake", 0.0)

    async def main():
        chk = HealthChecker(probe=probe)
        t0 = asyncio.get_running_loop().time()
        chk.set_targets({("c", f"e{i}"): (f"10.0.1.{i}", HealthConfig(interval=0.5, timeout=0.1))
                         for i in range(1, 21)})
        await asyncio.to_thread(eventually, lambda: len(starts) == 20, 5, lambda: f"{len(starts)} of 20 probed")
        await chk.close()
        offs = sorted(t - t0 for t in starts.values())
        assert len(offs) == 20 and offs[-1] - offs[0] > 0.2 and offs[-1] <= 0.55

    asyncio.run(main())


def test_local_failures_are_not_counted_against_the_edge():
    """Regression (chaos run, issue 17): an appliance whose own data plane restarted (its TAP gone: ENETUNREACH)
    counted that as every edge failing, down then up; the flap penalty then held a healthy edge down for a minute
    after its next short outage. A probe that never left the appliance is not counted."""
    import errno as E

    from control.health import LOCAL_ERRNOS, tcp_connect

    # a source address this host does not have: the probe fails here, locally, before any packet
    r = asyncio.run(tcp_connect("127.0.0.1", 9, source="192.0.2.77", timeout=1.0))
    assert not r.ok and r.local and "EADDRNOTAVAIL" in r.detail
    assert E.ENETUNREACH in LOCAL_ERRNOS and E.EHOSTUNREACH not in LOCAL_ERRNOS

    fast = dict(interval=0.03, timeout=0.02, rise=2, fall=2)
    mode = {"now": "up"}

    async def probe(ip, cfg, source):
        if mode["now"] == "local":
            return ProbeResult(False, "tcp 10.0.0.1:80: network is unreachable (ENETUNREACH)", 0.001, local=True)
        return ProbeResult(mode["now"] == "up", f"fake {mode['now']}", 0.001)

    async def main():
        changes = []
        chk = HealthChecker(lambda c, e, up, why: changes.append(up), probe=probe)
        chk.set_targets({("web", "e1"): ("10.0.0.1", HealthConfig(type="tcp", **fast))})
        await asyncio.to_thread(eventually, lambda: changes == [True], 5, "e1 up")
        mode["now"] = "local"
        await asyncio.to_thread(eventually, lambda: chk.states()[("web", "e1")]["local_failures"] >= 5, 5,
                                "local failures seen")
        st = chk.states()[("web", "e1")]
        assert changes == [True] and st["state"] == "up" and st["failures"] == 0 and st["penalty"] == 0
        assert st["last_detail"].startswith("not counted")
        mode["now"] = "down"                   # a real failure still takes it down
        await asyncio.to_thread(eventually, lambda: changes == [True, False], 5, "e1 down")
        await chk.close()

    asyncio.run(main())


def test_failures_while_the_appliance_itself_is_down_are_not_counted():
    """Regression (chaos run, issue 17): the appliance's own data port losing its link made every probe time out,
    which counted as every edge flapping. The daemon tells the checker when its side is down (local_down); failed
    probes then are not counted, successes still are."""
    fast = dict(interval=0.03, timeout=0.02, rise=2, fall=2)
    side = {"down": None, "ok": True}

    async def probe(ip, cfg, source):
        return ProbeResult(side["ok"], "fake", 0.001)

    async def main():
        changes = []
        chk = HealthChecker(lambda c, e, up, why: changes.append(up), probe=probe, local_down=lambda: side["down"])
        chk.set_targets({("web", "e1"): ("10.0.0.1", HealthConfig(type="tcp", **fast))})
        await asyncio.to_thread(eventually, lambda: changes == [True], 5, "e1 up")
        side.update(down="data port 0 link down", ok=False)
        await asyncio.to_thread(eventually, lambda: chk.states()[("web", "e1")]["local_failures"] >= 5, 5,
                                "local failures seen")
        st = chk.states()[("web", "e1")]
        assert changes == [True] and st["failures"] == 0 and "(data port 0 link down)" in st["last_detail"]
        side["down"] = None                    # the link is back and the edge really fails: counted
        await asyncio.to_thread(eventually, lambda: changes == [True, False], 5, "e1 down")
        await chk.close()

    asyncio.run(main())
