"""pydpctl: manage the clusters and service edges of a pydp appliance.

    pydpctl cluster list [--sort COLUMN] [--desc] [--search TEXT] [--json]
    pydpctl cluster add web --cluster-ip 198.51.100.10 --edge e1=198.51.100.21 --edge e2=198.51.100.22
    pydpctl edge drain web e1
    pydpctl export appliance.toml

Changes go to the store file given by --db (or PYDP_DB) directly; without one, to the running pydp-control
daemon (which applies them live) when its socket answers, else to the default store file. docs/cli.md is the
reference. Exit codes: 0 success, 1 the change was refused or failed (nothing changed), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Sequence

from control import ops
from control.rpc import DEFAULT_SOCKET
from control.store import DEFAULT_PATH, StoreError
from control.tables import format_fields, format_table
from pydp import add_version_option, config

__all__ = ["main", "build_parser", "format_table", "parse_edge", "SORT_COLUMNS"]

PROG = "pydpctl"
NOT_FOR_PRODUCTION = "standalone (not for production)"


class UsageError(Exception):
    """Bad command-line usage: exit code 2."""


class CliError(Exception):
    """A command failed outside the store (a file that cannot be read or written): exit code 1."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: 'pydpctl: error: cluster add: ... (see 'pydpctl cluster add --help')'."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        where = self.prog[len(PROG):].strip()
        raise UsageError((f"{where}: " if where else "") + f"{message} (see '{self.prog} --help')")


# ---- output helpers ----

def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def _yes(v: bool) -> str:
    return "yes" if v else "no"


_status = ops.status_text


def _mode(c: dict) -> str:
    return NOT_FOR_PRODUCTION if c["mode"] == "standalone" else c["mode"]


def _edges_cell(c: dict) -> str:
    return ", ".join(e["name"] + ("" if e["state"] == "active" else f" ({e['state']})") for e in c["edge"])


def _mac(e: dict) -> str:
    return e["mac"] or "auto"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _summary(c: dict) -> str:
    parts = [f"cluster IP {c['cluster_ip']}", _plural(len(c["edge"]), "service edge")]
    if c["mode"] == "standalone":
        parts.append("standalone (not for production: one edge, no failover)")
    elif c.get("failover") == "bgp":
        parts.append("failover bgp (active-active, announced over BGP)")
    else:
        parts.append(f"CARP vhid {c['carp']['vhid']}")
    if not c["enabled"]:
        parts.append("disabled")
    return ", ".join(parts)


# ---- sorting and searching (cluster list): shared with the HTTP API (control.ops) ----

SORT_COLUMNS = ops.SORT_COLUMNS
sort_clusters = ops.sort_clusters
search_clusters = ops.search_clusters
_list_json = ops.list_row


def _sort_column(text: str) -> str:
    try:
        return ops.sort_column(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# ---- parsing option values ----

def parse_edge(spec: str) -> dict:
    """NAME=IP[@MAC][,weight=N][,state=STATE] -> an edge dict (values are validated by the store)."""
    usage = f"{spec!r}: expected NAME=IP[@MAC][,weight=N][,state=STATE]"
    head, *options = spec.split(",")
    name, sep, address = head.partition("=")
    if not sep or not name or not address:
        raise argparse.ArgumentTypeError(usage)
    ip, at, mac = address.partition("@")
    edge: dict[str, Any] = {"name": name, "ip": ip}
    if at:
        edge["mac"] = "" if mac.lower() == "auto" else mac
    for opt in options:
        key, sep, value = opt.partition("=")
        if key == "weight" and sep:
            try:
                edge["weight"] = int(value)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{spec!r}: weight must be an integer, got {value!r}") from None
        elif key == "state" and sep:
            edge["state"] = value
        else:
            raise argparse.ArgumentTypeError(f"{usage} (unknown option {opt!r})")
    return edge


def _read_secret(data: bytes, where: str) -> str:
    if data.endswith(b"\n"):
        data = data[:-1]
        if data.endswith(b"\r"):
            data = data[:-1]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"{where}: the passphrase is not valid UTF-8") from None


def _passphrase(args: argparse.Namespace) -> str | None:
    """The passphrase given by --passphrase-file or --passphrase-stdin (never on the command line: ps shows it)."""
    if getattr(args, "passphrase_file", None):
        try:
            with open(args.passphrase_file, "rb") as f:
                data = f.read(4096)
        except OSError as e:
            raise CliError(f"--passphrase-file: cannot read {args.passphrase_file}: {e.strerror or e}") from None
        return _read_secret(data, f"--passphrase-file {args.passphrase_file}")
    if getattr(args, "passphrase_stdin", False):
        return _read_secret(sys.stdin.buffer.readline(4096), "--passphrase-stdin")
    return None


def _cluster_settings(args: argparse.Namespace) -> dict:
    """The cluster settings given on the command line (only those: an edit changes nothing else)."""
    out: dict[str, Any] = {}
    for opt, key in (("cluster_ip", "cluster_ip"), ("mode", "mode"), ("failover", "failover"), ("dsr", "dsr"),
                     ("ipsec_local_termination", "ipsec_local_termination"), ("maglev_size", "maglev_size"),
                     ("enabled", "enabled"), ("drain_timeout", "drain_timeout")):
        value = getattr(args, opt, None)
        if value is not None:
            out[key] = value
    if getattr(args, "edge", None) is not None:
        out["edge"] = args.edge
    carp: dict[str, Any] = {}
    for opt, key in (("vhid", "vhid"), ("advbase", "advbase"), ("advskew", "advskew"), ("preempt", "preempt")):
        if getattr(args, opt, None) is not None:
            carp[key] = getattr(args, opt)
    secret = _passphrase(args)
    if secret is not None:
        carp.update(passphrase=secret, passphrase_file="")
    if getattr(args, "clear_passphrase", False):
        carp.update(passphrase="", passphrase_file="")
    if carp:
        out["carp"] = carp
    health: dict[str, Any] = {}
    for opt, key in (("health", "type"), ("health_port", "port"), ("health_path", "path"),
                     ("health_host", "host"), ("health_interval", "interval"), ("health_timeout", "timeout"),
                     ("health_rise", "rise"), ("health_fall", "fall")):
        if getattr(args, opt, None) is not None:
            health[key] = getattr(args, opt)
    if health:
        out["health"] = health
    return out


