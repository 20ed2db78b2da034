#!/usr/bin/env -S python3 -P
"""Atheris harness of the flow-sync receiver (control/flowsync.py) as pydp-control runs it on one connection: the
hello decoder, then Decoder.feed on the byte stream (framing, cluster name, MAC, sequence number, msgpack
payload, message shape) and, for every flows message, the receiver's own path to the data plane: valid_flows and
commands (cluster and edge names onto local slots, the PYDP_CMD_INSERT records).

    scripts/fuzz.sh flowsync
    python -P tests/fuzz/fuzz_flowsync.py -runs=1 tests/fuzz/corpus/flowsync/*

Random bytes never carry a valid HMAC, so the harness seals part of the stream itself. The first byte of an input
picks the path: 0 mod 8 is a hello body (the rest); anything else is a stream of records, each a kind byte:

    kind & 1 == 0   raw bytes, fed as they are:           u16 length | bytes
    kind & 1 == 1   a frame the harness seals (the sender's format, MAC under the connection's nonce):
                    u8 seq step (0: the same seq again, a replay) | u8 cluster (0: web, 1: db, 2: unknown "nope",
                    3: no passphrase "plain", 4+: the raw name that follows, u8 length | bytes) | u16 length |
                    msgpack payload; kind & 2: one bit of the MAC is flipped; kind & 4: the frame is fed in two
                    pieces split at the next byte

Whatever the bytes, feed returns messages or raises ProtocolError (counted as rx_oversized or rx_garbage); every
complete frame gives one message or exactly one rx_* count; a message comes only from a frame the harness sealed
with a good MAC and a fresh sequence number, for a cluster with a key; a flows message has one 40-byte key and
(edge, state, type) per flow, and commands installs only valid flows on this appliance's slots of the named
cluster and edges. The check of a message is generic: a message type added later (a tuple (type, cluster, ...)
or an object with .cluster) is held to the same rules.
"""

import collections
import struct
import sys

import atheris
import numpy as np

with atheris.instrument_imports():
    from control import flowsync as fs

NONCE = bytes(range(16))
KEYS = {"web": fs.derive_key("web passphrase", "web"), "db": fs.derive_key("db passphrase", "db")}
NAMES = ("web", "db", "nope", "plain")
# this appliance's slots and uids: names the peer sends are mapped onto them ("e9" is not here)
CLUSTERS = {
    "web": {"slot": 0, "uid": 11, "edges": {"e1": {"slot": 0, "uid": 21}, "e2": {"slot": 3, "uid": 22}}},
    "db": {"slot": 2, "uid": 12, "edges": {"d1": {"slot": 1, "uid": 31}}},
    "plain": {"slot": 5, "uid": 13, "edges": {"p1": {"slot": 0, "uid": 41}}},
}


def _refusals(counters: collections.Counter) -> int:
    """The decoder's refusals: every rx_* count (a reason added later is one too)."""
    return sum(n for k, n in counters.items() if k.startswith("rx_"))


def _frames_in(stream: bytes) -> tuple[int, bool]:
    """Complete frames in a stream as Decoder frames it, and whether it ends with a frame it must refuse."""
    off, n = 0, 0
    while len(stream) - off >= 4:
        (size,) = struct.unpack_from("!I", stream, off)
        if size > fs.MAX_FRAME or size < 8 + 1 + fs.MAC_LEN:
            return n, True
        if len(stream) - off < 4 + size:
            break
        off += 4 + size
        n += 1
    return n, False


