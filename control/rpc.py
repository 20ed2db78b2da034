"""The RPC between pydpctl and pydp-control: msgpack maps in length-prefixed frames over a UNIX socket.

Wire format (both directions): a 4-byte big-endian length, then that many bytes of one msgpack map.

    request  {"v": 1, "id": <int>, "method": <str>, "params": <map>}
    reply    {"v": 1, "id": <int>, "ok": true,  "result": <any>}
             {"v": 1, "id": <int|nil>, "ok": false, "error": {"type": <str>, "message": <str>}}

Error types: BadRequest (the request is malformed or names an unknown method or operation), StoreError and
NotFound (the store refused the change; nothing changed), Conflict (the change carried an "if_match" revision that
is no longer the store's; nothing changed), Unavailable (the daemon cannot serve it now, e.g. too
many connections), Internal (a bug: the daemon logged it). A frame larger than MAX_FRAME, a frame that is not
msgpack or not a map gets an error reply and the connection is closed; a well-formed request that is invalid gets
an error reply and the connection stays usable. The server never stops because of what a client sends.

Access: the socket file is mode 0600 (owned by the daemon's user, root), and the server also checks the peer's
credentials (SO_PEERCRED) on every connection: a peer that is neither root nor the daemon's own user gets an
"Unavailable" error reply and is disconnected, counted in Server.refused and logged (event rpc_refused). The
check holds even when the file mode is loosened by hand or the socket is passed into a container.

    result = call("/run/pydp/control.sock", "status")
    result = call(path, "store", {"op": "add_edge", "args": {"cluster": "web", "edge": {...}}, "user": "alice"})

The "store" method's operations, their parameters and types are the table in control.ops (the HTTP API serves the
same table).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import socket
import stat
import struct
from typing import Any, Awaitable, Callable

import msgpack

__all__ = [
    "PROTOCOL_VERSION", "MAX_FRAME", "DEFAULT_SOCKET", "RpcError", "Reply", "Unreachable", "ReplyTimeout", "encode",
    "decode", "frame", "make_request", "make_reply", "make_error", "validate_request", "call", "Server", "serve",
]

PROTOCOL_VERSION = 1
MAX_FRAME = 1 << 20                      # bytes of one msgpack message (the 4-byte prefix not counted)
DEFAULT_SOCKET = "/run/pydp/control.sock"
MAX_ID = (1 << 63) - 1
ERROR_TYPES = ("BadRequest", "StoreError", "NotFound", "Conflict", "Unavailable", "Internal")

_HDR = struct.Struct("!I")
log = logging.getLogger("pydp.control.rpc")


class RpcError(Exception):
    """An error reply (or an error to send as one): type is one of ERROR_TYPES, message says why."""

    def __init__(self, type: str, message: str):
        super().__init__(f"{type}: {message}")
        self.type = type
        self.message = message


class Reply:
    """What a handler returns to send warnings along with the result (reply key "warnings", a list of str)."""

    __slots__ = ("result", "warnings")

    def __init__(self, result: Any, warnings: list[str] | None = None):
        self.result = result
        self.warnings = list(warnings or [])


class Unreachable(ConnectionError):
    """No daemon listens on the socket (missing, refused, or no permission)."""


class ReplyTimeout(ConnectionError):
    """The daemon did not reply in time (a change may or may not have been made)."""


class FrameError(RpcError):
    """The byte stream cannot be read as frames any more: reply, then close the connection."""

    def __init__(self, message: str):
        super().__init__("BadRequest", message)


# ---- codec ----

def encode(obj: Any) -> bytes:
    """One message as msgpack (str as str, bytes as bin). TypeError for values msgpack cannot carry."""
    return msgpack.packb(obj, use_bin_type=True)


def _no_ext(code: int, data: bytes):
    raise ValueError(f"msgpack extension type {code} is not accepted")


def decode(data: bytes) -> Any:
    """One msgpack message; FrameError unless data is exactly one valid message (no extension types)."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_no_ext,
                               timestamp=0)
    except msgpack.ExtraData:
        raise FrameError("trailing bytes after the msgpack message") from None
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise FrameError(f"not a msgpack message: {type(exc).__name__}: {exc}"[:200]) from None


