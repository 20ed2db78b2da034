"""perf/run's errors before anything runs: an unreachable TRex server and bad arguments are refused clearly (the smoke
run on real DPDK ports: tests/golden/test_perf_smoke.py)."""

from __future__ import annotations

import socket
import subprocess
import sys

from perfpaths import PERF, ROOT

RUN = [sys.executable, str(PERF / "run")]


def test_trex_unreachable_server_is_a_clear_error():
    with socket.socket() as s:               # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run(RUN + ["--trex", "127.0.0.1", "--trex-sync-port", str(port), "--trex-async-port",
                                 str(port), "--trex-profile", str(PERF / "trex" / "imix.py")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2
    assert "cannot reach the TRex server at 127.0.0.1" in done.stderr


def test_bad_arguments_are_refused():
    done = subprocess.run(RUN + ["--quick", "--gen-cpu", "1", "--fwd-cpu", "1"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "must differ" in done.stderr


def test_burst_out_of_range_is_refused():
    done = subprocess.run(RUN + ["--quick", "--burst", "300"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--burst must be 1..256" in done.stderr


def test_pydp_config_takes_the_burst():
    sys.path.insert(0, str(PERF))
    try:
        import engine
    finally:
        sys.path.remove(str(PERF))
    cfg = engine.pydp_config("/tmp/x.sock", "/dev/hugepages/x", "0@0,1@1", 4096, burst=48)
    assert "\nburst = 48\n" in cfg
