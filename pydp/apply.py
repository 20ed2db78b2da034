"""Writing an appliance config into the data plane's shared memory.

Clusters and edges keep their slots across changes (matched by name), so flow tables and counters stay meaningful:
an edge that is removed frees its slot and the slot's ``uid`` changes when it is given to another edge, which makes
every flow still pinned to the old edge re-hash on its next packet. Only clusters whose edges, weights, states or
table size changed get their Maglev table rebuilt.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pydp._ffi import ffi, lib
from pydp.shm import Region, pack_addr

EDGE_STATES = {"active": lib.PYDP_EDGE_UP, "draining": lib.PYDP_EDGE_DRAINING, "disabled": lib.PYDP_EDGE_DISABLED}
DSR_MODES = {"l2": lib.PYDP_DSR_L2, "ipip": lib.PYDP_DSR_IPIP}


class ApplyError(ValueError):
    """The config cannot be represented in the data plane; nothing was published."""


@dataclass
class ApplyResult:
    generation: int
    slots: dict[str, int]          # cluster name -> cluster slot
    rebuilt: list[str]             # clusters whose Maglev table was rebuilt
    warnings: list[str]


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def _table_key(c):
    """What a cluster's Maglev table depends on."""
    edges = tuple((bytes(ffi.string(e.name)), e.weight if e.state == lib.PYDP_EDGE_UP else 0)
                  for e in c.edges if e.state != lib.PYDP_EDGE_EMPTY)
    return (c.family, c.maglev_size, tuple(sorted(edges)))


def _set_globals(slot, dp) -> None:
    slot.hash_seed = dp.hash_seed
    t = dp.timeouts
    slot.tcp_syn_timeout_ms = int(t.tcp_syn * 1000)
    slot.tcp_est_timeout_ms = int(t.tcp_established * 1000)
    slot.tcp_fin_timeout_ms = int(t.tcp_fin * 1000)
    slot.udp_timeout_ms = int(t.udp * 1000)
    slot.other_timeout_ms = int(t.other * 1000)
    ip = dp.ipip
    src4 = ipaddress.ip_network(ip.source4)
    src6 = ipaddress.ip_network(ip.source6)
    ffi.memmove(slot.ipip_src4, src4.network_address.packed, 4)
    slot.ipip_src4_bits = src4.prefixlen
    ffi.memmove(slot.ipip_src6, src6.network_address.packed, 16)
    slot.ipip_src6_bits = src6.prefixlen
    ffi.memmove(slot.gateway_mac, _mac_bytes(ip.gateway_mac) if ip.gateway_mac else bytes(6), 6)


def _fill_cluster(slot_cluster, cl, default_size: int, edge_health: dict, owned: bool, warnings: list) -> None:
    c = slot_cluster
    family, vip = pack_addr(cl.cluster_ip)
    if c.family == lib.PYDP_AF_NONE or ffi.string(c.name).decode() != cl.name:
        # a new cluster in this slot: new identity, no edges
        uid, version = (c.uid + 1) & 0xFFFF, c.table_version
        ffi.memmove(ffi.addressof(c), bytes(ffi.sizeof("struct pydp_cluster")), ffi.sizeof("struct pydp_cluster"))
        c.uid, c.table_version = uid, version
        c.name = cl.name.encode()
    c.family = family
    c.owned = 1 if owned else 0
    ffi.memmove(c.vip, vip, 16)
    c.enabled = 1 if cl.enabled else 0
    c.dsr_mode = DSR_MODES[cl.dsr]
    c.ipsec_local = 1 if cl.ipsec_local_termination else 0
    c.maglev_size = cl.maglev_size or default_size

    wanted = {e.name: e for e in cl.edges}
    by_name = {}
    for i in range(lib.PYDP_MAX_EDGES):
        e = c.edges[i]
        if e.state == lib.PYDP_EDGE_EMPTY:
            continue
        name = ffi.string(e.name).decode()
        if name in wanted:
            by_name[name] = i
        else:
            e.state = lib.PYDP_EDGE_EMPTY        # removed: the slot's next edge gets a new uid
            e.uid = (e.uid + 1) & 0xFFFF
    free = [i for i in range(lib.PYDP_MAX_EDGES) if c.edges[i].state == lib.PYDP_EDGE_EMPTY]
    for ec in cl.edges:
        if ec.name in by_name:
            e = c.edges[by_name[ec.name]]
        else:
            e = c.edges[free.pop(0)]
            e.uid = (e.uid + 1) & 0xFFFF
            e.name = ec.name.encode()
        efam, eaddr = pack_addr(ec.ip)
        e.family = efam
        ffi.memmove(e.addr, eaddr, 16)
        ffi.memmove(e.mac, _mac_bytes(ec.mac) if ec.mac else bytes(6), 6)
        e.weight = ec.weight
        state = EDGE_STATES[ec.state]
        if state == lib.PYDP_EDGE_UP and edge_health.get((cl.name, ec.name)) is False:
            state = lib.PYDP_EDGE_DOWN
        if state == lib.PYDP_EDGE_UP and cl.dsr == "l2" and not ec.mac:
            # DSR l2 needs the edge's MAC; until the control plane resolves it the edge gets no flows
            warnings.append(f"cluster {cl.name}: edge {ec.name} has no MAC address yet; it gets no traffic")
            state = lib.PYDP_EDGE_DOWN
        e.state = state


