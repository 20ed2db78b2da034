"""pydp-bootstrap appliance: brings a load-balancer appliance up (checks, packages, hugepages, NIC, config, units).

The plan, in order (each item one or more steps, each checked before it is made):

1. checks: SSE4.2, memory, kernel >= 5 (root is checked before anything);
2. OS packages with apt-get (``--no-install`` skips them);
3. hugepages: ``/etc/sysctl.d/80-pydp-hugepages.conf`` for boot, the live reservation (read back: a kernel that
   cannot find the memory is an error, not a warning), hugetlbfs on /dev/hugepages now and at boot;
4. the data NIC: a PCI address is bound to vfio-pci (IOMMU checked, refused while the kernel still uses the
   interface), a kernel interface becomes an af_packet (or, with ``--xdp``, af_xdp) vdev and is brought up;
5. /etc/pydp/appliance.toml from ``--config`` and ``--nic``, or a minimal one;
6. the exception-path TAP's management address (``--tap-address``) as a udev rule: the data plane's net_tap
   creates the TAP each time it starts, so the address has to be given each time the interface appears;
7. systemd units for pydp-dataplane and pydp-control, enabled;
8. ``pydpctl import`` of the config into the store (with ``--config``).

``--root DIR`` writes every file under DIR (tests, image builds); the live kernel is still checked and changed
(hugepages, mounts, links), and the reloads of what was written (udev, systemd) are left out.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from control.bootstrap import steps as st
from control.bootstrap.steps import BootstrapError, Step, UsageError
from control.store import DEFAULT_PATH as store_default_path
from pydp import device as pdevice

PACKAGES = ["dpdk", "pciutils", "iproute2", "kmod", "procps", "udev"]
HUGEPAGE_CONF = "/etc/sysctl.d/80-pydp-hugepages.conf"
CONFIG_PATH = "/etc/pydp/appliance.toml"
STORE_PATH = store_default_path      # the store pydp-control and pydpctl use by default
UNIT_DIR = "/etc/systemd/system"
UDEV_RULE = "/etc/udev/rules.d/80-pydp-tap.rules"
MODULES_CONF = "/etc/modules-load.d/pydp.conf"
MIN_KERNEL = (5, 0)
MIN_SPARE_MB = 1024           # memory left to the kernel, pydp-control and the rest after the hugepages
# what a unit file or udev rule may carry verbatim: interface names are checked against the kernel list too
SAFE_NAME_RE = re.compile(r"[A-Za-z0-9_.@+-]{1,15}")

EXAMPLES = """\
examples:
  pydp-bootstrap appliance --nic eth1 --dry-run                          # every step, nothing changed
  pydp-bootstrap appliance --nic 0000:03:00.0 --config appliance.toml --tap-address 198.51.100.2/24
  pydp-bootstrap appliance --nic eth1 --xdp --hugepages 2048 --no-install
  pydp-bootstrap appliance --nic eth1 --root /tmp/image --json          # files under /tmp/image
"""


@dataclass
class Env:
    """Where things are: files under ``root``, the kernel's /proc and /sys (other trees only in tests)."""
    root: Path
    proc: Path
    sys: Path

    @property
    def live(self) -> bool:
        """Whether the files written are the ones this system runs from (so udev and systemd may reload)."""
        return self.root == Path("/")

    def file(self, path: str) -> Path:
        return self.root / path.lstrip("/")


# ---- checks (each returns what it found, or raises with what to do) ----