def frame(obj: Any) -> bytes:
    """The length-prefixed frame of a message; ValueError if it is larger than MAX_FRAME."""
    payload = encode(obj)
    if len(payload) > MAX_FRAME:
        raise ValueError(f"message of {len(payload)} bytes exceeds the {MAX_FRAME}-byte limit")
    return _HDR.pack(len(payload)) + payload


def make_request(id: int, method: str, params: dict | None = None) -> dict:
    return {"v": PROTOCOL_VERSION, "id": id, "method": method, "params": params or {}}


def make_reply(id: int | None, result: Any, warnings: list[str] | None = None) -> dict:
    msg = {"v": PROTOCOL_VERSION, "id": id, "ok": True, "result": result}
    if warnings:
        msg["warnings"] = [str(w) for w in warnings]
    return msg


def make_error(id: int | None, type: str, message: str) -> dict:
    return {"v": PROTOCOL_VERSION, "id": id, "ok": False, "error": {"type": type, "message": str(message)}}


MAX_DEPTH = 32
_SCALARS = (type(None), bool, int, float, str, bytes)


def plain(obj: Any, depth: int = 0) -> bool:
    """True if obj holds only nil, booleans, numbers, strings, bytes, arrays and maps with string keys, nested at
    most MAX_DEPTH deep (what a request may carry)."""
    if isinstance(obj, _SCALARS):
        return True
    if depth >= MAX_DEPTH:
        return False
    if isinstance(obj, (list, tuple)):
        return all(plain(v, depth + 1) for v in obj)
    if isinstance(obj, dict):
        return all(isinstance(k, str) and plain(v, depth + 1) for k, v in obj.items())
    return False


