"""The data plane's shared-memory region, seen from Python.

Everything here goes through the layout in ``native/include/pydp.h``: struct pointers come from cffi, and the numpy
views of counters and flow tables get their dtypes from cffi's own description of the structs, so no offset is
written by hand in Python.

    >>> region = Region.attach("/dev/hugepages/pydp")         # doctest: +SKIP
    >>> region.worker_stats()["flow_hits"].sum()         # doctest: +SKIP
    >>> with region.writer() as cfg:                     # doctest: +SKIP
    ...     cfg.clusters[0].enabled = 0
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import ipaddress
from typing import Iterator

import numpy as np

from pydp._ffi import ffi, lib

_PRIMITIVES = {
    "uint8_t": "u1", "int8_t": "i1", "uint16_t": "<u2", "int16_t": "<i2", "uint32_t": "<u4", "int32_t": "<i4",
    "uint64_t": "<u8", "int64_t": "<i8", "char": "S1", "int": "<i4", "unsigned int": "<u4",
}


class ShmError(RuntimeError):
    """The region cannot be created, attached or changed."""


@functools.lru_cache(maxsize=None)
def numpy_dtype(cname: str) -> np.dtype:
    """A numpy dtype with the fields, offsets and size cffi reports for the C struct ``cname``."""
    ctype = ffi.typeof(cname)
    names, formats, offsets = [], [], []
    for name, field in ctype.fields:
        names.append(name)
        offsets.append(field.offset)
        formats.append(_field_format(field.type))
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": ffi.sizeof(ctype)})


def _field_format(t):
    if t.kind == "primitive":
        return _PRIMITIVES[t.cname]
    if t.kind == "enum":
        return "<i4"
    if t.kind == "array":
        if t.item.kind == "primitive" and t.item.cname == "char":
            return f"S{t.length}"
        return (_field_format(t.item), (t.length,))
    if t.kind == "struct":
        return numpy_dtype(t.cname)
    raise TypeError(f"no numpy format for {t.cname}")


def _err_buf():
    return ffi.new("char[]", lib.PYDP_ERR_LEN)


def pack_addr(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, bytes]:
    """(family, 16-byte field) as the shared memory stores addresses."""
    if addr.version == 4:
        return lib.PYDP_AF_INET, addr.packed + bytes(12)
    return lib.PYDP_AF_INET6, addr.packed


def unpack_addr(family: int, raw: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    raw = bytes(raw)
    if family == lib.PYDP_AF_INET:
        return ipaddress.IPv4Address(raw[:4])
    if family == lib.PYDP_AF_INET6:
        return ipaddress.IPv6Address(raw[:16])
    return None


def region_bytes(*, workers: int, ports: int = 1, maglev_max: int = 65537, flow_capacity: int = 2097152) -> int:
    """The size of a region with these parameters (pydp_shm_bytes), before a hugetlbfs mount rounds it up to whole
    pages: what the data plane's shared memory takes of the hugepages when dataplane.shm_path is on one."""
    p = ffi.new("struct pydp_shm_params *", {
        "nb_workers": workers, "nb_ports": ports, "maglev_max": maglev_max, "flow_capacity": flow_capacity})
    return int(lib.pydp_shm_bytes(p))


