"""pydp-lab: the whole system on one Linux machine, in network namespaces (docs/lab.md)."""
