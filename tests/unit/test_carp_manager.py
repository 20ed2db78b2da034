"""control.carp_manager without sockets: when CARP can run for a cluster, what it runs with, and the demotion rules.
The live behaviour (two appliances, real packets) is tests/netns/test_failover_live.py."""

from __future__ import annotations

import asyncio

import pytest

from control import carp_manager
from pydp import config

SECRET = "not-in-any-repr"


def appliance(*clusters: str) -> config.ApplianceConfig:
    text = ""
    for i, (name, ip, extra) in enumerate(clusters):
        edges = ('[[cluster.edge]]\nname = "e1"\nip = "198.51.100.21"\nmac = "02:00:00:00:02:01"\n'
                 '[[cluster.edge]]\nname = "e2"\nip = "198.51.100.22"\nmac = "02:00:00:00:02:02"\n') \
            if ":" not in ip else ('[[cluster.edge]]\nname = "e1"\nip = "2001:db8::21"\n'
                                   '[[cluster.edge]]\nname = "e2"\nip = "2001:db8::22"\n')
        text += f'[[cluster]]\nname = "{name}"\ncluster_ip = "{ip}"\n{extra}\n[cluster.carp]\nvhid = {i + 1}\n' \
                f'advskew = 20\n{"" if "nopass" in name else f"passphrase = {SECRET!r}"}\n' + edges
    return config.loads(text, require_ports=False)


def manager(tap="pydp-p0", info=(7, True, ["198.51.100.2"]), carp_src=None, health=(["link"], {}), events=None):
    events = events if events is not None else []
    return carp_manager.CarpManager(
        set_owned=lambda name, owned: None, interface=lambda: tap, health=lambda t: health,
        event=lambda name, level=20, **f: events.append((name, f)), carp_src=carp_src,
        tap_lookup=lambda name: info)


@pytest.mark.parametrize("kwargs, cluster, problem", [
    ({}, ("web6", "2001:db8::10", ""), "no IPv6 address on pydp-p0"),
    ({}, ("nopass", "198.51.100.10", ""), "no CARP passphrase"),
    ({"tap": None}, ("web", "198.51.100.10", ""), "no data port has an exception (TAP) interface"),
    ({"info": None}, ("web", "198.51.100.10", ""), "interface pydp-p0 not found"),
    ({"info": (7, False, ["198.51.100.2"])}, ("web", "198.51.100.10", ""), "interface pydp-p0 is down"),
    ({"info": (7, True, [])}, ("web", "198.51.100.10", ""), "no IPv4 address on pydp-p0"),
    # the cluster IP itself (left on the TAP by a killed daemon) is never the source
    ({"info": (7, True, ["198.51.100.10"])}, ("web", "198.51.100.10", ""), "no IPv4 address on pydp-p0"),
])
def test_problems_keep_carp_off(kwargs, cluster, problem):
    events = []
    m = manager(events=events, **kwargs)
    cfg = appliance(cluster)
    asyncio.run(m.tick(cfg))
    e = m.entries[cluster[0]]
    assert e.inst is None and problem in e.problem
    assert m.status(cluster[0])["state"] == "inactive" and problem in m.status(cluster[0])["problem"]
    assert [n for n, _ in events] == ["carp_inactive"]
    asyncio.run(m.tick(cfg))
    assert len(events) == 1                 # a problem is logged when it appears, not every tick


def test_spec_source_and_settings():
    m = manager(info=(9, True, ["198.51.100.10", "198.51.100.2", "198.51.100.7"]))
    cl = appliance(("web", "198.51.100.10", "")).clusters[0]
    spec, problem = m._spec(cl, "pydp-p0", (9, True, ["198.51.100.10", "198.51.100.2"]), {"198.51.100.10"})
    assert problem is None
    assert (spec.interface, spec.ifindex, spec.srcip, spec.vhid, spec.addr, spec.advskew, spec.preempt) == \
        ("pydp-p0", 9, "198.51.100.2", 1, "198.51.100.10", 20, True)
    assert spec.key == SECRET.encode() and SECRET not in repr(spec)
    m.carp_src = "198.51.100.5"             # --carp-src wins, also without an address on the TAP
    spec, problem = m._spec(cl, "pydp-p0", (9, True, []), {"198.51.100.10"})
    assert problem is None and spec.srcip == "198.51.100.5"
    # a new passphrase, a new interface index or a new skew is another spec: the instance restarts
    cl.carp.passphrase = "other"
    assert m._spec(cl, "pydp-p0", (9, True, []), set())[0] != spec