def _meminfo(env: Env) -> dict[str, int]:
    out = {}
    for line in (env.proc / "meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        if rest.split():
            out[key] = int(rest.split()[0])
    return out


def check_cpu(env: Env) -> str:
    flags = set()
    for line in (env.proc / "cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    if "sse4_2" not in flags:
        raise BootstrapError("the CPU lacks SSE4.2, which DPDK 22.11 is built for: use an x86-64 CPU with SSE4.2 "
                             "(any from 2009 on), or pass the host CPU's flags through to this VM")
    return "SSE4.2 present"


def check_memory(env: Env, hugepages: int) -> str:
    info = _meminfo(env)
    if info.get("Hugepagesize", 2048) != 2048:
        raise BootstrapError(f"the default hugepage size is {info['Hugepagesize']} kB and pydp-bootstrap reserves "
                             f"2 MiB pages through vm.nr_hugepages: boot with default_hugepagesz=2M")
    total_mb = info.get("MemTotal", 0) // 1024
    huge_mb = hugepages * 2
    if total_mb < huge_mb + MIN_SPARE_MB:
        raise BootstrapError(f"not enough memory: {total_mb} MiB, and {hugepages} hugepages take {huge_mb} MiB "
                             f"with {MIN_SPARE_MB} MiB to spare for the system: ask for fewer with --hugepages")
    return f"{total_mb} MiB, {huge_mb} MiB of it for hugepages"


def check_kernel(env: Env) -> str:
    release = (env.proc / "sys/kernel/osrelease").read_text().strip()
    m = re.match(r"(\d+)\.(\d+)", release)
    if not m or (int(m.group(1)), int(m.group(2))) < MIN_KERNEL:
        raise BootstrapError(f"kernel {release} is too old: pydp needs Linux {MIN_KERNEL[0]}.{MIN_KERNEL[1]} or "
                             f"later (Debian 12 ships 6.1)")
    return f"Linux {release}"


def check_step(name: str, description: str, fn) -> Step:
    """A check as a step: nothing to change, it passes or stops the run with its message."""
    found = {}

    def check() -> bool:
        found["detail"] = fn()
        return True

    return Step(name, description, check, lambda: None, ok_detail=lambda: found.get("detail", ""))


# ---- the data NIC ----

@dataclass
class Nic:
    """A data port's device: a PCI address (vfio-pci) or a kernel interface (af_packet / af_xdp vdev)."""
    pci: str | None = None
    iface: str | None = None


def check_interface_name(ipr, name: str) -> int:
    """An interface of this namespace whose name can go into a unit file verbatim."""
    index = st.interface_index(ipr, name)
    if not SAFE_NAME_RE.fullmatch(name):
        raise UsageError(f"interface {name!r}: pydp-bootstrap handles names of letters, digits and '_.@+-' only; "
                         f"rename it (ip link set dev NAME name NEW)")
    return index


def in_use(ipr, index: int) -> list[str]:
    """What the kernel still does with an interface: its addresses (IPv6 link-local aside) and its routes."""
    why = []
    for a in ipr.get_addr(index=index):
        ip = ipaddress.ip_address(a.get("IFA_ADDRESS"))
        if not ip.is_link_local:
            why.append(f"address {ip}/{a['prefixlen']}")
    for family in (2, 10):
        for r in ipr.get_routes(family=family, table=254):
            dst = r.get("RTA_DST")
            if r.get("RTA_OIF") != index or (dst and ipaddress.ip_address(dst).is_link_local):
                continue        # fe80::/64 comes with IPv6 itself
            why.append(f"route {dst}/{r['dst_len']}" if dst else "the default route")
    return why


def check_not_in_use(ipr, name: str, index: int, force: bool) -> str:
    why = in_use(ipr, index)
    if why and not force:
        raise BootstrapError(f"NIC in use: the kernel still uses {name} ({', '.join(why)}); the data plane takes the "
                             f"whole port: move these off it, or use --force")
    return "no addresses or routes" if not why else f"--force: taken with {', '.join(why)}"


def pci_interfaces(env: Env, pci: str) -> list[str]:
    try:
        return sorted(os.listdir(env.sys / "bus/pci/devices" / pci / "net"))
    except FileNotFoundError:
        return []


def pci_driver(env: Env, pci: str) -> str | None:
    link = env.sys / "bus/pci/devices" / pci / "driver"
    return os.path.basename(os.readlink(link)) if link.is_symlink() else None


def check_pci_exists(env: Env, pci: str) -> None:
    if not (env.sys / "bus/pci/devices" / pci).exists():
        raise UsageError(f"unknown PCI device {pci} (not in {env.sys / 'bus/pci/devices'}; lspci -D lists them)")


def check_iommu(env: Env, pci: str, noiommu: bool) -> str:
    groups = env.sys / "kernel/iommu_groups"
    if not noiommu and not (groups.is_dir() and any(groups.iterdir())):
        raise BootstrapError("no IOMMU: enable intel_iommu=on/amd_iommu=on or use --vfio-noiommu")
    return f"{pci} present, driver {pci_driver(env, pci) or 'none'}" + (", no-IOMMU mode" if noiommu else "")


def nic_steps(env: Env, ipr, port_no: int, nic: Nic, args) -> tuple[list[Step], list[Step]]:
    """(checks, changes) for one data port's device; every check of every port runs before any change."""
    checks, changes = [], []
    if nic.pci:
        pci = nic.pci
        check_pci_exists(env, pci)
        checks.append(check_step(f"check iommu {pci}", f"IOMMU for {pci}",
                                 lambda: check_iommu(env, pci, args.vfio_noiommu)))
        for name in pci_interfaces(env, pci):
            index = (ipr.link_lookup(ifname=name) or [None])[0]
            if index is not None:
                checks.append(check_step(f"check in-use {name}", f"{pci} ({name}) not used by the kernel",
                                         lambda name=name, index=index: check_not_in_use(ipr, name, index,
                                                                                         args.force)))
        changes.append(st.file_step("modules-load", env.file(MODULES_CONF),
                                    "# pydp: DPDK's NIC driver\nvfio-pci\n", "load vfio-pci at boot"))
        changes.append(Step("modprobe vfio-pci", "vfio-pci module loaded",
                            lambda: (env.sys / "bus/pci/drivers/vfio-pci").is_dir(),
                            lambda: st.run_cmd(["modprobe", "vfio-pci"]), lambda: "modprobe vfio-pci"))
        if args.vfio_noiommu:
            knob = env.sys / "module/vfio/parameters/enable_unsafe_noiommu_mode"
            changes.append(Step("vfio noiommu", "vfio no-IOMMU mode (unsafe: no DMA isolation)",
                                lambda: knob.exists() and knob.read_text().strip() in ("Y", "1"),
                                lambda: knob.write_text("1\n"), lambda: f"write 1 to {knob}"))
        changes.append(Step(f"bind {pci}", f"{pci} bound to vfio-pci", lambda: pci_driver(env, pci) == "vfio-pci",
                            lambda: st.run_cmd(devbind_argv(pci, args.force)),
                            lambda: f"{' '.join(devbind_argv(pci, args.force))} (was {pci_driver(env, pci) or 'none'})"))
    else:
        name = nic.iface
        index = check_interface_name(ipr, name)
        checks.append(check_step(f"check in-use {name}", f"{name} not used by the kernel",
                                 lambda: check_not_in_use(ipr, name, index, args.force)))

        def is_up() -> bool:
            return bool(ipr.get_links(index)[0]["flags"] & 1)

        # the kernel keeps the interface: without this it gives it an IPv6 link-local address and speaks
        # neighbour discovery, MLD and router solicitations on the data segment with the port's MAC
        knob = env.proc / "sys/net/ipv6/conf" / name / "disable_ipv6"
        changes.append(Step(f"ipv6 off {name}", f"no kernel IPv6 on {name} (the kernel keeps off the data port)",
                            lambda: not knob.exists() or knob.read_text().strip() == "1",
                            lambda: knob.write_text("1\n"), lambda: f"net.ipv6.conf.{name}.disable_ipv6 0 -> 1"))

        changes.append(Step(f"link {name}", f"{name} up (the {'af_xdp' if args.xdp else 'af_packet'} vdev of "
                                            f"port {port_no} reads it)", is_up,
                            lambda: ipr.link("set", index=index, state="up"), lambda: f"ip link set dev {name} up"))
    return checks, changes


def devbind_argv(pci: str, force: bool) -> list[str]:
    return ["dpdk-devbind.py", "--bind=vfio-pci", *(["--force"] if force else []), pci]


def vdev_for(iface: str, port_no: int, xdp: bool, workers: int) -> str:
    """The DPDK vdev of a kernel interface: af_packet (any interface; the data plane sets qpairs to the workers)
    or af_xdp (one queue per worker from queue 0: the NIC needs that many channels, ethtool -L)."""
    if xdp:
        return f"net_af_xdp{port_no},iface={iface},start_queue=0,queue_count={workers}"
    return f"net_af_packet{port_no},iface={iface}"


def port_nic(device: str) -> Nic | None:
    """The NIC behind a configured port device, None for vdevs that use no NIC (memif, ring, tap, null ...)."""
    dev = pdevice.parse(device)
    if dev.is_pci:
        return Nic(pci=dev.name)
    iface = dev.arg("iface") if dev.name.startswith(("net_af_packet", "net_af_xdp")) else None
    return Nic(iface=iface) if iface else None


# ---- hugepages ----

def hugepage_steps(env: Env, pages: int) -> list[Step]:
    knob = env.proc / "sys/vm/nr_hugepages"
    mounts = env.proc / "mounts"

    def reserve() -> None:
        before = knob.read_text().strip()
        knob.write_text(f"{pages}\n")
        got = _meminfo(env).get("HugePages_Total", 0)
        if got < pages:
            knob.write_text(f"{before}\n")      # a partial reservation only pins memory: give it back
            raise BootstrapError(
                f"no hugepages: the kernel reserved {got} of the {pages} pages asked (memory too small or "
                f"fragmented); reboot so {HUGEPAGE_CONF} reserves them early, add hugepages={pages} to the kernel "
                f"command line, or ask for fewer with --hugepages")

    def mounted() -> bool:
        return any(line.split()[1:3] == ["/dev/hugepages", "hugetlbfs"]
                   for line in mounts.read_text().splitlines())

    def mount() -> None:
        Path("/dev/hugepages").mkdir(exist_ok=True)
        st.run_cmd(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "nodev", "/dev/hugepages"])

    out = [
        st.file_step("hugepages conf", env.file(HUGEPAGE_CONF),
                     f"# pydp: hugepages for the DPDK data plane, reserved early at boot (pydp-bootstrap)\n"
                     f"vm.nr_hugepages = {pages}\n", f"{pages} hugepages reserved at boot ({HUGEPAGE_CONF})"),
        Step("hugepages", f"at least {pages} hugepages reserved now", lambda: int(knob.read_text()) >= pages,
             reserve, lambda: f"vm.nr_hugepages {knob.read_text().strip()} -> {pages}"),
        Step("hugetlbfs", "hugetlbfs mounted on /dev/hugepages", mounted, mount,
             lambda: "mount -t hugetlbfs -o pagesize=2M nodev /dev/hugepages"),
    ]
    if any(env.file(d).joinpath("dev-hugepages.mount").exists()
           for d in ("/lib/systemd/system", "/usr/lib/systemd/system")):
        out.append(check_step("hugetlbfs at boot", "hugetlbfs mounted at boot",
                              lambda: "by systemd's dev-hugepages.mount"))
    else:
        out.append(fstab_step(env))
    return out


def fstab_step(env: Env) -> Step:
    fstab = env.file("/etc/fstab")
    line = "hugetlbfs /dev/hugepages hugetlbfs pagesize=2M 0 0\n"

    def present() -> bool:
        try:
            return any(entry.split()[1:2] == ["/dev/hugepages"] for entry in fstab.read_text().splitlines()
                       if entry.strip() and not entry.lstrip().startswith("#"))
        except FileNotFoundError:
            return False

    def add() -> None:
        text = fstab.read_text() if fstab.exists() else ""
        st.write_file(fstab, text + ("" if not text or text.endswith("\n") else "\n") + line)

    return Step("fstab", "hugetlbfs mounted at boot (/etc/fstab)", present, add, lambda: f"add to {fstab}: {line.strip()}")


# ---- packages ----

def package_step() -> Step:
    def missing() -> list[str]:
        out = []
        for pkg in PACKAGES:
            proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
            if proc.returncode != 0 or proc.stdout.strip() != "install ok installed":
                out.append(pkg)
        return out

    def install() -> None:
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        st.run_cmd(["apt-get", "update", "-q"], env=env)
        st.run_cmd(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing()], env=env)

    return Step("packages", f"OS packages installed ({', '.join(PACKAGES)})", lambda: not missing(), install,
                lambda: "apt-get install " + " ".join(missing()))


