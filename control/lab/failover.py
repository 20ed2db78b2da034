"""Two pydp appliances failing over with CARP, on one bridged segment: the topology of the failover, flow-sync and
fault tests (tests/netns/) and of perf/failover.py.

    namespace sw: bridge br0 (no STP, no multicast snooping)
      ├─ pa ── lb0 (02:00:00:00:01:0a) in appliance A: pydp-dataplane (af_packet on lb0, TAP pydp-p0 with
      │        198.51.100.2/24) and pydp-control (its own store: cluster "web", 198.51.100.10, vhid 10)
      ├─ pb ── lb0 (02:00:00:00:01:0b) in appliance B: the same, TAP address 198.51.100.3/24
      ├─ pc ── eth0 in the client namespace, 198.51.100.99/24: sends UDP datagrams to the cluster IP through its
      │        kernel (so it follows the cluster IP's ARP entry, which only gratuitous ARP moves)
      └─ pe ── eth0 in the edge namespace: the edges' MACs are static on this bridge port, and a sniffer there
               records every datagram that reaches an edge with the MAC of the appliance that forwarded it
    with sync=True: a management link mg0 between A (192.0.2.1/24) and B (192.0.2.2/24) carries flow sync
    with count=3: a third appliance C (02:00:00:00:01:0c, TAP 198.51.100.4/24, management 192.0.2.3/24) in the same
    CARP group (bridge port pc3), and the management addresses on a bridge br1 in sw; each appliance has the others as [sync] peers

Every process and namespace is removed when the lab's context ends, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from control.lab.appliance import TAP, Appliance, Pair
from control.lab.net import bridge, bridge_host, eventually, netns, ns_run, run, veth

VIP = "198.51.100.10"
VHID = 10
PASSPHRASE = "s3cret-carp-Pa55"          # 16 bytes; tests grep for it where it must never appear
CLIENT_IP = "198.51.100.99"
EDGES = {"e1": ("198.51.100.21", "02:00:00:00:02:01"), "e2": ("198.51.100.22", "02:00:00:00:02:02")}
SPARE_EDGES = {"e3": ("198.51.100.23", "02:00:00:00:02:03")}    # not configured: tests add it to change the set
MGMT = {"A": "192.0.2.1", "B": "192.0.2.2", "C": "192.0.2.3"}    # management addresses (flow sync)
SYNC_PORT = 7470
APPLIANCES = {
    # name: (data port MAC, TAP address, advskew, metrics port)
    "A": ("02:00:00:00:01:0a", "198.51.100.2", 0, 19481),
    "B": ("02:00:00:00:01:0b", "198.51.100.3", 100, 19482),
    "C": ("02:00:00:00:01:0c", "198.51.100.4", 200, 19483),       # only with count=3
}
ADVBASE = 1
MAGIC = b"PYDPFO"


def interval(advskew: int) -> float:
    return ADVBASE + advskew / 256


def sync_text(name: str, names: tuple[str, ...] = ("A", "B")) -> str:
    """[sync] of appliance `name` among `names`: listen on its management address, the others as the peers (the
    pair's peer_address for two, peers for more)."""
    others = [n for n in names if n != name]
    head = f'[sync]\nenabled = true\nlisten_address = "{MGMT[name]}"\nlisten_port = {SYNC_PORT}\nrefresh_s = 5\n'
    if len(others) == 1:
        return head + f'peer_address = "{MGMT[others[0]]}"\npeer_port = {SYNC_PORT}\n'
    return head + "peers = [" + ", ".join(f'"{MGMT[n]}:{SYNC_PORT}"' for n in others) + "]\n"


def appliance_text(advskew: int, preempt: bool = True, exception_pps: int = 20000,
                   hash_seed: int | None = None) -> str:
    seed = f"hash_seed = {hash_seed}\n" if hash_seed is not None else ""
    text = f"""
[dataplane]
{seed}lcores = "0-1"
flow_capacity = 16384
hugepages = true
memory_mb = 256
mbufs = 8191
exception_pps = {exception_pps}
[[port]]
name = "p0"
device = "net_af_packet0,iface=lb0"
tap = "{TAP}"
[[cluster]]
name = "web"
cluster_ip = "{VIP}"
[cluster.carp]
vhid = {VHID}
advbase = {ADVBASE}
advskew = {advskew}
preempt = {"true" if preempt else "false"}
passphrase = "{PASSPHRASE}"
[cluster.health]
type = "none"                     # the lab's edges serve nothing: always up
"""
    for name, (ip, mac) in EDGES.items():
        text += f'[[cluster.edge]]\nname = "{name}"\nip = "{ip}"\nmac = "{mac}"\n'
    return text


def appliance(name: str, ns: str, workdir: Path, *, preempt: bool = True, exception_pps: int = 20000,
              sync: bool = False, names: tuple[str, ...] = ("A", "B"), hash_seed: int | None = None) -> Appliance:
    """Appliance A, B (or C) of this topology, with its store imported (and flow sync on the management link)."""
    mac, addr, advskew, metrics_port = APPLIANCES[name]
    text = appliance_text(advskew, preempt, exception_pps, hash_seed) + (sync_text(name, names) if sync else "")
    return Appliance(name, ns, workdir, text, mac=mac, addr=addr, advskew=advskew,
                     metrics=f"127.0.0.1:{metrics_port}", cluster="web", vip=VIP)


SENDER = r"""
import os, socket, struct, sys, time
vip, pps, stop_file, max_s = sys.argv[1], float(sys.argv[2]), sys.argv[3], float(sys.argv[4])
flows = int(sys.argv[5]) if len(sys.argv) > 5 else 1      # one socket (source port) per flow, used in turn
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(flows)]
for s in socks:
    s.setblocking(False)
start = time.monotonic()
seq = 0
while not os.path.exists(stop_file) and time.monotonic() - start < max_s:
    try:
        socks[seq % flows].sendto(b"PYDPFO" + struct.pack("!Id", seq, time.time()), (vip, 9))
    except OSError:
        pass                      # no ARP answer yet, or a full queue: the datagram is lost, as on a real net
    seq += 1
    ahead = start + seq / pps - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
"""

SNIFFER = r"""
import socket, struct, sys, time
out = open(sys.argv[1], "w")
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind(("eth0", 0))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.settimeout(0.05)
out.write("ready\n"); out.flush()
last = time.monotonic()
while True:
    try:
        f = s.recv(2048)
    except socket.timeout:
        f = None
    if f and len(f) >= 14 + 20 + 8 + 18 and f[12:14] == b"\x08\x00" and f[23] == 17:
        off = 14 + (f[14] & 15) * 4 + 8
        if f[off:off + 6] == b"PYDPFO":
            seq, sent = struct.unpack("!Id", f[off + 6:off + 18])
            sport = struct.unpack("!H", f[off - 8:off - 6])[0]
            out.write(f"{time.time():.6f} {seq} {f[6:12].hex(':')} {f[0:6].hex(':')} {sent:.6f} {sport}\n")
    now = time.monotonic()
    if now - last > 0.02:
        out.flush()
        last = now
"""

FLOODER = r"""
import socket, struct, sys, time
iface, dst_mac, src_mac, src_ip, dst_ip, pps, seconds = sys.argv[1:8]
pps, seconds = float(pps), float(seconds)
def csum(b):
    s = sum(struct.unpack(f"!{len(b) // 2}H", b)); s = (s & 0xFFFF) + (s >> 16); s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
def mac(m): return bytes(int(x, 16) for x in m.split(":"))
udp = struct.pack("!HHHH", 40000, 7777, 8 + 32, 0) + bytes(32)
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton(src_ip),
                 socket.inet_aton(dst_ip))
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
frame = mac(dst_mac) + mac(src_mac) + b"\x08\x00" + ip + udp
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
start = time.monotonic(); sent = 0; batch = 50
while time.monotonic() - start < seconds:
    for _ in range(batch):
        try:
            s.send(frame); sent += 1
        except OSError:
            pass
    ahead = start + sent / pps - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
print(sent, round(time.monotonic() - start, 3))
"""


class Traffic:
    """The client's datagram stream to the cluster IP and the edge-side sniffer that records where each arrived."""

    def __init__(self, lab: "FailoverLab", pps: float = 500.0, max_seconds: float = 900.0, flows: int = 1):
        self.lab = lab
        self.pps = pps
        self.max_seconds = max_seconds
        self.flows = flows
        self.stop_file = lab.tmp / f"traffic-stop-{os.getpid()}-{time.monotonic_ns()}"
        self.record = lab.tmp / f"arrivals-{time.monotonic_ns()}.txt"
        self.sniffer: subprocess.Popen | None = None
        self.sender: subprocess.Popen | None = None
        self.more: list[subprocess.Popen] = []

    def __enter__(self) -> "Traffic":
        self.sniffer = subprocess.Popen(["ip", "netns", "exec", self.lab.edge_ns, sys.executable, "-c", SNIFFER,
                                         str(self.record)])
        try:
            eventually(lambda: self.sniffer.poll() is not None
                       or (self.record.exists() and self.record.read_text().startswith("ready")), 10,
                       "the edge sniffer", interval=0.02)
            if self.sniffer.poll() is not None:
                raise RuntimeError(f"the edge sniffer exited with {self.sniffer.returncode}")
        except BaseException:
            self.__exit__()
            raise
        self.sender = self._sender(self.pps, self.flows) if self.flows else None
        return self

    def _sender(self, pps: float, flows: int) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.lab.client_ns, sys.executable, "-c", SENDER, VIP,
                                 str(pps), str(self.stop_file), str(self.max_seconds), str(flows)])

    def add_flows(self, flows: int, pps: float) -> None:
        """Another stream of `flows` new flows (new source ports) until the traffic stops."""
        self.more.append(self._sender(pps, flows))

    def __exit__(self, *exc) -> None:
        self.stop_file.touch()
        for p in (*self.more, self.sender, self.sniffer):
            if p is None:
                continue
            if p is self.sniffer:
                time.sleep(0.1)           # bounded on purpose: the senders are gone, the last datagrams land
                p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.sender = self.sniffer = None
        self.more = []

    def arrivals(self) -> list[tuple[float, int, str]]:
        """(wall time, sequence number, forwarding appliance's MAC) for every datagram seen at the edges."""
        return [(t, seq, via) for t, seq, via, _edge, _sport in self.flow_arrivals()]

    def flow_arrivals(self) -> list[tuple[float, int, str, str, int]]:
        """(wall time, sequence number, forwarding appliance's MAC, edge MAC, client source port) per datagram."""
        out = []
        for line in self.record.read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) == 6:
                out.append((float(parts[0]), int(parts[1]), parts[2], parts[3], int(parts[5])))
        return out

    def edges_by_flow(self, since: float, until: float = float("inf"), via: str | None = None) -> dict[int, set]:
        """{client source port: edge MACs its datagrams reached} between two wall times (through `via` only)."""
        out: dict[int, set] = {}
        for t, _seq, v, edge, sport in self.flow_arrivals():
            if since <= t < until and (via is None or v == via):
                out.setdefault(sport, set()).add(edge)
        return out

    def since(self, t_wall: float) -> dict[str, int]:
        """Datagrams per forwarding MAC that arrived after t_wall."""
        out: dict[str, int] = {}
        for t, _seq, mac in self.arrivals():
            if t >= t_wall:
                out[mac] = out.get(mac, 0) + 1
        return out

    def first_via(self, mac: str, t_wall: float) -> float | None:
        return next((t for t, _seq, m in self.arrivals() if m == mac and t >= t_wall), None)

    def wait_via(self, mac: str, t_wall: float, timeout: float) -> float:
        """The wall time of the first datagram through `mac` after t_wall, waiting up to `timeout` seconds."""
        return eventually(lambda: self.first_via(mac, t_wall), timeout,
                          lambda: f"a datagram through {mac}; seen since: {self.since(t_wall)}")


