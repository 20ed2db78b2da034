"""pydp-lab: the whole pydp system on one Linux machine, in network namespaces (docs/lab.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from control.lab import topology as T
from pydp import add_version_option

EPILOG = """examples:
  pydp-lab demo                          # build the lab, run the story, print the report, remove the lab
  pydp-lab demo --json report.json --edges 4 --clients 64
  pydp-lab up                            # build it and leave it running
  pydp-lab demo --scale-out 3            # 3 appliances behind a BGP/ECMP router (BIRD 2, BFD), flow sync among them
  pydp-lab up --scale-out 3              # the scale-out lab, left running
  pydp-lab status                        # namespaces, processes, CARP state and edge health
  ip netns exec pydplab-lbA pydpctl --socket /run/pydp-lab/pydplab/lbA/ctl-*.sock status
  pydp-lab chaos --rounds 50 --seed 7 --json chaos.json   # faults under traffic, invariants checked each round
  pydp-lab chaos --rounds 30 --seed 7 --scale-out 3 --json chaos.json   # the same on the scale-out (BGP) lab
  pydp-lab down                          # remove every trace (also after a crash)
"""


def cmd_up(args) -> int:
    from control.lab.lab import Lab

    lab = Lab(T.Topology(args.name, args.edges, args.clients, args.scale_out))
    lab.up(log=lambda m: print(f"[pydp-lab] {m}"))
    print(f"[pydp-lab] up: lab {args.name!r}; `pydp-lab status` shows it, `pydp-lab down` removes it")
    web = lab.state.get("web", {})
    pages = ", ".join(f"{web.get(s.name)} ({'appliance ' if i == 0 else ''}{s.name})"
                      for i, s in enumerate(lab.topo.appliance_specs))
    print(f"[pydp-lab] admin page: {pages}; sign in as {web.get('user')} / {web.get('password')}")
    return 0


def cmd_down(args) -> int:
    from control.lab.lab import LabError, require_root, teardown

    require_root()
    removed = teardown(args.name)
    if args.json:
        print(json.dumps(removed, indent=2))
    if not removed["namespaces"] and not removed["run_dir"] and not removed["files"] and not removed["dpdk_dirs"]:
        raise LabError(f"nothing to take down: no lab {args.name!r} is up")
    if not args.json:
        print(f"[pydp-lab] removed {len(removed['namespaces'])} namespaces, {len(removed['processes'])} processes, "
              f"{len(removed['files']) + len(removed['dpdk_dirs'])} shared-memory files and DPDK directories, "
              f"{removed['run_dir'] or 'no run dir'}")
    return 0


def cmd_status(args) -> int:
    from control.lab.lab import status

    st = status(args.name)
    if args.json:
        print(json.dumps(st, indent=2))
        return 0 if st["up"] else 3
    if not st["up"]:
        print(f"lab {args.name!r} is not up")
        return 3
    print(f"lab {args.name!r}: {'ready' if st['ready'] else 'not ready'}, run dir {st['run_dir']}")
    for ns, procs in st["namespaces"].items():
        names = ", ".join(f"{program(p['cmd'])} [{p['pid']}]" for p in procs)
        print(f"  {ns:<20} {names or '-'}")
    for name, a in st["appliances"].items():
        if not a["running"]:
            print(f"  appliance {name}: pydp-control not answering ({a['error']})")
            continue
        for cname, c in a["clusters"].items():
            edges = " ".join(f"{e}:{h}" for e, h in c["edges"].items())
            if c.get("failover") == "bgp":
                role = {True: "announced", False: "withdrawn"}.get(c.get("announced"), "bgp ?")
            else:
                role = c.get("carp") or "-"
            print(f"  appliance {name} cluster {cname:<6} {role:<9} {edges}")
        for s in a.get("bgp_sessions", []):
            print(f"  appliance {name} BGP peer {s['peer']}: {s['state']}, BFD {s.get('bfd')}")
    r = st.get("router")
    if r:
        for peer, s in r["sessions"].items():
            print(f"  router {peer}: {s.get('state')} {s.get('bgp_state', '')}, BFD {s.get('bfd', '-')}")
        for vip, hops in r["route"].items():
            print(f"  router route {vip}: ECMP via {', '.join(hops) or 'nothing'}")
    return 0


def program(cmd: str) -> str:
    """What a process is, for people: the module of `python -m MODULE`, else the program's name."""
    argv = cmd.split()
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1]
    return argv[0].rsplit("/", 1)[-1].rstrip(":") if argv else "?"