# ---- the backend ----

def _warn(text: str) -> None:
    print(f"{PROG}: warning: " + " ".join(text.split("\n")), file=sys.stderr)


def _backend(args: argparse.Namespace):
    from control import backend
    db = getattr(args, "db", None)
    sock = getattr(args, "socket", None)
    try:
        return backend.choose(db=db, socket=sock, on_warning=_warn)
    except backend.DaemonError:
        raise
    except StoreError as e:
        if not (db or os.environ.get("PYDP_DB")):
            raise StoreError(f"{e} (choose a store with --db PATH or PYDP_DB, or start pydp-control)") from None
        raise


def _run(args: argparse.Namespace, fn: Callable[[Any], int | None]) -> int | None:
    b = _backend(args)
    try:
        return fn(b)
    finally:
        b.close()


# ---- commands: clusters ----

def cmd_cluster_list(args: argparse.Namespace) -> int:
    clusters = _run(args, lambda b: b.list_clusters())
    if args.search:
        clusters = search_clusters(clusters, args.search)
    clusters = sort_clusters(clusters, args.sort, args.desc)
    if args.json:
        _print_json([_list_json(c) for c in clusters])
        return 0
    if not clusters:
        print(f"No cluster matches {args.search!r}." if args.search else "No clusters.")
        return 0
    print(format_table(
        ["Name", "Status", "Service Edges", "Cluster IP", "IPSec Local Termination", "Mode"],
        [[c["name"], _status(c), _edges_cell(c), c["cluster_ip"], _yes(c["ipsec_local_termination"]), _mode(c)]
         for c in clusters]))
    return 0


def _health_text(h: dict) -> str:
    t = h["type"]
    if t == "none":
        return "none (edges are always considered up)"
    if t == "icmp":
        what = "icmp echo"
    elif t == "tcp":
        what = f"tcp connect to port {h['port']}"
    else:
        what = f"{t} GET {h['path']} on port {h['port']}" + (f" (Host {h['host']})" if h["host"] else "")
        what += f", expect {h['expect_status']}" + (f" and {h['expect_body']!r}" if h["expect_body"] else "")
    return (f"{what}, every {h['interval']:g} s, timeout {h['timeout']:g} s, rise {h['rise']}, "
            f"fall {h['fall']}")


def _edge_rows(c: dict) -> list[list[Any]]:
    return [[e["name"], e["ip"], _mac(e), e["weight"], e["state"]] for e in c["edge"]]


EDGE_HEADERS = ["Name", "IP", "MAC", "Weight", "State"]


def _show_cluster(c: dict) -> str:
    carp = c["carp"]
    if c["mode"] == "standalone":
        mode = "standalone (not for production: one edge, no failover)"
        carp_text = "not used (standalone)"
    elif c.get("failover") == "bgp":
        mode = "cluster (production: active-active behind the router's ECMP, announced over BGP)"
        carp_text = "not used (failover bgp; see 'pydpctl bgp show')"
    else:
        mode = "cluster (production: CARP failover between the two load balancers)"
        carp_text = (f"vhid {carp['vhid']}, advbase {carp['advbase']} s, advskew {carp['advskew']}, "
                     f"preempt {'on' if carp['preempt'] else 'off'}, passphrase "
                     + ("from " + carp["passphrase_file"] if carp.get("passphrase_file")
                        else "set" if carp.get("passphrase_set") else "not set"))
    dsr = {"l2": "l2 (MAC rewrite: edges on the same L2 segment)",
           "ipip": "ipip (IP-in-IP encapsulation to the edges)"}.get(c["dsr"], c["dsr"])
    fields = [
        ("Cluster", c["name"]),
        ("Status", _status(c)),
        ("Mode", mode),
        ("Cluster IP", c["cluster_ip"]),
        ("IPSec local termination", _yes(c["ipsec_local_termination"])),
        ("DSR", dsr),
        ("Maglev table size", c.get("maglev_size")),
        ("Drain timeout", f"{c['drain_timeout']:g} s" if c.get("drain_timeout") else
         "none (a draining edge keeps its flows until they end)"),
        ("CARP", carp_text),
        ("Health check", _health_text(c["health"])),
    ]
    lines = [format_fields(fields)]
    lines += ["", f"Service edges: {len(c['edge'])}"]
    if c["edge"]:
        lines.append(format_table(EDGE_HEADERS, _edge_rows(c)))
    return "\n".join(lines)


def cmd_cluster_show(args: argparse.Namespace) -> int:
    c = _run(args, lambda b: b.get_cluster(args.name))
    if args.json:
        _print_json(c)
    else:
        print(_show_cluster(c))
    return 0


def cmd_cluster_add(args: argparse.Namespace) -> int:
    cluster = {"name": args.name, **_cluster_settings(args)}
    cluster.setdefault("edge", [])
    c = _run(args, lambda b: b.add_cluster(cluster=cluster))
    print(f"added cluster {c['name']!r}: {_summary(c)}")
    return 0


def cmd_cluster_edit(args: argparse.Namespace) -> int:
    changes = _cluster_settings(args)
    if args.new_name is not None:
        changes["name"] = args.new_name
    if not changes:
        raise UsageError(f"cluster edit: nothing to change: give at least one option (see '{PROG} cluster edit "
                         "--help')")
    c = _run(args, lambda b: b.edit_cluster(name=args.name, changes=changes))
    renamed = f" (renamed from {args.name!r})" if c["name"] != args.name else ""
    print(f"changed cluster {c['name']!r}{renamed}: {_summary(c)}")
    return 0


