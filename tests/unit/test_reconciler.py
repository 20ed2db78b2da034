"""The Reconciler (control.daemon.reconciler) on a region of our own (Region.create): no root, no data plane.

Each test plays the daemon's part: it gathers the inputs from the region, runs the actions (apply_config) and
reports back, then checks what is live. The stories of issue 12 are here at the unit level: a foreign publish
(an unmanaged data plane's SIGHUP) after drain/remove, an edge found down, and a slot reused on a backup.
"""

from __future__ import annotations

import logging

import pytest

from control import observe
from control.daemon.reconciler import (RETRY_S, Apply, DataplaneView, Event, Inputs, Reconciler, differences,
                                       summary)
from pydp import config as pconfig
from pydp._ffi import ffi, lib
from pydp.apply import apply_config

IDENTITY = (1, 4242, 1000)

TOML = """
[dataplane]
lcores = "0-1"
flow_capacity = 1024
maglev_size = 1021
[[port]]
name = "wan0"
device = "net_af_packet0,iface=eth1"
"""


def cluster_text(name, ip, vhid, edges, mode="cluster", enabled=True):
    t = (f'[[cluster]]\nname = "{name}"\ncluster_ip = "{ip}"\nmode = "{mode}"\n'
         f'enabled = {"true" if enabled else "false"}\n[cluster.carp]\nvhid = {vhid}\n')
    for e, last, state in edges:
        t += f'[[cluster.edge]]\nname = "{e}"\nip = "198.51.100.{last}"\nmac = "02:00:00:00:00:{last:02x}"\n'
        if state != "active":
            t += f'state = "{state}"\n'
    return t


WEB = [("e1", 21, "active"), ("e2", 22, "active"), ("e3", 23, "active")]


pytestmark = pytest.mark.region(workers=1)     # the shared region fixture (tests/conftest.py), one worker


def load(*clusters) -> pconfig.ApplianceConfig:
    return pconfig.loads(TOML + "".join(clusters))


class Harness:
    """The daemon's side of the loop: inputs from the region, actions run, outcomes reported."""

    def __init__(self, region, cfg, *, own_all=False):
        self.region = region
        self.rec = Reconciler()
        self.cfg = cfg
        self.revision = 1
        self.health: dict = {}
        self.carp_owned: frozenset = frozenset()
        self.own_all = own_all
        self.now = 100.0
        self.events: list[Event] = []
        self.reloads = 0
        self.fail_next = False

    def inputs(self) -> Inputs:
        h = self.region.hdr
        dp = DataplaneView(identity=IDENTITY, alive=True, generation=int(h.generation),
                           clusters=observe.clusters(self.region), reload_requests=int(h.reload_requests))
        return Inputs(config=self.cfg, revision=self.revision, dataplane=dp, health=dict(self.health),
                      carp_owned=self.carp_owned, own_all=self.own_all, now=self.now)

    def step(self, reason=None) -> list:
        actions = self.rec.step(self.inputs(), reason)
        for a in actions:
            if isinstance(a, Event):
                self.events.append(a)
            elif isinstance(a, Apply):
                if self.fail_next:
                    self.fail_next = False
                    self.rec.failed_apply(a, self.now)
                    continue
                res = apply_config(self.region, a.desired.config, owned=a.desired.owned,
                                   edge_health=a.desired.edge_health)
                self.rec.applied(a, IDENTITY, res.generation, observe.clusters(self.region))
        return actions

    def live(self) -> dict:
        return observe.clusters(self.region)


def kinds(actions):
    return [type(a).__name__ + (f":{a.name}" if isinstance(a, Event) else "") for a in actions]


def edge_states(live, cluster):
    return {n: e["state"] for n, e in live[cluster]["edges"].items()}


def foreign_publish(region, cfg, owned=()):
    """What an unmanaged data plane's SIGHUP does: its file's clusters, published by another writer."""
    return apply_config(region, cfg, owned=owned).generation


