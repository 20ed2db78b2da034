"""The CARP state machine: every transition and rule, exact timer due times, and whole failover scenarios
between two machines on a simulated link. No sockets and no sleeping: time is the ``now`` each event carries."""

from __future__ import annotations

import heapq
import ipaddress

import pytest

from control.carp import codec
from control.carp.codec import Advert
from control.carp.fsm import (AdvertReceived, CancelTimer, DemoteChanged, Machine, ReleaseAddress, Resume,
                              SendAdvert, SendGratuitous, SetTimer, Settings, Shutdown, SplitBrain, Start, State,
                              StateChanged, TakeAddress, TimerExpired, ucarp_order_key)

OWN = "192.0.2.1"
PEER = "192.0.2.2"
LOWER_PEER = "192.0.2.0"
C0 = 1000        # the first counter our test machines send


def settings(**kw) -> Settings:
    kw.setdefault("vhid", 7)
    kw.setdefault("src", OWN)
    return Settings(**kw)


def machine(counter: int = C0, **kw) -> Machine:
    return Machine(settings(**kw), counter=counter)


def adv(advbase=1, advskew=0, demote=0, counter=555, vhid=7) -> Advert:
    return Advert(vhid=vhid, advbase=advbase, advskew=advskew, demote=demote, counter=counter, hmac=bytes(20))


def heard(m: Machine, now: float, src=PEER, **kw) -> list:
    return m.handle(AdvertReceived(now, src, adv(**kw)))


def backup(m: Machine, now: float = 0.0) -> Machine:
    m.handle(Start(now))
    assert m.state is State.BACKUP
    return m


def master(m: Machine, now: float = 0.0) -> Machine:
    backup(m, now)
    m.handle(TimerExpired(now + m.settings.master_down, "master_down"))
    assert m.state is State.MASTER
    return m


def kinds(actions) -> list[type]:
    return [type(a) for a in actions]


def state_change(actions) -> StateChanged:
    (sc,) = [a for a in actions if isinstance(a, StateChanged)]
    return sc


# ---- settings and timer arithmetic --------------------------------------------------------------------------

@pytest.mark.parametrize("advbase, advskew, deadratio, interval, master_down", [
    (1, 0, 3, 1.0, 3.0),
    (1, 50, 3, 1 + 50 / 256, 3 + 50 / 256),
    (2, 128, 3, 2.5, 6.5),
    (1, 100, 5, 1 + 100 / 256, 5 + 100 / 256),
    (10, 254, 3, 10 + 254 / 256, 30 + 254 / 256),
])
@pytest.mark.parametrize("mode", ["ucarp", "openbsd"])
def test_intervals(mode, advbase, advskew, deadratio, interval, master_down):
    s = settings(advbase=advbase, advskew=advskew, deadratio=deadratio, mode=mode)
    assert s.interval == interval
    assert s.master_down == master_down
    assert s.ticks == advbase * 256 + advskew


@pytest.mark.parametrize("kw", [
    dict(vhid=0), dict(vhid=256), dict(advbase=0), dict(advbase=256), dict(advskew=255), dict(advskew=-1),
    dict(deadratio=0), dict(mode="vrrp"), dict(vhid=True),
])
def test_settings_rejected(kw):
    with pytest.raises(ValueError):
        settings(**kw)


def test_settings_normalise_src():
    assert settings(src="192.0.2.9").src == ipaddress.IPv4Address("192.0.2.9")
    assert Settings(vhid=1).src is None


# ---- INIT ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["ucarp", "openbsd"])
@pytest.mark.parametrize("advbase, advskew", [(1, 0), (1, 50), (3, 200)])
def test_start_goes_backup_and_arms_master_down(mode, advbase, advskew):
    m = machine(mode=mode, advbase=advbase, advskew=advskew)
    out = m.handle(Start(100.0))
    md = 100.0 + advbase * 3 + advskew / 256
    assert out == [StateChanged(State.INIT, State.BACKUP, "start"), ReleaseAddress(), SetTimer("master_down", md)]
    assert m.state is State.BACKUP and m.timers == {"master_down": md}


def test_start_neutral_does_not_release_and_still_takes_over():
    m = machine()
    out = m.handle(Start(0.0, neutral=True))
    assert kinds(out) == [StateChanged, SetTimer]
    assert ReleaseAddress() not in out
    out = m.handle(TimerExpired(3.0, "master_down"))
    assert m.state is State.MASTER and TakeAddress() in out