def cmd_cluster_delete(args: argparse.Namespace) -> int:
    _run(args, lambda b: b.delete_cluster(name=args.name))
    print(f"deleted cluster {args.name!r}")
    return 0


def cmd_cluster_duplicate(args: argparse.Namespace) -> int:
    c = _run(args, lambda b: b.duplicate_cluster(name=args.name, new_name=args.new_name,
                                                 cluster_ip=args.cluster_ip, vhid=args.vhid))
    print(f"duplicated cluster {args.name!r} as {c['name']!r}: {_summary(c)}")
    return 0


def cmd_cluster_enable(args: argparse.Namespace) -> int:
    enabled = args.command_name == "enable"
    _run(args, lambda b: b.set_cluster_enabled(name=args.name, enabled=enabled))
    print(f"cluster {args.name!r} {'enabled' if enabled else 'disabled'}")
    return 0


# ---- commands: edges ----

def cmd_edge_add(args: argparse.Namespace) -> int:
    edge = dict(args.edge)
    if args.weight is not None:
        edge["weight"] = args.weight
    c = _run(args, lambda b: b.add_edge(cluster=args.cluster, edge=edge))
    print(f"added edge {edge['name']!r} ({edge['ip']}) to cluster {c['name']!r}: "
          f"{_plural(len(c['edge']), 'service edge')}")
    return 0


def cmd_edge_remove(args: argparse.Namespace) -> int:
    c = _run(args, lambda b: b.remove_edge(cluster=args.cluster, edge=args.edge))
    print(f"removed edge {args.edge!r} from cluster {c['name']!r}: "
          f"{_plural(len(c['edge']), 'service edge')} left")
    return 0


_STATE_TEXT = {"active": "active: it gets new flows",
               "draining": "draining: it keeps its flows and gets no new ones",
               "disabled": "disabled: it gets no traffic (its flows move to the other edges)"}


def cmd_edge_state(args: argparse.Namespace) -> int:
    state = {"drain": "draining", "undrain": "active", "disable": "disabled", "enable": "active"}[args.command_name]
    _run(args, lambda b: b.set_edge_state(cluster=args.cluster, edge=args.edge, state=state))
    print(f"edge {args.edge!r} of cluster {args.cluster!r} is {_STATE_TEXT[state]}")
    return 0


def cmd_edge_edit(args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {}
    for key in ("ip", "weight", "state"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    if args.mac is not None:
        changes["mac"] = "" if args.mac.lower() == "auto" else args.mac
    if args.new_name is not None:
        changes["name"] = args.new_name
    if not changes:
        raise UsageError(f"edge edit: nothing to change: give at least one option (see '{PROG} edge edit --help')")
    _run(args, lambda b: b.edit_edge(cluster=args.cluster, edge=args.edge, changes=changes))
    name = changes.get("name", args.edge)
    print(f"changed edge {name!r} of cluster {args.cluster!r}")
    return 0


def cmd_edge_show(args: argparse.Namespace) -> int:
    c, drains = _run(args, lambda b: (b.get_cluster(args.cluster), b.drain_times()))
    if args.edge is None:
        if args.json:
            _print_json(c["edge"])
        else:
            print(format_table(EDGE_HEADERS, _edge_rows(c)) if c["edge"] else "No edges.")
        return 0
    for e in c["edge"]:
        if e["name"] == args.edge:
            break
    else:
        raise StoreError(f"edge {args.edge!r} not found in cluster {args.cluster!r}")
    drain = None
    if e["state"] == "draining":
        from control import cli_observe
        since = next((d["since"] for d in drains if (d["cluster"], d["edge"]) == (c["name"], e["name"])), None)
        drain = cli_observe.drain_info(args, c, e["name"], since)
    if args.json:
        _print_json(dict(e, drain=drain) if drain is not None else e)
    else:
        fields = [("Edge", e["name"]), ("Cluster", c["name"]), ("IP", e["ip"]),
                  ("MAC", e["mac"] or "auto (resolved from the neighbour table by pydp-control)"),
                  ("Weight", e["weight"]), ("State", e["state"])]
        if drain is not None:
            from control import cli_observe
            fields += [("Draining since", cli_observe._since_text(drain["since"])),
                       ("Drain timeout", f"{drain['timeout_s']:g} s" if drain["timeout_s"] else "none"),
                       ("Time left", cli_observe._left_text(drain)),
                       ("Flows left", "unknown (no data plane)" if drain["remaining_flows"] is None
                        else drain["remaining_flows"]),
                       ("Drain", cli_observe._drain_state(drain))]
        print(format_fields(fields))
    return 0


# ---- commands: history ----

def _history_change(h: dict) -> str:
    a = dict(h["args"])
    target = []
    for k in ("name", "cluster", "edge"):
        v = a.get(k)
        if isinstance(v, str):
            target.append(v)
            a.pop(k)
        elif isinstance(v, dict) and isinstance(v.get("name"), str):
            target.append(v["name"])
    rest = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False, separators=(',', ':'))}" for k, v in a.items()
                     if not isinstance(v, dict) or k == "changes")
    return " ".join([h["op"], "/".join(target)] + ([rest] if rest else [])).strip()


def cmd_history(args: argparse.Namespace) -> int:
    import time as _time
    rows = _run(args, lambda b: b.history(limit=args.limit, cluster=args.cluster))
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("No changes recorded.")
        return 0
    print(format_table(["Time", "Revision", "Via", "User", "Change"],
                       [[_time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(h["time"])), h["revision"], h["via"],
                         h["user"], _history_change(h)] for h in rows]))
    return 0


# ---- commands: http-user (who may use the admin page) ----

def _users_file(args: argparse.Namespace) -> str:
    from control.http import auth
    return args.file or os.environ.get("PYDP_HTTP_USERS") or auth.DEFAULT_USERS_FILE