def test_first_look_publishes_the_store_with_ownership(region):
    cfg = load(cluster_text("web", "203.0.113.10", 10, WEB),
               cluster_text("solo", "203.0.113.11", 11, [("s1", 31, "active")], mode="standalone"),
               cluster_text("off", "203.0.113.12", 12, [("o1", 41, "active"), ("o2", 42, "active")], enabled=False))
    h = Harness(region, cfg)
    actions = h.step()
    assert kinds(actions) == ["Apply"] and actions[0].reason == "data plane attached"
    live = h.live()
    # standalone is always owned; a CARP cluster only once CARP says master; a disabled one never
    assert live["solo"]["active"] and not live["web"]["active"] and not live["off"]["active"]
    assert h.step() == []                                  # nothing changed: nothing published
    gen = region.generation
    h.carp_owned = frozenset({"web", "off"})
    actions = h.step("carp: master of web")
    assert kinds(actions) == ["Apply"] and actions[0].reason == "carp: master of web"
    assert region.generation == gen + 1
    live = h.live()
    assert live["web"]["active"] and not live["off"]["active"]


def test_own_all_owns_every_enabled_cluster(region):
    cfg = load(cluster_text("web", "203.0.113.10", 10, WEB),
               cluster_text("off", "203.0.113.12", 12, [("o1", 41, "active"), ("o2", 42, "active")], enabled=False))
    h = Harness(region, cfg, own_all=True)
    h.step()
    live = h.live()
    assert live["web"]["active"] and not live["off"]["active"]


def test_story1_foreign_publish_after_drain_and_remove_is_repaired(region):
    # the store: e1 draining, e3 removed; the file a data plane would re-read still has all three active
    toml_cfg = load(cluster_text("web", "203.0.113.10", 10, WEB))
    h = Harness(region, load(cluster_text("web", "203.0.113.10", 10, WEB)), own_all=True)
    h.step()
    h.cfg = load(cluster_text("web", "203.0.113.10", 10, [("e1", 21, "draining"), ("e2", 22, "active")]))
    h.revision = 2
    h.step()
    assert edge_states(h.live(), "web") == {"e1": "draining", "e2": "up"}
    published = region.generation

    foreign = foreign_publish(region, toml_cfg, owned={"web"})
    assert foreign == published + 1
    assert edge_states(h.live(), "web") == {"e1": "up", "e2": "up", "e3": "up"}
    actions = h.step()
    assert kinds(actions) == ["Event:config_drift", "Apply"]
    drift = actions[0]
    assert drift.level == logging.WARNING and drift.fields["generation"] == foreign
    assert drift.fields["published_generation"] == published
    diff = " | ".join(drift.fields["differences"])
    assert "edge e3 is live but was not published" in diff
    assert "edge e1 ip/state/weight 198.51.100.21/up/1 (published 198.51.100.21/draining/1)" in diff
    assert actions[1].reason.startswith("drift")
    assert edge_states(h.live(), "web") == {"e1": "draining", "e2": "up"}      # the store again
    assert h.rec.status()["drifts"] == 1 and h.rec.status()["drift"] is None
    assert h.step() == []


def test_drift_shows_in_status_until_repaired(region):
    h = Harness(region, load(cluster_text("web", "203.0.113.10", 10, WEB)), own_all=True)
    h.step()
    foreign_publish(region, load(cluster_text("web", "203.0.113.10", 10, WEB[:2])), owned={"web"})
    h.fail_next = True                                   # the repair fails (e.g. a worker stuck): drift stays
    h.step()
    st = h.rec.status()
    assert st["drift"] is not None and st["drift"]["generation"] == region.generation
    assert any("e3 was published but is not live" in d for d in st["drift"]["differences"])
    h.step()                                             # the next look repairs it (a new drift of the same gen)
    assert h.rec.status()["drift"] is None
    assert set(h.live()["web"]["edges"]) == {"e1", "e2", "e3"}


