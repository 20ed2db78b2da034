"""Flow sync among N appliances (issue 15), without a data plane: [sync] peers, the hello's capabilities and the
"digest" message, the Maglev table digest of a real region, the agreement rule, and the service with several peers
over loopback TCP (127.0.0.x: each peer is known by its address) on a real shared-memory region."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import ipaddress
import socket
import struct

import msgpack
import numpy as np
import pytest

from control import flowsync as fs
from pydp import config as pconfig
from pydp._ffi import ffi, lib
from pydp.apply import apply_config
from pydp.shm import Region
from test_flowsync import NONCE, TEXT, Harness, batch, connect, frames, ring, until

SYNC = '[sync]\nenabled = true\nlisten_address = "192.0.2.1"\n'


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ---- [sync] peers ----

def test_peers_parse_validate_and_round_trip(tmp_path):
    cfg = pconfig.loads(TEXT + SYNC + 'peers = ["192.0.2.2", "192.0.2.3:7471", "[2001:db8::4]:7472", "2001:db8::5"]\n')
    want = [("192.0.2.2", 7470), ("192.0.2.3", 7471), ("2001:db8::4", 7472), ("2001:db8::5", 7470)]
    assert [(str(p.address), p.port) for p in cfg.sync.peers] == want
    assert [str(p) for p in pconfig.sync_peers(cfg.sync)] == ["192.0.2.2:7470", "192.0.2.3:7471",
                                                            "[2001:db8::4]:7472", "[2001:db8::5]:7470"]
    again = pconfig.loads(pconfig.dumps(cfg, include_secrets=True))
    assert again.sync == cfg.sync
    # the pair's keys still mean one peer
    pair = pconfig.loads(TEXT + SYNC + 'peer_address = "192.0.2.2"\npeer_port = 7480\n')
    assert [str(p) for p in pconfig.sync_peers(pair.sync)] == ["192.0.2.2:7480"] and pair.sync.peers == []
    # the store keeps them (import, export)
    from control.store import Store

    with Store(tmp_path / "s.db") as s:
        s.import_text(TEXT + SYNC + 'peers = ["192.0.2.2", "192.0.2.3:7471"]\n')
        assert [str(p) for p in s.appliance().sync.peers] == ["192.0.2.2:7470", "192.0.2.3:7471"]
        assert 'peers = ["192.0.2.2:7470", "192.0.2.3:7471"]' in s.export_text()
    bad = [
        ('peers = "192.0.2.2"\n', r"sync\.peers: must be an array"),
        ('peers = [1]\n', r"sync\.peers: item 0: .*must be a string"),
        ('peers = ["192.0.2.2:0"]\n', r"sync\.peers: item 0: '192\.0\.2\.2:0': port '0' is not 1\.\.65535"),
        ('peers = ["192.0.2.2:http"]\n', r"port 'http' is not"),
        ('peers = ["host.example"]\n', r"sync\.peers: item 0: .*not an IP address"),
        ('peers = ["127.0.0.1"]\n', r"sync\.peers: item 0: .*loopback"),
        ('peers = ["[2001:db8::4]"]\n', r"write \[address\]:port"),
        ('peers = ["192.0.2.2", "192.0.2.2:7471"]\n', r"sync\.peers: item 1: 192\.0\.2\.2 is listed twice"),
        ('peers = [' + ", ".join(f'"192.0.2.{i}"' for i in range(10, 26)) + ']\n', r"sync\.peers: at most 15"),
        ('peers = ["192.0.2.2"]\npeer_address = "192.0.2.3"\n', r"sync\.peers: give either peers .* or "
                                                                 r"peer_address"),
        ('peers = ["192.0.2.1"]\n', r"sync\.peers: item 0 \(192\.0\.2\.1:7470\) is this appliance's own"),
        ('peers = []\n', r"sync\.peer_address: required .* or sync\.peers"),
    ]
    for extra, want in bad:
        with pytest.raises(pconfig.ConfigError, match=want):
            pconfig.loads(TEXT + SYNC + extra)


# ---- the codec: capabilities and the digest message ----

def test_hello_capabilities_are_compatible_both_ways():
    body = fs.encode_hello(NONCE)[4:]
    assert fs.parse_hello(body) == (NONCE, frozenset({"digest"}))
    assert fs.decode_hello(body) == NONCE
    # an older receiver's hello (no "c"): no capabilities, so no digest is ever sent to it
    old = msgpack.packb({"v": 1, "t": "hello", "n": NONCE})
    assert fs.parse_hello(old) == (NONCE, frozenset())
    # an older sender decodes the new hello with its limits (8 keys, 8 items) and looks only at v, t and n
    msg = msgpack.unpackb(body, raw=False, max_bin_len=64, max_str_len=64, max_array_len=8, max_map_len=8)
    assert msg["v"] == 1 and msg["t"] == "hello" and msg["n"] == NONCE
    with pytest.raises(fs.ProtocolError):
        fs.parse_hello(msgpack.packb({"v": 1, "t": "hello", "n": NONCE, "c": "digest"}))


DIGEST = {"digest": "0123456789abcdef", "seed": 0x5EED, "size": 1021, "edges": [("e1", 1), ("e2", 3)]}


def test_digest_message_round_trip_and_bad_ones_are_counted():
    cfg = pconfig.loads(TEXT)
    enc = fs.Encoder(NONCE, fs.keys_of(cfg))
    c = collections.Counter()
    dec = fs.Decoder(NONCE, lambda: fs.keys_of(cfg), c)
    assert dec.feed(enc.frame("web", fs.digest_payload(DIGEST))) == [("digest", "web", DIGEST)]
    good = fs.digest_payload(DIGEST)
    bad = [{**good, "d": b"short"}, {**good, "s": -1}, {**good, "s": 2**32}, {**good, "m": "1021"},
           {**good, "e": [["e1"]]}, {**good, "e": [["e1", 0]]}, {**good, "e": [[1, 1]]}, {**good, "e": "e1"},
           {**good, "e": [["x" * 32, 1]]}, {**good, "e": [["e", 1]] * 17}, {k: v for k, v in good.items() if k != "d"}]
    for m in bad:
        assert dec.feed(enc.frame("web", m)) == []
    assert c["rx_garbage"] == len(bad)
    # a type this version does not know (a newer peer's): skipped and counted, the stream goes on
    assert dec.feed(enc.frame("web", {"v": 1, "t": "future-thing", "z": 1})) == []
    assert c["rx_unknown_type"] == 1
    assert len(dec.feed(frames(enc, batch(3)))) == 1
    assert sum(v for k, v in c.items() if k not in ("rx_garbage", "rx_unknown_type")) == 0


# ---- the digest of a real region, and the agreement rule ----

def test_digest_follows_the_table_not_the_slots(region, shm_path):
    cfg = pconfig.loads(TEXT)
    slots = apply_config(region, cfg).slots
    d = fs.maglev_digest(region, slots["web"])
    assert d["edges"] == [("e1", 1), ("e2", 1)] and d["seed"] == cfg.dataplane.hash_seed and d["size"] == 1021
    assert len(bytes.fromhex(d["digest"])) == fs.DIGEST_LEN
    assert fs.maglev_digest(region, slots["web"]) == d                       # stable
    assert fs.maglev_digest(region, slots["dns"])["digest"] != d["digest"]
    # another appliance: the clusters and edges in another order, so other slots; the same picks, the same digest
    other_cfg = pconfig.loads(TEXT)
    other_cfg.clusters.reverse()
    other_cfg.clusters[1].edges.reverse()
    other = Region.create(shm_path + ".other", workers=1, ports=1, maglev_max=1021, flow_capacity=1024)
    try:
        oslots = apply_config(other, other_cfg).slots
        assert oslots["web"] != slots["web"]
        web = other.config().clusters[oslots["web"]]
        assert ffi.string(web.edges[0].name) == b"e2"                        # e2 has e1's slot there
        assert fs.maglev_digest(other, oslots["web"]) == d
        # another hash seed: the same table, other picks for the same flow
        other_cfg.dataplane.hash_seed = 1
        apply_config(other, other_cfg)
        seeded = fs.maglev_digest(other, oslots["web"])
        assert seeded["digest"] != d["digest"] and seeded["edges"] == d["edges"]
        assert fs.agreement(d, seeded) == "mismatch"
        assert "hash_seed differs (here 0x5eed, peer 0x1)" == fs.mismatch_reason(d, seeded)
        # an edge down there: another edge set, not a disagreement
        other_cfg.dataplane.hash_seed = cfg.dataplane.hash_seed
        other_cfg.clusters[1].edges[0].state = "disabled"
        apply_config(other, other_cfg)
        fewer = fs.maglev_digest(other, oslots["web"])
        assert fewer["edges"] == [("e1", 1)]
        assert fs.agreement(d, fewer) == "edges_differ"
    finally:
        other.close()
    assert fs.agreement(d, d) == "agree" and fs.agreement(d, None) == "unknown"
    assert fs.agreement(d, {**d, "size": 1019, "digest": "00" * 8}) == "mismatch"


# ---- the service with several peers ----

def peers_cfg(*peers: tuple[str, int], listen=("127.0.0.1", None), **kw):
    cfg = pconfig.loads(TEXT)
    host, port = listen
    cfg.sync = dataclasses.replace(cfg.sync, enabled=True, listen_address=ipaddress.ip_address(host),
                                   listen_port=port or free_port(host), peer_address=None,
                                   peers=[pconfig.SyncPeer(ipaddress.ip_address(a), p) for a, p in peers], **kw)
    return cfg


async def connect_from(src: str, port: int):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0))
    (n,) = struct.unpack("!I", await reader.readexactly(4))
    return reader, writer, fs.decode_hello(await reader.readexactly(n))


class FakePeer:
    """A receiver on 127.0.0.x: hello with or without capabilities, then records what it is sent."""

    def __init__(self, host: str, cfg, caps=fs.CAPS):
        self.host, self.port, self.cfg, self.caps = host, free_port(host), cfg, caps
        self.got: list = []
        self.counters = collections.Counter()

    async def start(self):
        self.server = await asyncio.start_server(self._serve, self.host, self.port)
        return self

    async def _serve(self, reader, writer):
        dec = fs.Decoder(NONCE, lambda: fs.keys_of(self.cfg), self.counters)
        writer.write(fs.encode_hello(NONCE, self.caps))
        while data := await reader.read(65536):
            self.got += dec.feed(data)

    def flows(self) -> int:
        return sum(len(m) for m in self.got if not isinstance(m, tuple))

    def digests(self) -> dict:
        return {m[1]: m[2] for m in self.got if isinstance(m, tuple) and m[0] == "digest"}


def push_events(region, slot: int, n: int, base: int = 5000, worker: int = 0) -> None:
    from control import observe

    pcfg = region.config()
    e1 = observe.clusters(region)["web"]["edges"]["e1"]
    flow = ffi.new("struct pydp_flow *")
    events = lib.pydp_shm_events(region._shm, worker)
    for k in batch(n, base=base).keys:
        ffi.memmove(ffi.addressof(flow, "key"), k.tobytes(), 40)
        flow.cluster, flow.cluster_uid = slot, pcfg.clusters[slot].uid
        flow.edge, flow.edge_uid, flow.state = e1["slot"], e1["uid"], lib.PYDP_FLOW_UDP
        assert lib.pydp_event_push(events, fs.EV_NEW, flow, 0) == 0


def test_every_peer_gets_the_flows_and_a_dead_one_holds_nobody_back(region):
    """Three peers: two listen (one an older version without capabilities), one is dead. Flow events of the owned
    cluster reach both live peers, each with its own counters; the dead one only counts its failed connects."""
    slots = apply_config(region, pconfig.loads(TEXT)).slots
    region.set_active(slots["web"], True)
    cfg0 = pconfig.loads(TEXT)

    async def main():
        b = await FakePeer("127.0.0.2", cfg0).start()
        c = await FakePeer("127.0.0.3", cfg0, caps=()).start()
        dead = ("127.0.0.4", free_port("127.0.0.4"))
        cfg = peers_cfg((b.host, b.port), (c.host, c.port), dead)
        async with Harness(region, cfg) as h:
            await until(lambda: all(p.state_out == "connected" for p in list(h.sync.peers.values())[:2]))
            await until(lambda: ("resync", "web") in b.got and ("resync", "web") in c.got)
            push_events(region, slots["web"], 300)
            await until(lambda: b.flows() == 300 and c.flows() == 300)
            await until(lambda: h.sync.peers[f"{dead[0]}:{dead[1]}"].counters["connect_failures"] >= 1)
            await until(lambda: set(b.digests()) == {"web", "dns"})
            st = h.sync.status()
        b.server.close()
        c.server.close()
        return b, c, st

    b, c, st = asyncio.run(main())
    assert c.digests() == {}                               # the older receiver never sees a digest
    assert b.counters["rx_unknown_type"] == 0 and c.counters["rx_garbage"] == 0
    per = {p["peer"]: p for p in st["peers"]}
    assert list(per) == [f"127.0.0.2:{b.port}", f"127.0.0.3:{c.port}", list(per)[2]]
    assert per[f"127.0.0.2:{b.port}"]["counters"]["flows_sent"] == 300
    assert per[f"127.0.0.3:{c.port}"]["counters"]["flows_sent"] == 300
    assert per[f"127.0.0.2:{b.port}"]["counters"]["digests_sent"] >= 2
    assert per[f"127.0.0.3:{c.port}"]["counters"]["digests_sent"] == 0
    dead = per[list(per)[2]]
    assert dead["sending"] == "connecting" and dead["counters"]["flows_sent"] == 0
    assert st["counters"]["flows_sent"] == 600 and st["counters"]["events_read"] == 300
    assert st["counters"]["resyncs_sent"] == 2
    assert "to 3 peers: " in fs.summary(st)


def test_accepts_every_configured_peer_and_refuses_the_others(region):
    slots = apply_config(region, pconfig.loads(TEXT)).slots
    cfg = peers_cfg(("127.0.0.2", 7470), ("127.0.0.3", 7470))

    async def main():
        async with Harness(region, cfg) as h:
            await until(lambda: h.sync.server is not None)
            port = cfg.sync.listen_port
            _, wb, nb = await connect_from("127.0.0.2", port)
            _, wc, nc = await connect_from("127.0.0.3", port)
            eb, ec = fs.Encoder(nb, fs.keys_of(cfg)), fs.Encoder(nc, fs.keys_of(cfg))
            wb.write(frames(eb, batch(10)))
            wc.write(frames(ec, batch(20, base=100)))
            await until(lambda: h.sync.counters["flows_installed"] == 30)
            forged = bytearray(frames(ec, batch(3, base=300)))
            forged[-1] ^= 1
            wc.write(bytes(forged))                                  # C's bad frame: counted for C
            await until(lambda: h.sync.counters["rx_auth_failures"] == 1)
            reader, wx = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.5", 0))
            assert await reader.read(100) == b""                     # closed without a hello
            wx.close()
            st = h.sync.status()
            wb.close()
            wc.close()
            return st

    st = asyncio.run(main())
    per = {p["peer"]: p["counters"] for p in st["peers"]}
    assert per["127.0.0.2:7470"]["flows_received"] == 10 and per["127.0.0.3:7470"]["flows_received"] == 20
    assert per["127.0.0.3:7470"]["rx_auth_failures"] == 1 and per["127.0.0.2:7470"]["rx_auth_failures"] == 0
    assert st["counters"]["refused_address"] == 1 and st["receiving"]["peers"] == 2
    assert len(ring(region, 0)) == 30 and len(ring(region, 1)) == 30
    assert set(ring(region, 0)["flow"]["cluster"]) == {slots["web"]}


def test_active_active_cluster_installs_while_owned_here(region):
    """A cluster every appliance owns at once (failover = "bgp"): a peer's flows are installed while it is owned
    here, skipped while not; a CARP cluster keeps the pair's rule (installed while the peer owns it)."""
    slots = apply_config(region, pconfig.loads(TEXT)).slots
    cfg = peers_cfg(("127.0.0.2", 7470))
    object.__setattr__(cfg.clusters[0], "failover", "bgp")          # web; until ClusterConfig.failover exists
    assert fs.active_active_of(cfg) == {"web"}

    async def main():
        async with Harness(region, cfg) as h:
            await until(lambda: h.sync.server is not None)
            _, w, nonce = await connect_from("127.0.0.2", cfg.sync.listen_port)
            enc = fs.Encoder(nonce, fs.keys_of(cfg))
            w.write(frames(enc, batch(6)))                            # web, not owned here: skipped
            await until(lambda: h.sync.counters["skipped_not_owned"] == 6)
            region.set_active(slots["web"], True)
            region.set_active(slots["dns"], True)
            await until(lambda: {"web", "dns"} <= set(h.sync.owned))
            w.write(frames(enc, batch(8, base=50)))                   # web, owned here: installed
            w.write(frames(enc, batch(4, base=90, cluster="dns", edges=("d1", "d2"))))   # CARP, owned: skipped
            await until(lambda: h.sync.counters["flows_installed"] == 8 and h.sync.counters["skipped_owned"] == 4)
            st = h.sync.status()
            w.close()
            return st

    st = asyncio.run(main())
    assert st["active_active"] == ["web"]
    assert len(ring(region, 0)) == 8


