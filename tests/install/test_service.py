"""sd_notify as systemd speaks it (pydp/service.py): a datagram socket of our own plays systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pydp import service
from pydp.shm import Region


@pytest.fixture
def notify_socket(tmp_path):
    """(env, receive): a bound AF_UNIX datagram socket like systemd's; receive(deadline) -> list of datagrams."""
    path = str(tmp_path / "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)

    def receive(seconds: float, until=lambda got: False) -> list[str]:
        got: list[str] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end and not until(got):
            s.settimeout(max(0.01, end - time.monotonic()))
            try:
                got.append(s.recv(4096).decode())
            except socket.timeout:
                break
        return got

    yield {"NOTIFY_SOCKET": path}, receive
    s.close()


def test_notify_path_socket(notify_socket):
    env, receive = notify_socket
    assert service.notify("READY=1", "STATUS=two\nlines", env=env)
    assert receive(2, lambda g: g) == ["READY=1\nSTATUS=two lines"]


def test_notify_abstract_socket():
    name = f"pydp-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(2)
        assert service.notify("WATCHDOG=1", env={"NOTIFY_SOCKET": "@" + name})
        assert s.recv(100) == b"WATCHDOG=1"


def test_notify_outside_systemd(tmp_path):
    assert service.notify("READY=1", env={}) is False
    assert service.notify("READY=1", env={"NOTIFY_SOCKET": "relative/path"}) is False
    assert service.notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")}) is False


def test_watchdog_interval():
    assert service.watchdog_interval({}) is None
    assert service.watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert service.watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}) == 5.0
    assert service.watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}) is None   # not ours
    assert service.watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert service.watchdog_interval({"WATCHDOG_USEC": "0"}) is None


def test_watchdog_feeds_only_while_alive(notify_socket):
    env, receive = notify_socket
    alive = {"ok": True}
    t = {"now": 0.0}
    wd = service.Watchdog(lambda: alive["ok"], env={**env, "WATCHDOG_USEC": "2000000"}, clock=lambda: t["now"])
    assert wd.enabled and wd.interval == 1.0
    assert wd.tick() is False                    # not due yet
    t["now"] = 1.0
    assert wd.tick() is True
    alive["ok"] = False
    t["now"] = 2.0
    assert wd.tick() is False and wd.starved == 1
    alive["ok"] = True
    t["now"] = 3.0
    assert wd.tick() is True
    assert receive(2, lambda g: len(g) >= 2) == ["WATCHDOG=1", "WATCHDOG=1"]
    assert service.Watchdog(lambda: True, env={}).tick() is False      # no watchdog asked for


def test_worker_progress(tmp_path):
    """Alive while every online worker's poll counter moves; a worker that stands still starves the watchdog."""
    path = f"/dev/shm/pydp-svc-test-{os.getpid()}"
    r = Region.create(path, workers=2, ports=1, maglev_max=1021, flow_capacity=1024)
    try:
        r.hdr.workers[0].online = 1
        r.hdr.workers[1].online = 1
        stats = r.worker_stats()
        progress = service.WorkerProgress(r)
        assert progress() is True                # the first look has nothing to compare with
        stats[0]["polls"] += 5
        stats[1]["polls"] += 3
        assert progress() is True
        stats[0]["polls"] += 5                   # worker 1 stuck
        assert progress() is False
        r.hdr.workers[1].online = 0              # an offline worker does not count
        stats[0]["polls"] += 1
        assert progress() is True
    finally:
        r.close()
    assert not os.path.exists(path)


CONFIG = """\
[dataplane]
lcores = "0-1"
flow_capacity = 1024
hugepages = false
shm_path = "/dev/shm/pydp-svc-{pid}"

[[port]]
name = "null0"
device = "net_null0"
tap = ""
"""


@pytest.mark.dpdk
def test_dataplane_notifies_systemd(tmp_path, notify_socket):
    """pydp-dataplane under a Type=notify unit: READY=1 with a status once forwarding, WATCHDOG=1 while its
    worker polls, STOPPING=1 on SIGTERM."""
    env, receive = notify_socket
    conf = tmp_path / "dp.toml"
    conf.write_text(CONFIG.format(pid=os.getpid()))
    proc = subprocess.Popen([sys.executable, "-P", "-m", "pydp.dataplane", "--config", str(conf)],
                            env={**os.environ, **env, "WATCHDOG_USEC": "400000"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        got = receive(60, lambda g: sum(m == "WATCHDOG=1" for m in g) >= 3)
        assert got and got[0].startswith("READY=1\nSTATUS=forwarding on null0"), (got, proc.poll())
        assert got.count("WATCHDOG=1") >= 3
        proc.send_signal(signal.SIGTERM)
        more = receive(30, lambda g: "STOPPING=1" in g)
        assert "STOPPING=1" in more
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        out, err = proc.communicate()
    assert not os.path.exists(f"/dev/shm/pydp-svc-{os.getpid()}"), err


def test_control_daemon_notifies_systemd(tmp_path, notify_socket):
    """pydp-control under a Type=notify unit: READY=1 once its socket listens, WATCHDOG=1 while its event loop
    turns, STOPPING=1 on SIGTERM; its log is JSON (not a terminal)."""
    env, receive = notify_socket
    sock = tmp_path / "control.sock"
    proc = subprocess.Popen([sys.executable, "-P", "-m", "control.daemon", "--db", str(tmp_path / "pydp.db"),
                             "--socket", str(sock), "--metrics", "", "--shm", str(tmp_path / "no-region")],
                            env={**os.environ, **env, "WATCHDOG_USEC": "400000"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        got = receive(60, lambda g: sum(m == "WATCHDOG=1" for m in g) >= 2)
        assert got and got[0] == f"READY=1\nSTATUS=serving {sock}", (got, proc.poll())
        assert sock.exists()
        assert got.count("WATCHDOG=1") >= 2
        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in receive(30, lambda g: "STOPPING=1" in g)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        _, err = proc.communicate()
    import json
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert events[0] == "daemon_started" and events[-1] == "daemon_stopped", err