def test_story2_edge_down_stays_down_through_a_foreign_publish(region):
    cfg = load(cluster_text("web", "203.0.113.10", 10, WEB))
    h = Harness(region, cfg, own_all=True)
    h.step()
    h.health = {("web", "e3"): False, ("web", "e1"): True}
    actions = h.step("health: edge e3 of cluster web down")
    assert kinds(actions) == ["Apply"]
    assert edge_states(h.live(), "web")["e3"] == "down"
    foreign_publish(region, cfg, owned={"web"})          # the file knows nothing of health: e3 comes back up
    assert edge_states(h.live(), "web")["e3"] == "up"
    actions = h.step()
    assert kinds(actions) == ["Event:config_drift", "Apply"]
    assert any("edge e3" in d for d in actions[0].fields["differences"])
    assert edge_states(h.live(), "web") == {"e1": "up", "e2": "up", "e3": "down"}


def test_story3_reused_slot_never_inherits_ownership(region):
    # a backup: "old" is owned (say it was master once), then deleted; "new" takes its slot and is not owned
    h = Harness(region, load(cluster_text("old", "203.0.113.10", 10, WEB)))
    h.carp_owned = frozenset({"old"})
    h.step()
    slot = h.live()["old"]["slot"]
    assert h.live()["old"]["active"]
    h.cfg = load(cluster_text("new", "203.0.113.20", 20, [("n1", 51, "active"), ("n2", 52, "active")]))
    h.carp_owned = frozenset()
    h.revision = 2
    h.step()
    live = h.live()
    assert set(live) == {"new"} and live["new"]["slot"] == slot and not live["new"]["active"]
    # the deleted cluster comes back from a file into that slot (unmanaged SIGHUP): not owned, since ownership is
    # published with the cluster; then the daemon puts the store back
    old_cfg = load(cluster_text("old", "203.0.113.10", 10, WEB))
    foreign_publish(region, old_cfg, owned=())
    assert h.live()["old"]["slot"] == slot and not h.live()["old"]["active"]
    actions = h.step()
    assert kinds(actions) == ["Event:config_drift", "Apply"]
    assert set(h.live()) == {"new"} and not h.live()["new"]["active"]


def test_publish_and_ownership_are_one_generation(region):
    """The race of issue 12: ownership set after the publish left a reused slot owned by the previous cluster's
    flag for a moment. Now every generation a worker can load carries the ownership of the clusters in it."""
    a = load(cluster_text("a", "203.0.113.10", 10, WEB))
    b = load(cluster_text("b", "203.0.113.20", 20, [("n1", 51, "active"), ("n2", 52, "active")]))
    seen = []
    for i in range(40):
        cfg, owned = (a, {"a"}) if i % 2 == 0 else (b, set())
        gen = apply_config(region, cfg, owned=owned).generation
        slot_cfg = region.config()
        assert int(slot_cfg.generation) == gen
        live = observe.clusters(region)
        seen.append((gen, {n: c["active"] for n, c in live.items()}))
    for gen, owned in seen:
        assert owned == ({"a": True} if gen % 2 == seen[0][0] % 2 else {"b": False}), (gen, owned)
    # the other slot (the previous generation) holds its own ownership, never the neighbour's
    prev = lib.pydp_shm_config(region._shm, region.generation - 1)
    names = {ffi.string(prev.clusters[i].name).decode(): bool(prev.clusters[i].owned)
             for i in range(lib.PYDP_MAX_CLUSTERS) if prev.clusters[i].family != lib.PYDP_AF_NONE}
    assert names == {"a": True}


def test_reload_request_reapplies_the_store(region):
    cfg = load(cluster_text("web", "203.0.113.10", 10, WEB))
    h = Harness(region, cfg, own_all=True)
    h.step()
    gen = region.generation
    region.hdr.reload_requests += 1                      # what a managed data plane does on SIGHUP
    actions = h.step()
    assert kinds(actions) == ["Event:reload_requested", "Apply"]
    assert "reload requested" in actions[1].reason
    assert region.generation == gen + 1
    assert h.step() == []


