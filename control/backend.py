"""Where pydpctl's reads and changes go: straight into the store file, or through the running daemon.

    backend = choose(db=args.db, socket=args.socket)
    backend.add_edge(cluster="web", edge={"name": "e3", "ip": "198.51.100.23"})

Both backends offer the operations of control.ops.OPS (the one table the RPC and the HTTP API serve too) as methods
with the same arguments, results and errors (StoreError, NotFound, Conflict); both check the arguments against the
table before anything is sent or stored, and every change lands in the store's history (via "cli" for a store file,
"rpc" through the daemon, with the user running pydpctl). The rule (choose()):

1. a store path given (--db, else the PYDP_DB environment variable): that store, directly;
2. else, if the daemon's socket (--socket, else PYDP_SOCKET, else control.rpc.DEFAULT_SOCKET) accepts a
   connection: the daemon, which applies each change live;
3. else the default store path (store.DEFAULT_PATH), directly.

A socket named explicitly (the socket argument, i.e. --socket) that does not answer is an error rather than a
silent fall-back to the store file.
"""

from __future__ import annotations

import os
import socket as _socket
from typing import Any, Callable, Mapping

from control import ops
from control.store import DEFAULT_PATH, Conflict, NotFound, Store, StoreError, default_user

__all__ = ["StoreBackend", "RpcBackend", "DaemonError", "choose", "daemon_listening", "default_socket",
           "RPC_TIMEOUT"]

OPERATIONS = frozenset(ops.OPS)
RPC_TIMEOUT = 15.0          # a change may wait for the store's busy timeout (5 s) before it runs


class DaemonError(StoreError):
    """The daemon could not be reached or failed (not a refusal of the change by the store)."""


def default_socket() -> str:
    from control import rpc     # imported late: the store works without the RPC module
    return rpc.DEFAULT_SOCKET


def _bind(name: str, args: tuple, kwargs: dict) -> dict:
    """Positional arguments named by the table's parameter order; OpError for too many."""
    params = ops.OPS[name].params
    if len(args) > len(params):
        raise TypeError(f"{name}() takes at most {len(params)} positional arguments ({len(args)} given)")
    out = {p.name: v for p, v in zip(params, args)}
    for k, v in kwargs.items():
        if k in out:
            raise TypeError(f"{name}() got multiple values for argument {k!r}")
        out[k] = v
    return out


def store_error(e: "ops.OpError") -> StoreError:
    """The StoreError (NotFound, Conflict) pydpctl shows for a refused operation."""
    cls = {"not_found": NotFound, "conflict": Conflict}.get(e.kind, StoreError)
    err = cls(e.message, [x["message"] for x in e.errors])
    err.field = e.field
    return err


class StoreBackend:
    """Calls go to a Store in this process, through control.ops (via "cli")."""

    kind = "store"

    def __init__(self, store: Store, user: str | None = None):
        self.store = store
        self.where = store.path
        self.user = user or default_user()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name not in OPERATIONS:
            raise AttributeError(name)

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                result, _ = ops.call(self.store, name, _bind(name, args, kwargs), via="cli", user=self.user)
            except ops.OpError as e:
                raise store_error(e) from None
            return result
        call.__name__ = name
        return call

    def close(self) -> None:
        self.store.close()


class RpcBackend:
    """Each call becomes control.rpc.call(socket, "store", {"op": name, "args": {keyword arguments}}); the
    daemon's StoreError and NotFound replies are raised as StoreError and NotFound again."""

    kind = "daemon"

    def __init__(self, socket_path: str, timeout: float = RPC_TIMEOUT,
                 on_warning: Callable[[str], None] | None = None, user: str | None = None):
        """on_warning(text): called for each warning the daemon sends with a result (e.g. a change saved in the
        store that the data plane could not take); default: control.rpc logs it. user: recorded in the history
        with each change (default: who runs this process)."""
        self.user = user or default_user()
        self.socket_path = socket_path
        self.where = socket_path
        self.timeout = timeout
        self.on_warning = on_warning

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name not in OPERATIONS:
            raise AttributeError(name)

        def call(*args: Any, **kwargs: Any) -> Any:
            params = _bind(name, args, kwargs)
            try:
                ops.check_args(ops.OPS[name], params)        # refused here, before anything is sent
            except ops.OpError as e:
                raise store_error(e) from None
            return self._call(name, params)
        call.__name__ = name
        return call

    def _call(self, op: str, args: dict) -> Any:
        from control import rpc
        kwargs: dict[str, Any] = {"timeout": self.timeout}
        if self.on_warning is not None:
            kwargs["on_warning"] = self.on_warning
        try:
            return rpc.call(self.socket_path, "store", {"op": op, "args": args, "user": self.user}, **kwargs)
        except rpc.RpcError as e:
            if e.type == "NotFound":
                raise NotFound(e.message) from None
            if e.type == "Conflict":
                raise Conflict(e.message) from None
            if e.type == "StoreError":
                raise StoreError(e.message) from None
            raise DaemonError(f"pydp-control at {self.socket_path}: {e.type}: {e.message}") from None
        except ConnectionError as e:
            raise DaemonError(str(e) or f"pydp-control at {self.socket_path}: connection lost") from None

    def close(self) -> None:
        pass


def daemon_listening(path: str, timeout: float = 1.0) -> bool:
    """True if something accepts connections on the UNIX socket path; DaemonError if we may not connect."""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except PermissionError:
        from control import rpc
        raise DaemonError(rpc.permission_denied(path)) from None     # a daemon is there, but not for us
    except OSError:
        return False
    finally:
        s.close()
    return True


def choose(db: str | None = None, socket: str | None = None, env: Mapping[str, str] | None = None,
           on_warning: Callable[[str], None] | None = None) -> StoreBackend | RpcBackend:
    """The backend by the rule of the module documentation. StoreError if the store cannot be opened.
    on_warning: see RpcBackend."""
    env = os.environ if env is None else env
    db = db or env.get("PYDP_DB") or None
    if db:
        return StoreBackend(Store(db))
    if socket:
        if not daemon_listening(socket):
            raise DaemonError(f"pydp-control is not reachable at {socket} (nothing accepts connections there); "
                              "without --socket, pydpctl falls back to the store file")
        return RpcBackend(socket, on_warning=on_warning)
    sock = env.get("PYDP_SOCKET") or None
    if sock is None:
        try:
            sock = default_socket()
        except ImportError:
            sock = None
    if sock and daemon_listening(sock):
        return RpcBackend(sock, on_warning=on_warning)
    return StoreBackend(Store(DEFAULT_PATH))