# ---- the appliance config ----

def build_config(args, ipr):
    """(text to install, config): --config as written (or rewritten with --nic's device), else a minimal one."""
    from pydp import config as pconfig

    source = args.config or "<generated>"
    text = None
    if args.config:
        try:
            text = Path(args.config).read_text()
            cfg = pconfig.loads(text, args.config, require_ports=not args.nic)
        except OSError as exc:
            raise UsageError(f"--config {args.config}: {exc.strerror or exc}") from None
        except pconfig.ConfigError as exc:
            raise UsageError(" ".join(str(exc).split("\n"))) from None
    else:
        cfg = pconfig.ApplianceConfig()
    if args.nic:
        pci = pdevice.pci_address(args.nic)
        if pci is None:
            check_interface_name(ipr, args.nic)
        device = pci or vdev_for(args.nic, 0, args.xdp, len(cfg.dataplane.worker_lcores))
        if cfg.ports:
            cfg.ports[0].device = device
        else:
            cfg.ports.append(pconfig.PortConfig(name="wan0", device=device))
        try:
            cfg = pconfig.validate(cfg, source)
        except pconfig.ConfigError as exc:
            raise UsageError(" ".join(str(exc).split("\n"))) from None
        text = ("# pydp appliance configuration, written by pydp-bootstrap (format: docs/config.md)\n"
                + pconfig.dumps(cfg, include_secrets=True))
    elif not args.config:
        raise UsageError("appliance: give the data NIC with --nic (or a --config with a [[port]])")
    return text, cfg


