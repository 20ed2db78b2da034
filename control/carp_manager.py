"""CARP inside pydp-control: one control.carp.driver.Instance per enabled cluster in mode "cluster".

Every instance runs on the exception (TAP) interface of the data port: advertisements from the peer reach the
kernel through the data plane's exception path (priority class), ours leave through the TAP and the data plane.
The source of our advertisements is the appliance's own address on that TAP (``--carp-src``, else the first IPv4
address on the TAP that is not a cluster IP). IPv6 clusters (OpenBSD's IPv6 CARP) use ``--carp-src6``, else the
first global IPv6 address on the TAP that is not a cluster IP, else the TAP's link-local address.

Taking a cluster IP: the daemon publishes a generation with the cluster owned (its ``set_owned``; CARP waits for
that publish), the cluster IP goes on the TAP as a /32 (IPv6: a /128, nodad) so the kernel answers ARP (ND) for it on the exception
path, and the driver sends a gratuitous ARP (IPv6: an unsolicited neighbour advertisement) now and a second one two
intervals later. Releasing publishes the cluster as not owned and removes the address.

The manager is driven by ``run()``: every TICK_S it reconciles the instances with the configuration (clusters
added, removed, disabled or edited; the TAP appearing, vanishing or being re-created by a restarted data plane;
its source address changing) and feeds every instance its demotion:

    demote = 1 per failing check: the port's link is down ("link"), the cluster has no edge UP in the data
    plane's config ("edges"); a data plane that is not forwarding (heartbeat older than 1 s, or none attached:
    "dataplane") counts as all three, since neither its links nor its tables can be trusted.

Resuming after a crash: a pydp-control that was SIGKILLed left the data plane forwarding with the ownership flags
and the cluster IPs on the TAP as they were. The daemon that starts next finds them and hands the owned clusters to
``resume`` before CARP runs; an instance for such a cluster whose cluster IP is still on the TAP starts as MASTER at
once (fsm.Resume: no release, no dark window) and logs ``carp_resumed``. A candidate that cannot resume (the address
is gone, CARP cannot run for it) gives its flag up (``carp_resume_skipped``).

Passphrases live only in the instances' configs (driver.Config.key, left out of repr) and in the Spec used to see
that they changed (also left out of repr); nothing here logs or returns them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from control.carp import codec, driver

__all__ = ["CarpManager", "ManagedInstance", "Spec", "tap_info", "peer_text", "TICK_S", "STATES",
           "HEARTBEAT_DEMOTE_MS", "DATAPLANE_DEMOTE"]

log = logging.getLogger("pydp.control.carp")

TICK_S = 0.5
HEARTBEAT_DEMOTE_MS = 1000
DATAPLANE_DEMOTE = 3
STATES = ("init", "backup", "master")
IFF_UP = 0x1


@dataclass(frozen=True)
class Spec:
    """What an instance runs with; a change of any field restarts it."""

    interface: str
    ifindex: int
    srcip: str
    vhid: int
    addr: str
    advbase: int
    advskew: int
    preempt: bool
    key: bytes = field(repr=False)


class ManagedInstance(driver.Instance):
    """A driver instance that also remembers the last advertisement that reached its machine (the peer)."""

    peer: dict | None = None

    def _accepted(self, src, adv, now: float) -> None:
        self.peer = {"src": str(src), "advbase": adv.advbase, "advskew": adv.advskew, "demote": adv.demote,
                     "interval": round(adv.interval, 3), "mono": now, "time": time.time()}


@dataclass
class Entry:
    """One cluster's CARP bookkeeping; survives instance restarts so counters keep counting."""

    spec: Spec | None = None
    inst: ManagedInstance | None = None
    problem: str | None = None
    transitions: int = 0
    drops: dict = field(default_factory=lambda: {r: 0 for r in codec.REASONS})
    received_ok: int = 0
    adverts_sent: int = 0
    gratuitous_sent: int = 0
    demote: int = 0
    reasons: list = field(default_factory=list)
    peer: dict | None = None
    state: str = "init"
    state_since: float | None = None
    reason: str = ""
    auth_alarms: int = 0          # split-brain alarms raised (adverts failing authentication while master)


