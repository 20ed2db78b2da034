"""The virtual lab's life cycle: `up` builds the topology of control/lab/topology.py and starts every process,
`down` removes every trace, `status` tells what runs.

A state file (<run root>/<name>/state.json) records what `up` made as it makes it, so `down` works from another
process and after a crash; `down` also sweeps by name: namespaces called <name>-*, every process inside them,
/dev/shm/<name>-*, DPDK runtime directories /var/run/dpdk/pydp-<name>-*, hugepage files naming the lab, and the run
directory (sockets, logs, nginx files).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from control.lab import topology as T
from control.lab.appliance import Appliance, Pair
from control.lab.router import Router
from control.lab.topology import Topology
from control.lab.net import (bridge, bridge_host, full_checksums, kernel_ignores, ns_run, run, terminate, veth,
                             eventually)

RUN_ROOT = Path(os.environ.get("PYDP_LAB_RUN", "/run/pydp-lab"))


class LabError(Exception):
    """An operator error (not root, already up, nothing to take down...): printed without a traceback."""


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("pydp-lab needs root (it creates network namespaces and runs DPDK): run it with sudo")


def lab_namespaces(name: str) -> list[str]:
    out = run("ip", "-j", "netns", "list", check=False).stdout or "[]"
    return sorted(n["name"] for n in json.loads(out) if n["name"].startswith(f"{name}-"))


def ns_pids(ns: str) -> list[int]:
    out = run("ip", "netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split()]


class Edge:
    """One service edge: a namespace holding the cluster IPs on lo (DSR), nginx and the UDP echo."""

    def __init__(self, lab: "Lab", spec: T.EdgeSpec):
        self.lab, self.spec, self.name = lab, spec, spec.name
        self.ns = spec.ns(lab.topo.name)
        self.dir = lab.run_dir / spec.name
        self.nginx: subprocess.Popen | None = None
        self.echo: subprocess.Popen | None = None

    def build(self) -> None:
        lab, s = self.lab, self.spec
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "tmp").mkdir(exist_ok=True)
        lab._namespace(self.ns)
        bridge_host(lab.topo.sw_ns, "br0", self.ns, s.name, mac=s.mac, addr=f"{s.ip}/24")
        full_checksums(self.ns, "eth0")
        enable_ipv6(self.ns, "eth0", [f"{s.ip6}/64"])
        prepare_edge(self.ns, lab.topo.vips(), self.dir / "bootstrap")
        if lab.topo.scale_out:
            # DSR replies to the clients (behind the router) go to the router, never through an appliance
            ns_run(self.ns, "ip", "route", "add", "default", "via", T.ROUTER_ADDR)
        (self.dir / "nginx.conf").write_text(T.nginx_conf(s.name, str(self.dir)))
        self.start()

    def start(self) -> None:
        """nginx (in the foreground of its own process group, so kill() reaches its workers) and the UDP echo."""
        with open(self.dir / "nginx.out", "a") as err:
            self.nginx = subprocess.Popen(["ip", "netns", "exec", self.ns, "nginx", "-p", str(self.dir), "-c",
                                           str(self.dir / "nginx.conf"), "-e", str(self.dir / "error.log")],
                                          stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        self.lab.record("pids", self.nginx.pid)
        binds = [f"{T.VIP}:{T.UDP_PORT}", f"[{T.VIP6}]:{T.UDP_PORT}", f"{T.VIP_IPSEC}:500", f"{T.VIP_IPSEC}:4500"]
        if self.lab.topo.scale_out:
            binds = binds[:1]                 # the scale-out lab has cluster web only
        if self.echo is None or self.echo.poll() is not None:
            with open(self.dir / "udpecho.out", "a") as err:
                self.echo = subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, "-P", "-m",
                                              "control.lab.udpecho", "--edge", self.name, "--esp-log",
                                              str(self.dir / "esp.log")] + [a for b in binds for a in ("--bind", b)],
                                             stdout=subprocess.DEVNULL, stderr=err)
            self.lab.record("pids", self.echo.pid)
        eventually(lambda: ns_run(self.ns, "curl", "-s", "-m", "1", f"http://{self.spec.ip}{T.HEALTH_PATH}",
                                  check=False).stdout.startswith("ok"), 15, f"nginx on {self.name}", interval=0.1)

    def kill(self) -> float:
        """SIGKILL nginx (master and workers): its connections die with it. Returns the wall-clock time."""
        t = time.time()
        if self.nginx is not None and self.nginx.poll() is None:
            os.killpg(self.nginx.pid, signal.SIGKILL)
            self.nginx.wait(10)
        return t

    def access_log(self) -> list[dict]:
        """nginx's request lines: time, client address and port, connection number, bytes sent, status."""
        out = []
        p = self.dir / "access.log"
        for line in (p.read_text().splitlines() if p.exists() else []):
            f = line.split()
            if len(f) >= 7:
                out.append({"t": float(f[0]), "addr": f[1], "port": int(f[2]), "conn": int(f[3]),
                            "bytes": int(f[4]), "status": int(f[5]), "uri": f[6]})
        return out

    def esp_sources(self) -> list[str]:
        p = self.dir / "esp.log"
        return [line.split()[1] for line in p.read_text().splitlines()] if p.exists() else []