def tap_rule(tap: str, addresses: list[str]) -> str:
    ip = shutil.which("ip") or "/usr/sbin/ip"
    lines = ["# pydp: the management address of the data plane's exception-path TAP. pydp-dataplane (DPDK's net_tap)",
             "# creates the interface at every start, so the address is given each time it appears. Written by",
             "# pydp-bootstrap: rerun it to change this file."]
    lines += [f'ACTION=="add", SUBSYSTEM=="net", KERNEL=="{tap}", RUN+="{ip} address add {a} dev {tap}"'
              for a in addresses]
    return "\n".join(lines) + "\n"


def tap_steps(env: Env, cfg, addresses: list[str]) -> tuple[list[Step], list[str]]:
    taps = [p.tap for p in cfg.ports if p.tap]
    if not taps:
        if addresses:
            raise UsageError("--tap-address: the config's ports have no TAP (tap = \"\"): nothing to address")
        return [], ["no exception-path TAP (every port has tap = \"\"): ARP and CARP never reach the kernel"]
    tap = taps[0]
    if not SAFE_NAME_RE.fullmatch(tap):
        raise UsageError(f"TAP name {tap!r}: pydp-bootstrap writes names of letters, digits and '_.@+-' only")
    if not addresses:
        return [], [f"the TAP {tap} gets no address from pydp-bootstrap (--tap-address): give it the appliance's "
                    f"own address on the segment by other means, or CARP does not run"]

    def reload() -> None:
        if env.live and shutil.which("udevadm"):
            st.run_cmd(["udevadm", "control", "--reload"])

    return [st.file_step("tap udev", env.file(UDEV_RULE), tap_rule(tap, addresses),
                         f"TAP {tap} gets {', '.join(addresses)} whenever the data plane creates it", after=reload)], []