def cmd_http_user(args: argparse.Namespace) -> int:
    from control.http import auth
    path = _users_file(args)
    try:
        if args.command_name == "list":
            entries = auth.read_entries(path)
            if not entries:
                print(f"No users in {path}.")
            else:
                print(format_table(["Name", "Role", "Signs in with"],
                                   [[e.name, e.role, "token" if e.secret.startswith("token$") else "password"]
                                    for e in entries]))
            return 0
        if args.command_name == "remove":
            if not auth.remove_entry(path, args.name):
                raise CliError(f"{path}: no user {args.name!r}")
            print(f"removed {args.name!r} from {path} (signed-in sessions end at the next request)")
            return 0
        role = "read-only" if args.read_only else "admin"
        if args.command_name == "token":
            token, secret = auth.new_token()
            auth.set_entry(path, args.name, role, secret)
            print(token)
            print(f"token {args.name!r} ({role}) added to {path}; send it as 'Authorization: Bearer TOKEN' (it is "
                  "shown only now)", file=sys.stderr)
            return 0
        if args.password_file:
            try:
                with open(args.password_file, "rb") as f:
                    password = _read_secret(f.read(4096), f"--password-file {args.password_file}")
            except OSError as e:
                raise CliError(f"--password-file: cannot read {args.password_file}: {e.strerror or e}") from None
        else:
            password = _read_secret(sys.stdin.buffer.readline(4096), "standard input")
        if len(password) < 8:
            raise CliError("the password must have at least 8 characters")
        auth.set_entry(path, args.name, role, auth.hash_password(password))
        print(f"user {args.name!r} ({role}) set in {path}")
        return 0
    except auth.AuthError as e:
        raise CliError(str(e)) from None
    except OSError as e:
        raise CliError(f"{path}: {e.strerror or e}") from None


# ---- commands: export / import ----

def cmd_export(args: argparse.Namespace) -> int:
    text = _run(args, lambda b: b.export_text(include_secrets=args.include_secrets))
    if args.file == "-":
        sys.stdout.write(text)
        return 0
    if os.path.lexists(args.file) and not args.force:
        raise CliError(f"{args.file} exists; use --force to replace it")
    try:
        config.write_atomic(args.file, text, private=args.include_secrets)
    except OSError as e:
        raise CliError(f"cannot write {args.file}: {e.strerror or e}") from None
    n = text.count("\n[[cluster]]\n")
    print(f"exported {_plural(n, 'cluster')} to {args.file}"
          + (" (with CARP passphrases: keep the file private)" if args.include_secrets else ""))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    source = "<stdin>" if args.file == "-" else args.file
    try:
        if args.file == "-":
            raw = sys.stdin.buffer.read()
        else:
            with open(args.file, "rb") as f:
                raw = f.read()
    except OSError as e:
        raise CliError(f"cannot read {args.file}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CliError(f"{source}: the file is not valid UTF-8 (byte {e.start})") from None
    if args.check:
        try:
            cfg = config.loads(text, source, require_ports=False)
        except config.ConfigError as e:
            raise StoreError("; ".join(f"{source}: {x}" for x in e.errors)) from None
        print(f"{source}: valid ({_plural(len(cfg.clusters), 'cluster')}); nothing was changed")
        return 0
    keep = not args.no_keep_passphrases
    result = _run(args, lambda b: b.import_text(text=text, source=source, keep_passphrases=keep))
    extra = ""
    if result.get("passphrases_kept"):
        extra = f" (kept the stored CARP passphrase of {_plural(result['passphrases_kept'], 'cluster')})"
    print(f"imported {_plural(result['clusters'], 'cluster')} from {source}{extra}")
    return 0


# ---- commands: [bgp] ----

def parse_peer(spec: str) -> dict:
    """ADDRESS=AS[,port=N][,source=IP] -> a [[bgp.peer]] dict (checked by the store)."""
    head, *opts = spec.split(",")
    address, sep, asn = head.partition("=")
    if not sep or not address or not asn.isdigit():
        raise argparse.ArgumentTypeError(f"{spec!r}: expected ADDRESS=AS[,port=N][,source=IP], e.g. "
                                         "198.51.100.1=64500")
    peer: dict[str, Any] = {"address": address, "as": int(asn)}
    for opt in opts:
        k, sep, v = opt.partition("=")
        if k == "port" and sep and v.isdigit():
            peer["port"] = int(v)
        elif k == "source" and sep and v:
            peer["source"] = v
        else:
            raise argparse.ArgumentTypeError(f"{spec!r}: unknown peer option {opt!r} (port=N, source=IP)")
    return peer


def _bgp_settings(args: argparse.Namespace) -> dict:
    out: dict[str, Any] = {}
    for key in ("local_as", "router_id", "hold_time", "next_hop", "bfd", "bfd_interval_ms", "bfd_multiplier",
                "drain_timeout", "socket", "config_path"):
        v = getattr(args, "bgp_" + key, None)
        if v is not None:
            out[key] = v
    if args.community is not None:
        out["communities"] = [] if args.community == [""] else args.community
    if args.peer is not None:
        out["peer"] = args.peer
    return out


def _show_bgp(b: dict) -> str:
    if not b:
        return "no [bgp] section (no cluster can use failover bgp; 'pydpctl bgp set --help')"
    fields = [
        ("Engine", b["engine"]),
        ("Local AS", b["local_as"]),
        ("Router ID", b["router_id"]),
        ("Hold time", f"{b['hold_time']} s"),
        ("Next hop", b["next_hop"] or "self (the local address of each session)"),
        ("Communities", ", ".join(b["communities"]) or "none"),
        ("BFD", f"on, {b['bfd_interval_ms']} ms x {b['bfd_multiplier']}" if b["bfd"] else "off"),
        ("Drain timeout", f"{b['drain_timeout']:g} s"),
        ("Control socket", b["socket"]),
        ("Generated config", b["config_path"]),
    ]
    rows = [[p["address"], p["as"], p["port"], p["source"] or "auto", "set" if p.get("password_set") else "-"]
            for p in b["peer"]]
    return format_fields(fields) + "\n\n" + format_table(["PEER", "AS", "PORT", "SOURCE", "PASSWORD"], rows)


def cmd_bgp_show(args: argparse.Namespace) -> int:
    b = _run(args, lambda be: be.get_bgp())
    if args.json:
        _print_json(b)
    else:
        print(_show_bgp(b))
    return 0


def cmd_bgp_set(args: argparse.Namespace) -> int:
    changes = _bgp_settings(args)
    if not changes:
        raise UsageError(f"bgp set: nothing to change: give at least one option (see '{PROG} bgp set --help')")
    b = _run(args, lambda be: be.set_bgp(bgp=changes))
    print(f"[bgp] saved: AS {b['local_as']}, router ID {b['router_id']}, {_plural(len(b['peer']), 'peer')}")
    return 0


def cmd_bgp_remove(args: argparse.Namespace) -> int:
    _run(args, lambda be: be.remove_bgp())
    print("[bgp] removed")
    return 0


# ---- the parser ----

def _epilog(*examples: str, notes: str = "") -> str:
    text = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    return text + (f"\n\n{notes}" if notes else "")


def _common() -> Parser:
    p = Parser(add_help=False)
    g = p.add_argument_group("where the configuration is")
    g.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS,
                   help="the store file, used directly (default: $PYDP_DB; without it, the running daemon, else "
                        f"{DEFAULT_PATH})")
    g.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                   help=f"the pydp-control socket (default: $PYDP_SOCKET, else {DEFAULT_SOCKET})")
    return p


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


