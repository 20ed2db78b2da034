"""Every program answers --version; its man page and the bash completion come from its own argparse definition."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import pydp
from control import docgen

BIN = Path(sysconfig.get_path("scripts"))
PROGRAMS = ["pydp-dataplane", "pydp-control", "pydpctl", "pydp-carp", "pydp-bootstrap", "pydp-lab", "pydp-demo"]


@pytest.mark.parametrize("program", PROGRAMS)
def test_version(program):
    """The installed console script prints 'PROG VERSION' and exits 0, without root, config or DPDK."""
    proc = subprocess.run([str(BIN / program), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{program} {pydp.__version__}"


def test_version_is_written_once():
    """The package metadata's version is pydp.__version__ (pyproject reads it from pydp/__init__.py)."""
    from importlib.metadata import version
    assert version("pydp") == pydp.__version__


def test_every_program_has_a_page():
    assert sorted(docgen.PROGRAMS) == sorted(PROGRAMS)


@pytest.mark.parametrize("program", PROGRAMS)
def test_man_page(tmp_path, program):
    """groff renders the page without a warning, and it carries every option of the program and its commands."""
    assert docgen.main(["--man", str(tmp_path), "--date", "2026-01-01"]) == 0
    page = tmp_path / f"{program}.1"
    proc = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    text = subprocess.run(["groff", "-man", "-Tascii", "-P-cbou", str(page)], capture_output=True, text=True,
                          timeout=60, check=True).stdout
    flat = " ".join(text.split())
    assert f"NAME {program} - " in flat and "--version" in flat
    parser = docgen.parser_of(program)

    def options(p):
        for a in docgen._options(p):
            yield from a.option_strings
        for _, _, sub in docgen._subcommands(p):
            yield from options(sub)
    for opt in set(options(parser)):
        assert opt in flat, f"{opt} missing from {program}.1"


def _complete(script: Path, *words: str) -> list[str]:
    """What bash completion offers after typing WORDS (the last one is the word being completed)."""
    arr = " ".join(f"'{w}'" for w in words)
    cmd = (f"source {script}; COMP_WORDS=({arr}); COMP_CWORD={len(words) - 1}; _pydp_complete; "
           'printf "%s\\n" "${COMPREPLY[@]}"')
    proc = subprocess.run(["bash", "--norc", "-c", cmd], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return [w for w in proc.stdout.split("\n") if w]


def test_bash_completion(tmp_path):
    script = tmp_path / "pydp"
    assert docgen.main(["--completion", str(script)]) == 0
    assert "cluster" in _complete(script, "pydpctl", "")
    assert _complete(script, "pydpctl", "cl") == ["cluster"]
    assert set(_complete(script, "pydpctl", "cluster", "")) >= {"list", "add", "delete"}
    assert "--sort" in _complete(script, "pydpctl", "cluster", "list", "--s")
    assert _complete(script, "pydp-dataplane", "--log-level", "w") == ["warning"]
    (tmp_path / "appliance.toml").write_text("")
    assert _complete(script, "pydp-dataplane", "--config", str(tmp_path / "appl")) == [str(tmp_path / "appliance.toml")]
    assert set(_complete(script, "pydp-lab", "d")) == {"demo", "down"}
    assert "--version" in _complete(script, "pydp-carp", "--v")


def test_docgen_needs_an_output():
    proc = subprocess.run([sys.executable, "-P", "-m", "control.docgen"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "nothing to do" in proc.stderr
