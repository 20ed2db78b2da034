"""The virtual lab's topology as data: names, addresses and the appliance files, derived from (name, edges,
clients). Nothing here touches the system.

    namespace <name>-sw: bridge br0
      ├─ pA ── lb0 in <name>-lbA: pydp-dataplane (af_packet on lb0, TAP pydp-p0 198.51.100.2, 2001:db8::2)
      │        and pydp-control (CARP advskew 0, health checks)
      ├─ pB ── lb0 in <name>-lbB: the same, TAP 198.51.100.3, 2001:db8::3, CARP advskew 100
      │        (lbA and lbB also share a management link mg0, 192.0.2.1 and .2: flow sync)
      ├─ pc ── eth0 in <name>-cl: the clients, 198.51.100.100.. and 2001:db8::1:0.. (one address per client)
      └─ e1..eN ── eth0 in <name>-e1..eN: nginx on :80 (and a UDP echo on :53), the cluster IPs on lo

With --scale-out N (2..4) the lab is the scale-out one (issue 15): no CARP, N appliances announcing cluster web
over BGP to an upstream router that spreads the clients over them with ECMP:

    namespace <name>-sw: bridges br0 (the segment) and br1 (management)
      ├─ pr ── eth0 in <name>-rt: the router, 198.51.100.1, BIRD 2 (BGP + BFD with every appliance, ECMP)
      │        └─ eth1 203.0.113.1 ── eth0 in <name>-cl: the clients, 203.0.113.100.. (default route: the router)
      ├─ pA..pD ── lb0 in <name>-lbA..D: pydp-dataplane + pydp-control ([bgp] peering the router, BFD), TAP
      │        198.51.100.2..5; on br1 mg0 192.0.2.1..4: flow sync with every other appliance
      └─ e1..eN ── eth0 in <name>-e1..eN: nginx, the cluster IP on lo, default route via the router: the replies go
               to the clients through the router, never through an appliance (DSR)

Addresses come from the documentation ranges only; MACs are locally administered.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from pydp.config import MAX_EDGES

VIP = "198.51.100.10"           # cluster "web": HTTP and UDP through the active appliance
VIP6 = "2001:db8::10"           # cluster "web6"
VIP_IPSEC = "198.51.100.11"     # cluster "ipsec": IPsec local termination on
VIP_SOLO = "198.51.100.12"      # cluster "solo": standalone (one edge, no CARP), on appliance A only
VIP_OFF = "198.51.100.13"       # cluster "off": disabled, forwards nothing
HTTP_PORT = 80
UDP_PORT = 53
HEALTH_PATH = "/health"
PASSPHRASE = "pydp-lab-carp"
SYNC_PORT = 7470
ADVBASE = 1
HEALTH = {"interval": 0.5, "timeout": 0.4, "rise": 2, "fall": 3}
MAX_CLIENTS = 250
SCALE_OUT = (2, 4)              # appliances of the scale-out lab
ROUTER_AS = 64500               # the scale-out lab's upstream router (control/lab/router.py)
APPLIANCE_AS = 64512            # every appliance: the same AS, so the router's BGP paths are equal (ECMP)
ROUTER_ADDR = "198.51.100.1"    # the router on the segment: BGP peer of the appliances, the edges' gateway
ROUTER_MAC = "02:00:00:00:04:01"
ROUTER_CLIENT_MAC = "02:00:00:00:04:02"   # the router's port towards the clients (eth1)
CLIENT_GW = "203.0.113.1"       # the router on the clients' link
BFD_INTERVAL_MS = 100
BFD_MULTIPLIER = 3
HOLD_TIME = 3
DRAIN_TIMEOUT = 10.0            # [bgp] drain_timeout of the scale-out appliances (seconds)
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,15}$")


# The data plane part of every lab appliance's file: two lcores, a small flow table, one af_packet port.
APPLIANCE_DATAPLANE = """[dataplane]
lcores = "0-1"
flow_capacity = 16384
hugepages = true
memory_mb = 160
mbufs = 4095
[[port]]
name = "p0"
device = "net_af_packet0,iface=lb0"
tap = "pydp-p0"
"""


@dataclass(frozen=True)
class ApplianceSpec:
    name: str            # "A" or "B"
    mac: str
    addr: str
    addr6: str
    advskew: int
    mgmt: str            # on the management link mg0 between the appliances: flow sync

    def ns(self, lab: str) -> str:
        return f"{lab}-lb{self.name}"


@dataclass(frozen=True)
class EdgeSpec:
    name: str            # "e1".."e16"
    ip: str
    ip6: str
    mac: str

    def ns(self, lab: str) -> str:
        return f"{lab}-{self.name}"


APPLIANCES = (ApplianceSpec("A", "02:00:00:00:01:0a", "198.51.100.2", "2001:db8::2", 0, "192.0.2.1"),
              ApplianceSpec("B", "02:00:00:00:01:0b", "198.51.100.3", "2001:db8::3", 100, "192.0.2.2"))


def scaleout_spec(i: int) -> ApplianceSpec:
    """Appliance i (0..3) of the scale-out lab: A..D, TAP 198.51.100.2..5, management 192.0.2.1..4."""
    name = "ABCD"[i]
    return ApplianceSpec(name, f"02:00:00:00:01:{0x0a + i:02x}", f"198.51.100.{2 + i}", f"2001:db8::{2 + i:x}", 0,
                         f"192.0.2.{1 + i}")


def edge_spec(i: int) -> EdgeSpec:
    return EdgeSpec(f"e{i}", f"198.51.100.{20 + i}", f"2001:db8::{0x20 + i:x}", f"02:00:00:00:02:{i:02x}")


@dataclass
class Topology:
    name: str = "pydplab"
    edges: int = 3
    clients: int = 32
    scale_out: int = 0           # 0: the CARP pair; 2..4: the scale-out lab with that many appliances
    edge_specs: list[EdgeSpec] = field(init=False)

    def __post_init__(self):
        if not NAME_RE.match(self.name):
            raise ValueError(f"lab name {self.name!r}: lower-case letters and digits, starting with a letter, "
                             "at most 16")
        if not 2 <= self.edges <= MAX_EDGES - 1:
            raise ValueError(f"--edges {self.edges}: 2 to {MAX_EDGES - 1} (one slot stays free for adding an edge)")
        if not 1 <= self.clients <= MAX_CLIENTS:
            raise ValueError(f"--clients {self.clients}: 1 to {MAX_CLIENTS}")
        if self.scale_out and not SCALE_OUT[0] <= self.scale_out <= SCALE_OUT[1]:
            raise ValueError(f"--scale-out {self.scale_out}: {SCALE_OUT[0]} to {SCALE_OUT[1]} appliances")
        self.edge_specs = [edge_spec(i) for i in range(1, self.edges + 1)]

    @property
    def appliance_specs(self) -> tuple[ApplianceSpec, ...]:
        if self.scale_out:
            return tuple(scaleout_spec(i) for i in range(self.scale_out))
        return APPLIANCES

    @property
    def router_ns(self) -> str:
        return f"{self.name}-rt"

    @property
    def sw_ns(self) -> str:
        return f"{self.name}-sw"

    @property
    def client_ns(self) -> str:
        return f"{self.name}-cl"

    def client_ips(self) -> list[str]:
        if self.scale_out:              # behind the router
            return [f"203.0.113.{100 + j}" for j in range(min(self.clients, 150))]
        return [f"198.51.100.{100 + j}" for j in range(self.clients)]

    def client_ips6(self) -> list[str]:
        return [str(ipaddress.IPv6Address("2001:db8::1:0") + j) for j in range(self.clients)]

    def shm(self, appliance: str) -> str:
        """The data plane's region; its DPDK file prefix is derived from it (pydp-<name>-lbA)."""
        return f"/dev/shm/{self.name}-lb{appliance}"

    def appliance_text(self, a: ApplianceSpec) -> str:
        """The appliance file of one load balancer (pydp-dataplane's format; imported into its store)."""
        carp = f'advbase = {ADVBASE}\nadvskew = {a.advskew}\npassphrase = "{PASSPHRASE}"\npreempt = false\n'
        health = (f'type = "http"\nport = {HTTP_PORT}\npath = "{HEALTH_PATH}"\nexpect_body = "ok"\n'
                  + "".join(f"{k} = {v}\n" for k, v in HEALTH.items()))

        def cluster(name: str, vip: str, vhid: int, edges: list[tuple[str, str, str]], extra: str = "") -> str:
            text = f'[[cluster]]\nname = "{name}"\ncluster_ip = "{vip}"\n{extra}'
            if vhid:
                text += f"[cluster.carp]\nvhid = {vhid}\n{carp}"
            text += f"[cluster.health]\n{health}"
            for ename, ip, mac in edges:
                text += f'[[cluster.edge]]\nname = "{ename}"\nip = "{ip}"\nmac = "{mac}"\n'
            return text

        v4 = [(e.name, e.ip, e.mac) for e in self.edge_specs]
        v6 = [(e.name, e.ip6, e.mac) for e in self.edge_specs]
        text = APPLIANCE_DATAPLANE
        text += cluster("web", VIP, 10, v4)
        text += cluster("web6", VIP6, 16, v6)
        text += cluster("ipsec", VIP_IPSEC, 11, v4, "ipsec_local_termination = true\n")
        text += cluster("off", VIP_OFF, 13, v4, "enabled = false\n")
        if a.name == "A":
            text += cluster("solo", VIP_SOLO, 0, v4[:1], 'mode = "standalone"\n')
        peer = next(p for p in APPLIANCES if p.name != a.name)
        text += (f'[sync]\nenabled = true\nlisten_address = "{a.mgmt}"\nlisten_port = {SYNC_PORT}\n'
                 f'peer_address = "{peer.mgmt}"\npeer_port = {SYNC_PORT}\nrefresh_s = 5\n')
        return text

    def vips(self) -> list[str]:
        return [VIP] if self.scale_out else [VIP, VIP6, VIP_IPSEC, VIP_SOLO, VIP_OFF]

    def scaleout_text(self, a: ApplianceSpec, run_dir: str) -> str:
        """The appliance file of one scale-out appliance: cluster web with failover = "bgp", [bgp] peering the
        router with BFD, [sync] with every other appliance. BIRD's config and socket live in its run directory."""
        health = (f'type = "http"\nport = {HTTP_PORT}\npath = "{HEALTH_PATH}"\nexpect_body = "ok"\n'
                  + "".join(f"{k} = {v}\n" for k, v in HEALTH.items()))
        text = APPLIANCE_DATAPLANE
        text += (f'[bgp]\nengine = "bird"\nlocal_as = {APPLIANCE_AS}\nrouter_id = "{a.addr}"\n'
                 f'hold_time = {HOLD_TIME}\nbfd = true\nbfd_interval_ms = {BFD_INTERVAL_MS}\n'
                 f'bfd_multiplier = {BFD_MULTIPLIER}\ndrain_timeout = {DRAIN_TIMEOUT}\n'
                 f'socket = "{run_dir}/bird.ctl"\nconfig_path = "{run_dir}/bird.conf"\n'
                 f'[[bgp.peer]]\naddress = "{ROUTER_ADDR}"\nas = {ROUTER_AS}\n')
        # no CARP runs for a bgp cluster; its passphrase is the secret flow sync derives its key from
        text += (f'[[cluster]]\nname = "web"\ncluster_ip = "{VIP}"\nfailover = "bgp"\n'
                 f'[cluster.carp]\npassphrase = "{PASSPHRASE}"\n[cluster.health]\n{health}')
        for e in self.edge_specs:
            text += f'[[cluster.edge]]\nname = "{e.name}"\nip = "{e.ip}"\nmac = "{e.mac}"\n'
        peers = ", ".join(f'"{p.mgmt}:{SYNC_PORT}"' for p in self.appliance_specs if p.name != a.name)
        text += (f'[sync]\nenabled = true\nlisten_address = "{a.mgmt}"\nlisten_port = {SYNC_PORT}\n'
                 f'peers = [{peers}]\nrefresh_s = 5\n')
        return text


NGINX_CONF = """# pydp-lab edge {edge}: everything under {dir}
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 2048; }}
http {{
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    default_type text/plain;
    keepalive_timeout 3600s;
    keepalive_requests 1000000;
    # one line per request: who asked on which connection, and the bytes nginx sent (headers and body)
    log_format lab '$msec $remote_addr $remote_port $connection $bytes_sent $status $request_uri';
    access_log {dir}/access.log lab;
    server {{
        listen {port} reuseport;
        listen [::]:{port} ipv6only=on reuseport;
        location = {health} {{ access_log off; return 200 "ok {edge}\\n"; }}
        location / {{ return 200 "edge {edge}\\n"; }}
    }}
}}
"""


def nginx_conf(edge: str, run_dir: str) -> str:
    return NGINX_CONF.format(edge=edge, dir=run_dir, port=HTTP_PORT, health=HEALTH_PATH)
