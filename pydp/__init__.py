"""pydp: a DPDK data plane that load-balances a cluster of service edges (Maglev hashing, Direct Server Return)."""

__version__ = "0.1.0"
