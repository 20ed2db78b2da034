"""scripts/package.sh builds the appliance's Debian package; unpacked, its programs run from /opt/pydp.

The package is not installed on the shared test machine (that would replace /opt/pydp under everyone's feet):
it is unpacked into a scratch root (dpkg-deb -x) and that root's /opt is bind-mounted over /opt in a private mount
namespace, where /usr/bin/pydpctl -> /opt/pydp/bin/pydpctl runs exactly as on an appliance. apt resolves its
dependencies in a simulated install (apt-get install -s ./pydp_*.deb).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import pydp

ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = ["pydp-dataplane", "pydp-control", "pydpctl", "pydp-carp", "pydp-bootstrap", "pydp-lab", "pydp-demo"]


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    if shutil.which("dpkg-deb") is None:
        pytest.fail("dpkg-deb is missing (dpkg)")
    out = tmp_path_factory.mktemp("deb")
    proc = subprocess.run(["bash", str(ROOT / "scripts/package.sh"), "--out", str(out)], capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    debs = list(out.glob("pydp_*.deb"))
    assert len(debs) == 1
    return debs[0]


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, timeout=60,
                          check=True).stdout.strip()


@pytest.mark.root
def test_package_metadata(deb):
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout
    assert deb.name == f"pydp_{pydp.__version__}_{arch.strip()}.deb"
    assert field(deb, "Package") == "pydp" and field(deb, "Version") == pydp.__version__
    depends = field(deb, "Depends")
    assert "python3 (>= 3.11)" in depends and "dpdk" in depends and "librte-eal23" in depends
    names = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, timeout=60,
                           check=True).stdout
    for p in PROGRAMS:
        assert f"./usr/bin/{p} -> /opt/pydp/bin/{p}" in names
        assert f"./usr/share/man/man1/{p}.1.gz" in names
        assert f"./usr/share/bash-completion/completions/{p} -> pydp" in names
    for path in ("./lib/systemd/system/pydp-dataplane.service", "./lib/systemd/system/pydp-control.service",
                 "./etc/default/pydp-control", "./opt/pydp/pyvenv.cfg", "./usr/share/doc/pydp/examples/appliance.toml"):
        assert path in names
    assert "matplotlib" not in names and "/__pycache__/" not in names
    conffiles = subprocess.run(["dpkg-deb", "-I", str(deb), "conffiles"], capture_output=True, text=True,
                               check=True).stdout
    assert conffiles.split() == ["/etc/default/pydp-control"]


@pytest.mark.root
def test_apt_resolves_the_package(deb):
    """apt accepts the file and every dependency is in the Debian archive (a simulation: nothing installed)."""
    proc = subprocess.run(["apt-get", "install", "-s", "-o", "Debug::NoLocking=1", str(deb)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"Inst pydp ({pydp.__version__}" in proc.stdout or f"Conf pydp ({pydp.__version__}" in proc.stdout


@pytest.mark.root
def test_unpacked_package_runs(deb, tmp_path):
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, timeout=300)
    # no path of the staging directory survived in the venv
    left = subprocess.run(["grep", "-rlI", "pydp-package.", str(root / "opt/pydp")], capture_output=True, text=True)
    assert left.stdout == ""
    for p in PROGRAMS:
        assert (root / "opt/pydp/bin" / p).read_text().startswith("#!/opt/pydp/bin/python\n")
    script = "mount --bind {root}/opt /opt && " + " && ".join(f"{root}/usr/bin/{p} --version" for p in PROGRAMS)
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           script.format(root=root)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:-1] == [f"{p} {pydp.__version__}" for p in PROGRAMS]
    # the units name the venv's programs, and systemd accepts them with the package's man pages
    unit = (root / "lib/systemd/system/pydp-control.service").read_text()
    assert "ExecStart=/opt/pydp/bin/pydp-control " in unit
    page = subprocess.run(["sh", "-c", f"zcat {root}/usr/share/man/man1/pydpctl.1.gz | groff -man -Tascii -ww -z"],
                          capture_output=True, text=True, timeout=60)
    assert page.returncode == 0 and page.stderr == ""
    assert not Path("/opt/pydp/bin/pydpctl").exists() or os.path.realpath("/opt/pydp") != str(root / "opt/pydp")
