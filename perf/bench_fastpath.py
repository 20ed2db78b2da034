#!/usr/bin/env python3
"""Fast-path benchmark: pydp against dpdk-testpmd io forwarding, same generator, same memif pair, same run.

For every profile the generator (pydp-gen, memif server) sends UDP frames to the cluster IP and counts what comes
back. The forwarder on the other end of the memif pair (client) is first dpdk-testpmd --forward-mode=io (the
baseline: receive and send back, nothing else), then the pydp data plane (parse, flow table, Maglev, L2 DSR
rewrite). The figure is the ratio pydp / baseline of the packets per second that return to the generator.

Pinning (2 CPUs): the generator and the forwarders' main lcores share --gen-cpu; the forwarding lcore (testpmd's
forwarding core, pydp's worker) has --fwd-cpu to itself. Also measured: pydp's worker cycles per packet (from its
shared-memory counters, over the measurement window only) and the Maglev table build time through the Python API.

Every process started here is stopped (SIGTERM, then SIGKILL) and its memif socket, hugepage files, EAL runtime
directory and shared memory are removed, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_GEN = os.path.join(ROOT, "build", "perf", "pydp-gen")

CLUSTER_IP = "198.51.100.10"           # documentation range (RFC 5737)
FWD_MAC = "02:00:00:00:00:02"          # the forwarder's memif MAC; the generator's destination MAC
EDGES = [(f"edge{i}", f"198.51.100.{20 + i}", f"02:00:00:00:00:{0x20 + i:02x}") for i in range(1, 5)]
PROFILES = {
    # name: (flows, frame size)
    "udp64-1M-flows": (1_000_000, 64),
    "udp64-1K-flows": (1_000, 64),
}
STOP_TIMEOUT = 10.0

EPILOG = """examples:
  perf/bench_fastpath.py                                  # both profiles, table on stdout
  perf/bench_fastpath.py --json perf/results/fastpath.json
  perf/bench_fastpath.py --profile udp64-1K-flows --seconds 3 --warmup 2

