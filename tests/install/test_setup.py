"""scripts/setup.sh installs pydp into a virtual environment at a prefix, made with Debian's own Python (PEP 668)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_PYTHON = "/usr/bin/python3"


def _env_sh(**env: str) -> dict[str, str]:
    """What scripts/env.sh resolves for these variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PYDP_") and k != "PYTHON"}
    proc = subprocess.run(["bash", "-c", f". {ROOT}/scripts/env.sh; echo \"$PYDP_PREFIX|$PYDP_PY|$PYDP_LINKS|"
                                         f"$PYDP_DEV_VENV|$PYDP_BASE_PYTHON\""],
                          env={**base, **env}, capture_output=True, text=True, timeout=30, check=True)
    keys = ["prefix", "py", "links", "dev", "base"]
    return dict(zip(keys, proc.stdout.strip().split("|")))


def test_env_defaults():
    got = _env_sh()
    assert got == {"prefix": "/opt/pydp", "py": "/opt/pydp/bin/python", "links": "/usr/local", "dev": "0",
                   "base": DEBIAN_PYTHON}


def test_env_a_venv_as_python_is_the_prefix():
    """A developer's PYTHON=/some/venv/bin/python: pydp goes into that venv, nothing is linked onto PATH."""
    if sys.prefix == sys.base_prefix:
        pytest.skip("the tests do not run in a virtual environment")
    got = _env_sh(PYTHON=sys.executable)
    assert got["prefix"] == sys.prefix and got["dev"] == "1" and got["links"] == ""
    got = _env_sh(PYTHON=sys.executable, PYDP_PREFIX="/tmp/x/", PYDP_LINKS="/tmp/l")
    assert got["prefix"] == "/tmp/x" and got["dev"] == "0" and got["links"] == "/tmp/l"


@pytest.mark.root
def test_setup_into_a_fresh_prefix_with_debian_python(tmp_path):
    """The stock Debian interpreter (externally managed, no pip) makes the venv; the programs, man pages and bash
    completion are linked; matplotlib is not part of the appliance; Debian's Python itself is left alone."""
    if not Path(DEBIAN_PYTHON).exists():
        pytest.skip("no Debian python3 here")
    prefix, links = tmp_path / "opt" / "pydp", tmp_path / "usr-local"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYDP_")},
           "PYTHON": DEBIAN_PYTHON, "PYDP_PREFIX": str(prefix), "PYDP_LINKS": str(links), "PYDP_EXTRAS": "",
           "PYDP_HUGEPAGES": "0"}
    proc = subprocess.run(["bash", str(ROOT / "scripts/setup.sh")], env=env, capture_output=True, text=True,
                          timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cfg = (prefix / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg and "home = /usr/bin" in cfg
    version = subprocess.run([str(links / "bin/pydpctl"), "--version"], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    assert version.startswith("pydpctl ")
    for prog in ("pydp-dataplane", "pydp-control", "pydpctl", "pydp-carp", "pydp-bootstrap", "pydp-lab"):
        assert (links / "bin" / prog).resolve() == prefix / "bin" / prog
        assert (links / "share/man/man1" / f"{prog}.1").resolve().is_file()
        assert (links / "share/bash-completion/completions" / prog).resolve().is_file()
    head = (prefix / "bin/pydp-dataplane").read_text().split("\n")[0]
    assert head == f"#!{prefix}/bin/python"
    py = str(prefix / "bin/python")
    assert subprocess.run([py, "-P", "-c", "import matplotlib"], capture_output=True, timeout=60).returncode != 0
    assert subprocess.run([py, "-P", "-c", "import pydp._pydp, control.daemon"], timeout=60).returncode == 0
    # nothing went into Debian's own Python
    assert subprocess.run([DEBIAN_PYTHON, "-P", "-c", "import pydp"], capture_output=True, timeout=60,
                          cwd=tmp_path).returncode != 0


@pytest.mark.root
def test_setup_refuses_a_missing_python(tmp_path):
    """PYTHON naming a missing interpreter is refused before anything is made under the prefix."""
    env = {**os.environ, "PYTHON": str(tmp_path / "nope"), "PYDP_PREFIX": str(tmp_path / "p"), "PYDP_LINKS": "",
           "PYDP_HUGEPAGES": "0"}
    proc = subprocess.run(["bash", str(ROOT / "scripts/setup.sh")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1 and "no such interpreter" in proc.stderr
    assert not (tmp_path / "p").exists()


@pytest.mark.root
def test_setup_refuses_a_prefix_that_is_no_venv(tmp_path):
    """A PYDP_PREFIX holding other files is never cleared to make a venv: refused, the files stay."""
    prefix = tmp_path / "busy"
    prefix.mkdir()
    (prefix / "keep.txt").write_text("mine")
    env = {**os.environ, "PYTHON": DEBIAN_PYTHON, "PYDP_PREFIX": str(prefix), "PYDP_LINKS": "", "PYDP_HUGEPAGES": "0"}
    proc = subprocess.run(["bash", str(ROOT / "scripts/setup.sh")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1 and "is not a virtual environment" in proc.stderr
    assert [p.name for p in prefix.iterdir()] == ["keep.txt"]
