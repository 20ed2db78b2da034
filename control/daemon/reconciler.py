"""The Reconciler: decides when and what pydp-control publishes to the data plane. Sans-I/O.

It is fed what the daemon observes -- the store's config and revision, the attached data plane's identity,
generation and live clusters, edge health, CARP ownership, resolved MACs, the clock -- and returns the actions to
take. It touches no socket, file or region: the daemon (control.daemon.main) gathers the inputs, runs the actions
and reports their outcome back (``applied`` / ``failed``), so every rule below is unit-tested without root.

The rules (level-triggered: every call compares what should be live with what is):

* What should be live is the store's config with the MACs resolved here filled in, the edges found down by health
  checks marked DOWN, and ownership: an enabled cluster is owned when --own-all is on, when it is standalone, when
  its CARP instance is master, or, for failover = "bgp", unless the appliance has been draining for longer than
  [bgp] drain_timeout. Ownership is published in the same generation as the clusters.
* A bgp cluster is announced (its route offered to the BGP peers, see ``announcements``) while the data plane is
  alive and its heartbeat fresh, the cluster is enabled and published as owned, at least one of its active edges
  has been found up by its health check, and the appliance is not draining.
* A data plane seen for the first time (new identity) gets that config at once.
* A generation this daemon did not publish is drift (another writer: a data plane's SIGHUP without --managed, a
  tool, a bug). It is reported with what differs from what was published and the store is applied again at once.
* A managed data plane's reload request (SIGHUP) applies the store again.
* A change of what should be live (store, health, ownership, MACs) is applied; a failed apply of the same desired
  state is retried every RETRY_S.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

RETRY_S = 10.0


@dataclass(frozen=True)
class DataplaneView:
    """What the daemon sees of the attached data plane."""
    identity: tuple                 # (inode, pid, created_ms): a new one is a new data plane
    alive: bool
    generation: int
    clusters: dict                  # control.observe.clusters(region): the live config
    managed: bool = True
    reload_requests: int = 0


@dataclass(frozen=True)
class Inputs:
    config: Any                     # pydp.config.ApplianceConfig read from the store (None: not read yet)
    revision: int | None
    dataplane: DataplaneView | None
    health: dict = field(default_factory=dict)          # (cluster, edge) -> bool, the edges decided so far
    carp_owned: frozenset = frozenset()                 # clusters whose CARP instance is master
    own_all: bool = False
    macs: dict = field(default_factory=dict)            # edge IP -> MAC resolved here
    now: float = 0.0                                    # monotonic seconds
    dp_fresh: bool = True                               # the data plane's heartbeat is recent (< 1 s)
    draining_since: float | None = None                 # monotonic time of `pydpctl appliance drain`; None: not
    drain_timeout: float | None = None                  # that drain's timeout; None: [bgp] drain_timeout


@dataclass(frozen=True)
class Desired:
    """The config to publish and the clusters to own in the same generation."""
    config: Any
    owned: frozenset
    edge_health: dict
    key: str                        # digest of all of it: equal keys, equal publishes


@dataclass(frozen=True)
class Apply:
    desired: Desired
    reason: str
    revision: int | None


@dataclass(frozen=True)
class Event:
    name: str
    level: int
    fields: dict


def is_bgp(cl) -> bool:
    """The cluster is announced over BGP (active-active) rather than elected by CARP."""
    return cl.mode == "cluster" and cl.failover == "bgp"


def drain_expired(cfg, now: float, draining_since: float | None, timeout: float | None = None) -> bool:
    """The appliance has been draining for longer than the drain's timeout (default: [bgp] drain_timeout): its bgp
    clusters are let go."""
    if draining_since is None:
        return False
    if timeout is None:
        timeout = cfg.bgp.drain_timeout if cfg is not None and cfg.bgp is not None else 0.0
    return now - draining_since >= timeout


def wants_owned(cl, *, own_all: bool, carp_owned, bgp_expired: bool = False) -> bool:
    """Whether this appliance forwards for the cluster now."""
    if not cl.enabled:
        return False
    if own_all or cl.mode == "standalone":
        return True
    if is_bgp(cl):
        return not bgp_expired
    return cl.name in carp_owned


def ownership_source(cfg, name: str, own_all: bool) -> str:
    """Why a cluster is (or is not) owned: carp, bgp, standalone, own-all, disabled, removed."""
    for cl in (cfg.clusters if cfg is not None else []):
        if cl.name == name:
            if not cl.enabled:
                return "disabled"
            if cl.mode == "standalone":
                return "standalone"
            if own_all:
                return "own-all"
            return "bgp" if is_bgp(cl) else "carp"
    return "removed"


def announcements(inp: Inputs, published_owned: frozenset) -> dict:
    """{bgp cluster: (announce, reason)}: whether this appliance offers the cluster's route to its BGP peers now,
    and why (or why not). published_owned: the clusters owned in the generation the data plane runs (a route is
    never offered before the data plane forwards for it). Reasons: "fit", "disabled", "data plane down", "data
    plane stale", "draining", "edges not checked yet", "no healthy edge", "not published yet"."""
    cfg = inp.config
    if cfg is None:
        return {}
    dp = inp.dataplane
    out = {}
    for cl in cfg.clusters:
        if not is_bgp(cl):
            continue
        verdicts = [inp.health.get((cl.name, e.name)) for e in cl.edges if e.state == "active"]
        if not cl.enabled:
            why = "disabled"
        elif dp is None or not dp.alive:
            why = "data plane down"
        elif not inp.dp_fresh:
            why = "data plane stale"
        elif inp.draining_since is not None:
            why = "draining"
        elif True not in verdicts:
            # an edge not checked yet is forwarded to, but not announced for: joining the ECMP group waits for
            # the first verdict that an edge is up
            why = "edges not checked yet" if None in verdicts else "no healthy edge"
        elif cl.name not in published_owned:
            why = "not published yet"
        else:
            why = "fit"
        out[cl.name] = (why == "fit", why)
    return out