def test_start_twice_is_ignored():
    m = backup(machine())
    assert m.handle(Start(1.0)) == []
    assert m.timers == {"master_down": 3.0}


@pytest.mark.parametrize("event", [
    AdvertReceived(0.0, PEER, adv()), TimerExpired(0.0, "master_down"), TimerExpired(0.0, "advert"),
    TimerExpired(0.0, "garp2"), Shutdown(0.0),
])
def test_init_ignores_everything_but_start(event):
    m = machine()
    assert m.handle(event) == []
    assert m.state is State.INIT


def test_resume_goes_master_at_once_keeping_the_address():
    """A restarted control plane that still owns the cluster: MASTER at once, an advertisement and a gratuitous
    ARP now, never a ReleaseAddress (TakeAddress re-asserts what is held: the hooks make it a no-op)."""
    m = machine(advskew=50)
    m.handle(DemoteChanged(0.0, 1))           # the demotion known at start goes in first and is advertised
    out = m.handle(Resume(5.0))
    iv = 1 + 50 / 256
    assert out == [
        StateChanged(State.INIT, State.MASTER, "resumed: the cluster was still owned when the control plane "
                                               "restarted"),
        TakeAddress(),
        SendAdvert(1, 50, 1, C0),
        SendGratuitous(),
        SetTimer("advert", 5.0 + iv),
        SetTimer("garp2", 5.0 + 2 * iv),
    ]
    assert m.state is State.MASTER and m.handle(Resume(6.0)) == [] and m.handle(Start(6.0)) == []


def test_resume_is_ignored_once_running():
    m = backup(machine())
    assert m.handle(Resume(1.0)) == [] and m.state is State.BACKUP


# ---- BACKUP -> MASTER ---------------------------------------------------------------------------------------

def test_master_down_timeout_takes_over_with_every_action():
    m = backup(machine(advskew=50), 10.0)
    t = 10.0 + 3 + 50 / 256
    out = m.handle(TimerExpired(t, "master_down"))
    iv = 1 + 50 / 256
    assert out == [
        StateChanged(State.BACKUP, State.MASTER, "master-down timer expired"),
        TakeAddress(),
        SendAdvert(1, 50, 0, C0),
        SendGratuitous(),
        SetTimer("advert", t + iv),
        SetTimer("garp2", t + 2 * iv),
    ]
    assert m.timers == {"advert": t + iv, "garp2": t + 2 * iv}


@pytest.mark.parametrize("mode", ["ucarp", "openbsd"])
@pytest.mark.parametrize("preempt", [False, True])
@pytest.mark.parametrize("our_demote", [0, 5])
def test_backup_takes_over_at_once_on_bowout(mode, preempt, our_demote):
    m = backup(machine(mode=mode, preempt=preempt), 0.0)
    m.handle(DemoteChanged(0.0, our_demote))
    out = heard(m, 1.0, advbase=255, advskew=255)
    assert m.state is State.MASTER
    assert state_change(out).reason == f"master {PEER} bowed out"
    assert CancelTimer("master_down") in out and SendAdvert(1, 0, our_demote, C0) in out


@pytest.mark.parametrize("mode", ["ucarp", "openbsd"])
@pytest.mark.parametrize("peer_advbase, peer_advskew, takes_over", [
    (3, 0, False),      # exactly our master-down interval (3 s): not longer
    (3, 1, True),       # longer than our master-down interval: it would time out anyway
    (4, 0, True),
    (200, 0, True),
])
def test_backup_takes_over_a_master_slower_than_master_down(mode, peer_advbase, peer_advskew, takes_over):
    m = backup(machine(mode=mode, preempt=False), 0.0)      # this rule needs no preemption
    out = heard(m, 1.0, advbase=peer_advbase, advskew=peer_advskew)
    assert (m.state is State.MASTER) == takes_over
    if not takes_over:
        assert out == [SetTimer("master_down", 4.0)]


@pytest.mark.parametrize("preempt, peer_advskew, takes_over", [
    (True, 1, True),      # slower peer, preempt on: take over
    (True, 0, False),     # equal: never preempt
    (False, 1, False),    # slower peer, preempt off: wait
    (False, 200, False),
    (True, 200, True),
])
def test_backup_preemption(preempt, peer_advskew, takes_over):
    m = backup(machine(preempt=preempt), 0.0)
    out = heard(m, 2.0, advskew=peer_advskew)
    assert (m.state is State.MASTER) == takes_over
    if takes_over:
        assert state_change(out).reason.startswith("preempting slower master")
    else:
        assert out == [SetTimer("master_down", 5.0)]


