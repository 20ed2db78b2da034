"""pydp-carp: one CARP virtual host on one kernel interface, with ucarp's command-line flags.

It can stand in for ucarp (``pydp-carp`` takes the same -i/-s/-v/-p/-o/-a/-b/-k/-P/-u/-d/-n/-z/-r/-x flags) and
runs beside it: the two interoperate on the wire. Unlike ucarp it puts the cluster IP on the interface itself (as a
/32, with pyroute2) before running the upscript; ``--no-address`` leaves that to the scripts, as ucarp does.

IPv6: ``--addr`` may be an IPv6 address (then ``--srcip`` is IPv6 too, a link-local one allowed, optionally with
``%<interface>``). Advertisements go to ff02::12 with hop limit 255 as OpenBSD sends them (ucarp is IPv4 only), the
address goes on the interface as a /128 (nodad) and an unsolicited neighbour advertisement announces it.

The passphrase: ``--passfile`` (first line of the file, up to the newline, as ucarp reads it) keeps it out of the
process list. ``--pass`` works but the value is visible in ``ps`` until the process has started; pydp-carp then
overwrites it in its own command line (best effort) and warns. The passphrase never appears in logs or in the
status JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING

from control.logs import add_log_options, setup_logging
from pydp import add_version_option

if TYPE_CHECKING:
    from control.carp import driver

PROG = "pydp-carp"

EPILOG = """examples:
  pydp-carp -i eth0 -s 192.0.2.1 -v 1 -o /etc/pydp/carp.key -a 192.0.2.50
  pydp-carp -i eth0 -s 192.0.2.2 -v 1 -o /etc/pydp/carp.key -a 192.0.2.50 -k 100 -P \\
            --json-status /run/pydp/carp-1.json
  pydp-carp ... --mac virtual --mode openbsd     # OpenBSD behaviour: virtual MAC, equal-interval rule
  pydp-carp -i eth0 -s fe80::1 -v 2 -o /etc/pydp/carp.key -a 2001:db8::50 --mode openbsd   # IPv6 (ff02::12)

