"""The one table of the store's operations, served alike by the msgpack RPC (pydpctl -> pydp-control) and by the
HTTP API (control.http), and called by pydpctl on a store file directly.

    result, warnings = ops.call(store, "add_edge", {"cluster": "web", "edge": {"name": "e3", "ip": "192.0.2.23"}},
                                via="http", user="admin", if_match=12)

Each Op names its parameters with their types (checked here, before the store sees them: a wrong type or an unknown
or missing parameter is an OpError of kind "bad_request" naming the field), says whether it reads or writes, the
API version it appeared in, and the Store method it maps to. A write runs inside Store.recording(): it is recorded
in the store's history (when, what, via which interface, which user) in the same transaction, and when if_match
(the revision the caller read) is given and is not the store's revision any more, nothing changes and the OpError
has kind "conflict".

Errors are OpError(kind, message, field, errors): kind is one of KINDS, field the parameter or configuration key the
(first) problem concerns ("cluster_ip", "edge.ip", "carp.vhid", ...; "" when none), errors every problem as
{"field", "message"}. The RPC sends kind as its error type (RPC_TYPES), the HTTP API as the status (HTTP_STATUS).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable

from control.store import Conflict, NotFound, Store, StoreError

__all__ = ["Param", "Op", "OPS", "OpError", "KINDS", "HTTP_STATUS", "RPC_TYPES", "call", "check_args",
           "from_store_error", "error_field", "WRITE_OPS", "READ_OPS", "VIAS"]

API_VERSION = 1
VIAS = ("cli", "rpc", "http", "store")

# kind -> (HTTP status, RPC error type)
HTTP_STATUS = {"bad_request": 400, "unauthorized": 401, "forbidden": 403, "not_found": 404, "conflict": 409,
               "precondition_required": 428, "invalid": 422, "unavailable": 503, "too_many": 429,
               "internal": 500}
RPC_TYPES = {"bad_request": "BadRequest", "not_found": "NotFound", "invalid": "StoreError",
             "conflict": "Conflict", "forbidden": "BadRequest", "unavailable": "Unavailable",
             "internal": "Internal", "unauthorized": "BadRequest", "precondition_required": "BadRequest",
             "too_many": "Unavailable"}
KINDS = tuple(HTTP_STATUS)


class OpError(Exception):
    """A refused operation (nothing changed). kind: one of KINDS; field: what it concerns ("" if nothing in
    particular); errors: [{"field", "message"}] for every problem found."""

    def __init__(self, kind: str, message: str, field: str = "", errors: list[dict] | None = None):
        super().__init__(message)
        assert kind in HTTP_STATUS, kind
        self.kind = kind
        self.message = message
        self.field = field
        self.errors = errors if errors is not None else [{"field": field, "message": message}]

    def to_json(self) -> dict:
        return {"error": {"kind": self.kind, "message": self.message, "field": self.field, "errors": self.errors}}


@dataclass(frozen=True)
class Param:
    name: str
    type: type | tuple[type, ...]       # str, int, float, bool, dict (a JSON object); tuple: any of them
    required: bool = True
    default: Any = None
    choices: tuple = ()
    nullable: bool = False              # None is accepted (means: the default)
    doc: str = ""

    def type_name(self) -> str:
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        names = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array"}
        return " or ".join(names[t] for t in types)

    def json_schema(self) -> dict:
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        names = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array"}
        schema: dict[str, Any] = {"type": names[types[0]]} if len(types) == 1 else \
            {"oneOf": [{"type": names[t]} for t in types]}
        if self.choices:
            schema["enum"] = list(self.choices)
        if self.doc:
            schema["description"] = self.doc
        if not self.required and self.default is not None:
            schema["default"] = self.default
        if self.nullable:
            schema["nullable"] = True
        return schema


@dataclass(frozen=True)
class Op:
    name: str
    params: tuple[Param, ...]
    write: bool
    version: int
    method: str                                  # the Store method it calls
    doc: str
    secrets_via: tuple[str, ...] = ("cli", "rpc", "store")   # interfaces allowed include_secrets=true
    param_map: dict = dc_field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "write" if self.write else "read"


def _p(name: str, type_: Any, doc: str = "", **kw: Any) -> Param:
    return Param(name, type_, doc=doc, **kw)


_SECRETS = _p("include_secrets", bool, "include CARP passphrases (never over HTTP)", required=False, default=False)
_NAME = _p("name", str, "the cluster's name")
_CLUSTER = _p("cluster", str, "the cluster's name")
_EDGE = _p("edge", str, "the edge's name")

OPS: dict[str, Op] = {op.name: op for op in (
    # reading
    Op("list_clusters", (_SECRETS,), False, 1, "list_clusters", "every cluster, in store order"),
    Op("get_cluster", (_NAME, _SECRETS), False, 1, "get_cluster", "one cluster with its settings and edges"),
    Op("export_text", (_SECRETS,), False, 1, "export_text", "the whole configuration as appliance TOML"),
    Op("revision", (), False, 1, "revision", "the store's revision (bumped by every change)"),
    Op("drain_times", (), False, 1, "drain_times", "when each draining edge started draining"),
    Op("history", (_p("limit", int, "at most this many changes (1..10000)", required=False, default=100),
                   _p("cluster", str, "only changes naming this cluster", required=False, nullable=True)),
       False, 1, "history", "the latest changes, newest first"),
    # changing
    Op("add_cluster", (_p("cluster", dict, "the new cluster (absent keys take their defaults)"),), True, 1,
       "add_cluster", "add a cluster"),
    Op("edit_cluster", (_NAME, _p("changes", dict, "the settings to change (carp and health are merged)")),
       True, 1, "edit_cluster", "change settings of a cluster"),
    Op("delete_cluster", (_NAME,), True, 1, "delete_cluster", "delete a cluster and its edges"),
    Op("duplicate_cluster", (_NAME, _p("new_name", str, "the copy's name"),
                             _p("cluster_ip", str, "the copy's cluster IP"),
                             _p("vhid", int, "the copy's CARP vhid (default: the lowest free one)", required=False,
                                nullable=True)),
       True, 1, "duplicate_cluster", "copy a cluster under a new name and cluster IP"),
    Op("set_cluster_enabled", (_NAME, _p("enabled", bool, "true: serve the cluster IP; false: drop its traffic")),
       True, 1, "set_cluster_enabled", "enable or disable a cluster"),
    Op("add_edge", (_CLUSTER, _p("edge", dict, "the new edge: name, ip, mac, weight, state")), True, 1, "add_edge",
       "add a service edge to a cluster"),
    Op("edit_edge", (_CLUSTER, _EDGE, _p("changes", dict, "the edge settings to change: name, ip, mac, weight, "
                                                          "state")),
       True, 1, "edit_edge", "change settings of an edge"),
    Op("remove_edge", (_CLUSTER, _EDGE), True, 1, "remove_edge", "remove a service edge"),
    Op("set_edge_state", (_CLUSTER, _EDGE, _p("state", str, "active, draining or disabled",
                                              choices=("active", "draining", "disabled"))),
       True, 1, "set_edge_state", "drain, undrain, disable or enable an edge"),
    Op("get_bgp", (_p("include_secrets", bool, "include BGP peer passwords (never over HTTP)", required=False,
                      default=False),), False, 1, "get_bgp", "the [bgp] section ({} when there is none)"),
    Op("set_bgp", (_p("bgp", dict, "the [bgp] keys to set (peer replaces the list of peers)"),), True, 1,
       "set_bgp", "create or change the [bgp] section (BGP announcement of the bgp clusters)"),
    Op("remove_bgp", (), True, 1, "remove_bgp", "remove the [bgp] section (no cluster may use failover bgp)"),
    Op("import_text", (_p("text", str, "a whole appliance TOML file"),
                       _p("source", str, "the file's name, for error messages", required=False, default="<import>"),
                       _p("keep_passphrases", bool, "clusters imported without a passphrase keep the stored one",
                          required=False, default=True)),
       True, 1, "import_text", "replace the whole configuration"),
)}

WRITE_OPS = frozenset(n for n, o in OPS.items() if o.write)
READ_OPS = frozenset(n for n, o in OPS.items() if not o.write)


def _is(value: Any, types: tuple[type, ...]) -> bool:
    for t in types:
        if t is bool:
            if isinstance(value, bool):
                return True
        elif t is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return True
        elif t is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return True
        elif isinstance(value, t):
            return True
    return False


def check_args(op: Op, args: Any) -> dict:
    """The keyword arguments for op.method, with defaults filled in; OpError("bad_request") naming the first
    parameter that is unknown, missing or of the wrong type."""
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise OpError("bad_request", f"{op.name}: the arguments must be an object of named parameters, got "
                                     f"{type(args).__name__}")
    known = {p.name for p in op.params}
    for k in args:
        if k not in known:
            accepted = ", ".join(p.name for p in op.params) or "none"
            raise OpError("bad_request", f"{k}: unknown parameter of {op.name} (accepted: {accepted})", str(k))
    out: dict[str, Any] = {}
    for p in op.params:
        if p.name not in args or (args[p.name] is None and p.nullable):
            if p.required:
                raise OpError("bad_request", f"{p.name}: missing ({op.name} needs it: {p.type_name()})", p.name)
            out[p.name] = p.default
            continue
        value = args[p.name]
        types = p.type if isinstance(p.type, tuple) else (p.type,)
        if not _is(value, types):
            raise OpError("bad_request", f"{p.name}: must be {p.type_name()}, got {_json_type(value)}", p.name)
        if p.choices and value not in p.choices:
            raise OpError("bad_request", f"{p.name}: must be one of {', '.join(map(str, p.choices))}, got {value!r}",
                          p.name)
        out[p.name] = value
    if op.name == "history" and not 1 <= out["limit"] <= 10000:
        raise OpError("bad_request", f"limit: must be between 1 and 10000, got {out['limit']}", "limit")
    return out


def _json_type(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", dict: "an object",
            list: "an array", type(None): "null"}.get(type(value), type(value).__name__)


# "cluster 'web' edge 'e1' ip: ..." -> edge.ip; "cluster 'web' carp.vhid: ..." -> carp.vhid; "name: ..." -> name
_FIELD_RE = re.compile(r"^(?:cluster (?:'[^']*'|#\d+) )?(?:(edge) (?:'[^']*' |#\d+ |(?=name: )))?"
                       r"([A-Za-z_][A-Za-z0-9_.]*)(?:\[\d+\])?: ")


def error_field(message: str) -> str:
    """The configuration key a store error message concerns ("" if it names none)."""
    m = _FIELD_RE.match(message)
    if not m:
        return ""
    return f"edge.{m[2]}" if m[1] else m[2]


def from_store_error(e: StoreError) -> OpError:
    errors = [{"field": error_field(x), "message": x} for x in (e.errors or [str(e)])]
    kind = "not_found" if isinstance(e, NotFound) else "conflict" if isinstance(e, Conflict) else "invalid"
    return OpError(kind, str(e), errors[0]["field"] if errors else "", errors)


def call(store: Store, name: str, args: Any = None, *, via: str, user: str,
         if_match: int | None = None) -> tuple[Any, dict]:
    """Runs the operation name on store. Returns (result, info): info["revision"] is the store's revision after
    a write (None after a read), info["changed"] whether a write changed anything. OpError for any refusal;
    nothing changed then."""
    op = OPS.get(name) if isinstance(name, str) else None
    if op is None:
        shown = name[:64] if isinstance(name, str) else type(name).__name__
        raise OpError("bad_request", f"unknown operation {shown!r}; known: {', '.join(sorted(OPS))}", "op")
    if via not in VIAS:
        raise ValueError(f"via must be one of {VIAS}")
    kwargs = check_args(op, args)
    if kwargs.get("include_secrets") and via not in op.secrets_via:
        raise OpError("forbidden", f"include_secrets: secrets (CARP passphrases, BGP passwords) are never given "
                                   f"out over {via}",
                      "include_secrets")
    if if_match is not None and (isinstance(if_match, bool) or not isinstance(if_match, int)):
        raise OpError("bad_request", f"if_match: must be a revision number, got {_json_type(if_match)}", "if_match")
    fn: Callable[..., Any] = getattr(store, op.method)
    try:
        if not op.write:
            return fn(**kwargs), {"revision": None, "changed": False}
        recorded = dict(kwargs)
        if op.name == "import_text":
            recorded["text"] = f"<{len(kwargs['text'])} characters>"
        with store.recording(op=op.name, args=recorded, via=via, user=user, expect_revision=if_match) as info:
            result = fn(**kwargs)
        return result, {"revision": info["revision"], "changed": info["changed"]}
    except StoreError as e:
        raise from_store_error(e) from None


def table() -> list[dict]:
    """The table as plain data (for the OpenAPI document, pydp-control's start event, docs)."""
    return [{"name": o.name, "kind": o.kind, "version": o.version, "store_method": o.method, "doc": o.doc,
             "params": [{"name": p.name, "type": p.type_name(), "required": p.required,
                         **({"default": p.default} if not p.required else {}),
                         **({"choices": list(p.choices)} if p.choices else {})} for p in o.params]}
            for o in OPS.values()]


# ---- the cluster list as pydpctl and the HTTP API show it (sorting, searching, the row's keys) ----

NOT_FOR_PRODUCTION = "standalone (not for production)"


def _ip_key(text: str) -> tuple[int, int]:
    import ipaddress
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return (9, 0)
    return (ip.version, int(ip))


def status_text(c: dict) -> str:
    return "enabled" if c["enabled"] else "disabled"


SORT_COLUMNS: dict[str, Callable[[dict], Any]] = {
    "name": lambda c: (c["name"].casefold(), c["name"]),
    "status": status_text,
    "service-edges": lambda c: (len(c["edge"]), [e["name"].casefold() for e in c["edge"]]),
    "cluster-ip": lambda c: _ip_key(c["cluster_ip"]),
    "ipsec-local-termination": lambda c: c["ipsec_local_termination"],
    "mode": lambda c: c["mode"],
}
SORT_ALIASES = {"edges": "service-edges", "ip": "cluster-ip", "ipsec": "ipsec-local-termination"}


def sort_column(text: str) -> str:
    """The canonical column name for text ("Cluster IP", "cluster_ip", "ip" -> "cluster-ip"); ValueError if none."""
    key = "-".join(text.strip().lower().replace("_", " ").replace("-", " ").split())
    key = SORT_ALIASES.get(key, key)
    if key not in SORT_COLUMNS:
        raise ValueError(f"unknown column {text!r}; choose from {', '.join(SORT_COLUMNS)}")
    return key


def sort_clusters(clusters: list[dict], column: str = "name", desc: bool = False) -> list[dict]:
    key = SORT_COLUMNS[column]
    return sorted(clusters, key=lambda c: (key(c), c["name"].casefold(), c["name"]), reverse=desc)


def search_clusters(clusters: list[dict], text: str) -> list[dict]:
    """Clusters whose name, cluster IP, or an edge's name or IP contains text (case-insensitive)."""
    needle = text.casefold()
    return [c for c in clusters
            if any(needle in v.casefold()
                   for v in [c["name"], c["cluster_ip"]] + [x for e in c["edge"] for x in (e["name"], e["ip"])])]


def list_row(c: dict) -> dict:
    """One cluster as `pydpctl cluster list --json` and GET /api/v1/clusters show it."""
    return {"name": c["name"], "status": status_text(c), "service_edges": [e["name"] for e in c["edge"]],
            "cluster_ip": c["cluster_ip"], "ipsec_local_termination": c["ipsec_local_termination"],
            "mode": c["mode"], "failover": c.get("failover", "carp")}


def cluster_list(clusters: list[dict], sort: str = "name", desc: bool = False, search: str | None = None) -> list[dict]:
    if search:
        clusters = search_clusters(clusters, search)
    return [list_row(c) for c in sort_clusters(clusters, sort, desc)]