_CARP = config.CarpConfig()


def _cluster_options(p: argparse.ArgumentParser, edit: bool) -> None:
    g = p.add_argument_group("cluster settings" + (" (only those given change)" if edit else ""))
    g.add_argument("--cluster-ip", metavar="IP", required=not edit,
                   help="the address clients connect to (unicast IPv4 or IPv6, unique)")
    g.add_argument("--edge", metavar="NAME=IP[@MAC][,weight=N]", action="append", type=parse_edge,
                   help=("replace all the edges by these (repeat the option); " if edit else "a service edge "
                         f"(repeat: 2 to {config.MAX_EDGES} edges, or exactly 1 with --standalone); ")
                   + "without @MAC the MAC is resolved from the neighbour table")
    m = g.add_mutually_exclusive_group()
    m.add_argument("--standalone", dest="mode", action="store_const", const="standalone",
                   help="evaluation mode: exactly one edge, no failover; NOT for production")
    m.add_argument("--mode", choices=config.CLUSTER_MODES,
                   help=f"cluster (production: 2 to {config.MAX_EDGES} edges, CARP failover; the default) or "
                        "standalone")
    g.add_argument("--failover", choices=config.FAILOVER_MODES,
                   help="carp (active-passive pair, CARP elects the owner; the default) or bgp (active-active behind "
                        "the router's ECMP, announced over BGP: needs the [bgp] section, 'pydpctl bgp set')")
    g.add_argument("--ipsec-local-termination", action=argparse.BooleanOptionalAction, default=None,
                   help="IPsec terminates on the edges: a client's ESP, AH, IKE and NAT-T go to one edge")
    e = g.add_mutually_exclusive_group()
    e.add_argument("--disabled", dest="enabled", action="store_const", const=False,
                   help="the cluster drops its traffic until enabled")
    if edit:
        e.add_argument("--enabled", dest="enabled", action="store_const", const=True, help="enable the cluster")
    g.add_argument("--dsr", choices=config.DSR_MODES,
                   help="Direct Server Return: l2 (MAC rewrite, the default) or ipip (IP-in-IP encapsulation)")
    g.add_argument("--maglev-size", metavar="PRIME", type=int,
                   help=f"Maglev table size (a prime, {config.MAGLEV_MIN_SIZE}..{config.MAGLEV_MAX_SIZE})")
    g.add_argument("--drain-timeout", metavar="SECONDS", type=float,
                   help="how long a draining edge keeps its flows before they move to the other edges "
                        "(0: until they end; the default)")
    c = p.add_argument_group("CARP (ignored for standalone clusters)")
    c.add_argument("--vhid", metavar="N", type=int, help="virtual host id 1..255, unique (default: the lowest free one)"
                   if not edit else "virtual host id 1..255, unique")
    c.add_argument("--advbase", metavar="SECONDS", type=int, help="advertisement interval, seconds (1..255)")
    c.add_argument("--advskew", metavar="N", type=int, help="added to the interval in 1/256 s (0..254; lower wins)")
    s = c.add_mutually_exclusive_group()
    s.add_argument("--passphrase-file", metavar="FILE",
                   help=f"read the passphrase (at most {config.CARP_PASSPHRASE_MAX} bytes) from FILE; never give it on "
                        "the command line")
    s.add_argument("--passphrase-stdin", action="store_true", help="read the passphrase from standard input")
    if edit:
        s.add_argument("--clear-passphrase", action="store_true", help="remove the passphrase")
    c.add_argument("--preempt", action=argparse.BooleanOptionalAction, default=None,
                   help=f"take the master role back when coming up (default: {'on' if _CARP.preempt else 'off'})")
    d = config.HealthConfig()           # the defaults, from the one place they are written
    h = p.add_argument_group("health checks")
    h.add_argument("--health", choices=config.HEALTH_TYPES, help=f"check type (default: {d.type})")
    h.add_argument("--health-port", metavar="PORT", type=int,
                   help=f"port checked (default {d.port}, {config.HealthConfig(type='https').port} for https)")
    h.add_argument("--health-path", metavar="PATH", help=f"request path for http/https (default {d.path})")
    h.add_argument("--health-host", metavar="HOST", help="Host header for http/https")
    h.add_argument("--health-interval", metavar="SECONDS", type=float,
                   help=f"time between checks (default {d.interval:g})")
    h.add_argument("--health-timeout", metavar="SECONDS", type=float,
                   help=f"time allowed per check (default {d.timeout:g})")
    h.add_argument("--health-rise", metavar="N", type=int, help=f"successes to bring an edge up (default {d.rise})")
    h.add_argument("--health-fall", metavar="N", type=int, help=f"failures to take an edge down (default {d.fall})")