# ---- systemd ----

def _script(name: str) -> str:
    """The console script installed next to this pydp (the same environment as pydp-bootstrap itself)."""
    path = Path(sysconfig.get_path("scripts")) / name
    return str(path) if path.exists() else (shutil.which(name) or f"/usr/local/bin/{name}")


SHIPPED_BIN = "/opt/pydp/bin/"
NIC_MARK = "# pydp-bootstrap: ExecStartPre= lines for the NICs follow\n"


def deploy_dir() -> Path:
    """deploy/ as installed with the package (<prefix>/share/pydp), else the source checkout's deploy/."""
    for d in (Path(sysconfig.get_path("data")) / "share" / "pydp", Path(__file__).resolve().parents[2] / "deploy"):
        if (d / "systemd").is_dir():
            return d
    raise BootstrapError("the shipped systemd units are missing (<prefix>/share/pydp/systemd): reinstall pydp "
                         "(scripts/setup.sh or the pydp package)")


def shipped_unit(name: str) -> str:
    """A unit of deploy/systemd with the program paths of this installation (the venv pydp-bootstrap runs from)."""
    text = (deploy_dir() / "systemd" / name).read_text()
    bindir = str(Path(_script("pydp-dataplane")).parent) + "/"
    return (f"# written by pydp-bootstrap from pydp's deploy/systemd/{name} (docs/bootstrap.md)\n"
            + text.replace(SHIPPED_BIN, bindir))


