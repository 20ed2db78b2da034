"""The CARP election as a sans-I/O state machine (in the style of h11): fed events, returns actions.

Nothing here reads a clock, sleeps or touches a socket. Every event carries ``now`` (monotonic seconds); timers
are requested as ``SetTimer(name, at)`` with an absolute due time and come back as ``TimerExpired(now, name)``.
A driver owns the sockets and the clock and carries out the actions in the order they are returned.

States and the rules (OpenBSD ip_carp.c and ucarp carp.c; see docs/carp.md for the table):

* INIT -> BACKUP on Start; the master-down timer is armed.
* INIT -> MASTER on Resume: a restarted control plane finds the cluster still owned (the data plane's flag and the
  address kept) and carries on as master at once, as after a takeover; the rules below settle any other master.
* BACKUP -> MASTER when the master-down timer fires, or at once on an advertisement that is a bow-out
  (255/255), or comes from a master more demoted than us, or (preempt on, equal demotion) advertises a longer
  interval than ours, or advertises a longer interval than our master-down interval. Any other advertisement
  re-arms the master-down timer.
* MASTER sends an advertisement every interval. MASTER -> BACKUP on an advertisement from a less demoted
  master, or an equally demoted one advertising a shorter interval, or the same interval and (mode "openbsd")
  always / (mode "ucarp") a lower source address in ucarp's order. Any other advertisement heard as MASTER
  means two masters: SplitBrain is reported, a gratuitous ARP reasserts us (now and again two intervals later:
  the other master's own announcement may race ours), and the peer yields by the same rules when it hears our
  next advertisement.
* Shutdown: a MASTER bows out (one advertisement with advbase 255, advskew 255) and releases the address;
  the machine returns to INIT, where everything but Start (or Resume) is ignored.
"""

from __future__ import annotations

import enum
import ipaddress
import secrets
from collections import deque
from dataclasses import dataclass

from control.carp.codec import BOWOUT_ADVBASE, BOWOUT_ADVSKEW, COUNTER_MASK, Advert

MODES = ("ucarp", "openbsd")
TIMERS = ("advert", "master_down", "garp2")
LOOP_MEMORY = 16          # how many of our own recent counters are remembered to spot looped-back adverts
GARP2_ADVERTS = 2         # the second gratuitous ARP goes out this many intervals after taking over

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class State(enum.Enum):
    INIT = "INIT"
    BACKUP = "BACKUP"
    MASTER = "MASTER"


def _ticks(advbase: int, advskew: int) -> int:
    """An interval in exact 1/256 s units."""
    return advbase * 256 + advskew


