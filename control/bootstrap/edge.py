"""pydp-bootstrap edge: prepares a service edge for Direct Server Return, and takes it back with --undo.

With DSR the load balancer forwards a client's packet to the edge unchanged at L3 (destination = the cluster IP),
so the edge must accept packets for the cluster IP, answer from it, and never claim it on the shared segment: only
the active load balancer may answer ARP / neighbour discovery for the cluster IP, or clients would bypass it.

* The cluster IP goes on ``lo`` as a /32 (IPv6: /128 with ``nodad``): local, so the kernel accepts and answers, but
  not on the uplink.
* ``arp_ignore = 1``: answer an ARP request only when its target address is configured on the interface it came in
  on, so the cluster IP on ``lo`` is never answered for on the uplink. ``arp_announce = 2``: ARP requests the edge
  sends use a source address of the outgoing interface, never the cluster IP (which would teach the neighbours that
  the cluster IP lives at the edge's MAC). The kernel uses the larger of ``conf/all`` and ``conf/<interface>`` for
  both, so ``all`` alone is enough; the uplinks get it as well so the edge stays right if someone lowers ``all``.
* IPv6 has no such sysctls and needs none: the kernel answers a neighbour solicitation only for a target address
  configured on the interface the solicitation arrived on (``ndisc_recv_ns`` looks the target up with the device
  strictly matched), unless proxy NDP is on, and its own solicitations take their source from the outgoing
  interface. A /128 on ``lo`` is therefore never announced. ``lo`` does no duplicate address detection at all;
  ``nodad`` says so explicitly (and keeps the address from ever being "tentative").
* ``rp_filter``: with strict reverse-path filtering (1) a packet is dropped when the route back to its source does
  not leave by the interface it came in on, which happens on edges with a separate management uplink or behind
  IP-in-IP DSR (packets arrive on ``tunl0``). Where the effective value (the larger of ``all`` and the interface)
  is strict on an uplink, that interface is set to loose (2), which still drops unroutable sources.

Every value changed is recorded with its previous value in a state file before the change, so ``--undo`` removes
exactly the addresses that were added and restores exactly the previous values, and leaves alone what was already
in place before the first run.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
from pathlib import Path
from typing import Iterable

from control.bootstrap import steps as st
from control.bootstrap.steps import BootstrapError, Step, UsageError

IFA_F_NODAD = 0x02
DEFAULT_STATE_DIR = "/var/lib/pydp"
STATE_VERSION = 1

EXAMPLES = """\
examples:
  pydp-bootstrap edge --cluster-ip 198.51.100.10 --dry-run      # show every step, change nothing
  pydp-bootstrap edge --cluster-ip 198.51.100.10 --cluster-ip 2001:db8:100::10 --interface eth0
  pydp-bootstrap edge --undo                                    # remove what the edge bootstrap added
  ip netns exec edge1 python3 -m control.bootstrap edge --cluster-ip 198.51.100.10 --json
"""


# ---- input validation ----

def parse_cluster_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise UsageError(f"--cluster-ip {text!r} is not an IPv4 or IPv6 address") from None
    if ip.is_multicast or ip.is_loopback or ip.is_unspecified or ip.is_link_local or (
            ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255")):
        raise UsageError(f"--cluster-ip {ip} is not a unicast address a cluster can use")
    return ip


def interface_index(ipr, name: str) -> int:
    """The kernel's index of an interface, or a usage error naming the interfaces that exist."""
    found = ipr.link_lookup(ifname=name) if name and "/" not in name and len(name) <= 15 else []
    if not found:
        known = sorted(link.get("IFLA_IFNAME") for link in ipr.get_links())
        raise UsageError(f"unknown interface {name!r} (this network namespace has: {', '.join(known)})")
    return found[0]


def default_uplinks(ipr) -> list[str]:
    """The interfaces the default routes leave by (IPv4 and IPv6): where the edge meets its clients."""
    names = []
    for family in (2, 10):
        for route in ipr.get_default_routes(family=family):
            oif = route.get("RTA_OIF")
            links = ipr.get_links(oif) if oif else []
            name = links[0].get("IFLA_IFNAME") if links else None
            if name and name not in names:
                names.append(name)
    return names


# ---- the state file ----

