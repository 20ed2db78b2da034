"""Flow sync without a data plane: the codec and its authentication, the [sync] config and store, and both halves of
the service over real TCP on loopback against a real shared-memory region (the C ring and install functions run;
no worker thread drains the rings, so the tests read what was pushed)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import ipaddress
import os
import socket
import sqlite3
import struct

import msgpack
import numpy as np
import pytest

from control import flowsync as fs
from control.daemon import RegionHolder
from control.store import SCHEMA_VERSION, Store
from pydp import config as pconfig
from pydp._ffi import ffi, lib
from pydp.apply import apply_config
from pydp.shm import numpy_dtype
from netlab import eventually
from test_observe import TEXT as OBSERVE_TEXT

PASS = "s3cret-carp-Pa55"
# the clusters of test_observe (web: e1, e2; dns: d1, d2), with the CARP passphrases flow sync is keyed on
TEXT = OBSERVE_TEXT.replace("vhid = 1\n", f'vhid = 1\npassphrase = "{PASS}"\n').replace(
    "vhid = 2\n", 'vhid = 2\npassphrase = "other-secret"\n')
NONCE = bytes(range(16))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sync_cfg(**kw):
    """The TEXT config with [sync] on loopback (the peer port is one nobody listens on unless the test does)."""
    cfg = pconfig.loads(TEXT)
    cfg.sync = dataclasses.replace(cfg.sync, enabled=True, listen_address=ipaddress.ip_address("127.0.0.1"),
                                   listen_port=free_port(), peer_address=ipaddress.ip_address("127.0.0.1"),
                                   peer_port=free_port(), **kw)
    return cfg


def keys(n: int, base: int = 0) -> np.ndarray:
    """n distinct IPv4 UDP flow keys to 198.51.100.10:53 as (n, 40) bytes."""
    k = np.zeros((n, fs.KEY_LEN), dtype=np.uint8)
    for i in range(n):
        k[i, 0:4] = list(ipaddress.IPv4Address(0xCB007100 + base + i).packed)        # 203.0.113.x
        k[i, 16:20] = [198, 51, 100, 10]
        k[i, 32:34] = list(struct.pack("!H", 1024 + (base + i) % 60000))
        k[i, 34:36] = list(struct.pack("!H", 53))
        k[i, 36] = 17
        k[i, 37] = lib.PYDP_AF_INET
    return k


def batch(n: int, edges=("e1", "e2"), cluster="web", base=0, typ=fs.EV_NEW, state=None) -> fs.Batch:
    x = np.zeros((n, 3), dtype=np.uint8)
    x[:, 0] = np.arange(n) % len(edges)
    x[:, 1] = lib.PYDP_FLOW_UDP if state is None else state
    x[:, 2] = typ
    return fs.Batch(cluster, list(edges), keys(n, base), x)


def frames(enc: fs.Encoder, b: fs.Batch) -> bytes:
    return enc.frame(b.cluster, b.payload())


def decoder(counters=None, cfg=None):
    import collections

    counters = counters if counters is not None else collections.Counter()
    ks = fs.keys_of(cfg or pconfig.loads(TEXT))
    return fs.Decoder(NONCE, lambda: ks, counters), counters


# ---- keys ----

def test_key_is_rfc5869_hkdf_of_the_passphrase():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    want = HKDF(algorithm=hashes.SHA256(), length=32, salt=fs.LABEL, info=b"cluster:web").derive(PASS.encode())
    assert fs.derive_key(PASS, "web") == want
    assert fs.derive_key(PASS, "dns") != want and fs.derive_key(PASS + "x", "web") != want
    assert set(fs.keys_of(pconfig.loads(TEXT))) == {"web", "dns"}


# ---- codec ----

def test_round_trip_keeps_every_flow():
    enc = fs.Encoder(NONCE, fs.keys_of(pconfig.loads(TEXT)))
    dec, c = decoder()
    b = batch(300, edges=("e2", "e1", "e3"), typ=fs.EV_END, state=lib.PYDP_FLOW_TCP_FIN)
    data = enc.frame("web", {"v": 1, "t": "resync"}) + frames(enc, b)
    got = []
    for i in range(0, len(data), 777):               # arbitrary TCP segmentation
        got += dec.feed(data[i:i + 777])
    assert got[0] == ("resync", "web")
    r = got[1]
    assert r.cluster == "web" and r.edges == ["e2", "e1", "e3"]
    np.testing.assert_array_equal(r.keys, b.keys)
    np.testing.assert_array_equal(r.x, b.x)
    assert fs.valid_flows(r).all()
    assert sum(v for k, v in c.items() if k.startswith("rx_")) == 0


def test_forged_replayed_and_foreign_frames_are_counted_and_skipped():
    cfg = pconfig.loads(TEXT)
    enc = fs.Encoder(NONCE, fs.keys_of(cfg))
    dec, c = decoder(cfg=cfg)
    good = frames(enc, batch(4))
    assert len(dec.feed(good)) == 1
    assert dec.feed(good) == [] and c["rx_replays"] == 1                 # the same frame again
    # a wrong passphrase (the peer's config differs): bad MAC
    wrong = dataclasses.replace(cfg.clusters[0], carp=dataclasses.replace(cfg.clusters[0].carp, passphrase="nope"))
    other = fs.Encoder(NONCE, {"web": fs.derive_key(wrong.carp.passphrase, "web")})
    other.seq = 10
    assert dec.feed(frames(other, batch(4))) == [] and c["rx_auth_failures"] == 1
    # a frame of another connection (another nonce), replayed here
    old = fs.Encoder(bytes(16), fs.keys_of(cfg))
    old.seq = 20
    assert dec.feed(frames(old, batch(4))) == [] and c["rx_auth_failures"] == 2
    # one flipped bit of the payload
    f = bytearray(frames(enc, batch(4)))
    f[-3] ^= 1
    assert dec.feed(bytes(f)) == [] and c["rx_auth_failures"] == 3
    # a cluster this appliance does not know
    stranger = fs.Encoder(NONCE, {"mail": fs.derive_key(PASS, "mail")})
    stranger.seq = 30
    assert dec.feed(frames(stranger, batch(4, cluster="mail"))) == [] and c["rx_unknown_cluster"] == 1
    # authentic but another version, and authentic but not a flows message
    assert dec.feed(enc.frame("web", {"v": 2, "t": "flows"})) == [] and c["rx_bad_version"] == 1
    assert dec.feed(enc.frame("web", {"v": 1, "t": "flows", "e": ["e1"], "k": b"x" * 41, "x": b""})) == []
    assert dec.feed(enc.frame("web", {"v": 1, "t": "flows", "e": [1], "k": b"", "x": b""})) == []
    assert c["rx_garbage"] == 2
    # and the stream still works
    assert len(dec.feed(frames(enc, batch(2)))) == 1


def test_garbage_and_oversized_frames():
    dec, c = decoder()
    assert dec.feed(struct.pack("!I", 41) + os.urandom(41)) == []       # random: some refusal, nothing out
    assert sum(c.values()) == 1
    with pytest.raises(fs.ProtocolError):
        dec.feed(struct.pack("!I", fs.MAX_FRAME + 1))
    assert c["rx_oversized"] == 1
    dec, c = decoder()
    with pytest.raises(fs.ProtocolError):
        dec.feed(struct.pack("!I", 3) + b"abc")
    assert c["rx_garbage"] == 1


def test_hello():
    assert fs.decode_hello(fs.encode_hello(NONCE)[4:]) == NONCE
    for body in (b"\xc1", msgpack.packb({"t": "hello", "v": 9, "n": NONCE}), msgpack.packb({"t": "hello", "v": 1}),
                 msgpack.packb([1, 2])):
        with pytest.raises(fs.ProtocolError):
            fs.decode_hello(body)


def test_received_flows_the_fast_path_cannot_use_are_marked():
    b = batch(6)
    b.keys = b.keys.copy()
    b.x = b.x.copy()
    b.keys[0, 37] = 9                  # family
    b.keys[1, 38] = 1                  # key padding
    b.keys[2, 10] = 1                  # IPv4 address with bytes beyond the fourth
    b.x[3, 0] = 2                      # edge index beyond the names
    b.x[4, 1] = 99                     # flow state
    b.x[5, 2] = 7                      # event type
    assert not fs.valid_flows(b).any()


# ---- config and store ----

def test_sync_config_rules_and_round_trip():
    text = TEXT + '[sync]\nenabled = true\npeer_address = "192.0.2.2"\nlisten_address = "192.0.2.1"\nrefresh_s = 5\n'
    cfg = pconfig.loads(text)
    assert cfg.sync.enabled and str(cfg.sync.peer_address) == "192.0.2.2" and cfg.sync.batch_flows == 256
    assert pconfig.loads(pconfig.dumps(cfg, include_secrets=True)).sync == cfg.sync
    bad = [
        ('[sync]\nenabled = true\n', "sync.peer_address: required when flow sync is enabled"),
        ('[sync]\nbatch_flows = 0\n', "sync.batch_flows"),
        ('[sync]\nlisten_address = "224.0.0.1"\n', "multicast"),
        ('[sync]\npeer_address = "0.0.0.0"\n', "sync.peer_address"),
        ('[sync]\nbogus = 1\n', "sync.bogus"),
    ]
    with pytest.raises(pconfig.ConfigError, match=r"sync\.refresh_s: must be less than dataplane\.timeouts\.udp"):
        pconfig.loads(TEXT.replace("[dataplane]\n", "[dataplane]\ntimeouts = { udp = 20 }\n")
                      + '[sync]\nenabled = true\npeer_address = "192.0.2.2"\n')
    for extra, want in bad:
        with pytest.raises(pconfig.ConfigError, match=want.replace(".", r"\.")):
            pconfig.loads(TEXT + extra)
    no_pass = TEXT.replace(f'passphrase = "{PASS}"\n', "")
    with pytest.raises(pconfig.ConfigError, match=r"cluster\[0\]\.carp\.passphrase: required when flow sync"):
        pconfig.loads(no_pass + '[sync]\nenabled = true\npeer_address = "192.0.2.2"\n')
    assert not pconfig.loads(no_pass).sync.enabled       # without sync, no passphrase is needed


def test_store_keeps_sync_and_migrates_an_old_store(tmp_path):
    p = tmp_path / "s.db"
    with Store(p) as s:
        s.import_text(TEXT + '[sync]\nenabled = true\npeer_address = "192.0.2.2"\n')
        assert s.appliance().sync.enabled
        assert "[sync]" in s.export_text()
    # a store of schema version 1 (before [sync] and drain timeouts): migrated, sync off, everything else kept
    old = tmp_path / "old.db"
    with Store(old) as s:
        s.import_text(TEXT)
    con = sqlite3.connect(old)
    con.execute("ALTER TABLE appliance DROP COLUMN sync")
    con.execute("ALTER TABLE clusters DROP COLUMN drain_timeout")
    con.execute("DROP TABLE drain_started")
    con.execute("DROP TABLE history")                      # schema 4
    con.execute("ALTER TABLE clusters DROP COLUMN failover")   # schema 5
    con.execute("ALTER TABLE appliance DROP COLUMN bgp")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with Store(old) as s:
        assert s.schema_version == SCHEMA_VERSION
        cfg = s.appliance()
        assert not cfg.sync.enabled and [c.name for c in cfg.clusters] == ["web", "dns"]


# ---- the service on a real region ----

@pytest.fixture
def region(region):
    """The shared region (tests/conftest.py) with TEXT applied; .slots: its cluster slots."""
    region.slots = apply_config(region, pconfig.loads(TEXT)).slots
    return region


def ring(region, worker: int) -> np.ndarray:
    """The commands pushed to a worker's ring and not taken (no worker runs here)."""
    r = lib.pydp_shm_cmds(region._shm, worker)
    n = r.head - r.tail
    cmds = np.frombuffer(ffi.buffer(r.cmds, ffi.sizeof(r.cmds)), dtype=numpy_dtype("struct pydp_cmd"))
    return cmds[[(r.tail + i) % lib.PYDP_CMD_RING_SIZE for i in range(n)]]


