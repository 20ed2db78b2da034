"""Flow sync: the active load balancer streams its flows to the passive one, so a takeover keeps every connection
on the edge it started on, even when the edge set changed during the connection's life (docs/flowsync.md).

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

    receiver -> sender, once:  u32 length | msgpack {"v": 1, "t": "hello", "n": 16-byte nonce}
    sender -> receiver:        u32 length | u64 seq | u8 name length | cluster name | 32-byte MAC | msgpack payload
        payload: {"v": 1, "t": "flows", "e": [edge names], "k": n x 40-byte struct pydp_flow_key, "x": n x (edge
                  index, flow state, event type)} or {"v": 1, "t": "resync"} (a full dump of the cluster follows)
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

def encode_hello(nonce: bytes) -> bytes:
    body = msgpack.packb({"v": VERSION, "t": "hello", "n": nonce})
    return _LEN.pack(len(body)) + body


def decode_hello(body: bytes) -> bytes:
    """The nonce of a hello body; ProtocolError if it is not one."""
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
    return nonce


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
        if msg.get("t") == "resync":
            return ("resync", name)
        batch = _batch_of(name, msg)
        if batch is None:
            c["rx_garbage"] += 1
        return batch


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
    # a flow in several workers' tables (installed by sync into each) is sent once
    _, first = np.unique(_flow_keys(flows), axis=0, return_index=True)
    flows = flows[np.sort(first)]
    return flows, np.full(len(flows), EV_NEW, dtype=np.uint8)


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
    "rx_protocol_errors",
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
}


class FlowSync:
    """Both halves of flow sync inside pydp-control. holder: the daemon's RegionHolder; config(): the store's
    ApplianceConfig now; run_worker(fn): runs fn on the daemon's worker thread (every write to the region);
    alive(): a running data plane is attached; event(name, level, **fields): the daemon's JSON log events."""

    def __init__(self, *, holder, config: Callable, run_worker: Callable, event: Callable,
                 alive: Callable[[], bool]):
        self.holder = holder
        self.config = config
        self.run_worker = run_worker
        self.event = event
        self.alive = alive
        self.counters: collections.Counter = collections.Counter({k: 0 for k in COUNTERS})
        self.settings = None                  # the SyncConfig in force
        self.server: asyncio.AbstractServer | None = None
        self.client_task: asyncio.Task | None = None
        self.inbound: asyncio.StreamWriter | None = None
        self.peer_in: str | None = None
        self.encoder: Encoder | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.state_out = "disabled"
        self.region = None
        self.owned: dict[str, int] = {}       # cluster name -> slot owned at the last tick
        self.dump_pending: set[str] = set()
        self.queue: collections.deque = collections.deque()     # Batch or ("resync", cluster)
        self.queued = 0                       # flows in queue
        self.last_send = 0.0
        self.last_refresh = 0.0
        self.tokens = 0.0
        self.last_tokens = time.monotonic()
        self.install: collections.deque = collections.deque()   # received Batches not yet installed
        self.install_lock = threading.Lock()
        self.install_queued = 0
        self.current: list | None = None      # [commands, offset per worker] being pushed
        self.install_running = False
        self._keys_for = None
        self._keys: dict[str, bytes] = {}
        self.retry_listen = 0.0
        self.started: float | None = None     # when sync was enabled (monotonic)
        self.resync_seen = False              # a resync from the peer arrived since

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
        cfg = self.config()
        want = cfg.sync if cfg is not None else None
        if want == self.settings and not (want is not None and want.enabled and self.server is None
                                          and time.monotonic() >= self.retry_listen):
            return
        if want != self.settings:
            await self._stop()
            self.settings = want
        if want is None or not want.enabled:
            self.state_out = "disabled"
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
        self.event("flowsync_started", listen=f"{want.listen_address}:{want.listen_port}",
                   peer=f"{want.peer_address}:{want.peer_port}", batch_flows=want.batch_flows,
                   batch_ms=want.batch_ms, max_flows_per_s=want.max_flows_per_s, queue_flows=want.queue_flows,
                   refresh_s=want.refresh_s)
        self.client_task = asyncio.create_task(self._client(want))

    async def _stop(self) -> None:
        if self.client_task is not None:
            self.client_task.cancel()
            await asyncio.gather(self.client_task, return_exceptions=True)
            self.client_task = None
        if self.server is not None:
            self.server.close()
            if self.inbound is not None:
                self.inbound.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
            self.server = None
            self.event("flowsync_stopped")
        with self.holder.use() as region:
            if region is not None:
                region.flow_events = False
        self.region = None
        self.owned = {}
        self._clear_queue()
        self.state_out = "disabled"

    # ---- sending ----
    def _keys_now(self) -> dict[str, bytes]:
        cfg = self.config()
        if cfg is not self._keys_for:
            self._keys_for = cfg
            self._keys = keys_of(cfg)
        return self._keys

    async def _client(self, st) -> None:
        delay = RETRY_MIN_S
        peer = f"{st.peer_address}:{st.peer_port}"
        failing = False
        while True:
            self.state_out = "connecting"
            writer = None
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(str(st.peer_address), st.peer_port),
                                                        CONNECT_TIMEOUT_S)
                (n,) = _LEN.unpack(await asyncio.wait_for(reader.readexactly(4), HELLO_TIMEOUT_S))
                if n > 256:
                    raise ProtocolError(f"hello of {n} bytes")
                nonce = decode_hello(await asyncio.wait_for(reader.readexactly(n), HELLO_TIMEOUT_S))
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ProtocolError) as exc:
                self.counters["connect_failures"] += 1
                if writer is not None:
                    writer.close()
                if not failing:
                    self.event("flowsync_connect_failed", logging.WARNING, peer=peer,
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
            self.encoder = Encoder(nonce, self._keys_now())
            self.writer = writer
            self.state_out = "connected"
            self.counters["connects"] += 1
            self._clear_queue()
            self.dump_pending = set(self.owned)          # a full resync of what we own, on every (re)connect
            self.last_refresh = time.monotonic()
            self.event("flowsync_connected", peer=peer, resync=sorted(self.dump_pending))
            try:
                while await reader.read(4096):           # the receiver says nothing after its hello
                    pass
            except OSError:
                pass
            finally:
                self.writer = None
                self.encoder = None
                self.state_out = "connecting"
                self.counters["disconnects"] += 1
                writer.close()
                self.event("flowsync_disconnected", logging.WARNING, peer=peer)
            await asyncio.sleep(RETRY_MIN_S)

    def _clear_queue(self) -> None:
        self.queue.clear()
        self.queued = 0

    def _enqueue(self, batches: Iterable[Batch], bounded: bool = True) -> None:
        limit = self.settings.queue_flows
        for b in batches:
            if bounded and self.queued + len(b) > limit:
                room = max(0, limit - self.queued)
                self.counters["send_dropped_queue"] += len(b) - room
                if room == 0:
                    continue
                b, _ = b.split(room)
            self.queue.append(b)
            self.queued += len(b)

    async def _tick(self) -> None:
        with self.holder.use() as region:        # lent: a region being replaced is unmapped only after this
            if region is None or not self.alive():
                self.owned = {}
                return
            if region is not self.region:        # attached, or the data plane restarted: a new region
                self.region = region
                self.owned = {}
                self._clear_queue()
            if not region.flow_events:
                region.flow_events = True
        now = time.monotonic()
        refresh = self.writer is not None and now - self.last_refresh >= self.settings.refresh_s
        if refresh:
            self.last_refresh = now
        got = await asyncio.get_running_loop().run_in_executor(None, self._collect, refresh)
        if got is None:
            return
        owned, events, refreshed, dumps = got
        if self.writer is not None:
            self._enqueue(events)
            if refresh:
                self.counters["refreshes"] += 1
                self._enqueue(refreshed)
            for name, batches in dumps:
                self.counters["resyncs_sent"] += 1
                self.queue.append(("resync", name))
                self._enqueue(batches, bounded=False)     # a dump is compact (43 bytes a flow) and needed whole
                self.event("flowsync_resync_sent", cluster=name, flows=sum(len(b) for b in batches))
        else:
            self.counters["events_unsent"] += sum(len(b) for b in events)
        self._send()

    def _collect(self, refresh: bool):
        """(owned, event batches, refresh batches, [(cluster, dump batches)]) read from the region (a thread of the
        default executor: numpy scans never run on the loop)."""
        from control import observe

        with self.holder.use() as region:
            if region is None or region is not self.region:
                return None
            clusters = observe.clusters(region)
            owned = {name: c["slot"] for name, c in clusters.items() if c["active"]}
            for name in set(owned) - set(self.owned):
                if self.writer is not None:
                    self.dump_pending.add(name)      # taken over (or first seen): the peer gets all of it
                self.event("flowsync_owner", cluster=name, owned=True)
            for name in set(self.owned) - set(owned):
                self.dump_pending.discard(name)
                self.event("flowsync_owner", cluster=name, owned=False)
            self.owned = owned
            events = []
            for w in range(region.nb_workers):
                ev = region.pop_events(w, EVENTS_PER_POP)
                self.counters["events_read"] += len(ev)
                events += batches_of(ev, ev["type"], clusters, set(owned))
            refreshed = []
            if refresh and owned:
                flows, types = scan(region, {s: n for n, s in owned.items()},
                                    int(self.settings.refresh_s * 1000) + 1000)
                refreshed = batches_of(flows, types, clusters, set(owned))
            dumps = []
            for name in sorted(self.dump_pending & set(owned)):
                flows, types = scan(region, {owned[name]: name}, None)
                dumps.append((name, batches_of(flows, types, clusters, {name})))
            self.dump_pending.clear()
            return owned, events, refreshed, dumps

    def _send(self) -> None:
        st = self.settings
        now = time.monotonic()
        self.tokens = min(st.max_flows_per_s * 0.2, self.tokens + (now - self.last_tokens) * st.max_flows_per_s)
        self.last_tokens = now
        writer, enc = self.writer, self.encoder
        if writer is None or enc is None or not self.queue:
            return
        if self.queued < st.batch_flows and now - self.last_send < st.batch_ms / 1000 and \
                not isinstance(self.queue[0], tuple):
            return
        enc.keys = self._keys_now()
        while self.queue and self.tokens >= 1:
            if writer.transport.get_write_buffer_size() > WRITE_BUFFER_MAX:
                dropped = self.queued
                self.counters["send_dropped_slow_peer"] += dropped
                self._clear_queue()
                self.event("flowsync_peer_slow", logging.WARNING, dropped=dropped)
                return
            item = self.queue.popleft()
            if isinstance(item, tuple):
                if item[1] in enc.keys:
                    writer.write(enc.frame(item[1], {"v": VERSION, "t": "resync"}))
                continue
            n = min(len(item), st.batch_flows, MAX_FLOWS_PER_MESSAGE, int(self.tokens))
            head, rest = item.split(n)
            if len(rest):
                self.queue.appendleft(rest)
            self.queued -= n
            if head.cluster not in enc.keys:
                continue
            writer.write(enc.frame(head.cluster, head.payload()))
            self.tokens -= n
            self.counters["flows_sent"] += n
            self.counters["messages_sent"] += 1
        self.last_send = now

    # ---- receiving ----
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        addr = writer.get_extra_info("peername")
        peer = f"{addr[0]}:{addr[1]}" if addr else "?"
        want = self.settings.peer_address if self.settings is not None else None
        if addr is None or want is None or ipaddress.ip_address(addr[0].partition("%")[0]) != want:
            self.counters["refused_address"] += 1       # only the configured peer may speak (frames are MACed too)
            self.event("flowsync_refused", logging.WARNING, peer=peer, expected=str(want))
            writer.close()
            return
        if self.inbound is not None:                 # the peer reconnected (or someone else did): the newest wins
            self.inbound.close()
        self.inbound = writer
        self.peer_in = peer
        self.counters["accepted"] += 1
        nonce = os.urandom(NONCE_LEN)
        dec = Decoder(nonce, self._keys_now, self.counters)
        self.event("flowsync_peer_connected", peer=peer)
        try:
            writer.write(encode_hello(nonce))
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for msg in dec.feed(data):
                    self._received(msg)
        except ProtocolError as exc:
            self.counters["rx_protocol_errors"] += 1
            self.event("flowsync_protocol_error", logging.WARNING, peer=peer, error=str(exc))
        except OSError:
            pass
        finally:
            writer.close()
            if self.inbound is writer:
                self.inbound = None
                self.peer_in = None
            self.event("flowsync_peer_disconnected", peer=peer)

    def _received(self, msg) -> None:
        self.counters["messages_received"] += 1
        if isinstance(msg, tuple):
            self.resync_seen = True
            self.counters["resyncs_received"] += 1
            self.event("flowsync_resync_received", cluster=msg[1])
            return
        n = len(msg)
        self.counters["flows_received"] += n
        if msg.cluster in self.owned:                # we own it: the peer's view is stale (it lost the cluster)
            self.counters["skipped_owned"] += n
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
                    if batch.cluster in self.owned:      # taken over meanwhile: our own flows win
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
        (less than SETTLE_S ago), this appliance owns no cluster, the peer is reachable, and its full resync has
        not arrived and been installed. CARP's demotion only stops a preemption (a returning appliance taking the
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
        st = self.settings
        ring = {"written": 0, "dropped": 0}
        with self.holder.use() as region:
            if region is not None and self.alive():
                ring = region.event_counters()
        return {
            "enabled": bool(st is not None and st.enabled),
            "listen": f"{st.listen_address}:{st.listen_port}" if st is not None and st.enabled else None,
            "peer": f"{st.peer_address}:{st.peer_port}" if st is not None and st.enabled else None,
            "sending": {"state": self.state_out, "clusters": sorted(self.owned), "queued_flows": self.queued},
            "receiving": {"peer": self.peer_in, "queued_flows": self.install_queued},
            "events": {"written": int(ring["written"]), "dropped_ring_full": int(ring["dropped"])},
            "counters": {k: int(self.counters[k]) for k in COUNTERS},
        }

    def metrics(self):
        """Prometheus families (the daemon's extra metrics)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.status()
        en = GaugeMetricFamily("pydp_flowsync_enabled", "1 when flow sync is configured ([sync] in the store)")
        en.add_metric([], 1 if s["enabled"] else 0)
        yield en
        up = GaugeMetricFamily("pydp_flowsync_connected", "1 while the flow-sync connection is up, by direction "
                               "(out: this appliance sends, in: the peer sends)", labels=["direction"])
        up.add_metric(["out"], 1 if s["sending"]["state"] == "connected" else 0)
        up.add_metric(["in"], 1 if s["receiving"]["peer"] else 0)
        q = GaugeMetricFamily("pydp_flowsync_queued_flows", "flows waiting to be sent or installed",
                              labels=["queue"])
        q.add_metric(["send"], s["sending"]["queued_flows"])
        q.add_metric(["install"], s["receiving"]["queued_flows"])
        yield from (up, q)
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


def summary(s: dict) -> str:
    """One line of `pydpctl status` from status()."""
    c = s["counters"]
    out, inp = s["sending"], s["receiving"]
    dropped = (c["send_dropped_queue"] + c["send_dropped_slow_peer"] + c["install_dropped"]
               + s["events"]["dropped_ring_full"])
    refused = sum(c[k] for k in COUNTERS if k.startswith("rx_"))
    owned = f" ({', '.join(out['clusters'])})" if out["clusters"] else ""
    return (f"to {s['peer']} {out['state']}{owned}, from peer {'connected' if inp['peer'] else 'none'}; "
            f"sent {c['flows_sent']} flows, installed {c['flows_installed']}; resyncs {c['resyncs_sent']} sent / "
            f"{c['resyncs_received']} received; dropped {dropped}; refused {refused} "
            f"(auth {c['rx_auth_failures']})")
