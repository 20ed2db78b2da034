"""pydp-dataplane: starts the DPDK fast path for an appliance config (or runs a capture through it).

The launcher is thin: it turns the config into EAL arguments and parameters, calls the C fast path through cffi,
publishes the config into shared memory and then only watches links and signals. No packet passes through Python.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import sys
import time

from control.logs import add_log_options, event, setup_logging
from pydp import add_version_option, config as pconfig, service
from pydp import device as pdevice
from pydp._ffi import ffi, lib
from pydp.apply import ApplyError, apply_config
from pydp.shm import Region, ShmError

log = logging.getLogger("pydp.dataplane")

EPILOG = """examples:
  pydp-dataplane --config /etc/pydp/appliance.toml --managed   # an appliance: pydp-control publishes the clusters
  pydp-dataplane --config lab.toml --own-all            # alone: forward the file's clusters, no CARP, no pydp-control
  pydp-dataplane --config lab.toml --pcap-in in.pcap --pcap-out out.pcap --pcap-exception kernel.pcap

--managed: the file gives the data plane's own settings (ports, lcores, memory); its clusters are ignored and the
clusters, their edges and their ownership come from pydp-control alone (its store is the configuration of record).
SIGHUP then asks pydp-control to re-apply the store. Without --managed the file's clusters are published at start
and SIGHUP re-reads them (standalone use without pydp-control).