def _netns_id() -> str:
    """An identity of the network namespace this runs in: the inode of /proc/self/ns/net."""
    return str(os.stat("/proc/self/ns/net").st_ino)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _netns_name() -> str | None:
    """The `ip netns` name of the namespace this runs in; None when it has none (the host's namespace)."""
    me = os.stat("/proc/self/ns/net")
    try:
        for entry in os.scandir("/run/netns"):
            s = os.stat(entry.path)
            if (s.st_dev, s.st_ino) == (me.st_dev, me.st_ino):
                return entry.name
    except OSError:
        pass
    return None


def default_state_path(state_dir: str | None) -> Path:
    """bootstrap-edge.json, or bootstrap-edge@<netns>.json inside a network namespace: several edges can be
    prepared on one host (a lab) without sharing their record."""
    name = _netns_name()
    return Path(state_dir or DEFAULT_STATE_DIR) / (f"bootstrap-edge@{name}.json" if name else "bootstrap-edge.json")


class State:
    """What the edge bootstrap changed: the addresses it added and each sysctl's value before its first change."""

    def __init__(self, path: Path):
        self.path = path
        self.addresses: list[str] = []
        self.sysctls: dict[str, str] = {}
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise BootstrapError(f"cannot read the state file {path}: {exc} (move it away to start afresh)") from None
        if doc.get("boot_id") != _boot_id():
            # written before a reboot: nothing it records is in place any more
            return
        if doc.get("netns") != _netns_id():
            raise BootstrapError(f"the state file {path} records changes made in another network namespace; "
                                 f"give this one its own --state-dir")
        self.addresses = list(doc.get("addresses", []))
        self.sysctls = dict(doc.get("sysctls", {}))

    def save(self) -> None:
        doc = {"version": STATE_VERSION, "netns": _netns_id(), "boot_id": _boot_id(),
               "addresses": self.addresses, "sysctls": self.sysctls}
        st.write_file(self.path, json.dumps(doc, indent=2) + "\n", 0o600)

    def remove(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    @property
    def empty(self) -> bool:
        return not self.addresses and not self.sysctls


# ---- the steps ----

def _lo_has(ipr, lo: int, ip, prefixlen: int) -> bool:
    return any(a.get("IFA_ADDRESS") == str(ip) and a["prefixlen"] == prefixlen
               for a in ipr.get_addr(index=lo, family=4 if ip.version == 4 else 10))


def address_step(ipr, lo: int, ip, state: State) -> Step:
    plen = 32 if ip.version == 4 else 128
    cidr = f"{ip}/{plen}"

    def action() -> None:
        kw = {"flags": IFA_F_NODAD} if ip.version == 6 else {}
        ipr.addr("add", index=lo, address=str(ip), prefixlen=plen, **kw)
        if cidr not in state.addresses:
            state.addresses.append(cidr)
        state.save()

    return Step(f"address {cidr}", f"cluster IP {cidr} on lo" + (" (nodad)" if ip.version == 6 else ""),
                lambda: _lo_has(ipr, lo, ip, plen), action, lambda: f"add {cidr} to lo")


def sysctl_step(key: str, want: str, state: State, why: str) -> Step:
    def action() -> None:
        if key not in state.sysctls:
            state.sysctls[key] = st.read_sysctl(key)
            state.save()
        st.write_sysctl(key, want)

    return Step(f"sysctl {key}", f"{key} = {want} ({why})", lambda: st.read_sysctl(key) == want, action,
                lambda: f"{st.read_sysctl(key)} -> {want}")


def rp_filter_steps(ifaces: Iterable[str], state: State) -> list[Step]:
    """Loose reverse-path filtering on the uplinks whose effective value (max of all and the interface) is strict.

    A step exists only where it is needed, so the list is decided at planning time; a value already recorded
    (changed by an earlier run) keeps its step so the run reports it as done."""
    out = []
    all_value = st.read_sysctl("net.ipv4.conf.all.rp_filter")
    for name in ifaces:
        key = f"net.ipv4.conf.{name}.rp_filter"
        if max(int(all_value), int(st.read_sysctl(key))) == 1 or key in state.sysctls:
            out.append(sysctl_step(key, "2", state, "loose reverse-path filter: replies may leave by another way"))
    return out


def plan(ipr, ips, ifaces: list[str], state: State) -> list[Step]:
    lo = interface_index(ipr, "lo")
    steps = [address_step(ipr, lo, ip, state) for ip in ips]
    if any(ip.version == 4 for ip in ips):
        for name in ["all", *ifaces]:
            steps.append(sysctl_step(f"net.ipv4.conf.{name}.arp_ignore", "1", state,
                                     "answer ARP only for addresses of the receiving interface"))
            steps.append(sysctl_step(f"net.ipv4.conf.{name}.arp_announce", "2", state,
                                     "ARP requests use the outgoing interface's address"))
        steps += rp_filter_steps(ifaces, state)
    return steps


def undo_plan(ipr, state: State) -> list[Step]:
    """Steps that take back what the state records: addresses off lo, then each sysctl to its previous value."""
    lo = interface_index(ipr, "lo")
    out = []
    for cidr in state.addresses:
        iface = ipaddress.ip_interface(cidr)

        def remove(iface=iface, cidr=cidr) -> None:
            ipr.addr("del", index=lo, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            state.addresses.remove(cidr)
            state.save()

        out.append(Step(f"address {cidr}", f"remove cluster IP {cidr} from lo",
                        lambda iface=iface: not _lo_has(ipr, lo, iface.ip, iface.network.prefixlen), remove,
                        lambda cidr=cidr: f"delete {cidr} from lo"))
    for key, previous in reversed(list(state.sysctls.items())):
        def restore(key=key, previous=previous) -> None:
            st.write_sysctl(key, previous)
            del state.sysctls[key]
            state.save()

        def restored(key=key, previous=previous) -> bool:
            # an interface that is gone took its setting with it
            return not st.sysctl_path(key).exists() or st.read_sysctl(key) == previous

        out.append(Step(f"sysctl {key}", f"restore {key} = {previous}", restored, restore,
                        lambda key=key, previous=previous: f"{st.read_sysctl(key)} -> {previous}"))
    return out


# ---- the command ----

def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("edge", help="prepare a service edge for DSR (cluster IP on lo, ARP sysctls); --undo",
                       description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cluster-ip", action="append", default=[], metavar="IP",
                   help="a cluster IP this edge serves (repeat for several; IPv4 and IPv6)")
    p.add_argument("--interface", action="append", default=None, metavar="IFACE",
                   help="the edge's uplink(s) towards the load balancer and clients (default: the interfaces of "
                        "the default routes)")
    p.add_argument("--undo", action="store_true", help="take back everything the edge bootstrap changed here")
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help=f"where the record of changes is kept (default {DEFAULT_STATE_DIR})")
    p.add_argument("--dry-run", action="store_true", help="print every step and what it would change; change nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> tuple[st.Outcome, dict]:
    from pyroute2 import IPRoute

    ips = []
    for text in args.cluster_ip:
        ip = parse_cluster_ip(text)
        if ip not in ips:
            ips.append(ip)
    if not args.undo and not ips:
        raise UsageError("edge: give at least one --cluster-ip (or --undo)")
    if args.undo and args.interface:
        raise UsageError("edge --undo takes back what the state file records: --interface does not apply")
    state = State(default_state_path(args.state_dir))
    with IPRoute() as ipr:
        if args.undo:
            recorded = {str(ipaddress.ip_interface(c).ip) for c in state.addresses}
            if ips and {str(ip) for ip in ips} != recorded:
                raise UsageError(f"edge --undo takes back everything recorded in {state.path} (cluster IPs: "
                                 f"{', '.join(sorted(recorded)) or 'none'}); leave out --cluster-ip or name "
                                 f"exactly those")
            steps = undo_plan(ipr, state)
        else:
            ifaces = args.interface if args.interface is not None else default_uplinks(ipr)
            for name in ifaces:
                interface_index(ipr, name)
            ifaces = [n for n in dict.fromkeys(ifaces) if n != "lo"]
            steps = plan(ipr, ips, ifaces, state)
        outcome = st.run_steps(steps, dry_run=args.dry_run)
    if args.undo and not args.dry_run and not outcome.error:
        state.remove()
    return outcome, {"state_file": str(state.path)}
