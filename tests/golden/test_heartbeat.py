"""A worker's heartbeat (struct pydp_worker_state.heartbeat_ms) is written on every loop iteration, busy or idle:
under full load, where no poll comes back empty, it must not look stale.

The real fast path runs a capture in pcap mode (net_pcap returns a full burst on every poll until the file ends, so
the worker never has an idle poll while it lasts) in a child process; a thread of that process samples the
worker's heartbeat and idle-poll counter from the region while the C loop runs (cffi releases the GIL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

pytestmark = pytest.mark.dpdk

CHILD = r"""
import json, struct, sys, threading, time
from pydp import config
from pydp.dataplane import Dataplane
from pydp._ffi import lib
from pydp.pcap import write_pcap

pin, pout, shm, frames = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
cfg = config.loads('''
[dataplane]
lcores = "0-1"
hugepages = false
flow_capacity = 4096
[[port]]
name = "wan0"
device = "net_null0"
tap = ""
[[cluster]]
name = "web"
cluster_ip = "198.51.100.10"
mode = "standalone"
maglev_size = 251
[[cluster.edge]]
name = "e1"
ip = "198.51.100.21"
mac = "02:00:00:00:00:21"
''')
eth = bytes.fromhex("020000000001020000000002") + b"\x08\x00"
def udp(i):
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + 18, 0, 0, 64, 17, 0, bytes([203, 0, 113, 1 + i % 200]),
                     bytes([198, 51, 100, 10]))
    return eth + ip + struct.pack("!HHHH", 1024 + i % 50000, 80, 8 + 18, 0) + bytes(18)
write_pcap(pin, [udp(i) for i in range(frames)])
dpl = Dataplane(cfg, shm_path=shm, pcap={"in": pin, "out": pout, "exception": None})
region = dpl.start()
dpl.apply(own_all=True)
samples, done = [], threading.Event()
def sample():
    ws, st = region.worker_states(), region.worker_stats()
    while not done.is_set() and len(samples) < 200000:
        samples.append((int(ws[0]["heartbeat_ms"]), int(st[0]["idle_polls"]), int(st[0]["polls"])))
t = threading.Thread(target=sample)
t.start()
t0 = time.monotonic()
lib.pydp_dp_run_pcap(8)
elapsed = time.monotonic() - t0
done.set()
t.join()
rx = int(region.worker_stats()[0]["port"][0]["rx_packets"])
dpl.stop()
busy = [s for s in samples if s[1] == 0 and s[2] > 0]
print(json.dumps({"elapsed": elapsed, "rx": rx, "busy_samples": len(busy),
                  "busy_heartbeats": sorted({s[0] for s in busy}),
                  "busy_polls": [busy[0][2], busy[-1][2]] if busy else []}))
"""


def test_heartbeat_advances_under_full_load(tmp_path):
    shm = f"/dev/shm/pydp-heartbeat-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    frames = 400000
    try:
        proc = subprocess.run([sys.executable, "-P", "-c", CHILD, str(tmp_path / "in.pcap"),
                               str(tmp_path / "out.pcap"), shm, str(frames)],
                              capture_output=True, text=True, timeout=300)
    finally:
        if os.path.exists(shm):
            os.unlink(shm)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["rx"] == frames
    # the worker was sampled while busy (no idle poll yet) over many polls ...
    assert res["busy_samples"] > 10 and res["busy_polls"][1] > res["busy_polls"][0], res
    # ... and its heartbeat moved meanwhile: at least one value besides the one it had when the run started
    beats = res["busy_heartbeats"]
    assert len(beats) >= 2 and beats[-1] > beats[0], res