def cmd_demo(args) -> int:
    from control.lab import demo

    topo = T.Topology(args.name, args.edges, args.clients, args.scale_out)
    res = demo.run(topo, Path(args.out), Path(args.json) if args.json else None, args.conns)
    if args.scale_out:
        return 0 if (res.get("lb_failure") or {}).get("reroute_s") is not None else 1
    return 0 if res.get("takeover_s") is not None else 1


def cmd_chaos(args) -> int:
    from control.lab import chaos

    kinds = chaos.parse_kinds(args.kinds, args.scale_out)     # checked before building anything
    if args.rounds < 1:
        raise ValueError(f"--rounds {args.rounds}: at least 1")
    topo = T.Topology(args.name, args.edges, args.clients, args.scale_out)     # refuses a bad --scale-out
    res = chaos.run(topo, args.rounds, args.seed,
                    Path(args.json) if args.json else None, conns=args.conns, kinds=kinds,
                    rss_limit_kib=args.rss_limit_kib)
    c = res["connections"]
    print(f"[pydp-lab] chaos: seed {res['seed']}, {res['rounds']} rounds, {len(res['violations'])} violations; "
          f"connections opened {c['opened']}, broken as expected {c['broken_expected']}, unexpectedly "
          f"{c['broken_unexpected']}; RSS growth KiB {res['rss_growth_kib']}; fd growth {res['fd_growth']}; "
          f"{res['run_s']} s" + (f"; JSON: {args.json}" if args.json else ""))
    for v in res["violations"]:
        print(f"  round {v['round']} {v['fault']}: {v['invariant']}: {json.dumps(v['evidence'])[:400]}")
    return 1 if res["violations"] else 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pydp-lab", description=__doc__ + " Needs root.", epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_option(ap)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name, func, help):
        p = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".", epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--name", default="pydplab", help="lab name: prefix of its namespaces (default pydplab)")
        p.set_defaults(func=func)
        return p

    for name, func, help in (("up", cmd_up, "build the lab and leave it running"),
                             ("demo", cmd_demo, "build the lab, run the demo story, report, remove the lab")):
        p = add(name, func, help)
        p.add_argument("--edges", type=int, default=3, help="service edges, 2..15 (default 3)")
        p.add_argument("--clients", type=int, default=32, help="client source addresses, 1..250 (default 32)")
        p.add_argument("--scale-out", type=int, default=0, metavar="N",
                       help="the scale-out lab: N appliances (2..4) announcing over BGP to an ECMP router, no CARP")
    p = sub.choices["demo"]
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON here (default OUT/report.json)")
    p.add_argument("--out", metavar="DIR", default="pydp-lab-demo",
                   help="report, plot (edge-share.png) and captures (default ./pydp-lab-demo)")
    p.add_argument("--conns", type=int, default=200, help="long-lived client connections (default 200)")
    p = add("chaos", cmd_chaos, "build the lab, inject seeded faults under traffic, check invariants, remove it")
    p.add_argument("--rounds", type=int, default=20, help="fault rounds (default 20)")
    p.add_argument("--seed", type=int, default=1, help="the schedule's seed: the same seed replays the same faults "
                                                        "(default 1)")
    p.add_argument("--kinds", metavar="K1,K2", help="only these fault kinds (default all); see docs/lab.md")
    p.add_argument("--scale-out", type=int, default=0, metavar="K",
                   help="the scale-out lab with K appliances (2..4) behind a BGP/ECMP router: its own fault kinds "
                        "(appliance_kill, router_restart, bgp_session_reset, appliance_drain, ...) and invariants")
    p.add_argument("--json", metavar="FILE", help="write the report (JSON) here")
    p.add_argument("--edges", type=int, default=3, help="service edges, 2..15 (default 3)")
    p.add_argument("--clients", type=int, default=32, help="client source addresses, 1..250 (default 32)")
    p.add_argument("--conns", type=int, default=100, help="long-lived client connections (default 100)")
    p.add_argument("--rss-limit-kib", type=int, default=5120, metavar="KIB",
                   help="largest RSS growth of a process that is not a violation (default 5120: 5 MiB)")
    add("down", cmd_down, "remove every trace of the lab").add_argument("--json", action="store_true")
    add("status", cmd_status, "show what runs").add_argument("--json", action="store_true")
    return ap


def main(argv=None) -> int:
    from control.lab.lab import LabError

    args = build_parser().parse_args(argv)
    try:
        if args.command != "status":
            from control.lab.lab import require_root

            require_root()
        return args.func(args)
    except (LabError, ValueError) as e:
        print(f"pydp-lab: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:                   # `pydp-lab status | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("pydp-lab: interrupted (the lab was removed)" if args.command in ("demo", "chaos")
              else "pydp-lab: interrupted",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