def _valid_id(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_ID


def validate_request(msg: Any, methods=None) -> tuple[int, str, dict]:
    """(id, method, params) of a decoded request; RpcError("BadRequest") naming the first problem.

    methods: the names the server knows (None: any name)."""
    if not isinstance(msg, dict):
        raise FrameError(f"a request must be a map, got {type(msg).__name__}")
    unknown = set(msg) - {"v", "id", "method", "params"}
    if unknown:
        raise RpcError("BadRequest", f"unknown request keys: {', '.join(sorted(map(str, unknown)))}")
    if msg.get("v") != PROTOCOL_VERSION or isinstance(msg.get("v"), bool):
        raise RpcError("BadRequest", f"protocol version {msg.get('v')!r} is not supported (this daemon speaks "
                                     f"version {PROTOCOL_VERSION}): use a pydpctl of the same release")
    if not _valid_id(msg.get("id")):
        raise RpcError("BadRequest", f"id must be an integer 0..{MAX_ID}, got {msg.get('id')!r}"[:200])
    method = msg.get("method")
    if not isinstance(method, str) or not method:
        raise RpcError("BadRequest", f"method must be a non-empty string, got {type(method).__name__}")
    if methods is not None and method not in methods:
        raise RpcError("BadRequest", f"unknown method {method[:64]!r}; known: {', '.join(sorted(methods))}")
    params = msg.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RpcError("BadRequest", f"params must be a map, got {type(params).__name__}")
    if not plain(params):
        raise RpcError("BadRequest", f"params may hold only nil, booleans, numbers, strings, bytes, arrays and maps "
                                     f"with string keys, nested at most {MAX_DEPTH} deep")
    return msg["id"], method, params


def _check_reply(msg: Any, want_id: int, on_warning=None) -> Any:
    if not isinstance(msg, dict) or msg.get("v") != PROTOCOL_VERSION or "ok" not in msg:
        raise RpcError("BadRequest", "the daemon's reply is not a version-1 reply (another pydp release?)")
    if msg.get("ok") is True:
        if msg.get("id") != want_id:
            raise RpcError("Internal", f"reply for request {msg.get('id')!r}, expected {want_id}")
        warnings = msg.get("warnings")
        if isinstance(warnings, list):
            for w in warnings:
                if on_warning is not None:
                    on_warning(str(w))
                else:
                    log.warning("pydp-control: %s", w)     # without logging set up, Python prints it to stderr
        return msg.get("result")
    err = msg.get("error") if isinstance(msg.get("error"), dict) else {}
    raise RpcError(str(err.get("type", "Internal")), str(err.get("message", "error without a message")))


# ---- client ----

def permission_denied(socket_path: str) -> str:
    return (f"permission denied on {socket_path}: only root may use pydp-control (the socket is mode 0600); "
            "run pydpctl as root")


_ids = itertools.count(int.from_bytes(os.urandom(3), "big"))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the daemon closed the connection")
        buf += chunk
    return bytes(buf)


def call(socket_path: str, method: str, params: dict | None = None, timeout: float = 5.0, *,
         on_warning=None) -> Any:
    """One request, one reply. Returns the result; raises RpcError for an error reply, Unreachable when no daemon
    listens, ReplyTimeout when it does not answer within timeout seconds (both are ConnectionError).

    A reply may carry warnings (e.g. a change saved in the store that the data plane could not take):
    on_warning(text) is called for each, else they are logged on "pydp.control.rpc" at WARNING level (which
    Python prints on stderr when logging is not configured)."""
    req_id = next(_ids) & MAX_ID
    data = frame(make_request(req_id, method, params))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(socket_path)
        except PermissionError:
            raise Unreachable(permission_denied(socket_path)) from None
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
            raise Unreachable(f"pydp-control is not reachable at {socket_path}: {exc.strerror or exc}") from None
        except socket.timeout:
            raise Unreachable(f"pydp-control at {socket_path} does not accept connections") from None
        try:
            sock.sendall(data)
            (n,) = _HDR.unpack(_recv_exact(sock, _HDR.size))
            if n > MAX_FRAME:
                raise RpcError("Internal", f"reply of {n} bytes exceeds the {MAX_FRAME}-byte limit")
            msg = decode(_recv_exact(sock, n))
        except socket.timeout:
            raise ReplyTimeout(f"pydp-control did not reply to {method!r} within {timeout:g}s") from None
        except FrameError as exc:
            raise RpcError("Internal", f"unreadable reply: {exc.message}") from None
        return _check_reply(msg, req_id, on_warning)
    finally:
        sock.close()


async def acall(socket_path: str, method: str, params: dict | None = None, timeout: float = 5.0, *,
                on_warning=None) -> Any:
    """call() for asyncio code."""
    req_id = next(_ids) & MAX_ID
    data = frame(make_request(req_id, method, params))
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(socket_path), timeout)
    except PermissionError:
        raise Unreachable(permission_denied(socket_path)) from None
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise Unreachable(f"pydp-control is not reachable at {socket_path}: {exc.strerror or exc}") from None
    try:
        writer.write(data)
        await writer.drain()
        hdr = await asyncio.wait_for(reader.readexactly(_HDR.size), timeout)
        (n,) = _HDR.unpack(hdr)
        if n > MAX_FRAME:
            raise RpcError("Internal", f"reply of {n} bytes exceeds the {MAX_FRAME}-byte limit")
        msg = decode(await asyncio.wait_for(reader.readexactly(n), timeout))
        return _check_reply(msg, req_id, on_warning)
    except asyncio.TimeoutError:
        raise ReplyTimeout(f"pydp-control did not reply to {method!r} within {timeout:g}s") from None
    except asyncio.IncompleteReadError:
        raise ConnectionError("the daemon closed the connection") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


# ---- server ----

Handler = Callable[[str, dict], Awaitable[Any]]


def _bind_socket(path: str) -> tuple[socket.socket, int]:
    """A listening UNIX socket at path with mode 0600 (the umask is tightened around bind, so the socket is never
    reachable with looser permissions). A stale socket file is removed only when nothing listens on it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise RuntimeError(f"{path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)                 # stale: nobody listens
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise RuntimeError(f"{path}: cannot tell whether another daemon listens: {exc}") from None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        else:
            raise RuntimeError(f"another pydp-control already listens on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    sock.setblocking(False)
    return sock, os.stat(path).st_ino


_PEERCRED = struct.Struct("iII")          # struct ucred: pid, uid, gid


def peer_credentials(sock: socket.socket | None) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the process at the other end of a UNIX socket, None when the kernel cannot tell."""
    if sock is None:
        return None
    try:
        return _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    except OSError:
        return None


