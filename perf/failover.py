#!/usr/bin/env python3
"""Failover benchmark: two pydp appliances with CARP; SIGKILL the master N times and time the takeover.

Topology: control/lab/failover.py (two appliances on one bridge, a client sending UDP datagrams to the cluster IP
through its kernel, a sniffer behind the edges recording which appliance forwarded each datagram). Cluster
"web": advbase 1 s, A advskew 0 (master-down 3.0 s), B advskew 100 (master-down 3.39 s).

Each round: wait a random 0..1.5 s (so the kill falls anywhere in the advertisement cycle), SIGKILL the master's
data plane and daemon together, then measure

* kill -> the peer's transition to master (its pydp-control JSON log, millisecond timestamps);
* kill -> the first datagram that reaches an edge through the peer (the client follows the gratuitous ARP);

then restart the killed appliance. Without --preempt the restarted one stays backup, so the next round kills the
other appliance (both directions are measured, half the rounds each); with --preempt it takes the cluster back
and every round kills A.

Every namespace and process is removed at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from control.lab.failover import APPLIANCES, FailoverLab, Traffic, interval

EPILOG = """examples:
  perf/failover.py                                  # 20 failovers, both directions, table on stdout
  perf/failover.py -n 50 --json perf/results/failover.json
  perf/failover.py --preempt                        # always kill A; B takes over, A takes back on restart

Needs root, hugepages, and the pydp package installed (as the namespace tests do). See docs/carp.md.
"""


def master_down(name: str) -> float:
    return 3 * 1 + APPLIANCES[name][2] / 256


def summarize(xs: list[float]) -> dict:
    if not xs:
        return {}
    s = sorted(xs)
    return {"n": len(s), "median": round(statistics.median(s), 3), "max": round(s[-1], 3), "min": round(s[0], 3),
            "mean": round(statistics.fmean(s), 3)}


def run(args) -> dict:
    rounds = []
    with tempfile.TemporaryDirectory(prefix="pydp-failover-") as tmp, FailoverLab(Path(tmp), preempt=args.preempt) as lab:
        lab.a.start()
        lab.b.start()
        lab.a.wait_state("master", 15)
        lab.b.wait_state("backup", 5)
        with Traffic(lab, pps=args.pps, max_seconds=3600) as traffic:
            time.sleep(1.0)
            for i in range(args.n):
                master = next((x for x in (lab.a, lab.b) if x.state() == "master"), None)
                if master is None:
                    raise RuntimeError(f"round {i + 1}: no master")
                peer = lab.b if master is lab.a else lab.a
                if peer.state() != "backup":
                    raise RuntimeError(f"round {i + 1}: {peer.name} is {peer.state()}, not backup")
                time.sleep(random.uniform(0, 1.5))
                t_kill = master.kill()
                deadline = time.monotonic() + 15
                t_master = None
                while t_master is None and time.monotonic() < deadline:
                    t_master = peer.first_master_after(t_kill)
                    time.sleep(0.02)
                if t_master is None:
                    raise RuntimeError(f"round {i + 1}: {peer.name} did not take over:\n{peer.log_tail()}")
                t_first = traffic.wait_via(peer.mac, t_kill, 15)
                row = {"round": i + 1, "killed": master.name, "new_master": peer.name,
                       "takeover_s": round(t_master - t_kill, 3), "first_datagram_s": round(t_first - t_kill, 3),
                       "bound_s": round(master_down(peer.name) + interval(APPLIANCES[peer.name][2]), 3)}
                rounds.append(row)
                print(f"  {row['round']:3d}  kill {row['killed']}  ->  {row['new_master']} master after "
                      f"{row['takeover_s']:.3f} s, first datagram through it after {row['first_datagram_s']:.3f} s",
                      flush=True)
                master.restart()
                master.wait_state("master" if args.preempt and master is lab.a else "backup", 15)
                if args.preempt and master is lab.a:
                    peer.wait_state("backup", 5)
                time.sleep(0.5)
    take = [r["takeover_s"] for r in rounds]
    first = [r["first_datagram_s"] for r in rounds]
    out = {
        "what": "SIGKILL of the master's data plane and daemon -> the peer takes the cluster IP",
        "settings": {"advbase": 1, "advskew": {k: v[2] for k, v in APPLIANCES.items()},
                     "master_down_s": {k: master_down(k) for k in APPLIANCES}, "preempt": args.preempt,
                     "pps": args.pps},
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        "takeover_s": summarize(take),
        "first_datagram_s": summarize(first),
        "by_new_master": {name: {"takeover_s": summarize([r["takeover_s"] for r in rounds if r["new_master"] == name]),
                                 "first_datagram_s": summarize([r["first_datagram_s"] for r in rounds
                                                                if r["new_master"] == name])}
                          for name in APPLIANCES if any(r["new_master"] == name for r in rounds)},
        "rounds": rounds,
    }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=20, help="failovers (default 20)")
    ap.add_argument("--pps", type=int, default=1000, help="client datagrams per second (default 1000)")
    ap.add_argument("--preempt", action="store_true", help="preempt on: every round kills A (see above)")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("perf/failover.py: needs root (network namespaces, DPDK)", file=sys.stderr)
        return 2
    print(f"{args.n} failovers, advbase 1 s, A advskew 0, B advskew 100, preempt {'on' if args.preempt else 'off'}")
    res = run(args)
    print()
    for key, what in (("takeover_s", "kill -> peer master (log)"), ("first_datagram_s", "kill -> first datagram")):
        s = res[key]
        print(f"{what:<28} median {s['median']:.3f} s  max {s['max']:.3f} s  min {s['min']:.3f} s  (n={s['n']})")
        for name, by in res["by_new_master"].items():
            b = by[key]
            print(f"  {name} takes over{'':<14} median {b['median']:.3f} s  max {b['max']:.3f} s  (n={b['n']}, "
                  f"master-down {res['settings']['master_down_s'][name]:.2f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
        print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