In pcap mode the capture runs once through the real fast path (DPDK net_pcap), every cluster counts as active,
and a JSON summary of the counters is printed (--stats-json FILE writes it to a file too).
"""


class LaunchError(RuntimeError):
    pass


def eal_args(cfg, *, pcap: dict | None = None, shm_path: str | None = None) -> tuple[list[str], list[str], list[str]]:
    """(EAL argv, data port names, exception port names) for a config; pcap mode swaps the ports for net_pcap.

    The EAL file prefix follows the shared-memory path, so two data planes on one host never share EAL files.
    """
    dp = cfg.dataplane
    prefix = "pydp-" + re.sub(r"[^A-Za-z0-9_-]", "_", os.path.basename(shm_path or dp.shm_path))
    if pcap is not None:
        prefix = f"pydp-pcap-{os.getpid()}"
    args = ["pydp-dataplane", "--file-prefix", prefix, "--no-telemetry", "--log-level", "lib.eal:warning"]
    ports, excs = [], []
    if pcap is not None:
        for key in ("in", "out", "exception"):
            if "," in (pcap.get(key) or ""):     # devargs have no quoting: a comma would start another argument
                raise LaunchError(f"pcap file {pcap[key]!r}: DPDK device arguments cannot hold a ','; rename it")
        # --no-huge creates no hugepage files; the runtime directory is removed at stop
        args += ["-l", str(dp.main_lcore), "--no-huge", "-m", "512", "--no-pci"]
        rx = f"rx_pcap={pcap['in']}"
        args += ["--vdev", f"net_pcap0,{rx},tx_pcap={pcap['out']}"]
        ports.append("net_pcap0")
        if pcap.get("exception"):
            args += ["--vdev", f"net_pcap1,tx_pcap={pcap['exception']}"]
            excs.append("net_pcap1")
        else:
            args += ["--vdev", "net_null1,no-rx=1"]     # net_null would otherwise invent frames on RX
            excs.append("net_null1")
        return args, ports, excs
    # --lcores takes plain lists and lcore@cpu pins; the main lcore is the first one listed
    args += ["--lcores", dp.lcores, "--main-lcore", str(dp.main_lcore)]
    if dp.hugepages:
        args += ["--huge-unlink"]
    else:
        args += ["--no-huge"]
    args += ["-m", str(dp.memory_mb)]
    workers = len(dp.worker_lcores)
    any_pci = False
    taken = {port.device_name for port in cfg.ports}     # an exception TAP must not take a data port's name
    for i, port in enumerate(cfg.ports):
        dev = pdevice.parse(port.device)
        extra = ""
        if dev.is_pci:
            any_pci = True
        elif dev.name.startswith(("net_af_packet", "eth_af_packet")) and not dev.has_arg("qpairs"):
            extra = f",qpairs={workers}"        # one RX/TX queue pair per worker
        args += dev.eal(extra)
        ports.append(dev.name)
        if port.tap:
            k = i
            while f"net_tap{k}" in taken:
                k += len(cfg.ports)
            name = f"net_tap{k}"
            taken.add(name)
            args += ["--vdev", f"{name},iface={port.tap}"]
            excs.append(name)
        else:
            excs.append("")
    if not any_pci:
        args.append("--no-pci")
    args += list(dp.eal_args)
    return args, ports, excs


class Dataplane:
    """One data plane in this process (DPDK allows one EAL per process)."""

    def __init__(self, cfg, *, shm_path: str | None = None, pcap: dict | None = None, busy_poll: bool | None = None,
                 managed: bool = False):
        self.cfg = cfg
        self.managed = managed
        self.pcap = pcap
        self.shm_path = shm_path or cfg.dataplane.shm_path
        self.busy_poll = cfg.dataplane.busy_poll if busy_poll is None else busy_poll
        self.region: Region | None = None
        self._keep = []
        self.prefix = None

    def start(self) -> Region:
        cfg, dp = self.cfg, self.cfg.dataplane
        shm_dir = os.path.dirname(self.shm_path) or "/"
        if not os.path.isdir(shm_dir):
            hint = (" (mount hugetlbfs: mount -t hugetlbfs nodev /dev/hugepages, as scripts/setup.sh does, or set "
                    "dataplane.shm_path = \"/dev/shm/pydp\")") if shm_dir.startswith("/dev/hugepages") else ""
            raise LaunchError(f"shared memory directory {shm_dir} does not exist{hint}")
        args, ports, excs = eal_args(cfg, pcap=self.pcap, shm_path=self.shm_path)
        self.prefix = args[args.index("--file-prefix") + 1]
        event("dataplane_eal_init", arguments=" ".join(args[1:]))
        argv = [ffi.new("char[]", a.encode()) for a in args]
        self._keep.append(argv)
        c_argv = ffi.new("char *[]", argv)
        self._keep.append(c_argv)
        if lib.pydp_eal_init(len(argv), c_argv) < 0:
            shutil.rmtree(f"/var/run/dpdk/{self.prefix}", ignore_errors=True)
            raise LaunchError(ffi.string(lib.pydp_last_error()).decode())
        p = ffi.new("struct pydp_dp_params *")
        names = [ffi.new("char[]", n.encode()) for n in ports + excs]
        shm_path = ffi.new("char[]", self.shm_path.encode())
        self._keep += [p, names, shm_path]
        p.shm_path = shm_path
        p.nb_workers = 1 if self.pcap is not None else len(dp.worker_lcores)
        p.nb_ports = len(ports)
        for i in range(len(ports)):
            p.port_names[i] = names[i]
            p.exc_names[i] = names[len(ports) + i] if excs[i] else ffi.NULL
        p.flow_capacity = dp.flow_capacity
        p.maglev_max = max([dp.maglev_size] + [c.maglev_size or 0 for c in cfg.clusters])
        p.rx_desc, p.tx_desc, p.nb_mbufs, p.burst = dp.rx_desc, dp.tx_desc, dp.mbufs, dp.burst
        p.busy_poll = 1 if self.busy_poll else 0
        p.idle_sleep_max_us = dp.idle_sleep_max_us
        p.idle_sleep_deep_us = dp.idle_sleep_deep_us
        p.tx_drain_us = dp.tx_drain_us
        p.exc_pps, p.exc_prio_pps = dp.exception_pps, dp.exception_priority_pps
        p.exc_carp_pps, p.exc_control_pps = dp.exception_carp_pps, dp.exception_control_pps
        p.promiscuous = 1 if any(port.promiscuous for port in cfg.ports) else 0
        p.pcap_mode = 1 if self.pcap is not None else 0
        handle = lib.pydp_dp_setup(p)
        if handle == ffi.NULL:
            err = ffi.string(lib.pydp_last_error()).decode()
            lib.pydp_dp_teardown()
            raise LaunchError(err)
        self.region = Region(handle)
        handle.hdr.managed = 1 if self.managed else 0
        return self.region

    def apply(self, cfg=None, *, own_all: bool = False, inactive: tuple = ()) -> None:
        """Publishes the file's config (standalone use). Managed, only the data plane's own settings are published
        and no cluster: pydp-control publishes those."""
        cfg = cfg or self.cfg
        if self.managed:
            cfg = dataclasses.replace(cfg, clusters=[])
        # standalone clusters have no failover: this appliance always owns them; ownership is part of the publish
        owned = {c.name for c in cfg.clusters if (own_all or c.mode == "standalone") and c.name not in inactive}
        result = apply_config(self.region, cfg, owned=owned)
        for w in result.warnings:
            event("apply_warning", logging.WARNING, message=w)
        # managed: the data plane's own settings only, the clusters come from pydp-control
        event("config_published", generation=result.generation, managed=self.managed, clusters=sorted(result.slots),
              rebuilt=sorted(result.rebuilt))
        self.cfg = cfg
        self.slots = result.slots

    def request_reload(self) -> int:
        """Managed: asks pydp-control to re-apply its store (it watches the counter). Returns the new count."""
        h = self.region.hdr
        h.reload_requests = int(h.reload_requests) + 1
        return int(h.reload_requests)

    def stop(self) -> None:
        """Stops the workers and releases ports, shared memory, EAL and its runtime directory."""
        lib.pydp_dp_stop()
        lib.pydp_dp_wait()
        lib.pydp_dp_teardown()
        self.region = None
        if self.prefix:
            shutil.rmtree(f"/var/run/dpdk/{self.prefix}", ignore_errors=True)

    def summary(self) -> dict:
        """Counters summed over workers, as printed at the end of a pcap run."""
        r = self.region
        ws = r.worker_stats()
        port = ws["port"][:, 0]
        drops = port["drops"].sum(axis=0)
        out = {
            "rx_packets": int(port["rx_packets"].sum()),
            "rx_bytes": int(port["rx_bytes"].sum()),
            "tx_packets": int(port["tx_packets"].sum()),
            "tx_bytes": int(port["tx_bytes"].sum()),
            "exc_to_kernel": int(port["exc_to_kernel"].sum()),
            "exc_arp": int(port["exc_arp"].sum()),
            "exc_carp": int(port["exc_carp"].sum()),
            "exc_control": int(port["exc_control"].sum()),
            "drops": {name: int(drops[i]) for i, name in enumerate(r.drop_names()) if drops[i]},
            "flows": {k: int(ws[f"flow_{k}"].sum()) for k in ("lookups", "hits", "inserts", "evictions",
                                                               "rehashed")},
            "classes": {k: int(ws[f"cls_{k}"].sum()) for k in ("tcp", "udp", "icmp", "fragment", "icmp_error",
                                                                 "ipsec", "other", "ipv6")},
            "flow_table": r.flow_tables(),
            "ports": [{"name": ffi.string(r.hdr.ports[i].name).decode(),
                       "mac": ":".join(f"{b:02x}" for b in bytes(r.hdr.ports[i].mac))}
                      for i in range(r.hdr.nb_ports)],
            "clusters": {},
        }
        cs = r.cluster_stats()
        for c in self.cfg.clusters:
            i = self.slots[c.name]
            cfg_slot = r.config().clusters[i]
            edges = {}
            for e in range(lib.PYDP_MAX_EDGES):
                if cfg_slot.edges[e].state != lib.PYDP_EDGE_EMPTY:
                    name = ffi.string(cfg_slot.edges[e].name).decode()
                    edges[name] = {"packets": int(cs[:, i]["edges"]["packets"][:, e].sum()),
                                   "bytes": int(cs[:, i]["edges"]["bytes"][:, e].sum()),
                                   "new_flows": int(cs[:, i]["edges"]["new_flows"][:, e].sum())}
            out["clusters"][c.name] = {"packets": int(cs[:, i]["packets"].sum()),
                                       "bytes": int(cs[:, i]["bytes"].sum()), "edges": edges,
                                       "drop_not_active": int(cs[:, i]["drop_not_active"].sum()),
                                       "drop_disabled": int(cs[:, i]["drop_disabled"].sum()),
                                       "drop_no_edge": int(cs[:, i]["drop_no_edge"].sum())}
        return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pydp-dataplane", description=__doc__.splitlines()[0], epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_option(ap)
    ap.add_argument("--config", required=True, metavar="FILE", help="appliance config (TOML, see docs/config.md)")
    ap.add_argument("--shm", metavar="PATH", help="shared-memory region (default: dataplane.shm_path)")
    ap.add_argument("--managed", action="store_true",
                    help="run for pydp-control: take clusters and ownership from it only (the file's clusters are "
                         "ignored); SIGHUP asks it to re-apply its store")
    ap.add_argument("--own-all", action="store_true",
                    help="own every cluster IP from the start (no CARP; labs and tests)")
    ap.add_argument("--inactive", action="append", default=[], metavar="CLUSTER",
                    help="with --own-all or --pcap-in: do not own this cluster (repeatable)")
    ap.add_argument("--busy-poll", action="store_true", help="workers never sleep (benchmarks)")
    ap.add_argument("--pcap-in", metavar="IN.pcap", help="run this capture through the fast path and exit")
    ap.add_argument("--pcap-out", metavar="OUT.pcap", help="with --pcap-in: what the fast path sends")
    ap.add_argument("--pcap-exception", metavar="FILE.pcap", help="with --pcap-in: what went to the kernel")
    ap.add_argument("--stats-json", metavar="FILE", help="with --pcap-in: write the counter summary here")
    add_log_options(ap)
    return ap


def _parse_args(argv):
    ap = build_parser()
    args = ap.parse_args(argv)
    if (args.pcap_out or args.pcap_exception or args.stats_json) and not args.pcap_in:
        ap.error("--pcap-out, --pcap-exception and --stats-json go with --pcap-in")
    if args.pcap_in and not args.pcap_out:
        ap.error("--pcap-in needs --pcap-out")
    if args.managed and (args.own_all or args.inactive or args.pcap_in):
        ap.error("--managed takes clusters and ownership from pydp-control: not with --own-all, --inactive or "
                 "--pcap-in")
    if args.pcap_in and not os.path.isfile(args.pcap_in):
        ap.error(f"--pcap-in {args.pcap_in}: no such file")
    return args


def main(argv=None) -> int:
    args = _parse_args(argv)
    setup_logging(args.log_format, getattr(logging, args.log_level.upper()), program="pydp-dataplane")
    try:
        cfg = pconfig.load(args.config)
    except pconfig.ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    pcap = None
    if args.pcap_in:
        pcap = {"in": os.path.abspath(args.pcap_in), "out": os.path.abspath(args.pcap_out),
                "exception": os.path.abspath(args.pcap_exception) if args.pcap_exception else None}
    shm = args.shm
    if pcap is not None and shm is None:
        shm = f"/dev/shm/pydp-pcap-{os.getpid()}"
    dpl = Dataplane(cfg, shm_path=shm, pcap=pcap, busy_poll=args.busy_poll or None, managed=args.managed)
    try:
        unknown = set(args.inactive) - {c.name for c in cfg.clusters}
        if unknown:
            raise LaunchError(f"--inactive: no cluster named {', '.join(sorted(unknown))}")
        dpl.start()
        dpl.apply(own_all=args.own_all or pcap is not None, inactive=tuple(args.inactive))
    except (LaunchError, ApplyError, ShmError) as exc:
        print(f"pydp-dataplane: {exc}", file=sys.stderr)
        dpl.stop()
        return 1
    if pcap is not None:
        lib.pydp_dp_run_pcap(8)
        summary = dpl.summary()
        dpl.stop()
        text = json.dumps(summary, indent=2, sort_keys=True)
        print(text)
        if args.stats_json:
            with open(args.stats_json, "w") as f:
                f.write(text + "\n")
        return 0

    stop = {"now": False, "reload": False}

    def on_signal(signum, _frame):
        if signum == signal.SIGHUP:
            stop["reload"] = True
        else:
            stop["now"] = True

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    if lib.pydp_dp_launch() != 0:
        print(f"pydp-dataplane: {ffi.string(lib.pydp_last_error()).decode()}", file=sys.stderr)
        dpl.stop()
        return 1
    event("dataplane_started", pid=os.getpid(), ports=[p.name for p in cfg.ports],
          workers=len(cfg.dataplane.worker_lcores), shm=dpl.shm_path, managed=dpl.managed)
    # systemd (Type=notify): ready now; the watchdog is fed while every worker keeps polling (pydp/service.py)
    service.notify("READY=1", f"STATUS=forwarding on {', '.join(p.name for p in cfg.ports)}")
    watchdog = service.Watchdog(service.WorkerProgress(dpl.region))
    try:
        while not stop["now"]:
            lib.pydp_dp_poll()
            watchdog.tick()
            if stop["reload"]:
                stop["reload"] = False
                if dpl.managed:
                    # the store is the configuration of record: the file's clusters are never published here
                    n = dpl.request_reload()
                    # the file's clusters are not read in managed mode
                    event("reload_requested", request=n)
                    continue
                try:
                    dpl.apply(pconfig.load(args.config), own_all=args.own_all, inactive=tuple(args.inactive))
                except (pconfig.ConfigError, ApplyError, ShmError) as exc:
                    event("reload_refused", logging.ERROR, error=str(exc))    # the running config stays
            time.sleep(0.1)
    finally:
        event("dataplane_stopping")
        service.notify("STOPPING=1")
        dpl.stop()
        event("dataplane_stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