def dataplane_unit(nics: list[Nic]) -> str:
    pre = []
    for nic in nics:
        # "+": these run with full privileges, outside the service's sandbox (they write sysfs and sysctls)
        if nic.pci:
            devbind = shutil.which("dpdk-devbind.py") or "/usr/bin/dpdk-devbind.py"
            pre.append(f"ExecStartPre=+{devbind} --bind=vfio-pci {nic.pci}")
        elif nic.iface:
            # "-": a kernel without IPv6 has no such key
            pre.append(f"ExecStartPre=+-{shutil.which('sysctl') or '/usr/sbin/sysctl'} -qw "
                       f"net/ipv6/conf/{nic.iface}/disable_ipv6=1")
            pre.append(f"ExecStartPre=+{shutil.which('ip') or '/usr/sbin/ip'} link set dev {nic.iface} up")
    text = shipped_unit("pydp-dataplane.service")
    if NIC_MARK not in text:
        raise BootstrapError("deploy/systemd/pydp-dataplane.service has no NIC line marker: reinstall pydp")
    return text.replace(NIC_MARK, NIC_MARK + "".join(line + "\n" for line in pre))


def control_unit() -> str:
    return shipped_unit("pydp-control.service")


def _init_name() -> str:
    try:
        return Path("/proc/1/comm").read_text().strip()
    except OSError:
        return "unknown"


def systemd_running() -> bool:
    """sd_booted(): systemd is the init system when /run/systemd/system exists."""
    return Path("/run/systemd/system").is_dir()


def symlink_step(link: Path, target: str, description: str) -> Step:
    def done() -> bool:
        return link.is_symlink() and os.readlink(link) == target

    def make() -> None:
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)

    return Step(f"enable {link.name}", description, done, make, lambda: f"ln -s {target} {link}")


