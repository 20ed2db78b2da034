"""CARP driver: runs one sans-I/O state machine (control.carp.fsm) on one kernel interface with asyncio.

The driver only does I/O; every decision is the machine's.

Receiving: a raw IPv4 socket for protocol 112, bound to the interface (SO_BINDTODEVICE) and joined to 224.0.0.18 on
it (IP_ADD_MEMBERSHIP with the interface index). The kernel hands over the whole IP header, so the TTL is checked
(codec.parse_ipv4), then the CARP header (codec.decode: length, version, type, checksum), the vhid and the HMAC
(codec.verify). A dropped advertisement is counted under its reason and logged at debug level (the source and the
reason, never a key). Only a verified advertisement reaches the machine.

IPv6 (OpenBSD's semantics; ucarp is IPv4 only): a raw IPv6 socket for next header 112, bound to the interface and
joined to ff02::12 on it (IPV6_JOIN_GROUP). The kernel strips the IPv6 header, so the hop limit comes from the
ancillary data (IPV6_RECVHOPLIMIT) and must be 255 (codec.check_hoplimit); then the same checks as for IPv4, with
the drops counted under the same reasons. Advertisements go to ff02::12 (33:33:00:00:00:12), hop limit 255, built
here like the IPv4 ones; taking the address sends an unsolicited neighbour advertisement (override flag, target
link-layer option = the cluster IP's MAC) to ff02::1 instead of a gratuitous ARP, with the same timers. The address
goes on the interface as a /128 with nodad (usable at once). ``mac = "virtual"`` is IPv4 only.

Sending: advertisements and gratuitous ARPs go out through an AF_PACKET socket on the interface with an Ethernet
header built here, so the TTL (255), the IP source (--srcip) and the source MAC are exactly what the settings say,
whatever the routing table or the interface's multicast settings are. MAC settings (``mac``):

========  ============================  ======================================================================
mac       advertisement source MAC      the cluster IP (gratuitous ARP, ARP replies)
========  ============================  ======================================================================
real      the interface's MAC           the interface's MAC. No spoofed source MAC: for hypervisors and
                                        switches that drop frames whose source is not the port's MAC.
ucarp     00:00:5e:00:00:<vhid>         the interface's MAC (exactly what ucarp puts on the wire)
virtual   00:00:5e:00:01:<vhid>         00:00:5e:00:01:<vhid> (OpenBSD): the default take hook puts the cluster
                                        IP on a macvlan child with that MAC and sets arp_ignore=1 on the parent
                                        (restored at exit) so only the virtual MAC answers ARP for it
========  ============================  ======================================================================

Taking and releasing the cluster IP go through hooks (``on_take``/``on_release``). The defaults, used by
pydp-carp, add or remove the address as a /32 with pyroute2 (so the kernel answers ARP for it) and run the
up/down scripts with ucarp's arguments ``<interface> <addr> [<xparam>]``. pydp-control passes its own hooks (the
fast path's ownership flag, then the default) and may await ``take_address``/``release_address`` itself.

Side effects that may take time (the hooks, netlink, scripts) and the gratuitous ARPs run one at a time, in the
machine's order, on a queue served by one task: a gratuitous ARP goes out after the address is in place, and a
slow script never delays an advertisement. Advertisements and timers are handled at once. A hook is a plain
callable run on the loop; it may return an awaitable, which is awaited before the next side effect. Blocking
work (pyroute2's netlink calls) runs in a worker thread.

Timers: the machine's SetTimer/CancelTimer become ``loop.call_at`` handles on the monotonic clock (asyncio's
clock is time.monotonic()).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as _dt
import inspect
import ipaddress
import logging
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from control.carp import codec, fsm

log = logging.getLogger("pydp.carp")

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
IFA_F_NODAD = 0x02
GROUP_MAC = codec.GROUP4_MAC                        # 01:00:5e:00:00:12, for 224.0.0.18
BROADCAST_MAC = b"\xff" * 6
MAC_SETTINGS = ("real", "ucarp", "virtual")
MODES = ("ucarp", "openbsd")
SCRIPT_TIMEOUT_S = 30.0
AUTH_REASONS = ("hmac", "replay")                   # drop reasons that mean "for our vhid, but not authentic"
AUTH_LOG_S = 10.0                                   # authentication failures are logged at most this often
AUTH_ALARM_MIN = 2                                  # ... and this many in 3 intervals while MASTER: split brain


def _mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def _now_iso(wall: float | None = None) -> str:
    t = time.time() if wall is None else wall
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Config:
    """One virtual host: vhid, cluster IP, interface. ``key`` is the passphrase as bytes; it is left out of repr
    and of status()."""

    interface: str
    srcip: str
    vhid: int
    addr: str
    key: bytes = field(repr=False)
    advbase: int = 1
    advskew: int = 0
    preempt: bool = False
    neutral: bool = False
    deadratio: int = 3
    mode: str = "ucarp"
    mac: str = "real"
    upscript: str | None = None
    downscript: str | None = None
    xparam: str | None = None
    shutdown_script: bool = False      # ucarp -z: run the downscript when a master exits
    manage_address: bool = True        # False: leave the address to the scripts, as ucarp does

    def check(self) -> None:
        """Raises ValueError with a message fit for a user."""
        if not 1 <= self.vhid <= 255:
            raise ValueError(f"vhid must be between 1 and 255, not {self.vhid}")
        if not 1 <= self.advbase <= 255:
            raise ValueError(f"advbase must be between 1 and 255 seconds, not {self.advbase}")
        if not 0 <= self.advskew <= 254:
            raise ValueError(f"advskew must be between 0 and 254 (255 is kept for bowing out), not {self.advskew}")
        if self.deadratio < 1:
            raise ValueError("deadratio must be at least 1")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if self.mac not in MAC_SETTINGS:
            raise ValueError(f"mac must be one of {', '.join(MAC_SETTINGS)}")
        try:
            addr = ipaddress.ip_address(self.addr)
        except ValueError:
            raise ValueError(f"addr must be an IPv4 or IPv6 address, not {self.addr!r}") from None
        srcip, _, scope = str(self.srcip).partition("%")
        try:
            src = ipaddress.ip_address(srcip)
        except ValueError:
            src = None
        if src is None or src.version != addr.version or (scope and (src.version != 6 or not src.is_link_local)):
            family = f"IPv{addr.version}"
            raise ValueError(f"srcip must be an {family} address (as addr is"
                             f"{'; link-local with %interface allowed' if addr.version == 6 else ''}), "
                             f"not {self.srcip!r}")
        if scope and scope != self.interface:
            raise ValueError(f"srcip {self.srcip}: the scope must be the interface {self.interface}")
        if addr.version == 6:
            if addr.is_link_local or addr.is_multicast or addr.is_unspecified or addr.is_loopback:
                raise ValueError(f"addr {addr} cannot be a cluster IP: use a global (or unique local) IPv6 address")
            if self.mac == "virtual":
                raise ValueError("mac virtual is IPv4 only; use real or ucarp with an IPv6 cluster IP")
        if not self.key:
            raise ValueError("a passphrase is required")
        if len(self.key) > 20:
            raise ValueError(f"the passphrase is {len(self.key)} bytes long; CARP keys are at most 20 bytes")


Hook = Callable[[], Any]


class Instance:
    """One CARP virtual host (one fsm.Machine) on one kernel interface.

    Use: ``inst = Instance(cfg); await inst.start(); ...; await inst.stop()``. Everything runs on the loop that
    called start(). ``on_take``/``on_release`` are called with no argument on the loop, one at a time in the
    machine's order (they may return an awaitable; it is awaited before the next side effect) and must not block;
    the defaults are take_address/release_address. ``on_state(old, new, reason)`` is called at once on each change.
    """

    def __init__(self, config: Config, *, on_take: Hook | None = None, on_release: Hook | None = None,
                 on_state: Callable[[Any, Any, str], Any] | None = None):
        config.check()
        self.cfg = config
        self._key = config.key
        self.vip = ipaddress.ip_address(config.addr)
        self.src = ipaddress.ip_address(str(config.srcip).partition("%")[0])      # the scope is the interface
        self.ipv6 = self.vip.version == 6
        self.on_take = on_take if on_take is not None else self.take_address
        self.on_release = on_release if on_release is not None else self.release_address
        self.on_state = on_state
        self.machine = fsm.Machine(fsm.Settings(
            vhid=config.vhid, advbase=config.advbase, advskew=config.advskew, preempt=config.preempt,
            deadratio=config.deadratio, mode=config.mode, src=self.src))
        self.counters = codec.Counters()
        self.replays = codec.ReplayGuard()
        self.stats = {"adverts_sent": 0, "send_errors": 0, "gratuitous_sent": 0, "split_brain": 0,
                      "to_master": 0, "to_backup": 0, "own_ignored": 0, "auth_alarms": 0}
        # adverts for our vhid that fail authentication (bad HMAC, replay): logged at most every AUTH_LOG_S, and
        # while MASTER, AUTH_ALARM_MIN of them within 3 intervals raise the split-brain alarm (a peer with another
        # passphrase believes it is master too: both answer for the cluster IP)
        self.on_auth_alarm: Callable[[bool, str], None] | None = None
        self.auth_alarm = False
        self.auth_detail = ""
        self._auth_fails: collections.deque = collections.deque(maxlen=64)
        self._auth_logged = {"at": -1e9, "since": 0}
        self.ifindex = 0
        self.ifmac = b"\0" * 6
        self.master_since: float | None = None      # wall clock
        self.state_since: float | None = None
        self.last_reason = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rx: socket.socket | None = None
        self._tx: socket.socket | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._queue: list[Any] = []
        self._busy = False
        self._started = False
        self._stopping = False
        self._stopped = False
        self._effects: asyncio.Queue | None = None
        self._effects_task: asyncio.Task | None = None
        self._saved_sysctls: list[tuple[str, str]] = []
        self.vmac_ifname = ""              # mac=virtual: the macvlan child holding the cluster IP (set by start)

    # ---- MACs ----

    @property
    def advert_mac(self) -> bytes:
        if self.cfg.mac == "ucarp":
            return codec.ucarp_advert_mac(self.cfg.vhid)
        if self.cfg.mac == "virtual":
            return self.virtual_mac
        return self.ifmac

    @property
    def virtual_mac(self) -> bytes:
        return codec.virtual_mac(self.cfg.vhid)

    @property
    def vip_mac(self) -> bytes:
        return self.virtual_mac if self.cfg.mac == "virtual" else self.ifmac

    @property
    def state(self):
        return self.machine.state

    # ---- life cycle ----

    async def start(self, *, resume: bool = False) -> None:
        """Opens the sockets and starts the machine: as BACKUP (fsm.Start), or with resume=True as MASTER at once
        (fsm.Resume: the address is still ours from before a crash of the process that ran this instance)."""
        if self._started:
            raise RuntimeError("already started")
        self._loop = asyncio.get_running_loop()
        try:
            self.ifindex = socket.if_nametoindex(self.cfg.interface)
        except OSError:
            raise ValueError(f"no interface named {self.cfg.interface!r}") from None
        self.vmac_ifname = f"vmac{self.ifindex}.{self.cfg.vhid}"
        self._open_sockets()
        self._effects = asyncio.Queue()
        self._effects_task = self._loop.create_task(self._effects_runner())
        if self.cfg.mac == "virtual" and self.cfg.manage_address:
            await asyncio.to_thread(self._virtual_prepare)
        self._loop.add_reader(self._rx.fileno(), self._on_readable)
        self._started = True
        self.state_since = time.time()
        log.info("vhid %d on %s: cluster IP %s, source %s, interval %.3f s, preempt %s, mode %s, mac %s (%s)",
                 self.cfg.vhid, self.cfg.interface, self.vip, self.src,
                 self.cfg.advbase + self.cfg.advskew / 256, "on" if self.cfg.preempt else "off", self.cfg.mode,
                 self.cfg.mac, _mac_text(self.advert_mac))
        now = time.monotonic()
        self._feed(fsm.Resume(now) if resume else fsm.Start(now, neutral=self.cfg.neutral))

    def _open_sockets(self) -> None:
        ifname = self.cfg.interface
        rx = socket.socket(socket.AF_INET6 if self.ipv6 else socket.AF_INET, socket.SOCK_RAW, codec.CARP_PROTO)
        try:
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
            if self.ipv6:
                mreq = socket.inet_pton(socket.AF_INET6, codec.GROUP6) + struct.pack("@I", self.ifindex)
                rx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
                rx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
            else:
                mreqn = (socket.inet_aton(codec.GROUP4) + socket.inet_aton("0.0.0.0")
                         + struct.pack("@i", self.ifindex))
                rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            rx.setblocking(False)
            tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)     # protocol 0: sends only, receives nothing
            try:
                tx.bind((ifname, 0))
                tx.setblocking(False)
                self.ifmac = tx.getsockname()[4][:6]
            except BaseException:
                tx.close()
                raise
        except BaseException:
            rx.close()
            raise
        self._rx, self._tx = rx, tx

    async def stop(self) -> None:
        """Graceful stop: the machine's Shutdown (a master bows out with advbase 255/advskew 255 and releases the
        address), then the sockets close. Side effects still queued (release, scripts) are waited for (bounded)."""
        if not self._started or self._stopped:
            return
        self._stopping = True
        try:
            self._feed(fsm.Shutdown(time.monotonic()))
        finally:
            for h in self._timers.values():
                h.cancel()
            self._timers.clear()
            if self._rx is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._rx.fileno())
            if self._effects is not None and self._effects_task is not None:
                self._effects.put_nowait(None)
                try:
                    await asyncio.wait_for(asyncio.shield(self._effects_task), SCRIPT_TIMEOUT_S + 5)
                except (asyncio.TimeoutError, Exception):
                    self._effects_task.cancel()
            if self.cfg.mac == "virtual" and self.cfg.manage_address:
                await asyncio.to_thread(self._virtual_cleanup)
            for s in (self._rx, self._tx):
                if s is not None:
                    s.close()
            self._rx = self._tx = None
            self._stopped = True

    def abort(self) -> None:
        """Closes what a failed start opened (sockets, the reader, the side-effect task); no Shutdown is fed."""
        if self._rx is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._rx.fileno())
        for s in (self._rx, self._tx):
            if s is not None:
                s.close()
        self._rx = self._tx = None
        if self._effects_task is not None:
            self._effects_task.cancel()
            self._effects_task = None

    def set_demote(self, n: int) -> None:
        """Our local demotion counter (0 = healthy); a higher value makes this node less preferred."""
        self._feed(fsm.DemoteChanged(time.monotonic(), int(n)))

    # ---- events into the machine ----

    def _feed(self, event) -> None:
        """Hands an event to the machine and carries out its actions. Re-entrant calls (a hook that calls
        set_demote) are queued and handled after the current event's actions, in order."""
        self._queue.append(event)
        if self._busy:
            return
        self._busy = True
        try:
            while self._queue:
                ev = self._queue.pop(0)
                for action in self.machine.handle(ev):
                    try:
                        self._do(action)
                    except Exception:
                        log.exception("vhid %d: %s failed", self.cfg.vhid, type(action).__name__)
        finally:
            self._busy = False

    def _on_readable(self) -> None:
        if self.ipv6:
            return self._on_readable6()
        for _ in range(64):
            try:
                packet = self._rx.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("vhid %d: receive on %s failed: %s", self.cfg.vhid, self.cfg.interface, e.strerror)
                return
            self.receive(packet, time.monotonic())

    def receive(self, packet: bytes, now: float) -> bool:
        """One IPv4 packet as the raw socket gives it. Returns True if it reached the machine."""
        src = None
        try:
            src, carp = codec.parse_ipv4(packet)
            if ipaddress.ip_address(src) == self.src:
                self.stats["own_ignored"] += 1       # our own advertisement looped back: not a peer
                return False
            adv = codec.decode(carp)
            codec.check_vhid(adv, self.cfg.vhid)
            codec.verify(adv, self._key, [self.vip])
            self.replays.check(src, adv)
        except codec.CarpError as e:
            self.counters.count(e.reason)
            log.debug("vhid %d: dropped an advertisement from %s: %s", self.cfg.vhid, src or "?", e.reason)
            self._bad_advert(e.reason, src, now)
            return False
        self.counters.count("ok")
        self._accepted(src, adv, now)
        self._feed(fsm.AdvertReceived(now, src, adv))
        return True

    def _on_readable6(self) -> None:
        for _ in range(64):
            try:
                data, ancdata, _flags, addr = self._rx.recvmsg(4096, socket.CMSG_SPACE(4))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("vhid %d: receive on %s failed: %s", self.cfg.vhid, self.cfg.interface, e.strerror)
                return
            hoplimit = -1
            for level, kind, value in ancdata:
                if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT and len(value) >= 4:
                    hoplimit = struct.unpack("@i", value[:4])[0]
            self.receive6(data, addr[0], hoplimit, time.monotonic())

    def receive6(self, carp: bytes, src, hoplimit: int, now: float) -> bool:
        """One IPv6 advertisement as the raw socket gives it: the CARP bytes (the kernel strips the IPv6 header),
        the source address (a %scope is ignored) and the hop limit from IPV6_RECVHOPLIMIT. Returns True if it
        reached the machine."""
        try:
            peer = ipaddress.IPv6Address(str(src).partition("%")[0])
        except ValueError:
            peer = None
        try:
            codec.check_hoplimit(hoplimit)
            if peer is not None and peer == self.src:
                self.stats["own_ignored"] += 1
                return False
            adv = codec.decode(carp)
            codec.check_vhid(adv, self.cfg.vhid)
            codec.verify(adv, self._key, [self.vip])
            if peer is not None:
                self.replays.check(peer, adv)
        except codec.CarpError as e:
            self.counters.count(e.reason)
            log.debug("vhid %d: dropped an advertisement from %s: %s", self.cfg.vhid, peer or "?", e.reason)
            self._bad_advert(e.reason, peer, now)
            return False
        if peer is None:
            self.counters.count("family")
            return False
        self.counters.count("ok")
        self._accepted(peer, adv, now)
        self._feed(fsm.AdvertReceived(now, peer, adv))
        return True

    def _accepted(self, src, adv, now: float) -> None:
        """Called with every advertisement that passed the checks, before the machine sees it (subclasses)."""

    def _bad_advert(self, reason: str, src, now: float) -> None:
        """An advertisement for our vhid that failed authentication: logged (rate-limited), and the split-brain
        alarm checked. Other drop reasons (wrong vhid, TTL, version, ...) are only counted."""
        if reason not in AUTH_REASONS:
            return
        self._auth_fails.append(now)
        lg = self._auth_logged
        lg["since"] += 1
        if now - lg["at"] >= AUTH_LOG_S:
            log.warning("vhid %d on %s: %d advertisement(s) failed authentication (%s, last from %s) since the last "
                        "report: a peer with another passphrase, or a replay", self.cfg.vhid, self.cfg.interface,
                        lg["since"], reason, src or "?")
            lg["at"], lg["since"] = now, 0
        self.check_auth_alarm(now, str(src) if src is not None else "?")

    def check_auth_alarm(self, now: float, src: str = "") -> None:
        """Raises or clears the split-brain alarm: MASTER, and AUTH_ALARM_MIN adverts for our vhid failed
        authentication within the last 3 intervals."""
        window = 3 * (self.cfg.advbase + self.cfg.advskew / 256)
        recent = sum(1 for t in self._auth_fails if now - t <= window)
        active = self.machine.state is fsm.State.MASTER and recent >= AUTH_ALARM_MIN
        if active == self.auth_alarm:
            return
        self.auth_alarm = active
        if active:
            self.stats["auth_alarms"] += 1
            self.auth_detail = (f"{recent} advertisements for vhid {self.cfg.vhid} from {src} failed authentication "
                                f"in {window:.1f} s while this node is MASTER: a peer with another passphrase may "
                                "be master of the same cluster IP too")
            log.warning("vhid %d on %s: split brain suspected: %s", self.cfg.vhid, self.cfg.interface,
                        self.auth_detail)
        else:
            log.info("vhid %d on %s: split-brain alarm cleared", self.cfg.vhid, self.cfg.interface)
        if self.on_auth_alarm is not None:
            self.on_auth_alarm(active, self.auth_detail if active else "")
        if not active:
            self.auth_detail = ""

    def _on_timer(self, name: str, at: float) -> None:
        self._timers.pop(name, None)
        if self._stopped:
            return
        self._feed(fsm.TimerExpired(max(time.monotonic(), at), name))

    # ---- actions ----

    def _do(self, a) -> None:
        if isinstance(a, fsm.SendAdvert):
            self._send_advert(a)
            if self.auth_alarm:
                self.check_auth_alarm(time.monotonic())
        elif isinstance(a, fsm.SetTimer):
            old = self._timers.pop(a.name, None)
            if old is not None:
                old.cancel()
            if not self._stopping:
                self._timers[a.name] = self._loop.call_at(a.at, self._on_timer, a.name, a.at)
        elif isinstance(a, fsm.CancelTimer):
            old = self._timers.pop(a.name, None)
            if old is not None:
                old.cancel()
        elif isinstance(a, fsm.TakeAddress):
            self._effect(self.on_take, "taking the address")
        elif isinstance(a, fsm.ReleaseAddress):
            self._effect(self.on_release, "releasing the address")
        elif isinstance(a, fsm.SendGratuitous):
            self._effect(self.send_gratuitous, "a gratuitous ARP")
        elif isinstance(a, fsm.StateChanged):
            self._state_changed(a)
            if self.auth_alarm:
                self.check_auth_alarm(time.monotonic())
        elif isinstance(a, fsm.SplitBrain):
            self.stats["split_brain"] += 1
            log.warning("vhid %d on %s: another master: %s (%s)", self.cfg.vhid, self.cfg.interface,
                        a.peer_src, a.detail)
        else:
            log.warning("vhid %d: unknown action %r", self.cfg.vhid, a)

    def _state_changed(self, a) -> None:
        wall = time.time()
        self.state_since = wall
        self.last_reason = a.reason
        new = a.new.name
        old = a.old.name
        if new == "MASTER":
            self.master_since = wall
            self.stats["to_master"] += 1
        else:
            self.master_since = None
            if new == "BACKUP":
                self.stats["to_backup"] += 1
        log.info("vhid %d on %s: %s -> %s (%s)", self.cfg.vhid, self.cfg.interface, old, new, a.reason)
        if self.on_state is not None:
            try:
                self.on_state(a.old, a.new, a.reason)
            except Exception:
                log.exception("vhid %d: state hook failed", self.cfg.vhid)

    def _send_frame(self, frame: bytes, what: str) -> bool:
        if self._tx is None:
            return False
        try:
            self._tx.send(frame)
            return True
        except OSError as e:
            self.stats["send_errors"] += 1
            log.warning("vhid %d: sending %s on %s failed: %s", self.cfg.vhid, what, self.cfg.interface,
                        e.strerror or e)
            return False

    def _send_advert(self, a) -> None:
        carp = codec.encode(self.cfg.vhid, a.advbase, a.advskew, a.demote, a.counter, self._key, [self.vip])
        if self.ipv6:
            frame = codec.GROUP6_MAC + self.advert_mac + struct.pack("!H", ETH_P_IPV6) + \
                codec.ipv6_packet(self.src, carp)
        else:
            frame = GROUP_MAC + self.advert_mac + struct.pack("!H", ETH_P_IP) + codec.ipv4_packet(str(self.src), carp)
        if self._send_frame(frame, "an advertisement"):
            self.stats["adverts_sent"] += 1
            if a.advbase == 255 and a.advskew == 255:
                log.info("vhid %d on %s: bow-out advertisement sent", self.cfg.vhid, self.cfg.interface)

    def gratuitous_arp_frame(self) -> bytes:
        """An ARP request for the cluster IP from the cluster IP (sender = target = VIP), broadcast. For an IPv6
        cluster IP: an unsolicited neighbour advertisement to ff02::1 (override flag, our MAC)."""
        mac = self.vip_mac
        if self.ipv6:
            return codec.ALL_NODES6_MAC + mac + struct.pack("!H", ETH_P_IPV6) + codec.neighbour_advert(self.vip, mac)
        vip = self.vip.packed
        arp = struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, 1, mac, vip, b"\0" * 6, vip)
        return BROADCAST_MAC + mac + struct.pack("!H", ETH_P_ARP) + arp

    def send_gratuitous(self) -> None:
        if self._send_frame(self.gratuitous_arp_frame(),
                            "a neighbour advertisement" if self.ipv6 else "a gratuitous ARP"):
            self.stats["gratuitous_sent"] += 1

    # ---- default take/release: the address on the interface, and the scripts ----

    def _effect(self, fn: Callable[[], Any], what: str) -> None:
        if self._effects is not None:
            self._effects.put_nowait((fn, what))

    async def _effects_runner(self) -> None:
        while True:
            item = await self._effects.get()
            if item is None:
                return
            fn, what = item
            try:
                result = fn()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("vhid %d: %s failed", self.cfg.vhid, what)

    async def take_address(self) -> None:
        """The default take: the address on the interface (or on the macvlan child with mac=virtual), then the
        upscript."""
        if self.cfg.manage_address:
            if self.cfg.mac == "virtual":
                await asyncio.to_thread(self._virtual_take)
            else:
                await asyncio.to_thread(self._addr, "add", self.ifindex)
        await self.run_script(self.cfg.upscript)

    async def release_address(self) -> None:
        """The default release: the address off the interface, then the downscript (like ucarp: on every change
        to BACKUP, at start unless neutral, and at exit only with shutdown_script, ucarp's -z)."""
        if self.cfg.manage_address:
            if self.cfg.mac == "virtual":
                await asyncio.to_thread(self._virtual_release)
            else:
                await asyncio.to_thread(self._addr, "del", self.ifindex)
        if not self._stopping or self.cfg.shutdown_script:
            await self.run_script(self.cfg.downscript)

    async def run_script(self, script: str | None) -> None:
        """Runs a script with ucarp's arguments (interface, address, xparam) and waits for it (bounded)."""
        if not script:
            return
        args = [script, self.cfg.interface, str(self.vip)] + ([self.cfg.xparam] if self.cfg.xparam else [])
        log.info("vhid %d: running %s", self.cfg.vhid, " ".join(args))
        try:
            proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.DEVNULL)
        except OSError as e:
            log.error("vhid %d: cannot run %s: %s", self.cfg.vhid, script, e.strerror or e)
            return
        try:
            rc = await asyncio.wait_for(proc.wait(), SCRIPT_TIMEOUT_S)
        except asyncio.TimeoutError:
            proc.kill()
            rc = await proc.wait()
            log.error("vhid %d: %s took longer than %d s: killed", self.cfg.vhid, script, SCRIPT_TIMEOUT_S)
        if rc != 0:
            log.warning("vhid %d: %s exited with %s", self.cfg.vhid, script, rc)

    def _addr(self, op: str, index: int) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        with IPRoute() as ipr:
            try:
                if self.ipv6:     # nodad: usable at once (the peer has released it, or is gone)
                    kw = {"flags": IFA_F_NODAD} if op == "add" else {}
                    ipr.addr(op, index=index, address=str(self.vip), prefixlen=128, **kw)
                else:
                    ipr.addr(op, index=index, address=str(self.vip), prefixlen=32)
            except NetlinkError as e:
                if not ((op == "add" and e.code == 17) or (op == "del" and e.code == 99)):   # EEXIST, EADDRNOTAVAIL
                    raise

    # mac=virtual on the parent interface: arp_ignore=1 (answer ARP only for the parent's own addresses, so the
    # cluster IP on the macvlan child is answered with the virtual MAC alone) and arp_announce=2 (ARP requests the
    # parent sends carry one of its own addresses, never the cluster IP next to the real MAC). Both restored at exit.
    VIRTUAL_SYSCTLS = (("arp_ignore", 1), ("arp_announce", 2))

    def _virtual_prepare(self) -> None:
        """mac=virtual: the parent's ARP settings, and removal of a child left over by a killed process."""
        for name, want in self.VIRTUAL_SYSCTLS:
            path = f"/proc/sys/net/ipv4/conf/{self.cfg.interface}/{name}"
            try:
                with open(path) as f:
                    old = f.read().strip()
                if int(old) < want:
                    with open(path, "w") as f:
                        f.write(str(want))
                    self._saved_sysctls.append((path, old))
            except (OSError, ValueError) as e:
                log.warning("vhid %d: cannot set %s: %s", self.cfg.vhid, path, getattr(e, "strerror", None) or e)
        self._virtual_release()

    def _virtual_cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self._virtual_release()
        while self._saved_sysctls:
            path, old = self._saved_sysctls.pop()
            try:
                with open(path, "w") as f:
                    f.write(old)
            except OSError:
                pass

    def _virtual_take(self) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        name = self.vmac_ifname
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=name)
            if not found:
                try:
                    ipr.link("add", ifname=name, kind="macvlan", link=self.ifindex, macvlan_mode="bridge",
                             address=_mac_text(self.virtual_mac))
                except NetlinkError as e:
                    if e.code != 17:
                        raise
                found = ipr.link_lookup(ifname=name)
            index = found[0]
            with contextlib.suppress(OSError):
                with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as f:
                    f.write("1")
            ipr.link("set", index=index, state="up")
        self._addr("add", index)

    def _virtual_release(self) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        with IPRoute() as ipr:
            for index in ipr.link_lookup(ifname=self.vmac_ifname):
                try:
                    ipr.link("del", index=index)
                except NetlinkError as e:
                    if e.code != 19:          # ENODEV: already gone
                        raise

    # ---- status ----

    def status(self) -> dict:
        """State, settings and counters; never the passphrase."""
        received = self.counters.as_dict()
        state = self.machine.state.name
        return {
            "interface": self.cfg.interface,
            "vhid": self.cfg.vhid,
            "addr": str(self.vip),
            "srcip": str(self.src),
            "state": state,
            "reason": self.last_reason,
            "state_since": _now_iso(self.state_since) if self.state_since else None,
            "master_since": _now_iso(self.master_since) if self.master_since else None,
            "advbase": self.cfg.advbase,
            "advskew": self.cfg.advskew,
            "preempt": self.cfg.preempt,
            "demote": self.machine.demote,
            "mode": self.cfg.mode,
            "mac": self.cfg.mac,
            "advert_mac": _mac_text(self.advert_mac),
            "vip_mac": _mac_text(self.vip_mac),
            "received_ok": int(received.get("ok", 0)),
            "drops": {r: int(received.get(r, 0)) for r in codec.REASONS},
            **self.stats,
            "auth_alarm": self.auth_alarm,
            "auth_alarm_detail": self.auth_detail or None,
            # the driver drops adverts for another vhid before the machine sees them (drops.vhid): one number
            "machine": {**self.machine.stats,
                        "other_vhid": self.machine.stats["other_vhid"] + int(received.get("vhid", 0))},
        }
