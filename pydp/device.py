"""DPDK device specs (a [[port]]'s ``device``): the one parser of them in pydp.

A spec is a PCI address or a vdev, each with optional ``,key=value`` arguments::

    0000:03:00.0                    PCI, full form (domain:bus:device.function)
    03:00.0,rxq_cqe_comp_en=0       PCI, short form (domain 0000), with a driver argument
    net_af_packet0,iface=eth1       vdev: driver name + instance, then arguments

``parse`` returns the spec's parts and the name DPDK 22.11 gives the port it creates, which is what
``rte_eth_dev_get_port_by_name`` finds: for PCI the address printed with PCI_PRI_FMT (rte_pci.h:
``"%.4x:%.2x:%.2x.%x"``, lowercase, always with the domain), so ``03:00.0`` and ``0000:03:00.0`` both name the
port ``0000:03:00.0``; for a vdev the name before its arguments (``net_af_packet0``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Device", "parse", "pci_address", "port_name"]

# An argument: key, or key=value where value is plain or a bracketed list (representor=[0-3], [0,2]).
_ARG_RE = re.compile(r",([A-Za-z0-9_.-]+)(?:=(\[[^\]\s]*\]|[^,\[\]\s]*))?")
_PCI_RE = re.compile(r"(?:([0-9A-Fa-f]{4}):)?([0-9A-Fa-f]{2}):([01][0-9A-Fa-f])\.([0-7])")
_VDEV_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Device:
    """A parsed device spec. name: the DPDK port name; args: (key, value or None) in the order written;
    args_text: the arguments as written, with their leading comma ("" if none)."""
    spec: str
    kind: str                       # "pci" or "vdev"
    name: str
    args: tuple[tuple[str, str | None], ...]
    args_text: str

    @property
    def is_pci(self) -> bool:
        return self.kind == "pci"

    def arg(self, key: str, default: str | None = None) -> str | None:
        """The value of the last argument named key (None for a bare key), default if absent."""
        found = default
        for k, v in self.args:
            if k == key:
                found = v
        return found

    def has_arg(self, key: str) -> bool:
        return any(k == key for k, _ in self.args)

    def eal(self, extra_args: str = "") -> list[str]:
        """The EAL option that creates the device: ``-a ADDRESS[,args]`` (the full address) or ``--vdev SPEC``."""
        text = self.name + self.args_text + extra_args
        return ["-a", text] if self.is_pci else ["--vdev", text]


def pci_address(text: str) -> str | None:
    """The full lowercase form of a bare PCI address (no arguments), as DPDK names the device; None if text is not
    a PCI address."""
    m = _PCI_RE.fullmatch(text)
    if not m:
        return None
    domain, bus, dev, fn = m.groups()
    return f"{int(domain or '0', 16):04x}:{int(bus, 16):02x}:{int(dev, 16):02x}.{int(fn, 16):x}"


def parse(spec: str) -> Device:
    """Parse a device spec; ValueError naming the problem if it is neither a PCI address nor a vdev."""
    if not isinstance(spec, str):
        raise ValueError(f"a device spec must be a string, got {type(spec).__name__}")
    head, sep, rest = spec.partition(",")
    args_text = sep + rest
    args: list[tuple[str, str | None]] = []
    pos = 0
    while pos < len(args_text):
        m = _ARG_RE.match(args_text, pos)
        if not m:
            raise ValueError(f"{spec!r}: bad device arguments at {args_text[pos:]!r} (expected ',key' or "
                             f"',key=value')")
        args.append((m.group(1), m.group(2)))
        pos = m.end()
    pci = pci_address(head)
    if pci is not None:
        return Device(spec, "pci", pci, tuple(args), args_text)
    if _VDEV_RE.fullmatch(head):
        return Device(spec, "vdev", head, tuple(args), args_text)
    raise ValueError(f"{spec!r} is not a DPDK device: expected a vdev spec (driver name and optional ',key=value' "
                     f"arguments, e.g. 'net_af_packet0,iface=eth1') or a PCI address (e.g. '0000:03:00.0')")


def port_name(spec: str) -> str:
    """The DPDK port name of a device spec (ValueError if it is not one)."""
    return parse(spec).name
