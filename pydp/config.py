"""The declarative appliance configuration: a TOML file, its loader and validator, and its writer.

    cfg = load("/etc/pydp/appliance.toml")     # ConfigError on any problem, with every problem listed
    text = dumps(cfg)                           # TOML that loads() reads back to an equal config
    dump(cfg, "/etc/pydp/appliance.toml")       # atomic: temp file + fsync + rename

Loading runs in two passes. The first checks every key of every table: unknown keys, types (booleans must be TOML
booleans, integers must not be booleans) and the range or syntax of each value. The second checks the rules that
span several keys (uniqueness, edge counts per mode, IP-in-IP requirements, CARP vhid and passphrase rules, health
timeout < interval). Every problem found by either pass is collected; ConfigError carries them all, each as
"KEYPATH: reason", and nothing is returned unless the file is entirely valid.

The limits are those of native/include/pydp.h (PYDP_MAX_CLUSTERS, PYDP_MAX_EDGES, PYDP_MAX_PORTS,
PYDP_MAX_WORKERS, PYDP_NAME_LEN, PYDP_MAGLEV_MAX_SIZE and the sizes of its name and path arrays), checked against it
by tests/unit/test_limits.py; the module itself needs no build. The reference of the format is docs/config.md.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import ipaddress
import math
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable

from pydp import device as pdevice

__all__ = [
    "ApplianceConfig", "DataplaneConfig", "Timeouts", "IpipConfig", "PortConfig", "ClusterConfig", "CarpConfig",
    "HealthConfig", "EdgeConfig", "BgpConfig", "BgpPeerConfig", "ConfigError", "load", "loads", "from_dict", "to_dict", "dumps", "dump",
    "validate", "write_atomic", "parse_lcores", "is_prime",
]

# ---- limits of native/include/pydp.h ----
# Written here so that the loader works without the compiled module (a checkout without a build, the store, the
# CLI); tests/unit/test_limits.py checks every one against the header and against what the C code accepts.

MAX_CLUSTERS = 64           # PYDP_MAX_CLUSTERS
MAX_EDGES = 16              # PYDP_MAX_EDGES
MAX_WORKERS = 16            # PYDP_MAX_WORKERS
MAX_PORTS = 4               # PYDP_MAX_PORTS
NAME_LEN = 32               # PYDP_NAME_LEN
NAME_MAX = NAME_LEN - 1     # names are NUL-terminated
MAGLEV_MIN_SIZE = 17        # pydp_shm_create refuses a smaller maglev_max
MAGLEV_MAX_SIZE = 655373    # PYDP_MAGLEV_MAX_SIZE
MAGLEV_DEFAULT_SIZE = 65537     # PYDP_MAGLEV_DEFAULT_SIZE
MAX_LCORE = 1023            # lcore ids 0..1023; EAL rejects ids beyond its own RTE_MAX_LCORE
SHM_PATH_MAX = 255          # struct pydp_shm.path[256], NUL-terminated
DEVICE_NAME_MAX = 31        # struct pydp_port_info.name[32], NUL-terminated
IFNAME_MAX = 15             # Linux IFNAMSIZ - 1
CARP_PASSPHRASE_MAX = 20    # bytes: the CARP/ucarp key field
MAX_TIMEOUT_S = 86400
MAX_DRAIN_TIMEOUT_S = 7 * 86400   # a cluster's drain_timeout: a week at most

DSR_MODES = ("l2", "ipip")
CLUSTER_MODES = ("cluster", "standalone")
FAILOVER_MODES = ("carp", "bgp")
BGP_ENGINES = ("bird",)
HEALTH_TYPES = ("tcp", "http", "https", "icmp", "none")
EDGE_STATES = ("active", "draining", "disabled")

# EAL options that other keys of [dataplane] control; passing them in eal_args as well would conflict.
_EAL_RESERVED_SHORT = {"-l": "lcores", "-c": "lcores", "-m": "memory_mb"}
_EAL_RESERVED_LONG = {"--lcores": "lcores", "--main-lcore": "lcores", "--master-lcore": "lcores",
                      "--no-huge": "hugepages", "--socket-mem": "memory_mb"}

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,%d}" % NAME_MAX)
_PORT_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,%d}" % IFNAME_MAX)
_MAC_RE = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}")
_LCORE_ITEM_RE = re.compile(r"(\d+)(?:-(\d+))?(?:@(\d+))?")


# ---- errors ----

class ConfigError(ValueError):
    """An invalid configuration. errors: every problem, each "KEYPATH: reason"; source: the file name."""

    def __init__(self, errors: list[str], source: str = "<string>"):
        self.errors = list(errors)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(f"{self.source}: {e}" for e in self.errors)


class _Bad(Exception):
    """A value rejected by a converter; the message is the reason."""


class _BadType(type):
    def __repr__(cls) -> str:
        return "<invalid>"


class _BAD(metaclass=_BadType):
    """Placeholder for a value that failed the first pass (the load fails anyway; the second pass skips it)."""


def _ok(*values: Any) -> bool:
    return all(v is not _BAD for v in values)


# ---- helpers ----

def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    i = 3
    while i * i <= n:
        if n % i == 0:
            return False
        i += 2
    return True


def _neighbour_primes(n: int) -> tuple[int | None, int | None]:
    below = next((p for p in range(n - 1, 1, -1) if is_prime(p)), None)
    above = next((p for p in range(n + 1, 2 * n + 3) if is_prime(p)), None)
    return below, above


def parse_lcores(spec: str) -> list[int]:
    """Parse an EAL core list ("0-1", "0,2,3", "0,4-7") into lcore ids in the order written. ValueError if bad.

    An item may pin one lcore to a CPU as EAL's --lcores does: "0@0,1@1,2@1" runs lcores 1 and 2 on CPU 1.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError("must be a non-empty core list such as \"0-1\" or \"0,2,3\"")
    out: list[int] = []
    for item in spec.split(","):
        m = _LCORE_ITEM_RE.fullmatch(item)
        if not m:
            raise ValueError(f"{spec!r} is not a core list (items are N, N-M or N@CPU separated by commas, "
                             "no spaces)")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if m.group(3) is not None and m.group(2) is not None:
            raise ValueError(f"{item!r}: a range cannot be pinned with @ (pin each lcore: 1@1,2@1)")
        if m.group(3) is not None and int(m.group(3)) > MAX_LCORE:
            raise ValueError(f"CPU {m.group(3)} is out of range (0..{MAX_LCORE})")
        if hi < lo:
            raise ValueError(f"range {item!r} is reversed")
        if hi > MAX_LCORE:
            raise ValueError(f"lcore {hi} is out of range (0..{MAX_LCORE})")
        for c in range(lo, hi + 1):
            if c in out:
                raise ValueError(f"lcore {c} is listed twice")
            out.append(c)
    return out