def _seal(name: bytes, seq: int, payload: bytes, flip: int | None) -> bytes:
    seq_b = struct.pack("!Q", seq)
    key = KEYS.get(name.decode("utf-8", "replace"), b"\0" * 32)
    mac = bytearray(fs._mac(key, NONCE, seq_b, name, payload))
    if flip is not None:
        mac[flip // 8 % fs.MAC_LEN] ^= 1 << (flip % 8)
    body = seq_b + bytes([len(name)]) + name + bytes(mac) + payload
    return struct.pack("!I", len(body)) + body


def _cluster_of(msg) -> str:
    if isinstance(msg, fs.Batch):
        return msg.cluster
    if isinstance(msg, tuple) and len(msg) >= 2 and isinstance(msg[0], str):
        return msg[1]
    cluster = getattr(msg, "cluster", None)
    if not isinstance(cluster, str):
        raise AssertionError(f"a message of unknown shape: {msg!r}")
    return cluster


def _check_batch(b: fs.Batch) -> None:
    n = len(b)
    if b.keys.shape != (n, fs.KEY_LEN) or b.x.shape != (n, 3) or b.keys.dtype != np.uint8 or b.x.dtype != np.uint8:
        raise AssertionError(f"a batch of shape {b.keys.shape} / {b.x.shape}")
    if n > fs.MAX_FLOWS_PER_MESSAGE or not all(isinstance(e, str) for e in b.edges):
        raise AssertionError(f"a batch of {n} flows, edges {b.edges!r}")
    ok = fs.valid_flows(b)
    counters: collections.Counter = collections.Counter()
    cmds = fs.commands(b, CLUSTERS, counters)
    c = CLUSTERS.get(b.cluster)
    if c is None:
        if cmds is not None or counters["skipped_unknown_cluster"] != n:
            raise AssertionError("flows of an unknown cluster were not skipped")
        return
    skipped = counters["skipped_invalid"] + counters["skipped_unknown_edge"]
    if len(cmds) + skipped != n or counters["skipped_invalid"] != n - int(ok.sum()):
        raise AssertionError(f"{n} flows: {len(cmds)} commands, {dict(counters)}")
    if len(cmds) == 0:
        return
    flow = cmds["flow"]
    if (flow["cluster"] != c["slot"]).any() or (flow["cluster_uid"] != c["uid"]).any():
        raise AssertionError("a command for another cluster slot")
    local = {(e["slot"], e["uid"]) for e in c["edges"].values()}
    if not all((int(s), int(u)) in local for s, u in zip(flow["edge"], flow["edge_uid"])):
        raise AssertionError("a command for an edge this cluster does not have")
    fam = flow["key"]["family"]
    if not ((fam == 4) | (fam == 6)).all() or (flow["state"] > 5).any():
        raise AssertionError("an invalid flow became a command")


def stream(data: bytes) -> None:
    counters: collections.Counter = collections.Counter()
    dec = fs.Decoder(NONCE, lambda: KEYS, counters)
    fed = bytearray()
    good = 0            # frames sealed with a good MAC, a fresh seq and a cluster with a key
    seq = last = 0
    out = []
    pos = 0
    try:
        while pos < len(data):
            kind = data[pos]
            pos += 1
            pieces = []
            if kind & 1 == 0:
                n = int.from_bytes(data[pos:pos + 2], "big")
                pieces.append(data[pos + 2:pos + 2 + n])
                pos += 2 + n
            else:
                step, sel = data[pos:pos + 1], data[pos + 1:pos + 2]
                pos += 2
                seq = (seq + (step[0] if step else 1)) & (2**64 - 1)
                sel_i = sel[0] if sel else 0
                if sel_i < len(NAMES):
                    name = NAMES[sel_i].encode()
                else:
                    n = data[pos] if pos < len(data) else 0
                    name = data[pos + 1:pos + 1 + n]
                    pos += 1 + n
                n = int.from_bytes(data[pos:pos + 2], "big")
                payload = data[pos + 2:pos + 2 + n]
                pos += 2 + n
                flip = data[pos] if kind & 2 and pos < len(data) else (0 if kind & 2 else None)
                pos += 1 if kind & 2 else 0
                frame = _seal(name, seq, payload, flip)
                if flip is None and seq > last and name in (b"web", b"db"):
                    good += 1
                    last = seq
                if kind & 4 and pos < len(data):
                    cut = data[pos] % (len(frame) + 1)
                    pos += 1
                    pieces += [frame[:cut], frame[cut:]]
                else:
                    pieces.append(frame)
            for p in pieces:
                fed += p
                out += dec.feed(p)
    except fs.ProtocolError:
        done, bad = _frames_in(bytes(fed))
        if not bad or counters["rx_oversized"] + counters["rx_garbage"] == 0:
            raise AssertionError("ProtocolError on a stream that frames") from None
        counted = _refusals(counters) - 1                   # the refused frame's own count
        # the messages of frames completed by the last feed before the refused one are lost with it
        if counted + len(out) > done:
            raise AssertionError(f"{done} frames gave {len(out)} messages and {dict(counters)}")
    else:
        done, bad = _frames_in(bytes(fed))
        if bad:
            raise AssertionError("a frame over the limit or too short was not refused")
        counted = _refusals(counters)
        if counted + len(out) != done:
            raise AssertionError(f"{done} frames gave {len(out)} messages and {dict(counters)}")
    if len(out) > good:
        raise AssertionError(f"{len(out)} messages from {good} frames sealed with a good MAC and a fresh seq")
    for msg in out:
        if _cluster_of(msg) not in KEYS:
            raise AssertionError(f"a message for {_cluster_of(msg)!r}, which has no key")
        if isinstance(msg, fs.Batch):
            _check_batch(msg)
        elif isinstance(msg, tuple) and msg[0] == "resync" and len(msg) != 2:
            raise AssertionError(f"a resync message {msg!r}")


def one(data: bytes) -> None:
    if not data:
        return
    if data[0] % 8 == 0:
        try:
            nonce = fs.decode_hello(data[1:])
        except fs.ProtocolError:
            return
        if not isinstance(nonce, bytes) or len(nonce) != fs.NONCE_LEN:
            raise AssertionError(f"a hello with nonce {nonce!r}")
        if fs.decode_hello(fs.encode_hello(nonce)[4:]) != nonce:
            raise AssertionError("a hello does not survive encode/decode")
        return
    stream(data[1:])


def main() -> None:
    atheris.Setup(sys.argv, lambda data: one(bytes(data)))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
