"""failover = "bgp": BIRD 2 run and driven by pydp-control (docs/bgp.md). :mod:`control.bgp.birdconf` generates its
configuration (a pure function), :mod:`control.bgp.birdc` parses what birdc answers, :mod:`control.bgp.manager`
runs BIRD as a child process and announces or withdraws the clusters as the Reconciler decides."""