def with_macs(cfg, macs: dict, live: dict | None = None) -> tuple[Any, dict]:
    """cfg with the MACs resolved here filled in for l2 edges configured without one; returns (config, MACs
    adopted from the live data plane). An edge the data plane already holds a MAC for keeps it (a daemon restart
    then changes nothing: no edge goes down, no table is rebuilt, no flow moves)."""
    need = [(cl, e) for cl in cfg.clusters if cl.dsr == "l2" for e in cl.edges if not e.mac]
    if not need:
        return cfg, {}
    out = copy.deepcopy(cfg)
    by_name = {cl.name: cl for cl in out.clusters}
    adopted = {}
    for cl, e in need:
        ip = str(e.ip)
        mac = macs.get(ip)
        if mac is None and live:
            prev = live.get(cl.name, {}).get("edges", {}).get(e.name)
            if prev and prev["ip"] == ip and prev["mac"]:
                mac = adopted[ip] = prev["mac"]
        if mac is None:
            continue
        for oe in by_name[cl.name].edges:
            if oe.name == e.name:
                oe.mac = mac
    return out, adopted


def summary(clusters: dict) -> dict:
    """What matters of a live config for drift: per cluster its address, switches, ownership and edges."""
    return {name: {"cluster_ip": c["cluster_ip"], "enabled": c["enabled"], "owned": c["active"], "dsr": c["dsr"],
                   "edges": {en: (e["ip"], e["state"], e["weight"]) for en, e in c["edges"].items()}}
            for name, c in clusters.items()}


def differences(expected: dict, live: dict) -> list[str]:
    """Human-readable differences between two summaries (expected = what this daemon published)."""
    out = []
    for name in sorted(set(expected) | set(live)):
        a, b = expected.get(name), live.get(name)
        if a is None:
            out.append(f"cluster {name} is live but was not published")
            continue
        if b is None:
            out.append(f"cluster {name} was published but is not live")
            continue
        for k in ("cluster_ip", "enabled", "owned", "dsr"):
            if a[k] != b[k]:
                out.append(f"cluster {name}: {k} {b[k]} (published {a[k]})")
        for en in sorted(set(a["edges"]) | set(b["edges"])):
            ea, eb = a["edges"].get(en), b["edges"].get(en)
            if ea is None:
                out.append(f"cluster {name}: edge {en} is live but was not published")
            elif eb is None:
                out.append(f"cluster {name}: edge {en} was published but is not live")
            elif ea != eb:
                out.append(f"cluster {name}: edge {en} ip/state/weight {eb[0]}/{eb[1]}/{eb[2]} "
                           f"(published {ea[0]}/{ea[1]}/{ea[2]})")
    return out


def _key(cfg, owned: frozenset, health: dict) -> str:
    h = hashlib.sha256()
    h.update(repr(dataclasses.asdict(cfg)).encode())
    h.update(repr(sorted(owned)).encode())
    h.update(repr(sorted(health.items())).encode())
    return h.hexdigest()[:16]