@pytest.mark.parametrize("preempt", [False, True])
def test_backup_takes_over_a_more_demoted_master_regardless_of_preempt(preempt):
    m = backup(machine(preempt=preempt, advskew=100), 0.0)
    out = heard(m, 1.0, advskew=0, demote=1)          # the master is faster but demoted
    assert m.state is State.MASTER
    assert "more demoted" in state_change(out).reason


@pytest.mark.parametrize("our_demote, peer_demote, takes_over", [
    (1, 0, False),    # we are demoted: no preemption of a healthy master
    (2, 1, False),
    (1, 1, True),     # equal demotion: the intervals decide, preempt applies
    (0, 0, True),
])
def test_demoted_backup_does_not_preempt(our_demote, peer_demote, takes_over):
    m = backup(machine(preempt=True), 0.0)
    m.handle(DemoteChanged(0.5, our_demote))
    out = heard(m, 1.0, advskew=100, demote=peer_demote)      # slower master
    assert (m.state is State.MASTER) == takes_over
    if not takes_over:
        assert out == [SetTimer("master_down", 4.0)]


@pytest.mark.parametrize("mode", ["ucarp", "openbsd"])
@pytest.mark.parametrize("peer", [dict(advskew=0), dict(advskew=0, demote=0), dict(advbase=1, advskew=0),
                                  dict(advskew=0, src=LOWER_PEER), dict(advbase=0, advskew=10)])
def test_backup_rearms_master_down_on_better_or_equal_master(mode, peer):
    m = backup(machine(mode=mode, preempt=True), 0.0)
    peer = dict(peer)
    src = peer.pop("src", PEER)
    for t in (1.0, 2.0, 2.5):
        assert heard(m, t, src=src, **peer) == [SetTimer("master_down", t + 3.0)]
    assert m.state is State.BACKUP and m.timers == {"master_down": 5.5}
    # the timer armed at the start is stale now that it was replaced: the driver fires only the last one
    assert m.handle(TimerExpired(5.5, "master_down"))[0] == StateChanged(State.BACKUP, State.MASTER,
                                                                        "master-down timer expired")


# ---- MASTER -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("advskew", [0, 50, 254])
def test_master_advertises_every_interval(advskew):
    m = master(machine(advskew=advskew), 0.0)
    iv = 1 + advskew / 256
    t = m.timers["advert"]
    for i in range(1, 6):
        out = m.handle(TimerExpired(t, "advert"))
        assert out == [SendAdvert(1, advskew, 0, C0 + i), SetTimer("advert", t + iv)]
        t += iv
    assert m.stats["adverts_sent"] == 6


def test_master_second_gratuitous_once():
    m = master(machine(), 0.0)
    due = m.timers["garp2"]
    assert due == 3.0 + 2.0
    assert m.handle(TimerExpired(due, "garp2")) == [SendGratuitous()]
    assert "garp2" not in m.timers
    assert m.handle(TimerExpired(due + 1, "garp2")) == []        # not armed any more


YIELD_TABLE = [
    # (mode, ours (advbase, advskew, demote), peer (advbase, advskew, demote), peer src, yields)
    ("openbsd", (1, 50, 1), (1, 100, 0), PEER, True),     # peer less demoted: yield whatever the interval
    ("ucarp", (1, 50, 1), (2, 0, 0), PEER, True),
    ("openbsd", (1, 50, 0), (1, 0, 1), PEER, False),      # peer more demoted: keep, even if it is faster
    ("ucarp", (1, 50, 0), (1, 0, 1), PEER, False),
    ("openbsd", (1, 50, 0), (1, 10, 0), PEER, True),      # equal demote, shorter interval: yield
    ("ucarp", (2, 0, 0), (1, 255, 0), PEER, True),
    ("openbsd", (1, 50, 0), (1, 51, 0), PEER, False),     # equal demote, longer interval: keep
    ("ucarp", (1, 0, 0), (2, 0, 0), LOWER_PEER, False),
    ("openbsd", (1, 50, 0), (1, 50, 0), PEER, True),      # equal interval, OpenBSD: always yield
    ("openbsd", (1, 50, 0), (1, 50, 0), LOWER_PEER, True),
    ("ucarp", (1, 50, 0), (1, 50, 0), LOWER_PEER, True),  # equal interval, ucarp: the lower source stays
    ("ucarp", (1, 50, 0), (1, 50, 0), PEER, False),
    ("ucarp", (1, 50, 3), (1, 50, 3), LOWER_PEER, True),  # equal demote > 0 behaves as equal demote 0
]


