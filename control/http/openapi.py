"""The OpenAPI 3.0 document of the HTTP API, built from the route table the server serves (control.http.api.ROUTES)
and the operations table (control.ops), so it cannot list a route the server lacks; a test checks the reverse and
the response bodies against the schemas."""

from __future__ import annotations

import re

from control import ops
from control.http import api


def _path_params(path: str) -> list[dict]:
    return [{"name": n, "in": "path", "required": True, "schema": {"type": "string"},
             "description": {"name": "the cluster's name", "edge": "the edge's name"}.get(n, n)}
            for n in re.findall(r"\{(\w+)\}", path)]


def _errors(route: api.Route) -> dict:
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    out = {"400": {"description": "bad request: a parameter is missing, unknown or of the wrong type", **ref}}
    if not route.public:
        out["401"] = {"description": "not signed in", **ref}
    if route.write:
        out.update({
            "403": {"description": "the read-only role, or a missing/wrong X-CSRF-Token", **ref},
            "409": {"description": "If-Match is not the store's revision any more: nothing changed", **ref},
            "422": {"description": "the store refused the change (field names the setting): nothing changed",
                    **ref},
            "428": {"description": "no If-Match header", **ref},
        })
    if "{name}" in route.path:
        out["404"] = {"description": "no cluster (or edge) of that name", **ref}
    if route.path.endswith(("/stats", "/flows", "/flush")):
        out["503"] = {"description": "no data plane is running", **ref}
    if route.handler is api.sign_in:
        out["429"] = {"description": "too many failed sign-ins: wait Retry-After seconds", **ref}
        out["503"] = {"description": "no usable users file: nobody can sign in", **ref}
    return out


def document() -> dict:
    paths: dict = {}
    for r in api.ROUTES:
        op: dict = {"summary": r.summary, "operationId": f"{r.method.lower()}_{_op_id(r.path)}",
                    "tags": list(r.tags)}
        params = _path_params(r.path)
        params += [{"name": n, "in": "query", "required": False, "schema": {"type": t}, "description": d}
                   for n, t, d in r.query]
        if r.write:
            params.append({"name": "If-Match", "in": "header", "required": r.op is not None,
                           "schema": {"type": "string"},
                           "description": "the revision the change was made against (the ETag of a read)"})
            params.append({"name": "X-CSRF-Token", "in": "header", "required": False, "schema": {"type": "string"},
                           "description": "required with the session cookie: the csrf of GET /api/v1/session"})
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {"required": r.method != "POST" or r.body.get("required") is not None,
                                 "content": {"application/json": {"schema": r.body}}}
        resp: dict = {"description": "OK" if r.status == 200 else "Created",
                      "content": {"application/json": {"schema": r.response or {"type": "object"}}}}
        if r.method == "GET" and r.op in ("list_clusters", "get_cluster"):
            resp["headers"] = {"ETag": {"schema": {"type": "string"}, "description": "the store's revision"}}
        op["responses"] = {str(r.status): resp, **_errors(r)}
        if r.op:
            o = ops.OPS[r.op]
            op["x-pydp-op"] = {"name": o.name, "kind": o.kind, "version": o.version}
        if r.public:
            op["security"] = []
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "pydp admin API", "version": str(ops.API_VERSION),
                 "description": "Clusters and service edges of a pydp load balancer. Every change carries "
                                "If-Match (the ETag of a read) and is recorded in the history. docs/web.md."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": {"Error": api.S_ERROR},
            "securitySchemes": {"session": {"type": "apiKey", "in": "cookie", "name": api.COOKIE},
                                "token": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"session": []}, {"token": []}],
    }


def _op_id(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", path[len(api.API):].replace("{", "by_").lower()).strip("_") or "root"