def _ip(a) -> IPAddress | None:
    if a is None or isinstance(a, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return a
    return ipaddress.ip_address(a)


def ucarp_order_key(addr) -> int:
    """The value ucarp compares when two masters advertise the same interval (the lower one stays master).

    ucarp compares the raw ``in_addr_t`` values, i.e. the network-order bytes read as a native integer; on the
    little-endian hosts ucarp runs on (x86, arm64) that is the address read little-endian: the last octet is
    the most significant. IPv6 addresses compare bytewise (memcmp)."""
    a = _ip(addr)
    if a.version == 4:
        return int.from_bytes(a.packed, "little")
    return int.from_bytes(a.packed, "big")


@dataclass(frozen=True)
class Settings:
    """One virtual host. ``advbase`` seconds + ``advskew``/256 is our advertisement interval; a smaller one
    wins elections. ``deadratio``: the master-down interval is advbase*deadratio + advskew/256 (OpenBSD has
    it fixed at 3, the default). ``mode`` selects the equal-interval tie rule. ``src`` is our source address
    (used for ucarp's tie rule and to recognise our own advertisements looped back; set it)."""

    vhid: int
    advbase: int = 1
    advskew: int = 0
    preempt: bool = False
    deadratio: int = 3
    mode: str = "ucarp"
    src: IPAddress | str | None = None

    def __post_init__(self):
        def check(name, value, lo, hi):
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise ValueError(f"{name} must be an integer in {lo}..{hi}, not {value!r}")

        check("vhid", self.vhid, 1, 255)
        check("advbase", self.advbase, 1, 255)
        check("advskew", self.advskew, 0, 254)        # 255/255 is reserved for bowing out
        check("deadratio", self.deadratio, 1, 255)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        object.__setattr__(self, "preempt", bool(self.preempt))
        object.__setattr__(self, "src", _ip(self.src))

    @property
    def ticks(self) -> int:
        return _ticks(self.advbase, self.advskew)

    @property
    def master_down_ticks(self) -> int:
        return self.advbase * self.deadratio * 256 + self.advskew

    @property
    def interval(self) -> float:
        """Seconds between our advertisements as MASTER: advbase + advskew/256."""
        return self.ticks / 256

    @property
    def master_down(self) -> float:
        """Seconds a BACKUP waits without hearing the master: advbase*deadratio + advskew/256."""
        return self.master_down_ticks / 256


# ---- events -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Start:
    """Begin (INIT -> BACKUP). neutral: do not release the address on entering BACKUP (ucarp --neutral: no
    downscript at start); the master-down timer still runs and makes us MASTER if nobody is heard."""

    now: float
    neutral: bool = False


@dataclass(frozen=True)
class Resume:
    """Begin as MASTER (INIT -> MASTER): the node was master when its control plane stopped uncleanly (killed)
    and still holds the address, so it carries on without a dark window. If the peer took over meanwhile, the
    two masters settle by the MASTER rules, as after a partition heals."""

    now: float


@dataclass(frozen=True)
class AdvertReceived:
    """An advertisement already decoded and authenticated by the driver; ``src`` is its IP source."""

    now: float
    src: IPAddress | str
    advert: Advert

    def __post_init__(self):
        object.__setattr__(self, "src", _ip(self.src))


@dataclass(frozen=True)
class TimerExpired:
    now: float
    name: str


@dataclass(frozen=True)
class DemoteChanged:
    """Our local demotion counter changed (0 = healthy; higher loses elections)."""

    now: float
    demote: int


@dataclass(frozen=True)
class Shutdown:
    """Graceful stop: a MASTER bows out."""

    now: float


Event = Start | Resume | AdvertReceived | TimerExpired | DemoteChanged | Shutdown


# ---- actions ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SendAdvert:
    """Send one advertisement now with these fields (counter: the 64-bit value to carry)."""

    advbase: int
    advskew: int
    demote: int
    counter: int


@dataclass(frozen=True)
class TakeAddress:
    """Start owning the cluster address."""


@dataclass(frozen=True)
class ReleaseAddress:
    """Stop owning the cluster address."""


@dataclass(frozen=True)
class SendGratuitous:
    """Announce the cluster address now: gratuitous ARP (IPv4) / unsolicited neighbour advertisement (IPv6)."""


@dataclass(frozen=True)
class SetTimer:
    """Arm (or re-arm: replaces a pending one of the same name) timer ``name`` to fire at ``at``."""

    name: str
    at: float


@dataclass(frozen=True)
class CancelTimer:
    name: str


@dataclass(frozen=True)
class StateChanged:
    old: State
    new: State
    reason: str


@dataclass(frozen=True)
class SplitBrain:
    """Another master was heard while we are MASTER and it does not outrank us (it will yield to us)."""

    peer_src: IPAddress | None
    detail: str


Action = SendAdvert | TakeAddress | ReleaseAddress | SendGratuitous | SetTimer | CancelTimer | StateChanged \
    | SplitBrain


# ---- the machine --------------------------------------------------------------------------------------------

class Machine:
    """One CARP virtual host. ``handle(event)`` returns the actions to carry out, in order.

    ``counter``: the first advertisement counter (default: random 64 bits); it increases by one per
    advertisement sent and wraps at 2**64."""

    def __init__(self, settings: Settings, *, counter: int | None = None):
        self.settings = settings
        self.state = State.INIT
        self.demote = 0
        self._counter = (secrets.randbits(64) if counter is None else counter) & COUNTER_MASK
        self._sent: deque[int] = deque(maxlen=LOOP_MEMORY)
        self._timers: dict[str, float] = {}
        self.stats = {"adverts_sent": 0, "adverts_heard": 0, "looped": 0, "split_brain": 0, "other_vhid": 0,
                      "ignored": 0}

    # -- read-only views
    @property
    def counter(self) -> int:
        """The counter the next advertisement will carry."""
        return self._counter

    @property
    def timers(self) -> dict[str, float]:
        """Armed timers: name -> due time."""
        return dict(self._timers)

    def status(self) -> dict:
        s = self.settings
        return {"state": self.state.value, "vhid": s.vhid, "advbase": s.advbase, "advskew": s.advskew,
                "demote": self.demote, "preempt": s.preempt, "mode": s.mode, "interval": s.interval,
                "master_down": s.master_down, "timers": self.timers, "stats": dict(self.stats)}

    # -- dispatch
    def handle(self, event: Event) -> list[Action]:
        if isinstance(event, Start):
            return self._start(event)
        if isinstance(event, Resume):
            return self._resume(event)
        if isinstance(event, AdvertReceived):
            return self._advert(event)
        if isinstance(event, TimerExpired):
            return self._timer(event)
        if isinstance(event, DemoteChanged):
            return self._demote(event)
        if isinstance(event, Shutdown):
            return self._shutdown(event)
        raise TypeError(f"not a CARP event: {event!r}")

    # -- helpers building action lists
    def _set(self, out: list, name: str, at: float) -> None:
        self._timers[name] = at
        out.append(SetTimer(name, at))

    def _cancel(self, out: list, *names: str) -> None:
        for name in names:
            if self._timers.pop(name, None) is not None:
                out.append(CancelTimer(name))

    def _advertise(self, out: list, advbase: int | None = None, advskew: int | None = None) -> None:
        s = self.settings
        c = self._counter
        out.append(SendAdvert(s.advbase if advbase is None else advbase,
                              s.advskew if advskew is None else advskew, self.demote, c))
        self._sent.append(c)
        self._counter = (c + 1) & COUNTER_MASK
        self.stats["adverts_sent"] += 1

    def _to_master(self, now: float, reason: str) -> list[Action]:
        s = self.settings
        out: list[Action] = [StateChanged(self.state, State.MASTER, reason)]
        self.state = State.MASTER
        self._cancel(out, "master_down")
        out.append(TakeAddress())
        self._advertise(out)
        out.append(SendGratuitous())
        self._set(out, "advert", now + s.interval)
        self._set(out, "garp2", now + GARP2_ADVERTS * s.interval)
        return out

    def _to_backup(self, now: float, reason: str) -> list[Action]:
        out: list[Action] = [StateChanged(self.state, State.BACKUP, reason)]
        self.state = State.BACKUP
        self._cancel(out, "advert", "garp2")
        out.append(ReleaseAddress())
        self._set(out, "master_down", now + self.settings.master_down)
        return out

    # -- events
    def _start(self, ev: Start) -> list[Action]:
        if self.state is not State.INIT:
            self.stats["ignored"] += 1
            return []
        out: list[Action] = [StateChanged(State.INIT, State.BACKUP, "start" + (" (neutral)" if ev.neutral else ""))]
        self.state = State.BACKUP
        if not ev.neutral:
            out.append(ReleaseAddress())
        self._set(out, "master_down", ev.now + self.settings.master_down)
        return out

    def _resume(self, ev: Resume) -> list[Action]:
        """The actions of a takeover: the address is asserted again (it is still held: a no-op), an advertisement
        goes out at once so that a waiting backup re-arms its master-down timer, and gratuitous ARPs point the
        segment at us in case the peer took over while we were away."""
        if self.state is not State.INIT:
            self.stats["ignored"] += 1
            return []
        return self._to_master(ev.now, "resumed: the cluster was still owned when the control plane restarted")

    def _is_own(self, ev: AdvertReceived) -> bool:
        """One of our own advertisements looped back (multicast loop, a bridged loop).

        With our source address known, the source decides (as ucarp's capture filter does). Without it, a
        counter we sent recently does (as OpenBSD's loop check does). The counter is not used when the source is
        known because ucarp adopts the counter it last heard and continues from it: its adverts can carry a
        counter we have sent ourselves."""
        own_src = self.settings.src
        if own_src is not None:
            return ev.src == own_src
        return ev.advert.counter in self._sent

    def _tie_yields(self, peer: IPAddress | None) -> bool:
        """Equal demotion and equal interval as MASTER: do we yield?"""
        own = self.settings.src
        if self.settings.mode == "openbsd" or own is None or peer is None or own.version != peer.version:
            return True
        return ucarp_order_key(peer) < ucarp_order_key(own)

    def _advert(self, ev: AdvertReceived) -> list[Action]:
        if self.state is State.INIT:
            self.stats["ignored"] += 1
            return []
        adv = ev.advert
        if adv.vhid != self.settings.vhid:
            self.stats["other_vhid"] += 1
            return []
        if self._is_own(ev):
            self.stats["looped"] += 1
            return []
        self.stats["adverts_heard"] += 1
        s = self.settings
        ours, theirs = s.ticks, _ticks(adv.advbase, adv.advskew)
        bowout = adv.advbase == BOWOUT_ADVBASE and adv.advskew == BOWOUT_ADVSKEW
        peer = f"{ev.src} (advbase {adv.advbase}, advskew {adv.advskew}, demote {adv.demote})"

        if self.state is State.BACKUP:
            if bowout:
                return self._to_master(ev.now, f"master {ev.src} bowed out")
            if adv.demote > self.demote:
                return self._to_master(ev.now, f"master {peer} is more demoted than us ({self.demote})")
            if s.preempt and adv.demote == self.demote and theirs > ours:
                return self._to_master(ev.now, f"preempting slower master {peer}")
            if theirs > s.master_down_ticks:
                return self._to_master(ev.now, f"master {peer} advertises slower than our master-down "
                                                f"interval {s.master_down:.3f}s")
            out: list[Action] = []
            self._set(out, "master_down", ev.now + s.master_down)
            return out

        # MASTER
        if bowout:
            # the other master of a split brain leaving: make sure the address points at us again
            return [SendGratuitous()]
        if adv.demote != self.demote:
            yields = adv.demote < self.demote
            why = f"less demoted master {peer}, our demote is {self.demote}"
        elif theirs != ours:
            yields = theirs < ours
            why = f"master {peer} advertises faster"
        else:
            yields = self._tie_yields(ev.src)
            why = (f"master {peer} advertises the same interval"
                   + (" and has the lower address (ucarp order)" if s.mode == "ucarp" and s.src else ""))
        if yields:
            return self._to_backup(ev.now, why)
        self.stats["split_brain"] += 1
        out: list[Action] = [SplitBrain(ev.src, f"another master {peer} is active while we are MASTER (advbase "
                                                f"{s.advbase}, advskew {s.advskew}, demote {self.demote}); it ranks "
                                                "below us and will yield"),
                             SendGratuitous()]
        # The other master announces the address too (a master recovering from demotion advertises, then sends
        # its gratuitous ARP): its announcement can land after ours, and when it yields at our next advertisement
        # the segment would be left pointing at a backup until the entries age. Announce again later, as after a
        # takeover (found by the chaos run: a data-port link flap on the master, traffic lost ~30 s).
        self._set(out, "garp2", ev.now + GARP2_ADVERTS * s.interval)
        return out

    def _timer(self, ev: TimerExpired) -> list[Action]:
        if ev.name not in TIMERS:
            raise ValueError(f"unknown CARP timer {ev.name!r}")
        if self._timers.pop(ev.name, None) is None:      # cancelled or replaced: stale
            self.stats["ignored"] += 1
            return []
        if ev.name == "master_down" and self.state is State.BACKUP:
            return self._to_master(ev.now, "master-down timer expired")
        if ev.name == "advert" and self.state is State.MASTER:
            out: list[Action] = []
            self._advertise(out)
            self._set(out, "advert", ev.now + self.settings.interval)
            return out
        if ev.name == "garp2" and self.state is State.MASTER:
            return [SendGratuitous()]
        self.stats["ignored"] += 1
        return []

    def _demote(self, ev: DemoteChanged) -> list[Action]:
        if not isinstance(ev.demote, int) or ev.demote < 0:
            raise ValueError(f"demote must be a non-negative integer, not {ev.demote!r}")
        new = min(ev.demote, 255)
        if new == self.demote:
            return []
        healthier = new < self.demote
        self.demote = new
        out: list[Action] = []
        if self.state is State.MASTER:
            # tell the peer at once (as OpenBSD does), then keep the usual rhythm
            self._advertise(out)
            self._set(out, "advert", ev.now + self.settings.interval)
            if healthier:
                # A master that was demoted may have been cut off (its link down): the peer may have taken over
                # meanwhile and pointed the segment's ARP/ND entries at itself. Recovering, we announce the
                # address again, or clients would keep sending to the peer (now backup) until their entries age;
                # a second time later, as after a takeover (a link just up may not carry the first one).
                out.append(SendGratuitous())
                self._set(out, "garp2", ev.now + GARP2_ADVERTS * self.settings.interval)
        return out

    def _shutdown(self, ev: Shutdown) -> list[Action]:
        out: list[Action] = []
        if self.state is State.MASTER:
            self._advertise(out, BOWOUT_ADVBASE, BOWOUT_ADVSKEW)
            out.append(ReleaseAddress())
            self._cancel(out, *TIMERS)
            out.append(StateChanged(State.MASTER, State.INIT, "shutdown: bowed out"))
        elif self.state is State.BACKUP:
            self._cancel(out, *TIMERS)
            out.append(StateChanged(State.BACKUP, State.INIT, "shutdown"))
        self.state = State.INIT
        return out
