"""Tests of pydp.shm: the shared-memory region seen from Python (cffi handles and numpy views).

These need the compiled module and a writable /dev/shm, nothing else (no DPDK, no root beyond /dev/shm access).
"""

from __future__ import annotations

import ipaddress
import os

import numpy as np
import pytest

try:
    from pydp._ffi import ffi, lib
except ImportError as exc:  # a checkout without a build: skip, except in CI (see tests/conftest.py)
    if os.environ.get("PYDP_REQUIRE_DPDK") == "1":
        raise
    pytest.skip(f"pydp is not built: {exc}", allow_module_level=True)
from pydp.shm import Region, ShmError, numpy_dtype, pack_addr, region_bytes, unpack_addr  # noqa: E402

WORKERS = 2
MAGLEV_MAX = 257
FLOW_CAPACITY = 1024
BUCKETS = 256          # the power of two >= FLOW_CAPACITY / PYDP_FLOW_WAYS: capacity is whole buckets, at least asked

# Every struct the numpy views are built from, directly or nested.
VIEW_STRUCTS = [
    "struct pydp_worker_stats",
    "struct pydp_port_stats",
    "struct pydp_cluster_stats",
    "struct pydp_edge_stats",
    "struct pydp_flow_bucket",
    "struct pydp_flow",
    "struct pydp_flow_key",
    "struct pydp_worker_state",
    "struct pydp_flow_table",
    "struct pydp_edge",
    "struct pydp_cluster",
    "struct pydp_cmd",
]


pytestmark = pytest.mark.region(workers=WORKERS, ports=1, maglev_max=MAGLEV_MAX, flow_capacity=FLOW_CAPACITY)


# ---- create / attach ----

def test_create_header(region, shm_path):
    h = region.hdr
    assert region.path == shm_path
    assert os.path.exists(shm_path)
    assert h.magic == lib.PYDP_SHM_MAGIC
    assert h.layout_version == lib.PYDP_LAYOUT_VERSION
    assert h.header_size == ffi.sizeof("struct pydp_shm_header")
    assert region.nb_workers == WORKERS
    assert region.maglev_max == MAGLEV_MAX
    assert h.flow_capacity == BUCKETS * lib.PYDP_FLOW_WAYS      # whole buckets: at least what was asked
    assert region.generation == 0
    assert h.total_size == os.stat(shm_path).st_size


def test_region_bytes_is_the_created_size(region):
    """region_bytes (what pydp-bootstrap counts against --hugepages) is the size a region with those parameters
    takes (off hugetlbfs: no page rounding)."""
    assert region_bytes(workers=WORKERS, ports=1, maglev_max=MAGLEV_MAX, flow_capacity=FLOW_CAPACITY) == \
        region.hdr.total_size
    # the flow tables dominate: twice the workers, about twice the bytes
    one = region_bytes(workers=1, flow_capacity=2097152)
    assert 1.9 < region_bytes(workers=2, flow_capacity=2097152) / one < 2.1


def test_attach_round_trip(region, shm_path):
    other = Region.attach(shm_path)
    try:
        assert other.path == shm_path
        assert other.nb_workers == WORKERS
        assert other.maglev_max == MAGLEV_MAX
        assert other.hdr.total_size == region.hdr.total_size
        assert other.hdr != region.hdr                  # two mappings ...
        region.hdr.reload_requests = 5                  # ... of one memory
        assert other.reload_requests == 5
        other.hdr.reload_requests = 0
        assert region.reload_requests == 0
        other.config().udp_timeout_ms = 4321
        assert region.config().udp_timeout_ms == 4321
    finally:
        other.close()
    other.close()                                       # a second close is harmless
    assert os.path.exists(shm_path), "closing an attached region must not unlink it"


def test_context_manager_closes(shm_path):
    with Region.create(shm_path, workers=1, maglev_max=17, flow_capacity=64) as r:
        assert os.path.exists(shm_path)
        assert r.nb_workers == 1
    assert not os.path.exists(shm_path)


def test_create_bad_params(shm_path):
    with pytest.raises(ShmError, match="workers"):
        Region.create(shm_path, workers=0)
    with pytest.raises(ShmError, match="maglev_max"):
        Region.create(shm_path, maglev_max=16)
    assert not os.path.exists(shm_path)


