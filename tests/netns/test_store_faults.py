"""Faults of the store and of exports, each with its expected outcome: the SQLite store locked by another process
or read-only (immutable) gives pydpctl a clear error and changes nothing; a full disk while exporting leaves no
partial file and the old file as it was. Real SQLite, a real `chattr +i`, a real 64 KiB tmpfs."""

import contextlib
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from control.store import Store

pytestmark = pytest.mark.root          # chattr, mounts, commands run as nobody

EDGES = [{"name": f"e{i}", "ip": f"198.51.100.{20 + i}", "mac": f"02:00:00:00:02:{i:02x}"} for i in range(1, 3)]


def _cluster(name: str, n: int) -> dict:
    return {"name": name, "cluster_ip": f"198.51.100.{n}", "edge": EDGES}


def pydpctl(db: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "control.cli", "--db", str(db), *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "pydp.db"
    with Store(path) as s:
        s.add_cluster(_cluster("web", 10))
    return path


def _snapshot(db: Path):
    with Store(db) as s:
        return s.revision(), s.list_clusters()


def test_store_locked_by_another_process(db):
    before = _snapshot(db)
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        t0 = time.monotonic()
        r = pydpctl(db, "cluster", "add", "api", "--cluster-ip", "198.51.100.11", "--edge", "e1=198.51.100.21",
                    "--edge", "e2=198.51.100.22")
        waited = time.monotonic() - t0
    finally:
        holder.rollback()
        holder.close()
    assert r.returncode == 1, r
    assert "is busy" in r.stderr and "nothing was changed" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert waited >= 4.0, f"gave up after {waited:.1f}s, before the busy timeout"
    assert _snapshot(db) == before
    # the lock gone, the same command works
    assert pydpctl(db, "cluster", "add", "api", "--cluster-ip", "198.51.100.11", "--edge", "e1=198.51.100.21",
                   "--edge", "e2=198.51.100.22").returncode == 0


@contextlib.contextmanager
def immutable(*paths: Path):
    """chattr +i: not even root may write (file permissions do not stop root)."""
    for p in paths:
        subprocess.run(["chattr", "+i", str(p)], check=True)
    try:
        yield
    finally:
        for p in paths:
            subprocess.run(["chattr", "-i", str(p)], check=False)


def test_store_read_only(db):
    before = _snapshot(db)
    with immutable(db, db.parent):
        r = pydpctl(db, "edge", "drain", "web", "e1")
        shown = pydpctl(db, "cluster", "list", "--json")
    assert r.returncode == 1, r
    assert "Traceback" not in r.stderr and "read" in r.stderr.lower() and str(db) in r.stderr, r.stderr
    assert shown.returncode == 0 and '"web"' in shown.stdout, shown        # reading still works
    assert _snapshot(db) == before
    assert sorted(p.name for p in db.parent.iterdir()) == ["pydp.db"]        # no journal left behind


@pytest.fixture
def tiny_disk():
    """A 64 KiB tmpfs at a fresh directory, unmounted afterwards."""
    d = tempfile.mkdtemp(prefix="pydp-full-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "pydp-full", d], check=True)
    try:
        yield Path(d)
    finally:
        subprocess.run(["umount", "-l", d], check=False)
        os.rmdir(d)


def test_disk_full_while_exporting(tmp_path, tiny_disk):
    db = tmp_path / "big.db"
    with Store(db) as s:
        for i in range(1, 61):
            s.add_cluster({"name": f"cluster-{i:03d}", "cluster_ip": f"203.0.113.{i}", "edge": EDGES})
    old = tiny_disk / "appliance.toml"
    old.write_text("# the previous export\n")
    filler = tiny_disk / "filler"
    filler.write_bytes(b"\0" * (40 << 10))
    need = len(pydpctl(db, "export", "-").stdout)
    free = os.statvfs(tiny_disk).f_bavail * os.statvfs(tiny_disk).f_frsize
    assert need > free, (need, free)                                 # less room than the export needs
    r = pydpctl(db, "export", "--force", str(old))
    assert r.returncode == 1, r
    assert "cannot write" in r.stderr and "No space left on device" in r.stderr and "Traceback" not in r.stderr
    assert old.read_text() == "# the previous export\n"             # untouched
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["appliance.toml", "filler"]    # no temporary file
    new = tiny_disk / "new.toml"
    r = pydpctl(db, "export", str(new))
    assert r.returncode == 1 and not new.exists(), r
    filler.unlink()                                                  # room again: the export works
    assert pydpctl(db, "export", "--force", str(old)).returncode == 0
    assert old.read_text().count("[[cluster]]") == 60