def test_same_content_new_revision_counts_as_applied(region):
    cfg = load(cluster_text("web", "203.0.113.10", 10, WEB))
    h = Harness(region, cfg, own_all=True)
    h.step()
    gen = region.generation
    h.revision = 7                                       # e.g. an import of the same file
    assert h.step() == []
    assert h.rec.applied_revision == 7 and region.generation == gen


def test_failed_apply_is_retried_after_the_retry_interval(region):
    h = Harness(region, load(cluster_text("web", "203.0.113.10", 10, WEB)), own_all=True)
    h.fail_next = True
    assert kinds(h.step()) == ["Apply"]                  # tried, failed
    h.rec.identity = IDENTITY                            # the data plane is known; only the retry rule is left
    assert h.step() == []
    h.now += RETRY_S + 0.1
    assert kinds(h.step()) == ["Apply"]
    assert "web" in h.live()


def test_new_dataplane_gets_the_store_without_drift(region):
    h = Harness(region, load(cluster_text("web", "203.0.113.10", 10, WEB)), own_all=True)
    h.step()
    foreign_publish(region, load(cluster_text("web", "203.0.113.10", 10, WEB[:2])), owned={"web"})
    h.rec.forget_dataplane()                             # the daemon saw a restart: a new region
    actions = h.step()
    assert kinds(actions) == ["Apply"] and actions[0].reason == "data plane restarted"
    assert h.rec.drifts == 0


def test_differences_cover_every_field():
    a = {"web": {"cluster_ip": "203.0.113.10", "enabled": True, "owned": True, "dsr": "l2",
                 "edges": {"e1": ("198.51.100.21", "up", 1)}}}
    live = {"web": {"cluster_ip": "203.0.113.11", "enabled": False, "owned": False, "dsr": "ipip",
                    "edges": {"e1": ("198.51.100.21", "down", 2)}}, "x": a["web"]}
    d = differences(a, live)
    assert "cluster x is live but was not published" in d
    for k in ("cluster_ip", "enabled", "owned", "dsr"):
        assert any(s.startswith(f"cluster web: {k} ") for s in d), k
    assert "cluster web: edge e1 ip/state/weight 198.51.100.21/down/2 (published 198.51.100.21/up/1)" in d
    assert differences(a, {}) == ["cluster web was published but is not live"]
    assert differences(a, a) == []


def test_summary_reads_observe_clusters(region):
    cfg = load(cluster_text("web", "203.0.113.10", 10, WEB))
    apply_config(region, cfg, owned={"web"})
    s = summary(observe.clusters(region))
    assert s["web"]["owned"] is True and s["web"]["edges"]["e2"] == ("198.51.100.22", "up", 1)


# ---- failover = "bgp": ownership and announcements (issue 15) ----

BGP = """
[bgp]
local_as = 64512
router_id = "198.51.100.11"
drain_timeout = 30
[[bgp.peer]]
address = "198.51.100.1"
as = 64500
"""


def bgp_cluster(name, ip, edges, enabled=True):
    return cluster_text(name, ip, 1, edges, enabled=enabled).replace('mode = "cluster"\n',
                                                                      'mode = "cluster"\nfailover = "bgp"\n')


class BgpHarness(Harness):
    """The harness with the appliance's drain and the data plane's freshness as inputs."""

    def __init__(self, region, cfg):
        super().__init__(region, cfg)
        self.draining_since = None
        self.drain_timeout = None
        self.fresh = True
        self.alive = True
        # every edge checked up (an edge not checked yet is not announced for: see the test below)
        self.health = {(cl.name, e.name): True for cl in cfg.clusters for e in cl.edges}

    def inputs(self) -> Inputs:
        import dataclasses
        inp = super().inputs()
        dp = dataclasses.replace(inp.dataplane, alive=self.alive)
        return dataclasses.replace(inp, dataplane=dp, dp_fresh=self.fresh, draining_since=self.draining_since,
                                   drain_timeout=self.drain_timeout)

    def announced(self) -> dict:
        return self.rec.announcements(self.inputs())