def test_attach_other_layout_version(region, shm_path):
    off = ffi.offsetof("struct pydp_shm_header", "layout_version")
    fd = os.open(shm_path, os.O_RDWR)
    try:
        os.pwrite(fd, (lib.PYDP_LAYOUT_VERSION + 7).to_bytes(4, "little"), off)
    finally:
        os.close(fd)
    assert region.hdr.layout_version == lib.PYDP_LAYOUT_VERSION + 7   # the same memory
    with pytest.raises(ShmError) as ei:
        Region.attach(shm_path)
    msg = str(ei.value)
    assert "layout version" in msg
    assert str(lib.PYDP_LAYOUT_VERSION + 7) in msg
    assert shm_path in msg


def test_attach_not_a_region(shm_path):
    other = shm_path + ".other"
    with open(other, "wb") as f:
        f.write(b"this is not a pydp region\n" * 1000)
    with pytest.raises(ShmError, match="not a pydp region"):
        Region.attach(other)
    with open(other, "wb") as f:
        f.write(b"tiny")
    with pytest.raises(ShmError, match="not a pydp region"):
        Region.attach(other)


def test_attach_missing(shm_path):
    with pytest.raises(ShmError) as ei:
        Region.attach(shm_path)
    assert shm_path in str(ei.value)


# ---- numpy dtypes ----

def _check_dtype(cname: str) -> None:
    ctype = ffi.typeof(cname)
    dt = numpy_dtype(cname)
    assert dt.itemsize == ffi.sizeof(ctype), cname
    assert list(dt.names) == [name for name, _ in ctype.fields], cname
    for name, field in ctype.fields:
        sub, offset = dt.fields[name][:2]
        assert offset == field.offset, f"{cname}.{name}"
        assert sub.itemsize == ffi.sizeof(field.type), f"{cname}.{name}"
        t = field.type
        if t.kind == "array" and t.item.kind == "struct":
            assert sub.shape == (t.length,), f"{cname}.{name}"
            _check_dtype(t.item.cname)
        elif t.kind == "struct":
            _check_dtype(t.cname)


@pytest.mark.parametrize("cname", VIEW_STRUCTS)
def test_numpy_dtype_matches_cffi(cname):
    _check_dtype(cname)


# ---- views ----

def test_view_shapes(region):
    ws = region.worker_stats()
    assert ws.shape == (WORKERS,)
    assert ws.dtype == numpy_dtype("struct pydp_worker_stats")
    assert ws["port"].shape == (WORKERS, lib.PYDP_MAX_PORTS)
    assert ws["port"]["drops"].shape == (WORKERS, lib.PYDP_MAX_PORTS, lib.PYDP_DROP_SLOTS)
    cs = region.cluster_stats()
    assert cs.shape == (WORKERS, lib.PYDP_MAX_CLUSTERS)
    assert cs["edges"].shape == (WORKERS, lib.PYDP_MAX_CLUSTERS, lib.PYDP_MAX_EDGES)
    for w in range(WORKERS):
        fb = region.flow_buckets(w)
        assert fb.shape == (BUCKETS,)
        assert fb["flows"].shape == (BUCKETS, lib.PYDP_FLOW_WAYS)
        for hot in ("sig", "last_ms", "pin", "pkts"):         # the hot line: everything a hit reads
            assert fb[hot].shape == (BUCKETS, lib.PYDP_FLOW_WAYS)
        assert not fb["sig"].any()
    ft = region.flow_tables()
    assert ft == {"capacity": WORKERS * BUCKETS * lib.PYDP_FLOW_WAYS, "live": 0, "expired": 0, "evicted": 0,
                  "false_matches": 0, "pin_checks": 0}
    lib.pydp_shm_flows(region._shm, 1).false_matches = 3     # the worker's counters, summed over workers
    lib.pydp_shm_flows(region._shm, 0).pin_checks = 2
    lib.pydp_shm_flows(region._shm, 1).pin_checks = 5
    assert region.flow_tables()["false_matches"] == 3
    assert region.flow_tables()["pin_checks"] == 7
    st = region.worker_states()
    assert st.shape == (WORKERS,)
    assert (st["seen_gen"] == np.iinfo(np.uint64).max).all()
    assert len(region.drop_names()) == lib.PYDP_DROP__COUNT
    assert region.drop_names()[lib.PYDP_DROP_NO_HEADROOM] == "no_headroom"