def enable_ipv6(ns: str, dev: str, addrs: list[str]) -> None:
    """IPv6 on a lab link (netlab's veths come without it), no duplicate address detection so addresses work at
    once, and the given addresses (CIDR)."""
    ns_run(ns, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=0", f"net.ipv6.conf.{dev}.accept_dad=0",
           f"net.ipv6.conf.{dev}.accept_ra=0")
    batch = "".join(f"addr add {a} dev {dev} nodad\n" for a in addrs)
    run("ip", "-n", ns, "-batch", "-", input=batch)


def prepare_edge(ns: str, vips: list[str], state_dir: Path) -> None:
    """What DSR asks of an edge, done as an operator would: `pydp-bootstrap edge` (cluster IPs on lo, no ARP
    answers for them on eth0) inside the edge's namespace, its record of changes kept in the lab's run dir."""
    argv = [sys.executable, "-P", "-m", "control.bootstrap", "edge", "--interface", "eth0", "--state-dir",
            str(state_dir)] + [a for v in vips for a in ("--cluster-ip", v)]
    p = ns_run(ns, *argv, check=False, timeout=60)
    if p.returncode != 0:
        raise LabError(f"pydp-bootstrap edge failed in {ns}: {p.stdout}{p.stderr}")


class Lab(Pair):
    """The whole lab, driven from this process. `up()` then `down()` (also on failure)."""

    def __init__(self, topo: T.Topology, run_root: Path = RUN_ROOT):
        self.topo = topo
        self.run_dir = run_root / topo.name
        self.state_file = self.run_dir / "state.json"
        self.state: dict = {}
        self.edges: dict[str, Edge] = {}
        self.appliances: dict[str, Appliance] = {}
        self.web_sockets: list = []             # the admin pages' listening sockets on this host's loopback
        self.router: Router | None = None       # the scale-out lab's upstream router

    # ---- state file ----

    def record(self, key: str, value) -> None:
        """Adds value to the list `key` of the state file (written at once: a crash leaves it complete)."""
        self.state.setdefault(key, [])
        if value not in self.state[key]:
            self.state[key].append(value)
        self.save()

    def save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        os.replace(tmp, self.state_file)

    # ---- life cycle ----

    def up(self, log=lambda msg: None) -> "Lab":
        require_root()
        topo = self.topo
        if self.state_file.exists() or lab_namespaces(topo.name):
            raise LabError(f"lab {topo.name!r} is already up (or left over): run `pydp-lab down"
                           f"{'' if topo.name == 'pydplab' else ' --name ' + topo.name}` first")
        if not shutil.which("nginx"):
            raise LabError("nginx is not installed: run scripts/setup.sh (it installs nginx-light)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.state = {"name": topo.name, "edges": topo.edges, "clients": topo.clients, "run_dir": str(self.run_dir),
                      "scale_out": topo.scale_out, "started": time.time(), "namespaces": [], "pids": [],
                      "sockets": {}, "ready": False}
        self.save()
        try:
            self._build(log)
        except BaseException:
            self.down()
            raise
        self.state["ready"] = True
        self.save()
        return self

    def _namespace(self, ns: str) -> None:
        """A new namespace of the lab (recorded for down), its loopback up."""
        run("ip", "netns", "add", ns)
        self.record("namespaces", ns)
        ns_run(ns, "ip", "link", "set", "lo", "up")

    def _appliance_ns(self, spec) -> str:
        """An appliance's namespace with its data port lb0 on the segment's bridge, the kernel deaf on it."""
        ns = spec.ns(self.topo.name)
        self._namespace(ns)
        bridge_host(self.topo.sw_ns, "br0", ns, f"p{spec.name}", ifname="lb0", mac=spec.mac)
        kernel_ignores(ns, "lb0")
        return ns

    def _build(self, log) -> None:
        topo = self.topo
        if topo.scale_out:
            return self._build_scaleout(log)
        log(f"switch {topo.sw_ns}: bridge br0")
        for ns in (topo.sw_ns, topo.client_ns):
            self._namespace(ns)
        bridge(topo.sw_ns)
        log(f"clients {topo.client_ns}: {topo.clients} IPv4 and {topo.clients} IPv6 addresses")
        bridge_host(topo.sw_ns, "br0", topo.client_ns, "pc", mac="02:00:00:00:03:01")
        full_checksums(topo.client_ns, "eth0")
        batch = "".join(f"addr add {ip}/24 dev eth0\n" for ip in topo.client_ips())
        run("ip", "-n", topo.client_ns, "-batch", "-", input=batch)
        enable_ipv6(topo.client_ns, "eth0", [f"{ip}/64" for ip in topo.client_ips6()])
        for spec in topo.edge_specs:
            log(f"edge {spec.name}: nginx and UDP echo on {spec.ip} / {spec.ip6}, cluster IPs on lo")
            self.add_edge_ns(spec)
        web_args = self._admin_pages(log)
        for spec in T.APPLIANCES:
            ns = self._appliance_ns(spec)
            a = Appliance(spec.name, ns, self.run_dir / f"lb{spec.name}", topo.appliance_text(spec), mac=spec.mac,
                          addr=spec.addr, addr6=spec.addr6, advskew=spec.advskew, metrics="127.0.0.1:9470",
                          cluster="web", vip=T.VIP, shm=topo.shm(spec.name),
                          # pydp-control owns a standalone cluster (its data plane forwards it) but puts no address
                          # on the TAP, so nothing would answer ARP for it: the host's setup adds it, as here
                          tap_extra=(f"{T.VIP_SOLO}/32",) if spec.name == "A" else (), **web_args[spec.name])
            self.appliances[spec.name] = a
        veth(self.a.ns, "mg0", "mg0", self.b.ns)
        for a in self.appliances.values():
            ns_run(a.ns, "ip", "addr", "add", f"{next(s.mgmt for s in T.APPLIANCES if s.name == a.name)}/24",
                   "dev", "mg0")
        # A first: it is master before B listens, so the roles are known (B's advskew is higher anyway)
        for name in ("A", "B"):
            a = self.appliances[name]
            log(f"appliance {name} ({a.ns}): pydp-dataplane on lb0 (af_packet) and pydp-control")
            a.start()
            self.record("pids", a.dp.proc.pid)
            self.record("pids", a.ctl.proc.pid)
            self.state["sockets"][name] = a.ctl.socket
            self.save()
            a.wait_state("master" if name == "A" else "backup", 20)
        log("waiting for the health checks to bring every edge up")
        self.wait_edges_up(self.a, 30)

    def _build_scaleout(self, log) -> None:
        """The scale-out lab (topology.py): router, clients behind it, edges, N appliances announcing over BGP."""
        topo = self.topo
        specs = topo.appliance_specs
        log(f"switch {topo.sw_ns}: bridges br0 (segment) and br1 (management)")
        for ns in (topo.sw_ns, topo.router_ns, topo.client_ns):
            self._namespace(ns)
        bridge(topo.sw_ns)
        bridge(topo.sw_ns, "br1")
        log(f"router {topo.router_ns}: {T.ROUTER_ADDR} on the segment, {T.CLIENT_GW} to the clients, ECMP with "
            "the L4 hash (fib_multipath_hash_policy=1)")
        bridge_host(topo.sw_ns, "br0", topo.router_ns, "pr", mac=T.ROUTER_MAC, addr=f"{T.ROUTER_ADDR}/24")
        full_checksums(topo.router_ns, "eth0")          # its BGP and BFD packets reach the appliances via af_packet
        veth(topo.router_ns, "eth1", "eth0", topo.client_ns, mac_a=T.ROUTER_CLIENT_MAC, mac_b="02:00:00:00:03:01")
        run("ip", "-n", topo.router_ns, "addr", "add", f"{T.CLIENT_GW}/24", "dev", "eth1")
        ns_run(topo.router_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.fib_multipath_hash_policy=1",
               "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
        log(f"clients {topo.client_ns}: {len(topo.client_ips())} addresses behind the router")
        full_checksums(topo.client_ns, "eth0")
        batch = "".join(f"addr add {ip}/24 dev eth0\n" for ip in topo.client_ips())
        batch += f"route add default via {T.CLIENT_GW}\n"
        run("ip", "-n", topo.client_ns, "-batch", "-", input=batch)
        for spec in topo.edge_specs:
            log(f"edge {spec.name}: nginx on {spec.ip}, cluster IP on lo, default route via the router")
            self.add_edge_ns(spec)
        web_args = self._admin_pages(log)
        for spec in specs:
            ns = self._appliance_ns(spec)
            bridge_host(topo.sw_ns, "br1", ns, f"m{spec.name}", ifname="mg0", addr=f"{spec.mgmt}/24")
            workdir = self.run_dir / f"lb{spec.name}"
            workdir.mkdir(parents=True, exist_ok=True)
            a = Appliance(spec.name, ns, workdir, topo.scaleout_text(spec, str(workdir)), mac=spec.mac,
                          addr=spec.addr, advskew=0, metrics="127.0.0.1:9470", cluster="web", vip=T.VIP,
                          shm=topo.shm(spec.name), **web_args[spec.name])
            self.appliances[spec.name] = a
        self.router = Router(topo.router_ns, self.run_dir / "router",
                             {f"lb{s.name}": s.addr for s in specs})
        log(f"router: BIRD {self.router.version()}, BGP (AS {T.ROUTER_AS}) with BFD to every appliance "
            f"(AS {T.APPLIANCE_AS})")
        self.record("pids", self.router.start())
        for a in self.appliances.values():
            log(f"appliance {a.name} ({a.ns}): pydp-dataplane on lb0 (af_packet), pydp-control with [bgp]")
            a.start()
            self.record("pids", a.dp.proc.pid)
            self.record("pids", a.ctl.proc.pid)
            self.state["sockets"][a.name] = a.ctl.socket
            self.save()
        log("waiting for the health checks and for the router's ECMP route over every appliance")
        for a in self.appliances.values():
            self.wait_edges_up(a, 30)
        self.wait_route([s.addr for s in specs], 60)

    def wait_route(self, hops: list[str], timeout: float) -> float:
        """Waits until the router's route to the cluster IP has exactly these next hops; returns the seconds."""
        t0 = time.monotonic()
        want = sorted(hops, key=lambda a: tuple(int(x) for x in a.split(".")))
        eventually(lambda: self.router.nexthops(T.VIP) == want, timeout,
                   lambda: f"the router's route to {T.VIP} via {want}: {self.router.nexthops(T.VIP)}; "
                           f"sessions {self.router.sessions()}", interval=0.05)
        return time.monotonic() - t0

    def kill_appliance(self, a: Appliance) -> float:
        """SIGKILL every process of appliance a at once (data plane, pydp-control, its BIRD): as if it lost
        power. Returns the wall-clock time of the kill."""
        pids = set(ns_pids(a.ns)) | set(a.pids())
        t = time.time()
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in (a.dp.proc, a.ctl.proc):
            if p is not None:
                p.wait(10)
        return t

    def freeze_appliance(self, a: Appliance, frozen: bool = True) -> float:
        """SIGSTOP (or SIGCONT) every process of appliance a: it goes silent without closing anything (no FIN on
        its BGP session), so only BFD or the hold timer tell the router. Returns the wall-clock time."""
        t = time.time()
        for p in ns_pids(a.ns):
            try:
                os.kill(p, signal.SIGSTOP if frozen else signal.SIGCONT)
            except ProcessLookupError:
                pass
        return t

    def restart_appliance(self, a: Appliance, timeout: float = 60) -> None:
        """After kill_appliance (or with it running): start it again and wait until the router routes to it (it
        announces once its health checks find an edge up)."""
        a.restart()
        self.record("pids", a.dp.proc.pid)
        self.record("pids", a.ctl.proc.pid)
        self.state["sockets"][a.name] = a.ctl.socket
        self.save()
        self.wait_route([x.addr for x in self.topo.appliance_specs], timeout)

    def appliance_by_addr(self, addr: str) -> Appliance:
        return next(self.appliances[s.name] for s in self.topo.appliance_specs if s.addr == addr)

    def _admin_pages(self, log) -> dict:
        """Each appliance's admin page on this host's loopback (127.0.0.1:8470 for A, 8471 for B, else a free
        port): the lab binds the socket here and pydp-control, in its namespace, serves on it (--http fd:N). One
        user "admin" with a new random password, in the lab's users file; the URLs and credentials go into the
        state file (pydp-lab up prints them)."""
        import secrets
        import socket

        from control.http import auth

        users = str(self.run_dir / "http-users")
        password = secrets.token_urlsafe(12)
        auth.set_entry(users, "admin", "admin", auth.hash_password(password))
        out, web = {}, {"user": "admin", "password": password}
        for i, spec in enumerate(self.topo.appliance_specs):
            try:
                sock = socket.create_server(("127.0.0.1", 8470 + i))
            except OSError:
                sock = socket.create_server(("127.0.0.1", 0))
            self.web_sockets.append(sock)
            web[spec.name] = f"http://127.0.0.1:{sock.getsockname()[1]}/"
            out[spec.name] = {"control_args": ["--http", f"fd:{sock.fileno()}", "--http-users", users],
                              "pass_fds": (sock.fileno(),)}
        log("admin pages: " + ", ".join(f"{s.name} {web[s.name]}" for s in self.topo.appliance_specs)
            + " (user admin)")
        self.state["web"] = web
        self.save()
        return out

    def add_edge_ns(self, spec: T.EdgeSpec) -> Edge:
        e = Edge(self, spec)
        self.edges[spec.name] = e
        e.build()
        return e

    def add_edge(self) -> Edge:
        """A new edge namespace (the next free number) added to cluster web on both appliances: the edge set
        changes, and with it the Maglev table."""
        spec = T.edge_spec(len(self.edges) + 1)
        e = self.add_edge_ns(spec)
        for a in self.appliances.values():
            a.pydpctl("edge", "add", "web", f"{spec.name}={spec.ip}@{spec.mac}")
        return e

    def down(self) -> dict:
        """Stops what this process started, then sweeps everything named after the lab (teardown)."""
        for a in self.appliances.values():
            a.stop()
        if self.router is not None:
            self.router.stop()
        for sock in self.web_sockets:
            sock.close()
        for e in self.edges.values():
            if e.nginx is not None and e.nginx.poll() is None:
                os.killpg(e.nginx.pid, signal.SIGTERM)
            terminate(e.nginx, 5)
            terminate(e.echo, 5)
        return teardown(self.topo.name, self.run_dir.parent)

    # ---- reading ----

    def edge_health(self, a: Appliance, cluster: str = "web") -> dict[str, str]:
        """Edge name → health state ("up", "down", ...) as appliance a's daemon sees it."""
        try:
            c = next(c for c in a.status()["clusters"] if c["name"] == cluster)
        except (ConnectionError, OSError, StopIteration):
            return {}
        return {e["name"]: e["health"] for e in c["edges"]}

    def wait_edges_up(self, a: Appliance, timeout: float, cluster: str = "web") -> None:
        want = set(self.edges)
        eventually(lambda: {n for n, h in self.edge_health(a, cluster).items() if h == "up"} >= want, timeout,
                   lambda: f"every edge of {cluster} up on appliance {a.name}: {self.edge_health(a, cluster)}",
                   interval=0.1)

    def client(self, *args, timeout: float = 60) -> subprocess.CompletedProcess:
        """A command in the clients' namespace."""
        return ns_run(self.topo.client_ns, *args, timeout=timeout, check=False)


def teardown(name: str, run_root: Path = RUN_ROOT) -> dict:
    """Removes every trace of lab `name` (see the module docstring); returns what was removed. Safe to repeat."""
    run_dir = run_root / name
    state = {}
    with_state = run_dir / "state.json"
    if with_state.exists():
        try:
            state = json.loads(with_state.read_text())
        except ValueError:
            state = {}
    namespaces = sorted(set(state.get("namespaces", [])) | set(lab_namespaces(name)))
    pids = {p for ns in namespaces for p in ns_pids(ns)}
    # processes recorded by `up` that are still ours (their command line names the lab), even outside a namespace
    for p in state.get("pids", []):
        try:
            if name.encode() in Path(f"/proc/{p}/cmdline").read_bytes() or str(run_dir).encode() in \
                    Path(f"/proc/{p}/cmdline").read_bytes():
                pids.add(p)
        except OSError:
            pass
    _stop_pids(sorted(pids))
    for ns in namespaces:
        run("ip", "netns", "del", ns, check=False)
    files = glob.glob(f"/dev/shm/{name}-*") + glob.glob(f"/dev/hugepages/*{name}-*")
    for f in files:
        try:
            os.unlink(f)
        except OSError:
            pass
    dpdk = glob.glob(f"/var/run/dpdk/pydp-{name}-*")
    for d in dpdk:
        shutil.rmtree(d, ignore_errors=True)
    existed = run_dir.exists()
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"namespaces": namespaces, "processes": sorted(pids), "files": sorted(files), "dpdk_dirs": sorted(dpdk),
            "run_dir": str(run_dir) if existed else None}