def build_parser() -> Parser:
    common = _common()
    top = Parser(
        prog=PROG,
        description="Manage the clusters and service edges of a pydp load balancer.",
        epilog=_epilog(
            "pydpctl cluster list",
            "pydpctl cluster add web --cluster-ip 198.51.100.10 --edge e1=198.51.100.21 --edge e2=198.51.100.22",
            "pydpctl edge drain web e1",
            "pydpctl --db /tmp/lab.db export -",
            notes="Where changes go: --db PATH (or PYDP_DB) edits that store file directly; otherwise the running\n"
                  f"pydp-control daemon (--socket, PYDP_SOCKET, {DEFAULT_SOCKET}) applies them live; with no\n"
                  f"daemon running, {DEFAULT_PATH} is edited directly.\n"
                  "Exit codes: 0 success, 1 refused or failed (nothing changed), 2 bad usage."))
    top.add_argument("--db", metavar="PATH", default=None,
                     help=f"the store file, used directly (default: $PYDP_DB; without it, the running daemon, "
                          f"else {DEFAULT_PATH})")
    top.add_argument("--socket", metavar="PATH", default=None,
                     help=f"the pydp-control socket (default: $PYDP_SOCKET, else {DEFAULT_SOCKET})")
    add_version_option(top)
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(parent: Any, name: str, func: Callable[[argparse.Namespace], int], help: str, examples: list[str],
            notes: str = "", description: str | None = None) -> Parser:
        p = parent.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".",
                              epilog=_epilog(*examples, notes=notes), parents=[common])
        p.set_defaults(func=func, command_name=name)
        return p

    # cluster
    cl = sub.add_parser("cluster", help="list, show, add, edit, delete, duplicate, enable, disable clusters",
                        description=f"Manage clusters: a cluster IP served by 2 to {config.MAX_EDGES} service edges.",
                        epilog=_epilog("pydpctl cluster list --sort cluster-ip --desc",
                                       "pydpctl cluster show web",
                                       "pydpctl cluster add --help"), parents=[common])
    cls = cl.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)

    p = add(cls, "list", cmd_cluster_list, "list the clusters",
            ["pydpctl cluster list", "pydpctl cluster list --sort service-edges --desc",
             "pydpctl cluster list --search 198.51.100.", "pydpctl cluster list --json"],
            notes="Columns: Name, Status, Service Edges, Cluster IP, IPSec Local Termination, Mode. Standalone\n"
                  "clusters are marked 'standalone (not for production)'.")
    p.add_argument("--sort", metavar="COLUMN", type=_sort_column, default="name",
                   help="sort by name (the default), status, service-edges, cluster-ip, ipsec-local-termination or "
                        "mode (case-insensitive)")
    p.add_argument("--desc", action="store_true", help="sort in descending order")
    p.add_argument("--search", metavar="TEXT",
                   help="only clusters whose name, cluster IP, or an edge's name or IP contains TEXT "
                        "(case-insensitive)")
    _json_flag(p)

    p = add(cls, "show", cmd_cluster_show, "show one cluster with its settings and edges",
            ["pydpctl cluster show web", "pydpctl cluster show web --json"])
    p.add_argument("name", metavar="NAME")
    _json_flag(p)

    p = add(cls, "add", cmd_cluster_add, "add a cluster",
            ["pydpctl cluster add web --cluster-ip 198.51.100.10 --edge e1=198.51.100.21 "
             "--edge e2=198.51.100.22@02:00:00:00:00:22,weight=2 --vhid 10",
             "pydpctl cluster add lab --cluster-ip 192.0.2.50 --edge only=192.0.2.51 --standalone",
             "pydpctl cluster add vpn --cluster-ip 2001:db8::10 --edge a=2001:db8::21 --edge b=2001:db8::22 "
             "--ipsec-local-termination --health none",
             "pydpctl cluster add db --cluster-ip 198.51.100.20 --edge a=198.51.100.31 --edge b=198.51.100.32 "
             "--passphrase-file /root/carp-db.key --advskew 100"],
            notes="Absent settings take the defaults of docs/config.md; without --vhid the cluster gets the lowest\n"
                  "free CARP vhid.")
    p.add_argument("name", metavar="NAME", help=f"1 to {config.NAME_MAX} of A-Z a-z 0-9 _ . -, unique")
    _cluster_options(p, edit=False)

    p = add(cls, "edit", cmd_cluster_edit, "change settings of a cluster (only the options given)",
            ["pydpctl cluster edit web --vhid 12 --advskew 100",
             "pydpctl cluster edit web --name www --cluster-ip 198.51.100.11",
             "pydpctl cluster edit web --health http --health-path /healthz",
             "pydpctl cluster edit web --no-ipsec-local-termination",
             "pydpctl cluster edit web --passphrase-stdin < /root/carp-web.key",
             "pydpctl cluster edit lab --mode cluster --edge a=192.0.2.51 --edge b=192.0.2.52"])
    p.add_argument("name", metavar="NAME")
    p.add_argument("--name", dest="new_name", metavar="NEW", help="rename the cluster")
    _cluster_options(p, edit=True)

    add(cls, "delete", cmd_cluster_delete, "delete a cluster and its edges",
        ["pydpctl cluster delete web"],
        notes="There is no confirmation prompt (for scripts): the cluster is gone at once. Keep an export\n"
              "('pydpctl export FILE') to restore it.").add_argument("name", metavar="NAME")

    p = add(cls, "duplicate", cmd_cluster_duplicate,
            "copy a cluster (settings and edges) under a new name and cluster IP",
            ["pydpctl cluster duplicate web web2 --cluster-ip 198.51.100.11",
             "pydpctl cluster duplicate web web2 --cluster-ip 198.51.100.11 --vhid 20"],
            notes="Without --vhid the copy gets the lowest free CARP vhid.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("new_name", metavar="NEW_NAME")
    p.add_argument("--cluster-ip", metavar="IP", required=True, help="the copy's cluster IP")
    p.add_argument("--vhid", metavar="N", type=int, help="the copy's CARP vhid (default: the lowest free one)")

    add(cls, "enable", cmd_cluster_enable, "enable a cluster (it serves its cluster IP)",
        ["pydpctl cluster enable web"]).add_argument("name", metavar="NAME")
    add(cls, "disable", cmd_cluster_enable, "disable a cluster (its traffic is dropped)",
        ["pydpctl cluster disable web"]).add_argument("name", metavar="NAME")

    # edge
    ed = sub.add_parser("edge", help="add, remove, drain, undrain, edit, show service edges",
                        description="Manage the service edges of a cluster.",
                        epilog=_epilog("pydpctl edge show web", "pydpctl edge drain web e1",
                                       "pydpctl edge add --help"), parents=[common])
    eds = ed.add_subparsers(dest="edge_command", metavar="ACTION", required=True)

    p = add(eds, "add", cmd_edge_add, "add a service edge to a cluster",
            ["pydpctl edge add web e3=198.51.100.23", "pydpctl edge add web e4=198.51.100.24@02:00:00:00:00:24 "
             "--weight 2"],
            notes="Without @MAC, pydp-control resolves the MAC from the kernel's neighbour table.")
    p.add_argument("cluster", metavar="CLUSTER")
    p.add_argument("edge", metavar="NAME=IP[@MAC]", type=parse_edge)
    p.add_argument("--weight", metavar="N", type=int, help="relative share of new flows, 1..65535 (default 1)")

    add(eds, "remove", cmd_edge_remove, "remove a service edge (its flows move to the other edges)",
        ["pydpctl edge remove web e3"],
        notes="No confirmation prompt. To take an edge out gently, drain it first.")
    for name, help, ex in (
            ("drain", "stop new flows to an edge; its existing flows stay", "pydpctl edge drain web e1"),
            ("undrain", "make an edge active again (new flows too)", "pydpctl edge undrain web e1"),
            ("disable", "stop all traffic to an edge (its flows move to the other edges)",
             "pydpctl edge disable web e1"),
            ("enable", "make a disabled edge active again", "pydpctl edge enable web e1")):
        add(eds, name, cmd_edge_state, help, [ex])
    for name in ("remove", "drain", "undrain", "disable", "enable"):
        p = eds.choices[name]
        p.add_argument("cluster", metavar="CLUSTER")
        p.add_argument("edge", metavar="EDGE")

    p = add(eds, "edit", cmd_edge_edit, "change settings of an edge (only the options given)",
            ["pydpctl edge edit web e1 --weight 3", "pydpctl edge edit web e1 --mac auto",
             "pydpctl edge edit web e1 --name edge1 --ip 198.51.100.31"])
    p.add_argument("cluster", metavar="CLUSTER")
    p.add_argument("edge", metavar="EDGE")
    p.add_argument("--name", dest="new_name", metavar="NEW", help="rename the edge")
    p.add_argument("--ip", help="the edge's own address")
    p.add_argument("--mac", help="its MAC (aa:bb:cc:dd:ee:ff), or 'auto' to resolve it from the neighbour table")
    p.add_argument("--weight", metavar="N", type=int, help="relative share of new flows, 1..65535")
    p.add_argument("--state", choices=("active", "draining", "disabled"), help="admin state")

    p = add(eds, "show", cmd_edge_show, "show the edges of a cluster, or one edge",
            ["pydpctl edge show web", "pydpctl edge show web e1 --json"])
    p.add_argument("cluster", metavar="CLUSTER")
    p.add_argument("edge", metavar="EDGE", nargs="?")
    _json_flag(p)

    # export / import
    p = add(sub, "export", cmd_export, "write the whole configuration as an appliance TOML file",
            ["pydpctl export appliance.toml", "pydpctl export - | less",
             "pydpctl export --force --include-secrets /root/appliance-full.toml"],
            notes="The format is the pydp-dataplane config file (docs/config.md). The file is replaced atomically;\n"
                  "an existing file is kept unless --force. CARP passphrases are written as \"\" unless\n"
                  "--include-secrets (the file is then created with mode 0600).")
    p.add_argument("file", metavar="FILE", help="the file to write, or - for standard output")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p.add_argument("--include-secrets", action="store_true", help="write the CARP passphrases too")

    p = add(sub, "import", cmd_import, "replace the whole configuration by an appliance TOML file",
            ["pydpctl import appliance.toml", "pydpctl import --check appliance.toml",
             "pydpctl export - | sed 's/^vhid = 10$/vhid = 11/' | pydpctl import -"],
            notes="All of the file is validated before anything changes: with any error, nothing changes. A cluster\n"
                  "imported without a CARP passphrase (exports leave them out) keeps the passphrase stored for the\n"
                  "cluster of the same name, unless --no-keep-passphrases.")
    p.add_argument("file", metavar="FILE", help="the file to read, or - for standard input")
    p.add_argument("--check", action="store_true", help="only validate the file; change nothing")
    p.add_argument("--no-keep-passphrases", action="store_true",
                   help="clusters imported without a passphrase lose the stored one")

    p = add(sub, "history", cmd_history, "show the latest changes: when, what, through which interface, by whom",
            ["pydpctl history", "pydpctl history --cluster web --limit 20", "pydpctl history --json"],
            notes="Via: cli (pydpctl on the store file), rpc (pydpctl through pydp-control), http (the admin page\n"
                  "or the HTTP API), store (a program using the store directly). CARP passphrases show as ***.")
    p.add_argument("--limit", metavar="N", type=int, default=50, help="at most N changes (default 50)")
    p.add_argument("--cluster", metavar="NAME", help="only changes naming this cluster")
    _json_flag(p)

    hu = sub.add_parser("http-user", help="manage who may sign in to the admin page and the HTTP API",
                        description="Manage the users file of the admin page (default /etc/pydp/http-users, or "
                                    "$PYDP_HTTP_USERS): users with a password, and tokens, each admin or read-only.",
                        epilog=_epilog("pydpctl http-user add alice < password.txt",
                                       "pydpctl http-user add bob --read-only --password-file /root/bob.pw",
                                       "pydpctl http-user token monitoring --read-only",
                                       "pydpctl http-user list", "pydpctl http-user remove bob",
                                       notes="Passwords are stored as scrypt hashes, tokens as SHA-256; the file is "
                                             "mode 0600, root's.\nA running pydp-control reads the changed file at "
                                             "the next sign-in."))
    hus = hu.add_subparsers(dest="http_user_command", metavar="ACTION", required=True)
    for name, help in (("add", "add a user (or set a new password); the password is read from standard input"),
                       ("token", "add a token and print it"), ("remove", "remove a user or token"),
                       ("list", "list users and tokens")):
        p = hus.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")
        p.set_defaults(func=cmd_http_user, command_name=name)
        p.add_argument("--file", metavar="PATH", help="the users file (default: $PYDP_HTTP_USERS, else "
                                                       "/etc/pydp/http-users)")
        if name != "list":
            p.add_argument("name", metavar="NAME")
        if name in ("add", "token"):
            p.add_argument("--read-only", action="store_true", help="may look, not change (default: admin)")
        if name == "add":
            p.add_argument("--password-file", metavar="FILE", help="read the password from FILE instead of stdin")

    # bgp
    bg = sub.add_parser("bgp", help="show, set or remove the [bgp] section (announcement of the bgp clusters)",
                        description="The [bgp] section: how pydp-control's BIRD announces the clusters with "
                                    "failover bgp to the upstream routers (docs/bgp.md).",
                        epilog=_epilog("pydpctl bgp show",
                                       "pydpctl bgp set --local-as 64512 --router-id 198.51.100.11 "
                                       "--peer 198.51.100.1=64500",
                                       "pydpctl status      # the sessions and what is announced"),
                        parents=[common])
    bgs = bg.add_subparsers(dest="bgp_command", metavar="ACTION", required=True)
    p = add(bgs, "show", cmd_bgp_show, "show the [bgp] section", ["pydpctl bgp show", "pydpctl bgp show --json"])
    _json_flag(p)
    p = add(bgs, "set", cmd_bgp_set, "create or change the [bgp] section (only the options given)",
            ["pydpctl bgp set --local-as 64512 --router-id 198.51.100.11 --peer 198.51.100.1=64500",
             "pydpctl bgp set --peer 198.51.100.1=64500 --peer 198.51.100.2=64500,source=198.51.100.11",
             "pydpctl bgp set --no-bfd --hold-time 30", "pydpctl bgp set --community 64512:100 --community 64512:200"],
            notes="--peer replaces the whole list of peers (a peer keeps its stored password). Peer passwords\n"
                  "are set by import (password = \"...\" in [[bgp.peer]]). Defaults and ranges: docs/config.md.")
    g = p.add_argument_group("[bgp] settings")
    g.add_argument("--local-as", dest="bgp_local_as", metavar="AS", type=int, help="this appliance's AS number")
    g.add_argument("--router-id", dest="bgp_router_id", metavar="IPV4", help="BGP router ID (IPv4 form)")
    g.add_argument("--hold-time", dest="bgp_hold_time", metavar="SECONDS", type=int, help="0 or 3..65535")
    g.add_argument("--next-hop", dest="bgp_next_hop", metavar="IP", help='next hop of the routes ("": self)')
    g.add_argument("--community", metavar="ASN:VALUE", action="append",
                   help='add this community to every route (repeat; replaces the list; "" for none)')
    g.add_argument("--bfd", dest="bgp_bfd", action=argparse.BooleanOptionalAction, default=None,
                   help="BFD on every session (sub-second failure detection)")
    g.add_argument("--bfd-interval-ms", dest="bgp_bfd_interval_ms", metavar="MS", type=int, help="10..10000")
    g.add_argument("--bfd-multiplier", dest="bgp_bfd_multiplier", metavar="N", type=int, help="1..255")
    g.add_argument("--drain-timeout", dest="bgp_drain_timeout", metavar="SECONDS", type=float,
                   help="how long established flows go on after a drain's withdraw")
    g.add_argument("--bird-socket", dest="bgp_socket", metavar="PATH", help="BIRD's control socket (key socket)")
    g.add_argument("--config-path", dest="bgp_config_path", metavar="PATH", help="the generated BIRD config")
    g.add_argument("--peer", metavar="ADDRESS=AS[,port=N][,source=IP]", action="append", type=parse_peer,
                   help="an upstream router (repeat; replaces the list of peers)")
    add(bgs, "remove", cmd_bgp_remove, "remove the [bgp] section (no cluster may use failover bgp)",
        ["pydpctl bgp remove"])

    from control import cli_observe
    cli_observe.register(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not hasattr(args, "func"):
            parser.print_help(sys.stderr)
            return 2
        return int(args.func(args) or 0)
    except SystemExit as e:        # --help, or a command that exits on its own
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except (StoreError, CliError) as e:
        print(f"{PROG}: error: " + " ".join(str(e).split("\n")), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 1


if __name__ == "__main__":
    sys.exit(main())