class FailoverLab(Pair):
    """The whole topology (see the module docstring). Use as a context manager."""

    def __init__(self, tmp: Path, *, preempt: bool = True, exception_pps: int = 20000, sync: bool = False,
                 count: int = 2, hash_seeds: dict[str, int] | None = None):
        if count not in (2, 3):
            raise ValueError(f"count must be 2 or 3, got {count}")
        self.count = count
        self.hash_seeds = hash_seeds or {}     # by appliance name: another [dataplane] hash_seed than the default
        self.tmp = tmp
        self.preempt = preempt
        self.exception_pps = exception_pps
        self.sync = sync
        self.stack = contextlib.ExitStack()
        self.appliances: dict[str, Appliance] = {}

    def __enter__(self) -> "FailoverLab":
        try:
            self._build()
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stack.close()

    def _build(self) -> None:
        st = self.stack
        self.sw_ns = st.enter_context(netns("pydpt-sw"))
        br = bridge(self.sw_ns)
        self.client_ns = st.enter_context(netns("pydpt-cl"))
        self.edge_ns = st.enter_context(netns("pydpt-ed"))
        bridge_host(self.sw_ns, br, self.client_ns, "pc", addr=f"{CLIENT_IP}/24")
        bridge_host(self.sw_ns, br, self.edge_ns, "pe")
        for _, mac in (*EDGES.values(), *SPARE_EDGES.values()):
            run("bridge", "-n", self.sw_ns, "fdb", "add", mac, "dev", "pe", "master", "static")
        names = tuple(APPLIANCES)[:self.count]
        for name in names:
            ns = st.enter_context(netns(f"pydpt-{name.lower()}"))
            port = "pc3" if name == "C" else f"p{name.lower()}"        # "pc" is the client's bridge port
            bridge_host(self.sw_ns, br, ns, port, ifname="lb0", mac=APPLIANCES[name][0])
            a = appliance(name, ns, self.tmp / name, preempt=self.preempt, exception_pps=self.exception_pps,
                          sync=self.sync, names=names, hash_seed=self.hash_seeds.get(name))
            st.callback(a.stop)
            self.appliances[name] = a
        if self.sync and self.count == 2:
            veth(self.a.ns, "mg0", "mg0", self.b.ns)
            for name, ap in self.appliances.items():
                ns_run(ap.ns, "ip", "addr", "add", f"{MGMT[name]}/24", "dev", "mg0")
        elif self.sync:
            mg = bridge(self.sw_ns, "br1")
            for name, ap in self.appliances.items():
                bridge_host(self.sw_ns, mg, ap.ns, f"mgmt-{name.lower()}", ifname="mg0", addr=f"{MGMT[name]}/24")
        # the bridge learns the appliances' MACs from their first frames; no other setup is needed

    def client_neigh(self) -> str | None:
        """The MAC the client's kernel has for the cluster IP (None if no usable entry)."""
        out = run("ip", "-j", "-n", self.client_ns, "neigh", "show", VIP, check=False).stdout or "[]"
        for e in json.loads(out):
            if e.get("lladdr") and "FAILED" not in e.get("state", []) and "INCOMPLETE" not in e.get("state", []):
                return e["lladdr"]
        return None

    def flood(self, target: Appliance, pps: float, seconds: float) -> subprocess.Popen:
        """Raw UDP frames from the client's port to target's data port, addressed to its own (TAP) address: the
        bulk exception class. Returns the running flooder."""
        client_mac = json.loads(run("ip", "-j", "-n", self.client_ns, "link", "show", "eth0").stdout)[0]["address"]
        return subprocess.Popen(["ip", "netns", "exec", self.client_ns, sys.executable, "-c", FLOODER, "eth0",
                                 target.mac, client_mac, CLIENT_IP, target.addr, str(pps), str(seconds)],
                                stdout=subprocess.PIPE, text=True)