SIGTERM or SIGINT: a master bows out (one advertisement with advbase 255/advskew 255, so the backup takes over at
once) and releases the address; the downscript runs at exit only with --shutdown (as ucarp's -z).
SIGUSR1 logs the current status.
"""


class UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="CARP failover of one cluster IP on one interface; interoperates with ucarp and OpenBSD.")
    add_version_option(p)
    g = p.add_argument_group("ucarp's flags")
    g.add_argument("-i", "--interface", metavar="IF", required=True, help="the interface to run on")
    g.add_argument("-s", "--srcip", metavar="IP", required=True,
                   help="this host's own (real) address: source of the advertisements (IPv6 if --addr is; "
                        "link-local allowed)")
    g.add_argument("-v", "--vhid", metavar="ID", required=True, help="virtual host id, 1-255")
    g.add_argument("-p", "--pass", dest="passphrase", metavar="PASS",
                   help="passphrase (shows in ps while starting: prefer --passfile)")
    g.add_argument("-o", "--passfile", metavar="FILE", help="read the passphrase from the first line of FILE")
    g.add_argument("-a", "--addr", metavar="IP", required=True, help="the virtual (cluster) IPv4 or IPv6 address")
    g.add_argument("-b", "--advbase", metavar="S", default="1", help="advertisement base interval, seconds (1)")
    g.add_argument("-k", "--advskew", metavar="N", default="0",
                   help="advertisement skew, 1/256 s, 0-254 (0); the lower interval is the preferred master")
    g.add_argument("-P", "--preempt", action="store_true", help="take over from a less preferred master")
    g.add_argument("-u", "--upscript", metavar="FILE", help="run FILE <interface> <addr> on becoming master")
    g.add_argument("-d", "--downscript", metavar="FILE", help="run FILE <interface> <addr> on becoming backup")
    g.add_argument("-n", "--neutral", action="store_true", help="do not run the downscript at start")
    g.add_argument("-z", "--shutdown", action="store_true", help="run the downscript at exit (when master)")
    g.add_argument("-r", "--deadratio", metavar="N", default="3",
                   help="master-down after N advertisement intervals (3)")
    g.add_argument("-x", "--xparam", metavar="VALUE", help="extra (third) argument to the scripts")
    g.add_argument("-D", "--debug", action="store_true", help="same as --log-level debug")
    g.add_argument("-S", "--ignoreifstate", action="store_true",
                   help="accepted for ucarp compatibility (pydp-carp does not follow the link state)")
    o = p.add_argument_group("pydp-carp's own")
    o.add_argument("--mode", choices=("ucarp", "openbsd"), default="ucarp",
                   help="election rules: ucarp (equal intervals: lower source IP wins; master-down advbase*3 + "
                        "skew) or openbsd (3 x interval; a master yields on an equal interval) (ucarp)")
    o.add_argument("--mac", choices=("real", "ucarp", "virtual"), default="real",
                   help="source MACs: real = the interface's MAC everywhere; ucarp = adverts from "
                        "00:00:5e:00:00:<vhid>, VIP on the real MAC; virtual = 00:00:5e:00:01:<vhid> for adverts "
                        "and VIP (OpenBSD) (real)")
    o.add_argument("--no-address", action="store_true",
                   help="do not add/remove the address on the interface: the scripts do it (as with ucarp)")
    o.add_argument("--json-status", metavar="FILE",
                   help="write the status (state, counters; no secrets) as JSON to FILE on every change")
    add_log_options(o)
    return p


def _int(name: str, text: str, lo: int, hi: int) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise UsageError(f"--{name} must be an integer, not {text!r}") from None
    if not lo <= value <= hi:
        raise UsageError(f"--{name} must be between {lo} and {hi}, not {value}")
    return value


def _ip(name: str, text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise UsageError(f"--{name} must be an IPv4 or IPv6 address, not {text!r}") from None


def _addresses(interface: str, srcip_text: str, addr_text: str) -> tuple[str, str]:
    """(srcip, addr) checked: one family; an IPv6 cluster IP is global, an IPv6 source may be link-local with the
    interface as its scope (``fe80::1%eth0``; the scope is dropped, the interface is the scope)."""
    addr = _ip("addr", addr_text)
    if addr.version == 4:
        try:
            return str(ipaddress.IPv4Address(srcip_text)), str(addr)
        except ValueError:
            raise UsageError(f"--srcip must be an IPv4 address (as --addr is), not {srcip_text!r}") from None
    if addr.is_link_local or addr.is_multicast or addr.is_unspecified or addr.is_loopback:
        raise UsageError(f"--addr {addr} cannot be a cluster IP: use a global (or unique local) IPv6 address")
    text, _, scope = srcip_text.partition("%")
    try:
        src = ipaddress.IPv6Address(text)
    except ValueError:
        raise UsageError(f"--srcip must be an IPv6 address (as --addr is), not {srcip_text!r}") from None
    if scope and not src.is_link_local:
        raise UsageError(f"--srcip {srcip_text}: only a link-local address takes a %scope")
    if scope and scope != interface:
        raise UsageError(f"--srcip {srcip_text}: the scope must be the interface ({interface})")
    if src.is_multicast or src.is_unspecified:
        raise UsageError(f"--srcip {src} is not a unicast address")
    return str(src), str(addr)


def read_passfile(path: str) -> bytes:
    """The first line of the file without its newline, as ucarp reads it."""
    try:
        with open(path, "rb") as f:
            line = f.readline(512)
    except OSError as e:
        raise UsageError(f"--passfile: cannot read {path}: {e.strerror or e}") from None
    return line.split(b"\n", 1)[0]


def scrub_cmdline(secret: bytes) -> bool:
    """Overwrites ``secret`` in this process's command line (what ps and /proc/PID/cmdline show) with '*'.
    Linux only, best effort: returns False if it could not. The window before this runs stays open."""
    if not secret:
        return False
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2:].split()
        start, end = int(fields[45]), int(fields[46])          # arg_start, arg_end (fields 48 and 49)
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            area = mem.read(end - start)
            masked = area.replace(secret, b"*" * len(secret))
            if masked != area:
                mem.seek(start)
                mem.write(masked)
        return True
    except (OSError, ValueError, IndexError):
        return False


def _forget_in_argv(secret_text: str) -> None:
    """No copy of the passphrase stays in sys.argv / sys.orig_argv (tracebacks, debuggers, logs)."""
    for lst in (sys.argv, getattr(sys, "orig_argv", [])):
        for i, arg in enumerate(lst):
            if secret_text and secret_text in arg:
                lst[i] = arg.replace(secret_text, "*" * len(secret_text))


def config_from_args(args) -> "driver.Config":
    from control.carp import driver

    vhid = _int("vhid", args.vhid, 1, 255)
    advbase = _int("advbase", args.advbase, 1, 255)
    advskew = _int("advskew", args.advskew, 0, 254)      # 255 with advbase 255 means "bowing out"
    deadratio = _int("deadratio", args.deadratio, 1, 255)
    srcip, addr = _addresses(args.interface, args.srcip, args.addr)
    if ":" in addr and args.mac == "virtual":
        raise UsageError("--mac virtual is IPv4 only; use --mac real or ucarp with an IPv6 --addr")
    if args.passphrase is not None and args.passfile:
        raise UsageError("give the passphrase once: --passfile or --pass")
    if args.passfile:
        key = read_passfile(args.passfile)
        where = f"--passfile {args.passfile}"
    elif args.passphrase is not None:
        key = os.fsencode(args.passphrase)
        where = "--pass"
    else:
        raise UsageError("a passphrase is required: --passfile FILE (or --pass, which shows in ps)")
    if not key:
        raise UsageError(f"{where}: the passphrase is empty")
    if len(key) > 20:
        raise UsageError(f"{where}: the passphrase is {len(key)} bytes; CARP passphrases are at most 20 bytes "
                         "(19 to interoperate with ucarp)")
    try:
        socket.if_nametoindex(args.interface)
    except OSError:
        raise UsageError(f"--interface: no interface named {args.interface!r}") from None
    for name in ("upscript", "downscript"):
        script = getattr(args, name)
        if script and not os.access(script, os.X_OK):
            raise UsageError(f"--{name}: {script} is not an executable file")
    return driver.Config(
        interface=args.interface, srcip=srcip, vhid=vhid, addr=addr, key=key, advbase=advbase, advskew=advskew,
        preempt=args.preempt, neutral=args.neutral, deadratio=deadratio, mode=args.mode, mac=args.mac,
        upscript=args.upscript, downscript=args.downscript, xparam=args.xparam, shutdown_script=args.shutdown,
        manage_address=not args.no_address)


def _srcip_present(interface: str, srcip: str) -> bool | None:
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=interface)
            if not idx:
                return None
            family = socket.AF_INET6 if ":" in srcip else socket.AF_INET
            want = ipaddress.ip_address(srcip)
            return any(ipaddress.ip_address(a.get("IFA_ADDRESS")) == want
                       for a in ipr.get_addr(index=idx[0], family=family) if a.get("IFA_ADDRESS"))
    except Exception:
        return None


class StatusFile:
    """Writes Instance.status() as JSON (atomically: temporary file, then rename) when it changes."""

    def __init__(self, path: str | None, instance):
        self.path = path
        self.instance = instance
        self.last: str | None = None

    def write(self, force: bool = False) -> None:
        if not self.path:
            return
        status = self.instance.status()
        status["written"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        compare = json.dumps({k: v for k, v in status.items() if k != "written"}, sort_keys=True)
        if compare == self.last and not force:
            return
        self.last = compare
        tmp = f"{self.path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                json.dump(status, f, indent=1, sort_keys=True)
                f.write("\n")
            os.replace(tmp, self.path)
        except OSError as e:
            logging.getLogger("pydp.carp").warning("cannot write %s: %s", self.path, e.strerror or e)


async def run(cfg, json_path: str | None) -> int:
    from control.carp import driver

    log = logging.getLogger("pydp.carp")
    loop = asyncio.get_running_loop()
    status_file: StatusFile | None = None

    def on_state(old, new, reason):
        if status_file is not None:
            status_file.write()

    inst = driver.Instance(cfg, on_state=on_state)
    status_file = StatusFile(json_path, inst)
    done = asyncio.Event()
    got: list[str] = []

    def on_signal(name: str) -> None:
        got.append(name)
        done.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, on_signal, sig.name)
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.info("status: %s", json.dumps(inst.status(),
                                                                                      sort_keys=True)))
    try:
        await inst.start()
    except OSError as e:
        log.error("cannot start on %s: %s", cfg.interface, e.strerror or e)
        return 1
    status_file.write(force=True)
    try:
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), 0.25)
            except asyncio.TimeoutError:
                pass
            status_file.write()          # counters move without a state change
    finally:
        log.info("%s: stopping", got[0] if got else "exit")
        await inst.stop()
        status_file.write()
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else getattr(logging, args.log_level.upper())
    setup_logging(args.log_format, level, program=PROG)
    for handler in logging.getLogger().handlers:      # libraries (pyroute2, asyncio): warnings and errors only
        handler.addFilter(lambda r: r.name.startswith("pydp") or r.levelno >= logging.WARNING)
    if args.passphrase is not None:
        secret = args.passphrase
        scrubbed = scrub_cmdline(os.fsencode(secret))
        _forget_in_argv(secret)
        print(f"{PROG}: warning: --pass puts the passphrase in the process list "
              f"({'overwritten now, but visible while starting' if scrubbed else 'could not overwrite it'}); "
              "use --passfile", file=sys.stderr)
    try:
        cfg = config_from_args(args)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    finally:
        args.passphrase = None
    if len(cfg.key) == 20:
        print(f"{PROG}: warning: a 20-byte passphrase is refused by ucarp (its limit is 19 bytes)", file=sys.stderr)
    if _srcip_present(cfg.interface, cfg.srcip) is False:
        print(f"{PROG}: warning: --srcip {cfg.srcip} is not an address of {cfg.interface}", file=sys.stderr)
    if os.geteuid() != 0:
        print(f"{PROG}: warning: raw sockets need root (or CAP_NET_RAW and CAP_NET_ADMIN)", file=sys.stderr)
    try:
        return asyncio.run(run(cfg, args.json_status))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
