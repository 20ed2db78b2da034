"""The engine of perf/run: one generator and one forwarder on a fresh memif pair, and what they measured.

pydp-gen (memif server) replays a compiled TRex profile (perf/trex/compile.py) and counts what comes back. The
forwarder on the other end of the memif pair (client) is either dpdk-testpmd --forward-mode=io (the baseline:
receive and send back, nothing else) or the pydp data plane (parse, flow table, Maglev, L2 DSR rewrite).

Pinning (2 CPUs): the generator and the forwarders' main lcores share the generator CPU; the forwarding lcore
(testpmd's forwarding core, pydp's worker) has the forwarding CPU to itself.

Every process started here is stopped (SIGTERM, then SIGKILL) and its memif socket, hugepage files, EAL runtime
directory and shared memory are removed, also on error or Ctrl-C.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_GEN = os.path.join(ROOT, "build", "perf", "pydp-gen")

CLUSTER_IP = "198.51.100.10"           # documentation range (RFC 5737); the profiles' default cluster IP
CLUSTER_IP6 = "2001:db8::10"
FWD_MAC = "02:00:00:00:00:02"          # the forwarder's memif MAC; the profiles' destination MAC
EDGES = [(f"edge{i}", f"198.51.100.{20 + i}", f"02:00:00:00:00:{0x20 + i:02x}") for i in range(1, 5)]
EDGES6 = [(f"edge{i}", f"2001:db8::{0x20 + i:x}", f"02:00:00:00:00:{0x30 + i:02x}") for i in range(1, 5)]
STOP_TIMEOUT = 10.0


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[perf] {msg}", file=sys.stderr, flush=True)


# ---- processes ----

class Proc:
    """A child process whose stderr (and optionally stdout) lines are collected by reader threads."""

    def __init__(self, name: str, argv: list[str], logfile: str, *, stdin_pipe: bool = False,
                 capture_stdout: bool = False):
        self.name = name
        self.argv = argv
        self.lines: list[str] = []
        self.stdout_lines: list[str] = []
        self.cond = threading.Condition()
        self.log = open(logfile, "w")
        self.log.write("$ " + " ".join(argv) + "\n")
        self.log.flush()
        # own session: a Ctrl-C on the terminal reaches only this script, which then stops the children itself
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                                  stdout=subprocess.PIPE if capture_stdout else self.log,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.threads = [threading.Thread(target=self._read, args=(self.p.stderr, self.lines), daemon=True)]
        if capture_stdout:
            self.threads.append(threading.Thread(target=self._read, args=(self.p.stdout, self.stdout_lines),
                                                 daemon=True))
        for t in self.threads:
            t.start()

    def _read(self, stream, sink: list[str]) -> None:
        for line in stream:
            self.log.write(line)
            self.log.flush()
            with self.cond:
                sink.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_line(self, pattern: str, timeout: float, start: int = 0, peers: tuple = ()) -> int:
        """Index of the first stderr line from `start` on containing pattern; BenchError on timeout, on exit, or
        when one of peers (processes this one depends on) exits first."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i in range(start, len(self.lines)):
                    if pattern in self.lines[i]:
                        return i
                for peer in peers:
                    if peer.p.poll() is not None:
                        raise BenchError(f"{peer.name} exited (status {peer.p.returncode}) while {self.name} "
                                         f"waited for '{pattern}':\n" + peer.tail())
                if self.p.poll() is not None and not any(t.is_alive() for t in self.threads):
                    raise BenchError(f"{self.name} exited (status {self.p.returncode}) before '{pattern}':\n"
                                     + self.tail())
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"{self.name}: no '{pattern}' within {timeout:.0f} s:\n" + self.tail())
                self.cond.wait(min(left, 0.2))

    def tail(self, n: int = 15) -> str:
        with self.cond:
            return "\n".join("    " + line for line in self.lines[-n:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; this process only (by pid)."""
        if self.p.poll() is None:
            try:
                self.p.send_signal(signal.SIGTERM)
                self.p.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log(f"{self.name} ignored SIGTERM for {STOP_TIMEOUT:.0f} s: SIGKILL")
                self.p.kill()
                self.p.wait(STOP_TIMEOUT)
        for t in self.threads:
            t.join(2.0)
        if self.p.stdin is not None:
            self.p.stdin.close()
        self.log.close()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (all their threads), seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])      # utime, stime (fields 14 and 15 of stat)
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def proc_stat() -> tuple[int, int, int]:
    """The machine's CPU time from /proc/stat, in clock ticks: (total, busy, steal); busy excludes idle and
    iowait, steal is what the hypervisor gave other guests."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    total = sum(v[:8])                  # user nice system idle iowait irq softirq steal (guest is inside user)
    steal = v[7] if len(v) > 7 else 0
    return total, total - v[3] - v[4], steal


class Window:
    """The measurement window as the generator announces it: wall time, the CPU time of our processes and the
    machine's CPU time from /proc/stat, so that CPU taken by anything else on the two CPUs (other jobs on the
    machine: other_load) and by the hypervisor (steal) are known for every run."""

    def __init__(self, gen: Proc, procs: list[Proc], ncpus: int, timeout: float):
        self.gen, self.procs, self.ncpus, self.timeout = gen, procs, ncpus, timeout
        self.idx = 0
        self.other_load = self.steal = 0.0

    def start(self) -> None:
        peers = tuple(p for p in self.procs if p is not self.gen)
        self.idx = self.gen.wait_line("pydp-gen: measuring", self.timeout, peers=peers)
        self.t0, self.c0 = time.monotonic(), cpu_seconds([p.p.pid for p in self.procs])
        self.s0 = proc_stat()

    def end(self, seconds: float) -> float:
        """Waits for the end of the window; returns the share of the CPUs used by other processes (or idle:
        a busy-polling pair uses both CPUs fully). Also sets other_load (busy CPU time of other processes from
        /proc/stat, share of all CPUs) and steal (share of all CPUs)."""
        peers = tuple(p for p in self.procs if p is not self.gen)
        self.gen.wait_line("pydp-gen: done", seconds + 30, self.idx, peers=peers)
        dt = time.monotonic() - self.t0
        used = cpu_seconds([p.p.pid for p in self.procs]) - self.c0
        s1 = proc_stat()
        dtotal = max(1, s1[0] - self.s0[0])
        hz = os.sysconf("SC_CLK_TCK")
        self.other_load = round(min(1.0, max(0.0, ((s1[1] - self.s0[1]) - used * hz) / dtotal)), 3)
        self.steal = round((s1[2] - self.s0[2]) / dtotal, 3)
        return round(max(0.0, 1 - used / (self.ncpus * dt)), 3) if dt > 0 else 0.0


def remove_eal_files(prefix: str) -> None:
    """Hugepage files and the EAL runtime directory of a file prefix."""
    for path in glob.glob(os.path.join("/dev/hugepages", glob.escape(prefix) + "map_*")):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    shutil.rmtree(os.path.join("/var/run/dpdk", prefix), ignore_errors=True)


def wait_for(path: str, proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.p.poll() is not None:
            raise BenchError(f"{proc.name} exited (status {proc.p.returncode}) before creating {path}:\n"
                             + proc.tail())
        if time.monotonic() > deadline:
            raise BenchError(f"{proc.name}: {path} did not appear within {timeout:.0f} s:\n" + proc.tail())
        time.sleep(0.05)


# ---- pydp ----

def pydp_config(sock: str, shm: str, lcores: str, flow_capacity: int, busy_poll: bool = True,
                burst: int = 64) -> str:
    """One memif port, no TAP, flow tables on hugepages; an IPv4 and an IPv6 cluster (L2 DSR, four edges each)."""
    lines = [
        "# generated by perf/run",
        "[dataplane]",
        f'lcores = "{lcores}"',
        f"busy_poll = {'true' if busy_poll else 'false'}",
        f"burst = {burst}",
        f"flow_capacity = {flow_capacity}",
        "hugepages = true",
        f'shm_path = "{shm}"',
        "",
        "[[port]]",
        'name = "bench0"',
        f'device = "net_memif0,role=client,socket={sock},socket-abstract=no,mac={FWD_MAC}"',
        'tap = ""',
    ]
    for vhid, (name, ip, edges) in enumerate((("bench", CLUSTER_IP, EDGES), ("bench6", CLUSTER_IP6, EDGES6)), 1):
        lines += ["", "[[cluster]]", f'name = "{name}"', f'cluster_ip = "{ip}"', 'dsr = "l2"', "",
                  "[cluster.carp]", f"vhid = {vhid}", "", "[cluster.health]", 'type = "none"']
        for ename, eip, mac in edges:
            lines += ["", "[[cluster.edge]]", f'name = "{ename}"', f'ip = "{eip}"', f'mac = "{mac}"']
    return "\n".join(lines) + "\n"


def pydp_prefix(cfg_path: str, shm: str) -> str:
    """The EAL file prefix the data plane will use (asked from pydp itself, so it follows pydp's rule)."""
    from pydp import config as pconfig
    from pydp.dataplane import eal_args
    try:
        cfg = pconfig.load(cfg_path)
    except pconfig.ConfigError as exc:
        raise BenchError(f"the generated pydp config is refused:\n{exc}") from None
    try:
        args = eal_args(cfg, shm_path=shm)[0]
    except TypeError:                   # an older launcher without shm_path=
        args = eal_args(cfg)[0]
    return args[args.index("--file-prefix") + 1]


def snapshot(region) -> dict:
    """The counters the benchmark needs, copied out of the live shared-memory views (summed over workers)."""
    ws = region.worker_stats()
    port = ws["port"][:, 0]
    snap = {k: int(ws[k].sum()) for k in ("polls", "idle_polls", "sleeps", "busy_cycles", "flow_lookups",
                                           "flow_hits", "flow_inserts", "flow_evictions")}
    snap["rx_packets"] = int(port["rx_packets"].sum())
    snap["tx_packets"] = int(port["tx_packets"].sum())
    snap["drops"] = [int(x) for x in port["drops"].sum(axis=0)]
    try:
        snap["flow_table"] = {k: int(v) for k, v in region.flow_tables().items()}
    except AttributeError:
        pass
    return snap


def delta(a: dict, b: dict) -> dict:
    out = {k: b[k] - a[k] for k in b if isinstance(b[k], int) and k in a}
    out["drops"] = [y - x for x, y in zip(a["drops"], b["drops"])]
    return out


# ---- one run ----

@dataclass
class Load:
    """What the generator sends in one run: a compiled profile, its warm-up and its rate."""
    spec: str                   # the pydp-gen spec file (perf/trex/compile.py)
    warmup_packets: int = 0     # e.g. the flow count: the forwarder then holds every flow before the window
    rate: int = 0               # packets per second, 0 = flat out
    drain: float = 0.0          # receive-only time after the window: frames in flight then count as received
    warmup: float | None = None  # seconds; None = the run's default
    seconds: float | None = None


class Run:
    """One generator + one forwarder on a fresh memif pair; everything it starts is cleaned up by close()."""

    def __init__(self, opts, workdir: str, tag: str):
        self.opts = opts
        self.workdir = workdir
        self.tag = tag
        uid = f"{os.getpid()}-{tag}"
        self.sock = os.path.join(workdir, f"memif-{tag}.sock")
        self.gen_prefix = f"pydpperf-gen-{uid}"
        self.fwd_prefix = None
        self.shm = None
        self.procs: list[Proc] = []

    def _times(self, load: Load) -> tuple[float, float]:
        o = self.opts
        return (o.warmup if load.warmup is None else load.warmup), (o.seconds if load.seconds is None
                                                                     else load.seconds)

    def start_gen(self, load: Load) -> Proc:
        o = self.opts
        warmup, seconds = self._times(load)
        argv = [o.gen, "--lcores", f"0@{o.gen_cpu}", "--file-prefix", self.gen_prefix, "--no-telemetry",
                "--no-pci", "--huge-unlink", "-m", "256", "--log-level", "lib.eal:warning",
                "--vdev", f"net_memif0,role=server,socket={self.sock},socket-abstract=no",
                "--", "--spec", load.spec, "--seconds", str(seconds), "--warmup", str(warmup),
                "--warmup-packets", str(load.warmup_packets), "--rate", str(int(load.rate)),
                "--drain", str(load.drain), "--link-timeout", str(o.ready_timeout), "--json", "--linger", "60"]
        gen = Proc("pydp-gen", argv, os.path.join(self.workdir, f"gen-{self.tag}.log"), capture_stdout=True)
        self.procs.append(gen)
        wait_for(self.sock, gen, o.ready_timeout)
        return gen

    def gen_result(self, gen: Proc, load: Load) -> dict:
        """The generator's JSON line. It keeps its memif link up afterwards (--linger) until close() has stopped
        the forwarder: a memif peer that disappears while the other side polls can crash that side."""
        warmup, seconds = self._times(load)
        deadline = time.monotonic() + warmup + seconds + load.drain + 30 + self.opts.ready_timeout + 10
        while time.monotonic() < deadline:
            for line in reversed(list(gen.stdout_lines)):
                if line.startswith("{"):
                    return json.loads(line)
            if gen.p.poll() is not None:
                for t in gen.threads:
                    t.join(5.0)
                for line in reversed(list(gen.stdout_lines)):
                    if line.startswith("{"):
                        return json.loads(line)
                raise BenchError(f"pydp-gen ended (status {gen.p.returncode}) without a result:\n" + gen.tail())
            time.sleep(0.05)
        raise BenchError("pydp-gen did not finish in time:\n" + gen.tail())

    def _window(self, gen: Proc, procs: list[Proc], load: Load) -> Window:
        warmup, _ = self._times(load)
        return Window(gen, procs, 2, warmup + 30 + self.opts.ready_timeout)

    def baseline(self, load: Load) -> dict:
        o = self.opts
        gen = self.start_gen(load)
        self.fwd_prefix = f"pydpperf-testpmd-{os.getpid()}-{self.tag}"
        argv = [o.testpmd, "--lcores", f"0@{o.gen_cpu},1@{o.fwd_cpu}", "--file-prefix", self.fwd_prefix,
                "--no-telemetry", "--no-pci", "--huge-unlink", "--log-level", "lib.eal:warning",
                "--vdev", f"net_memif0,role=client,socket={self.sock},socket-abstract=no,mac={FWD_MAC}",
                "--", "--forward-mode=io", "--port-topology=loop", "--nb-cores=1", "--auto-start",
                "--record-core-cycles", f"--burst={getattr(o, 'burst', 64)}"]
        # non-interactive testpmd forwards until Enter: stdin is a pipe written to at the end, when testpmd
        # prints its statistics (busy cycles per packet over the whole run); SIGTERM stops it otherwise
        tp = Proc("dpdk-testpmd", argv, os.path.join(self.workdir, f"testpmd-{self.tag}.log"),
                  stdin_pipe=True, capture_stdout=True)
        self.procs.append(tp)
        win = self._window(gen, [gen, tp], load)
        win.start()
        _, seconds = self._times(load)
        foreign = win.end(seconds + load.drain)
        res = self.gen_result(gen, load)
        if tp.p.poll() is not None:
            raise BenchError(f"dpdk-testpmd exited early (status {tp.p.returncode})")
        return {"gen": res, "foreign_cpu_share": foreign, "other_load": win.other_load, "steal": win.steal,
                "cycles_per_packet": self._testpmd_cycles(tp)}

    @staticmethod
    def _testpmd_cycles(tp: Proc) -> float | None:
        """Enter stops testpmd's forwarding; its summary has 'CPU cycles/packet=X' (--record-core-cycles: TSC
        cycles of bursts that received packets, per packet, whole run)."""
        try:
            tp.p.stdin.write("\n")
            tp.p.stdin.flush()
            tp.p.wait(STOP_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired):
            return None
        for t in tp.threads:
            t.join(2.0)
        for line in reversed(list(tp.stdout_lines)):
            m = re.search(r"CPU cycles/packet=([0-9.]+)", line)
            if m:
                return round(float(m.group(1)), 1)
        return None

    def l3fwd(self, load: Load, rules_v4: str, rules_v6: str, ipv6: bool) -> dict:
        """DPDK's l3fwd example in exact-match mode (-E) on the same memif pair: one rte_hash lookup of the
        5-tuple per packet against rules for every flow of the profile, MAC rewrite, TTL/checksum update."""
        o = self.opts
        gen = self.start_gen(load)
        self.fwd_prefix = f"pydpperf-l3fwd-{os.getpid()}-{self.tag}"
        # one lcore, the forwarding one (l3fwd makes a TX queue per lcore; the memif peer has one queue pair)
        argv = [o.l3fwd, "--lcores", f"1@{o.fwd_cpu}", "--file-prefix", self.fwd_prefix,
                "--no-telemetry", "--no-pci", "--huge-unlink", "--log-level", "lib.eal:warning",
                "--vdev", f"net_memif0,role=client,socket={self.sock},socket-abstract=no,mac={FWD_MAC}",
                "--", "-p", "0x1", "-E", "--parse-ptype", "--config=(0,0,1)", f"--rule_ipv4={rules_v4}",
                f"--rule_ipv6={rules_v6}", "--eth-dest=0,02:00:00:00:00:01"]
        if ipv6:
            argv.append("--ipv6")
        # stdout (a line per rule loaded) goes straight to the log file
        lf = Proc("dpdk-l3fwd", argv, os.path.join(self.workdir, f"l3fwd-{self.tag}.log"))
        self.procs.append(lf)
        # loading a million rules takes seconds: the generator waits for the link (--link-timeout)
        win = self._window(gen, [gen, lf], load)
        win.timeout += 60
        win.start()
        _, seconds = self._times(load)
        foreign = win.end(seconds + load.drain)
        res = self.gen_result(gen, load)
        if lf.p.poll() is not None:
            raise BenchError(f"dpdk-l3fwd exited early (status {lf.p.returncode}):\n" + lf.tail())
        return {"gen": res, "foreign_cpu_share": foreign, "other_load": win.other_load, "steal": win.steal}

    def pydp(self, load: Load, flow_capacity: int, busy_poll: bool = True, during=None) -> dict:
        """pydp forwards the load. during(region, cfg_path) runs in a thread while the generator measures."""
        from pydp.shm import Region
        o = self.opts
        self.shm = os.path.join(o.shm_dir, f"pydpperf-{os.getpid()}-{self.tag}")
        cfg_path = os.path.join(self.workdir, f"pydp-{self.tag}.toml")
        with open(cfg_path, "w") as f:
            f.write(pydp_config(self.sock, self.shm, f"0@{o.gen_cpu},1@{o.fwd_cpu}", flow_capacity, busy_poll,
                                getattr(o, "burst", 64)))
        self.fwd_prefix = pydp_prefix(cfg_path, self.shm)
        gen = self.start_gen(load)
        argv = [sys.executable, "-P", "-m", "pydp.dataplane", "--config", cfg_path, "--own-all", "--shm", self.shm]
        if busy_poll:
            argv.append("--busy-poll")
        dp = Proc("pydp-dataplane", argv, os.path.join(self.workdir, f"pydp-{self.tag}.log"))
        self.procs.append(dp)
        dp.wait_line("dataplane_started", o.ready_timeout, peers=(gen,))
        warmup, seconds = self._times(load)
        if warmup > 0 and any("pydp-gen: measuring" in line for line in list(gen.lines)):
            raise BenchError("the data plane came up after the generator's warm-up had ended (raise --warmup)")
        region = Region.attach(self.shm)
        worker = None
        try:
            win = self._window(gen, [gen, dp], load)
            win.start()
            before = snapshot(region)
            dp_cpu0 = cpu_seconds([dp.p.pid])
            if during is not None:
                failure = []

                def body():
                    try:
                        during(region, cfg_path)
                    except Exception as exc:        # reported in the main thread
                        failure.append(exc)
                worker = threading.Thread(target=body, name="during", daemon=True)
                worker.start()
            foreign = win.end(seconds + load.drain)
            dp_cpu = cpu_seconds([dp.p.pid]) - dp_cpu0
            after = snapshot(region)
            if worker is not None:
                worker.join(seconds + 30)
                if worker.is_alive():
                    raise BenchError("the action during the window did not finish")
                if failure:
                    raise BenchError(f"the action during the window failed: {failure[0]}")
            res = self.gen_result(gen, load)
            final = snapshot(region)          # read before the data plane stops
            drop_names = region.drop_names()
        finally:
            region.close()
        if dp.p.poll() is not None:
            raise BenchError(f"pydp-dataplane exited early (status {dp.p.returncode}):\n" + dp.tail())
        return {"gen": res, "window": delta(before, after), "total": final, "drop_names": drop_names,
                "foreign_cpu_share": foreign, "other_load": win.other_load, "steal": win.steal,
                "dataplane_cpu_s": round(dp_cpu, 3)}

    def close(self) -> None:
        # a second Ctrl-C or SIGTERM must not cut the clean-up short
        saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._close()
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)

    def _close(self) -> None:
        for p in reversed(self.procs):
            try:
                p.stop()
            except Exception as exc:   # keep cleaning up
                log(f"stopping {p.name}: {exc}")
        for prefix in (self.gen_prefix, self.fwd_prefix):
            if prefix:
                remove_eal_files(prefix)
        for path in (self.sock, self.shm):
            if path:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass


def run_once(opts, workdir: str, tag: str, kind: str, load: Load, **kw) -> dict:
    """One baseline, l3fwd or pydp run, with the machine's load before it and a warning when others disturbed
    it."""
    busy = cpu_busy(0.2)
    if max(busy) > 0.10:
        log(f"warning: the machine is busy before the {tag} run (CPU busy {busy}): the figures will suffer")
    run = Run(opts, workdir, tag)
    try:
        if kind == "baseline":
            res = run.baseline(load)
        elif kind == "l3fwd":
            res = run.l3fwd(load, **kw)
        else:
            res = run.pydp(load, **kw)
    finally:
        run.close()
    res["cpu_busy_before"] = busy
    if res.get("other_load", 0) + res.get("steal", 0) > 0.03:
        log(f"warning: other processes took {res['other_load']:.1%} of the two CPUs (steal {res['steal']:.1%}) "
            f"during the {tag} measurement")
    return res

def cpu_busy(interval: float = 0.5) -> list[float]:
    """Busy share of each CPU over interval (from /proc/stat): other load on the machine spoils the figures."""
    def read():
        out = {}
        with open("/proc/stat") as f:
            for line in f:
                if re.match(r"cpu\d+ ", line):
                    v = [int(x) for x in line.split()[1:]]
                    out[line.split()[0]] = (sum(v), v[3] + v[4])      # total, idle + iowait
        return out
    a = read()
    time.sleep(interval)
    b = read()
    return [round(1 - (b[c][1] - a[c][1]) / max(1, b[c][0] - a[c][0]), 3) for c in sorted(a, key=lambda x: int(x[3:]))]


def machine_facts() -> dict:
    model, mhz = "unknown", None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("cpu MHz") and mhz is None:
                    mhz = float(line.split(":", 1)[1])
    except OSError:
        pass
    try:
        dpdk = subprocess.run(["pkg-config", "--modversion", "libdpdk"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        dpdk = "unknown"
    facts = {"cpu": model, "cores": os.cpu_count(), "cpu_mhz": mhz, "dpdk": dpdk, "vdev": "net_memif",
             "kernel": platform.release(), "python": platform.python_version()}
    try:
        facts["pydp_commit"] = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return facts


def build_gen(path: str) -> None:
    """Builds (or brings up to date: ninja is incremental) pydp-gen and pydp-bench-maglev with CMake into path's
    directory."""
    bdir = os.path.dirname(path)
    log(f"building pydp-gen into {bdir}")
    subprocess.run(["cmake", "-S", ROOT, "-B", bdir, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                    "-DPYDP_BUILD_TESTS=OFF"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", bdir, "--target", "pydp-gen", "pydp-bench-maglev"], check=True,
                   stdout=subprocess.DEVNULL)


L3FWD_SRC = "/usr/share/dpdk/examples/l3fwd"     # Debian's dpdk-doc: DPDK's own example sources
L3FWD_FILES = ("main.c", "l3fwd_acl.c", "l3fwd_lpm.c", "l3fwd_fib.c", "l3fwd_em.c", "l3fwd_event.c",
               "l3fwd_event_generic.c", "l3fwd_event_internal_port.c")
DEFAULT_L3FWD = os.path.join(ROOT, "build", "perf", "dpdk-l3fwd")


def build_l3fwd(path: str) -> None:
    """Builds DPDK's l3fwd example from the installed sources (dpdk-doc) with pkg-config libdpdk, as its own
    Makefile does, into path; rebuilt only when a source is newer. perf/l3fwd_memif.h drops its request for
    receive checksum offload, which net_memif lacks."""
    srcs = [os.path.join(L3FWD_SRC, f) for f in L3FWD_FILES]
    missing = [s for s in srcs if not os.path.exists(s)]
    if missing:
        raise BenchError(f"{missing[0]} is missing: apt-get install dpdk-doc (DPDK's example sources)")
    if os.path.exists(path) and os.path.getmtime(path) >= max(os.path.getmtime(s) for s in
                                                               srcs + [os.path.join(HERE, "l3fwd_memif.h")]):
        return
    log(f"building DPDK's l3fwd from {L3FWD_SRC} into {path}")
    pc = lambda *a: subprocess.run(["pkg-config", *a, "libdpdk"], capture_output=True, text=True,
                                   check=True).stdout.split()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    subprocess.run(["cc", "-O3", *pc("--cflags"), "-DALLOW_EXPERIMENTAL_API",
                    "-include", os.path.join(HERE, "l3fwd_memif.h"),
                    "-I" + os.path.join(os.path.dirname(L3FWD_SRC), "common"), *srcs, "-o", path, *pc("--libs")],
                   check=True)