def test_commands_map_names_onto_local_slots(region):
    from control import observe
    import collections

    c = collections.Counter()
    cl = observe.clusters(region)
    # the peer lists its edges in its own order, and one this appliance does not have
    b = batch(9, edges=("e2", "gone", "e1"))
    cmds = fs.commands(b, cl, c)
    assert len(cmds) == 6 and c["skipped_unknown_edge"] == 3
    web = cl["web"]
    f = cmds["flow"]
    assert (f["cluster"] == web["slot"]).all() and (f["cluster_uid"] == web["uid"]).all()
    want = {0: web["edges"]["e2"], 2: web["edges"]["e1"]}
    for i, j in enumerate(np.flatnonzero(b.x[:, 0] != 1)):
        e = want[int(b.x[j, 0])]
        assert (int(f["edge"][i]), int(f["edge_uid"][i])) == (e["slot"], e["uid"])
        assert bytes(cmds[i:i + 1].view(np.uint8)[8 * 2:8 * 2 + 40]) == b.keys[j].tobytes()
    assert (cmds["op"] == lib.PYDP_CMD_INSERT).all() and (cmds["arg0"] == 0).all()
    ends = fs.commands(batch(2, typ=fs.EV_END, state=lib.PYDP_FLOW_TCP_FIN), cl, c)
    assert (ends["arg0"] == lib.PYDP_INSTALL_UPDATE_ONLY).all()
    assert fs.commands(batch(3, cluster="mail"), cl, c) is None and c["skipped_unknown_cluster"] == 3