@pytest.mark.parametrize("mode, ours, peer, src, yields", YIELD_TABLE)
def test_master_election_table(mode, ours, peer, src, yields):
    m = master(machine(mode=mode, advbase=ours[0], advskew=ours[1]), 0.0)
    m.handle(DemoteChanged(3.5, ours[2]))
    t = 4.0
    out = heard(m, t, src=src, advbase=peer[0], advskew=peer[1], demote=peer[2])
    if yields:
        assert m.state is State.BACKUP
        md = t + ours[0] * 3 + ours[1] / 256
        assert out == [state_change(out), CancelTimer("advert"), CancelTimer("garp2"), ReleaseAddress(),
                       SetTimer("master_down", md)]
        assert state_change(out).old is State.MASTER and state_change(out).new is State.BACKUP
        assert m.timers == {"master_down": md}
    else:
        assert m.state is State.MASTER
        # announced now and again later (regression, chaos run: the other master's announcement raced ours)
        assert out == [out[0], SendGratuitous(), SetTimer("garp2", t + 2 * m.settings.interval)]
        assert isinstance(out[0], SplitBrain) and out[0].peer_src == ipaddress.ip_address(src)
        assert m.stats["split_brain"] == 1
        assert set(m.timers) == {"advert", "garp2"}
        assert m.handle(TimerExpired(t + 2 * m.settings.interval, "garp2")) == [SendGratuitous()]


@pytest.mark.parametrize("own, peer, yields", [
    ("192.0.2.2", "192.0.2.1", True),       # differ in the last octet: same as numeric order
    ("192.0.2.1", "192.0.2.2", False),
    ("10.0.1.1", "10.0.0.2", False),        # numerically the peer is lower, in ucarp's order it is higher
    ("10.0.0.2", "10.0.1.1", True),
    ("10.0.0.1", "11.0.0.1", False),
    ("11.0.0.1", "10.0.0.1", True),
])
def test_ucarp_tie_uses_ucarps_address_order(own, peer, yields):
    m = master(machine(mode="ucarp", src=own), 0.0)
    heard(m, 4.0, src=peer)
    assert (m.state is State.BACKUP) == yields
    assert (ucarp_order_key(peer) < ucarp_order_key(own)) == yields


def test_ucarp_tie_without_our_source_yields_like_openbsd():
    m = master(Machine(Settings(vhid=7, mode="ucarp"), counter=C0), 0.0)
    m.handle(AdvertReceived(4.0, PEER, adv()))
    assert m.state is State.BACKUP


def test_ucarp_order_key_ipv6_is_bytewise():
    assert ucarp_order_key("2001:db8::1") < ucarp_order_key("2001:db8::2") < ucarp_order_key("2001:db9::")


def test_master_hearing_a_bowout_reasserts_and_stays():
    m = master(machine(), 0.0)
    m.handle(DemoteChanged(3.5, 2))        # even a less demoted peer bowing out is not followed
    assert heard(m, 4.0, advbase=255, advskew=255, demote=0) == [SendGratuitous()]
    assert m.state is State.MASTER and m.stats["split_brain"] == 0


def test_stale_timers_after_leaving_master_are_ignored():
    m = master(machine(), 0.0)
    advert_due, garp_due = m.timers["advert"], m.timers["garp2"]
    heard(m, 3.5, advskew=0, demote=0, src=LOWER_PEER)      # equal: ucarp tie, lower source wins
    assert m.state is State.BACKUP
    assert m.handle(TimerExpired(advert_due, "advert")) == []
    assert m.handle(TimerExpired(garp_due, "garp2")) == []
    assert m.state is State.BACKUP


def test_stale_master_down_after_preempting_is_ignored():
    m = backup(machine(preempt=True), 0.0)
    heard(m, 1.0, advskew=9)
    assert m.state is State.MASTER
    assert m.handle(TimerExpired(3.0, "master_down")) == []


# ---- demotion -----------------------------------------------------------------------------------------------

