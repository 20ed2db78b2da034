"""pydp-bootstrap appliance, run for real in a network namespace with a veth as the data NIC.

Files go under a temporary --root; the live steps run against this machine (its hugepages are already reserved and
mounted, so they report "already done") and the namespace (the veth is brought up). The failure paths the machine
cannot produce for real are driven through --procfs / --sysfs trees the test builds: a CPU without SSE4.2, an old
kernel, a kernel that cannot reserve the pages, and a PCI NIC (there is none here: no PCI device is bound, the plan
for one is checked with --dry-run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
from pathlib import Path

import pytest

from netlab import DataplaneProcess, eventually, netns, ns_run, run, veth
from pydp import config as pconfig

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "appliance.toml"
BASE = ["appliance", "--no-install", "--hugepages", "512"]


def host_hugepages_ready() -> bool:
    """512 pages reserved and hugetlbfs mounted: the live hugepage steps then find their work done, so a test never
    changes the host's reservation (other helpers' data planes use it)."""
    mounted = any(line.split()[1:3] == ["/dev/hugepages", "hugetlbfs"]
                  for line in Path("/proc/mounts").read_text().splitlines())
    return mounted and int(Path("/proc/sys/vm/nr_hugepages").read_text()) >= 512


@pytest.fixture
def ns():
    """A namespace with a veth pair: eth1 (the data NIC, down, no address) and peer1."""
    if not host_hugepages_ready():
        pytest.skip("needs 512 hugepages reserved and hugetlbfs on /dev/hugepages (scripts/setup.sh)")
    with netns("pydpt-app") as name:
        veth(name, "eth1", "peer1")
        run("ip", "-n", name, "link", "set", "eth1", "down")
        ns_run(name, "sysctl", "-qw", "net.ipv6.conf.eth1.disable_ipv6=0")
        yield name


def files(root: Path) -> dict[str, str]:
    """Every file and symlink under root: path -> content (symlinks: '-> target')."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = "/" + str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + str(p.readlink())
        elif p.is_file():
            out[rel] = p.read_text(errors="replace")
    return out


def ipv6_off(ns: str, dev: str) -> bool:
    return ns_run(ns, "sysctl", "-n", f"net.ipv6.conf.{dev}.disable_ipv6").stdout.strip() == "1"


def link_up(ns: str, dev: str) -> bool:
    return "UP" in json.loads(run("ip", "-j", "-n", ns, "link", "show", "dev", dev).stdout)[0]["flags"]


def steps_of(proc: subprocess.CompletedProcess) -> dict[str, str]:
    return {s["step"]: s["status"] for s in json.loads(proc.stdout)["steps"]}


