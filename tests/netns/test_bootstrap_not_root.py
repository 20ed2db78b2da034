"""pydp-bootstrap refuses to run without root, before it looks at anything else."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.root          # switches to user nobody


@pytest.mark.parametrize("args", [
    ["edge", "--cluster-ip", "198.51.100.10"],
    ["appliance", "--nic", "eth1", "--no-install"],
])
def test_not_root_is_refused(tmp_path, args):
    """As user nobody: exit code 1 and a message saying it needs root. The system Python runs the package from
    the source tree: the venv lives under /root, which nobody cannot enter."""
    src = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3", "-m",
         "control.bootstrap", *args, "--root" if args[0] == "appliance" else "--state-dir", str(tmp_path)],
        cwd=src, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == ("pydp-bootstrap: error: must run as root (it changes addresses, sysctls and system "
                           "files); use sudo, or --dry-run to only look\n")
    assert list(tmp_path.iterdir()) == []