def test_a_peer_with_another_table_is_reported(region):
    """The peer's digest of web has the same edge set and another hash seed: counted once, logged
    (maglev_disagreement, rate-limited), shown in status and the metrics; agreeing again is logged too."""
    from prometheus_client.core import Metric

    slots = apply_config(region, pconfig.loads(TEXT)).slots
    cfg = peers_cfg(("127.0.0.2", 7470))

    async def main():
        async with Harness(region, cfg) as h:
            await until(lambda: "web" in h.sync.digests)
            ours = h.sync.digests["web"]
            _, w, nonce = await connect_from("127.0.0.2", cfg.sync.listen_port)
            enc = fs.Encoder(nonce, fs.keys_of(cfg))
            theirs = {**ours, "seed": 1, "digest": "ff" * 8}
            for _ in range(3):
                w.write(enc.frame("web", fs.digest_payload(theirs)))
            w.write(enc.frame("dns", fs.digest_payload(h.sync.digests["dns"])))
            await until(lambda: h.sync.counters["digests_received"] == 4)
            await until(lambda: h.sync.counters["maglev_mismatches"] == 1)
            st = h.sync.status()
            metrics = {(m.name, tuple(sorted(s.labels.items()))): s.value
                       for m in h.sync.metrics() if isinstance(m, Metric) for s in m.samples}
            w.write(enc.frame("web", fs.digest_payload(ours)))
            await until(lambda: h.sync.peers["127.0.0.2:7470"].agreement.get("web") == "agree")
            w.close()
            return ours, st, metrics, list(h.events)

    ours, st, metrics, events = asyncio.run(main())
    web = st["maglev"]["web"]
    assert web["digest"] == ours["digest"] == fs.maglev_digest(region, slots["web"])["digest"]
    assert web["peers"]["127.0.0.2:7470"] == {"digest": "ff" * 8, "agreement": "mismatch"}
    assert st["maglev"]["dns"]["peers"]["127.0.0.2:7470"]["agreement"] == "agree"
    assert st["counters"]["maglev_mismatches"] == 1
    bad = [kw for name, kw in events if name == "maglev_disagreement"]
    assert len(bad) == 1 and bad[0]["cluster"] == "web" and bad[0]["peer"] == "127.0.0.2:7470"
    assert bad[0]["reason"] == "hash_seed differs (here 0x5eed, peer 0x1)"
    assert [kw["cluster"] for name, kw in events if name == "maglev_agreement"] == ["web"]
    key = (("cluster", "web"), ("peer", "127.0.0.2:7470"))
    assert metrics[("pydp_maglev_digest_mismatch", key)] == 1
    assert metrics[("pydp_maglev_digest_mismatch", (("cluster", "dns"), ("peer", "127.0.0.2:7470")))] == 0
    assert metrics[("pydp_flowsync_maglev_mismatches", ())] == 1          # a counter (_total on exposition)
    lines = fs.maglev_lines(st)
    assert any(line.startswith(f"web {ours['digest']}") and "127.0.0.2:7470 MISMATCH" in line for line in lines)