def test_worker_stats_view_is_live(region):
    ws = region.worker_stats()
    p = lib.pydp_shm_worker_stats(region._shm, 1)
    p.flow_hits = 123456789
    p.cmds = 2**63 + 5
    p.port[2].drops[lib.PYDP_DROP_NO_EDGE] = 77
    p.port[3].tx_bytes = 99
    assert ws["flow_hits"].tolist() == [0, 123456789]
    assert int(ws["cmds"][1]) == 2**63 + 5
    assert int(ws["port"][1, 2]["drops"][lib.PYDP_DROP_NO_EDGE]) == 77
    assert int(ws["port"]["drops"].sum()) == 77
    assert int(ws[1]["port"][3]["tx_bytes"]) == 99
    assert int(region.worker_stats()["polls"].sum()) == 0


def test_cluster_stats_view_is_live(region):
    cs = region.cluster_stats()
    p = lib.pydp_shm_cluster_stats(region._shm, 1, 10)
    p.packets = 5
    p.drop_no_edge = 6
    p.edges[3].new_flows = 9
    p.edges[15].bytes = 1500
    assert int(cs[1, 10]["packets"]) == 5
    assert int(cs["packets"].sum()) == 5
    assert int(cs[1, 10]["drop_no_edge"]) == 6
    assert int(cs[1, 10]["edges"]["new_flows"][3]) == 9
    assert int(cs[:, 10]["edges"]["bytes"][:, 15].sum()) == 1500
    assert int(cs[0, 10]["packets"]) == 0 and int(cs[1, 9]["packets"]) == 0


def test_flow_buckets_view_is_live(region):
    fb = region.flow_buckets(1)
    table = lib.pydp_shm_flows(region._shm, 1)
    buckets = ffi.cast("struct pydp_flow_bucket *",
                       ffi.cast("char *", table) + ffi.sizeof("struct pydp_flow_table"))
    b = buckets[fb.shape[0] - 1]                       # the last bucket: the view covers the whole table
    b.sig[3] = 0xDEADBEEF
    b.last_ms[3] = 1000
    f = b.flows[3]
    family, raw = pack_addr(ipaddress.ip_address("198.51.100.7"))
    f.key.family = family
    ffi.memmove(f.key.src, raw, 16)
    f.key.sport = 0x3412
    f.key.proto = 6
    f.edge = 4
    f.cluster = 2
    f.state = lib.PYDP_FLOW_TCP_EST
    row = fb[-1]
    assert int(row["sig"][3]) == 0xDEADBEEF
    assert int(row["last_ms"][3]) == 1000
    flow = row["flows"][3]
    assert int(flow["key"]["sport"]) == 0x3412
    assert int(flow["key"]["proto"]) == 6
    assert str(unpack_addr(int(flow["key"]["family"]), flow["key"]["src"].tobytes())) == "198.51.100.7"
    assert int(flow["edge"]) == 4 and int(flow["cluster"]) == 2
    assert int(flow["state"]) == lib.PYDP_FLOW_TCP_EST
    assert np.count_nonzero(fb["sig"]) == 1
    assert np.count_nonzero(region.flow_buckets(0)["sig"]) == 0   # worker 0's table is another one


def test_worker_states_view_is_live(region):
    st = region.worker_states()
    region.hdr.workers[1].seen_gen = 3
    region.hdr.workers[1].online = 1
    assert int(st[1]["seen_gen"]) == 3
    assert int(st[1]["online"]) == 1


def test_maglev_table_view(region):
    with region.writer() as slot:
        c = slot.clusters[2]
        c.name = b"web"
        c.family = lib.PYDP_AF_INET
        ffi.memmove(c.vip, bytes([198, 51, 100, 10]) + bytes(12), 16)
        c.maglev_size = 251
        for i, name in enumerate([b"a", b"b"]):
            c.edges[i].name = name
            c.edges[i].state = lib.PYDP_EDGE_UP
            c.edges[i].weight = 1
        region.rebuild(slot, 2)
    assert region.generation == 1
    t = region.maglev_table(2)
    assert t.shape == (251,)
    assert set(t.tolist()) == {0, 1}
    assert region.maglev_table(2, slot=0).shape == (0,)        # slot 0 never had the cluster


def test_push_command(region):
    ok = [region.push_command(0, lib.PYDP_CMD_FLUSH_CLUSTER, 3) for _ in range(lib.PYDP_CMD_RING_SIZE)]
    assert all(ok)
    assert not region.push_command(0, lib.PYDP_CMD_FLUSH_ALL)
    assert not region.push_command(WORKERS, lib.PYDP_CMD_FLUSH_ALL)
    ring = lib.pydp_shm_cmds(region._shm, 0)
    assert ring.head == lib.PYDP_CMD_RING_SIZE
    assert ring.cmds[0].op == lib.PYDP_CMD_FLUSH_CLUSTER and ring.cmds[0].arg0 == 3