class Region:
    """A mapping of the region: attached by the control plane, or wrapping the data plane's own handle."""

    def __init__(self, handle, keepalive=None):
        self._shm = handle
        self._keepalive = keepalive
        self.hdr = handle.hdr
        self.path = ffi.string(handle.path).decode()

    @classmethod
    def attach(cls, path: str) -> "Region":
        handle = ffi.new("struct pydp_shm *")
        err = _err_buf()
        if lib.pydp_shm_attach(handle, path.encode(), err) != 0:
            raise ShmError(ffi.string(err).decode())
        return cls(handle, keepalive=handle)

    @classmethod
    def create(cls, path: str, *, workers: int = 1, ports: int = 1, maglev_max: int = 65537,
               flow_capacity: int = 4096) -> "Region":
        """A region of our own (tests and tools; the data plane creates its region in C)."""
        handle = ffi.new("struct pydp_shm *")
        params = ffi.new("struct pydp_shm_params *", {
            "nb_workers": workers, "nb_ports": ports, "maglev_max": maglev_max, "flow_capacity": flow_capacity})
        err = _err_buf()
        if lib.pydp_shm_create(handle, path.encode(), params, err) != 0:
            raise ShmError(ffi.string(err).decode())
        return cls(handle, keepalive=handle)

    def close(self) -> None:
        if self._keepalive is not None and self._shm.base != ffi.NULL:
            lib.pydp_shm_close(self._shm)
        self._keepalive = None

    def __enter__(self) -> "Region":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- header facts ----
    @property
    def nb_workers(self) -> int:
        return self.hdr.nb_workers

    @property
    def generation(self) -> int:
        return self.hdr.generation

    @property
    def maglev_max(self) -> int:
        return self.hdr.maglev_max

    def config(self):
        """The config slot in use now (read it; change config only through writer())."""
        return lib.pydp_shm_config(self._shm, self.hdr.generation)

    def maglev_table(self, cluster: int, slot: int | None = None) -> np.ndarray:
        """The Maglev table (edge slot per entry) of a cluster in the current (or given) slot."""
        if slot is None:
            slot = self.hdr.generation
        size = lib.pydp_shm_config(self._shm, slot).clusters[cluster].maglev_size
        ptr = lib.pydp_shm_maglev(self._shm, slot, cluster)
        return np.frombuffer(ffi.buffer(ptr, self.hdr.maglev_max), dtype=np.uint8)[:size]

    # ---- ownership (CARP), published with the config ----
    def is_active(self, cluster: int) -> bool:
        """Whether the current generation has this appliance forwarding for the cluster in this slot."""
        return bool(self.config().clusters[cluster].owned)

    def set_active(self, cluster: int, active: bool, timeout_ms: int = 2000) -> int:
        """Publishes a generation that changes only the ownership of the cluster in this slot (tools and tests;
        pydp-control and pydp-dataplane publish ownership with apply_config). Returns the generation."""
        with self.writer(timeout_ms) as slot:
            if slot.clusters[cluster].family == lib.PYDP_AF_NONE and active:
                raise ShmError(f"cluster slot {cluster} is empty: nothing to own")
            slot.clusters[cluster].owned = 1 if active else 0
        return self.generation

    # ---- what the data plane tells its controller ----
    @property
    def managed(self) -> bool:
        """The data plane was started with --managed: its clusters come from pydp-control only."""
        return bool(self.hdr.managed)

    @property
    def reload_requests(self) -> int:
        """Bumped by a managed data plane on SIGHUP: the controller re-applies its store."""
        return int(self.hdr.reload_requests)

    # ---- config writes ----
    @contextlib.contextmanager
    def writer(self, timeout_ms: int = 2000) -> Iterator:
        """Yields the idle config slot (a copy of the current one); publishes it when the block ends cleanly.

        One writer at a time: an exclusive lock on the region's file. Call ``rebuild(slot, cluster)`` for every
        cluster whose edges, weights, states or size changed before the block ends.
        """
        fcntl.flock(self._shm.fd, fcntl.LOCK_EX)
        try:
            err = _err_buf()
            slot = lib.pydp_config_begin(self._shm, timeout_ms, err)
            if slot == ffi.NULL:
                raise ShmError(ffi.string(err).decode())
            yield slot
            if lib.pydp_config_publish(self._shm, slot, err) != 0:
                raise ShmError(ffi.string(err).decode())
        finally:
            fcntl.flock(self._shm.fd, fcntl.LOCK_UN)

    def rebuild(self, slot, cluster: int) -> None:
        err = _err_buf()
        if lib.pydp_config_rebuild(self._shm, slot, cluster, err) != 0:
            raise ShmError(ffi.string(err).decode())

    def push_command(self, worker: int, op: int, arg0: int = 0, arg1: int = 0, flow=None) -> bool:
        cmd = ffi.new("struct pydp_cmd *")
        cmd.op, cmd.arg0, cmd.arg1 = op, arg0, arg1
        if flow is not None:
            cmd.flow = flow
        return lib.pydp_cmd_push(self._shm, worker, cmd) == 0

    def push_commands(self, worker: int, cmds: np.ndarray) -> int:
        """Pushes the commands (dtype of struct pydp_cmd) in order until the worker's ring is full; returns how many
        went in. One producer per ring: call from one thread only."""
        buf = ffi.from_buffer("struct pydp_cmd[]", cmds)
        for i in range(len(cmds)):
            if lib.pydp_cmd_push(self._shm, worker, buf + i) != 0:
                return i
        return len(cmds)

    # ---- flow events (flow sync) ----
    @property
    def flow_events(self) -> bool:
        return bool(self.hdr.flow_events)

    @flow_events.setter
    def flow_events(self, on: bool) -> None:
        self.hdr.flow_events = 1 if on else 0

    def pop_events(self, worker: int, limit: int = 4096) -> np.ndarray:
        """Takes up to limit events from the worker's flow-event ring (dtype of struct pydp_flow_event). One
        consumer per ring."""
        out = np.empty(limit, dtype=numpy_dtype("struct pydp_flow_event"))
        n = lib.pydp_event_pop(lib.pydp_shm_events(self._shm, worker), ffi.from_buffer("struct pydp_flow_event[]",
                                                                                      out), limit)
        return out[:n]

    def event_counters(self) -> dict:
        """Flow events written and dropped (ring full), summed over workers."""
        out = {"written": 0, "dropped": 0}
        for w in range(self.nb_workers):
            r = lib.pydp_shm_events(self._shm, w)
            out["written"] += r.written
            out["dropped"] += r.dropped
        return out

    # ---- counters and tables as numpy views ----
    def _view(self, ptr, cname: str, count: int) -> np.ndarray:
        dt = numpy_dtype(cname)
        return np.frombuffer(ffi.buffer(ptr, dt.itemsize * count), dtype=dt, count=count)

    def worker_stats(self) -> np.ndarray:
        """Shape (workers,), dtype of struct pydp_worker_stats (live view)."""
        return self._view(lib.pydp_shm_worker_stats(self._shm, 0), "struct pydp_worker_stats", self.nb_workers)

    def cluster_stats(self) -> np.ndarray:
        """Shape (workers, clusters), dtype of struct pydp_cluster_stats (live view)."""
        v = self._view(lib.pydp_shm_cluster_stats(self._shm, 0, 0), "struct pydp_cluster_stats",
                       self.nb_workers * lib.PYDP_MAX_CLUSTERS)
        return v.reshape(self.nb_workers, lib.PYDP_MAX_CLUSTERS)

    def flow_buckets(self, worker: int) -> np.ndarray:
        """The buckets of a worker's flow table (live view; the worker keeps writing it)."""
        table = lib.pydp_shm_flows(self._shm, worker)
        first = ffi.cast("char *", table) + ffi.sizeof("struct pydp_flow_table")
        return self._view(first, "struct pydp_flow_bucket", table.nb_buckets)

    def flow_tables(self) -> dict:
        """Occupancy of the flow tables summed over workers: capacity, live, expired, evicted, false_matches
        (signature hits whose key differed when a change needed it confirmed) and pin_checks (hits that confirmed
        their pin against the flow's record after its cluster slot changed, or a flow from the peer's first hit:
        native/src/flow.c)."""
        out = {"capacity": 0, "live": 0, "expired": 0, "evicted": 0, "false_matches": 0, "pin_checks": 0}
        for w in range(self.nb_workers):
            t = lib.pydp_shm_flows(self._shm, w)
            out["capacity"] += t.nb_buckets * lib.PYDP_FLOW_WAYS
            out["live"] += t.live
            out["expired"] += t.expired
            out["evicted"] += t.evicted
            out["false_matches"] += t.false_matches
            out["pin_checks"] += t.pin_checks
        return out

    def worker_states(self) -> np.ndarray:
        return self._view(ffi.addressof(self.hdr.workers[0]), "struct pydp_worker_state", self.nb_workers)

    def drop_names(self) -> list[str]:
        names = {}
        for name in dir(lib):
            if name.startswith("PYDP_DROP_") and name not in ("PYDP_DROP__COUNT", "PYDP_DROP_SLOTS"):
                names[getattr(lib, name)] = name[len("PYDP_DROP_"):].lower()
        return [names[i] for i in range(lib.PYDP_DROP__COUNT)]