def test_master_demotion_is_advertised_at_once_and_kept():
    m = master(machine(), 0.0)
    out = m.handle(DemoteChanged(3.2, 1))
    assert out == [SendAdvert(1, 0, 1, C0 + 1), SetTimer("advert", 4.2)]
    assert m.state is State.MASTER and m.demote == 1
    assert m.handle(TimerExpired(4.2, "advert")) == [SendAdvert(1, 0, 1, C0 + 2), SetTimer("advert", 5.2)]
    assert m.handle(DemoteChanged(4.5, 1)) == []                 # unchanged
    # healthy again: the address is announced again too (the peer may have taken it while we were cut off)
    assert m.handle(DemoteChanged(4.6, 0)) == [SendAdvert(1, 0, 0, C0 + 3), SetTimer("advert", 5.6),
                                               SendGratuitous(), SetTimer("garp2", 6.6)]
    assert m.handle(TimerExpired(6.6, "garp2")) == [SendGratuitous()]


def test_backup_demotion_changes_only_the_value():
    m = backup(machine(), 0.0)
    assert m.handle(DemoteChanged(1.0, 4)) == []
    assert m.demote == 4 and m.state is State.BACKUP and m.timers == {"master_down": 3.0}


def test_demote_bounds():
    m = backup(machine(), 0.0)
    m.handle(DemoteChanged(1.0, 1000))
    assert m.demote == 255
    with pytest.raises(ValueError):
        m.handle(DemoteChanged(1.0, -1))


# ---- shutdown -----------------------------------------------------------------------------------------------

def test_master_shutdown_bows_out():
    m = master(machine(advskew=50), 0.0)
    m.handle(DemoteChanged(3.3, 2))
    out = m.handle(Shutdown(3.5))
    assert out == [SendAdvert(255, 255, 2, C0 + 2), ReleaseAddress(), CancelTimer("advert"),
                   CancelTimer("garp2"), StateChanged(State.MASTER, State.INIT, "shutdown: bowed out")]
    assert m.state is State.INIT and m.timers == {}


def test_backup_shutdown_is_quiet():
    m = backup(machine(), 0.0)
    assert m.handle(Shutdown(1.0)) == [CancelTimer("master_down"),
                                       StateChanged(State.BACKUP, State.INIT, "shutdown")]


@pytest.mark.parametrize("event", [
    AdvertReceived(9.0, PEER, adv(advbase=255, advskew=255)), AdvertReceived(9.0, PEER, adv(demote=9)),
    TimerExpired(9.0, "master_down"), TimerExpired(9.0, "advert"), TimerExpired(9.0, "garp2"),
    DemoteChanged(9.0, 3), Shutdown(9.0),
])
def test_after_shutdown_events_are_ignored(event):
    m = master(machine(), 0.0)
    m.handle(Shutdown(5.0))
    assert m.handle(event) == []
    assert m.state is State.INIT and m.timers == {}


def test_restart_after_shutdown():
    m = master(machine(), 0.0)
    m.handle(Shutdown(5.0))
    out = m.handle(Start(6.0))
    assert out[0] == StateChanged(State.INIT, State.BACKUP, "start") and m.timers == {"master_down": 9.0}


# ---- counter and loops --------------------------------------------------------------------------------------

def test_counter_increments_per_advert_and_wraps():
    m = master(machine(counter=(1 << 64) - 2), 0.0)
    sent = [a.counter for a in m.handle(TimerExpired(m.timers["advert"], "advert")) if isinstance(a, SendAdvert)]
    sent += [a.counter for a in m.handle(TimerExpired(m.timers["advert"], "advert")) if isinstance(a, SendAdvert)]
    assert sent == [(1 << 64) - 1, 0]
    assert m.counter == 1


def test_counter_starts_random():
    a, b = Machine(settings()), Machine(settings())
    assert 0 <= a.counter < 1 << 64 and a.counter != b.counter


@pytest.mark.parametrize("to_state", [backup, master])
def test_own_adverts_looped_back_are_ignored_by_source(to_state):
    m = to_state(machine())
    before = (m.state, m.timers)
    # our source address, whatever the fields: even a bow-out or a better master is ourselves
    for fields in (dict(advbase=255, advskew=255), dict(advskew=0, demote=0), dict(demote=9)):
        assert heard(m, 4.0, src=OWN, **fields) == []
    assert (m.state, m.timers) == before and m.stats["looped"] == 3


def test_own_adverts_looped_back_are_ignored_by_counter_without_source():
    m = master(Machine(Settings(vhid=7), counter=C0), 0.0)
    assert heard(m, 4.0, src=PEER, counter=C0) == []                 # the counter we just sent
    assert m.stats["looped"] == 1 and m.state is State.MASTER
    heard(m, 4.1, src=PEER, counter=C0 + 77)                           # someone else's: processed
    assert m.state is State.BACKUP


