"""The lab's clients, run in the clients' namespace: long-lived HTTP/1.1 keep-alive connections to the cluster IP
plus a steady stream of new short connections, recording which edge answered each.

    python -m control.lab.client --vip 198.51.100.10 --src 198.51.100.100,198.51.100.101 --conns 200 \\
        --interval 0.5 --new-rate 20 --out DIR --stop FILE

Why keep-alive connections: each one is a single TCP connection pinned to one edge for the whole run, and each
request on it is one line in that edge's nginx access log with the bytes nginx sent ($bytes_sent). The client counts
the bytes it read per connection, so a connection that survived (a takeover, an edge-set change, a drain) is proved
by equal byte counts on both ends. A connection is broken when a request fails (reset, EOF, 30 s without an answer)
or is answered by another edge; it is not reopened (with --reopen, a new connection, with a new id, takes its place).

Every connection source address is one of --src (round robin), so the load balancer sees many clients.
DIR/events.jsonl gets one line per new connection ({"t", "edge"|null, "err", "src", "sport", "connect_s"}), per UDP flow
(--udp-every: kind "udp", keys "t", "edge", "err") and per long-lived connection event,
flushed twice a second (the demo reads it live); DIR/summary.json gets every long-lived connection at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

REQUEST_TIMEOUT = 30.0


class Recorder:
    def __init__(self, path: str):
        self.f = open(path, "a")
        self.last_flush = 0.0

    def write(self, rec: dict) -> None:
        self.f.write(json.dumps(rec) + "\n")
        now = time.monotonic()
        if now - self.last_flush > 0.5:
            self.f.flush()
            self.last_flush = now


async def request(r: asyncio.StreamReader, w: asyncio.StreamWriter, path: str) -> tuple[int, str]:
    """One GET on the connection: (bytes read, edge named in the body)."""
    w.write(f"GET {path} HTTP/1.1\r\nHost: pydp-lab\r\n\r\n".encode())
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await r.readexactly(length)
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"HTTP status {head.split(b' ', 2)[1].decode()}")
    return len(head) + length, body.decode().split()[-1]


class Conn:
    """One long-lived connection."""

    def __init__(self, i: int, src: str):
        self.i, self.src = i, src
        self.port = 0
        self.edge: str | None = None
        self.bytes = self.requests = 0
        self.opened: float | None = None
        self.broken: float | None = None
        self.err: str | None = None
        self.last_ok: float | None = None
        self.delay = (i % 50) * 0.04                     # spread the first opening over 2 s

    def row(self) -> dict:
        return {"id": self.i, "src": self.src, "port": self.port, "edge": self.edge, "bytes": self.bytes,
                "requests": self.requests, "opened": self.opened, "broken": self.broken, "err": self.err,
                "last_ok": self.last_ok}


async def long_conn(c: Conn, args, rec: Recorder, stop: asyncio.Event) -> None:
    await asyncio.sleep(c.delay)
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(args.vip, 80, local_addr=(c.src, 0)), 10)
    except (OSError, asyncio.TimeoutError) as e:
        c.broken, c.err = time.time(), f"connect: {e!r}"
        rec.write({"kind": "conn_broken", **c.row()})
        return
    c.port = w.get_extra_info("sockname")[1]
    try:
        while not stop.is_set():
            n, edge = await asyncio.wait_for(request(r, w, f"/conn/{c.i}"), REQUEST_TIMEOUT)
            if c.edge is None:
                c.edge, c.opened = edge, time.time()
                rec.write({"kind": "conn_open", **c.row()})
            elif edge != c.edge:
                raise ConnectionError(f"answered by {edge}, was {c.edge}")
            c.bytes += n
            c.requests += 1
            c.last_ok = time.time()
            try:
                await asyncio.wait_for(stop.wait(), args.interval)
            except asyncio.TimeoutError:
                pass
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
        c.broken, c.err = time.time(), repr(e)[:200]
        rec.write({"kind": "conn_broken", **c.row()})
    finally:
        w.close()


async def new_conn(args, src: str, rec: Recorder) -> None:
    t = time.time()
    edge, err, sport, connect_s = None, None, 0, None
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(args.vip, 80, local_addr=(src, 0)), 2)
        connect_s = round(time.time() - t, 4)       # > 1 s: the first SYN was lost (retransmitted after 1 s)
        sport = w.get_extra_info("sockname")[1]
        try:
            _, edge = await asyncio.wait_for(request(r, w, "/new"), 3)
        finally:
            w.close()
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
        err = type(e).__name__
    rec.write({"kind": "new", "t": t, "edge": edge, "err": err, "src": src, "sport": sport, "connect_s": connect_s})


class _Datagram(asyncio.DatagramProtocol):
    def __init__(self):
        self.answer = asyncio.get_running_loop().create_future()

    def datagram_received(self, data, addr):
        if not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc):
        if not self.answer.done():
            self.answer.set_exception(exc)


async def udp_flow(args, src: str, rec: Recorder) -> None:
    """One UDP flow (a new source port): a datagram to the cluster IP's UDP echo; the edge names itself."""
    t = time.time()
    edge, err = None, None
    tr = None
    try:
        tr, proto = await asyncio.get_running_loop().create_datagram_endpoint(
            _Datagram, local_addr=(src, 0), remote_addr=(args.vip, args.udp_port))
        tr.sendto(b"pydp-lab")
        data = await asyncio.wait_for(proto.answer, 2)
        edge = data.split()[1].decode()
    except (OSError, asyncio.TimeoutError, IndexError, UnicodeDecodeError) as e:
        err = type(e).__name__
    finally:
        if tr is not None:
            tr.close()
    rec.write({"kind": "udp", "t": t, "edge": edge, "err": err})