def apply_config(region: Region, cfg, *, owned=(), edge_health: dict | None = None,
                 timeout_ms: int = 2000) -> ApplyResult:
    """Publishes ``cfg`` (a pydp.config.ApplianceConfig) as the data plane's next config generation.

    ``owned`` names the clusters this appliance forwards for (elected by CARP, standalone, or owned by order): their
    ownership is published in the same generation as the clusters themselves, and every other cluster -- a slot
    freed or given to another cluster included -- is published as not owned.
    ``edge_health`` maps (cluster, edge) to False for edges failing their health checks (they become DOWN).
    """
    edge_health = edge_health or {}
    owned = set(owned)
    unknown = owned - {cl.name for cl in cfg.clusters}
    if unknown:
        raise ApplyError(f"cannot own {', '.join(sorted(unknown))}: no such cluster in the config")
    if len(cfg.clusters) > lib.PYDP_MAX_CLUSTERS:
        raise ApplyError(f"{len(cfg.clusters)} clusters, at most {lib.PYDP_MAX_CLUSTERS}")
    for cl in cfg.clusters:
        size = cl.maglev_size or cfg.dataplane.maglev_size
        if size > region.maglev_max:
            raise ApplyError(f"cluster {cl.name}: Maglev size {size} exceeds the data plane's room "
                             f"({region.maglev_max}); restart pydp-dataplane with a larger maglev_size")
    rebuilt, warnings = [], []
    with region.writer(timeout_ms) as slot:
        _set_globals(slot, cfg.dataplane)
        current = {ffi.string(slot.clusters[i].name).decode(): i
                   for i in range(lib.PYDP_MAX_CLUSTERS) if slot.clusters[i].family != lib.PYDP_AF_NONE}
        wanted = {cl.name for cl in cfg.clusters}
        for name, i in current.items():
            if name not in wanted:
                slot.clusters[i].family = lib.PYDP_AF_NONE
                slot.clusters[i].owned = 0
                slot.clusters[i].uid = (slot.clusters[i].uid + 1) & 0xFFFF
                region.rebuild(slot, i)
        free = [i for i in range(lib.PYDP_MAX_CLUSTERS) if slot.clusters[i].family == lib.PYDP_AF_NONE]
        slots = {}
        for cl in cfg.clusters:
            i = current[cl.name] if cl.name in current else free.pop(0)
            before = _table_key(slot.clusters[i]) if cl.name in current else None
            _fill_cluster(slot.clusters[i], cl, cfg.dataplane.maglev_size, edge_health, cl.name in owned, warnings)
            if before != _table_key(slot.clusters[i]):
                region.rebuild(slot, i)
                rebuilt.append(cl.name)
            slots[cl.name] = i
    return ApplyResult(generation=region.generation, slots=slots, rebuilt=rebuilt, warnings=warnings)