def test_appliance_dry_run_then_run_then_nothing(ns, tmp_path, bootstrap):
    root = tmp_path / "root"
    args = [*BASE, "--nic", "eth1", "--tap-address", "198.51.100.2/24", "--tap-address", "2001:db8:1::2/64",
            "--root", str(root), "--json"]

    dry = bootstrap(ns, *args, "--dry-run")
    plan = steps_of(dry)
    assert list(plan) == [
        "check cpu", "check memory", "check kernel", "check in-use eth1",
        "hugepages conf", "hugepages", "hugetlbfs", "fstab", "ipv6 off eth1", "link eth1", "config", "tap udev",
        "unit pydp-dataplane.service", "unit pydp-control.service",
        "enable pydp-dataplane.service", "enable pydp-control.service"]
    assert plan["link eth1"] == plan["config"] == plan["unit pydp-control.service"] == "would-change"
    assert not root.exists() and not link_up(ns, "eth1") and not ipv6_off(ns, "eth1"), "a dry run changed something"

    first = json.loads(bootstrap(ns, *args).stdout)
    assert first["ok"] and first["changed"] == sum(s == "would-change" for s in plan.values())
    assert link_up(ns, "eth1") and ipv6_off(ns, "eth1")
    written = files(root)
    assert set(written) == {
        "/etc/pydp/appliance.toml", "/etc/sysctl.d/80-pydp-hugepages.conf", "/etc/fstab",
        "/etc/udev/rules.d/80-pydp-tap.rules",
        "/etc/systemd/system/pydp-dataplane.service", "/etc/systemd/system/pydp-control.service",
        "/etc/systemd/system/multi-user.target.wants/pydp-dataplane.service",
        "/etc/systemd/system/multi-user.target.wants/pydp-control.service"}

    cfg = pconfig.load(root / "etc/pydp/appliance.toml")
    assert [(p.name, p.device, p.tap) for p in cfg.ports] == [("wan0", "net_af_packet0,iface=eth1", "pydp-wan0")]
    assert (root / "etc/pydp/appliance.toml").stat().st_mode & 0o777 == 0o600
    assert "vm.nr_hugepages = 512\n" in written["/etc/sysctl.d/80-pydp-hugepages.conf"]
    assert written["/etc/fstab"] == "hugetlbfs /dev/hugepages hugetlbfs pagesize=2M 0 0\n"
    rule = written["/etc/udev/rules.d/80-pydp-tap.rules"]
    assert 'KERNEL=="pydp-wan0", RUN+="' in rule and "address add 198.51.100.2/24 dev pydp-wan0" in rule
    assert "address add 2001:db8:1::2/64 dev pydp-wan0" in rule

    dp = written["/etc/systemd/system/pydp-dataplane.service"]
    assert "Restart=on-failure" in dp and "--config /etc/pydp/appliance.toml" in dp
    assert "net/ipv6/conf/eth1/disable_ipv6=1" in dp
    assert "link set dev eth1 up" in dp and "[Install]\nWantedBy=multi-user.target" in dp
    ctl = written["/etc/systemd/system/pydp-control.service"]
    assert "Restart=on-failure" in ctl and "Wants=pydp-dataplane.service" in ctl
    assert "After=pydp-dataplane.service" in ctl
    assert "\nRequires=" not in ctl and "\nBindsTo=" not in ctl     # survives a data plane restart
    assert written["/etc/systemd/system/multi-user.target.wants/pydp-control.service"] == \
        "-> /etc/systemd/system/pydp-control.service"
    # the shipped units (deploy/systemd) with this installation's programs: the venv the tests run from
    scripts = sysconfig.get_path("scripts")
    assert f"ExecStart={scripts}/pydp-dataplane --config /etc/pydp/appliance.toml" in dp
    assert f"ExecStart={scripts}/pydp-control --db /var/lib/pydp/pydp.db" in ctl
    assert "/opt/pydp/" not in dp + ctl or scripts == "/opt/pydp/bin"
    for unit in (dp, ctl):
        assert "Type=notify" in unit and "WatchdogSec=" in unit
        assert "NoNewPrivileges=yes" in unit and "ProtectSystem=strict" in unit and "ProtectHome=yes" in unit
        assert "CapabilityBoundingSet=CAP_" in unit
    assert "RuntimeDirectory=pydp" in ctl and "StateDirectory=pydp" in ctl
    assert "ExecStartPre=+" in dp           # the NIC steps run outside the sandbox
    # systemd itself checks the units (systemd-analyze comes with the systemd package: scripts/setup.sh); man
    # finds the pages of Documentation= under the venv (setup.sh generates them)
    units = [str(root / "etc/systemd/system" / u) for u in ("pydp-dataplane.service", "pydp-control.service")]
    env = {**os.environ, "MANPATH": f"{sysconfig.get_path('data')}/share/man:"}
    check = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, cwd=tmp_path,
                           env=env)
    assert check.returncode == 0 and not check.stderr, check.stderr
    # and rates their sandboxing (docs/install.md has the table): both below 5.0, "OK" (the generated units
    # before them were 9.6, "UNSAFE")
    for u in units:
        sec = subprocess.run(["systemd-analyze", "security", "--offline=yes", u], capture_output=True, text=True,
                             cwd=tmp_path, env=env)
        exposure = float(sec.stdout.rsplit("Overall exposure level for ", 1)[1].split(":")[1].split()[0])
        assert exposure < 5.0, sec.stdout[-400:]

    second = json.loads(bootstrap(ns, *args).stdout)
    assert second["changed"] == 0 and set(s["status"] for s in second["steps"]) == {"ok"}
    assert files(root) == written
    text = bootstrap(ns, *args[:-1]).stdout
    assert "nothing to do: every step is already done" in text