def test_other_vhid_ignored():
    m = master(machine(), 0.0)
    assert heard(m, 4.0, vhid=8, advskew=0, demote=0, src=LOWER_PEER) == []
    assert m.state is State.MASTER and m.stats["other_vhid"] == 1


def test_bad_timer_and_event():
    m = machine()
    with pytest.raises(ValueError):
        m.handle(TimerExpired(0.0, "bogus"))
    with pytest.raises(TypeError):
        m.handle("start")


def test_status():
    m = master(machine(advskew=50), 0.0)
    st = m.status()
    assert st["state"] == "MASTER" and st["vhid"] == 7 and st["interval"] == 1 + 50 / 256
    assert set(st["timers"]) == {"advert", "garp2"}


# ---- two machines on a simulated link -----------------------------------------------------------------------

KEY = b"pass"
VIP = ["192.0.2.100"]


class Link:
    """Machines exchanging real encoded advertisements over a lossless link, timers on a fake clock."""

    def __init__(self, *machines: Machine):
        self.m = {str(x.settings.src): x for x in machines}
        self.timers: list[tuple[float, int, str, str]] = []
        self.seq = 0
        self.now = 0.0
        self.up = {name: True for name in self.m}       # False: the node is dead (no timers, no I/O)
        self.connected = True                             # False: a partition (timers run, adverts are lost)
        self.log: list[tuple[float, str, object]] = []
        self.owner: set[str] = set()

    def deliver(self, name: str, actions):
        for a in actions:
            self.log.append((self.now, name, a))
            if isinstance(a, SetTimer):
                self.seq += 1
                heapq.heappush(self.timers, (a.at, self.seq, name, a.name))
            elif isinstance(a, TakeAddress):
                self.owner.add(name)
            elif isinstance(a, ReleaseAddress):
                self.owner.discard(name)
            elif isinstance(a, SendAdvert) and self.up[name] and self.connected:
                x = self.m[name]
                carp = codec.encode(x.settings.vhid, a.advbase, a.advskew, a.demote, a.counter, KEY, VIP)
                packet = codec.ipv4_packet(name, carp)
                for other, y in self.m.items():
                    if other != name and self.up[other]:
                        src, advert = codec.accept_ipv4(packet, KEY, VIP, y.settings.vhid)
                        self.deliver(other, y.handle(AdvertReceived(self.now, src, advert)))

    def event(self, name: str, event):
        self.now = event.now
        self.deliver(name, self.m[name].handle(event))

    def run_until(self, t: float):
        while self.timers and self.timers[0][0] <= t:
            at, _seq, name, timer = heapq.heappop(self.timers)
            self.now = at
            x = self.m[name]
            if self.up[name] and x.timers.get(timer) == at:        # a driver fires only the live timer
                self.deliver(name, x.handle(TimerExpired(at, timer)))
        self.now = t

    def states(self) -> dict[str, State]:
        return {n: x.state for n, x in self.m.items()}

    def masters(self) -> list[str]:
        return [n for n, x in self.m.items() if x.state is State.MASTER]


def pair(a_kw=None, b_kw=None, mode="ucarp"):
    a = Machine(Settings(vhid=7, src="192.0.2.1", mode=mode, **(a_kw or {})), counter=10)
    b = Machine(Settings(vhid=7, src="192.0.2.2", mode=mode, **(b_kw or {})), counter=5000)
    return Link(a, b), a, b


@pytest.mark.parametrize("mode", ["ucarp", "openbsd"])
def test_sim_election_and_failover_by_timeout(mode):
    link, a, b = pair(dict(advskew=0), dict(advskew=100), mode)
    link.event("192.0.2.1", Start(0.0))
    link.event("192.0.2.2", Start(0.5))
    link.run_until(60.0)
    assert link.masters() == ["192.0.2.1"] and link.owner == {"192.0.2.1"}
    # a dies silently: b takes over after its master-down interval counted from a's last advert
    link.up["192.0.2.1"] = False
    last = max(t for t, n, x in link.log if n == "192.0.2.1" and isinstance(x, SendAdvert))
    link.run_until(200.0)
    took = [t for t, n, x in link.log if n == "192.0.2.2" and isinstance(x, TakeAddress)]
    assert took == [pytest.approx(last + 3 + 100 / 256)]
    assert b.state is State.MASTER


