"""Flow sync: the active load balancer streams its flows to the passive one, so a takeover keeps every connection
on the edge it started on, even when the edge set changed during the connection's life (docs/flowsync.md). With
[sync] peers it runs among N appliances: every one sends to every peer (a Peer each: its own connection, queue, rate
bucket and counters) and accepts each configured peer; an active-active cluster (failover = "bgp") takes a peer's
flows while it is owned here, a CARP cluster while it is not. Each side also sends the digest of each published
Maglev table (maglev_digest) and compares the peers' with its own (agreement).

Two halves run in every pydp-control, over the appliances' management addresses ([sync] in the config):

* the sender, for the clusters this appliance owns now (their ownership flag in the region is set: CARP master,
  --own-all or standalone): it reads the workers' flow-event rings (NEW, END), scans the flow tables every
  refresh_s for flows seen since the last scan (so the peer's copies never expire), and makes a full dump of a
  cluster when a connection is (re)established and when it takes the cluster over. Flows leave in batches (at most
  batch_flows per message, at least every batch_ms) under a rate bound (max_flows_per_s) and a memory bound
  (queue_flows): what does not fit is dropped and counted, never waited for. A peer that reads too slowly has its
  messages dropped the same way: the event loop and the data plane never wait for the network.
* the receiver, for the clusters this appliance does not own: it authenticates every message, maps the cluster
  and edge NAMES (slots and uids are local) to its own slots, and installs the flows through every worker's command
  ring (PYDP_CMD_INSERT, on the daemon's worker thread like every other write to the region). Every worker gets
  the flow: which RX queue, so which worker, a flow reaches depends on the NIC's RSS (af_packet: the kernel's
  per-boot hash), which the peer cannot know; a copy that no packet ever reaches just expires.

The wire format (one TCP connection per direction; the sender connects, the receiver listens):

    receiver -> sender, once:  u32 length | msgpack {"v": 1, "t": "hello", "n": 16-byte nonce, "c": ["digest"]}
    sender -> receiver:        u32 length | u64 seq | u8 name length | cluster name | 32-byte MAC | msgpack payload
        payload: {"v": 1, "t": "flows", "e": [edge names], "k": n x 40-byte struct pydp_flow_key, "x": n x (edge
                  index, flow state, event type)} or {"v": 1, "t": "resync"} (a full dump of the cluster follows)
                  or {"v": 1, "t": "digest", "d": 8 bytes, "s": seed, "m": size, "e": [[edge, weight], ...]}, sent
                  only to a receiver whose hello listed "digest" (an older one never sees it)
        MAC = HMAC-SHA256(key, label | nonce | seq | name length | name | payload)
        key = HKDF-SHA256(the cluster's CARP passphrase, salt = label, info = cluster name)

The nonce makes every connection's MACs unique (a recorded connection cannot be replayed into a new one) and seq,
strictly increasing, refuses a frame repeated within one. Frames over MAX_FRAME or that cannot be framed end the
connection; a frame with a bad MAC, an unknown cluster, a stale seq, a wrong version or a malformed payload is
counted and skipped, and nothing of it is installed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import msgpack
import numpy as np

from control import memory

log = logging.getLogger("pydp.control.flowsync")

VERSION = 1
LABEL = b"pydp-flowsync-v1"
NONCE_LEN = 16
MAC_LEN = 32
MAX_FRAME = 1 << 20              # bytes; a message of 4096 flows is ~180 KiB
MAX_FLOWS_PER_MESSAGE = 4096
KEY_LEN = 40                     # struct pydp_flow_key
HELLO_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 3.0
RETRY_MIN_S = 0.5
RETRY_MAX_S = 5.0
TICK_S = 0.02                    # the sender's and the installer's cadence
WRITE_BUFFER_MAX = 4 << 20       # bytes waiting for a slow peer; beyond, batches are dropped
EVENTS_PER_POP = 4096
INSTALL_PER_JOB = 4096           # commands pushed per job on the worker thread (keeps it short)
EV_NEW, EV_END = 1, 2
SETTLE_S = 15.0                  # after start, CARP stays demoted at most this long waiting for the peer's resync

DIGEST_LEN = 8                   # blake2b-64 of a Maglev table
DIGEST_EVERY_S = 5.0             # a cluster's digest goes to each peer when it changes and at least this often
DISAGREE_LOG_S = 60.0            # maglev_disagreement is logged at most this often per (cluster, peer)

_LEN = struct.Struct("!I")
_SEQ = struct.Struct("!Q")


class ProtocolError(Exception):
    """The stream cannot be framed any more: the connection ends."""


def derive_key(passphrase: str, cluster: str) -> bytes:
    """HKDF-SHA256 (RFC 5869) of the cluster's CARP passphrase, bound to flow sync and to the cluster's name."""
    prk = hmac.new(LABEL, passphrase.encode(), hashlib.sha256).digest()
    return hmac.new(prk, b"cluster:" + cluster.encode() + b"\x01", hashlib.sha256).digest()


def keys_of(cfg) -> dict[str, bytes]:
    """{cluster name: key} for the clusters with a passphrase (a cluster without one cannot be synced)."""
    if cfg is None:
        return {}
    return {c.name: derive_key(c.carp.passphrase, c.name) for c in cfg.clusters if c.carp.passphrase}


# ---- codec (sans-I/O) ----

CAPS = ("digest",)               # what this receiver understands beyond version 1's flows and resync


def encode_hello(nonce: bytes, caps: Iterable[str] = CAPS) -> bytes:
    """The receiver's hello. "c" lists the optional message types it understands: an older sender ignores the key,
    and a newer sender sends an optional type only to a receiver that listed it (an older receiver never sees one)."""
    msg: dict[str, Any] = {"v": VERSION, "t": "hello", "n": nonce}
    caps = list(caps)
    if caps:
        msg["c"] = caps
    body = msgpack.packb(msg)
    return _LEN.pack(len(body)) + body


def decode_hello(body: bytes) -> bytes:
    """The nonce of a hello body; ProtocolError if it is not one."""
    return parse_hello(body)[0]


def parse_hello(body: bytes) -> tuple[bytes, frozenset[str]]:
    """(nonce, the receiver's capabilities) of a hello body; ProtocolError if it is not one."""
    try:
        msg = msgpack.unpackb(body, raw=False, max_bin_len=64, max_str_len=64, max_array_len=8, max_map_len=8)
    except Exception as exc:
        raise ProtocolError(f"hello: not msgpack: {exc}") from None
    if not isinstance(msg, dict) or msg.get("t") != "hello":
        raise ProtocolError("hello: not a hello message")
    if msg.get("v") != VERSION:
        raise ProtocolError(f"hello: version {msg.get('v')!r}, this appliance speaks {VERSION}")
    nonce = msg.get("n")
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_LEN:
        raise ProtocolError("hello: bad nonce")
    caps = msg.get("c", [])
    if not isinstance(caps, list):
        raise ProtocolError("hello: bad capabilities")
    return nonce, frozenset(c for c in caps if isinstance(c, str))


def _mac(key: bytes, nonce: bytes, seq: bytes, name: bytes, payload: bytes) -> bytes:
    m = hmac.new(key, LABEL, hashlib.sha256)
    for part in (nonce, seq, bytes([len(name)]), name, payload):
        m.update(part)
    return m.digest()


class Encoder:
    """The sender's frames of one connection: sequence numbers and MACs under the receiver's nonce."""

    def __init__(self, nonce: bytes, keys: dict[str, bytes]):
        self.nonce = nonce
        self.keys = keys
        self.seq = 0

    def frame(self, cluster: str, payload: dict) -> bytes:
        key = self.keys[cluster]
        name = cluster.encode()
        body = msgpack.packb(payload, use_bin_type=True)
        self.seq += 1
        seq = _SEQ.pack(self.seq)
        out = b"".join((seq, bytes([len(name)]), name, _mac(key, self.nonce, seq, name, body), body))
        return _LEN.pack(len(out)) + out


@dataclass
class Batch:
    """Flows of one cluster: keys (n x struct pydp_flow_key), edge index into edges, state, event type."""
    cluster: str
    edges: list[str]
    keys: np.ndarray            # uint8 (n, 40)
    x: np.ndarray               # uint8 (n, 3): edge index, state, type

    def __len__(self) -> int:
        return len(self.keys)

    def split(self, n: int) -> tuple["Batch", "Batch"]:
        return (Batch(self.cluster, self.edges, self.keys[:n], self.x[:n]),
                Batch(self.cluster, self.edges, self.keys[n:], self.x[n:]))

    def payload(self) -> dict:
        return {"v": VERSION, "t": "flows", "e": self.edges, "k": self.keys.tobytes(), "x": self.x.tobytes()}


class Decoder:
    """The receiver's side of one connection: frames in, (cluster, message) out; every refusal counted."""

    def __init__(self, nonce: bytes, keys: Callable[[], dict[str, bytes]], counters: collections.Counter):
        self.nonce = nonce
        self.keys = keys
        self.counters = counters
        self.buf = bytearray()
        self.last_seq = 0

    def feed(self, data: bytes) -> list[tuple[str, Any]]:
        """The messages completed by data: ("resync", cluster) or a Batch. ProtocolError: drop the connection."""
        self.buf += data
        out = []
        while len(self.buf) >= 4:
            (n,) = _LEN.unpack_from(self.buf)
            if n > MAX_FRAME or n < _SEQ.size + 1 + MAC_LEN:
                self.counters["rx_oversized" if n > MAX_FRAME else "rx_garbage"] += 1
                raise ProtocolError(f"frame of {n} bytes (limit {MAX_FRAME})")
            if len(self.buf) < 4 + n:
                break
            frame = bytes(self.buf[4:4 + n])
            del self.buf[:4 + n]
            msg = self._frame(frame)
            if msg is not None:
                out.append(msg)
        return out

    def _frame(self, frame: bytes):
        c = self.counters
        seq_b = frame[:_SEQ.size]
        nlen = frame[_SEQ.size]
        name_b = frame[_SEQ.size + 1:_SEQ.size + 1 + nlen]
        mac = frame[_SEQ.size + 1 + nlen:_SEQ.size + 1 + nlen + MAC_LEN]
        payload = frame[_SEQ.size + 1 + nlen + MAC_LEN:]
        if len(mac) != MAC_LEN:
            c["rx_garbage"] += 1
            return None
        try:
            name = name_b.decode()
        except UnicodeDecodeError:
            c["rx_garbage"] += 1
            return None
        key = self.keys().get(name)
        if key is None:
            c["rx_unknown_cluster"] += 1
            return None
        if not hmac.compare_digest(mac, _mac(key, self.nonce, seq_b, name_b, payload)):
            c["rx_auth_failures"] += 1
            return None
        (seq,) = _SEQ.unpack(seq_b)
        if seq <= self.last_seq:
            c["rx_replays"] += 1
            return None
        self.last_seq = seq
        try:
            msg = msgpack.unpackb(payload, raw=False, max_bin_len=MAX_FRAME, max_str_len=64,
                                  max_array_len=MAX_FLOWS_PER_MESSAGE, max_map_len=16)
        except Exception:
            c["rx_garbage"] += 1
            return None
        if not isinstance(msg, dict) or msg.get("v") != VERSION:
            c["rx_bad_version" if isinstance(msg, dict) else "rx_garbage"] += 1
            return None
        t = msg.get("t")
        if t == "resync":
            return ("resync", name)
        if t == "digest":
            d = digest_of(msg)
            if d is None:
                c["rx_garbage"] += 1
                return None
            return ("digest", name, d)
        if t != "flows":                    # a newer peer's optional type: skipped, the stream goes on
            c["rx_unknown_type"] += 1
            return None
        batch = _batch_of(name, msg)
        if batch is None:
            c["rx_garbage"] += 1
        return batch


def digest_payload(d: dict) -> dict:
    """The "digest" message of maglev_digest()'s answer: the digest of a cluster's published Maglev table, the hash
    seed and table size it was built with, and the edge set in it ([name, weight] of every edge with a share)."""
    return {"v": VERSION, "t": "digest", "d": bytes.fromhex(d["digest"]), "s": d["seed"], "m": d["size"],
            "e": [[n, w] for n, w in d["edges"]]}


def digest_of(msg: dict) -> dict | None:
    """A received digest message as maglev_digest()'s shape, or None when its shape is wrong."""
    d, seed, size, edges = msg.get("d"), msg.get("s"), msg.get("m"), msg.get("e")
    if not isinstance(d, bytes) or len(d) != DIGEST_LEN or not isinstance(edges, list) or len(edges) > 16:
        return None
    if type(seed) is not int or not 0 <= seed < 2**32 or type(size) is not int or not 0 <= size < 2**24:
        return None
    out = []
    for e in edges:
        if (not isinstance(e, list) or len(e) != 2 or not isinstance(e[0], str) or not 0 < len(e[0]) < 32
                or type(e[1]) is not int or not 0 < e[1] < 65536):
            return None
        out.append((e[0], e[1]))
    return {"digest": d.hex(), "seed": seed, "size": size, "edges": sorted(out)}


def maglev_digest(region, cluster: int) -> dict | None:
    """The digest of a cluster's Maglev table as published now (the config slot the workers use): blake2b-64 of the
    hash seed, the table size, the edge set ([name, weight] of the edges with a share, by name) and the table with
    each entry as the index of its edge in that set. Edge slots are local (they may differ between appliances);
    names are not, so two appliances that would pick the same edge for every flow have the same digest.
    None if the slot is empty or the config changed while reading (read it again later)."""
    from pydp._ffi import ffi, lib

    gen = region.generation
    cfg = lib.pydp_shm_config(region._shm, gen)
    c = cfg.clusters[cluster]
    if c.family == lib.PYDP_AF_NONE:
        return None
    members = []
    for e in range(lib.PYDP_MAX_EDGES):
        ed = c.edges[e]
        if ed.state == lib.PYDP_EDGE_UP and ed.weight > 0:
            members.append((ffi.string(ed.name).decode(errors="replace"), int(ed.weight), e))
    members.sort()
    lut = np.full(256, 255, dtype=np.uint8)
    for rank, (_, _, slot) in enumerate(members):
        lut[slot] = rank
    seed, size = int(cfg.hash_seed), int(c.maglev_size)
    h = hashlib.blake2b(digest_size=DIGEST_LEN, person=b"pydp-maglev-v1")
    h.update(struct.pack("!III", seed, size, len(members)))
    for name, weight, _ in members:
        h.update(name.encode() + b"\0" + struct.pack("!H", weight))
    h.update(lut[region.maglev_table(cluster, gen)].tobytes())
    if region.generation != gen:
        return None
    return {"digest": h.hexdigest(), "seed": seed, "size": size, "edges": [(n, w) for n, w, _ in members]}


def agreement(local: dict | None, remote: dict | None) -> str:
    """How a peer's digest of a cluster compares with ours: "agree", "mismatch" (same edge set, another table: the
    two would pick different edges for some new flows), "edges_differ" (another edge set: a health or config view
    that differs, not a disagreement of the tables), or "unknown" (one side has none)."""
    if local is None or remote is None:
        return "unknown"
    if local["digest"] == remote["digest"]:
        return "agree"
    if sorted(map(tuple, local["edges"])) != sorted(map(tuple, remote["edges"])):
        return "edges_differ"
    return "mismatch"


def mismatch_reason(local: dict, remote: dict) -> str:
    if local["seed"] != remote["seed"]:
        return f"hash_seed differs (here 0x{local['seed']:x}, peer 0x{remote['seed']:x})"
    if local["size"] != remote["size"]:
        return f"maglev_size differs (here {local['size']}, peer {remote['size']})"
    return "same seed, size and edges, different tables"


def _batch_of(cluster: str, msg: dict) -> Batch | None:
    """A received flows message as a Batch, or None when its shape is wrong. Flows whose fields the fast path could
    not use are left out here already (the C install checks again)."""
    edges, k, x = msg.get("e"), msg.get("k"), msg.get("x")
    if msg.get("t") != "flows" or not isinstance(edges, list) or not all(isinstance(e, str) for e in edges):
        return None
    if not isinstance(k, bytes) or not isinstance(x, bytes) or len(k) % KEY_LEN or len(x) != 3 * (len(k) // KEY_LEN):
        return None
    n = len(k) // KEY_LEN
    if n > MAX_FLOWS_PER_MESSAGE or len(edges) > 64:
        return None
    keys = np.frombuffer(k, dtype=np.uint8).reshape(n, KEY_LEN)
    xs = np.frombuffer(x, dtype=np.uint8).reshape(n, 3)
    return Batch(cluster, edges, keys, xs)


# ---- reading the region ----

def _key_fields(keys: np.ndarray) -> dict[str, np.ndarray]:
    """family, proto and pad of (n, 40) key bytes (struct pydp_flow_key: src, dst, sport, dport, proto, family)."""
    return {"proto": keys[:, 36], "family": keys[:, 37], "pad": keys[:, 38] | keys[:, 39]}


def valid_flows(b: Batch) -> np.ndarray:
    """Mask of the flows of a received batch the fast path can use."""
    from pydp._ffi import lib

    f = _key_fields(b.keys)
    ok = ((f["family"] == lib.PYDP_AF_INET) | (f["family"] == lib.PYDP_AF_INET6)) & (f["pad"] == 0)
    v4 = f["family"] == lib.PYDP_AF_INET
    ok &= ~v4 | ~(b.keys[:, 4:16].any(axis=1) | b.keys[:, 20:32].any(axis=1))
    ok &= (b.x[:, 0] < len(b.edges)) & (b.x[:, 1] <= lib.PYDP_FLOW_OTHER) & ((b.x[:, 2] == EV_NEW) |
                                                                            (b.x[:, 2] == EV_END))
    return ok


def batches_of(flows: np.ndarray, types: np.ndarray, clusters: dict[str, dict], owned: set[str]) -> list[Batch]:
    """Flows (records with key, cluster, cluster_uid, edge, edge_uid, state: flow-event or flow dtype) of the owned
    clusters as Batches by cluster name. A flow whose cluster or edge slot was given to another since is left out."""
    out = []
    if len(flows) == 0:
        return out
    keys = _flow_keys(flows)
    for name in owned:
        c = clusters.get(name)
        if c is None:
            continue
        sel = (flows["cluster"] == c["slot"]) & (flows["cluster_uid"] == c["uid"])
        if not sel.any():
            continue
        names = sorted(c["edges"])
        slot_uid = np.full((256, 2), -1, dtype=np.int64)     # by the flow's uint8 edge slot: no slot aliases
        for i, en in enumerate(names):
            e = c["edges"][en]
            slot_uid[e["slot"]] = (i, e["uid"])
        edge = flows["edge"].astype(np.int64)
        idx = slot_uid[edge, 0]
        sel &= (idx >= 0) & (slot_uid[edge, 1] == flows["edge_uid"])
        if not sel.any():
            continue
        x = np.stack([idx[sel], flows["state"][sel], types[sel]], axis=1).astype(np.uint8)
        out.append(Batch(name, names, np.ascontiguousarray(keys[sel]), x))
    return out


def _flow_keys(flows: np.ndarray) -> np.ndarray:
    """(n, 40) uint8 key bytes of a structured array with a "key" field."""
    k = np.ascontiguousarray(flows["key"])
    return k.view(np.uint8).reshape(len(flows), KEY_LEN)


def scan(region, owned_slots: dict[int, str], max_idle_ms: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(flows, types) of the live flows of the owned clusters in every worker's table; with max_idle_ms only those
    that saw a packet within it (the periodic refresh)."""
    from control import observe
    from pydp.shm import numpy_dtype

    cfg = region.config()
    timeouts = observe._timeouts(cfg)
    now32 = np.uint32(observe.now_ms() & 0xFFFFFFFF)
    slots = np.array(sorted(owned_slots), dtype=np.uint16)
    parts = []
    for w in range(region.nb_workers):
        fl, last = observe._snapshot(region, w)
        if len(fl) == 0:
            continue
        idle = (now32 - last).astype(np.int32).astype(np.int64)
        keep = np.isin(fl["cluster"], slots) & (idle <= timeouts[np.minimum(fl["state"], 7)])
        if max_idle_ms is not None:
            keep &= idle <= max_idle_ms
        parts.append(fl[keep])
    if not parts:
        return np.zeros(0, dtype=numpy_dtype("struct pydp_flow")), np.zeros(0, np.uint8)
    flows = np.concatenate(parts)
    # a flow in several workers' tables (installed by sync into each) is sent once, with the packets of every copy
    _, first, inv = np.unique(_flow_keys(flows), axis=0, return_index=True, return_inverse=True)
    total = np.bincount(inv.ravel(), weights=flows["packets"].astype(np.float64), minlength=len(first))
    order = np.argsort(first)
    flows = flows[first[order]]
    flows["packets"] = np.minimum(total[order], 2**32 - 1).astype(np.uint32)
    return flows, np.full(len(flows), EV_NEW, dtype=np.uint8)


class PacketWatch:
    """Which flows of a scan saw packets HERE since the previous scan (their packet count grew). The refresh of an
    active-active cluster sends only those: a copy a peer installed has its last-packet time renewed by every
    install, so sending every recently "seen" flow would bounce each flow between the appliances for ever."""

    def __init__(self):
        self.keys = np.zeros((0, KEY_LEN), dtype=np.uint8)
        self.packets = np.zeros(0, dtype=np.int64)

    def grown(self, flows: np.ndarray) -> np.ndarray:
        """Mask of the flows (scan()'s records) whose packets grew; remembers this scan for the next."""
        keys = _flow_keys(flows)
        pk = flows["packets"].astype(np.int64)
        m = len(self.keys)
        old = np.zeros(len(flows), dtype=np.int64)
        if m and len(flows):
            _, inv = np.unique(np.concatenate([self.keys, keys]), axis=0, return_inverse=True)
            inv = inv.ravel()
            seen = np.zeros(int(inv.max()) + 1, dtype=np.int64)
            seen[inv[:m]] = self.packets
            old = seen[inv[m:]]
        self.keys, self.packets = keys.copy(), pk
        return pk > old


def commands(batch: Batch, clusters: dict[str, dict], counters: collections.Counter) -> np.ndarray | None:
    """The PYDP_CMD_INSERT commands that install a received batch here: cluster and edges by NAME onto this
    appliance's slots and uids. Flows of a cluster or an edge this appliance does not have, and flows the fast path
    could not use, are counted and left out."""
    from pydp._ffi import ffi, lib
    from pydp.shm import numpy_dtype

    n = len(batch)
    c = clusters.get(batch.cluster)
    if c is None:
        counters["skipped_unknown_cluster"] += n
        return None
    ok = valid_flows(batch)
    counters["skipped_invalid"] += int(n - ok.sum())
    local = np.array([(c["edges"][e]["slot"], c["edges"][e]["uid"]) if e in c["edges"] else (-1, 0)
                      for e in batch.edges] + [(-1, 0)], dtype=np.int64)
    idx = np.minimum(batch.x[:, 0].astype(np.int64), len(batch.edges))
    known = local[idx, 0] >= 0
    counters["skipped_unknown_edge"] += int((ok & ~known).sum())
    ok &= known
    k = int(ok.sum())
    cmds = np.zeros(k, dtype=numpy_dtype("struct pydp_cmd"))
    if k == 0:
        return cmds
    types = batch.x[ok, 2]
    cmds["op"] = lib.PYDP_CMD_INSERT
    cmds["arg0"] = np.where(types == EV_END, lib.PYDP_INSTALL_UPDATE_ONLY, 0)
    flow = cmds["flow"]
    flow["cluster"] = c["slot"]
    flow["cluster_uid"] = c["uid"]
    flow["edge"] = local[idx[ok], 0]
    flow["edge_uid"] = local[idx[ok], 1]
    flow["state"] = batch.x[ok, 1]
    off = ffi.offsetof("struct pydp_cmd", "flow")
    cmds.view(np.uint8).reshape(k, -1)[:, off:off + KEY_LEN] = batch.keys[ok]
    return cmds


# ---- the service ----

COUNTERS = (
    # sending (the clusters this appliance owns)
    "events_read", "events_unsent", "flows_sent", "messages_sent", "send_dropped_queue", "send_dropped_slow_peer",
    "refreshes", "resyncs_sent", "connects", "connect_failures", "disconnects",
    # receiving (the clusters the peer owns)
    "accepted", "refused_address", "messages_received", "flows_received", "resyncs_received", "flows_installed",
    "install_dropped", "skipped_owned", "skipped_taken_over", "skipped_unknown_cluster", "skipped_unknown_edge",
    "skipped_invalid",
    "rx_auth_failures", "rx_replays", "rx_garbage", "rx_oversized", "rx_bad_version", "rx_unknown_cluster",
    "rx_protocol_errors", "rx_unknown_type", "skipped_not_owned",
    # Maglev agreement
    "digests_sent", "digests_received", "maglev_mismatches", "refresh_skipped_peers",
)

# counter -> (metric name without pydp_flowsync_ and _total, help): docs/flowsync.md describes each counter
COUNTER_METRICS = {
    "events_read": ("read_events", "flow events read from the workers' rings"),
    "events_unsent": ("unsent_events", "flow events read but not sent (a cluster this appliance does not own)"),
    "flows_sent": ("sent_flows", "flows sent to the peer"),
    "messages_sent": ("sent_messages", "messages sent to the peer"),
    "send_dropped_queue": ("send_queue_dropped_flows", "flows dropped because the send queue was full"),
    "send_dropped_slow_peer": ("slow_peer_dropped_flows", "flows dropped because the peer read too slowly"),
    "refreshes": ("refreshes", "periodic refreshes of the long-lived flows sent"),
    "resyncs_sent": ("sent_resyncs", "full resyncs sent"),
    "connects": ("connects", "connections to the peer made"),
    "connect_failures": ("connect_failures", "connection attempts to the peer that failed"),
    "disconnects": ("disconnects", "connections to the peer lost"),
    "accepted": ("accepted_connections", "connections from the peer accepted"),
    "refused_address": ("refused_connections", "connections refused: not from the peer's address"),
    "messages_received": ("received_messages", "messages received from the peer"),
    "flows_received": ("received_flows", "flows received from the peer"),
    "resyncs_received": ("received_resyncs", "full resyncs received"),
    "flows_installed": ("installed_flows", "received flows installed in the workers' tables"),
    "install_dropped": ("install_dropped_flows", "received flows dropped because the install queue was full"),
    "skipped_owned": ("skipped_owned_flows", "received flows skipped: their cluster is owned here"),
    "skipped_taken_over": ("skipped_taken_over_flows", "received flows skipped: their cluster was taken over"),
    "skipped_unknown_cluster": ("skipped_unknown_cluster_flows", "received flows skipped: unknown cluster"),
    "skipped_unknown_edge": ("skipped_unknown_edge_flows", "received flows skipped: unknown edge"),
    "skipped_invalid": ("skipped_invalid_flows", "received flows skipped: invalid"),
    "rx_auth_failures": ("auth_failed_messages", "messages that failed authentication"),
    "rx_replays": ("replayed_messages", "messages refused as replays"),
    "rx_garbage": ("garbage_messages", "messages that could not be decoded"),
    "rx_oversized": ("oversized_messages", "messages over the size limit"),
    "rx_bad_version": ("bad_version_messages", "messages of another protocol version"),
    "rx_unknown_cluster": ("unknown_cluster_messages", "messages for an unknown cluster"),
    "rx_protocol_errors": ("protocol_error_messages", "messages that broke the protocol"),
    "rx_unknown_type": ("unknown_type_messages", "authenticated messages of a type this version does not know "
                        "(skipped)"),
    "skipped_not_owned": ("skipped_not_owned_flows", "received flows of an active-active cluster skipped: not "
                          "owned here"),
    "refresh_skipped_peers": ("refresh_skipped_flows", "flows of active-active clusters left out of a refresh: no "
                              "packet here since the previous one (a peer's copy)"),
    "digests_sent": ("sent_digests", "Maglev table digests sent to peers"),
    "digests_received": ("received_digests", "Maglev table digests received from peers"),
    "maglev_mismatches": ("maglev_mismatches", "times a peer's Maglev table of a cluster started to differ from "
                          "ours with the same edge set"),
}


# the counters each peer keeps as well (the totals above add them up)
PEER_COUNTERS = ("flows_sent", "messages_sent", "send_dropped_queue", "send_dropped_slow_peer", "resyncs_sent",
                 "connects", "connect_failures", "disconnects", "accepted", "messages_received", "flows_received",
                 "resyncs_received", "digests_sent", "digests_received", "maglev_mismatches",
                 "rx_auth_failures", "rx_replays", "rx_garbage", "rx_oversized", "rx_bad_version", "rx_unknown_cluster",
                 "rx_protocol_errors", "rx_unknown_type")


class Peer:
    """One flow-sync peer: the connection this appliance opens to send (its queue, rate bucket and counters: a slow
    or dead peer holds nobody else back), the connection it opened to us, and the Maglev digests it told us."""

    def __init__(self, addr):
        self.addr = addr                      # pydp.config.SyncPeer
        self.name = str(addr)
        self.counters: collections.Counter = collections.Counter({k: 0 for k in PEER_COUNTERS})
        self.task: asyncio.Task | None = None
        self.state_out = "connecting"
        self.writer: asyncio.StreamWriter | None = None
        self.encoder: Encoder | None = None
        self.caps: frozenset[str] = frozenset()
        self.queue: collections.deque = collections.deque()     # Batch or ("resync", cluster)
        self.queued = 0
        self.tokens = 0.0
        self.last_tokens = time.monotonic()
        self.last_send = 0.0
        self.dump_pending: set[str] = set()
        self.digest_sent: dict[str, tuple[str, float]] = {}      # cluster -> (digest, when) last sent
        self.inbound: asyncio.StreamWriter | None = None
        self.peer_in: str | None = None       # "addr:port" of its connection to us
        self.digests: dict[str, dict] = {}    # cluster -> its last digest (maglev_digest() shape)
        self.agreement: dict[str, str] = {}   # cluster -> agreement() now
        self.disagree_logged: dict[str, float] = {}

    def clear_queue(self) -> None:
        self.queue.clear()
        self.queued = 0


class FlowSync:
    """Both halves of flow sync inside pydp-control, with every configured peer. holder: the daemon's RegionHolder;
    config(): the store's ApplianceConfig now; run_worker(fn): runs fn on the daemon's worker thread (every write to
    the region); alive(): a running data plane is attached; event(name, level, **fields): the daemon's JSON log
    events."""

    def __init__(self, *, holder, config: Callable, run_worker: Callable, event: Callable,
                 alive: Callable[[], bool]):
        self.holder = holder
        self.config = config
        self.run_worker = run_worker
        self.event = event
        self.alive = alive
        self.counters: collections.Counter = collections.Counter({k: 0 for k in COUNTERS})
        self.settings = None                  # the SyncConfig in force
        self.peers: dict[str, Peer] = {}      # by str(SyncPeer), in the configured order
        self.server: asyncio.AbstractServer | None = None
        self.region = None
        self.owned: dict[str, int] = {}       # cluster name -> slot owned at the last tick
        self.digests: dict[str, dict] = {}    # cluster name -> maglev_digest() of the published table
        self._digest_cache: dict[int, tuple[tuple, dict]] = {}
        self.last_refresh = 0.0
        self.watch = PacketWatch()            # the active-active clusters' refresh: flows with packets here
        self.install: collections.deque = collections.deque()   # received Batches not yet installed
        self.install_lock = threading.Lock()
        self.install_queued = 0
        self.current: list | None = None      # [commands, offset per worker] being pushed
        self.install_running = False
        self._keys_for = None
        self._keys: dict[str, bytes] = {}
        self._aa_for = None
        self._aa: frozenset[str] = frozenset()
        self.retry_listen = 0.0
        self.started: float | None = None     # when sync was enabled (monotonic)
        self.resync_seen = False              # a resync from a peer arrived since

    # ---- compatibility views (one peer) ----
    @property
    def peer_in(self) -> str | None:
        """The address of the first peer connected to us, None if none is."""
        return next((p.peer_in for p in self.peers.values() if p.peer_in is not None), None)

    @property
    def state_out(self) -> str:
        """"connected" if any peer is, else "connecting" (or "disabled")."""
        if not self.peers:
            return "disabled"
        return "connected" if any(p.state_out == "connected" for p in self.peers.values()) else "connecting"

    def _count(self, peer: Peer | None, key: str, n: int = 1) -> None:
        self.counters[key] += n
        if peer is not None and key in peer.counters:
            peer.counters[key] += n

    # ---- which clusters take a peer's flows ----
    def active_active(self) -> frozenset[str]:
        """The clusters every appliance owns at once (failover = "bgp"): a peer's flows of one are installed while it
        is owned here. The others (CARP) take a peer's flows while they are NOT owned here (the peer is master)."""
        cfg = self.config()
        if cfg is not self._aa_for:
            self._aa_for = cfg
            self._aa = active_active_of(cfg)
        return self._aa

    def accepts(self, cluster: str) -> bool:
        """Whether a peer's flow of this cluster is installed here now."""
        owned = cluster in self.owned
        return owned if cluster in self.active_active() else not owned

    # ---- life cycle ----
    async def run(self) -> None:
        """The service until cancelled: follows the [sync] settings, sends, receives, installs."""
        try:
            while True:
                try:
                    await self._reconfigure()
                    if self.settings is not None and self.settings.enabled:
                        await self._tick()
                        self._start_install()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("flow sync")
                await asyncio.sleep(TICK_S)
        finally:
            await self._stop()

    async def _reconfigure(self) -> None:
        from pydp.config import sync_peers

        cfg = self.config()
        want = cfg.sync if cfg is not None else None
        if want == self.settings and not (want is not None and want.enabled and self.server is None
                                          and time.monotonic() >= self.retry_listen):
            return
        if want != self.settings:
            await self._stop()
            self.settings = want
        if want is None or not want.enabled:
            self.started = None
            return
        if self.started is None:
            self.started = time.monotonic()
            self.resync_seen = False
        try:
            self.server = await asyncio.start_server(self._serve, host=str(want.listen_address),
                                                     port=want.listen_port, reuse_address=True)
        except OSError as exc:
            self.retry_listen = time.monotonic() + RETRY_MAX_S
            self.event("flowsync_listen_failed", logging.ERROR, address=str(want.listen_address),
                       port=want.listen_port, error=str(exc))
            return
        peers = sync_peers(want)
        self.event("flowsync_started", listen=f"{want.listen_address}:{want.listen_port}",
                   peer=", ".join(str(p) for p in peers), peers=[str(p) for p in peers],
                   batch_flows=want.batch_flows, batch_ms=want.batch_ms, max_flows_per_s=want.max_flows_per_s,
                   queue_flows=want.queue_flows, refresh_s=want.refresh_s)
        for addr in peers:
            p = self.peers.setdefault(str(addr), Peer(addr))
            if p.task is None:
                p.task = asyncio.create_task(self._client(want, p))

    async def _stop(self) -> None:
        tasks = [p.task for p in self.peers.values() if p.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.server is not None:
            self.server.close()
            for p in self.peers.values():
                if p.inbound is not None:
                    p.inbound.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
            self.server = None
            self.event("flowsync_stopped")
        with self.holder.use() as region:
            if region is not None:
                region.flow_events = False
        self.peers = {}
        self.region = None
        self.owned = {}

    # ---- sending ----
    def _keys_now(self) -> dict[str, bytes]:
        cfg = self.config()
        if cfg is not self._keys_for:
            self._keys_for = cfg
            self._keys = keys_of(cfg)
        return self._keys

    def _connected(self) -> list[Peer]:
        return [p for p in self.peers.values() if p.writer is not None]

    async def _client(self, st, p: Peer) -> None:
        delay = RETRY_MIN_S
        failing = False
        # the peers know this appliance by its management address: connect from it when it is a specific one
        local = None if st.listen_address.is_unspecified else (str(st.listen_address), 0)
        while True:
            p.state_out = "connecting"
            writer = None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(str(p.addr.address), p.addr.port, local_addr=local), CONNECT_TIMEOUT_S)
                (n,) = _LEN.unpack(await asyncio.wait_for(reader.readexactly(4), HELLO_TIMEOUT_S))
                if n > 256:
                    raise ProtocolError(f"hello of {n} bytes")
                nonce, caps = parse_hello(await asyncio.wait_for(reader.readexactly(n), HELLO_TIMEOUT_S))
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ProtocolError) as exc:
                self._count(p, "connect_failures")
                if writer is not None:
                    writer.close()
                if not failing:
                    self.event("flowsync_connect_failed", logging.WARNING, peer=p.name,
                               error=f"{type(exc).__name__}: {exc}")
                    failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            failing = False
            delay = RETRY_MIN_S
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            p.encoder = Encoder(nonce, self._keys_now())
            p.caps = caps
            p.writer = writer
            p.state_out = "connected"
            self._count(p, "connects")
            p.clear_queue()
            p.dump_pending = set(self.owned)             # a full resync of what we own, on every (re)connect
            p.digest_sent = {}                           # and every digest again
            self.last_refresh = time.monotonic()         # the dump covers what a refresh would send
            self.event("flowsync_connected", peer=p.name, resync=sorted(p.dump_pending),
                       capabilities=sorted(caps))
            try:
                while await reader.read(4096):           # the receiver says nothing after its hello
                    pass
            except OSError:
                pass
            finally:
                p.writer = None
                p.encoder = None
                p.state_out = "connecting"
                self._count(p, "disconnects")
                writer.close()
                self.event("flowsync_disconnected", logging.WARNING, peer=p.name)
            await asyncio.sleep(RETRY_MIN_S)

    def _enqueue(self, p: Peer, batches: Iterable[Batch], bounded: bool = True) -> None:
        limit = self.settings.queue_flows
        for b in batches:
            if bounded and p.queued + len(b) > limit:
                room = max(0, limit - p.queued)
                self._count(p, "send_dropped_queue", len(b) - room)
                if room == 0:
                    continue
                b, _ = b.split(room)
            p.queue.append(b)
            p.queued += len(b)

    async def _tick(self) -> None:
        with self.holder.use() as region:        # lent: a region being replaced is unmapped only after this
            if region is None or not self.alive():
                self.owned = {}
                self.digests = {}
                return
            if region is not self.region:        # attached, or the data plane restarted: a new region
                self.region = region
                self.owned = {}
                self._digest_cache = {}
                for p in self.peers.values():
                    p.clear_queue()
            if not region.flow_events:
                region.flow_events = True
        now = time.monotonic()
        connected = self._connected()
        refresh = bool(connected) and now - self.last_refresh >= self.settings.refresh_s
        if refresh:
            self.last_refresh = now
        want_dump = set().union(*(p.dump_pending for p in connected))
        got = await asyncio.get_running_loop().run_in_executor(None, self._collect, refresh, want_dump)
        if got is None:
            return
        events, refreshed, dumps, taken = got
        connected = self._connected()
        for p in connected:
            p.dump_pending |= taken                  # taken over (or first seen): the peers get all of it
        if connected:
            for p in connected:
                self._enqueue(p, events)
                if refresh:
                    self._enqueue(p, refreshed)
                for name in sorted(p.dump_pending & set(dumps)):
                    self._count(p, "resyncs_sent")
                    p.queue.append(("resync", name))
                    self._enqueue(p, dumps[name], bounded=False)   # compact (43 bytes a flow) and needed whole
                    self.event("flowsync_resync_sent", cluster=name, peer=p.name,
                               flows=sum(len(b) for b in dumps[name]))
                p.dump_pending -= set(dumps)
            if refresh:
                self.counters["refreshes"] += 1
        else:
            self.counters["events_unsent"] += sum(len(b) for b in events)
        self._compare()
        for p in connected:
            self._send_digests(p, now)
            self._send(p)

    def _collect(self, refresh: bool, want_dump: set[str]):
        """(event batches, refresh batches, {cluster: dump batches}, clusters taken over) read from the region (a
        thread of the default executor: numpy scans never run on the loop). Also the clusters' Maglev digests."""
        from control import observe

        with self.holder.use() as region:
            if region is None or region is not self.region:
                return None
            clusters = observe.clusters(region)
            owned = {name: c["slot"] for name, c in clusters.items() if c["active"]}
            taken = set(owned) - set(self.owned)
            for name in taken:
                self.event("flowsync_owner", cluster=name, owned=True)
            for name in set(self.owned) - set(owned):
                for p in self.peers.values():
                    p.dump_pending.discard(name)
                self.event("flowsync_owner", cluster=name, owned=False)
            self.owned = owned
            self.digests = self._digests(region, clusters)
            events = []
            for w in range(region.nb_workers):
                ev = region.pop_events(w, EVENTS_PER_POP)
                self.counters["events_read"] += len(ev)
                events += batches_of(ev, ev["type"], clusters, set(owned))
            refreshed = []
            if refresh and owned:
                flows, types = scan(region, {s: n for n, s in owned.items()},
                                    int(self.settings.refresh_s * 1000) + 1000)
                aa = np.array([s for n, s in owned.items() if n in self.active_active()], dtype=np.int64)
                if len(aa):
                    mine = np.isin(flows["cluster"], aa)
                    keep = ~mine
                    keep[mine] = self.watch.grown(flows[mine])
                    self.counters["refresh_skipped_peers"] += int((~keep).sum())
                    flows, types = flows[keep], types[keep]
                refreshed = batches_of(flows, types, clusters, set(owned))
            dumps = {}
            for name in sorted(want_dump & set(owned)):
                flows, types = scan(region, {owned[name]: name}, None)
                dumps[name] = batches_of(flows, types, clusters, {name})
            if dumps:
                del flows, types
                memory.trim()            # the full scans' temporaries: their free pages back to the kernel
            return events, refreshed, dumps, taken

    def _digests(self, region, clusters: dict[str, dict]) -> dict[str, dict]:
        """{cluster: maglev_digest()} of the published clusters, computed again only when a cluster's table, seed
        or size changed."""
        seed = int(region.config().hash_seed)
        out, cache = {}, {}
        for name, c in clusters.items():
            ident = (c["uid"], c["table_version"], c["maglev_size"], seed)
            old = self._digest_cache.get(c["slot"])
            d = old[1] if old is not None and old[0] == ident else maglev_digest(region, c["slot"])
            if d is None:
                continue
            cache[c["slot"]] = (ident, d)
            out[name] = d
        self._digest_cache = cache
        return out

    def _send_digests(self, p: Peer, now: float) -> None:
        """Each cluster's digest to a peer that understands them, when it changed and every DIGEST_EVERY_S."""
        if "digest" not in p.caps or p.writer is None or p.encoder is None:
            return
        keys = self._keys_now()
        for name, d in self.digests.items():
            sent = p.digest_sent.get(name)
            if name not in keys or (sent is not None and sent[0] == d["digest"] and now - sent[1] < DIGEST_EVERY_S):
                continue
            if p.writer.transport.get_write_buffer_size() > WRITE_BUFFER_MAX:
                return
            p.encoder.keys = keys
            p.writer.write(p.encoder.frame(name, digest_payload(d)))
            p.digest_sent[name] = (d["digest"], now)
            self._count(p, "digests_sent")

    def _send(self, p: Peer) -> None:
        st = self.settings
        now = time.monotonic()
        p.tokens = min(st.max_flows_per_s * 0.2, p.tokens + (now - p.last_tokens) * st.max_flows_per_s)
        p.last_tokens = now
        writer, enc = p.writer, p.encoder
        if writer is None or enc is None or not p.queue:
            return
        if p.queued < st.batch_flows and now - p.last_send < st.batch_ms / 1000 and \
                not isinstance(p.queue[0], tuple):
            return
        enc.keys = self._keys_now()
        while p.queue and p.tokens >= 1:
            if writer.transport.get_write_buffer_size() > WRITE_BUFFER_MAX:
                dropped = p.queued
                self._count(p, "send_dropped_slow_peer", dropped)
                p.clear_queue()
                self.event("flowsync_peer_slow", logging.WARNING, peer=p.name, dropped=dropped)
                return
            item = p.queue.popleft()
            if isinstance(item, tuple):
                if item[1] in enc.keys:
                    writer.write(enc.frame(item[1], {"v": VERSION, "t": "resync"}))
                continue
            n = min(len(item), st.batch_flows, MAX_FLOWS_PER_MESSAGE, int(p.tokens))
            head, rest = item.split(n)
            if len(rest):
                p.queue.appendleft(rest)
            p.queued -= n
            if head.cluster not in enc.keys:
                continue
            writer.write(enc.frame(head.cluster, head.payload()))
            p.tokens -= n
            self._count(p, "flows_sent", n)
            self._count(p, "messages_sent")
        p.last_send = now

    # ---- Maglev agreement ----
    def _compare(self) -> None:
        """Each peer's digest of each cluster against ours: a mismatch while the edge set is the same is counted
        once when it starts and logged (maglev_disagreement) at most every DISAGREE_LOG_S."""
        now = time.monotonic()
        for p in self.peers.values():
            for name in set(p.digests) | set(p.agreement):
                was = p.agreement.get(name)
                local, remote = self.digests.get(name), p.digests.get(name)
                now_is = agreement(local, remote)
                p.agreement[name] = now_is
                if now_is != "mismatch":
                    if was == "mismatch" and now_is == "agree":
                        self.event("maglev_agreement", cluster=name, peer=p.name, digest=local["digest"])
                    elif now_is == "unknown" and remote is None:
                        p.agreement.pop(name, None)          # the peer left (or the cluster went): nothing to say
                    continue
                if was != "mismatch":
                    self._count(p, "maglev_mismatches")
                if now - p.disagree_logged.get(name, -1e9) >= DISAGREE_LOG_S:
                    p.disagree_logged[name] = now
                    self.event("maglev_disagreement", logging.WARNING, cluster=name, peer=p.name,
                               digest=local["digest"], peer_digest=remote["digest"],
                               reason=mismatch_reason(local, remote), edges=[n for n, _ in local["edges"]])

    def maglev_status(self) -> dict[str, dict]:
        """{cluster: {"digest", "seed", "size", "edges", "peers": {peer: {"digest", "agreement"}}}} of the published
        clusters (pydpctl status)."""
        out = {}
        for name, d in sorted(self.digests.items()):
            peers = {}
            for p in self.peers.values():
                r = p.digests.get(name)
                peers[p.name] = {"digest": r["digest"] if r else None,
                                 "agreement": agreement(d, r) if r else "unknown"}
            out[name] = {"digest": d["digest"], "seed": d["seed"], "size": d["size"],
                         "edges": [n for n, _ in d["edges"]], "peers": peers}
        return out

    # ---- receiving ----
    def _peer_of(self, host: str) -> Peer | None:
        from pydp.config import sync_peers

        try:
            ip = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return None
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        st = self.settings
        for addr in sync_peers(st) if st is not None else []:
            if addr.address == ip:
                return self.peers.setdefault(str(addr), Peer(addr))
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        addr = writer.get_extra_info("peername")
        conn = f"{addr[0]}:{addr[1]}" if addr else "?"
        p = self._peer_of(addr[0]) if addr else None
        if p is None:
            self.counters["refused_address"] += 1       # only the configured peers may speak (frames are MACed too)
            self.event("flowsync_refused", logging.WARNING, peer=conn,
                       expected=", ".join(self.peers) if self.peers else "none")
            writer.close()
            return
        if p.inbound is not None:                    # the peer reconnected: the newest wins
            p.inbound.close()
        p.inbound = writer
        p.peer_in = conn
        self._count(p, "accepted")
        nonce = os.urandom(NONCE_LEN)
        refused: collections.Counter = collections.Counter()     # this connection's refusals, for both tallies
        dec = Decoder(nonce, self._keys_now, refused)
        self.event("flowsync_peer_connected", peer=conn, configured=p.name)

        def tally() -> None:
            for k, n in refused.items():
                self._count(p, k, n)
            refused.clear()

        try:
            writer.write(encode_hello(nonce))
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                try:
                    msgs = dec.feed(data)
                finally:
                    tally()
                for msg in msgs:
                    self._received(p, msg)
        except ProtocolError as exc:
            self._count(p, "rx_protocol_errors")
            self.event("flowsync_protocol_error", logging.WARNING, peer=conn, error=str(exc))
        except OSError:
            pass
        finally:
            writer.close()
            if p.inbound is writer:
                p.inbound = None
                p.peer_in = None
                p.digests = {}                       # what it told us may be stale now
            self.event("flowsync_peer_disconnected", peer=conn)

    def _received(self, p: Peer, msg) -> None:
        self._count(p, "messages_received")
        if isinstance(msg, tuple):
            if msg[0] == "digest":
                self._count(p, "digests_received")
                p.digests[msg[1]] = msg[2]
                return
            self.resync_seen = True
            self._count(p, "resyncs_received")
            self.event("flowsync_resync_received", cluster=msg[1], peer=p.name)
            return
        n = len(msg)
        self._count(p, "flows_received", n)
        if not self.accepts(msg.cluster):
            # CARP: we own it, the peer's view is stale (it lost the cluster); active-active: not owned here now
            self.counters["skipped_owned" if msg.cluster in self.owned else "skipped_not_owned"] += n
            return
        with self.install_lock:
            if self.install_queued + n > self.settings.queue_flows:
                self.counters["install_dropped"] += n
                return
            self.install_queued += n
        self.install.append(msg)

    def _start_install(self) -> None:
        if self.install_running or not (self.install or self.current):
            return
        self.install_running = True
        fut = asyncio.ensure_future(self.run_worker(self._install_job))
        fut.add_done_callback(self._install_done)

    def _install_done(self, fut) -> None:
        self.install_running = False
        if not fut.cancelled() and fut.exception() is not None:
            log.error("flow sync install failed", exc_info=fut.exception())

    def _install_job(self) -> None:
        """Pushes received flows into every worker's command ring until the rings are full or the job's budget is
        spent (the daemon's worker thread: the one writer of the rings)."""
        from control import observe

        with self.holder.use() as region:
            if region is None or not self.alive():
                return
            clusters = None
            budget = INSTALL_PER_JOB
            while budget > 0:
                if self.current is None:
                    if not self.install:
                        return
                    batch = self.install.popleft()
                    with self.install_lock:
                        self.install_queued -= len(batch)
                    if not self.accepts(batch.cluster):  # taken over (CARP) or given up (active-active) meanwhile
                        self.counters["skipped_taken_over"] += len(batch)
                        continue
                    if clusters is None:
                        clusters = observe.clusters(region)
                    cmds = commands(batch, clusters, self.counters)
                    if cmds is None or len(cmds) == 0:
                        continue
                    self.current = [cmds, [0] * region.nb_workers]
                cmds, offs = self.current
                done = True
                for w in range(region.nb_workers):
                    if offs[w] < len(cmds):
                        pushed = region.push_commands(w, cmds[offs[w]:offs[w] + budget])
                        offs[w] += pushed
                        budget -= pushed
                        done &= offs[w] == len(cmds)
                if not done:
                    return                               # a ring is full: the worker drains it, we come back
                self.counters["flows_installed"] += len(cmds)
                self.current = None

    def demote_reasons(self) -> list[str]:
        """["flowsync"] while this appliance should not take a cluster from its peer yet: sync has just started
        (less than SETTLE_S ago), this appliance owns no cluster, a peer is reachable, and no full resync has
        arrived and been installed. CARP's demotion only stops a preemption (a returning appliance taking the
        cluster back before it knows the peer's flows); a dead peer is still taken over at once, and a master is
        never demoted by this (its peer, waiting for a resync, would take over)."""
        if self.started is None or time.monotonic() - self.started >= SETTLE_S or self.owned:
            return []
        if self.peer_in is None and self.state_out != "connected":
            return []
        if self.resync_seen and not self.install and self.current is None:
            self.started = time.monotonic() - SETTLE_S           # settled: never again until sync restarts
            return []
        return ["flowsync"]

    # ---- observability ----
    def status(self) -> dict:
        from pydp.config import sync_peers

        st = self.settings
        on = bool(st is not None and st.enabled)
        ring = {"written": 0, "dropped": 0}
        with self.holder.use() as region:
            if region is not None and self.alive():
                ring = region.event_counters()
        peers = [{"peer": p.name, "sending": p.state_out, "receiving": p.peer_in, "queued_flows": p.queued,
                  "capabilities": sorted(p.caps), "counters": {k: int(p.counters[k]) for k in PEER_COUNTERS}}
                 for p in self.peers.values()]
        return {
            "enabled": on,
            "listen": f"{st.listen_address}:{st.listen_port}" if on else None,
            "peer": ", ".join(str(p) for p in sync_peers(st)) if on else None,
            "peers": peers,
            "active_active": sorted(self.active_active()) if on else [],
            "sending": {"state": self.state_out, "clusters": sorted(self.owned),
                        "queued_flows": sum(p.queued for p in self.peers.values())},
            "receiving": {"peer": self.peer_in, "peers": sum(1 for p in self.peers.values() if p.peer_in),
                          "queued_flows": self.install_queued},
            "events": {"written": int(ring["written"]), "dropped_ring_full": int(ring["dropped"])},
            "maglev": self.maglev_status() if on else {},
            "counters": {k: int(self.counters[k]) for k in COUNTERS},
        }

    def metrics(self):
        """Prometheus families (the daemon's extra metrics)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.status()
        en = GaugeMetricFamily("pydp_flowsync_enabled", "1 when flow sync is configured ([sync] in the store)")
        en.add_metric([], 1 if s["enabled"] else 0)
        yield en
        up = GaugeMetricFamily("pydp_flowsync_connected", "1 while a flow-sync connection is up, by direction "
                               "(out: this appliance sends, in: a peer sends): any peer", labels=["direction"])
        up.add_metric(["out"], 1 if s["sending"]["state"] == "connected" else 0)
        up.add_metric(["in"], 1 if s["receiving"]["peer"] else 0)
        q = GaugeMetricFamily("pydp_flowsync_queued_flows", "flows waiting to be sent or installed",
                              labels=["queue"])
        q.add_metric(["send"], s["sending"]["queued_flows"])
        q.add_metric(["install"], s["receiving"]["queued_flows"])
        yield from (up, q)
        pc = GaugeMetricFamily("pydp_flowsync_peer_connected", "1 while the flow-sync connection with this peer is "
                               "up, by direction", labels=["peer", "direction"])
        pq = GaugeMetricFamily("pydp_flowsync_peer_queued_flows", "flows waiting to be sent to this peer",
                               labels=["peer"])
        ps = CounterMetricFamily("pydp_flowsync_peer_sent_flows", "flows sent to this peer", labels=["peer"])
        pr = CounterMetricFamily("pydp_flowsync_peer_received_flows", "flows received from this peer",
                                 labels=["peer"])
        pd = CounterMetricFamily("pydp_flowsync_peer_dropped_flows", "flows for this peer dropped (queue full or "
                                 "peer too slow)", labels=["peer"])
        for p in s["peers"]:
            pc.add_metric([p["peer"], "out"], 1 if p["sending"] == "connected" else 0)
            pc.add_metric([p["peer"], "in"], 1 if p["receiving"] else 0)
            pq.add_metric([p["peer"]], p["queued_flows"])
            c = p["counters"]
            ps.add_metric([p["peer"]], c["flows_sent"])
            pr.add_metric([p["peer"]], c["flows_received"])
            pd.add_metric([p["peer"]], c["send_dropped_queue"] + c["send_dropped_slow_peer"])
        yield from (pc, pq, ps, pr, pd)
        mm = GaugeMetricFamily("pydp_maglev_digest_mismatch", "1 while this peer's Maglev table of the cluster "
                               "differs from ours with the same edge set (they pick different edges for new flows)",
                               labels=["cluster", "peer"])
        for cname, m in s["maglev"].items():
            for peer, r in m["peers"].items():
                if r["agreement"] != "unknown":
                    mm.add_metric([cname, peer], 1 if r["agreement"] == "mismatch" else 0)
        yield mm
        # one family per counter (each has its own meaning): pydp_flowsync_<name>_total, a unit noun in each name
        for k, v in s["counters"].items():
            name, help_ = COUNTER_METRICS[k]
            c = CounterMetricFamily(f"pydp_flowsync_{name}", help_)
            c.add_metric([], v)
            yield c
        c = CounterMetricFamily("pydp_flowsync_ring_dropped_events", "flow events the workers dropped because the "
                                "event ring was full")
        c.add_metric([], s["events"]["dropped_ring_full"])
        yield c


def active_active_of(cfg) -> frozenset[str]:
    """The clusters of a config that every appliance owns at once: failover = "bgp" (issue 15). A config without
    the failover field (before [bgp] existed) has none."""
    if cfg is None:
        return frozenset()
    return frozenset(c.name for c in cfg.clusters if getattr(c, "failover", "carp") == "bgp")


def summary(s: dict) -> str:
    """One line of `pydpctl status` from status()."""
    c = s["counters"]
    out, inp = s["sending"], s["receiving"]
    dropped = (c["send_dropped_queue"] + c["send_dropped_slow_peer"] + c["install_dropped"]
               + s["events"]["dropped_ring_full"])
    refused = sum(c[k] for k in COUNTERS if k.startswith("rx_") and k != "rx_unknown_type")
    owned = f" ({', '.join(out['clusters'])})" if out["clusters"] else ""
    peers = s.get("peers") or []
    if len(peers) <= 1:
        head = f"to {s['peer']} {out['state']}{owned}, from peer {'connected' if inp['peer'] else 'none'}"
    else:
        head = (f"to {len(peers)} peers: " + ", ".join(f"{p['peer']} {p['sending']}" for p in peers) + f"{owned}, "
                f"from {sum(1 for p in peers if p['receiving'])} of {len(peers)} peers")
    return (f"{head}; sent {c['flows_sent']} flows, installed {c['flows_installed']}; resyncs {c['resyncs_sent']} "
            f"sent / {c['resyncs_received']} received; dropped {dropped}; refused {refused} "
            f"(auth {c['rx_auth_failures']})")


def maglev_lines(s: dict) -> list[str]:
    """`pydpctl status` lines of the Maglev agreement: per cluster our digest and each peer's verdict."""
    out = []
    for name, m in (s.get("maglev") or {}).items():
        verdicts = ", ".join(f"{peer} {r['agreement'].upper() if r['agreement'] == 'mismatch' else r['agreement']}"
                             + (f" ({r['digest']})" if r["agreement"] == "mismatch" else "")
                             for peer, r in m["peers"].items())
        out.append(f"{name} {m['digest']} (seed 0x{m['seed']:x}, {len(m['edges'])} edges)"
                   + (f"; peers: {verdicts}" if verdicts else ""))
    return out