class Reconciler:
    """The publishing rules; see the module doc. One instance per daemon, used from one thread."""

    def __init__(self) -> None:
        self.identity: tuple | None = None       # data plane the last publish went to
        self.seen_dataplane = False              # published to a data plane before (a new one is a restart)
        self.generation: int | None = None       # generation of the last publish by this daemon
        self.applied_key: str | None = None
        self.applied_revision: int | None = None
        self.expected: dict | None = None        # summary of the live config right after that publish
        self.reloads_seen: int | None = None
        self.failed: tuple | None = None         # (key, monotonic time) of the last failed apply
        self.drift: dict | None = None           # the drift being repaired: since, generation, differences
        self.drifts = 0                          # drifts detected since start
        self.adopted: dict = {}                  # MACs taken over from the live data plane, for the resolver
        self.published_owned: frozenset = frozenset()   # clusters owned in the last publish to this data plane

    def desired(self, inp: Inputs) -> Desired:
        live = inp.dataplane.clusters if inp.dataplane is not None else None
        cfg, self.adopted = with_macs(inp.config, inp.macs, live)
        expired = drain_expired(cfg, inp.now, inp.draining_since, inp.drain_timeout)
        owned = frozenset(cl.name for cl in cfg.clusters
                          if wants_owned(cl, own_all=inp.own_all, carp_owned=inp.carp_owned, bgp_expired=expired))
        names = {(cl.name, e.name) for cl in cfg.clusters for e in cl.edges}
        health = {k: v for k, v in inp.health.items() if k in names and v is False}
        return Desired(config=cfg, owned=owned, edge_health=health, key=_key(cfg, owned, health))

    def step(self, inp: Inputs, reason: str | None = None) -> list:
        """The actions the inputs call for: Event(s), then at most one Apply."""
        dp = inp.dataplane
        if inp.config is None or dp is None or not dp.alive:
            return []
        out: list = []
        desired = self.desired(inp)
        why = None
        if dp.identity != self.identity:
            why = "data plane restarted" if self.seen_dataplane else "data plane attached"
            self.reloads_seen = dp.reload_requests
        else:
            if self.generation is not None and dp.generation != self.generation:
                live = summary(dp.clusters)
                diff = differences(self.expected or {}, live)
                self.drifts += 1
                self.drift = {"since": inp.now, "generation": dp.generation, "published": self.generation,
                              "differences": diff}
                out.append(Event("config_drift", logging.WARNING,
                                 {"generation": dp.generation, "published_generation": self.generation,
                                  "differences": diff or ["content equal; generation changed"],
                                  "action": "re-applying the store"}))
                why = "drift: a generation this daemon did not publish"
            if self.reloads_seen is not None and dp.reload_requests != self.reloads_seen:
                out.append(Event("reload_requested", logging.INFO, {"requests": dp.reload_requests,
                                                                    "action": "re-applying the store"}))
                self.reloads_seen = dp.reload_requests
                why = why or "reload requested by the data plane (SIGHUP)"
            if self.reloads_seen is None:
                self.reloads_seen = dp.reload_requests
        if why is None and desired.key != self.applied_key:
            if self.failed and self.failed[0] == desired.key and inp.now - self.failed[1] < RETRY_S:
                return out                       # a failed apply is retried every RETRY_S, not at every look
            why = reason or ("store changed" if inp.revision != self.applied_revision else "state changed")
        if why is not None:
            out.append(Apply(desired=desired, reason=why, revision=inp.revision))
        elif desired.key == self.applied_key:
            self.applied_revision = inp.revision     # a new revision with the same content: live already equals it
        return out

    def applied(self, action: Apply, identity: tuple, generation: int, live: dict) -> None:
        """The daemon published action.desired as `generation` to the data plane `identity`; `live` is
        control.observe.clusters() read right after."""
        self.identity = identity
        self.seen_dataplane = True
        self.generation = generation
        self.applied_key = action.desired.key
        self.applied_revision = action.revision
        self.published_owned = action.desired.owned
        self.expected = summary(live)
        self.failed = None
        self.drift = None

    def failed_apply(self, action: Apply, now: float) -> None:
        self.failed = (action.desired.key, now)

    def forget_dataplane(self) -> None:
        """The data plane went away: the next one is new, whatever it publishes first."""
        self.identity = None
        self.generation = None
        self.published_owned = frozenset()
        self.expected = None
        self.reloads_seen = None
        self.drift = None

    def announcements(self, inp: Inputs) -> dict:
        """{bgp cluster: (announce, reason)} for these inputs and what was last published (see the function)."""
        live = inp.dataplane is not None and inp.dataplane.identity == self.identity
        return announcements(inp, self.published_owned if live else frozenset())

    def status(self) -> dict:
        return {"published_generation": self.generation, "applied_revision": self.applied_revision,
                "drift": self.drift, "drifts": self.drifts}