Needs root, hugepages mounted at /dev/hugepages, dpdk-testpmd, and the pydp package installed. pydp-gen is built
with CMake into build/perf/ when --gen is not given and it is missing. See docs/performance.md.
"""


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


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


class Window:
    """The measurement window as the generator announces it: wall time and the CPU time of our processes, so
    that CPU taken by anything else on the two CPUs (other jobs on the machine) shows up as foreign_cpu_share."""

    def __init__(self, gen: Proc, procs: list[Proc], ncpus: int, timeout: float):
        self.gen, self.procs, self.ncpus, self.timeout = gen, procs, ncpus, timeout
        self.idx = 0

    def start(self) -> None:
        peers = tuple(p for p in self.procs if p is not self.gen)
        self.idx = self.gen.wait_line("pydp-gen: measuring", self.timeout, peers=peers)
        self.t0, self.c0 = time.monotonic(), cpu_seconds([p.p.pid for p in self.procs])

    def end(self, seconds: float) -> float:
        """Waits for the end of the window; returns the share of the CPUs used by other processes."""
        peers = tuple(p for p in self.procs if p is not self.gen)
        self.gen.wait_line("pydp-gen: done", seconds + 30, self.idx, peers=peers)
        dt = time.monotonic() - self.t0
        used = cpu_seconds([p.p.pid for p in self.procs]) - self.c0
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

def pydp_config(sock: str, shm: str, lcores: str, flow_capacity: int) -> str:
    lines = [
        "# generated by perf/bench_fastpath.py",
        "[dataplane]",
        f'lcores = "{lcores}"',
        "busy_poll = true",
        f"flow_capacity = {flow_capacity}",
        "hugepages = true",
        f'shm_path = "{shm}"',
        "",
        "[[port]]",
        'name = "bench0"',
        f'device = "net_memif0,role=client,socket={sock},socket-abstract=no,mac={FWD_MAC}"',
        'tap = ""',
        "",
        "[[cluster]]",
        'name = "bench"',
        f'cluster_ip = "{CLUSTER_IP}"',
        'dsr = "l2"',
        "",
        "[cluster.health]",
        'type = "none"',
    ]
    for name, ip, mac in EDGES:
        lines += ["", "[[cluster.edge]]", f'name = "{name}"', f'ip = "{ip}"', f'mac = "{mac}"']
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
    snap = {k: int(ws[k].sum()) for k in ("polls", "idle_polls", "busy_cycles", "flow_lookups", "flow_hits",
                                           "flow_inserts", "flow_evictions")}
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

class Run:
    """One generator + one forwarder on a fresh memif pair; everything it starts is cleaned up by close()."""

    def __init__(self, args, workdir: str, tag: str):
        self.args = args
        self.workdir = workdir
        self.tag = tag
        uid = f"{os.getpid()}-{tag}"
        self.sock = os.path.join(workdir, f"memif-{tag}.sock")
        self.gen_prefix = f"pydpbench-gen-{uid}"
        self.fwd_prefix = None
        self.shm = None
        self.procs: list[Proc] = []

    def start_gen(self, flows: int, size: int) -> Proc:
        a = self.args
        argv = [a.gen, "--lcores", f"0@{a.gen_cpu}", "--file-prefix", self.gen_prefix, "--no-telemetry",
                "--no-pci", "--huge-unlink", "-m", "256", "--log-level", "lib.eal:warning",
                "--vdev", f"net_memif0,role=server,socket={self.sock},socket-abstract=no",
                "--", "--flows", str(flows), "--size", str(size), "--dst", CLUSTER_IP, "--dst-mac", FWD_MAC,
                "--seconds", str(a.seconds), "--warmup", str(a.warmup), "--link-timeout", str(a.ready_timeout),
                "--json", "--linger", "60"]
        gen = Proc("pydp-gen", argv, os.path.join(self.workdir, f"gen-{self.tag}.log"), capture_stdout=True)
        self.procs.append(gen)
        wait_for(self.sock, gen, a.ready_timeout)
        return gen

    def gen_result(self, gen: Proc) -> dict:
        """The generator's JSON line. It keeps its memif link up afterwards (--linger) until close() has stopped
        the forwarder: a memif peer that disappears while the other side polls can crash that side."""
        a = self.args
        deadline = time.monotonic() + a.warmup + a.seconds + 30 + a.ready_timeout + 10
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

    def baseline(self, flows: int, size: int) -> dict:
        a = self.args
        gen = self.start_gen(flows, size)
        self.fwd_prefix = f"pydpbench-testpmd-{os.getpid()}-{self.tag}"
        argv = [a.testpmd, "--lcores", f"0@{a.gen_cpu},1@{a.fwd_cpu}", "--file-prefix", self.fwd_prefix,
                "--no-telemetry", "--no-pci", "--huge-unlink", "--log-level", "lib.eal:warning",
                "--vdev", f"net_memif0,role=client,socket={self.sock},socket-abstract=no,mac={FWD_MAC}",
                "--", "--forward-mode=io", "--port-topology=loop", "--nb-cores=1", "--auto-start"]
        # non-interactive testpmd forwards until Enter: stdin is a pipe nobody writes; SIGTERM stops it
        tp = Proc("dpdk-testpmd", argv, os.path.join(self.workdir, f"testpmd-{self.tag}.log"),
                  stdin_pipe=True, capture_stdout=True)
        self.procs.append(tp)
        win = Window(gen, [gen, tp], 2, a.warmup + 30 + a.ready_timeout)
        win.start()
        foreign = win.end(a.seconds)
        res = self.gen_result(gen)
        if tp.p.poll() is not None:
            raise BenchError(f"dpdk-testpmd exited early (status {tp.p.returncode})")
        return {"gen": res, "foreign_cpu_share": foreign}

    def pydp(self, flows: int, size: int) -> dict:
        from pydp.shm import Region
        a = self.args
        self.shm = os.path.join(a.shm_dir, f"pydpbench-{os.getpid()}-{self.tag}")
        cfg_path = os.path.join(self.workdir, f"pydp-{self.tag}.toml")
        with open(cfg_path, "w") as f:
            f.write(pydp_config(self.sock, self.shm, f"0@{a.gen_cpu},1@{a.fwd_cpu}", a.flow_capacity))
        self.fwd_prefix = pydp_prefix(cfg_path, self.shm)
        gen = self.start_gen(flows, size)
        argv = [sys.executable, "-P", "-m", "pydp.dataplane", "--config", cfg_path, "--own-all", "--busy-poll",
                "--shm", self.shm]
        dp = Proc("pydp-dataplane", argv, os.path.join(self.workdir, f"pydp-{self.tag}.log"))
        self.procs.append(dp)
        dp.wait_line("forwarding on", a.ready_timeout, peers=(gen,))
        if any("pydp-gen: measuring" in line for line in list(gen.lines)):
            raise BenchError("the data plane came up after the generator's warm-up had ended (raise --warmup)")
        region = Region.attach(self.shm)
        try:
            win = Window(gen, [gen, dp], 2, a.warmup + 30 + a.ready_timeout)
            win.start()
            before = snapshot(region)
            foreign = win.end(a.seconds)
            after = snapshot(region)
            res = self.gen_result(gen)
            final = snapshot(region)          # read before the data plane stops
            drop_names = region.drop_names()
        finally:
            region.close()
        if dp.p.poll() is not None:
            raise BenchError(f"pydp-dataplane exited early (status {dp.p.returncode}):\n" + dp.tail())
        return {"gen": res, "window": delta(before, after), "total": final, "drop_names": drop_names,
                "foreign_cpu_share": foreign}

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


def run_once(args, workdir: str, tag: str, kind: str, flows: int, size: int) -> dict:
    busy = cpu_busy()
    if max(busy) > 0.10:
        log(f"warning: the machine is busy before the {tag} run (CPU busy {busy}): the figures will suffer")
    run = Run(args, workdir, tag)
    try:
        res = run.baseline(flows, size) if kind == "baseline" else run.pydp(flows, size)
    finally:
        run.close()
    res["cpu_busy_before"] = busy
    if res.get("foreign_cpu_share", 0) > 0.03:
        log(f"warning: other processes took {res['foreign_cpu_share']:.1%} of the two CPUs during the {tag} "
            "measurement: the figures are not clean")
    return res


# ---- figures ----

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


def maglev_times(repeat: int) -> dict:
    from pydp.maglev import build
    names = [f"edge-{i:02d}" for i in range(16)]
    out = {}
    for size in (65537, 655373):
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            build(names, size)
            best = min(best, time.perf_counter() - t0)
        out[f"16@{size}"] = round(best * 1e3, 3)
    return out


def profile_figures(base: dict, mine: dict, tsc_hz: float) -> dict:
    b, p = base["gen"], mine["gen"]
    w = mine["window"]
    names = mine["drop_names"]
    cpp = w["busy_cycles"] / w["rx_packets"] if w["rx_packets"] else None
    fig = {
        "pydp_mpps": round(p["rx_pps"] / 1e6, 3),
        "baseline_mpps": round(b["rx_pps"] / 1e6, 3),
        "ratio": round(p["rx_pps"] / b["rx_pps"], 3) if b["rx_pps"] else None,
        "cycles_per_packet": round(cpp, 1) if cpp else None,
        "drops": {names[i]: n for i, n in enumerate(w["drops"]) if n and i < len(names)},
        "gen_tx_mpps": {"baseline": round(b["tx_pps"] / 1e6, 3), "pydp": round(p["tx_pps"] / 1e6, 3)},
        "ns_per_packet": round(cpp / tsc_hz * 1e9, 1) if cpp and tsc_hz else None,
        "cycle_budget_at_baseline_rate": round(tsc_hz / b["rx_pps"], 1) if b["rx_pps"] else None,
        "worker_busy_share": round(w["busy_cycles"] / (tsc_hz * p["seconds"]), 3) if tsc_hz else None,
        "flows": {"lookups": w["flow_lookups"], "hits": w["flow_hits"], "inserts": w["flow_inserts"],
                  "evictions": w["flow_evictions"]},
        "drops_whole_run": {names[i]: n for i, n in enumerate(mine["total"]["drops"]) if n and i < len(names)},
        "flow_table_end": mine["total"].get("flow_table"),
        "seconds": {"baseline": round(b["seconds"], 3), "pydp": round(p["seconds"], 3)},
        "cpu_busy_before_runs": {"baseline": base.get("cpu_busy_before"), "pydp": mine.get("cpu_busy_before")},
        "foreign_cpu_share": {"baseline": base.get("foreign_cpu_share"), "pydp": mine.get("foreign_cpu_share")},
        # share of the generator's transmit attempts refused by a full ring: near 0 = the generator is the limit
        "gen_ring_full_share": {k: round(g["tx_ring_full"] / (g["tx_ring_full"] + g["tx"]), 3)
                                if g["tx_ring_full"] + g["tx"] else None for k, g in (("baseline", b), ("pydp", p))},
        "generator": {"baseline": b, "pydp": p},
    }
    return fig


def print_table(result: dict) -> None:
    m = result["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} CPUs, TSC {result['tsc_hz'] / 1e9:.2f} GHz, DPDK {m['dpdk']}, "
          f"{m['vdev']} (copy mode)")
    hdr = f"{'profile':<16} {'baseline Mpps':>13} {'pydp Mpps':>10} {'ratio':>6} {'cyc/pkt':>8} {'budget':>7}  drops"
    print(hdr)
    print("-" * len(hdr))
    for name, f in result["profiles"].items():
        drops = ", ".join(f"{k}={v}" for k, v in f["drops"].items()) or "none"
        cpp = f"{f['cycles_per_packet']:.0f}" if f["cycles_per_packet"] else "-"
        budget = f"{f['cycle_budget_at_baseline_rate']:.0f}" if f["cycle_budget_at_baseline_rate"] else "-"
        if not f.get("clean", True):
            drops += f"  [DISTURBED: other processes took {max(f['foreign_cpu_share'].values()):.0%} of the CPUs]"
        print(f"{name:<16} {f['baseline_mpps']:>13.3f} {f['pydp_mpps']:>10.3f} {f['ratio']:>6.3f} {cpp:>8} "
              f"{budget:>7}  {drops}")
    for name, f in result["profiles"].items():
        fl = f["flows"]
        hit = fl["hits"] / fl["lookups"] if fl["lookups"] else 0
        print(f"  {name}: generator sent {f['gen_tx_mpps']['baseline']:.3f} / {f['gen_tx_mpps']['pydp']:.3f} Mpps "
              f"(baseline / pydp run; ring full {f['gen_ring_full_share']['baseline']:.0%} / "
              f"{f['gen_ring_full_share']['pydp']:.0%} of attempts); in the window: flow hits {hit:.1%}, "
              f"inserts {fl['inserts']}, evictions {fl['evictions']}")
    print("cyc/pkt: pydp worker TSC cycles per received packet (busy iterations, measurement window); budget: "
          "cycles per packet at the baseline's rate")
    mg = result["maglev_build_ms"]
    print("maglev build, 16 edges (best of %d, Python call included): %s" % (
        result["maglev_repeat"], ", ".join(f"size {k.split('@')[1]}: {v:.2f} ms" for k, v in mg.items())))


def build_gen(path: str) -> None:
    bdir = os.path.dirname(path)
    log(f"building pydp-gen into {bdir}")
    subprocess.run(["cmake", "-S", ROOT, "-B", bdir, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                    "-DPYDP_BUILD_TESTS=OFF"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", bdir, "--target", "pydp-gen"], check=True, stdout=subprocess.DEVNULL)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON here")
    ap.add_argument("--profile", action="append", choices=sorted(PROFILES), metavar="NAME",
                    help=f"run only this profile (repeatable; default all: {', '.join(PROFILES)})")
    ap.add_argument("--seconds", type=float, default=5.0, help="measurement time per run (default 5)")
    ap.add_argument("--warmup", type=float, default=3.0,
                    help="warm-up per run, at most 5; the generator also makes one pass over all flows (default 3)")
    ap.add_argument("--gen-cpu", type=int, default=0, help="CPU of the generator and the main lcores (default 0)")
    ap.add_argument("--fwd-cpu", type=int, default=1, help="CPU of the forwarding lcore (default 1)")
    ap.add_argument("--flow-capacity", type=int, default=2097152, help="pydp flow_capacity (default 2097152)")
    ap.add_argument("--shm-dir", default="/dev/hugepages", metavar="DIR",
                    help="directory of pydp's shared memory (flow tables): /dev/hugepages (the default, as in production: "
                    "2 MiB pages) or /dev/shm (4 KiB pages)")
    ap.add_argument("--gen", default=None, metavar="PATH", help=f"pydp-gen binary (default {DEFAULT_GEN}, "
                    "built if missing)")
    ap.add_argument("--testpmd", default="dpdk-testpmd", metavar="PATH", help="dpdk-testpmd binary")
    ap.add_argument("--maglev-repeat", type=int, default=20, help="Maglev builds per size, best kept (default 20)")
    ap.add_argument("--ready-timeout", type=float, default=30.0, help="readiness timeout per process, s")
    ap.add_argument("--max-foreign", type=float, default=0.02, metavar="SHARE",
                    help="a baseline/pydp pair during which other processes took more than this share of the two "
                    "CPUs is run again (default 0.02)")
    ap.add_argument("--retries", type=int, default=2, help="how often a disturbed pair is run again (default 2)")
    ap.add_argument("--keep-logs", metavar="DIR", help="keep the process logs and generated configs here")
    args = ap.parse_args(argv)
    if not 0 < args.warmup <= 5:
        ap.error("--warmup must be in (0, 5]")
    if not 0 < args.seconds <= 60:
        ap.error("--seconds must be in (0, 60]")
    ncpu = os.cpu_count() or 1
    for opt, cpu in (("--gen-cpu", args.gen_cpu), ("--fwd-cpu", args.fwd_cpu)):
        if not 0 <= cpu < ncpu:
            ap.error(f"{opt} {cpu}: this machine has CPUs 0..{ncpu - 1}")
    if not 1024 <= args.flow_capacity <= 67108864:
        ap.error("--flow-capacity must be in 1024..67108864")
    if args.gen_cpu == args.fwd_cpu:
        ap.error("--gen-cpu and --fwd-cpu must differ (busy-polling processes starve each other)")
    if args.maglev_repeat < 1:
        ap.error("--maglev-repeat must be at least 1")
    args.profile = args.profile or list(PROFILES)
    return args


def _on_sigterm(signum, _frame):
    raise KeyboardInterrupt       # unwinds through every finally: the children are stopped, the files removed


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if os.geteuid() != 0:
        print("bench_fastpath: needs root (hugepages, memif, DPDK)", file=sys.stderr)
        return 2
    testpmd = shutil.which(args.testpmd)
    if testpmd is None:
        print(f"bench_fastpath: {args.testpmd} not found (apt-get install dpdk)", file=sys.stderr)
        return 2
    args.testpmd = testpmd
    if args.gen is None:
        args.gen = DEFAULT_GEN
        if not os.access(args.gen, os.X_OK):
            build_gen(args.gen)
    if not os.access(args.gen, os.X_OK):
        print(f"bench_fastpath: {args.gen} is not executable", file=sys.stderr)
        return 2

    workdir = tempfile.mkdtemp(prefix="pydpbench-")
    result = {"machine": machine_facts(), "profiles": {}, "maglev_build_ms": {}}
    started = time.monotonic()
    try:
        tsc_hz = 0.0
        for name in args.profile:
            flows, size = PROFILES[name]
            for attempt in range(args.retries + 1):
                log(f"{name}: baseline (dpdk-testpmd io)")
                base = run_once(args, workdir, f"{name}-base", "baseline", flows, size)
                log(f"{name}: baseline {base['gen']['rx_pps'] / 1e6:.3f} Mpps; now pydp")
                mine = run_once(args, workdir, f"{name}-pydp", "pydp", flows, size)
                log(f"{name}: pydp {mine['gen']['rx_pps'] / 1e6:.3f} Mpps")
                foreign = max(base["foreign_cpu_share"], mine["foreign_cpu_share"])
                if foreign <= args.max_foreign:
                    break
                if attempt < args.retries:
                    log(f"{name}: other processes took {foreign:.1%} of the CPUs: running the pair again")
            tsc_hz = float(mine["gen"].get("tsc_hz") or 0) or (result["machine"]["cpu_mhz"] or 0) * 1e6
            result["profiles"][name] = profile_figures(base, mine, tsc_hz)
            result["profiles"][name]["clean"] = foreign <= args.max_foreign
            result["profiles"][name]["attempts"] = attempt + 1
        log("maglev build times")
        result["maglev_build_ms"] = maglev_times(args.maglev_repeat)
        result["maglev_repeat"] = args.maglev_repeat
        result["tsc_hz"] = tsc_hz
        result["method"] = {
            "generator": "pydp-gen (memif server), UDP/IPv4, flat out, single lcore",
            "pinning": {"generator_and_main_lcores_cpu": args.gen_cpu, "forwarding_lcore_cpu": args.fwd_cpu},
            "warmup_s": args.warmup, "seconds": args.seconds, "flow_capacity": args.flow_capacity,
            "pydp_shm_dir": args.shm_dir,
            "mpps": "frames returned to the generator per second, measurement window",
            "maglev": "pydp.maglev.build(16 names, size): best of maglev_repeat, Python call overhead included",
        }
    except BenchError as exc:
        print(f"bench_fastpath: {exc}", file=sys.stderr)
        print(f"bench_fastpath: logs in {workdir}", file=sys.stderr)
        args.keep_logs = args.keep_logs or workdir
        return 1
    except KeyboardInterrupt:
        print("bench_fastpath: interrupted; every process started was stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep_logs:
            if os.path.abspath(args.keep_logs) != workdir:
                shutil.copytree(workdir, args.keep_logs, dirs_exist_ok=True)
                shutil.rmtree(workdir, ignore_errors=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    print_table(result)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        log(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