def test_appliance_config_is_installed_and_imported(ns, tmp_path, bootstrap):
    """--config with --nic: the file's first port gets the NIC (af_xdp here), the store gets its clusters."""
    root = tmp_path / "root"
    args = [*BASE, "--nic", "eth1", "--xdp", "--config", str(EXAMPLE), "--root", str(root), "--json"]
    first = steps_of(bootstrap(ns, *args))
    assert first["import"] == "changed"
    cfg = pconfig.load(root / "etc/pydp/appliance.toml")
    want = pconfig.load(EXAMPLE)
    # lcores "0-2": two workers, one af_xdp queue each
    assert cfg.ports[0].device == "net_af_xdp0,iface=eth1,start_queue=0,queue_count=2"
    assert pconfig.to_dict(cfg)["cluster"] == pconfig.to_dict(want)["cluster"]
    db = root / "var/lib/pydp/pydp.db"
    # the pydpctl of the installation under test (not whichever is first on PATH)
    export = run(str(Path(sysconfig.get_path("scripts")) / "pydpctl"), "--db", str(db), "export", "-").stdout
    stored = pconfig.loads(export, "<store>", require_ports=False)
    assert [c.name for c in stored.clusters] == ["web", "vpn6"]
    assert [str(e.ip) for e in stored.clusters[0].edges] == ["198.51.100.21", "198.51.100.22", "198.51.100.23"]

    again = steps_of(bootstrap(ns, *args))
    assert set(again.values()) == {"ok"}, again


def test_appliance_without_nic_uses_the_config_ports(ns, tmp_path, bootstrap):
    """No --nic: the config's own [[port]] devices are checked (af_packet on eth1 here) and the file is installed
    as written, comments and all."""
    root = tmp_path / "root"
    out = steps_of(bootstrap(ns, *BASE, "--config", str(EXAMPLE), "--root", str(root), "--json", "--dry-run"))
    assert out["check in-use eth1"] == "ok" and out["link eth1"] == "would-change"
    bootstrap(ns, *BASE, "--config", str(EXAMPLE), "--root", str(root))
    assert (root / "etc/pydp/appliance.toml").read_text() == EXAMPLE.read_text()


@pytest.mark.parametrize("args, code, message", [
    (["--nic", "eth9"], 2, "unknown interface 'eth9' (this network namespace has: eth1, lo, peer1)"),
    (["--nic", "eth1;reboot"], 2, "unknown interface 'eth1;reboot'"),
    (["--nic", "0000:7f:1f.7"], 2, "unknown PCI device 0000:7f:1f.7"),
    ([], 2, "give the data NIC with --nic"),
    (["--nic", "eth1", "--tap-address", "198.51.100.2"], 2, "give a unicast address with its prefix length"),
    (["--nic", "eth1", "--hugepages", "8"], 2, "dataplane.memory_mb = 512 and the shared memory of 1 worker at "
                                                "dataplane.flow_capacity = 2097152 (234 MiB) need 373 hugepages"),
    (["--nic", "eth1", "--hugepages", "300"], 2, "need 373 hugepages of 2 MiB: --hugepages 300 is too few"),
    (["--nic", "eth1", "--config", "/nonexistent.toml"], 2, "--config /nonexistent.toml: No such file"),
    (["--nic", "0000:03:00.0", "--xdp"], 2, "--xdp makes --nic IFACE an af_xdp port"),
    (["--nic", "eth1", "--vfio-noiommu"], 2, "--vfio-noiommu is for a PCI NIC"),
])
def test_bad_input_is_refused_and_writes_nothing(ns, tmp_path, bootstrap, args, code, message):
    root = tmp_path / "root"
    base = [a for a in BASE if a not in ("--hugepages", "512")] if "--hugepages" in args else BASE
    proc = bootstrap(ns, *base, *args, "--root", str(root), check=False)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not root.exists() and not link_up(ns, "eth1")


def test_nic_in_use_is_refused_unless_forced(ns, tmp_path, bootstrap):
    root = tmp_path / "root"
    run("ip", "-n", ns, "addr", "add", "192.0.2.9/24", "dev", "eth1")
    run("ip", "-n", ns, "link", "set", "eth1", "up")
    run("ip", "-n", ns, "route", "add", "203.0.113.0/24", "via", "192.0.2.1")
    proc = bootstrap(ns, *BASE, "--nic", "eth1", "--root", str(root), check=False)
    assert proc.returncode == 1
    assert proc.stderr == ("pydp-bootstrap: error: NIC in use: the kernel still uses eth1 (address 192.0.2.9/24, "
                           "route 192.0.2.0/24, route 203.0.113.0/24); the data plane takes the whole port: move "
                           "these off it, or use --force\n")
    assert not root.exists(), "a failed check must come before any change"
    forced = steps_of(bootstrap(ns, *BASE, "--nic", "eth1", "--root", str(root), "--force", "--json"))
    assert forced["check in-use eth1"] == "ok" and forced["config"] == "changed"