def test_active_active_refresh_sends_only_flows_with_packets_here():
    """A peer's copy has its last-packet time renewed by every install; only a packet count that grew here since
    the previous refresh makes a flow of an active-active cluster go out again (else flows bounce for ever)."""
    from pydp.shm import numpy_dtype

    def records(packets, base=0):
        fl = np.zeros(len(packets), dtype=numpy_dtype("struct pydp_flow"))
        if len(packets):
            fl.view(np.uint8).reshape(len(packets), -1)[:, :fs.KEY_LEN] = batch(len(packets), base=base).keys
        fl["packets"] = packets
        return fl

    w = fs.PacketWatch()
    assert list(w.grown(records([0, 5, 7]))) == [False, True, True]      # 0: a copy installed by sync
    assert list(w.grown(records([0, 5, 9]))) == [False, False, True]
    both = np.concatenate([records([3], base=100), records([0, 5, 9])])    # a new flow, the others unchanged
    assert list(w.grown(both)) == [True, False, False, False]
    assert list(w.grown(records([1, 5, 9]))) == [True, False, False]      # the copy got packets: ECMP moved it here
    assert list(w.grown(records([]))) == [] and list(w.grown(records([2]))) == [True]


def test_a_peer_that_does_not_read_loses_only_its_own_queue(region, monkeypatch):
    """Two peers: one reads, one accepts, says hello and then never reads (its receive buffer small). Once the
    socket to the stalled one is full, its queue is dropped and counted for it alone; the other gets every flow."""
    monkeypatch.setattr(fs, "WRITE_BUFFER_MAX", 64 << 10)
    slots = apply_config(region, pconfig.loads(TEXT)).slots
    region.set_active(slots["web"], True)
    cfg0 = pconfig.loads(TEXT)
    stalled: list = []

    async def stall(reader, writer):
        writer.write(fs.encode_hello(NONCE))
        stalled.append(writer)                   # keeps the connection open, reads nothing

    async def main():
        good = await FakePeer("127.0.0.2", cfg0).start()
        lsock = socket.socket()
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)    # inherited by the accepted socket
        lsock.bind(("127.0.0.3", 0))
        slow_server = await asyncio.start_server(stall, sock=lsock)
        slow = ("127.0.0.3", lsock.getsockname()[1])
        cfg = peers_cfg((good.host, good.port), slow, max_flows_per_s=10_000_000, batch_flows=4096)
        async with Harness(region, cfg) as h:
            await until(lambda: len(h.sync.peers) == 2
                        and all(p.state_out == "connected" for p in h.sync.peers.values()))
            slow_peer = h.sync.peers[f"{slow[0]}:{slow[1]}"]
            sent = 0
            for i in range(40):                  # bounded: at most 40 x 8000 flows
                if slow_peer.counters["send_dropped_slow_peer"]:
                    break
                for w in range(region.nb_workers):
                    push_events(region, slots["web"], 4000, base=100_000 + (i * 2 + w) * 4000, worker=w)
                    sent += 4000
                await until(lambda: h.sync.counters["events_read"] == sent)
            await until(lambda: good.flows() == sent, 20)
            st = h.sync.status()
        good.server.close()
        slow_server.close()
        for w in stalled:
            w.close()
        return sent, st

    sent, st = asyncio.run(main())
    per = {p["peer"]: p["counters"] for p in st["peers"]}
    slow_c = next(c for name, c in per.items() if name.startswith("127.0.0.3:"))
    good_c = next(c for name, c in per.items() if name.startswith("127.0.0.2:"))
    assert slow_c["send_dropped_slow_peer"] > 0, (sent, slow_c)
    assert good_c["flows_sent"] == sent and good_c["send_dropped_slow_peer"] == good_c["send_dropped_queue"] == 0
    assert st["counters"]["send_dropped_slow_peer"] == slow_c["send_dropped_slow_peer"]
