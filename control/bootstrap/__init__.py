"""pydp-bootstrap: brings a pydp appliance up with one command, and prepares service edges for DSR.

examples:
  pydp-bootstrap appliance --nic eth1 --config appliance.toml --dry-run   # every step, nothing changed
  pydp-bootstrap appliance --nic eth1 --config appliance.toml             # checks, packages, hugepages, NIC, units
  pydp-bootstrap edge --cluster-ip 198.51.100.10                          # cluster IP on lo, ARP sysctls
  pydp-bootstrap edge --undo

Every change is a step that is checked first, so a second run changes nothing and ``--dry-run`` prints every step a
real run would take. docs/bootstrap.md is the reference. Exit codes: 0 success, 1 a check or a step failed (the
message says what to do), 2 bad usage (nothing changed).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from control.bootstrap import appliance, edge
from pydp import add_version_option
from control.bootstrap.steps import EXIT_FAILED, EXIT_USAGE, BootstrapError, UsageError, print_results, stderr

__all__ = ["main", "build_parser"]

PROG = "pydp-bootstrap"


class Parser(argparse.ArgumentParser):
    """argparse whose errors become UsageError (exit code 2, one line)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog=PROG, description=__doc__.split("\n\n")[0], epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_option(ap)
    sub = ap.add_subparsers(metavar="COMMAND", parser_class=Parser)
    appliance.add_parser(sub)
    edge.add_parser(sub)
    return ap


def require_root() -> None:
    if os.geteuid() != 0:
        raise BootstrapError("must run as root (it changes addresses, sysctls and system files); "
                             "use sudo, or --dry-run to only look")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not hasattr(args, "func"):
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        if not args.dry_run:
            require_root()
        outcome, extra = args.func(args)
    except SystemExit as exc:          # --help
        return exc.code if isinstance(exc.code, int) else 0
    except UsageError as exc:
        stderr(PROG, str(exc))
        return EXIT_USAGE
    except BootstrapError as exc:
        stderr(PROG, str(exc))
        return EXIT_FAILED
    except OSError as exc:
        stderr(PROG, str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    print_results(PROG, outcome, as_json=args.json, dry_run=args.dry_run, extra=extra)
    if outcome.error:
        if not args.json:
            stderr(PROG, outcome.error)
        return EXIT_FAILED
    return 0
