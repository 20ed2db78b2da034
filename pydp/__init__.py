"""pydp: a DPDK data plane that load-balances a cluster of service edges (Maglev hashing, Direct Server Return)."""

__version__ = "0.1.0"


def add_version_option(parser) -> None:
    """`--version` on an argparse parser: prints "PROG VERSION" and exits 0 (every pydp program has it)."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the program's name and pydp's version, then exit")
