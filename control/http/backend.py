"""What the HTTP API needs from the program that serves it (pydp-control), as a small interface:

    class Backend:
        async def op(self, name, args, *, user, if_match) -> (result, info, warnings)
        async def status(self) -> dict              # the same dict as the RPC "status" method
        async def stats(self) -> dict               # the RPC "stats" result; OpError("unavailable") without data plane
        async def flows(self, cluster, edge, client, limit) -> dict
        async def flush(self, all, cluster, edge) -> dict

op() runs control.ops.call(store, name, args, via="http", ...) and then whatever the program does after a change
(pydp-control applies the store to the data plane and returns the apply's warnings). Errors: control.ops.OpError.

StoreOnlyBackend is the backend of a store with no daemon and no data plane (its status says the data plane is
down); pydp-control has its own (control/daemon).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

from control import ops
from control.store import Store

__all__ = ["StoreOnlyBackend", "store_status"]


def store_status(store: Store) -> dict:
    """The status of a configuration with no daemon and no data plane: every cluster from the store, nothing
    applied, CARP and health unknown."""
    clusters = []
    for c in store.list_clusters():
        clusters.append({
            "name": c["name"], "cluster_ip": c["cluster_ip"], "enabled": c["enabled"], "mode": c["mode"],
            "failover": c.get("failover", "carp"), "dsr": c["dsr"], "in_store": True, "applied": False, "active": False,
            "carp": {"local": "unknown", "peer": "unknown", "source": "none", "vhid": c["carp"].get("vhid")},
            "packets": 0, "bytes": 0,
            "edges": [{"name": e["name"], "ip": e["ip"], "mac": e["mac"] or None,
                       "mac_source": "config" if e["mac"] else "unresolved", "weight": e["weight"],
                       "admin_state": e["state"], "state": "not applied", "health": "unchecked",
                       "health_detail": None, "health_since": None, "health_check": None,
                       "packets": 0, "bytes": 0, "new_flows": 0, "drain": None} for e in c["edge"]],
        })
    return {"daemon": {"running": False, "revision": store.revision()}, "carp_known": False,
            "dataplane": {"running": False}, "dataplane_up": False, "clusters": clusters, "flow_table": None}


class StoreOnlyBackend:
    """The store in this process, one writer thread; no data plane."""

    def __init__(self, store: Store):
        self.store = store
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pydp-http-store")

    async def _run(self, fn, *args, **kw):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: fn(*args, **kw))

    async def op(self, name: str, args: dict, *, user: str, if_match: int | None) -> tuple[Any, dict, list[str]]:
        result, info = await self._run(ops.call, self.store, name, args, via="http", user=user, if_match=if_match)
        warnings = []
        if ops.OPS[name].write and info["changed"]:
            warnings.append("saved in the store; no pydp-control runs here to apply it to a data plane")
        return result, info, warnings

    async def status(self) -> dict:
        return await self._run(store_status, self.store)

    async def stats(self) -> dict:
        raise ops.OpError("unavailable", "no data plane is running (no statistics)")

    async def flows(self, cluster, edge, client, limit) -> dict:
        raise ops.OpError("unavailable", "no data plane is running (no flows)")

    async def flush(self, all_flows: bool, cluster, edge) -> dict:
        raise ops.OpError("unavailable", "no data plane is running (no flows to flush)")

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def _op_error(e) -> ops.OpError:
    """An RPC-style error of pydp-control's readers (control.rpc.RpcError) as the API's error."""
    kind = {"Unavailable": "unavailable", "BadRequest": "bad_request", "NotFound": "not_found",
            "StoreError": "invalid", "Conflict": "conflict"}.get(getattr(e, "type", ""), "internal")
    return ops.OpError(kind, getattr(e, "message", str(e)))


class DaemonBackend:
    """pydp-control's backend: a change runs on its store thread through daemon.store_op (control.ops, then the
    same apply-after-change path as the RPC), reads on its reader threads, the same status the RPC returns."""

    def __init__(self, daemon):
        self.daemon = daemon

    async def op(self, name: str, args: dict, *, user: str, if_match: int | None) -> tuple[Any, dict, list[str]]:
        return await self.daemon.run_worker(self.daemon.store_op, name, args, "http", user, if_match)

    async def _read(self, fn, *args):
        from control import rpc
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.daemon.readers, fn, *args)
        except rpc.RpcError as e:
            raise _op_error(e) from None

    async def status(self) -> dict:
        d = self.daemon
        states = d.checker.states() if d.checker is not None else {}      # on the loop: it owns them
        return await self._read(d.view.status, states)

    async def stats(self) -> dict:
        return await self._read(self.daemon.view.stats)

    async def flows(self, cluster, edge, client, limit) -> dict:
        return await self._read(self.daemon.view.flows, cluster, edge, client, limit)

    async def flush(self, all_flows: bool, cluster, edge) -> dict:
        from control import rpc
        try:
            return await self.daemon.run_worker(self.daemon._flush, {"all": all_flows, "cluster": cluster,
                                                                     "edge": edge})
        except rpc.RpcError as e:
            raise _op_error(e) from None