def _stop_pids(pids: list[int], grace: float = 5.0) -> None:
    """SIGTERM each, SIGKILL what is left after `grace` seconds."""
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.05)
    for p in alive:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    """Running and not a zombie (a zombie of ours is reaped here)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def status(name: str, run_root: Path = RUN_ROOT) -> dict:
    """What runs of lab `name`: namespaces, processes per namespace, and each appliance's CARP and edge health."""
    from control import rpc

    run_dir = run_root / name
    state = {}
    if (run_dir / "state.json").exists():
        state = json.loads((run_dir / "state.json").read_text())
    namespaces = lab_namespaces(name)
    out = {"name": name, "up": bool(namespaces), "ready": state.get("ready", False), "run_dir": str(run_dir),
           "namespaces": {}, "appliances": {}}
    for ns in namespaces:
        procs = []
        for p in ns_pids(ns):
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                continue
            procs.append({"pid": p, "cmd": cmd[:120]})
        out["namespaces"][ns] = procs
    for aname, sock in state.get("sockets", {}).items():
        try:
            st = rpc.call(sock, "status", timeout=3.0)
        except (ConnectionError, OSError) as e:
            out["appliances"][aname] = {"running": False, "error": str(e)}
            continue
        bgp = st.get("bgp") or {}
        out["appliances"][aname] = {
            "running": True, "socket": sock, "dataplane_up": st["dataplane_up"],
            "clusters": {c["name"]: {"failover": c.get("failover", "carp"),
                                     "carp": (c.get("carp") or {}).get("local"),
                                     "announced": ((bgp.get("clusters") or {}).get(c["name"]) or {}).get("announced"),
                                     "cluster_ip": c.get("cluster_ip"),
                                     "edges": {e["name"]: e["health"] for e in c["edges"]}}
                         for c in st["clusters"]}}
        if bgp:
            out["appliances"][aname]["bgp_sessions"] = [{k: s.get(k) for k in ("peer", "state", "bfd")}
                                                        for s in bgp.get("sessions", [])]
    if state.get("scale_out") and out["up"]:
        specs = Topology(name, state.get("edges", 3), state.get("clients", 32), state["scale_out"]).appliance_specs
        r = Router(f"{name}-rt", run_dir / "router", {f"lb{s.name}": s.addr for s in specs})
        out["router"] = {"namespace": f"{name}-rt", "sessions": r.sessions(), "route": {T.VIP: r.nexthops(T.VIP)}}
    return out
