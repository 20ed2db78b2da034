"""What the lab tests check after a lab is gone: nothing of it is left on the machine."""

from __future__ import annotations

import glob
import os
import uuid
from pathlib import Path

from control.lab.lab import RUN_ROOT, lab_namespaces


def lab_name() -> str:
    return f"pl{uuid.uuid4().hex[:8]}"


def leftovers(name: str) -> dict:
    """Everything of lab `name` still on the machine (empty lists: nothing)."""
    procs = []
    for p in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            if name.encode() in Path(p).read_bytes():
                procs.append(int(p.split("/")[2]))
        except OSError:
            pass
    procs = [p for p in procs if p != os.getpid()]
    return {"namespaces": lab_namespaces(name), "processes": procs,
            "files": glob.glob(f"/dev/shm/{name}-*") + glob.glob(f"/dev/hugepages/*{name}-*"),
            "dpdk": glob.glob(f"/var/run/dpdk/pydp-{name}-*"),
            "run_dir": [str(RUN_ROOT / name)] if (RUN_ROOT / name).exists() else []}


def assert_clean(name: str) -> None:
    left = leftovers(name)
    assert not any(left.values()), f"lab {name} left: {left}"
