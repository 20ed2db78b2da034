"""The routes of the HTTP API (/api/v1/) and of the page, with what the OpenAPI document says about each.

Every change goes through control.ops (via="http") and the backend's write path, the same as pydpctl's; it must
carry the revision it was made against in If-Match (the ETag of a read): a stale one gets 409, none 428, and
nothing changes. Errors are JSON: {"error": {"kind", "message", "field", "errors": [{"field", "message"}]}}.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Awaitable, Callable

from aiohttp import web

from control import ops
from control.http import auth

log = logging.getLogger("pydp.control.http")

API = "/api/v1"
COOKIE = "pydp_session"
MAX_BODY = 1 << 20
BACKEND = web.AppKey("backend", object)
STATE = web.AppKey("state", object)
ROUTE_TABLE = web.AppKey("routes", dict)
IDENTITY = web.RequestKey("identity", object) if hasattr(web, "RequestKey") else "pydp_identity"  # aiohttp < 3.12


@dataclass
class Route:
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    summary: str
    op: str | None = None                     # the control.ops operation it runs
    write: bool = False                       # a change: If-Match, CSRF, admin role
    public: bool = False                      # no sign-in needed
    query: tuple = ()                         # (name, type, description)
    body: dict | None = None                  # JSON schema of the request body
    response: dict | None = None              # JSON schema of the 2xx body
    status: int = 200
    tags: tuple = ()


class State:
    def __init__(self, users_file: str | None, tls: bool):
        self.users = auth.UsersFile(users_file)
        self.sessions = auth.Sessions()
        self.brake = auth.SignInBrake()
        self.tls = tls


class Identity:
    def __init__(self, user: str, role: str, session: auth.Session | None):
        self.user, self.role, self.session = user, role, session


def _error(kind: str, message: str, field: str = "", errors: list | None = None,
           headers: dict | None = None) -> web.Response:
    e = ops.OpError(kind, message, field, errors)
    return web.json_response(e.to_json(), status=ops.HTTP_STATUS[kind], headers=headers)


class HttpError(Exception):
    def __init__(self, kind: str, message: str, field: str = "", headers: dict | None = None):
        super().__init__(message)
        self.kind, self.message, self.field, self.headers = kind, message, field, headers


def _etag(revision: int) -> str:
    return f'"{revision}"'


_ETAG_RE = re.compile(r'^\s*(?:W/)?"?(\d+)"?\s*$')


def _if_match(request: web.Request) -> int | None:
    """The revision in If-Match (None for '*'); HttpError if missing or unreadable."""
    value = request.headers.get("If-Match")
    if value is None:
        raise HttpError("precondition_required", "If-Match: a change must carry the revision it was made against "
                                                 "(the ETag of a read, e.g. GET /api/v1/clusters)", "If-Match")
    if value.strip() == "*":
        return None
    m = _ETAG_RE.match(value)
    if not m:
        raise HttpError("bad_request", f"If-Match: expected a revision such as \"12\", got {value[:40]!r}",
                        "If-Match")
    return int(m[1])


async def _body(request: web.Request) -> Any:
    if not request.can_read_body:
        return {}
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise HttpError("bad_request", f"body: larger than {MAX_BODY} bytes", "body")
    ctype = request.content_type
    if ctype != "application/json":
        raise HttpError("bad_request", f"body: must be application/json, got {ctype or 'no content type'}", "body")
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise HttpError("bad_request", f"body: not valid JSON ({e})"[:200], "body") from None


def _obj(body: Any, what: str = "body") -> dict:
    if not isinstance(body, dict):
        raise HttpError("bad_request", f"{what}: must be a JSON object", what)
    return body


def _only(body: dict, allowed: set, what: str = "field") -> None:
    extra = sorted(set(body) - allowed)
    if extra:
        raise HttpError("bad_request", f"{extra[0]}: unknown {what} (accepted: {', '.join(sorted(allowed))})",
                        extra[0])


def _ident(request: web.Request) -> Identity:
    return request[IDENTITY]


async def _read(request: web.Request, name: str, args: dict) -> Any:
    result, _, _ = await request.app[BACKEND].op(name, args, user=_ident(request).user, if_match=None)
    return result


async def _revision(request: web.Request) -> int:
    return await _read(request, "revision", {})


async def _change(request: web.Request, name: str, args: dict, status: int = 200) -> web.Response:
    if_match = _if_match(request)
    result, info, warnings = await request.app[BACKEND].op(name, args, user=_ident(request).user,
                                                          if_match=if_match)
    body = {"result": result, "revision": info["revision"], "changed": info["changed"], "warnings": warnings}
    return web.json_response(body, status=status, headers={"ETag": _etag(info["revision"])})


# ---- handlers: session ----

def _session_json(ident: Identity) -> dict:
    return {"user": ident.user, "role": ident.role, "csrf": ident.session.csrf if ident.session else None}


async def get_session(request: web.Request) -> web.Response:
    return web.json_response(_session_json(_ident(request)))


async def sign_in(request: web.Request) -> web.Response:
    st: State = request.app[STATE]
    body = _obj(await _body(request))
    _only(body, {"user", "password"})
    user, password = body.get("user"), body.get("password")
    for k, v in (("user", user), ("password", password)):
        if not isinstance(v, str) or not v:
            raise HttpError("bad_request", f"{k}: required (a non-empty string)", k)
    keys = [f"ip:{request.remote}", f"user:{user}"]
    wait = st.brake.wait(keys)
    if wait > 0:
        log.warning("http_signin_braked", extra={"fields": {"user": user, "remote": request.remote}})
        raise HttpError("too_many", f"too many failed sign-ins: try again in {wait:.0f} s", "password",
                        headers={"Retry-After": str(max(1, round(wait)))})
    entry = st.users.password(user, password)
    if entry is None:
        if st.users.problem:
            raise HttpError("unavailable", f"sign-in is not possible: {st.users.problem}")
        st.brake.failed(keys)
        log.warning("http_signin_failed", extra={"fields": {"user": user, "remote": request.remote}})
        raise HttpError("unauthorized", "wrong user name or password", "password")
    st.brake.succeeded(keys)
    s = st.sessions.create(entry.name, entry.role)
    log.info("http_signin", extra={"fields": {"user": entry.name, "role": entry.role, "remote": request.remote}})
    resp = web.json_response(_session_json(Identity(entry.name, entry.role, s)))
    resp.set_cookie(COOKIE, s.id, httponly=True, samesite="Strict", secure=st.tls, path="/")
    return resp


async def sign_out(request: web.Request) -> web.Response:
    ident = _ident(request)
    if ident.session is not None:
        request.app[STATE].sessions.drop(ident.session.id)
    resp = web.json_response({"signed_out": True})
    resp.del_cookie(COOKIE, path="/")
    return resp


# ---- handlers: clusters and edges ----

async def list_clusters(request: web.Request) -> web.Response:
    q = request.query
    try:
        sort = ops.sort_column(q.get("sort", "name"))
    except ValueError as e:
        raise HttpError("bad_request", f"sort: {e}", "sort") from None
    desc = _bool_query(q, "desc")
    search = q.get("search") or None
    revision = await _revision(request)
    clusters = await _read(request, "list_clusters", {})
    return web.json_response(ops.cluster_list(clusters, sort, desc, search), headers={"ETag": _etag(revision)})


def _bool_query(q, name: str) -> bool:
    v = q.get(name, "false").lower()
    if v in ("1", "true", "yes", "on", ""):
        return v != "" or name in q
    if v in ("0", "false", "no", "off"):
        return False
    raise HttpError("bad_request", f"{name}: must be true or false, got {v[:20]!r}", name)


async def get_cluster(request: web.Request) -> web.Response:
    revision = await _revision(request)
    c = await _read(request, "get_cluster", {"name": request.match_info["name"]})
    return web.json_response(c, headers={"ETag": _etag(revision)})


async def add_cluster(request: web.Request) -> web.Response:
    return await _change(request, "add_cluster", {"cluster": await _body(request)}, 201)


async def edit_cluster(request: web.Request) -> web.Response:
    return await _change(request, "edit_cluster", {"name": request.match_info["name"],
                                                   "changes": await _body(request)})


async def delete_cluster(request: web.Request) -> web.Response:
    return await _change(request, "delete_cluster", {"name": request.match_info["name"]})


async def duplicate_cluster(request: web.Request) -> web.Response:
    body = _obj(await _body(request))
    _only(body, {"new_name", "cluster_ip", "vhid"})
    return await _change(request, "duplicate_cluster", {"name": request.match_info["name"], **body}, 201)


async def enable_cluster(request: web.Request) -> web.Response:
    return await _change(request, "set_cluster_enabled", {"name": request.match_info["name"], "enabled": True})


async def disable_cluster(request: web.Request) -> web.Response:
    return await _change(request, "set_cluster_enabled", {"name": request.match_info["name"], "enabled": False})


async def add_edge(request: web.Request) -> web.Response:
    return await _change(request, "add_edge", {"cluster": request.match_info["name"], "edge": await _body(request)},
                         201)


async def edit_edge(request: web.Request) -> web.Response:
    m = request.match_info
    return await _change(request, "edit_edge", {"cluster": m["name"], "edge": m["edge"],
                                                "changes": await _body(request)})


async def remove_edge(request: web.Request) -> web.Response:
    m = request.match_info
    return await _change(request, "remove_edge", {"cluster": m["name"], "edge": m["edge"]})


async def drain_edge(request: web.Request) -> web.Response:
    m = request.match_info
    return await _change(request, "set_edge_state", {"cluster": m["name"], "edge": m["edge"], "state": "draining"})


async def undrain_edge(request: web.Request) -> web.Response:
    m = request.match_info
    return await _change(request, "set_edge_state", {"cluster": m["name"], "edge": m["edge"], "state": "active"})


async def set_weight(request: web.Request) -> web.Response:
    m = request.match_info
    body = _obj(await _body(request))
    _only(body, {"weight"})
    if "weight" not in body:
        raise HttpError("bad_request", "weight: required (an integer 1..65535)", "weight")
    return await _change(request, "edit_edge", {"cluster": m["name"], "edge": m["edge"],
                                                "changes": {"weight": body["weight"]}})


# ---- handlers: the appliance ----

async def status(request: web.Request) -> web.Response:
    return web.json_response(await request.app[BACKEND].status())


async def stats(request: web.Request) -> web.Response:
    return web.json_response(await request.app[BACKEND].stats())


async def flows(request: web.Request) -> web.Response:
    q = request.query
    _only(dict(q), {"cluster", "edge", "client", "limit"}, "query parameter")
    limit = q.get("limit", "100")
    if not limit.isdigit() or not 0 <= int(limit) <= 100000:
        raise HttpError("bad_request", f"limit: must be an integer 0..100000, got {limit[:20]!r}", "limit")
    return web.json_response(await request.app[BACKEND].flows(q.get("cluster"), q.get("edge"), q.get("client"),
                                                              int(limit)))


async def flush(request: web.Request) -> web.Response:
    body = _obj(await _body(request))
    _only(body, {"all", "cluster", "edge"})
    if not isinstance(body.get("all", False), bool):
        raise HttpError("bad_request", "all: must be true or false", "all")
    for k in ("cluster", "edge"):
        if body.get(k) is not None and not isinstance(body[k], str):
            raise HttpError("bad_request", f"{k}: must be a string", k)
    return web.json_response(await request.app[BACKEND].flush(body.get("all", False), body.get("cluster"),
                                                              body.get("edge")))


async def history(request: web.Request) -> web.Response:
    q = request.query
    _only(dict(q), {"limit", "cluster"}, "query parameter")
    limit = q.get("limit", "100")
    if not limit.isdigit():
        raise HttpError("bad_request", f"limit: must be an integer 1..10000, got {limit[:20]!r}", "limit")
    return web.json_response(await _read(request, "history", {"limit": int(limit), "cluster": q.get("cluster")}))


async def get_bgp(request: web.Request) -> web.Response:
    revision = await _revision(request)
    return web.json_response(await _read(request, "get_bgp", {}), headers={"ETag": _etag(revision)})


async def set_bgp(request: web.Request) -> web.Response:
    return await _change(request, "set_bgp", {"bgp": await _body(request)})


async def remove_bgp(request: web.Request) -> web.Response:
    return await _change(request, "remove_bgp", {})


async def op_table(request: web.Request) -> web.Response:
    return web.json_response(ops.table())


async def openapi_json(request: web.Request) -> web.Response:
    from control.http import openapi
    return web.json_response(openapi.document())


# ---- the page ----

STATIC_FILES = {"app.js": "text/javascript", "app.css": "text/css", "index.html": "text/html"}


def _static(name: str) -> bytes:
    return resources.files("control.http").joinpath("static", name).read_bytes()


async def page(request: web.Request) -> web.Response:
    return web.Response(body=_static("index.html"), content_type="text/html", charset="utf-8")


async def static(request: web.Request) -> web.Response:
    name = request.match_info["file"]
    if name not in STATIC_FILES:
        raise web.HTTPNotFound()
    return web.Response(body=_static(name), content_type=STATIC_FILES[name], charset="utf-8")


# ---- the route table (make_app serves it; openapi.document() describes it) ----

S_STR = {"type": "string"}
S_INT = {"type": "integer"}
S_BOOL = {"type": "boolean"}
S_OBJ = {"type": "object"}
S_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["kind", "message", "field", "errors"],
    "properties": {"kind": {"type": "string", "enum": list(ops.KINDS)}, "message": S_STR, "field": S_STR,
                   "errors": {"type": "array", "items": {"type": "object", "required": ["field", "message"],
                                                         "properties": {"field": S_STR, "message": S_STR}}}}}}}
S_EDGE = {"type": "object", "required": ["name", "ip"], "properties": {
    "name": S_STR, "ip": S_STR, "mac": S_STR, "weight": S_INT,
    "state": {"type": "string", "enum": ["active", "draining", "disabled"]}}}
S_CLUSTER = {"type": "object", "required": ["name", "cluster_ip", "enabled", "mode", "dsr", "ipsec_local_termination",
                                            "failover", "carp", "health", "edge"],
             "properties": {"name": S_STR, "cluster_ip": S_STR, "enabled": S_BOOL,
                            "mode": {"type": "string", "enum": ["cluster", "standalone"]},
                            "failover": {"type": "string", "enum": ["carp", "bgp"],
                                         "description": "carp: active-passive pair; bgp: active-active, announced "
                                                        "over BGP (docs/bgp.md)"},
                            "dsr": {"type": "string", "enum": ["l2", "ipip"]}, "ipsec_local_termination": S_BOOL,
                            "maglev_size": S_INT, "drain_timeout": {"type": "number"},
                            "carp": {"type": "object", "required": ["vhid", "passphrase_set"],
                                     "properties": {"vhid": S_INT, "advbase": S_INT, "advskew": S_INT,
                                                    "preempt": S_BOOL, "passphrase_set": S_BOOL,
                                                    "passphrase_file": S_STR}},
                            "health": S_OBJ, "edge": {"type": "array", "items": S_EDGE}}}
S_NEW_CLUSTER = {"type": "object", "required": ["name", "cluster_ip"], "properties": {
    **S_CLUSTER["properties"], "carp": {"type": "object", "description": "vhid, advbase, advskew, preempt, "
                                                                          "passphrase (write-only)"}}}
S_ROW = {"type": "object", "required": ["name", "status", "service_edges", "cluster_ip", "ipsec_local_termination",
                                        "mode", "failover"],
         "properties": {"name": S_STR, "status": {"type": "string", "enum": ["enabled", "disabled"]},
                        "service_edges": {"type": "array", "items": S_STR}, "cluster_ip": S_STR,
                        "ipsec_local_termination": S_BOOL,
                        "mode": {"type": "string", "enum": ["cluster", "standalone"]},
                        "failover": {"type": "string", "enum": ["carp", "bgp"]}}}


def _changed(result: dict | None) -> dict:
    return {"type": "object", "required": ["result", "revision", "changed", "warnings"],
            "properties": {"result": result or {"nullable": True}, "revision": S_INT, "changed": S_BOOL,
                           "warnings": {"type": "array", "items": S_STR}}}


S_SESSION = {"type": "object", "required": ["user", "role", "csrf"],
             "properties": {"user": S_STR, "role": {"type": "string", "enum": list(auth.ROLES)},
                            "csrf": {"type": "string", "nullable": True}}}
S_STATUS = {"type": "object", "required": ["dataplane_up", "clusters"], "properties": {
    "dataplane_up": S_BOOL, "dataplane": S_OBJ, "daemon": S_OBJ,
    "clusters": {"type": "array", "items": {"type": "object", "required": ["name", "cluster_ip", "carp", "edges"],
                                            "properties": {"name": S_STR, "cluster_ip": S_STR, "carp": S_OBJ,
                                                           "edges": {"type": "array", "items": S_OBJ}}}}}}
S_HISTORY = {"type": "array", "items": {"type": "object", "required": ["id", "time", "revision", "op", "args", "via",
                                                                       "user"],
                                        "properties": {"id": S_INT, "time": {"type": "number"}, "revision": S_INT,
                                                       "op": S_STR, "args": S_OBJ, "via": S_STR, "user": S_STR}}}
C = API + "/clusters/{name}"
E = C + "/edges/{edge}"
ROUTES: list[Route] = [
    Route("GET", API + "/session", get_session, "who is signed in, and the CSRF token for changes",
          response=S_SESSION, tags=("session",)),
    Route("POST", API + "/session", sign_in, "sign in with a user name and password (sets the session cookie)",
          public=True, body={"type": "object", "required": ["user", "password"],
                             "properties": {"user": S_STR, "password": S_STR}}, response=S_SESSION,
          tags=("session",)),
    Route("DELETE", API + "/session", sign_out, "sign out", response={"type": "object"}, tags=("session",)),
    Route("GET", API + "/clusters", list_clusters, "the clusters, with the keys of `pydpctl cluster list --json`",
          op="list_clusters", query=(("sort", "string", "name, status, service-edges, cluster-ip, "
                                      "ipsec-local-termination or mode"),
                                     ("desc", "boolean", "descending order"),
                                     ("search", "string", "name, cluster IP, edge name or IP contains this")),
          response={"type": "array", "items": S_ROW}, tags=("clusters",)),
    Route("POST", API + "/clusters", add_cluster, "add a cluster", op="add_cluster", write=True, body=S_NEW_CLUSTER,
          response=_changed(S_CLUSTER), status=201, tags=("clusters",)),
    Route("GET", C, get_cluster, "one cluster with its settings and edges (no CARP passphrase)", op="get_cluster",
          response=S_CLUSTER, tags=("clusters",)),
    Route("PATCH", C, edit_cluster, "change settings of a cluster (carp and health are merged; edge replaces the "
                                    "edges)", op="edit_cluster", write=True, body=S_OBJ,
          response=_changed(S_CLUSTER), tags=("clusters",)),
    Route("DELETE", C, delete_cluster, "delete a cluster and its edges", op="delete_cluster", write=True,
          response=_changed(None), tags=("clusters",)),
    Route("POST", C + "/duplicate", duplicate_cluster, "copy a cluster under a new name and cluster IP",
          op="duplicate_cluster", write=True,
          body={"type": "object", "required": ["new_name", "cluster_ip"],
                "properties": {"new_name": S_STR, "cluster_ip": S_STR, "vhid": S_INT}},
          response=_changed(S_CLUSTER), status=201, tags=("clusters",)),
    Route("POST", C + "/enable", enable_cluster, "enable a cluster", op="set_cluster_enabled", write=True,
          response=_changed(S_CLUSTER), tags=("clusters",)),
    Route("POST", C + "/disable", disable_cluster, "disable a cluster (its traffic is dropped)",
          op="set_cluster_enabled", write=True, response=_changed(S_CLUSTER), tags=("clusters",)),
    Route("POST", C + "/edges", add_edge, "add a service edge", op="add_edge", write=True, body=S_EDGE,
          response=_changed(S_CLUSTER), status=201, tags=("edges",)),
    Route("PATCH", E, edit_edge, "change settings of an edge (name, ip, mac, weight, state)", op="edit_edge",
          write=True, body=S_OBJ, response=_changed(S_CLUSTER), tags=("edges",)),
    Route("DELETE", E, remove_edge, "remove a service edge", op="remove_edge", write=True,
          response=_changed(S_CLUSTER), tags=("edges",)),
    Route("POST", E + "/drain", drain_edge, "drain an edge: it keeps its flows and gets no new ones",
          op="set_edge_state", write=True, response=_changed(S_CLUSTER), tags=("edges",)),
    Route("POST", E + "/undrain", undrain_edge, "make an edge active again", op="set_edge_state", write=True,
          response=_changed(S_CLUSTER), tags=("edges",)),
    Route("PUT", E + "/weight", set_weight, "set an edge's weight", op="edit_edge", write=True,
          body={"type": "object", "required": ["weight"], "properties": {"weight": S_INT}},
          response=_changed(S_CLUSTER), tags=("edges",)),
    Route("GET", API + "/bgp", get_bgp, "the [bgp] section ({} when there is none; peer passwords left out)",
          op="get_bgp", response=S_OBJ, tags=("bgp",)),
    Route("PATCH", API + "/bgp", set_bgp, "create or change the [bgp] section (keys given replace the stored ones; "
                                          "peer replaces the list of peers)", op="set_bgp", write=True, body=S_OBJ,
          response=_changed(S_OBJ), tags=("bgp",)),
    Route("DELETE", API + "/bgp", remove_bgp, "remove the [bgp] section (no cluster may use failover bgp)",
          op="remove_bgp", write=True, response=_changed(None), tags=("bgp",)),
    Route("GET", API + "/status", status, "the appliance: data plane, CARP state of both appliances per cluster, "
                                          "health and traffic per edge", response=S_STATUS, tags=("appliance",)),
    Route("GET", API + "/stats", stats, "the data plane's counters (503 while no data plane runs)",
          response=S_OBJ, tags=("appliance",)),
    Route("GET", API + "/flows", flows, "flows in the data plane's flow table (503 while no data plane runs)",
          query=(("cluster", "string", "only this cluster"), ("edge", "string", "only this edge"),
                 ("client", "string", "only this client address"), ("limit", "integer", "at most this many")),
          response=S_OBJ, tags=("appliance",)),
    Route("POST", API + "/flush", flush, "flush flows from the flow table (503 while no data plane runs)",
          write=True, body={"type": "object", "properties": {"all": S_BOOL, "cluster": S_STR, "edge": S_STR}},
          response=S_OBJ, tags=("appliance",)),
    Route("GET", API + "/history", history, "the latest changes, newest first (when, what, via, user)",
          op="history", query=(("limit", "integer", "at most this many (1..10000, default 100)"),
                               ("cluster", "string", "only changes naming this cluster")),
          response=S_HISTORY, tags=("history",)),
    Route("GET", API + "/ops", op_table, "the table of operations the RPC and this API share", public=False,
          response={"type": "array", "items": S_OBJ}, tags=("meta",)),
    Route("GET", API + "/openapi.json", openapi_json, "this document", public=True, response=S_OBJ,
          tags=("meta",)),
]


# ---- middleware ----

def _identify(request: web.Request) -> Identity | None:
    st: State = request.app[STATE]
    authz = request.headers.get("Authorization", "")
    if authz.lower().startswith("bearer "):
        entry = st.users.token(authz[7:].strip())
        return Identity(entry.name, entry.role, None) if entry else None
    s = st.sessions.get(request.cookies.get(COOKIE))
    if s is None:
        return None
    entry = st.users.user(s.user)          # removed from the users file since: signed out; role changed: follows
    if entry is None:
        st.sessions.drop(s.id)
        return None
    s.role = entry.role
    return Identity(s.user, s.role, s)


@web.middleware
async def middleware(request: web.Request, handler) -> web.StreamResponse:
    try:
        resource = request.match_info.route.resource
        method = "GET" if request.method == "HEAD" else request.method        # HEAD: a GET without its body
        route = request.app[ROUTE_TABLE].get((method, resource.canonical)) if resource is not None else None
        if route is not None:
            ident = _identify(request)
            if ident is None and not route.public:
                raise HttpError("unauthorized", "sign in first (POST /api/v1/session, or Authorization: Bearer "
                                                "TOKEN)", "")
            request[IDENTITY] = ident or Identity("", "", None)
            if request.method not in ("GET", "HEAD") and ident is not None and ident.session is not None:
                origin = request.headers.get("Origin")
                if origin is not None and origin.split("://", 1)[-1] != request.host:
                    raise HttpError("forbidden", f"Origin: {origin[:80]} is not this server: refused", "Origin")
                if request.headers.get("X-CSRF-Token") != ident.session.csrf:
                    raise HttpError("forbidden", "X-CSRF-Token: missing or wrong (reload the page)", "X-CSRF-Token")
            if route.write and (ident is None or ident.role != "admin"):
                raise HttpError("forbidden", f"user {ident.user if ident else ''!r} has the read-only role: it may "
                                             "not change anything", "")
        resp = await handler(request)
    except HttpError as e:
        resp = _error(e.kind, e.message, e.field, headers=e.headers)
    except ops.OpError as e:
        resp = web.json_response(e.to_json(), status=ops.HTTP_STATUS[e.kind])
    except web.HTTPException as e:
        if not request.path.startswith(API):
            raise
        kind = {404: "not_found", 405: "bad_request", 413: "bad_request"}.get(e.status, "bad_request")
        resp = _error(kind, f"{request.method} {request.path}: {e.reason}")
        resp.set_status(e.status)
    except Exception as e:  # a bug: logged, and the client gets JSON
        log.exception("HTTP %s %s failed", request.method, request.path)
        resp = _error("internal", f"{type(e).__name__}: {e}"[:300])
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "no-referrer")
    resp.headers.setdefault("X-Frame-Options", "DENY")
    resp.headers.setdefault("Content-Security-Policy",
                            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")
    if request.path.startswith(API):
        resp.headers.setdefault("Cache-Control", "no-store")
    return resp


def make_app(backend, *, users_file: str | None = auth.DEFAULT_USERS_FILE, tls: bool = False) -> web.Application:
    """The aiohttp application: the page at /, the API under /api/v1/. backend: control.http.backend's
    interface. tls: the cookie gets the Secure flag."""
    app = web.Application(middlewares=[middleware], client_max_size=MAX_BODY)
    app[BACKEND] = backend
    app[STATE] = State(users_file, tls)
    by: dict = {}
    for r in ROUTES:
        if r.method == "GET":
            app.router.add_get(r.path, r.handler)            # and HEAD (curl -I for the ETag)
        else:
            app.router.add_route(r.method, r.path, r.handler)
        by[(r.method, r.path)] = r
    app[ROUTE_TABLE] = by
    app.router.add_get("/", page)
    app.router.add_get("/static/{file}", static)
    return app