def test_spec_ipv6_source():
    """IPv6 clusters get an instance: --carp-src6, else the first global IPv6 address on the TAP that is not a
    cluster IP, else the TAP's link-local address; IPv4 clusters never take an IPv6 source (nor the reverse)."""
    m = manager()
    cl = appliance(("web6", "2001:db8::10", "")).clusters[0]
    addrs = ["198.51.100.2", "2001:db8::10", "fe80::1", "2001:db8::2", "2001:db8::3"]
    spec, problem = m._spec(cl, "pydp-p0", (9, True, addrs), {"2001:db8::10"})
    assert problem is None and (spec.srcip, spec.addr, spec.vhid) == ("2001:db8::2", "2001:db8::10", 1)
    spec, problem = m._spec(cl, "pydp-p0", (9, True, ["198.51.100.2", "fe80::1"]), {"2001:db8::10"})
    assert problem is None and spec.srcip == "fe80::1"
    m.carp_src6 = "2001:db8::7"
    spec, problem = m._spec(cl, "pydp-p0", (9, True, []), {"2001:db8::10"})
    assert problem is None and spec.srcip == "2001:db8::7"
    cl4 = appliance(("web", "198.51.100.10", "")).clusters[0]
    spec, problem = m._spec(cl4, "pydp-p0", (9, True, ["fe80::1", "198.51.100.2"]), {"198.51.100.10"})
    assert problem is None and spec.srcip == "198.51.100.2"
    assert "no IPv4 address" in m._spec(cl4, "pydp-p0", (9, True, ["fe80::1"]), set())[1]


def test_ipv6_instance_config_is_valid():
    """What the manager starts for an IPv6 cluster passes the driver's checks (ucarp mode, real MAC)."""
    from control.carp import driver

    cfg = driver.Config(interface="lo", srcip="fe80::1", vhid=1, addr="2001:db8::10", key=b"k")
    cfg.check()
    inst = driver.Instance(cfg)
    assert inst.ipv6 and str(inst.src) == "fe80::1"
    frame = inst.gratuitous_arp_frame()
    assert frame[:6] == bytes.fromhex("333300000001") and frame[12:14] == b"\x86\xdd" and frame[14 + 40] == 136
    for bad, message in (({"srcip": "198.51.100.2"}, "srcip must be an IPv6"),
                         ({"addr": "fe80::10"}, "cannot be a cluster IP"),
                         ({"mac": "virtual"}, "mac virtual is IPv4 only"),
                         ({"srcip": "fe80::1%eth9"}, "scope must be the interface")):
        with pytest.raises(ValueError, match=message):
            driver.Config(**{**cfg.__dict__, **bad}).check()


def test_disabled_standalone_and_own_all_run_no_carp():
    m = manager()
    cfg = appliance(("web", "198.51.100.10", "enabled = false"))
    asyncio.run(m.tick(cfg))
    assert m.entries == {}
    m.enabled = False                       # --own-all
    asyncio.run(m.tick(appliance(("web", "198.51.100.10", ""))))
    assert m.entries == {}


class FakeInstance:
    def __init__(self):
        self.demotes = []
        self.cfg = type("C", (), {"vhid": 1})()

    def set_demote(self, n):
        self.demotes.append(n)


