"""Runs pydp-bootstrap the way an operator does: the installed package, as a process, in a namespace."""

from __future__ import annotations

import subprocess
import sys

import pytest

from netlab import ns_run


@pytest.fixture
def bootstrap():
    """bootstrap(ns, *args, check=True): python -m control.bootstrap ARGS in the namespace ns."""
    def call(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = ns_run(ns, sys.executable, "-P", "-m", "control.bootstrap", *args, check=False, timeout=120)
        if check:
            assert proc.returncode == 0, f"pydp-bootstrap {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc
    return call
