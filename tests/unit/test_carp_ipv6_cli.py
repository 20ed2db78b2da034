"""pydp-carp's command line for IPv6 cluster IPs: what it refuses and what it accepts (the IPv6 failover on the
wire: tests/netns/test_carp_ipv6.py)."""

import ipaddress
import subprocess

import pytest

from netlab import pydp_carp_argv


@pytest.mark.parametrize("args, message", [
    (["-a", "2001:db8::50", "-s", "127.0.0.1"], "--srcip must be an IPv6 address (as --addr is)"),
    (["-a", "192.0.2.50", "-s", "2001:db8::1"], "--srcip must be an IPv4 address (as --addr is)"),
    (["-a", "fe80::50", "-s", "fe80::1"], "cannot be a cluster IP"),
    (["-a", "ff02::12", "-s", "fe80::1"], "cannot be a cluster IP"),
    (["-a", "2001:db8::50", "-s", "fe80::1%eth7"], "the scope must be the interface (lo)"),
    (["-a", "2001:db8::50", "-s", "2001:db8::1%lo"], "only a link-local address takes a %scope"),
    (["-a", "2001:db8::50", "-s", "fe80::1", "--mac", "virtual"], "--mac virtual is IPv4 only"),
])
def test_cli_ipv6_flags(args, message):
    base = {"-i": "lo", "-v": "1", "--pass": "secret-21"}
    argv = [x for k, v in base.items() for x in (k, v)] + args
    proc = subprocess.run([*pydp_carp_argv(), *argv], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc
    assert message in proc.stderr, proc.stderr


def test_cli_accepts_ipv6():
    from control.carp import cli

    args = cli.build_parser().parse_args(["-i", "lo", "-s", "fe80::1%lo", "-v", "3", "--pass", "k", "-a",
                                          "2001:DB8::0050"])
    cfg = cli.config_from_args(args)
    assert (cfg.srcip, cfg.addr) == ("fe80::1", "2001:db8::50")
    assert ipaddress.ip_address(cfg.addr).version == 6