def fake_sysfs(tmp_path: Path, iommu: bool) -> Path:
    """A /sys with one PCI NIC (0000:03:00.0, no driver) and an IOMMU or none."""
    sysfs = tmp_path / "sys"
    (sysfs / "bus/pci/devices/0000:03:00.0").mkdir(parents=True)
    (sysfs / "kernel/iommu_groups").mkdir(parents=True)
    if iommu:
        (sysfs / "kernel/iommu_groups/7").mkdir()
    return sysfs


def test_pci_nic_without_iommu_is_refused(ns, tmp_path, bootstrap):
    root = tmp_path / "root"
    sysfs = fake_sysfs(tmp_path, iommu=False)
    proc = bootstrap(ns, *BASE, "--nic", "0000:03:00.0", "--sysfs", str(sysfs), "--root", str(root), check=False)
    assert proc.returncode == 1
    assert proc.stderr == ("pydp-bootstrap: error: no IOMMU: enable intel_iommu=on/amd_iommu=on or use "
                           "--vfio-noiommu\n")
    assert not root.exists()


@pytest.mark.parametrize("iommu, extra", [(True, []), (False, ["--vfio-noiommu"])])
def test_pci_nic_plan(ns, tmp_path, bootstrap, iommu, extra):
    """The steps for a PCI NIC (dry run: no PCI NIC exists on this machine to bind for real)."""
    sysfs = fake_sysfs(tmp_path, iommu)
    out = json.loads(bootstrap(ns, *BASE, "--nic", "03:00.0", *extra, "--sysfs", str(sysfs), "--root",
                               str(tmp_path / "root"), "--json", "--dry-run").stdout)
    status = {s["step"]: s for s in out["steps"]}
    assert status["check iommu 0000:03:00.0"]["status"] == "ok"
    assert status["modprobe vfio-pci"]["detail"] == "modprobe vfio-pci"
    assert status["bind 0000:03:00.0"]["detail"] == "dpdk-devbind.py --bind=vfio-pci 0000:03:00.0 (was none)"
    assert ("vfio noiommu" in status) == (not iommu)
    assert status["modules-load"]["status"] == "would-change"