def unit_steps(env: Env, nics: list[Nic], now: bool) -> tuple[list[Step], list[str]]:
    units = {"pydp-dataplane.service": dataplane_unit(nics), "pydp-control.service": control_unit()}
    out = []
    for name, text in units.items():
        out.append(st.file_step(f"unit {name}", env.file(f"{UNIT_DIR}/{name}"), text, f"systemd unit {name}"))
    for name in units:
        # what `systemctl enable` does for WantedBy=multi-user.target, done here so it works without systemd
        out.append(symlink_step(env.file(f"{UNIT_DIR}/multi-user.target.wants/{name}"), f"{UNIT_DIR}/{name}",
                                f"{name} enabled (multi-user.target)"))
    if not env.live:
        return out, [f"files were written under {env.root}: systemd there loads the units at its next boot"]
    if not systemd_running():
        return out, [f"systemd is not running here (PID 1 is {_init_name()}): the units are enabled for the next "
                     f"boot; to start now by hand: pydp-dataplane --config {CONFIG_PATH} and pydp-control "
                     f"--db {STORE_PATH}"]

    def loaded() -> bool:
        proc = subprocess.run(["systemctl", "show", "-p", "NeedDaemonReload", "--value", *units],
                              capture_output=True, text=True)
        return proc.returncode == 0 and set(proc.stdout.split()) == {"no"}

    out.append(Step("daemon-reload", "systemd has loaded the units", loaded,
                    lambda: st.run_cmd(["systemctl", "daemon-reload"]), lambda: "systemctl daemon-reload"))
    if now:
        def active() -> bool:
            return subprocess.run(["systemctl", "is-active", "-q", *units]).returncode == 0

        out.append(Step("start", "pydp-dataplane and pydp-control running", active,
                        lambda: st.run_cmd(["systemctl", "start", *units]), lambda: "systemctl start " + " ".join(units)))
    return out, []


# ---- the store ----

def import_step(env: Env, cfg) -> Step:
    from pydp import config as pconfig

    db = env.file(STORE_PATH)
    path = env.file(CONFIG_PATH)
    pydpctl = _script("pydpctl")

    def clusters(c) -> list:
        return pconfig.to_dict(c, include_secrets=True)["cluster"]

    def imported() -> bool:
        if not db.exists():
            return False
        text = st.run_cmd([pydpctl, "--db", str(db), "export", "--include-secrets", "-"]).stdout
        return clusters(pconfig.loads(text, "<store>", require_ports=False)) == clusters(cfg)

    def do_import() -> None:
        db.parent.mkdir(parents=True, exist_ok=True)
        st.run_cmd([pydpctl, "--db", str(db), "import", str(path)])

    return Step("import", f"the store {db} holds the config's {len(cfg.clusters)} cluster(s)", imported, do_import,
                lambda: f"pydpctl --db {db} import {path}")


# ---- the command ----

def _tap_address(text: str) -> str:
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise UsageError(f"--tap-address {text!r} is not an address with its prefix (e.g. 198.51.100.2/24)") from None
    if "/" not in text or iface.ip.is_multicast or iface.ip.is_loopback or iface.ip.is_unspecified:
        raise UsageError(f"--tap-address {text!r}: give a unicast address with its prefix length (e.g. "
                         f"198.51.100.2/24)")
    return str(iface)