@pytest.mark.parametrize("mode", ["ucarp", "openbsd"])
def test_sim_graceful_stop_hands_over_at_once(mode):
    link, a, b = pair(dict(advskew=0), dict(advskew=100), mode)
    link.event("192.0.2.1", Start(0.0))
    link.event("192.0.2.2", Start(0.0))
    link.run_until(10.0)
    assert link.masters() == ["192.0.2.1"]
    link.event("192.0.2.1", Shutdown(10.25))
    assert link.states() == {"192.0.2.1": State.INIT, "192.0.2.2": State.MASTER}
    assert link.owner == {"192.0.2.2"}
    took = [t for t, n, x in link.log if n == "192.0.2.2" and isinstance(x, TakeAddress)]
    assert took == [10.25]


@pytest.mark.parametrize("preempt, back", [(True, True), (False, False)])
def test_sim_preferred_node_returns(preempt, back):
    link, a, b = pair(dict(advskew=0, preempt=preempt), dict(advskew=100, preempt=preempt))
    link.event("192.0.2.2", Start(0.0))
    link.run_until(20.0)
    assert link.masters() == ["192.0.2.2"]
    link.event("192.0.2.1", Start(20.0))       # the preferred node comes back
    link.run_until(60.0)
    assert link.masters() == (["192.0.2.1"] if back else ["192.0.2.2"])
    assert len(link.owner) == 1


def test_sim_demotion_moves_the_address_and_back_with_preempt():
    link, a, b = pair(dict(advskew=0, preempt=True), dict(advskew=100, preempt=True), "openbsd")
    link.event("192.0.2.1", Start(0.0))
    link.event("192.0.2.2", Start(0.0))
    link.run_until(10.0)
    assert link.masters() == ["192.0.2.1"]
    link.event("192.0.2.1", DemoteChanged(10.1, 1))      # a's health check fails
    assert link.masters() == ["192.0.2.2"] and link.owner == {"192.0.2.2"}
    link.run_until(30.0)
    assert link.masters() == ["192.0.2.2"]
    link.event("192.0.2.1", DemoteChanged(30.1, 0))      # healthy again: a preempts on b's next advert
    link.run_until(32.0)
    assert link.masters() == ["192.0.2.1"] and link.owner == {"192.0.2.1"}


def test_sim_demoted_backup_stays_backup():
    link, a, b = pair(dict(advskew=0, preempt=True), dict(advskew=100, preempt=True))
    link.event("192.0.2.2", Start(0.0))
    link.run_until(10.0)
    link.event("192.0.2.1", DemoteChanged(10.0, 1))
    link.event("192.0.2.1", Start(10.0))
    link.run_until(60.0)
    assert link.masters() == ["192.0.2.2"]


@pytest.mark.parametrize("mode, a_kw, b_kw, b_start, winner, split_seen", [
    # the loser advertises first after the heal: the winner reports SplitBrain, then the loser yields
    ("ucarp", dict(advskew=10), dict(advskew=10), -0.05, "192.0.2.1", True),  # equal: lower source stays
    ("ucarp", dict(advskew=20), dict(advskew=10), 0.3, "192.0.2.2", True),    # faster wins
    ("openbsd", dict(advskew=20), dict(advskew=10), 0.3, "192.0.2.2", True),
    ("openbsd", dict(advskew=10), dict(advskew=30, preempt=True), -0.2, "192.0.2.1", True),
    # the winner advertises first: the loser yields at once, nothing to report
    ("ucarp", dict(advskew=10), dict(advskew=10), 0.5, "192.0.2.1", False),
    ("ucarp", dict(advskew=20), dict(advskew=10), 0.0, "192.0.2.2", False),
    ("openbsd", dict(advskew=20), dict(advskew=10), 0.0, "192.0.2.2", False),
    ("openbsd", dict(advskew=10), dict(advskew=30, preempt=True), 0.3, "192.0.2.1", False),
])
def test_sim_split_brain_is_detected_and_resolved(mode, a_kw, b_kw, b_start, winner, split_seen):
    link, a, b = pair(a_kw, b_kw, mode)
    link.connected = False                    # a partition: both start alone and both become MASTER
    link.event("192.0.2.1", Start(1.0))
    link.event("192.0.2.2", Start(1.0 + b_start))
    link.run_until(5.0)
    assert link.masters() == ["192.0.2.1", "192.0.2.2"] and len(link.owner) == 2
    link.connected = True                     # the link heals: the next advertisements settle it
    link.run_until(8.0)
    assert link.masters() == [winner] and link.owner == {winner}
    first_after_heal = next(n for t, n, x in link.log if t >= 5.0 and isinstance(x, SendAdvert))
    assert (first_after_heal != winner) == split_seen
    splits = [(n, x) for _t, n, x in link.log if isinstance(x, SplitBrain)]
    assert {n for n, _ in splits} == ({winner} if split_seen else set())
    assert len(splits) == (1 if split_seen else 0) == link.m[winner].stats["split_brain"]
    if split_seen:
        loser = ({"192.0.2.1", "192.0.2.2"} - {winner}).pop()
        assert splits[0][1].peer_src == ipaddress.ip_address(loser)


