"""Maglev lookup tables, computed by the C fast path (``pydp_maglev_build``).

A table has a prime number of slots; slot ``i`` holds the index (into ``names``) of the edge that new flows hashing
to ``i`` go to. The table depends only on the set of (name, weight) pairs, not on the order of ``names``, so every
load balancer given the same edges builds the same table. Each edge gets a share of the slots proportional to its
weight; an edge of weight 0 gets none. Removing one edge moves few of the other edges' slots.

Example::

    >>> import numpy
    >>> from pydp.maglev import build
    >>> table = build(["edge-a", "edge-b", "edge-c"], size=65537)
    >>> table.dtype, table.shape
    (dtype('uint8'), (65537,))
    >>> sorted(set(table.tolist()))
    [0, 1, 2]
    >>> [int(c) for c in numpy.bincount(table)]
    [21846, 21846, 21845]
    >>> heavy = build(["edge-a", "edge-b"], size=1009, weights=[1, 3])
    >>> [int(c) for c in numpy.bincount(heavy)]
    [252, 757]

The flow of a packet goes to ``table[pydp_maglev_slot(flow_hash, size)]`` (see ``native/src/hash.c``).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np

from pydp._ffi import ffi, lib

__all__ = ["build", "DEFAULT_SIZE", "MAX_SIZE", "MAX_EDGES", "NAME_MAX_BYTES"]

DEFAULT_SIZE = lib.PYDP_MAGLEV_DEFAULT_SIZE
MAX_SIZE = lib.PYDP_MAGLEV_MAX_SIZE
MAX_EDGES = lib.PYDP_MAX_EDGES
NAME_MAX_BYTES = lib.PYDP_NAME_LEN - 1  # names are NUL-terminated in PYDP_NAME_LEN bytes


def _encode_names(names: Sequence[str]) -> list[bytes]:
    if isinstance(names, (str, bytes)):
        raise ValueError("names must be a sequence of edge names, not a single string")
    out: list[bytes] = []
    seen: set[bytes] = set()
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise ValueError(f"edge name {i} must be a str, not {type(name).__name__}")
        raw = name.encode("utf-8")
        if not raw:
            raise ValueError(f"edge name {i} is empty")
        if b"\0" in raw:
            raise ValueError(f"edge name {name!r} contains a NUL character")
        if len(raw) > NAME_MAX_BYTES:
            raise ValueError(f"edge name {name!r} is {len(raw)} bytes in UTF-8; at most {NAME_MAX_BYTES} are allowed")
        if raw in seen:
            raise ValueError(f"duplicate edge name {name!r}")
        seen.add(raw)
        out.append(raw)
    if len(out) > MAX_EDGES:
        raise ValueError(f"too many edges: {len(out)} (at most {MAX_EDGES})")
    return out


def _check_weights(weights: Sequence[int], n: int) -> list[int]:
    if isinstance(weights, (str, bytes)):
        raise ValueError("weights must be a sequence of integers")
    out: list[int] = []
    for i, w in enumerate(weights):
        if isinstance(w, bool):
            raise ValueError(f"weight {i} must be an integer, not a bool")
        try:
            v = operator.index(w)
        except TypeError:
            raise ValueError(f"weight {i} must be an integer, not {type(w).__name__}") from None
        if not 0 <= v <= 0xFFFF:
            raise ValueError(f"weight {i} is {v}; weights are 0..65535")
        out.append(v)
    if len(out) != n:
        raise ValueError(f"{len(out)} weights for {n} edges")
    return out


def build(names: Sequence[str], size: int = DEFAULT_SIZE, weights: Sequence[int] | None = None) -> np.ndarray:
    """Return the Maglev table of ``names`` (a numpy uint8 array of ``size`` slots, each an index into ``names``).

    ``size`` must be a prime no larger than MAX_SIZE and at least ``len(names)``. ``weights`` (default: all 1) gives
    each edge's relative share, 0..65535; weight 0 leaves the edge out. Raises ValueError on bad input, including
    when no edge has a weight above 0.
    """
    raw = _encode_names(names)
    n = len(raw)
    try:
        size = operator.index(size)
    except TypeError:
        raise ValueError(f"table size must be an integer, not {type(size).__name__}") from None
    if isinstance(size, bool) or not 0 < size <= MAX_SIZE:
        raise ValueError(f"table size {size} is out of range (a prime up to {MAX_SIZE})")
    w = None if weights is None else _check_weights(weights, n)
    if n == 0 or (w is not None and not any(w)):
        raise ValueError("no edge has a weight above 0")

    c_names = [ffi.new("char[]", r) for r in raw]  # kept alive until the call returns
    c_name_array = ffi.new("const char *[]", c_names)
    c_weights = ffi.NULL if w is None else ffi.new("uint16_t[]", w)
    err = ffi.new("char[]", lib.PYDP_ERR_LEN)
    table = np.empty(size, dtype=np.uint8)
    rc = lib.pydp_maglev_build(c_name_array, c_weights, n, size, ffi.from_buffer("uint8_t[]", table), err)
    if rc != 0:
        raise ValueError(ffi.string(err).decode("utf-8", "replace") or "maglev build failed")
    return table