class Harness:
    """A FlowSync on the region, its worker thread, and the loop it runs on."""

    def __init__(self, region, cfg):
        self.holder = RegionHolder()
        self.holder.replace(region)
        self.cfg = cfg
        self.worker = concurrent.futures.ThreadPoolExecutor(1)
        self.events: list = []
        self.sync = fs.FlowSync(holder=self.holder, config=lambda: self.cfg, run_worker=self.run_worker,
                                event=lambda name, *a, **kw: self.events.append((name, kw)), alive=lambda: True)

    async def run_worker(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    async def __aenter__(self):
        self.task = asyncio.create_task(self.sync.run())
        return self

    async def __aexit__(self, *exc):
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.worker.shutdown(wait=True)


async def until(pred, timeout=10.0):
    """eventually() for a coroutine: polls pred from a thread while the event loop goes on."""
    await asyncio.to_thread(eventually, pred, timeout, interval=0.02)


async def connect(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    (n,) = struct.unpack("!I", await reader.readexactly(4))
    return reader, writer, fs.decode_hello(await reader.readexactly(n))


def test_receiver_installs_into_every_worker_and_refuses_the_rest(region):
    cfg = sync_cfg()

    async def main():
        async with Harness(region, cfg) as h:
            await until(lambda: h.sync.server is not None)
            assert h.sync.demote_reasons() == []                     # no peer yet: nothing to wait for
            _, w, nonce = await connect(cfg.sync.listen_port)
            enc = fs.Encoder(nonce, fs.keys_of(cfg))
            await until(lambda: h.sync.peer_in is not None)
            assert h.sync.demote_reasons() == ["flowsync"]           # the peer is there: wait for its flows
            w.write(enc.frame("web", {"v": 1, "t": "resync"}) + frames(enc, batch(100)))
            await until(lambda: h.sync.counters["flows_installed"] == 100)
            assert h.sync.counters["resyncs_received"] == 1
            assert h.sync.demote_reasons() == []                     # installed: CARP may preempt
            good = frames(enc, batch(5, base=500))
            w.write(good + good)                                     # a replay inside the connection
            forged = bytearray(frames(enc, batch(5, base=600)))
            forged[-1] ^= 0x80
            w.write(bytes(forged))
            await until(lambda: h.sync.counters["rx_auth_failures"] == 1 and h.sync.counters["rx_replays"] == 1)
            await until(lambda: h.sync.counters["flows_installed"] == 105)
            # the connection is dropped on an oversized frame; nothing of it is installed
            w.write(struct.pack("!I", fs.MAX_FRAME * 4) + b"\0" * 100)
            await until(lambda: h.sync.counters["rx_protocol_errors"] == 1)
            # a cluster this appliance owns (it is the CARP master): the peer's flows of it are not installed
            region.set_active(region.slots["web"], True)
            await until(lambda: "web" in h.sync.owned)
            _, w2, nonce2 = await connect(cfg.sync.listen_port)
            enc2 = fs.Encoder(nonce2, fs.keys_of(cfg))
            w2.write(frames(enc2, batch(7, base=700)))
            await until(lambda: h.sync.counters["skipped_owned"] == 7)
            w2.close()
            # only the configured peer may connect
            h.cfg.sync = dataclasses.replace(h.cfg.sync, peer_address=ipaddress.ip_address("127.0.0.2"))
            h.sync.settings = h.cfg.sync
            reader, w3 = await asyncio.open_connection("127.0.0.1", cfg.sync.listen_port)
            assert await reader.read(100) == b""                   # closed without a hello
            w3.close()
            return dict(h.sync.counters)

    c = asyncio.run(main())
    assert c["flows_installed"] == 105 and c["rx_oversized"] == 1 and c["refused_address"] == 1
    for worker in (0, 1):
        r = ring(region, worker)
        assert len(r) == 105                                  # every worker gets every flow
        assert (r["op"] == lib.PYDP_CMD_INSERT).all()
        assert set(r["flow"]["cluster"]) == {region.slots["web"]}


def test_receiver_bounds_what_waits_for_the_rings(region):
    cfg = sync_cfg(queue_flows=1024)

    async def main():
        async with Harness(region, cfg) as h:
            await until(lambda: h.sync.server is not None)
            _, w, nonce = await connect(cfg.sync.listen_port)
            enc = fs.Encoder(nonce, fs.keys_of(cfg))
            for i in range(8):                                       # 8 x 400 flows: rings hold 256 each
                w.write(frames(enc, batch(400, base=i * 400)))
            await until(lambda: h.sync.counters["flows_received"] == 3200)
            await until(lambda: h.sync.counters["install_dropped"] > 0
                        and len(ring(region, 0)) == lib.PYDP_CMD_RING_SIZE)
            return dict(h.sync.counters), h.sync.install_queued

    c, queued = asyncio.run(main())
    assert c["install_dropped"] > 0
    assert queued <= 1024
    assert len(ring(region, 0)) == lib.PYDP_CMD_RING_SIZE      # full: the rest waits, bounded


def test_sender_batches_under_the_rate_bound_and_resyncs_on_connect(region):
    """The owned cluster's flows go out: a full dump (resync) on connect, then flow events, in messages of at most
    batch_flows, never faster than the rate bound allows."""
    cfg = sync_cfg(batch_flows=50, max_flows_per_s=2000)
    slot = region.slots["web"]
    table = lib.pydp_shm_flows(region._shm, 1)
    pcfg = region.config()
    now = lib.pydp_now_ms() & 0xFFFFFFFF
    edge_slot = {n: e for n, e in __import__("control.observe", fromlist=["x"]).clusters(region)["web"]["edges"]
                 .items()}
    for i, k in enumerate(keys(30)):                           # 30 flows in worker 1's table, as a worker would
        key = ffi.new("struct pydp_flow_key *")
        ffi.memmove(key, k.tobytes(), 40)
        h = lib.pydp_flow_hash(key, pcfg.hash_seed)
        f = lib.pydp_flow_insert(table, key, h, now, pcfg, ffi.NULL)
        e = edge_slot["e1" if i % 2 else "e2"]
        f.cluster, f.cluster_uid = slot, pcfg.clusters[slot].uid
        f.edge, f.edge_uid, f.state = e["slot"], e["uid"], lib.PYDP_FLOW_UDP
    region.set_active(slot, True)
    got: list = []
    times: list = []

    async def peer(reader, writer):
        import collections

        dec = fs.Decoder(NONCE, lambda: fs.keys_of(cfg), collections.Counter())
        writer.write(fs.encode_hello(NONCE))
        while data := await reader.read(65536):
            for m in dec.feed(data):
                got.append(m)
                times.append(asyncio.get_running_loop().time())

    async def main():
        server = await asyncio.start_server(peer, "127.0.0.1", cfg.sync.peer_port)
        async with Harness(region, cfg) as h:
            await until(lambda: sum(len(m) for m in got if not isinstance(m, tuple)) >= 30)
            t0 = asyncio.get_running_loop().time()
            flow = ffi.new("struct pydp_flow *")
            events = lib.pydp_shm_events(region._shm, 0)
            e1 = edge_slot["e1"]
            for i, k in enumerate(keys(1000, base=5000)):        # 1000 NEW events from worker 0
                ffi.memmove(ffi.addressof(flow, "key"), k.tobytes(), 40)
                flow.cluster, flow.cluster_uid = slot, pcfg.clusters[slot].uid
                flow.edge, flow.edge_uid, flow.state = e1["slot"], e1["uid"], lib.PYDP_FLOW_UDP
                if lib.pydp_event_push(events, fs.EV_NEW, flow, 0) != 0:
                    break
            await until(lambda: sum(len(m) for m in got if not isinstance(m, tuple)) >= 1030)
            elapsed = asyncio.get_running_loop().time() - t0
            counters = dict(h.sync.counters)
        server.close()
        return elapsed, counters

    elapsed, c = asyncio.run(main())
    digests = {m[1]: m[2] for m in got if isinstance(m, tuple) and m[0] == "digest"}
    got[:] = [m for m in got if not (isinstance(m, tuple) and m[0] == "digest")]
    assert set(digests) == {"web", "dns"}                     # the receiver's hello listed "digest"
    assert digests["web"] == fs.maglev_digest(region, slot)   # the table as published, seed and edges with it
    assert got[0] == ("resync", "web")
    flows = [m for m in got if not isinstance(m, tuple)]
    assert all(len(m) <= 50 for m in flows) and all(m.cluster == "web" for m in flows)
    assert sum(len(m) for m in flows) == 1030
    dump = np.concatenate([m.keys for m in flows])[:30]
    assert {bytes(k) for k in dump} == {bytes(k) for k in keys(30)}
    names = {m.edges[int(x[0])] for m in flows for x in m.x}
    assert names == {"e1", "e2"}
    # 1000 flows at 2000/s with a 0.2 s burst: at least (1000 - 400) / 2000 s
    assert elapsed >= 0.25, f"1000 flows in {elapsed:.3f} s: above the rate bound"
    assert c["events_read"] == 1000 and c["resyncs_sent"] == 1 and c["flows_sent"] == 1030


def test_a_connection_leaves_nothing_behind_when_it_ends(region, monkeypatch):
    """Reconnections (every takeover and restart of the peer) must not pile up decoders, buffers, tasks or peers:
    after 20 connect/send/close cycles no Decoder is alive, one Peer stands for the peer and no task is left."""
    import gc
    import weakref

    cfg = sync_cfg()
    made: list = []

    class Tracked(fs.Decoder):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(weakref.ref(self))

    monkeypatch.setattr(fs, "Decoder", Tracked)

    async def main():
        async with Harness(region, cfg) as h:
            await until(lambda: h.sync.server is not None)
            tasks = len(asyncio.all_tasks())
            for i in range(20):
                r, w, nonce = await connect(cfg.sync.listen_port)
                enc = fs.Encoder(nonce, fs.keys_of(cfg))
                w.write(enc.frame("web", {"v": 1, "t": "resync"}) + frames(enc, batch(5, base=i * 5))
                        + b"\0\0\x10")                  # and a frame cut short: its bytes wait in the buffer
                await until(lambda: h.sync.counters["resyncs_received"] == i + 1)
                w.close()
                await w.wait_closed()
                await until(lambda: h.sync.peer_in is None)
            await until(lambda: h.sync.counters["flows_received"] == 100)
            gc.collect()
            return tasks, len(asyncio.all_tasks()), list(h.sync.peers.values())

    before, after, peers = asyncio.run(main())
    gc.collect()
    assert len(made) == 20 and all(ref() is None for ref in made), "a Decoder outlived its connection"
    assert after <= before, "tasks left by the connections"
    assert len(peers) == 1 and peers[0].inbound is None and peers[0].digests == {}