async def main_async(args) -> None:
    srcs = args.src.split(",")
    rec = Recorder(os.path.join(args.out, "events.jsonl"))
    stop = asyncio.Event()
    conns = [Conn(i, srcs[i % len(srcs)]) for i in range(args.conns)]

    async def slot(c: Conn) -> None:
        """One long-lived connection, and with --reopen its successors: a broken one is replaced (a new id) a
        second later, so the pool stays full through a long run."""
        while True:
            await long_conn(c, args, rec, stop)
            if not args.reopen or stop.is_set():
                return
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
                return
            except asyncio.TimeoutError:
                pass
            c = Conn(len(conns), c.src)
            c.delay = 0.0
            conns.append(c)

    tasks = [asyncio.create_task(slot(c)) for c in conns]
    probes: set[asyncio.Task] = set()
    start = time.monotonic()
    n = 0
    while not os.path.exists(args.stop) and time.monotonic() - start < args.max_seconds:
        if args.new_rate > 0:
            t = asyncio.create_task(new_conn(args, srcs[n % len(srcs)], rec))
            probes.add(t)
            t.add_done_callback(probes.discard)
            if args.udp_every and n % args.udp_every == 0:
                u = asyncio.create_task(udp_flow(args, srcs[n % len(srcs)], rec))
                probes.add(u)
                u.add_done_callback(probes.discard)
            n += 1
            await asyncio.sleep(max(0.0, start + n / args.new_rate - time.monotonic()))
        else:
            await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait(tasks + list(probes), timeout=REQUEST_TIMEOUT + 5)
    rec.f.flush()
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"conns": [c.row() for c in conns], "new_connections": n}, f)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vip", required=True)
    ap.add_argument("--src", required=True, help="comma-separated client source addresses")
    ap.add_argument("--conns", type=int, default=200, help="long-lived connections (default 200)")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between requests on a connection")
    ap.add_argument("--new-rate", type=float, default=20.0, help="new short connections per second")
    ap.add_argument("--reopen", action="store_true",
                    help="replace a broken long-lived connection by a new one (a long run keeps its pool full)")
    ap.add_argument("--udp-every", type=int, default=0, metavar="N",
                    help="with every Nth new connection also a UDP flow to the cluster IP (0: none)")
    ap.add_argument("--udp-port", type=int, default=53)
    ap.add_argument("--out", required=True, help="directory for events.jsonl and summary.json")
    ap.add_argument("--stop", required=True, help="the run ends when this file exists")
    ap.add_argument("--max-seconds", type=float, default=900.0)
    args = ap.parse_args(argv)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