def test_openbsd_equal_intervals_both_yield():
    """OpenBSD yields on an equal interval, so two equal masters both step down and the equal master-down timers
    bring both back: give the nodes different advskews (docs/carp.md says so)."""
    a = master(Machine(Settings(vhid=7, src="192.0.2.1", mode="openbsd", advskew=10), counter=10))
    b = master(Machine(Settings(vhid=7, src="192.0.2.2", mode="openbsd", advskew=10), counter=5000))
    a.handle(AdvertReceived(3.5, "192.0.2.2", adv(advskew=10, counter=5000)))
    b.handle(AdvertReceived(3.5, "192.0.2.1", adv(advskew=10, counter=10)))
    assert a.state is State.BACKUP and b.state is State.BACKUP


def restart_resuming(link: Link, name: str, now: float, counter: int = 90000) -> Machine:
    """The control plane of node `name` is killed and a new one resumes at `now` with a fresh machine (the old
    machine's timers die with it: run_until fires only the live machine's timers)."""
    old = link.m[name]
    new = Machine(old.settings, counter=counter)
    link.m[name] = new
    link.up[name] = True
    link.event(name, Resume(now))
    return new


@pytest.mark.parametrize("preempt", [False, True])
def test_sim_control_restart_within_master_down_changes_nothing(preempt):
    """Killed and resumed before the backup's master-down interval: the backup never moves, the address never
    leaves the master."""
    link, a, b = pair(dict(advskew=0, preempt=preempt), dict(advskew=100, preempt=preempt))
    link.event("192.0.2.1", Start(0.0))
    link.event("192.0.2.2", Start(0.5))
    link.run_until(20.0)
    assert link.masters() == ["192.0.2.1"]
    b_changes = len([x for _t, n, x in link.log if n == "192.0.2.2" and isinstance(x, StateChanged)])
    link.up["192.0.2.1"] = False              # SIGKILL: no bow-out, the address stays (owner unchanged)
    link.run_until(21.5)
    assert b.state is State.BACKUP
    restart_resuming(link, "192.0.2.1", 21.5)
    link.run_until(80.0)
    assert link.masters() == ["192.0.2.1"] and link.owner == {"192.0.2.1"}
    assert len([x for _t, n, x in link.log if n == "192.0.2.2" and isinstance(x, StateChanged)]) == b_changes
    assert not [x for t, n, x in link.log if t >= 20.0 and isinstance(x, ReleaseAddress)]


@pytest.mark.parametrize("mode", ["ucarp", "openbsd"])
@pytest.mark.parametrize("preempt", [False, True])
@pytest.mark.parametrize("a_skew, b_skew, winner", [(0, 100, "192.0.2.1"), (100, 0, "192.0.2.2")])
def test_sim_resume_after_the_peer_took_over_settles_without_flapping(mode, preempt, a_skew, b_skew, winner):
    """Down longer than the peer's master-down interval: the peer took over, both are MASTER for a moment, and the
    MASTER rules (OpenBSD's, whatever preempt) leave the better one: a single hand-over, never both BACKUP."""
    b_preempt = preempt and b_skew > a_skew       # a better b with preempt would never have left a master
    link, a, b = pair(dict(advskew=a_skew, preempt=preempt), dict(advskew=b_skew, preempt=b_preempt), mode)
    link.event("192.0.2.1", Start(0.0))
    link.run_until(5.0)
    link.event("192.0.2.2", Start(5.0))       # a is master before b starts, whatever the skews
    link.run_until(20.0)
    assert link.masters() == ["192.0.2.1"]
    link.up["192.0.2.1"] = False
    link.run_until(26.0)
    assert b.state is State.MASTER            # b took over
    n_log = len(link.log)
    restart_resuming(link, "192.0.2.1", 26.0)
    link.run_until(90.0)
    assert link.masters() == [winner] and link.owner == {winner}
    changes = [(n, x.new) for _t, n, x in link.log[n_log:] if isinstance(x, StateChanged)]
    loser = ({"192.0.2.1", "192.0.2.2"} - {winner}).pop()
    assert changes == [("192.0.2.1", State.MASTER), (loser, State.BACKUP)]
