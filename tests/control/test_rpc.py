"""The RPC of pydp-control: codec, request validation, and a real daemon fuzzed with garbage.

Every malformed input must get an error reply or a clean close; the daemon keeps serving and the store does not
change. The daemon here runs without a data plane (nothing else is needed)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import time
import uuid

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control import rpc
from control.store import Store

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

plain = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20)


# ---- codec ----

@given(plain)
def test_codec_round_trip(value):
    data = rpc.frame(value)
    (n,) = struct.unpack("!I", data[:4])
    assert n == len(data) - 4
    assert rpc.decode(data[4:]) == value


@given(st.integers(min_value=0, max_value=rpc.MAX_ID), st.text(min_size=1, max_size=20),
       st.dictionaries(st.text(max_size=8), plain, max_size=4))
def test_request_round_trip(req_id, method, params):
    msg = rpc.decode(rpc.frame(rpc.make_request(req_id, method, params))[4:])
    assert rpc.validate_request(msg) == (req_id, method, params)


def test_decode_rejects_trailing_bytes_ext_types_and_deep_nesting():
    with pytest.raises(rpc.FrameError):
        rpc.decode(msgpack.packb({"a": 1}) + b"\x00")
    with pytest.raises(rpc.FrameError):
        rpc.decode(msgpack.packb(msgpack.ExtType(5, b"xx")))
    with pytest.raises(rpc.FrameError):
        rpc.decode(b"\x91" * 100000)
    with pytest.raises(rpc.FrameError):
        rpc.decode(b"")
    with pytest.raises(rpc.FrameError):
        rpc.decode(msgpack.packb({1: 2}))          # map keys must be strings


def test_frame_refuses_oversized_messages():
    with pytest.raises(ValueError, match="exceeds"):
        rpc.frame("x" * (rpc.MAX_FRAME + 1))


@pytest.mark.parametrize("msg, why", [
    ({"v": 2, "id": 1, "method": "ping", "params": {}}, "version"),
    ({"v": True, "id": 1, "method": "ping", "params": {}}, "version"),
    ({"id": 1, "method": "ping", "params": {}}, "version"),
    ({"v": 1, "id": -1, "method": "ping", "params": {}}, "id"),
    ({"v": 1, "id": "1", "method": "ping", "params": {}}, "id"),
    ({"v": 1, "id": True, "method": "ping", "params": {}}, "id"),
    ({"v": 1, "id": 1, "method": 5, "params": {}}, "method"),
    ({"v": 1, "id": 1, "method": "", "params": {}}, "method"),
    ({"v": 1, "id": 1, "method": "ping", "params": [1]}, "params"),
    ({"v": 1, "id": 1, "method": "ping", "params": {}, "extra": 1}, "unknown request keys"),
    ({"v": 1, "id": 1, "method": "nope", "params": {}}, "unknown method"),
])
def test_validate_request_names_the_problem(msg, why):
    with pytest.raises(rpc.RpcError) as e:
        rpc.validate_request(msg, {"ping"})
    assert e.value.type == "BadRequest"
    assert why in e.value.message


def test_validate_request_refuses_exotic_params():
    msg = {"v": 1, "id": 1, "method": "ping", "params": {"t": msgpack.Timestamp(1, 0)}}
    with pytest.raises(rpc.RpcError, match="params may hold only"):
        rpc.validate_request(msg)
    deep: list = []
    for _ in range(rpc.MAX_DEPTH + 2):
        deep = [deep]
    with pytest.raises(rpc.RpcError, match="params may hold only"):
        rpc.validate_request({"v": 1, "id": 1, "method": "ping", "params": {"d": deep}})


# ---- the server helper, in process ----

def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def _raw(path, data: bytes, *, read_timeout=5.0) -> tuple[list, bool]:
    """Sends data, half-closes, reads frames until EOF. (replies, closed cleanly)."""
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(data)
    await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()
    replies = []
    try:
        while True:
            hdr = await asyncio.wait_for(reader.readexactly(4), read_timeout)
            (n,) = struct.unpack("!I", hdr)
            replies.append(rpc.decode(await asyncio.wait_for(reader.readexactly(n), read_timeout)))
    except asyncio.IncompleteReadError as e:
        closed = e.partial == b""
    finally:
        writer.close()
    return replies, closed


def test_server_socket_mode_stale_socket_and_unlink(tmp_path):
    path = str(tmp_path / "ctl.sock")

    async def handler(method, params):
        return {"method": method}

    async def main():
        # a stale socket file (nobody listens) is replaced
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        s.close()
        old_umask = os.umask(0)
        try:
            server = await rpc.serve(path, handler)
        finally:
            os.umask(old_umask)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        # a second server on a live socket is refused, and does not remove it
        with pytest.raises(RuntimeError, match="already listens"):
            await rpc.serve(path, handler)
        assert await rpc.acall(path, "x") == {"method": "x"}
        await server.close()
        assert not os.path.exists(path)
        # a regular file is never replaced
        open(path, "w").close()
        with pytest.raises(RuntimeError, match="not a socket"):
            await rpc.serve(path, handler)
        assert os.path.isfile(path)

    _run(main())


def test_server_limits_timeouts_and_bad_results(tmp_path):
    path = str(tmp_path / "ctl.sock")

    async def handler(method, params):
        if method == "big":
            return "x" * (rpc.MAX_FRAME + 10)
        if method == "odd":
            return {"set": {1, 2}}             # msgpack cannot carry a set
        if method == "boom":
            raise RuntimeError("bug")
        if method == "warn":
            return rpc.Reply(1, ["careful"])
        return "pong"

    async def main():
        server = await rpc.serve(path, handler, max_connections=2, read_timeout=0.5)
        try:
            for method, want in (("big", "Internal"), ("odd", "Internal"), ("boom", "Internal")):
                with pytest.raises(rpc.RpcError) as e:
                    await rpc.acall(path, method)
                assert e.value.type == want
            seen = []
            assert await rpc.acall(path, "warn", on_warning=seen.append) == 1
            assert seen == ["careful"]
            # an idle connection is closed after the read timeout
            r, w = await asyncio.open_unix_connection(path)
            assert await asyncio.wait_for(r.read(), 5) == b""
            w.close()
            # a third concurrent connection is refused with Unavailable
            held = [await asyncio.open_unix_connection(path) for _ in range(2)]
            await asyncio.sleep(0.05)
            with pytest.raises(rpc.RpcError) as e:
                await rpc.acall(path, "ping")
            assert e.value.type == "Unavailable"
            for _, w in held:
                w.close()
            await asyncio.sleep(0.1)
            assert await rpc.acall(path, "ping") == "pong"
        finally:
            await server.close()

    _run(main())


def test_client_errors(tmp_path):
    with pytest.raises(rpc.Unreachable):
        rpc.call(str(tmp_path / "none.sock"), "ping")
    # a listener that never answers: ReplyTimeout (a ConnectionError)
    path = str(tmp_path / "mute.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen(1)
    try:
        with pytest.raises(ConnectionError):
            rpc.call(path, "ping", timeout=0.3)
    finally:
        s.close()


# ---- a real pydp-control, fuzzed ----

CLUSTER = {"name": "web", "cluster_ip": "198.51.100.10",
           "edge": [{"name": "e1", "ip": "198.51.100.21", "mac": "02:00:00:00:02:01"},
                    {"name": "e2", "ip": "198.51.100.22", "mac": "02:00:00:00:02:02"}]}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rpcd")
    db = str(tmp / "pydp.db")
    with Store(db) as s:
        s.add_cluster(CLUSTER)
    sock = str(tmp / "ctl.sock")
    log = open(tmp / "daemon.log", "w")
    proc = subprocess.Popen([sys.executable, "-P", "-m", "control.daemon", "--db", db, "--socket", sock,
                             "--shm", f"/dev/shm/pydp-none-{uuid.uuid4().hex[:8]}", "--metrics", "", "--http", ""],
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                rpc.call(sock, "ping", timeout=1)
                break
            except ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("pydp-control did not start:\n" + (tmp / "daemon.log").read_text())
                time.sleep(0.05)
        yield {"socket": sock, "db": db, "proc": proc, "log": tmp / "daemon.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert not os.path.exists(sock), "the daemon left its socket behind"


def _snapshot(db):
    with Store(db) as s:
        return s.revision(), s.list_clusters()


def _healthy(d, before):
    assert rpc.call(d["socket"], "ping")["daemon"] == "pydp-control"
    assert d["proc"].poll() is None
    assert _snapshot(d["db"]) == before


def _send(d, data: bytes):
    return asyncio.run(_raw(d["socket"], data))


def _req(msg) -> bytes:
    payload = msgpack.packb(msg, use_bin_type=True)
    return struct.pack("!I", len(payload)) + payload


def _all_errors(replies):
    for r in replies:
        assert r["v"] == 1 and r["ok"] is False, r
        assert r["error"]["type"] in rpc.ERROR_TYPES
        assert isinstance(r["error"]["message"], str) and r["error"]["message"]


def test_daemon_socket_is_private(daemon):
    assert stat.S_IMODE(os.stat(daemon["socket"]).st_mode) == 0o600


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_garbage_streams(daemon, data):
    before = _snapshot(daemon["db"])
    replies, closed = _send(daemon, data)
    _all_errors(replies)
    assert closed
    _healthy(daemon, before)


@FUZZ
@given(st.binary(min_size=1, max_size=300).filter(lambda b: b[0] & 0xF0 not in (0x80,) and b[0] != 0xDE
                                                  and b[0] != 0xDF))
def test_fuzz_garbage_frames_get_an_error_and_a_close(daemon, payload):
    before = _snapshot(daemon["db"])
    replies, closed = _send(daemon, struct.pack("!I", len(payload)) + payload + _req(
        {"v": 1, "id": 7, "method": "ping", "params": {}}))
    # a frame that is not a msgpack map: one error reply, then the connection closes (the ping is not read)
    assert len(replies) == 1, replies
    _all_errors(replies)
    assert closed
    _healthy(daemon, before)


@FUZZ
@given(st.integers(min_value=rpc.MAX_FRAME + 1, max_value=2**32 - 1))
def test_fuzz_oversized_length_prefix(daemon, n):
    before = _snapshot(daemon["db"])
    replies, closed = _send(daemon, struct.pack("!I", n) + b"\x80" * 64)
    assert len(replies) == 1 and "exceeds" in replies[0]["error"]["message"]
    _all_errors(replies)
    assert closed
    _healthy(daemon, before)


@FUZZ
@given(st.integers(min_value=1, max_value=5000), st.binary(max_size=100))
def test_fuzz_truncated_frames_close_cleanly(daemon, n, body):
    before = _snapshot(daemon["db"])
    body = body[:n - 1]
    replies, closed = _send(daemon, struct.pack("!I", n) + body)
    assert replies == [] and closed
    _healthy(daemon, before)


def _exchange(d, msgs):
    """Sends well-framed requests on one connection, then a ping; all replies."""
    data = b"".join(_req(m) for m in msgs) + _req({"v": 1, "id": 999, "method": "ping", "params": {}})
    replies, closed = _send(d, data)
    assert closed
    assert len(replies) == len(msgs) + 1, replies
    assert replies[-1]["ok"] is True and replies[-1]["id"] == 999     # the connection stayed usable
    return replies[:-1]


@FUZZ
@given(plain.filter(lambda v: not (v == 1 and not isinstance(v, bool)) and not isinstance(v, float)))
def test_fuzz_wrong_versions(daemon, v):
    before = _snapshot(daemon["db"])
    replies = _exchange(daemon, [{"v": v, "id": 1, "method": "ping", "params": {}},
                                 {"v": v, "id": 2, "method": "store",
                                  "params": {"op": "delete_cluster", "args": {"name": "web"}}}])
    _all_errors(replies)
    assert all("version" in r["error"]["message"] for r in replies)
    _healthy(daemon, before)


@FUZZ
@given(st.text(max_size=30).filter(lambda m: m not in ("ping", "store", "status", "stats", "flows")))
def test_fuzz_unknown_methods(daemon, method):
    before = _snapshot(daemon["db"])
    replies = _exchange(daemon, [{"v": 1, "id": 3, "method": method, "params": {}}])
    _all_errors(replies)
    assert replies[0]["error"]["type"] == "BadRequest"
    _healthy(daemon, before)


@FUZZ
@given(plain.filter(lambda p: not isinstance(p, dict) and p is not None),
       st.sampled_from(["ping", "store", "status", "stats", "flows"]))
def test_fuzz_non_map_params(daemon, params, method):
    before = _snapshot(daemon["db"])
    replies = _exchange(daemon, [{"v": 1, "id": 4, "method": method, "params": params}])
    _all_errors(replies)
    assert replies[0]["id"] == 4 and "params must be a map" in replies[0]["error"]["message"]
    _healthy(daemon, before)


FORBIDDEN_OPS = ["appliance", "_conn", "_mutate", "_save", "_transaction", "__init__", "__class__", "close",
                 "path", "_lock", "schema_version", "delete_cluster ", "DELETE_CLUSTER", ""]


@FUZZ
@given(st.sampled_from(FORBIDDEN_OPS) | st.text(max_size=20).filter(
    lambda t: t not in ("add_cluster", "edit_cluster", "delete_cluster", "duplicate_cluster", "set_cluster_enabled",
                        "add_edge", "edit_edge", "remove_edge", "set_edge_state", "import_text", "list_clusters",
                        "get_cluster", "export_text", "revision", "drain_times", "history")) | plain.filter(lambda v: not isinstance(v, str)),
       st.dictionaries(st.text(max_size=8), plain, max_size=3))
def test_fuzz_ops_outside_the_allow_list(daemon, op, args):
    before = _snapshot(daemon["db"])
    replies = _exchange(daemon, [{"v": 1, "id": 5, "method": "store", "params": {"op": op, "args": args}}])
    _all_errors(replies)
    assert replies[0]["error"]["type"] == "BadRequest"
    assert "not allowed" in replies[0]["error"]["message"]
    _healthy(daemon, before)


@FUZZ
@given(st.sampled_from(["add_cluster", "edit_cluster", "delete_cluster", "add_edge", "edit_edge", "remove_edge",
                        "set_edge_state", "duplicate_cluster", "set_cluster_enabled"]),
       st.dictionaries(st.sampled_from(["name", "cluster", "edge", "changes", "state", "text", "enabled",
                                        "new_name", "cluster_ip", "bogus"]),
                       plain.filter(lambda v: v not in ("web", "e1", "e2", True, False)), max_size=3),
       plain.filter(lambda v: not isinstance(v, dict)))
def test_fuzz_bad_arguments_change_nothing(daemon, op, args, args_not_map):
    before = _snapshot(daemon["db"])
    replies = _exchange(daemon, [{"v": 1, "id": 6, "method": "store", "params": {"op": op, "args": args}},
                                 {"v": 1, "id": 8, "method": "store", "params": {"op": op, "args": args_not_map}}
                                 if args_not_map is not None else
                                 {"v": 1, "id": 8, "method": "store", "params": {"op": op, "junk": 1}}])
    _all_errors(replies)
    assert replies[0]["error"]["type"] in ("BadRequest", "StoreError", "NotFound")
    assert replies[1]["error"]["type"] == "BadRequest"
    _healthy(daemon, before)


@pytest.mark.parametrize("text", ["[[cluster]]\nname = 'x'\n", "not toml ===", "[dataplane]\nlcores = 5\n"])
def test_invalid_import_changes_nothing(daemon, text):
    before = _snapshot(daemon["db"])
    replies = _exchange(daemon, [{"v": 1, "id": 9, "method": "store",
                                  "params": {"op": "import_text", "args": {"text": text}}}])
    _all_errors(replies)
    assert replies[0]["error"]["type"] == "StoreError"
    _healthy(daemon, before)


def test_bad_flows_parameters(daemon):
    before = _snapshot(daemon["db"])
    replies = _exchange(daemon, [
        {"v": 1, "id": 10, "method": "flows", "params": {"limit": -1}},
        {"v": 1, "id": 11, "method": "flows", "params": {"limit": 10**9}},
        {"v": 1, "id": 12, "method": "flows", "params": {"cluster": 5}},
        {"v": 1, "id": 13, "method": "flows", "params": {"colour": "red"}},
        {"v": 1, "id": 14, "method": "status", "params": {"x": 1}},
        {"v": 1, "id": 15, "method": "stats", "params": {}},         # no data plane: Unavailable
    ])
    _all_errors(replies)
    assert [r["error"]["type"] for r in replies] == ["BadRequest"] * 5 + ["Unavailable"]
    _healthy(daemon, before)


def test_valid_changes_still_work_after_the_fuzzing(daemon):
    """The store ops through RPC: a change, then its undo; errors map to StoreError/NotFound."""
    sock = daemon["socket"]
    rev = _snapshot(daemon["db"])[0]
    with pytest.raises(rpc.RpcError) as e:
        rpc.call(sock, "store", {"op": "get_cluster", "args": {"name": "nope"}})
    assert e.value.type == "NotFound"
    with pytest.raises(rpc.RpcError) as e:
        rpc.call(sock, "store", {"op": "set_edge_state", "args": {"cluster": "web", "edge": "e1", "state": "odd"}})
    assert e.value.type == "BadRequest" and "state: must be one of active, draining, disabled" in e.value.message
    with pytest.raises(rpc.RpcError) as e:
        rpc.call(sock, "store", {"op": "edit_edge", "args": {"cluster": "web", "edge": "e1",
                                                             "changes": {"weight": 0}}})
    assert e.value.type == "StoreError"
    with pytest.raises(rpc.RpcError) as e:      # a stale revision: nothing changes
        rpc.call(sock, "store", {"op": "set_edge_state", "args": {"cluster": "web", "edge": "e1",
                                                                  "state": "draining"}, "if_match": rev - 1})
    assert e.value.type == "Conflict"
    warnings = []
    out = rpc.call(sock, "store", {"op": "set_edge_state", "args": {"cluster": "web", "edge": "e1",
                                                                      "state": "draining"}},
                   on_warning=warnings.append)
    assert out["edge"][0]["state"] == "draining"
    assert warnings and "not applied" in warnings[0]           # no data plane runs here
    rpc.call(sock, "store", {"op": "set_edge_state", "args": {"cluster": "web", "edge": "e1", "state": "active"}},
             on_warning=lambda w: None)
    assert _snapshot(daemon["db"])[0] == rev + 2
    with Store(daemon["db"]) as s:             # both recorded, through the RPC
        assert [(h["op"], h["via"]) for h in s.history(limit=2)] == [("set_edge_state", "rpc")] * 2
    status = rpc.call(sock, "status")
    assert status["dataplane_up"] is False and status["clusters"][0]["name"] == "web"
    # the daemon's log is one JSON object per line, with the changes in it
    lines = [json.loads(line) for line in daemon["log"].read_text().splitlines() if line.strip()]
    assert all({"ts", "level", "event"} <= set(x) for x in lines)
    assert any(x["event"] == "config_changed" and x.get("op") == "set_edge_state" for x in lines)