@pytest.mark.parametrize("health, edges_up, demote, reasons", [
    ([], {"web": True}, 0, []),
    ([], {"web": False}, 1, ["edges"]),
    ([], {}, 1, ["edges"]),                            # the cluster is not in the data plane's config
    (["link"], {"web": True}, 1, ["link"]),
    (["link"], {"web": False}, 2, ["link", "edges"]),
    (["dataplane"], {}, 3, ["dataplane"]),             # counts as every check
])
def test_demotion_rules(health, edges_up, demote, reasons):
    events = []
    m = manager(health=(health, edges_up), events=events)
    e = m.entries.setdefault("web", carp_manager.Entry())
    e.inst = FakeInstance()
    e.spec = carp_manager.Spec("pydp-p0", 7, "198.51.100.2", 1, "198.51.100.10", 1, 0, True, b"k")
    asyncio.run(m._demote_all("pydp-p0"))
    assert (e.demote, e.reasons) == (demote, reasons)
    assert e.inst.demotes == ([demote] if demote else [])
    assert [n for n, _ in events] == (["carp_demoted"] if demote else [])
    m.health = lambda t: ([], {"web": True})            # healthy again
    asyncio.run(m._demote_all("pydp-p0"))
    assert e.demote == 0 and e.reasons == []
    assert e.inst.demotes == ([demote, 0] if demote else [])
    assert [n for n, _ in events] == (["carp_demoted", "carp_undemoted"] if demote else [])


def test_peer_text():
    assert carp_manager.peer_text(None) == "unknown"
    assert carp_manager.peer_text({"peer_advert": None}) == "not heard"
    s = {"peer_advert": {"src": "198.51.100.3", "interval": 1.391, "demote": 2, "age_s": 0.25}}
    assert carp_manager.peer_text(s) == "198.51.100.3 every 1.391s demote 2 (0.2s ago)"


class StartedInstance:
    """Stands in for ManagedInstance where only the start matters: records how it was started."""

    started: list = []

    def __init__(self, cfg):
        self.cfg = cfg
        self.demotes = []
        self.state = "INIT"

    def set_demote(self, n):
        self.demotes.append(n)

    async def start(self, *, resume=False):
        StartedInstance.started.append((self.cfg.vhid, resume))


@pytest.mark.parametrize("info, cluster, resumed, skipped", [
    # the cluster IP is still on the TAP: MASTER at once, the flag is left alone
    ((7, True, ["198.51.100.2", "198.51.100.10"]), ("web", "198.51.100.10", ""), True, None),
    ((7, True, ["2001:db8::2", "2001:0db8::10"]), ("web6", "2001:db8::10", ""), True, None),
    # gone from the TAP: an ordinary start (BACKUP) and the flag goes
    ((7, True, ["198.51.100.2"]), ("web", "198.51.100.10", ""), False, "no longer on pydp-p0"),
    # CARP cannot run for it, or it is not a CARP cluster any more: the flag goes, nothing starts
    ((7, True, ["198.51.100.2", "198.51.100.10"]), ("nopass", "198.51.100.10", ""), None, "no CARP passphrase"),
    ((7, False, ["198.51.100.2", "198.51.100.10"]), ("web", "198.51.100.10", ""), None, "is down"),
    ((7, True, ["198.51.100.2", "198.51.100.10"]), ("web", "198.51.100.10", "enabled = false"), None,
     "not run by CARP"),
])
def test_resume_after_a_restart(monkeypatch, info, cluster, resumed, skipped):
    """Clusters found owned at start (CarpManager.resume): resumed as MASTER only with the cluster IP still on
    the TAP; otherwise their ownership flag is given up. Each name is used once: a later restart of the instance
    is an ordinary start."""
    monkeypatch.setattr(carp_manager, "ManagedInstance", StartedInstance)
    StartedInstance.started = []
    events, owned = [], []
    m = manager(info=info, health=([], {cluster[0]: True}), events=events)
    m.set_owned = lambda name, flag: owned.append((name, flag))
    m.resume = {cluster[0]}
    asyncio.run(m.tick(appliance(cluster)))
    names = [n for n, _ in events]
    assert m.resume == set()
    assert StartedInstance.started == ([] if resumed is None else [(1, resumed)])
    if resumed:
        assert owned == [] and "carp_resumed" in names and "carp_resume_skipped" not in names
        assert dict(events)["carp_started"]["resumed"] is True
        assert dict(events)["carp_resumed"]["cluster_ip"] == cluster[1]
    else:
        assert owned == [(cluster[0], False)] and "carp_resumed" not in names
        assert skipped in dict(events)["carp_resume_skipped"]["reason"]
    if resumed is not None:
        m.entries[cluster[0]].inst = None       # the instance stops (settings changed, say): starts again as usual
        asyncio.run(m.tick(appliance(cluster)))
        assert StartedInstance.started[-1] == (1, False)
