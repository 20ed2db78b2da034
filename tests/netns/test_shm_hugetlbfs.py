"""The shared-memory region on hugetlbfs: a file there can only be sized in whole pages of the mount.

Needs root (it mounts a private hugetlbfs of its own, removed at the end) and free 2 MiB hugepages.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

import pytest

from pydp.shm import Region, ShmError

pytestmark = pytest.mark.netns


def _mount(opts: str):
    """A private hugetlbfs mount: (directory, page size from statvfs); unmounted and removed afterwards."""
    d = tempfile.mkdtemp(prefix="pydp-huge-")
    r = subprocess.run(["mount", "-t", "hugetlbfs", "-o", opts, "nodev", d],
                       capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        os.rmdir(d)
        pytest.skip(f"cannot mount hugetlbfs: {r.stderr.strip()}")
    try:
        yield d, os.statvfs(d).f_bsize
    finally:
        for name in os.listdir(d):
            os.unlink(os.path.join(d, name))
        subprocess.run(["umount", d], check=True, timeout=10)
        os.rmdir(d)


@pytest.fixture
def hugetlbfs():
    """2 MiB pages, at most 16 MiB."""
    yield from _mount("pagesize=2M,size=16M")


@pytest.fixture
def hugetlbfs_1g():
    """1 GiB pages (x86 with pdpe1gb); none need be reserved for the mount itself."""
    yield from _mount("pagesize=1G")


def _free_2m_pages() -> int:
    with open("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages") as f:
        return int(f.read())


def test_region_is_sized_in_whole_pages_of_its_mount(hugetlbfs, tmp_path):
    d, page = hugetlbfs
    assert page == 2 << 20
    if _free_2m_pages() < 4:
        pytest.skip("needs 4 free 2 MiB hugepages")
    # off hugetlbfs the file is the layout's own size, which is not a whole number of pages here
    plain = str(tmp_path / "region")
    with Region.create(plain, flow_capacity=4096):
        layout = os.stat(plain).st_size
    assert layout % page != 0, layout
    path = os.path.join(d, "region")
    with Region.create(path, flow_capacity=4096) as r:
        assert os.stat(path).st_size == (layout + page - 1) // page * page
        assert r.hdr.total_size == os.stat(path).st_size
        with Region.attach(path) as seen:        # another mapping of the same pages sees the same header
            assert seen.hdr.total_size == r.hdr.total_size
            assert seen.nb_workers == r.nb_workers


def test_region_on_1g_pages_is_sized_in_gib(hugetlbfs_1g):
    """A pagesize=1G mount: the size is rounded to 1 GiB (it was rounded to 2 MiB, which hugetlbfs refuses). With
    no free 1 GiB page the mapping fails for want of memory, after the sizing, and says so."""
    d, page = hugetlbfs_1g
    assert page == 1 << 30
    path = os.path.join(d, "region")
    try:
        with Region.create(path, flow_capacity=4096) as r:
            assert r.hdr.total_size == page
    except ShmError as exc:
        assert "cannot size" not in str(exc)
        assert "Cannot allocate memory" in str(exc), exc
    assert not os.path.exists(path)
