"""pydp-control serves the admin page and the HTTP API on its own loop (--http), through the same table of
operations and write path as the RPC. A real daemon on a temporary store; no data plane, no root."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid

import pytest
import requests

from control import ops, rpc
from control.http import auth
from control.store import Store

TWO = [{"name": "e1", "ip": "198.51.100.21"}, {"name": "e2", "ip": "198.51.100.22"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path, *args, wait_http: bool = True):
    db = str(tmp_path / "pydp.db")
    sock = str(tmp_path / "ctl.sock")
    logf = tmp_path / "daemon.log"
    with open(logf, "w") as log:
        proc = subprocess.Popen([sys.executable, "-P", "-m", "control.daemon", "--db", db, "--socket", sock,
                                 "--shm", f"/dev/shm/pydp-none-{uuid.uuid4().hex[:8]}", "--metrics", "", *args],
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            rpc.call(sock, "ping", timeout=1)
            break
        except ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("pydp-control did not start:\n" + logf.read_text())
            time.sleep(0.05)
    return proc, db, sock, logf


def _stop(proc, sock):
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    assert not os.path.exists(sock)


@pytest.fixture
def daemon(tmp_path):
    with Store(tmp_path / "pydp.db") as s:
        s.add_cluster({"name": "web", "cluster_ip": "198.51.100.10", "edge": TWO})
    users = str(tmp_path / "http-users")
    auth.set_entry(users, "alice", "admin", auth.hash_password("alice-password", n=1 << 10))
    port = _free_port()
    proc, db, sock, logf = _start(tmp_path, "--http", f"127.0.0.1:{port}", "--http-users", users)
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "db": db, "socket": sock, "log": logf}
    finally:
        _stop(proc, sock)


def test_the_daemon_serves_the_page_and_applies_changes_like_the_rpc(daemon):
    s = requests.Session()
    r = s.post(daemon["url"] + "api/v1/session", json={"user": "alice", "password": "alice-password"}, timeout=10)
    assert r.status_code == 200
    s.headers["X-CSRF-Token"] = r.json()["csrf"]
    assert "/static/app.js" in s.get(daemon["url"], timeout=10).text
    r = s.get(daemon["url"] + "api/v1/clusters", timeout=10)
    assert [c["name"] for c in r.json()] == ["web"]
    r = s.post(daemon["url"] + "api/v1/clusters/web/edges/e1/drain", headers={"If-Match": r.headers["ETag"]},
               timeout=10)
    assert r.status_code == 200, r.text
    # the daemon's write path ran: no data plane here, so the change is saved and not applied, as the RPC says
    assert any("not applied" in w for w in r.json()["warnings"])
    st = s.get(daemon["url"] + "api/v1/status", timeout=10).json()
    assert st["dataplane_up"] is False and st["daemon"]["running"] is True
    assert st["clusters"][0]["edges"][0]["admin_state"] == "draining"
    rpc_status = rpc.call(daemon["socket"], "status")
    assert rpc_status["clusters"][0]["edges"][0]["admin_state"] == "draining"
    _err = s.get(daemon["url"] + "api/v1/stats", timeout=10)
    assert _err.status_code == 503 and _err.json()["error"]["kind"] == "unavailable"
    # one table: the RPC and the HTTP API serve the same operations, with the same refusals
    assert s.get(daemon["url"] + "api/v1/ops", timeout=10).json() == ops.table()
    with pytest.raises(rpc.RpcError) as e:
        rpc.call(daemon["socket"], "store", {"op": "list_clusters", "args": {"include_secrets": "yes"}})
    assert e.value.type == "BadRequest" and "include_secrets: must be boolean" in e.value.message
    r = s.patch(daemon["url"] + "api/v1/clusters/web", headers={"If-Match": "*"}, json={"cluster_ip": "nope"},
                timeout=10)
    with pytest.raises(rpc.RpcError) as e:
        rpc.call(daemon["socket"], "store", {"op": "edit_cluster", "args": {"name": "web",
                                                                           "changes": {"cluster_ip": "nope"}}})
    assert r.status_code == 422 and r.json()["error"]["message"] == e.value.message
    rpc.call(daemon["socket"], "store", {"op": "set_edge_state", "args": {"cluster": "web", "edge": "e1",
                                                                          "state": "active"}, "user": "bob"},
             on_warning=lambda w: None)
    h = s.get(daemon["url"] + "api/v1/history", timeout=10).json()
    assert [(x["via"], x["user"]) for x in h[:2]] == [("rpc", "bob"), ("http", "alice")]
    out = subprocess.run([sys.executable, "-P", "-m", "control.cli", "--socket", daemon["socket"], "history",
                          "--json", "--limit", "2"], capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(out.stdout) == h[:2]                  # pydpctl history through the RPC: the same rows
    events = [json.loads(x) for x in daemon["log"].read_text().splitlines() if x.startswith("{")]
    started = next(x for x in events if x["event"] == "daemon_started")
    assert started["http"] == daemon["url"] and started["ops"] == sorted(ops.OPS)
    assert any(x["event"] == "config_changed" and x.get("via") == "http" and x.get("user") == "alice"
               for x in events)


def test_http_disabled_and_bad_settings(tmp_path):
    proc, db, sock, logf = _start(tmp_path, "--http", "")
    try:
        started = next(json.loads(x) for x in logf.read_text().splitlines() if '"daemon_started"' in x)
        assert started["http"] is None
    finally:
        _stop(proc, sock)
    for args, want in ((["--http", "127.0.0.1"], "--http: '127.0.0.1': expected HOST:PORT"),
                       (["--http-cert", "/nonexistent.pem"], "TLS needs both a certificate and a key"),
                       (["--config", str(tmp_path / "none.toml")], "no such file")):
        out = subprocess.run([sys.executable, "-P", "-m", "control.daemon", "--db", str(tmp_path / "x.db"), *args],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 2 and want in out.stderr, out.stderr
    conf = tmp_path / "control.toml"
    conf.write_text('[http]\nlisten = "127.0.0.1:99999"\n')
    out = subprocess.run([sys.executable, "-P", "-m", "control.daemon", "--db", str(tmp_path / "x.db"), "--config",
                          str(conf)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "http.listen" in out.stderr and "1..65535" in out.stderr


def test_an_explicit_address_in_use_stops_the_daemon(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        out = subprocess.run([sys.executable, "-P", "-m", "control.daemon", "--db", str(tmp_path / "x.db"),
                              "--socket", str(tmp_path / "c.sock"), "--metrics", "", "--http", f"127.0.0.1:{port}",
                              "--shm", f"/dev/shm/pydp-none-{uuid.uuid4().hex[:8]}"],
                             capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "cannot serve the admin page" in out.stdout + out.stderr
    assert not os.path.exists(tmp_path / "c.sock")


def test_the_default_address_taken_is_logged_and_the_daemon_runs_on(tmp_path):
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        holder.bind(("127.0.0.1", 8470))
        holder.listen(1)
    except OSError:
        pass                        # taken already (another pydp-control or lab): the same situation
    try:
        (tmp_path / "empty.toml").write_text("")         # no [http]: the default address
        proc, db, sock, logf = _start(tmp_path, "--config", str(tmp_path / "empty.toml"))
        try:
            events = [json.loads(x) for x in logf.read_text().splitlines() if x.startswith("{")]
            bad = next(x for x in events if x["event"] == "http_unavailable")
            assert bad["address"] == "127.0.0.1:8470" and bad["level"] == "error"
            assert next(x for x in events if x["event"] == "daemon_started")["http"] is None
            assert rpc.call(sock, "ping")["daemon"] == "pydp-control"
        finally:
            _stop(proc, sock)
    finally:
        holder.close()
