"""Client load on a running lab (control/lab/client.py in the clients' namespace) and what it tells: which edge
took each new connection, which long-lived connections broke and when, and the byte counts of every long-lived
connection on both ends (client and nginx's access log)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

from control.lab.net import eventually, terminate


class Load:
    def __init__(self, lab, *, vip: str, conns: int = 200, interval: float = 0.5, new_rate: float = 20.0,
                 v6: bool = False, udp_every: int = 0, reopen: bool = False):
        self.lab = lab
        self.dir = lab.run_dir / f"load-{uuid.uuid4().hex[:6]}"
        self.dir.mkdir(parents=True)
        self.stop_file = self.dir / "stop"
        srcs = lab.topo.client_ips6() if v6 else lab.topo.client_ips()
        self.argv = ["ip", "netns", "exec", lab.topo.client_ns, sys.executable, "-P", "-m", "control.lab.client",
                     "--vip", vip, "--src", ",".join(srcs), "--conns", str(conns), "--interval", str(interval),
                     "--new-rate", str(new_rate), "--udp-every", str(udp_every), *(["--reopen"] if reopen else []),
                     "--out", str(self.dir), "--stop", str(self.stop_file)]
        self.conns = conns
        self.proc: subprocess.Popen | None = None
        self.summary: dict | None = None
        self.t0 = 0.0                   # when the client started: byte_check counts nginx's lines from then on

    def start(self, timeout: float = 30.0) -> "Load":
        self.t0 = time.time()
        with open(self.dir / "client.err", "w") as err:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=err)
        self.lab.record("pids", self.proc.pid)
        eventually(lambda: self.proc.poll() is not None or len(self.open_conns()) >= self.conns, timeout,
                   f"{self.conns} long-lived connections open", interval=0.2)
        if self.proc.poll() is not None:
            raise RuntimeError(f"the lab client exited: {(self.dir / 'client.err').read_text()}")
        return self

    def stop(self) -> dict:
        """Ends the run (each connection finishes its request); returns the summary."""
        self.stop_file.touch()
        try:
            self.proc.wait(45)
        except subprocess.TimeoutExpired:
            terminate(self.proc, 5)
        p = self.dir / "summary.json"
        self.summary = json.loads(p.read_text()) if p.exists() else {"conns": [], "new_connections": 0}
        return self.summary

    def __enter__(self) -> "Load":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.summary is None:
            self.stop()

    # ---- reading ----

    def events(self, kind: str | None = None) -> list[dict]:
        p = self.dir / "events.jsonl"
        out = []
        for line in (p.read_text().splitlines() if p.exists() else []):
            try:
                rec = json.loads(line)
            except ValueError:
                continue                 # a line being written
            if kind is None or rec.get("kind") == kind:
                out.append(rec)
        return out

    def open_conns(self) -> list[dict]:
        return self.events("conn_open")

    def broken(self) -> list[dict]:
        return self.events("conn_broken")

    def new(self, t0: float = 0.0, t1: float = float("inf")) -> list[dict]:
        """New short connections started in [t0, t1)."""
        return [e for e in self.events("new") if t0 <= e["t"] < t1]

    def udp(self, t0: float = 0.0, t1: float = float("inf")) -> list[dict]:
        """UDP flows (udp_every) started in [t0, t1): the edge that answered, or the error."""
        return [e for e in self.events("udp") if t0 <= e["t"] < t1]

    def share(self, t0: float = 0.0, t1: float = float("inf")) -> dict[str, float]:
        """Edge → fraction of the new connections started in [t0, t1) that it answered (failures not counted)."""
        got = [e["edge"] for e in self.new(t0, t1) if e["edge"]]
        return {e: got.count(e) / len(got) for e in sorted(set(got))} if got else {}

    def conns_by_edge(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.open_conns():
            out[c["edge"]] = out.get(c["edge"], 0) + 1
        return dict(sorted(out.items()))

    def byte_check(self) -> dict:
        """After stop(): per long-lived connection, the bytes the client read against the bytes nginx logged as
        sent on that connection (same client address and port, on the edge that answered it, since this load
        started: an earlier load in the same lab may have used the same address and port)."""
        server = server_bytes({name: e.access_log() for name, e in self.lab.edges.items()}, self.t0)
        rows = []
        for c in self.summary["conns"]:
            srv = server.get((c["edge"], c["src"], c["port"]), 0)
            rows.append({"id": c["id"], "edge": c["edge"], "client_bytes": c["bytes"], "server_bytes": srv,
                         "broken": c["broken"], "equal": c["bytes"] == srv and c["bytes"] > 0})
        return {"rows": rows, "equal": sum(r["equal"] for r in rows),
                "survived": sum(r["equal"] and r["broken"] is None for r in rows), "total": len(rows)}


def server_bytes(logs: dict[str, list[dict]], t0: float) -> dict[tuple[str, str, int], int]:
    """(edge, client address, client port) -> bytes nginx sent on the long-lived connections (/conn/...) in the
    access-log lines (Edge.access_log()) of each edge written at or after t0."""
    out: dict[tuple[str, str, int], int] = {}
    for name, lines in logs.items():
        for rec in lines:
            if rec["uri"].startswith("/conn/") and rec["t"] >= t0:
                key = (name, rec["addr"], rec["port"])
                out[key] = out.get(key, 0) + rec["bytes"]
    return out


def when(pred, timeout: float) -> float | None:
    """The wall-clock time pred first held (polled with eventually()), None if not within timeout: for the demo,
    which reports what it measured instead of failing."""
    try:
        eventually(pred, timeout)
    except AssertionError:
        return None
    return time.time()