def tap_info(name: str) -> tuple[int, bool, list[str]] | None:
    """(ifindex, up, addresses: IPv4 then IPv6, link-local ones without a scope) of an interface in this
    namespace, or None if there is none of that name."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return None
        index = found[0]
        links = ipr.get_links(index)
        up = bool(links and links[0]["flags"] & IFF_UP)
        addrs = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in ipr.get_addr(family=family, index=index):
                a = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
                if a:
                    addrs.append(a)
        return index, up, addrs


async def _published(pending) -> None:
    """Waits for the publish set_owned started (it returns an awaitable, or None when nothing changes)."""
    if pending is None:
        return
    try:
        await pending
    except Exception:
        log.exception("publishing the ownership change failed")


class CarpManager:
    """The CARP instances of one daemon.

    set_owned(name, owned): this appliance forwards (or stops forwarding) for the cluster; returns an awaitable of
        the publish, or None when nothing changes (called on the loop).
    interface(): the TAP the instances run on (None if no data port has one).
    health(tap): (common reasons, {cluster name: has an edge UP}) from the data plane.
    event(name, level, **fields): the daemon's structured log.
    """

    def __init__(self, *, set_owned: Callable[[str, bool], Any], interface: Callable[[], str | None],
                 health: Callable[[str], tuple[list[str], dict[str, bool]]], event: Callable[..., None],
                 carp_src: str | None = None, carp_src6: str | None = None,
                 tap_lookup: Callable[[str], Any] = tap_info):
        self.set_owned = set_owned
        self.interface = interface
        self.health = health
        self.event = event
        self.carp_src = carp_src
        self.carp_src6 = carp_src6
        self.tap_lookup = tap_lookup
        self.entries: dict[str, Entry] = {}
        self.enabled = True
        # clusters found owned in the data plane when the daemon started (set by the daemon before run()): their
        # instances start as MASTER if the cluster IP is still on the TAP; each name is used at most once
        self.resume: set[str] = set()

    # ---- the loop ----

    async def run(self, get_cfg: Callable[[], Any], stop: asyncio.Event) -> None:
        """Reconciles every TICK_S until stop is set, then stops every instance gracefully (bow-out)."""
        try:
            while not stop.is_set():
                try:
                    await self.tick(get_cfg())
                except Exception:
                    log.exception("CARP manager")
                try:
                    await asyncio.wait_for(stop.wait(), TICK_S)
                except asyncio.TimeoutError:
                    pass
        finally:
            await self.stop_all("daemon stopping")

    async def tick(self, cfg) -> None:
        if cfg is None:
            return
        names = {cl.name for cl in cfg.clusters}
        wanted = {cl.name: cl for cl in cfg.clusters
                  if cl.enabled and cl.mode == "cluster" and cl.failover != "bgp"} if self.enabled \
            else {}
        for name in list(self.entries):
            if name not in wanted:
                await self._stop(name, "removed" if name not in names else "disabled")
                if name not in names:
                    del self.entries[name]
                else:
                    self.entries[name].problem = "disabled"
        for name in sorted(self.resume - set(wanted)):
            self._skip_resume(name, "the cluster is not run by CARP any more")
        if not wanted:
            return
        tap = self.interface()
        info = await asyncio.to_thread(self.tap_lookup, tap) if tap else None
        cluster_ips = {str(cl.cluster_ip) for cl in cfg.clusters}
        for name, cl in wanted.items():
            e = self.entries.setdefault(name, Entry())
            spec, problem = self._spec(cl, tap, info, cluster_ips)
            if spec is None:
                if name in self.resume:
                    self._skip_resume(name, problem)
                if e.inst is not None:
                    await self._stop(name, problem)
                if e.problem != problem:
                    self.event("carp_inactive", logging.WARNING, cluster=name, vhid=cl.carp.vhid, problem=problem)
                e.problem = problem
                continue
            if e.inst is not None and e.spec != spec:
                await self._stop(name, "interface re-created" if e.spec.ifindex != spec.ifindex and
                                 e.spec.interface == spec.interface else "settings changed")
            if e.inst is None:
                resume = False
                if name in self.resume:
                    resume = _same_ip(spec.addr, info[2])
                    if not resume:
                        self._skip_resume(name, f"the cluster IP {spec.addr} is no longer on {tap}")
                    self.resume.discard(name)
                await self._start(name, spec, resume=resume)
        await self._demote_all(tap)

    def _skip_resume(self, name: str, why: str) -> None:
        """A cluster found owned at start that will not resume as master: its ownership flag goes."""
        self.resume.discard(name)
        self.set_owned(name, False)
        self.event("carp_resume_skipped", logging.WARNING, cluster=name, reason=why)

    def _spec(self, cl, tap: str | None, info, cluster_ips: set[str]) -> tuple[Spec | None, str | None]:
        if not cl.carp.passphrase:
            return None, "no CARP passphrase is set (carp.passphrase or carp.passphrase_file)"
        if not tap:
            return None, "no data port has an exception (TAP) interface"
        if info is None:
            return None, f"interface {tap} not found (is the data plane running?)"
        index, up, addrs = info
        if not up:
            return None, f"interface {tap} is down"
        if cl.cluster_ip.version == 6:
            src = self.carp_src6
            if src is None:
                own6 = [a for a in map(_ip6, addrs) if a is not None and str(a) not in cluster_ips]
                src = next((str(a) for a in own6 if not a.is_link_local), None) or \
                    next((str(a) for a in own6 if a.is_link_local), None)
                if src is None:
                    return None, (f"no IPv6 address on {tap} (not even a link-local one): enable IPv6 on it, or "
                                  "pass --carp-src6")
        else:
            src = self.carp_src
            if src is None:
                src = next((a for a in addrs if ":" not in a and a not in cluster_ips), None)
                if src is None:
                    return None, f"no IPv4 address on {tap}: give it the appliance's own address, or pass --carp-src"
        key = cl.carp.passphrase.encode()
        return Spec(interface=tap, ifindex=index, srcip=src, vhid=cl.carp.vhid, addr=str(cl.cluster_ip),
                    advbase=cl.carp.advbase, advskew=cl.carp.advskew, preempt=cl.carp.preempt, key=key), None

    async def _demote_all(self, tap: str | None) -> None:
        try:
            common, edges_up = self.health(tap) if tap else (["dataplane"], {})
        except Exception:
            log.exception("CARP health check")
            common, edges_up = ["dataplane"], {}
        for name, e in self.entries.items():
            if e.inst is None:
                continue
            if "dataplane" in common:
                reasons, demote = ["dataplane"], DATAPLANE_DEMOTE
            else:
                reasons = list(common) + ([] if edges_up.get(name) else ["edges"])
                demote = len(reasons)
            if demote != e.demote or reasons != e.reasons:
                previous = e.demote
                e.demote, e.reasons = demote, reasons
                e.inst.set_demote(demote)
                self.event("carp_demoted" if demote else "carp_undemoted",
                           logging.WARNING if demote else logging.INFO, cluster=name, vhid=e.spec.vhid,
                           demote=demote, previous=previous, reasons=reasons)

    # ---- instances ----

    async def _start(self, name: str, spec: Spec, resume: bool = False) -> None:
        """Starts the cluster's instance: as BACKUP, or with resume as MASTER at once (see the module's doc)."""
        e = self.entries[name]
        cfg = driver.Config(interface=spec.interface, srcip=spec.srcip, vhid=spec.vhid, addr=spec.addr,
                            key=spec.key, advbase=spec.advbase, advskew=spec.advskew, preempt=spec.preempt,
                            mode="ucarp", mac="real")
        try:
            inst = ManagedInstance(cfg)
            inst.on_auth_alarm = lambda active, detail, name=name, vhid=spec.vhid: self._auth_alarm(name, vhid,
                                                                                                   active, detail)
        except ValueError as exc:
            problem = f"bad CARP settings: {exc}"
            if e.problem != problem:
                self.event("carp_inactive", logging.WARNING, cluster=name, vhid=spec.vhid, problem=problem)
            e.problem = problem
            return
        inst.on_take = lambda: self._take(name, inst)
        inst.on_release = lambda: self._release(name, inst)
        inst.on_state = lambda old, new, reason: self._state(name, inst, old, new, reason)
        # the demotion known now goes in before the start, so the first advertisement carries it
        e.demote, e.reasons = 0, []
        try:
            common, edges_up = self.health(spec.interface)
        except Exception:
            common, edges_up = ["dataplane"], {}
        if "dataplane" in common:
            e.demote, e.reasons = DATAPLANE_DEMOTE, ["dataplane"]
        else:
            e.reasons = list(common) + ([] if edges_up.get(name) else ["edges"])
            e.demote = len(e.reasons)
        inst.set_demote(e.demote)
        e.inst, e.spec = inst, spec
        try:
            await inst.start(resume=resume)
        except (OSError, ValueError, RuntimeError) as exc:
            e.inst = None
            _close_failed(inst)
            if resume:
                self.set_owned(name, False)
            problem = f"cannot start on {spec.interface}: {exc}"
            if e.problem != problem:
                self.event("carp_inactive", logging.WARNING, cluster=name, vhid=spec.vhid, problem=problem)
            e.problem = problem
            return
        e.problem = None
        self.event("carp_started", cluster=name, vhid=spec.vhid, interface=spec.interface, srcip=spec.srcip,
                   cluster_ip=spec.addr, advbase=spec.advbase, advskew=spec.advskew, preempt=spec.preempt,
                   demote=e.demote, demote_reasons=e.reasons, resumed=resume)
        if resume:
            self.event("carp_resumed", cluster=name, vhid=spec.vhid, interface=spec.interface, cluster_ip=spec.addr,
                       demote=e.demote, demote_reasons=e.reasons)

    async def _stop(self, name: str, why: str) -> None:
        e = self.entries.get(name)
        if e is None or e.inst is None:
            return
        inst, e.inst = e.inst, None
        try:
            await inst.stop()
        except Exception:
            log.exception("stopping CARP of cluster %s", name)
        self._fold(e, inst)
        self.set_owned(name, False)
        self.event("carp_stopped", cluster=name, vhid=inst.cfg.vhid, reason=why)

    async def stop_all(self, why: str) -> None:
        await asyncio.gather(*(self._stop(name, why) for name in list(self.entries)), return_exceptions=True)

    @staticmethod
    def _fold(e: Entry, inst: ManagedInstance) -> None:
        """Adds a stopped instance's counters to the cluster's totals."""
        got = inst.counters.as_dict()
        for r in codec.REASONS:
            e.drops[r] += int(got.get(r, 0))
        e.received_ok += int(got.get("ok", 0))
        e.adverts_sent += int(inst.stats.get("adverts_sent", 0))
        e.gratuitous_sent += int(inst.stats.get("gratuitous_sent", 0))
        if inst.peer is not None:
            e.peer = inst.peer

    # ---- hooks (run on the loop, in the machine's order) ----

    async def _take(self, name: str, inst: ManagedInstance) -> None:
        await _published(self.set_owned(name, True))     # forwarding first, then the address and the announcement
        try:
            await inst.take_address()
        except Exception as exc:
            self.event("carp_address_failed", logging.ERROR, cluster=name, vhid=inst.cfg.vhid, op="add",
                       interface=inst.cfg.interface, error=f"{type(exc).__name__}: {exc}")

    async def _release(self, name: str, inst: ManagedInstance) -> None:
        await _published(self.set_owned(name, False))
        try:
            await inst.release_address()
        except Exception as exc:
            if getattr(exc, "code", None) == 19:      # ENODEV: the TAP went away with its data plane
                return
            self.event("carp_address_failed", logging.ERROR, cluster=name, vhid=inst.cfg.vhid, op="del",
                       interface=inst.cfg.interface, error=f"{type(exc).__name__}: {exc}")

    def _state(self, name: str, inst: ManagedInstance, old, new, reason: str) -> None:
        e = self.entries.get(name)
        new_s, old_s = _state_name(new), _state_name(old)
        if e is not None:
            e.transitions += 1
            e.state, e.state_since, e.reason = new_s, time.time(), reason
        self.event("carp_transition", logging.WARNING if old_s == "master" and new_s == "backup" else logging.INFO,
                   cluster=name, vhid=inst.cfg.vhid, state=new_s, previous=old_s, reason=reason, source="carp",
                   interface=inst.cfg.interface, demote=inst.machine.demote)

    # ---- reading ----

    def managed(self, name: str) -> bool:
        return name in self.entries

    def _auth_alarm(self, name: str, vhid: int, active: bool, detail: str) -> None:
        e = self.entries.get(name)
        if active:
            if e is not None:
                e.auth_alarms += 1
            self.event("carp_split_brain_suspected", logging.WARNING, cluster=name, vhid=vhid, detail=detail)
        else:
            self.event("carp_split_brain_cleared", cluster=name, vhid=vhid)

    def status(self, name: str) -> dict | None:
        e = self.entries.get(name)
        if e is None:
            return None
        inst = e.inst
        drops = dict(e.drops)
        received_ok, sent, garp = e.received_ok, e.adverts_sent, e.gratuitous_sent
        peer = e.peer
        if inst is not None:
            got = inst.counters.as_dict()
            for r in codec.REASONS:
                drops[r] += int(got.get(r, 0))
            received_ok += int(got.get("ok", 0))
            sent += int(inst.stats.get("adverts_sent", 0))
            garp += int(inst.stats.get("gratuitous_sent", 0))
            peer = inst.peer or peer
            state = _state_name(inst.state)
        else:
            state = "inactive"
        out = {
            "state": state,
            "problem": e.problem if inst is None else None,
            "interface": e.spec.interface if e.spec else None,
            "srcip": e.spec.srcip if e.spec else None,
            "vhid": e.spec.vhid if e.spec else None,
            "advbase": e.spec.advbase if e.spec else None,
            "advskew": e.spec.advskew if e.spec else None,
            "preempt": e.spec.preempt if e.spec else None,
            "demote": e.demote if inst is not None else None,
            "demote_reasons": list(e.reasons) if inst is not None else [],
            "reason": e.reason,
            "state_since": e.state_since,
            "transitions": e.transitions,
            "adverts_sent": sent,
            "adverts_received": received_ok,
            "gratuitous_sent": garp,
            "drops": drops,
            "auth_alarm": bool(inst.auth_alarm) if inst is not None else False,
            "auth_alarm_detail": (inst.auth_detail or None) if inst is not None else None,
            "auth_alarms": e.auth_alarms,
            "peer_advert": None,
        }
        if peer is not None:
            out["peer_advert"] = {k: peer[k] for k in ("src", "advbase", "advskew", "demote", "interval")}
            out["peer_advert"]["age_s"] = round(max(0.0, time.monotonic() - peer["mono"]), 3)
        return out

    def metrics(self) -> list[tuple[str, dict]]:
        """(cluster, status) for every managed cluster (a snapshot, safe from another thread)."""
        out = []
        for name in list(self.entries):
            try:
                s = self.status(name)
            except Exception:       # changed under us: the next scrape sees it
                continue
            if s is not None:
                out.append((name, s))
        return out


def peer_text(s: dict | None) -> str:
    """The peer column of pydpctl status: its last advertisement's source and interval, and how long ago."""
    if not s:
        return "unknown"
    p = s.get("peer_advert")
    if not p:
        return "not heard"
    text = f"{p['src']} every {p['interval']:g}s"
    if p.get("demote"):
        text += f" demote {p['demote']}"
    return text + f" ({p['age_s']:.1f}s ago)"


def _same_ip(addr: str, addrs: list[str]) -> bool:
    """Whether addr is among the interface's addresses (compared as addresses, not as text)."""
    want = ipaddress.ip_address(addr)
    for a in addrs:
        try:
            if ipaddress.ip_address(a.partition("%")[0]) == want:
                return True
        except ValueError:
            continue
    return False


def _ip6(text: str):
    try:
        return ipaddress.IPv6Address(text.partition("%")[0])
    except ValueError:
        return None


def _state_name(state) -> str:
    return state.name.lower()


def _close_failed(inst: driver.Instance) -> None:
    """Closes what a failed start may have opened."""
    inst.abort()