"""One pydp appliance inside a network namespace: its store (pydpctl import), pydp-dataplane on an af_packet port
with a TAP, and pydp-control running CARP and the health checks. Used by the virtual lab (pydp-lab) and by the
failover topology (control/lab/failover.py).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from control.lab.net import ControlProcess, DataplaneProcess, addresses, eventually, ns_run

TAP = "pydp-p0"


def pydpctl(*args, socket: str | None = None, db: Path | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess:
    """pydpctl against a daemon's socket (live apply) or straight against a store file (or neither: then args say
    --socket or --db themselves)."""
    where = ["--socket", socket] if socket else ["--db", str(db)] if db else []
    p = subprocess.run([sys.executable, "-P", "-m", "control.cli", *where, *map(str, args)], capture_output=True,
                       text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"pydpctl {' '.join(map(str, args))}: {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


class Appliance:
    """One pydp appliance: its namespace, data plane and control daemon, with its own store.

    `text` is the appliance file (pydp-dataplane's format), imported into the store; `addr` (and `addr6`) go on the
    TAP, where CARP and the health probes take their source address from."""

    def __init__(self, name: str, ns: str, workdir: Path, text: str, *, mac: str, addr: str, advskew: int,
                 metrics: str, addr6: str | None = None, cluster: str = "web", vip: str | None = None,
                 shm: str | None = None, tap_extra: tuple[str, ...] = (), control_args=(), pass_fds=()):
        self.name = name
        self.ns = ns
        self.mac, self.addr, self.addr6, self.advskew = mac, addr, addr6, advskew
        self.cluster, self.vip = cluster, vip
        self.tap_extra = tap_extra
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.db = workdir / "pydp.db"
        (workdir / "store.toml").write_text(text)
        pydpctl("import", workdir / "store.toml", db=self.db)
        self.dp = DataplaneProcess(ns, text, workdir, shm=shm, args=["--managed"])
        self.ctl = ControlProcess(ns, workdir, self.db, self.dp.shm, metrics=metrics, args=control_args,
                                  pass_fds=pass_fds)

    # ---- life cycle ----

    def start(self) -> None:
        """Data plane, the TAP's addresses, then the daemon (which starts CARP once the TAP has its address)."""
        self.dp.start()
        self.address_tap()
        self.ctl.start()

    def address_tap(self) -> None:
        """The appliance's own addresses on the TAP the data plane (re)created, as the host's network setup would."""
        if self.addr6:
            # no duplicate address detection: the address is usable at once, as CARP's source
            ns_run(self.ns, "sysctl", "-qw", f"net.ipv6.conf.{TAP}.accept_dad=0", check=False)
            ns_run(self.ns, "ip", "addr", "add", f"{self.addr6}/64", "dev", TAP, "nodad")
        else:
            ns_run(self.ns, "sysctl", "-qw", f"net.ipv6.conf.{TAP}.disable_ipv6=1", check=False)
        ns_run(self.ns, "ip", "addr", "add", f"{self.addr}/24", "dev", TAP)
        for a in self.tap_extra:
            ns_run(self.ns, "ip", "addr", "add", a, "dev", TAP)

    def restart_dataplane(self) -> None:
        """SIGKILL the data plane alone and start it again (the daemon keeps running and re-attaches)."""
        if self.dp.proc is not None and self.dp.proc.poll() is None:
            self.dp.proc.kill()
            self.dp.proc.wait(10)
        self.dp.stop()
        self.dp.start()
        self.address_tap()

    def kill(self) -> float:
        """SIGKILL the data plane and the daemon at once; returns the wall-clock time of the kill."""
        procs = [p for p in (self.dp.proc, self.ctl.proc) if p is not None and p.poll() is None]
        t = time.time()
        for p in procs:
            p.send_signal(signal.SIGKILL)
        for p in procs:
            p.wait(10)
        return t

    def stop(self) -> None:
        self.ctl.stop()
        self.dp.stop()

    def restart(self) -> None:
        """After kill(): clean up what the killed processes left and start both again."""
        self.stop()
        self.start()

    def pids(self) -> list[int]:
        return [p.pid for p in (self.dp.proc, self.ctl.proc) if p is not None and p.poll() is None]

    def pydpctl(self, *args, check: bool = True) -> subprocess.CompletedProcess:
        """pydpctl against this appliance's running daemon (changes apply live)."""
        return pydpctl(*args, socket=self.ctl.socket, check=check)

    # ---- reading ----

    def status(self) -> dict:
        from control import rpc

        return rpc.call(self.ctl.socket, "status", timeout=5.0)

    def carp(self, cluster: str | None = None) -> dict:
        s = self.status()
        return next(c for c in s["clusters"] if c["name"] == (cluster or self.cluster))["carp"]

    def state(self, cluster: str | None = None) -> str | None:
        """This appliance's CARP state for the cluster, or None when its daemon does not answer."""
        try:
            return self.carp(cluster)["local"]
        except (ConnectionError, OSError, StopIteration, KeyError):
            return None

    def events(self, name: str | None = None) -> list[dict]:
        return self.ctl.events(name) if self.ctl.log.exists() else []

    def transitions(self) -> list[dict]:
        return [e for e in self.events("carp_transition") if e.get("source") == "carp"]

    def owns_vip(self, vip: str | None = None) -> bool:
        return (vip or self.vip) in addresses(self.ns, TAP) + addresses(self.ns, TAP, family="inet6")

    def active_flag(self, cluster: str | None = None) -> bool | None:
        from control import observe

        r = self.dp.region
        if r is None:
            return None
        return bool(observe.clusters(r)[cluster or self.cluster]["active"])

    def stats(self) -> dict:
        """Every counter of the data plane, straight from its shared memory (control.observe.stats)."""
        from control import observe

        return observe.stats(self.dp.region)

    def counters(self) -> dict:
        """Port and cluster counters straight from the data plane's shared memory."""
        st = self.stats()
        port = st["ports"][0]
        web = st["clusters"][self.cluster]
        return {"rx": port["rx_packets"], "tx": port["tx_packets"], "exc": port["exc_to_kernel"],
                "exc_arp": port["exc_arp"], "exc_carp": port["exc_carp"], "drops": dict(port["drops"]), "web_packets": web["packets"],
                "web_not_active": web["drop_not_active"]}

    def wait_state(self, want: str, timeout: float) -> float:
        """Waits until this appliance's CARP state is `want`; returns the seconds it took."""
        t0 = time.monotonic()
        eventually(lambda: self.state() == want, timeout,
                   lambda: f"appliance {self.name} {want} (state {self.state()}):\n{self.log_tail()}")
        return time.monotonic() - t0

    def log_tail(self, n: int = 4000) -> str:
        return self.ctl.log.read_text()[-n:] if self.ctl.log.exists() else "(no log)"

    def first_master_after(self, t_wall: float) -> float | None:
        """Wall-clock time of the first transition to master logged after t_wall (from the JSON log)."""
        for e in self.transitions():
            if e.get("state") != "master":
                continue
            ts = datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()
            if ts >= t_wall:
                return ts
        return None


class Pair:
    """The two appliances A and B of a lab (self.appliances by name), and which one is master."""

    appliances: dict[str, Appliance]

    @property
    def a(self) -> Appliance:
        return self.appliances["A"]

    @property
    def b(self) -> Appliance:
        return self.appliances["B"]

    def master(self, cluster: str | None = None) -> Appliance | None:
        return next((a for a in self.appliances.values() if a.state(cluster) == "master"), None)

    def other(self, a: Appliance) -> Appliance:
        return self.b if a is self.a else self.a