def _tname(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "table"
    if isinstance(v, (_dt.date, _dt.time)):
        return "date/time"
    return type(v).__name__


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        return "an array" if isinstance(v, list) else "a table"
    s = repr(v) if not isinstance(v, (_dt.date, _dt.time)) else v.isoformat()
    return s if len(s) <= 64 else s[:60] + "...'"


def _got(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return f"got {_show(v)}"
    return f"got {_show(v)} ({_tname(v)})"


def _path(base: str, key: str) -> str:
    return f"{base}.{key}" if base else key


def _norm_mac(v: str) -> str:
    return v.replace("-", ":").lower()


def _default_tap(name: str) -> str:
    return ("pydp-" + name)[:IFNAME_MAX]


# ---- the configuration ----

@dataclass
class Timeouts:
    """Flow idle timeouts in seconds."""
    tcp_syn: float = 30.0
    tcp_established: float = 900.0
    tcp_fin: float = 10.0
    udp: float = 300.0
    other: float = 60.0


@dataclass
class IpipConfig:
    source4: ipaddress.IPv4Network = field(default_factory=lambda: ipaddress.IPv4Network("192.0.2.0/24"))
    source6: ipaddress.IPv6Network = field(default_factory=lambda: ipaddress.IPv6Network("2001:db8:ffff::/64"))
    gateway_mac: str | None = None      # lowercase aa:bb:cc:dd:ee:ff; None = not set ("" in the file)


@dataclass
class DataplaneConfig:
    lcores: str = "0-1"
    busy_poll: bool = False
    idle_sleep_max_us: int = 200
    idle_sleep_deep_us: int = 1000
    tx_drain_us: int = 100
    flow_capacity: int = 2097152
    maglev_size: int = MAGLEV_DEFAULT_SIZE
    hash_seed: int = 0x5EED
    shm_path: str = "/dev/hugepages/pydp"
    hugepages: bool = True
    memory_mb: int = 512
    eal_args: list[str] = field(default_factory=list)
    burst: int = 64
    rx_desc: int = 1024
    tx_desc: int = 1024
    mbufs: int = 16383
    exception_pps: int = 20000
    exception_priority_pps: int = 5000      # the ARP / IPv6 neighbour discovery class
    exception_carp_pps: int = 1000
    exception_control_pps: int = 5000       # BGP, BFD to the appliance
    timeouts: Timeouts = field(default_factory=Timeouts)
    ipip: IpipConfig = field(default_factory=IpipConfig)

    @property
    def main_lcore(self) -> int:
        """The first lcore of the list: the EAL main lcore (control, not packet processing)."""
        return parse_lcores(self.lcores)[0]

    @property
    def worker_lcores(self) -> list[int]:
        """The other lcores, in the order written: one packet-processing worker each."""
        return parse_lcores(self.lcores)[1:]


@dataclass
class PortConfig:
    name: str
    device: str
    tap: str | None = None              # None: the default "pydp-<name>" cut to 15 characters; "" = no TAP
    promiscuous: bool = False

    def __post_init__(self) -> None:
        if self.tap is None and isinstance(self.name, str):
            self.tap = _default_tap(self.name)

    @property
    def device_name(self) -> str:
        """The name DPDK gives the port (pydp.device: PCI addresses in full form, vdevs without arguments)."""
        return pdevice.port_name(self.device)


@dataclass
class CarpConfig:
    vhid: int = 1
    advbase: int = 1
    advskew: int = 0
    passphrase: str = ""                # the effective secret (read from passphrase_file when that is set)
    passphrase_file: str = ""
    preempt: bool = True


@dataclass
class HealthConfig:
    type: str = "tcp"
    port: int | None = None             # None: 443 for https, else 80
    path: str = "/"
    host: str = ""
    expect_status: int = 200
    expect_body: str = ""
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3

    def __post_init__(self) -> None:
        if self.port is None:
            self.port = 443 if self.type == "https" else 80


@dataclass
class EdgeConfig:
    name: str
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    mac: str | None = None              # lowercase aa:bb:cc:dd:ee:ff; None = resolved by the control plane
    weight: int = 1
    state: str = "active"


@dataclass
class ClusterConfig:
    name: str
    cluster_ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    enabled: bool = True
    mode: str = "cluster"
    dsr: str = "l2"
    ipsec_local_termination: bool = False
    maglev_size: int | None = None      # after loading: always the effective size (dataplane default resolved)
    drain_timeout: float = 0.0          # seconds a draining edge keeps its flows; 0 = until they end
    failover: str = "carp"              # carp: active-passive (CARP); bgp: active-active, announced over BGP
    carp: CarpConfig = field(default_factory=CarpConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    edges: list[EdgeConfig] = field(default_factory=list)


@dataclass(frozen=True)
class SyncPeer:
    """One flow-sync peer: its management address and its listen_port."""
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int = 7470

    def __str__(self) -> str:
        return f"[{self.address}]:{self.port}" if self.address.version == 6 else f"{self.address}:{self.port}"


MAX_SYNC_PEERS = 15                     # a scale-out of 16 appliances: each has at most 15 peers


@dataclass
class SyncConfig:
    """[sync]: flow sync with the peer appliances (docs/flowsync.md)."""
    enabled: bool = False
    listen_address: ipaddress.IPv4Address | ipaddress.IPv6Address = field(
        default_factory=lambda: ipaddress.IPv4Address("0.0.0.0"))
    listen_port: int = 7470
    peer_address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    peer_port: int = 7470
    peers: list[SyncPeer] = field(default_factory=list)   # N appliances; peer_address/peer_port = one peer
    batch_flows: int = 256              # flows per message at most
    batch_ms: int = 100                 # a message leaves at the latest this long after its first flow
    max_flows_per_s: int = 50000        # sending rate bound (events, refresh and resync together)
    queue_flows: int = 65536            # flows waiting to be sent (or installed) at most; beyond: dropped, counted
    refresh_s: float = 30.0             # every flow seen since the last refresh is sent again this often


@dataclass
class BgpPeerConfig:
    """One [[bgp.peer]]: an upstream router this appliance keeps a BGP session with ("as" in the file)."""
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    asn: int
    port: int = 179
    source: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None     # None: chosen by the kernel
    password: str = ""                  # TCP MD5 signature key; "" = none


@dataclass
class BgpConfig:
    """[bgp]: how the routing engine announces the bgp clusters' addresses (docs/bgp.md)."""
    local_as: int
    router_id: ipaddress.IPv4Address
    engine: str = "bird"
    hold_time: int = 9                  # seconds: 0 (no keepalives) or 3..65535
    next_hop: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None   # None: the session's local address
    communities: list[str] = field(default_factory=list)                    # "ASN:VALUE", standard communities
    bfd: bool = True
    bfd_interval_ms: int = 100
    bfd_multiplier: int = 3
    drain_timeout: float = 30.0         # seconds established flows keep going after a drain's or a stop's withdraw
    socket: str = "/run/pydp/bird.ctl"
    config_path: str = "/run/pydp/bird.conf"
    peers: list[BgpPeerConfig] = field(default_factory=list)


@dataclass
class ApplianceConfig:
    dataplane: DataplaneConfig = field(default_factory=DataplaneConfig)
    ports: list[PortConfig] = field(default_factory=list)
    clusters: list[ClusterConfig] = field(default_factory=list)
    sync: SyncConfig = field(default_factory=SyncConfig)
    bgp: BgpConfig | None = None        # None: no [bgp] section


# ---- converters (first pass): each returns the converted value or raises _Bad(reason) ----

Conv = Callable[[Any], Any]


def _c_bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Bad(f"must be a boolean (true or false), {_got(v)}")
    return v


def _c_int(lo: int, hi: int) -> Conv:
    def conv(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Bad(f"must be an integer, {_got(v)}")
        if not lo <= v <= hi:
            raise _Bad(f"must be between {lo} and {hi}, got {v}")
        return v
    return conv


def _c_num(lo: float, hi: float, lo_open: bool = False, what: str = "a number") -> Conv:
    def conv(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _Bad(f"must be {what}, {_got(v)}")
        if isinstance(v, float) and not math.isfinite(v):
            raise _Bad(f"must be a finite number, got {_show(v)}")
        if (v <= lo if lo_open else v < lo) or v > hi:
            lo_txt = f"greater than {lo:g}" if lo_open else f"at least {lo:g}"
            raise _Bad(f"must be {lo_txt} and at most {hi:g}, got {v}")
        return float(v)
    return conv


def _c_str(v: Any) -> str:
    if not isinstance(v, str):
        raise _Bad(f"must be a string, {_got(v)}")
    return v


def _c_enum(choices: tuple[str, ...]) -> Conv:
    def conv(v: Any) -> str:
        _c_str(v)
        if v not in choices:
            raise _Bad(f"must be one of {', '.join(repr(c) for c in choices)}; got {v!r}")
        return v
    return conv


def _c_pattern(rx: re.Pattern[str], what: str) -> Conv:
    def conv(v: Any) -> str:
        _c_str(v)
        if not rx.fullmatch(v):
            raise _Bad(f"{v!r} is not a valid name ({what})")
        return v
    return conv


def _c_maglev(v: Any) -> int:
    _c_int(MAGLEV_MIN_SIZE, MAGLEV_MAX_SIZE)(v)
    if not is_prime(v):
        below, above = _neighbour_primes(v)
        near = " or ".join(str(p) for p in (below, above)
                           if p is not None and MAGLEV_MIN_SIZE <= p <= MAGLEV_MAX_SIZE)
        raise _Bad(f"must be a prime number, {v} is not (nearest primes: {near})")
    return v


def _c_lcores(v: Any) -> str:
    _c_str(v)
    try:
        cores = parse_lcores(v)
    except ValueError as e:
        raise _Bad(str(e)) from None
    workers = len(cores) - 1
    if workers < 1:
        raise _Bad(f"needs at least 2 lcores (the first is the main lcore, the others are workers), got {v!r}")
    if workers > MAX_WORKERS:
        raise _Bad(f"at most {MAX_WORKERS} workers (PYDP_MAX_WORKERS) plus the main lcore, got {workers} workers")
    return v


def _c_abs_path(max_len: int | None = None) -> Conv:
    def conv(v: Any) -> str:
        _c_str(v)
        if not v.startswith("/"):
            raise _Bad(f"must be an absolute path, got {v!r}")
        if "\0" in v:
            raise _Bad("must not contain a NUL character")
        if max_len is not None and len(v.encode()) > max_len:
            raise _Bad(f"is too long ({len(v.encode())} bytes, at most {max_len})")
        if v.endswith("/") and v != "/":
            raise _Bad(f"must name a file, not a directory, got {v!r}")
        return v
    return conv


def _c_opt_abs_path(v: Any) -> str:
    _c_str(v)
    return "" if v == "" else _c_abs_path()(v)


def _c_str_list(v: Any) -> list[str]:
    if not isinstance(v, list):
        raise _Bad(f"must be an array of strings, {_got(v)}")
    for i, item in enumerate(v):
        if not isinstance(item, str):
            raise _Bad(f"item {i} must be a string, {_got(item)}")
    return list(v)


def _c_eal_args(v: Any) -> list[str]:
    args = _c_str_list(v)
    for i, a in enumerate(args):
        if a == "" or "\0" in a:
            raise _Bad(f"item {i} must be a non-empty string without NUL characters")
        if a.startswith("--"):
            opt = a.split("=", 1)[0]
            key = _EAL_RESERVED_LONG.get(opt)
        else:
            opt = a[:2]
            key = _EAL_RESERVED_SHORT.get(opt)
        if key is not None:
            raise _Bad(f"item {i} ({a!r}): EAL option {opt} is set from dataplane.{key}; set that key instead")
    return args


def _c_mac(v: Any) -> str:
    _c_str(v)
    if not _MAC_RE.fullmatch(v):
        raise _Bad(f"{v!r} is not a MAC address (expected aa:bb:cc:dd:ee:ff)")
    mac = _norm_mac(v)
    if int(mac[:2], 16) & 1:
        raise _Bad(f"{v!r} is a multicast/broadcast MAC address; a unicast one is required")
    if mac == "00:00:00:00:00:00":
        raise _Bad(f"{v!r} is the all-zero MAC address")
    return mac


def _c_opt_mac(v: Any) -> str | None:
    _c_str(v)
    return None if v == "" else _c_mac(v)


def _c_unicast_ip(v: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    _c_str(v)
    if "%" in v:
        raise _Bad(f"{v!r}: an IPv6 zone index ('%...') is not allowed")
    try:
        ip = ipaddress.ip_address(v)
    except ValueError:
        raise _Bad(f"{v!r} is not an IP address") from None
    why = None
    if ip.is_unspecified:
        why = "unspecified"
    elif ip.is_multicast:
        why = "multicast"
    elif ip.is_loopback:
        why = "loopback"
    elif ip.is_link_local:
        why = "link-local"
    elif ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255"):
        why = "broadcast"
    elif ip.version == 6 and ip.ipv4_mapped is not None:
        why = "IPv4-mapped; write the IPv4 address itself"
    if why:
        raise _Bad(f"{v!r} is not a unicast address ({why})")
    return ip


def _c_any_ip(v: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address to listen on: unicast, or the unspecified address (every address of the appliance)."""
    _c_str(v)
    try:
        ip = ipaddress.ip_address(v)
    except ValueError:
        raise _Bad(f"{v!r} is not an IP address") from None
    if ip.is_multicast:
        raise _Bad(f"{v!r} is a multicast address")
    return ip


def _c_opt_unicast_ip(v: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    return None if v == "" else _c_unicast_ip(v)


def _c_sync_peer(v: Any) -> SyncPeer:
    """"addr" or "addr:port" ("[v6addr]:port" for an IPv6 address with a port)."""
    _c_str(v)
    host, port = v, 7470
    m = re.fullmatch(r"\[([^\]]*)\](?::(.*))?", v)
    if m:
        host, p = m.group(1), m.group(2)
        if p is None:
            raise _Bad(f"{v!r}: write [address]:port, or the IPv6 address without brackets")
    elif v.count(":") == 1:
        host, p = v.split(":")
    else:
        p = None
    if p is not None:
        if not p.isdigit() or not 1 <= int(p) <= 65535:
            raise _Bad(f"{v!r}: port {p!r} is not 1..65535")
        port = int(p)
    try:
        ip = _c_unicast_ip(host)
    except _Bad as e:
        raise _Bad(f"{v!r}: {e}") from None
    return SyncPeer(ip, port)


def _c_sync_peers(v: Any) -> list[SyncPeer]:
    if not isinstance(v, list):
        raise _Bad(f"must be an array of \"address\" or \"address:port\" strings, {_got(v)}")
    if len(v) > MAX_SYNC_PEERS:
        raise _Bad(f"at most {MAX_SYNC_PEERS} peers, got {len(v)}")
    out: list[SyncPeer] = []
    for i, item in enumerate(v):
        try:
            peer = _c_sync_peer(item)
        except _Bad as e:
            raise _Bad(f"item {i}: {e}") from None
        if any(p.address == peer.address for p in out):
            raise _Bad(f"item {i}: {peer.address} is listed twice (one appliance is one peer)")
        out.append(peer)
    return out


def sync_peers(sy: SyncConfig) -> list[SyncPeer]:
    """The flow-sync peers of a [sync] section: peers, or the one peer of peer_address/peer_port."""
    if sy.peers:
        return list(sy.peers)
    return [SyncPeer(sy.peer_address, sy.peer_port)] if sy.peer_address is not None else []


def _c_prefix(version: int) -> Conv:
    def conv(v: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        _c_str(v)
        if "/" not in v:
            raise _Bad(f"{v!r} is not an IPv{version} prefix (address/length)")
        try:
            net = ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise _Bad(f"{v!r} is not an IPv{version} prefix (address/length)") from None
        if net.version != version:
            raise _Bad(f"{v!r} is not an IPv{version} prefix")
        if net.network_address != ipaddress.ip_address(v.split("/", 1)[0]):
            raise _Bad(f"{v!r} has host bits set (did you mean '{net}'?)")
        if net.prefixlen == 0:
            raise _Bad(f"{v!r}: the prefix length must not be 0")
        if net.is_multicast or net.network_address.is_loopback or net.network_address.is_unspecified:
            raise _Bad(f"{v!r} is not a unicast prefix")
        return net
    return conv


def _c_router_id(v: Any) -> ipaddress.IPv4Address:
    _c_str(v)
    try:
        ip = ipaddress.IPv4Address(v)
    except ValueError:
        raise _Bad(f"{v!r} is not in IPv4 address form (a router ID is 32 bits written like an IPv4 address)") \
            from None
    if int(ip) == 0:
        raise _Bad("must not be 0.0.0.0")
    return ip


def _c_hold_time(v: Any) -> int:
    n = _c_int(0, 65535)(v)
    if n in (1, 2):
        raise _Bad(f"must be 0 (no keepalives) or 3..65535 seconds, got {n}")
    return n


_COMMUNITY_RE = re.compile(r"(\d{1,5}):(\d{1,5})")


def _c_communities(v: Any) -> list[str]:
    if not isinstance(v, list):
        raise _Bad(f"must be an array of strings like \"64512:100\", {_got(v)}")
    out = []
    for x in v:
        m = _COMMUNITY_RE.fullmatch(x) if isinstance(x, str) else None
        if not m or int(m[1]) > 65535 or int(m[2]) > 65535:
            raise _Bad(f"{_show(x)} is not a standard community (\"ASN:VALUE\", each 0..65535)")
        out.append(f"{int(m[1])}:{int(m[2])}")
    return out


def _c_bgp_password(v: Any) -> str:
    _c_str(v)
    if len(v.encode()) > 80:
        raise _Bad("is too long (at most 80 bytes: the TCP MD5 key)")
    if any(ord(ch) < 0x20 or ch in "\"\\" for ch in v):
        raise _Bad("must not contain control characters, quotes or backslashes")
    return v


def _c_device(v: Any) -> str:
    _c_str(v)
    try:
        name = pdevice.port_name(v)
    except ValueError as e:
        raise _Bad(str(e)) from None
    if len(name) > DEVICE_NAME_MAX:
        raise _Bad(f"device name {name!r} is too long ({len(name)} characters, at most {DEVICE_NAME_MAX})")
    return v


def _c_ifname(v: Any) -> str:
    _c_str(v)
    if v == "":
        return v
    if len(v.encode()) > IFNAME_MAX:
        raise _Bad(f"{v!r} is too long for an interface name ({len(v.encode())} bytes, at most {IFNAME_MAX})")
    if v in (".", "..") or not all(33 <= ord(c) <= 126 and c not in "/:" for c in v):
        raise _Bad(f"{v!r} is not a valid interface name (printable ASCII without '/', ':' or spaces)")
    return v


def _c_passphrase(v: Any) -> str:
    _c_str(v)
    n = len(v.encode())
    if n > CARP_PASSPHRASE_MAX:
        raise _Bad(f"is {n} bytes (UTF-8), at most {CARP_PASSPHRASE_MAX} allowed")
    if "\0" in v:
        raise _Bad("must not contain a NUL character")
    return v


def _c_http_path(v: Any) -> str:
    _c_str(v)
    if not v.startswith("/"):
        raise _Bad(f"must start with '/', got {v!r}")
    if any(ord(c) <= 32 or ord(c) == 127 for c in v):
        raise _Bad(f"{v!r} must not contain spaces or control characters (percent-encode them)")
    return v


def _c_host(v: Any) -> str:
    _c_str(v)
    if any(ord(c) <= 32 or ord(c) == 127 for c in v):
        raise _Bad(f"{v!r} must not contain spaces or control characters")
    if len(v) > 255:
        raise _Bad("is too long (at most 255 characters)")
    return v


# ---- first pass: tables ----

_REQUIRED = object()
_SUB = object()   # a sub-table handled by the caller


class _Ctx:
    def __init__(self, source: str, require_ports: bool = True):
        self.source = source
        self.require_ports = require_ports
        self.errors: list[str] = []

    def err(self, path: str, reason: str) -> None:
        self.errors.append(f"{path}: {reason}")


def _as_table(ctx: _Ctx, path: str, v: Any) -> dict | None:
    if not isinstance(v, dict):
        ctx.err(path, f"must be a table, {_got(v)}")
        return None
    return v


def _as_table_array(ctx: _Ctx, path: str, v: Any, header: str) -> list[dict] | None:
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        ctx.err(path, f"must be an array of tables ([[{header}]]), {_got(v)}")
        return None
    return v


def _fields(ctx: _Ctx, path: str, d: dict, spec: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    """Convert the keys of table d by spec {key: (converter or _SUB, default or _REQUIRED)}. Unknown keys,
    bad values and missing required keys are errors; bad values come back as _BAD, absent ones as the default."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if key not in spec:
            hint = difflib.get_close_matches(key, list(spec), n=1, cutoff=0.75)
            ctx.err(_path(path, key), "unknown key" + (f" (did you mean '{hint[0]}'?)" if hint else ""))
            continue
        conv = spec[key][0]
        if conv is _SUB:
            continue
        try:
            out[key] = conv(value)
        except _Bad as e:
            ctx.err(_path(path, key), str(e))
            out[key] = _BAD
    for key, (conv, default) in spec.items():
        if key in out or conv is _SUB:
            continue
        if default is _REQUIRED:
            ctx.err(_path(path, key), "required key is missing")
            out[key] = _BAD
        else:
            out[key] = list(default) if isinstance(default, list) else default
    return out


def _sub(ctx: _Ctx, path: str, d: dict, key: str) -> dict:
    if key not in d:
        return {}
    t = _as_table(ctx, _path(path, key), d[key])
    return t if t is not None else {}


_TIMEOUT = _c_num(0, MAX_TIMEOUT_S, lo_open=True, what="a number of seconds")


def _c_timeout(v: Any) -> float:
    s = _TIMEOUT(v)
    if s < 0.001:
        raise _Bad(f"must be at least 0.001 (the data plane counts milliseconds), got {v}")
    return s


def _spec(cls: type, convs: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The spec of a table, {key: (converter, default)}: the defaults are the dataclass's own (one source; a field
    without a default is a required key). A _SUB key (a sub-table) needs no field of that name."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, tuple[Any, Any]] = {}
    for key, conv in convs.items():
        if conv is _SUB:
            out[key] = (_SUB, None)
            continue
        f = fields[key]
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = _REQUIRED
        out[key] = (conv, default)
    return out


_TIMEOUTS_SPEC = _spec(Timeouts, {k: _c_timeout for k in ("tcp_syn", "tcp_established", "tcp_fin", "udp",
                                                           "other")})
_IPIP_SPEC = _spec(IpipConfig, {
    "source4": _c_prefix(4),
    "source6": _c_prefix(6),
    "gateway_mac": _c_opt_mac,
})
_DATAPLANE_SPEC = _spec(DataplaneConfig, {
    "lcores": _c_lcores,
    "busy_poll": _c_bool,
    "idle_sleep_max_us": _c_int(1, 100000),
    "idle_sleep_deep_us": _c_int(0, 100000),
    "tx_drain_us": _c_int(1, 10000),
    "flow_capacity": _c_int(1024, 67108864),
    "maglev_size": _c_maglev,
    "hash_seed": _c_int(0, 2**32 - 1),
    "shm_path": _c_abs_path(SHM_PATH_MAX),
    "hugepages": _c_bool,
    "memory_mb": _c_int(64, 65536),
    "eal_args": _c_eal_args,
    "burst": _c_int(1, 256),
    "rx_desc": _c_int(64, 16384),
    "tx_desc": _c_int(64, 16384),
    "mbufs": _c_int(1023, 1048575),
    "exception_pps": _c_int(1, 10000000),
    "exception_priority_pps": _c_int(1, 10000000),
    "exception_carp_pps": _c_int(1, 10000000),
    "exception_control_pps": _c_int(1, 10000000),
    "timeouts": _SUB,
    "ipip": _SUB,
})
_PORT_SPEC = _spec(PortConfig, {
    "name": _c_pattern(_PORT_NAME_RE, f"1 to {IFNAME_MAX} of A-Z a-z 0-9 _ . -"),
    "device": _c_device,
    "tap": _c_ifname,
    "promiscuous": _c_bool,
})
_NAME_WHAT = f"1 to {NAME_MAX} of A-Z a-z 0-9 _ . -"
_CLUSTER_SPEC = _spec(ClusterConfig, {
    "name": _c_pattern(_NAME_RE, _NAME_WHAT),
    "cluster_ip": _c_unicast_ip,
    "enabled": _c_bool,
    "mode": _c_enum(CLUSTER_MODES),
    "dsr": _c_enum(DSR_MODES),
    "ipsec_local_termination": _c_bool,
    "maglev_size": _c_maglev,
    "drain_timeout": _c_num(0, MAX_DRAIN_TIMEOUT_S, what="a number of seconds"),
    "failover": _c_enum(FAILOVER_MODES),
    "carp": _SUB,
    "health": _SUB,
    "edge": _SUB,
})
_CARP_SPEC = _spec(CarpConfig, {
    "vhid": _c_int(1, 255),
    "advbase": _c_int(1, 255),
    "advskew": _c_int(0, 254),
    "passphrase": _c_passphrase,
    "passphrase_file": _c_opt_abs_path,
    "preempt": _c_bool,
})
_HEALTH_SPEC = _spec(HealthConfig, {
    "type": _c_enum(HEALTH_TYPES),
    "port": _c_int(1, 65535),
    "path": _c_http_path,
    "host": _c_host,
    "expect_status": _c_int(100, 599),
    "expect_body": _c_str,
    "interval": _c_num(0.1, 3600, what="a number of seconds"),
    "timeout": _c_num(0, 3600, lo_open=True, what="a number of seconds"),
    "rise": _c_int(1, 100),
    "fall": _c_int(1, 100),
})
_EDGE_SPEC = _spec(EdgeConfig, {
    "name": _c_pattern(_NAME_RE, _NAME_WHAT),
    "ip": _c_unicast_ip,
    "mac": _c_opt_mac,
    "weight": _c_int(1, 65535),
    "state": _c_enum(EDGE_STATES),
})
_SYNC_SPEC = _spec(SyncConfig, {
    "enabled": _c_bool,
    "listen_address": _c_any_ip,
    "listen_port": _c_int(1, 65535),
    "peer_address": _c_opt_unicast_ip,
    "peer_port": _c_int(1, 65535),
    "peers": _c_sync_peers,
    "batch_flows": _c_int(1, 4096),
    "batch_ms": _c_int(1, 10000),
    "max_flows_per_s": _c_int(1, 10000000),
    "queue_flows": _c_int(1024, 16777216),
    "refresh_s": _c_num(1, 86400, what="a number of seconds"),
})
_BGP_SPEC = _spec(BgpConfig, {
    "engine": _c_enum(BGP_ENGINES),
    "local_as": _c_int(1, 2**32 - 1),
    "router_id": _c_router_id,
    "hold_time": _c_hold_time,
    "next_hop": _c_opt_unicast_ip,
    "communities": _c_communities,
    "bfd": _c_bool,
    "bfd_interval_ms": _c_int(10, 10000),
    "bfd_multiplier": _c_int(1, 255),
    "drain_timeout": _c_num(0, MAX_TIMEOUT_S, what="a number of seconds"),
    "socket": _c_abs_path(107),
    "config_path": _c_abs_path(),
    "peer": _SUB,
})
# the TOML key "as" is a Python keyword: the field is asn
_BGP_PEER_SPEC = {
    "address": (_c_unicast_ip, _REQUIRED),
    "as": (_c_int(1, 2**32 - 1), _REQUIRED),
    "port": (_c_int(1, 65535), 179),
    "source": (_c_opt_unicast_ip, None),
    "password": (_c_bgp_password, ""),
}
_TOP_SPEC = _spec(ApplianceConfig, {"dataplane": _SUB, "port": _SUB, "cluster": _SUB, "sync": _SUB, "bgp": _SUB})


def _parse(ctx: _Ctx, d: Any) -> ApplianceConfig:
    if not isinstance(d, dict):
        ctx.err("(top level)", f"must be a table, {_got(d)}")
        return ApplianceConfig()
    _fields(ctx, "", d, _TOP_SPEC)   # unknown top-level keys

    dp_t = _sub(ctx, "", d, "dataplane")
    dpv = _fields(ctx, "dataplane", dp_t, _DATAPLANE_SPEC)
    timeouts = Timeouts(**_fields(ctx, "dataplane.timeouts", _sub(ctx, "dataplane", dp_t, "timeouts"),
                                  _TIMEOUTS_SPEC))
    ipip = IpipConfig(**_fields(ctx, "dataplane.ipip", _sub(ctx, "dataplane", dp_t, "ipip"), _IPIP_SPEC))
    dataplane = DataplaneConfig(**dpv, timeouts=timeouts, ipip=ipip)

    ports: list[PortConfig] = []
    port_list = _as_table_array(ctx, "port", d["port"], "port") if "port" in d else []
    if port_list is not None:
        if not port_list and ctx.require_ports:
            ctx.err("port", "at least one port is required ([[port]] with name and device)")
        elif len(port_list) > MAX_PORTS:
            ctx.err("port", f"at most {MAX_PORTS} ports (PYDP_MAX_PORTS), got {len(port_list)}")
        for i, pt in enumerate(port_list):
            ports.append(PortConfig(**_fields(ctx, f"port[{i}]", pt, _PORT_SPEC)))

    clusters: list[ClusterConfig] = []
    cl_list = _as_table_array(ctx, "cluster", d["cluster"], "cluster") if "cluster" in d else []
    if cl_list is not None:
        if len(cl_list) > MAX_CLUSTERS:
            ctx.err("cluster", f"at most {MAX_CLUSTERS} clusters (PYDP_MAX_CLUSTERS), got {len(cl_list)}")
        for i, ct in enumerate(cl_list):
            p = f"cluster[{i}]"
            cv = _fields(ctx, p, ct, _CLUSTER_SPEC)
            carp = CarpConfig(**_fields(ctx, f"{p}.carp", _sub(ctx, p, ct, "carp"), _CARP_SPEC))
            health = HealthConfig(**_fields(ctx, f"{p}.health", _sub(ctx, p, ct, "health"), _HEALTH_SPEC))
            edges: list[EdgeConfig] = []
            edge_list = _as_table_array(ctx, f"{p}.edge", ct["edge"], "cluster.edge") if "edge" in ct else []
            for j, et in enumerate(edge_list or []):
                edges.append(EdgeConfig(**_fields(ctx, f"{p}.edge[{j}]", et, _EDGE_SPEC)))
            if cv["maglev_size"] is None:
                cv["maglev_size"] = dataplane.maglev_size
            clusters.append(ClusterConfig(**cv, carp=carp, health=health, edges=edges))
            if edge_list is None:
                clusters[-1].edges = _BAD  # type: ignore[assignment]
    sync = SyncConfig(**_fields(ctx, "sync", _sub(ctx, "", d, "sync"), _SYNC_SPEC))
    bgp = None
    if "bgp" in d:
        bt = _sub(ctx, "", d, "bgp")
        bv = _fields(ctx, "bgp", bt, _BGP_SPEC)
        peers = []
        peer_list = _as_table_array(ctx, "bgp.peer", bt["peer"], "bgp.peer") if "peer" in bt else []
        for i, pt in enumerate(peer_list or []):
            pv = _fields(ctx, f"bgp.peer[{i}]", pt, _BGP_PEER_SPEC)
            pv["asn"] = pv.pop("as")
            peers.append(BgpPeerConfig(**pv))
        if peer_list is not None and not peer_list:
            ctx.err("bgp.peer", "at least one peer is required ([[bgp.peer]] with address and as)")
        bgp = BgpConfig(**bv, peers=peers)
    return ApplianceConfig(dataplane=dataplane, ports=ports, clusters=clusters, sync=sync, bgp=bgp)


# ---- second pass: rules across keys ----

def _unique(ctx: _Ctx, items: list[tuple[str, Any]], what: str, key: Callable[[Any], Any] = lambda v: v,
            hint: Callable[[str, Any], str] = lambda p, v: "") -> None:
    """items: (path, value); reports every value seen before at another path."""
    seen: dict[Any, str] = {}
    for path, value in items:
        if not _ok(value):
            continue
        k = key(value)
        if k in seen:
            ctx.err(path, f"duplicate {what} {str(value)!r} (also at {seen[k]}){hint(path, value)}")
        else:
            seen[k] = path


def _cross_check(ctx: _Ctx, cfg: ApplianceConfig) -> None:
    dp = cfg.dataplane

    _unique(ctx, [(f"port[{i}].name", p.name) for i, p in enumerate(cfg.ports)], "port name")
    _unique(ctx, [(f"port[{i}].device", p.device) for i, p in enumerate(cfg.ports)], "device",
            key=pdevice.port_name)
    # A TAP name derived from a duplicate port name is not reported twice.
    default_taps = {i for i, p in enumerate(cfg.ports) if _ok(p.name) and p.tap == _default_tap(p.name)}
    dup_names = {i for i, p in enumerate(cfg.ports) if any(q.name == p.name for q in cfg.ports[:i])}
    _unique(ctx, [(f"port[{i}].tap", p.tap) for i, p in enumerate(cfg.ports)
                  if p.tap and not (i in default_taps and i in dup_names)], "TAP interface name",
            hint=lambda path, v: " (derived from the port name: set tap explicitly)"
            if int(path[5:path.index("]")]) in default_taps else "")

    _unique(ctx, [(f"cluster[{i}].name", c.name) for i, c in enumerate(cfg.clusters)], "cluster name")
    _unique(ctx, [(f"cluster[{i}].cluster_ip", c.cluster_ip) for i, c in enumerate(cfg.clusters)], "cluster_ip")
    _unique(ctx, [(f"cluster[{i}].carp.vhid", c.carp.vhid) for i, c in enumerate(cfg.clusters)
                  if c.mode == "cluster" and c.failover != "bgp"], "CARP vhid")
    _check_bgp(ctx, cfg)

    ipip_users = []
    for i, c in enumerate(cfg.clusters):
        p = f"cluster[{i}]"
        if c.dsr == "ipip":
            ipip_users.append(f"{p} {c.name!r}" if _ok(c.name) else p)
        if not _ok(c.edges):
            continue
        n = len(c.edges)
        if c.mode == "cluster" and not 2 <= n <= MAX_EDGES:
            ctx.err(f"{p}.edge", f"mode 'cluster' needs 2 to {MAX_EDGES} edges, got {n}")
        elif c.mode == "standalone" and n != 1:
            ctx.err(f"{p}.edge", f"mode 'standalone' needs exactly 1 edge, got {n}")
        elif c.mode is _BAD and n > MAX_EDGES:
            ctx.err(f"{p}.edge", f"at most {MAX_EDGES} edges (PYDP_MAX_EDGES), got {n}")
        if _ok(c.maglev_size) and c.maglev_size is not None and c.maglev_size < n:
            ctx.err(f"{p}.maglev_size", f"must be at least the number of edges ({n}), got {c.maglev_size}")
        _unique(ctx, [(f"{p}.edge[{j}].name", e.name) for j, e in enumerate(c.edges)], "edge name")
        _unique(ctx, [(f"{p}.edge[{j}].ip", e.ip) for j, e in enumerate(c.edges)], "edge ip")
        for j, e in enumerate(c.edges):
            if not _ok(e.ip, c.cluster_ip):
                continue
            if e.ip == c.cluster_ip:
                ctx.err(f"{p}.edge[{j}].ip", f"{str(e.ip)!r} is the cluster_ip itself; give the edge's own address")
            elif c.dsr == "ipip" and e.ip.version != c.cluster_ip.version:
                ctx.err(f"{p}.edge[{j}].ip", f"{str(e.ip)!r} is IPv{e.ip.version} but cluster_ip is "
                        f"IPv{c.cluster_ip.version}; with dsr = \"ipip\" edges must be of the cluster_ip's family")

        # CARP (ignored for standalone clusters)
        carp = c.carp
        if c.mode == "cluster" and _ok(carp.passphrase, carp.passphrase_file) and carp.passphrase_file:
            if carp.passphrase:
                ctx.err(f"{p}.carp.passphrase_file", "cannot be used together with passphrase (set only one)")
            else:
                carp.passphrase = _read_passphrase(ctx, f"{p}.carp.passphrase_file", carp.passphrase_file)

        h = c.health
        if _ok(h.interval, h.timeout) and h.timeout >= h.interval:
            ctx.err(f"{p}.health.timeout", f"must be less than interval ({h.interval:g}), got {h.timeout:g}")

    _check_sync(ctx, cfg)
    if ipip_users and _ok(dp.ipip.gateway_mac) and dp.ipip.gateway_mac is None:
        ctx.err("dataplane.ipip.gateway_mac", "required when a cluster uses dsr = \"ipip\" (used by "
                + ", ".join(ipip_users) + ")")


def _check_bgp(ctx: _Ctx, cfg: ApplianceConfig) -> None:
    """[bgp] is needed as soon as one cluster in mode "cluster" has failover = "bgp"; its peers are unique, a
    source address is of its peer's family, and every bgp cluster's address family has a peer to announce it to."""
    bgp = cfg.bgp
    users = [(i, c) for i, c in enumerate(cfg.clusters) if c.mode == "cluster" and c.failover == "bgp"]
    if bgp is None:
        for i, c in users:
            ctx.err(f"cluster[{i}].failover", "\"bgp\" needs a [bgp] section with at least one [[bgp.peer]] "
                                              "(docs/bgp.md)")
        return
    _unique(ctx, [(f"bgp.peer[{i}].address", p.address) for i, p in enumerate(bgp.peers)], "peer address")
    families = set()
    for i, p in enumerate(bgp.peers):
        if not _ok(p.address):
            continue
        families.add(p.address.version)
        if _ok(p.source) and p.source is not None and p.source.version != p.address.version:
            ctx.err(f"bgp.peer[{i}].source", f"{str(p.source)!r} is IPv{p.source.version} but the peer's address "
                                             f"is IPv{p.address.version}")
    if _ok(bgp.next_hop) and bgp.next_hop is not None and bgp.next_hop.version not in families and families:
        ctx.err("bgp.next_hop", f"{str(bgp.next_hop)!r} is IPv{bgp.next_hop.version} but no peer is")
    for i, c in users:
        if _ok(c.cluster_ip) and families and c.cluster_ip.version not in families:
            ctx.err(f"cluster[{i}].cluster_ip", f"{str(c.cluster_ip)!r} is IPv{c.cluster_ip.version} but no "
                                                f"[[bgp.peer]] is: nothing could announce it")


def _check_sync(ctx: _Ctx, cfg: ApplianceConfig) -> None:
    """Flow sync needs its peer, and a secret for every CARP cluster: its messages are authenticated with a key
    derived from the cluster's CARP passphrase."""
    sy = cfg.sync
    if not sy.enabled:
        return
    if _ok(sy.peers) and _ok(sy.peer_address):
        if sy.peers and sy.peer_address is not None:
            ctx.err("sync.peers", "give either peers (any number of appliances) or peer_address (one), not both")
        elif not sy.peers and sy.peer_address is None:
            ctx.err("sync.peer_address", "required when flow sync is enabled (the peer appliance's management "
                                         "address), or sync.peers for several appliances")
        for i, p in enumerate(sy.peers):
            if p.address == sy.listen_address and p.port == sy.listen_port:
                ctx.err("sync.peers", f"item {i} ({p}) is this appliance's own listen_address and listen_port")
    t = cfg.dataplane.timeouts
    shortest = min((getattr(t, k), k) for k in ("tcp_established", "udp", "other") if _ok(getattr(t, k)))
    if _ok(sy.refresh_s) and sy.refresh_s >= shortest[0]:
        ctx.err("sync.refresh_s", f"must be less than dataplane.timeouts.{shortest[1]} ({shortest[0]:g}): the peer's "
                                  f"copies of idle flows would expire between two refreshes, got {sy.refresh_s:g}")
    for i, c in enumerate(cfg.clusters):
        if c.mode == "cluster" and _ok(c.carp.passphrase) and not c.carp.passphrase and not c.carp.passphrase_file:
            ctx.err(f"cluster[{i}].carp.passphrase", "required when flow sync is enabled (flow sync authenticates "
                                                     "the cluster's flows with a key derived from it)")


def _read_passphrase(ctx: _Ctx, path: str, filename: str) -> Any:
    try:
        with open(filename, "rb") as f:
            raw = f.read(4096)
    except OSError as e:
        ctx.err(path, f"cannot read {filename!r}: {e.strerror or e}")
        return _BAD
    if raw.endswith(b"\n"):
        raw = raw[:-1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        ctx.err(path, f"the passphrase in {filename!r} is not valid UTF-8")
        return _BAD
    if len(raw) > CARP_PASSPHRASE_MAX:
        ctx.err(path, f"the passphrase in {filename!r} is {len(raw)} bytes (UTF-8), "
                      f"at most {CARP_PASSPHRASE_MAX} allowed")
        return _BAD
    if "\0" in text:
        ctx.err(path, f"the passphrase in {filename!r} contains a NUL character")
        return _BAD
    return text


# ---- loading ----

def from_dict(d: Any, source: str = "<dict>", *, require_ports: bool = True) -> ApplianceConfig:
    """Validate a parsed TOML document (the dict tomllib returns) and build the config. ConfigError lists every
    problem found. require_ports=False accepts a configuration without [[port]] (a config store holds clusters
    before the appliance's ports are known; the data plane itself always needs a port)."""
    ctx = _Ctx(source, require_ports)
    cfg = _parse(ctx, d)
    _cross_check(ctx, cfg)
    if ctx.errors:
        raise ConfigError(ctx.errors, source)
    return cfg


def loads(text: str, source: str = "<string>", *, require_ports: bool = True) -> ApplianceConfig:
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"TOML syntax error: {e}"], source) from None
    return from_dict(d, source, require_ports=require_ports)


def load(path: str | os.PathLike[str]) -> ApplianceConfig:
    source = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError([f"cannot read the file: {e.strerror or e}"], source) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"the file is not valid UTF-8 (byte {e.start})"], source) from None
    return loads(text, source)


def validate(cfg: ApplianceConfig, source: str = "<config>", *, require_ports: bool = True) -> ApplianceConfig:
    """Check a config built or changed in code with the same rules as a file; returns the normalized copy."""
    return from_dict(to_dict(cfg, include_secrets=True), source, require_ports=require_ports)


# ---- writing ----

def _seconds(v: float) -> int | float:
    """Whole seconds are written as integers (30, not 30.0); they load back as the same float."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def to_dict(cfg: ApplianceConfig, include_secrets: bool = False) -> dict[str, Any]:
    """The config as a TOML-shaped dict (only str, int, float, bool, lists and dicts), every key written.
    CARP passphrases are "" unless include_secrets (a passphrase_file is always written as its path)."""
    dp = cfg.dataplane
    t = dp.timeouts
    out: dict[str, Any] = {
        "dataplane": {
            "lcores": dp.lcores,
            "busy_poll": dp.busy_poll,
            "idle_sleep_max_us": dp.idle_sleep_max_us,
            "idle_sleep_deep_us": dp.idle_sleep_deep_us,
            "tx_drain_us": dp.tx_drain_us,
            "flow_capacity": dp.flow_capacity,
            "maglev_size": dp.maglev_size,
            "hash_seed": dp.hash_seed,
            "shm_path": dp.shm_path,
            "hugepages": dp.hugepages,
            "memory_mb": dp.memory_mb,
            "eal_args": list(dp.eal_args),
            "burst": dp.burst,
            "rx_desc": dp.rx_desc,
            "tx_desc": dp.tx_desc,
            "mbufs": dp.mbufs,
            "exception_pps": dp.exception_pps,
            "exception_priority_pps": dp.exception_priority_pps,
            "exception_carp_pps": dp.exception_carp_pps,
            "exception_control_pps": dp.exception_control_pps,
            "timeouts": {k: _seconds(getattr(t, k)) for k in ("tcp_syn", "tcp_established", "tcp_fin", "udp",
                                                                  "other")},
            "ipip": {"source4": str(dp.ipip.source4), "source6": str(dp.ipip.source6),
                     "gateway_mac": dp.ipip.gateway_mac or ""},
        },
        "port": [{"name": p.name, "device": p.device, "tap": p.tap if p.tap is not None else _default_tap(p.name),
                  "promiscuous": p.promiscuous} for p in cfg.ports],
        "cluster": [],
    }
    sy = cfg.sync
    out["sync"] = {
        "enabled": sy.enabled, "listen_address": str(sy.listen_address), "listen_port": sy.listen_port,
        "peer_address": str(sy.peer_address) if sy.peer_address is not None else "", "peer_port": sy.peer_port,
        "peers": [str(p) for p in sy.peers],
        "batch_flows": sy.batch_flows, "batch_ms": sy.batch_ms, "max_flows_per_s": sy.max_flows_per_s,
        "queue_flows": sy.queue_flows, "refresh_s": _seconds(float(sy.refresh_s)),
    }
    for c in cfg.clusters:
        cd: dict[str, Any] = {
            "name": c.name,
            "cluster_ip": str(c.cluster_ip),
            "enabled": c.enabled,
            "mode": c.mode,
            "dsr": c.dsr,
            "ipsec_local_termination": c.ipsec_local_termination,
        }
        if c.maglev_size is not None:
            cd["maglev_size"] = c.maglev_size
        cd["drain_timeout"] = _seconds(float(c.drain_timeout))
        cd["failover"] = c.failover
        k = c.carp
        cd["carp"] = {
            "vhid": k.vhid, "advbase": k.advbase, "advskew": k.advskew,
            "passphrase": k.passphrase if include_secrets and not k.passphrase_file else "",
            "passphrase_file": k.passphrase_file, "preempt": k.preempt,
        }
        h = c.health
        cd["health"] = {
            "type": h.type, "port": h.port if h.port is not None else (443 if h.type == "https" else 80),
            "path": h.path, "host": h.host, "expect_status": h.expect_status, "expect_body": h.expect_body,
            "interval": float(h.interval), "timeout": float(h.timeout), "rise": h.rise, "fall": h.fall,
        }
        cd["edge"] = [{"name": e.name, "ip": str(e.ip), "mac": e.mac or "", "weight": e.weight, "state": e.state}
                      for e in c.edges]
        out["cluster"].append(cd)
    if cfg.bgp is not None:
        out["bgp"] = bgp_to_dict(cfg.bgp, include_secrets)
    return out


def bgp_to_dict(b: BgpConfig, include_secrets: bool = False) -> dict[str, Any]:
    """[bgp] as a TOML-shaped dict; peer passwords are "" unless include_secrets."""
    return {
        "engine": b.engine, "local_as": b.local_as, "router_id": str(b.router_id), "hold_time": b.hold_time,
        "next_hop": str(b.next_hop) if b.next_hop is not None else "", "communities": list(b.communities),
        "bfd": b.bfd, "bfd_interval_ms": b.bfd_interval_ms, "bfd_multiplier": b.bfd_multiplier,
        "drain_timeout": _seconds(float(b.drain_timeout)), "socket": b.socket, "config_path": b.config_path,
        "peer": [{"address": str(p.address), "as": p.asn, "port": p.port,
                  "source": str(p.source) if p.source is not None else "",
                  "password": p.password if include_secrets else ""} for p in b.peers],
    }


_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_key(k: str) -> str:
    return k if _BARE_KEY_RE.fullmatch(k) else _toml_str(k)


def _toml_value(v: Any, key: str = "") -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return f"0x{v:x}" if key == "hash_seed" and v >= 0 else str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"{key}: cannot write the non-finite number {v!r}")
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"{key}: cannot write a value of type {type(v).__name__}")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _emit(lines: list[str], prefix: str, d: dict[str, Any]) -> None:
    # Plain keys first: after a [header] every key belongs to that table, so sub-tables come last.
    for k, v in d.items():
        if not isinstance(v, dict) and not _is_table_array(v):
            lines.append(f"{_toml_key(k)} = {_toml_value(v, k)}")
    for k, v in d.items():
        if isinstance(v, dict):
            name = prefix + _toml_key(k)
            lines.extend(["", f"[{name}]"])
            _emit(lines, name + ".", v)
    for k, v in d.items():
        if _is_table_array(v):
            name = prefix + _toml_key(k)
            for item in v:
                lines.extend(["", f"[[{name}]]"])
                _emit(lines, name + ".", item)


def dumps(cfg: ApplianceConfig, include_secrets: bool = False) -> str:
    """The config as TOML text; loads() reads it back to an equal config (CARP passphrases excepted, which are
    written as "" unless include_secrets)."""
    lines = ["# pydp appliance configuration (format: docs/config.md)."]
    if not include_secrets:
        lines.append("# CARP passphrases are not exported; set them (or passphrase_file) before use.")
    d = to_dict(cfg, include_secrets)
    if not d["port"]:
        # A config store may hold clusters before any port is known; "port = []" would be valid TOML but read
        # oddly above the tables, so the key is left out (it loads back as no ports).
        del d["port"]
        lines.append("# No [[port]] yet: pydp-dataplane needs at least one.")
    lines.append("")
    body: list[str] = []
    _emit(body, "", d)
    while body and body[0] == "":
        body.pop(0)
    return "\n".join(lines + body) + "\n"


def dump(cfg: ApplianceConfig, path: str | os.PathLike[str], include_secrets: bool = False, *,
         require_ports: bool = True) -> None:
    """Write the config to path atomically: validated first (ConfigError, nothing written), then a temporary file
    in the same directory, fsync, rename over path. On any error path is untouched and the temporary file removed.
    A new file is created with mode 0644, or 0600 when it holds secrets; an existing file keeps its mode (less
    group/other access when it holds secrets)."""
    target = os.fspath(path)
    text = dumps(cfg, include_secrets)
    loads(text, source=target, require_ports=require_ports)
    write_atomic(target, text, private=include_secrets)


def write_atomic(path: str | os.PathLike[str], text: str, private: bool = False) -> None:
    """Replace path with text atomically (temporary file in the same directory, fsync, rename, fsync of the
    directory). On any error path is untouched and the temporary file removed. A new file gets mode 0644, or 0600
    when private; an existing file keeps its mode (without group/other access when private)."""
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    try:
        mode = os.stat(target).st_mode & 0o7777
    except OSError:
        mode = 0o644
    if private:
        mode &= 0o700
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(target) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