def fake_procfs(tmp_path: Path, *, flags: str = "fpu sse4_2 avx2", release: str = "6.1.0-13-amd64",
                huge_total: int = 0) -> Path:
    proc = tmp_path / "proc"
    (proc / "sys/kernel").mkdir(parents=True)
    (proc / "sys/vm").mkdir(parents=True)
    (proc / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n\n")
    (proc / "meminfo").write_text(f"MemTotal:        8000000 kB\nHugePages_Total:   {huge_total}\n"
                                  f"Hugepagesize:       2048 kB\n")
    (proc / "sys/kernel/osrelease").write_text(release + "\n")
    (proc / "sys/vm/nr_hugepages").write_text("0\n")
    (proc / "mounts").write_text("")
    return proc


@pytest.mark.parametrize("kw, message", [
    ({"flags": "fpu sse4_1"}, "the CPU lacks SSE4.2"),
    ({"release": "4.19.0-21-amd64"}, "kernel 4.19.0-21-amd64 is too old: pydp needs Linux 5.0 or later"),
])
def test_machine_checks(ns, tmp_path, bootstrap, kw, message):
    procfs = fake_procfs(tmp_path, **kw)
    proc = bootstrap(ns, *BASE, "--nic", "eth1", "--procfs", str(procfs), "--root", str(tmp_path / "root"),
                     check=False)
    assert proc.returncode == 1 and message in proc.stderr
    assert not (tmp_path / "root").exists()


def test_no_hugepages(ns, tmp_path, bootstrap):
    """The kernel reserves fewer pages than asked: a clear error, and the partial reservation is given back."""
    procfs = fake_procfs(tmp_path, huge_total=0)
    proc = bootstrap(ns, *BASE, "--nic", "eth1", "--procfs", str(procfs), "--root", str(tmp_path / "root"),
                     check=False)
    assert proc.returncode == 1
    assert ("pydp-bootstrap: error: no hugepages: the kernel reserved 0 of the 512 pages asked (memory too small "
            "or fragmented)") in proc.stderr
    assert (procfs / "sys/vm/nr_hugepages").read_text() == "0\n"
    assert "[FAILED ] at least 512 hugepages reserved now" in proc.stdout
    assert "[skipped] appliance config /etc/pydp/appliance.toml" in proc.stdout


SMALL = """
[dataplane]
lcores = "0-1"
flow_capacity = 65536
memory_mb = 256
mbufs = 8191
"""


@pytest.mark.dpdk
def test_the_bootstrapped_appliance_runs(ns, tmp_path, bootstrap):
    """What bootstrap wrote brings a real data plane up: the config's af_packet port on eth1 and its TAP; then the
    udev rule's command, run as udev runs it (no udev in a test namespace), gives the TAP its address."""
    root = tmp_path / "root"
    small = tmp_path / "small.toml"
    small.write_text(SMALL)
    bootstrap(ns, *BASE, "--nic", "eth1", "--config", str(small), "--tap-address", "198.51.100.2/24",
              "--root", str(root))
    text = (root / "etc/pydp/appliance.toml").read_text()
    with DataplaneProcess(ns, text, tmp_path, args=["--own-all"]):
        eventually(lambda: run("ip", "-n", ns, "link", "show", "dev", "pydp-wan0", check=False).returncode == 0,
                   10, "the TAP pydp-wan0")
        rule = (root / "etc/udev/rules.d/80-pydp-tap.rules").read_text()
        command = rule.split('RUN+="', 1)[1].split('"', 1)[0].split()     # udev splits RUN on spaces, no shell
        ns_run(ns, *command)
        assert "198.51.100.2/24" in run("ip", "-n", ns, "-4", "addr", "show", "dev", "pydp-wan0").stdout


def test_pci_nic_in_use_by_the_kernel_is_refused(ns, tmp_path, bootstrap):
    """A PCI NIC whose kernel interface (sysfs .../net/NAME: here the namespace's eth1) carries an address: binding
    it to vfio-pci would take that away, so bootstrap refuses before changing anything."""
    sysfs = fake_sysfs(tmp_path, iommu=True)
    (sysfs / "bus/pci/devices/0000:03:00.0/net/eth1").mkdir(parents=True)
    run("ip", "-n", ns, "addr", "add", "192.0.2.9/24", "dev", "eth1")
    run("ip", "-n", ns, "link", "set", "eth1", "up")
    root = tmp_path / "root"
    proc = bootstrap(ns, *BASE, "--nic", "0000:03:00.0", "--sysfs", str(sysfs), "--root", str(root), check=False)
    assert proc.returncode == 1
    assert "NIC in use: the kernel still uses eth1 (address 192.0.2.9/24, route 192.0.2.0/24)" in proc.stderr
    assert not root.exists()


def test_invalid_config_is_refused_with_its_errors(ns, tmp_path, bootstrap):
    bad = tmp_path / "bad.toml"
    bad.write_text('[dataplane]\nlcores = "0"\nflw_capacity = 1\n')
    root = tmp_path / "root"
    proc = bootstrap(ns, *BASE, "--nic", "eth1", "--config", str(bad), "--root", str(root), check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "dataplane.flw_capacity: unknown key (did you mean 'flow_capacity'?)" in proc.stderr
    assert not root.exists()


def test_live_dry_run_plans_packages_and_changes_nothing(ns, bootstrap):
    """On the real root: the package step is planned (apt-get only for what dpkg says is missing), the files would
    go to /etc, the systemd situation is reported, and nothing is written."""
    targets = [Path("/etc/pydp/appliance.toml"), Path("/etc/systemd/system/pydp-dataplane.service"),
               Path("/etc/sysctl.d/80-pydp-hugepages.conf")]
    before = [p.exists() for p in targets]
    out = json.loads(bootstrap(ns, "appliance", "--nic", "eth1", "--hugepages", "512", "--dry-run", "--json").stdout)
    steps = {s["step"]: s for s in out["steps"]}
    assert steps["packages"]["status"] in ("ok", "would-change")
    if steps["packages"]["status"] == "would-change":
        assert steps["packages"]["detail"].startswith("apt-get install ")
    assert steps["config"]["status"] == "would-change" or before[0]
    assert out["config_file"] == "/etc/pydp/appliance.toml"
    assert any("systemd" in n for n in out["notes"]) or "daemon-reload" in steps
    assert [p.exists() for p in targets] == before and not link_up(ns, "eth1")