def test_bgp_clusters_are_owned_without_carp_and_announced_once_published(region):
    cfg = load(BGP + bgp_cluster("web", "203.0.113.10", WEB),
               cluster_text("db", "203.0.113.11", 7, [("d1", 31, "active"), ("d2", 32, "active")]),
               bgp_cluster("off", "203.0.113.12", [("o1", 41, "active"), ("o2", 42, "active")], enabled=False))
    h = BgpHarness(region, cfg)
    # before the first publish the route is not offered: the data plane does not forward for it yet
    assert h.announced() == {"web": (False, "not published yet"), "off": (False, "disabled")}
    h.step()
    live = h.live()
    assert live["web"]["active"] and not live["db"]["active"] and not live["off"]["active"]
    assert h.announced() == {"web": (True, "fit"), "off": (False, "disabled")}   # db is CARP's: not listed


def test_bgp_withdraw_reasons_and_back(region):
    cfg = load(BGP + bgp_cluster("web", "203.0.113.10", [("e1", 21, "active"), ("e2", 22, "draining")]))
    h = BgpHarness(region, cfg)
    h.step()
    assert h.announced()["web"] == (True, "fit")
    # the only active edge found down: withdrawn (the draining one does not count), still owned (flows go on)
    h.health = {("web", "e1"): False, ("web", "e2"): True}
    h.step()
    assert h.announced()["web"] == (False, "no healthy edge") and h.live()["web"]["active"]
    h.health = {("web", "e2"): True}                         # e1 not checked yet: forwarded to, not announced
    h.step()
    assert h.announced()["web"] == (False, "edges not checked yet")
    h.health = {("web", "e1"): True}
    h.step()
    assert h.announced()["web"] == (True, "fit")
    h.fresh = False
    assert h.announced()["web"] == (False, "data plane stale")
    h.fresh = True
    h.alive = False
    assert h.announced()["web"] == (False, "data plane down")
    h.alive = True
    assert h.announced()["web"] == (True, "fit")


def test_bgp_drain_withdraws_at_once_and_lets_go_after_the_timeout(region):
    cfg = load(BGP + bgp_cluster("web", "203.0.113.10", WEB))
    h = BgpHarness(region, cfg)
    h.step()
    h.draining_since = h.now
    assert h.step() == []                                   # withdrawn, but still owned: established flows go on
    assert h.announced()["web"] == (False, "draining") and h.live()["web"]["active"]
    h.now += 29.9
    assert h.step() == [] and h.live()["web"]["active"]
    h.now += 0.1                                            # [bgp] drain_timeout = 30 s reached: let go
    actions = h.step()
    assert kinds(actions) == ["Apply"] and not h.live()["web"]["active"]
    assert h.announced()["web"] == (False, "draining")
    h.draining_since = None                                 # undrain: owned again, then announced
    assert h.announced()["web"] == (False, "not published yet")
    h.step()
    assert h.live()["web"]["active"] and h.announced()["web"] == (True, "fit")


def test_bgp_drain_timeout_of_the_drain_itself(region):
    cfg = load(BGP + bgp_cluster("web", "203.0.113.10", WEB))
    h = BgpHarness(region, cfg)
    h.step()
    h.draining_since, h.drain_timeout = h.now, 0.0          # `pydpctl appliance drain --timeout 0`
    h.step()
    assert not h.live()["web"]["active"]


def test_bgp_new_dataplane_is_not_announced_before_its_first_publish(region):
    cfg = load(BGP + bgp_cluster("web", "203.0.113.10", WEB))
    h = BgpHarness(region, cfg)
    h.step()
    assert h.announced()["web"][0]
    h.rec.forget_dataplane()                                # the data plane restarted
    assert h.announced()["web"] == (False, "not published yet")
    h.step()
    assert h.announced()["web"] == (True, "fit")