def hugepages_needed(cfg) -> tuple[int, str]:
    """The 2 MiB pages the data plane of cfg takes, and what takes them: the EAL's memory_mb (with hugepages on),
    and the shared-memory region (flow tables, Maglev tables, counters) when dataplane.shm_path is on
    /dev/hugepages, the mount this script makes."""
    dp = cfg.dataplane
    pages, what = 0, []
    if dp.hugepages:
        pages += -(-dp.memory_mb // 2)
        what.append(f"dataplane.memory_mb = {dp.memory_mb}")
    if dp.shm_path.startswith("/dev/hugepages/"):
        from pydp.shm import region_bytes     # the compiled module: only when there is a region to size

        workers = len(dp.worker_lcores)
        maglev = max([dp.maglev_size] + [c.maglev_size or 0 for c in cfg.clusters])
        shm = -(-region_bytes(workers=workers, ports=max(1, len(cfg.ports)), maglev_max=maglev,
                              flow_capacity=dp.flow_capacity) // (2 << 20))
        pages += shm
        what.append(f"the shared memory of {workers} worker{'s' if workers != 1 else ''} at dataplane.flow_capacity "
                    f"= {dp.flow_capacity} ({shm * 2} MiB)")
    return pages, " and ".join(what) or "the data plane"


def plan(args, env: Env, ipr) -> tuple[list[Step], list[str]]:
    if not 1 <= args.hugepages <= 1 << 20:
        raise UsageError(f"--hugepages {args.hugepages}: give a number of 2 MiB pages from 1 to {1 << 20}")
    if args.xdp and (not args.nic or pdevice.pci_address(args.nic)):
        raise UsageError("--xdp makes --nic IFACE an af_xdp port (a PCI NIC is bound to vfio-pci; a --config's own "
                         "ports keep their devices)")
    if args.vfio_noiommu and args.nic and not pdevice.pci_address(args.nic):
        raise UsageError("--vfio-noiommu is for a PCI NIC (--nic 0000:03:00.0); a kernel interface needs no vfio")
    addresses = [_tap_address(a) for a in args.tap_address]
    text, cfg = build_config(args, ipr)
    pages, what = hugepages_needed(cfg)
    if pages > args.hugepages:
        raise UsageError(f"{what} need {pages} hugepages of 2 MiB: --hugepages {args.hugepages} is too few")
    notes: list[str] = []
    steps = [check_step("check cpu", "CPU", lambda: check_cpu(env)),
             check_step("check memory", "memory", lambda: check_memory(env, args.hugepages)),
             check_step("check kernel", "kernel", lambda: check_kernel(env))]
    nics = [port_nic(p.device) for p in cfg.ports]
    nic_changes = []
    for i, nic in enumerate(nics):
        if nic is not None:
            checks, changes = nic_steps(env, ipr, i, nic, args)
            steps += checks
            nic_changes += changes
    if args.no_install:
        pass
    elif env.live:
        steps.append(package_step())
    else:
        notes.append(f"packages are not installed under --root: install {' '.join(PACKAGES)} in the image")
    steps += hugepage_steps(env, args.hugepages)
    steps += nic_changes
    steps.append(st.file_step("config", env.file(CONFIG_PATH), text, f"appliance config {CONFIG_PATH}", mode=0o600))
    more, why = tap_steps(env, cfg, addresses)
    steps += more
    notes += why
    more, why = unit_steps(env, [n for n in nics if n is not None], args.now)
    steps += more
    notes += why
    if args.config:
        steps.append(import_step(env, cfg))
    return steps, notes


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("appliance", help="bring a pydp appliance up: checks, packages, hugepages, NIC, config, "
                                         "systemd units", description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nic", metavar="IFACE|PCI",
                   help="the data NIC: a PCI address (bound to vfio-pci) or a kernel interface (af_packet vdev); "
                        "it becomes the first [[port]]'s device")
    p.add_argument("--xdp", action="store_true", help="use an af_xdp vdev instead of af_packet for an interface")
    p.add_argument("--config", metavar="FILE", help="the appliance config to install and import (docs/config.md)")
    p.add_argument("--tap-address", action="append", default=[], metavar="CIDR",
                   help="the appliance's own address on the data segment, for the exception-path TAP (repeatable)")
    p.add_argument("--hugepages", type=int, default=1024, metavar="N", help="2 MiB hugepages to reserve (1024)")
    p.add_argument("--no-install", action="store_true", help="do not install OS packages")
    p.add_argument("--force", action="store_true", help="take a NIC the kernel still uses (addresses, routes)")
    p.add_argument("--vfio-noiommu", action="store_true",
                   help="use vfio-pci without an IOMMU (unsafe: no DMA isolation; VMs without a vIOMMU)")
    p.add_argument("--now", action="store_true", help="also start the units (when systemd runs)")
    p.add_argument("--root", default="/", metavar="DIR", help="write every file under DIR (tests, image builds)")
    p.add_argument("--procfs", default="/proc", metavar="DIR", help=argparse.SUPPRESS)
    p.add_argument("--sysfs", default="/sys", metavar="DIR", help=argparse.SUPPRESS)
    p.add_argument("--dry-run", action="store_true", help="print every step and what it would change; change nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace):
    from pyroute2 import IPRoute

    env = Env(Path(args.root).resolve(), Path(args.procfs), Path(args.sysfs))
    with IPRoute() as ipr:
        steps, notes = plan(args, env, ipr)
        outcome = st.run_steps(steps, dry_run=args.dry_run)
    return outcome, {"notes": notes, "config_file": str(env.file(CONFIG_PATH))}