class Server:
    """An RPC server on a UNIX socket. handler(method, params) returns the result or raises RpcError; any other
    exception becomes an "Internal" error reply (and is logged)."""

    def __init__(self, path: str, handler: Handler, *, methods=None, max_connections: int = 32,
                 read_timeout: float = 30.0, max_frame: int = MAX_FRAME):
        self.path = path
        self.handler = handler
        self.methods = set(methods) if methods is not None else None
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self.max_frame = max_frame
        self.connections = 0
        self.requests = 0
        self.errors = 0
        self.refused = 0                  # connections from a user other than root and the daemon's own
        self.allowed_uids = {0, os.geteuid()}
        self._server: asyncio.AbstractServer | None = None
        self._ino = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> "Server":
        sock, self._ino = _bind_socket(self.path)
        try:
            self._server = await asyncio.start_unix_server(self._client, sock=sock, limit=self.max_frame + 64)
        except BaseException:
            sock.close()
            self._unlink()
            raise
        return self

    def _unlink(self) -> None:
        try:
            if self._ino is not None and os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    async def close(self) -> None:
        """Stops listening, removes the socket file (if it is still ours) and ends open connections."""
        if self._server is not None:
            self._server.close()
            self._unlink()
            for t in list(self._tasks):
                t.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def __aenter__(self) -> "Server":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _send(self, writer: asyncio.StreamWriter, msg: dict) -> None:
        try:
            data = frame(msg)
        except (TypeError, ValueError) as exc:
            # a result msgpack cannot carry, or too large: the client still gets a reply
            self.errors += 1
            log.error("reply to request %r cannot be sent: %s", msg.get("id"), exc)
            data = frame(make_error(msg.get("id"), "Internal", f"the reply cannot be encoded: {exc}"[:500]))
        writer.write(data)
        await asyncio.wait_for(writer.drain(), self.read_timeout)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        self.connections += 1
        try:
            cred = peer_credentials(writer.get_extra_info("socket"))
            if cred is None or cred[1] not in self.allowed_uids:
                self.refused += 1
                pid, uid = (cred[0], cred[1]) if cred is not None else (None, None)
                log.warning("rpc_refused", extra={"fields": {"pid": pid, "uid": uid, "socket": self.path}})
                await self._send(writer, make_error(None, "Unavailable",
                                                    f"permission denied: uid {uid} may not use pydp-control "
                                                    "(only root)"))
                return
            if self.connections > self.max_connections:
                await self._send(writer, make_error(None, "Unavailable",
                                                    f"too many connections (limit {self.max_connections})"))
                return
            while True:
                try:
                    hdr = await asyncio.wait_for(reader.readexactly(_HDR.size), self.read_timeout)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return                                      # closed, truncated or idle: just close
                (n,) = _HDR.unpack(hdr)
                if n > self.max_frame:
                    self.errors += 1
                    await self._send(writer, make_error(None, "BadRequest",
                                                        f"frame of {n} bytes exceeds the {self.max_frame}-byte "
                                                        "limit"))
                    return
                try:
                    payload = await asyncio.wait_for(reader.readexactly(n), self.read_timeout)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return
                if not await self._one(writer, payload):
                    return
        except (ConnectionError, asyncio.TimeoutError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:  # the server outlives any client
            log.exception("RPC connection failed")
        finally:
            self.connections -= 1
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _one(self, writer: asyncio.StreamWriter, payload: bytes) -> bool:
        """Handles one frame; False when the connection must close (garbage framing)."""
        self.requests += 1
        req_id = None
        try:
            msg = decode(payload)
            if isinstance(msg, dict) and _valid_id(msg.get("id")):
                req_id = msg["id"]
            req_id, method, params = validate_request(msg, self.methods)
            result = await self.handler(method, params)
        except FrameError as exc:
            self.errors += 1
            await self._send(writer, make_error(req_id, exc.type, exc.message))
            return False
        except RpcError as exc:
            self.errors += 1
            etype = exc.type if exc.type in ERROR_TYPES else "Internal"
            await self._send(writer, make_error(req_id, etype, exc.message))
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.errors += 1
            log.exception("RPC request %r failed", req_id)
            await self._send(writer, make_error(req_id, "Internal", f"{type(exc).__name__}: {exc}"[:500]))
            return True
        if isinstance(result, Reply):
            await self._send(writer, make_reply(req_id, result.result, result.warnings))
        else:
            await self._send(writer, make_reply(req_id, result))
        return True


async def serve(path: str, handler: Handler, **kw) -> Server:
    """Starts a Server on path (mode 0600) and returns it; ``await server.close()`` removes the socket."""
    return await Server(path, handler, **kw).start()
