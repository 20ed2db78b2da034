"""The HTTP API (/api/v1/) without a browser: every route and its errors, against a real Store through control.ops
(tests/webapp.py). No root needed."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import requests

from control import ops
from control.http import api, openapi, parse_listen
from webapp import PASSWORDS, WebApp, add_sample

PYDPCTL = [sys.executable, "-P", "-m", "control.cli"]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def app(tmp_path):
    with WebApp(tmp_path) as a:
        add_sample(a.store)
        yield a


def _err(r, status, kind=None, field=None):
    assert r.status_code == status, (r.status_code, r.text)
    e = r.json()["error"]
    assert set(e) == {"kind", "message", "field", "errors"}
    if kind:
        assert e["kind"] == kind
    if field is not None:
        assert e["field"] == field, e
    return e


def _path(route_path: str) -> str:
    return route_path.replace("{name}", "web").replace("{edge}", "e1")


def _etag(r) -> str:
    return r.headers["ETag"]


# ---- who gets in ----

def test_every_route_needs_sign_in(app):
    before = app.revision()
    for r in api.ROUTES:
        if r.public:
            continue
        resp = requests.request(r.method, app.url.rstrip("/") + _path(r.path), json={}, timeout=10,
                                headers={"If-Match": '"%d"' % before})
        _err(resp, 401, "unauthorized")
    assert app.revision() == before


def test_sign_in_sets_a_strict_httponly_cookie_and_sign_out_ends_it(app):
    s = requests.Session()
    r = s.post(app.api("session"), json={"user": "admin", "password": PASSWORDS["admin"]}, timeout=10)
    assert r.status_code == 200 and r.json()["role"] == "admin" and r.json()["csrf"]
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    assert s.get(app.api("session"), timeout=10).json()["user"] == "admin"
    s.headers["X-CSRF-Token"] = r.json()["csrf"]
    assert s.delete(app.api("session"), timeout=10).status_code == 200
    _err(s.get(app.api("clusters"), timeout=10), 401)


def test_a_user_removed_or_made_read_only_is_followed_by_its_session(app):
    from control.http import auth
    s = app.signed_in("admin")
    rev = app.revision()
    auth.set_entry(app.users_file, "admin", "read-only", auth.hash_password(PASSWORDS["admin"], n=1 << 10))
    _err(s.post(app.api("clusters/web/disable"), headers={"If-Match": f'"{rev}"'}, timeout=10), 403, "forbidden")
    assert s.get(app.api("session"), timeout=10).json()["role"] == "read-only"
    auth.remove_entry(app.users_file, "admin")
    _err(s.get(app.api("clusters"), timeout=10), 401, "unauthorized")
    assert app.revision() == rev


def test_wrong_password_then_the_brake(app):
    s = requests.Session()
    for _ in range(3):                                 # three failures are free ...
        _err(s.post(app.api("session"), json={"user": "admin", "password": "nope"}, timeout=10), 401,
             "unauthorized", "password")
    r = s.post(app.api("session"), json={"user": "admin", "password": PASSWORDS["admin"]}, timeout=10)
    e = _err(r, 429, "too_many", "password")           # ... then even the right password must wait
    assert int(r.headers["Retry-After"]) >= 1 and "try again" in e["message"]
    assert "Set-Cookie" not in r.headers


def test_sign_in_bad_requests(app):
    _err(requests.post(app.api("session"), json={"user": "admin"}, timeout=10), 400, "bad_request", "password")
    _err(requests.post(app.api("session"), data="{", headers={"Content-Type": "application/json"}, timeout=10),
         400, "bad_request", "body")
    _err(requests.post(app.api("session"), json={"user": "a", "password": "b", "x": 1}, timeout=10), 400, None, "x")
    _err(requests.post(app.api("session"), json={"user": "nobody", "password": "x"}, timeout=10), 401)


def test_a_users_file_readable_by_others_is_refused(tmp_path):
    with WebApp(tmp_path, users_mode=0o644) as a:
        e = _err(requests.post(a.api("session"), json={"user": "admin", "password": PASSWORDS["admin"]},
                               timeout=10), 503, "unavailable")
        assert "mode 0644" in e["message"] and "chmod 600" in e["message"]
        _err(requests.get(a.api("clusters"), headers={"Authorization": "Bearer " + a.admin_token}, timeout=10), 401)


def test_csrf_and_origin_are_checked_on_every_change(app):
    s = app.signed_in("admin")
    rev = app.revision()
    del s.headers["X-CSRF-Token"]
    _err(s.post(app.api("clusters/web/disable"), headers={"If-Match": f'"{rev}"'}, timeout=10), 403, "forbidden",
         "X-CSRF-Token")
    _err(s.post(app.api("clusters/web/disable"), headers={"If-Match": f'"{rev}"', "X-CSRF-Token": "wrong"},
              timeout=10), 403, "forbidden", "X-CSRF-Token")
    _err(s.post(app.api("clusters/web/disable"), headers={"If-Match": f'"{rev}"', "X-CSRF-Token": s.csrf,
                                                          "Origin": "http://evil.example"}, timeout=10),
         403, "forbidden", "Origin")
    assert app.revision() == rev and app.store.get_cluster("web")["enabled"]
    r = s.post(app.api("clusters/web/disable"), headers={"If-Match": f'"{rev}"', "X-CSRF-Token": s.csrf},
               timeout=10)
    assert r.status_code == 200 and not app.store.get_cluster("web")["enabled"]


def test_read_only_user_and_token_are_refused_changes(app):
    rev = app.revision()
    v = app.signed_in("viewer")
    assert v.get(app.api("clusters"), timeout=10).status_code == 200
    for r in api.ROUTES:
        if r.write:
            e = _err(v.request(r.method, app.url.rstrip("/") + _path(r.path), json={},
                               headers={"If-Match": f'"{rev}"'}, timeout=10), 403, "forbidden")
            assert "read-only" in e["message"]
    t = {"Authorization": "Bearer " + app.viewer_token, "If-Match": f'"{rev}"'}
    assert requests.get(app.api("status"), headers=t, timeout=10).status_code == 200
    _err(requests.delete(app.api("clusters/web"), headers=t, timeout=10), 403, "forbidden")
    assert app.revision() == rev


def test_admin_token_changes_without_csrf(app):
    rev = app.revision()
    r = requests.post(app.api("clusters/web/edges/e1/drain"), timeout=10,
                      headers={"Authorization": "Bearer " + app.admin_token, "If-Match": f'"{rev}"'})
    assert r.status_code == 200, r.text
    assert app.store.history(limit=1)[0] | {"time": 0, "id": 0} == {
        "id": 0, "time": 0, "revision": rev + 1, "op": "set_edge_state", "via": "http", "user": "robot",
        "args": {"cluster": "web", "edge": "e1", "state": "draining"}}
    _err(requests.get(app.api("clusters"), headers={"Authorization": "Bearer nope"}, timeout=10), 401)


def test_tls_and_secure_cookie(tmp_path):
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    with WebApp(tmp_path, tls=(cert, key)) as a:
        assert a.url.startswith("https://127.0.0.1:")
        r = requests.post(a.api("session"), json={"user": "admin", "password": PASSWORDS["admin"]}, timeout=10,
                          verify=cert)
        assert r.status_code == 200 and "Secure" in r.headers["Set-Cookie"]
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(a.url.replace("https:", "http:"), timeout=5)


def test_parse_listen():
    assert parse_listen("127.0.0.1:8470") == ("127.0.0.1", 8470)
    assert parse_listen("[::1]:8443") == ("::1", 8443)
    assert parse_listen("") is None and parse_listen(None) is None
    for bad in ("8470", "127.0.0.1:0", "127.0.0.1:x", "host.example:80", "[::1]8470"):
        with pytest.raises(ValueError):
            parse_listen(bad)


# ---- clusters ----

def test_list_sorts_searches_and_matches_pydpctl(app):
    s = app.signed_in()
    clusters = app.store.list_clusters()
    for column in ops.SORT_COLUMNS:
        for desc in (False, True):
            r = s.get(app.api("clusters"), params={"sort": column, "desc": str(desc).lower()}, timeout=10)
            assert r.status_code == 200 and _etag(r) == f'"{app.revision()}"'
            assert r.json() == ops.cluster_list(clusters, column, desc)
    # the same rows and keys as `pydpctl cluster list --json`
    out = subprocess.run([*PYDPCTL, "--db", app.store.path, "cluster", "list", "--json", "--sort", "cluster-ip"],
                         capture_output=True, text=True, timeout=30, check=True)
    import json
    assert s.get(app.api("clusters"), params={"sort": "cluster-ip"}, timeout=10).json() == json.loads(out.stdout)
    assert [c["name"] for c in s.get(app.api("clusters"), params={"search": "203.0.113.2"}, timeout=10).json()] \
        == ["vpn"]
    assert s.get(app.api("clusters"), params={"search": "zzz"}, timeout=10).json() == []
    _err(s.get(app.api("clusters"), params={"sort": "colour"}, timeout=10), 400, "bad_request", "sort")
    _err(s.get(app.api("clusters"), params={"desc": "maybe"}, timeout=10), 400, "bad_request", "desc")


def test_head_gives_the_etag_and_needs_sign_in_too(app):
    r = requests.head(app.api("clusters"), timeout=10)
    assert r.status_code == 401
    r = requests.head(app.api("clusters"), headers={"Authorization": "Bearer " + app.viewer_token}, timeout=10)
    assert r.status_code == 200 and r.headers["ETag"] == f'"{app.revision()}"' and not r.content


def test_get_cluster_never_shows_a_passphrase(app):
    s = app.signed_in()
    r = s.get(app.api("clusters/vpn"), timeout=10)
    assert r.status_code == 200 and _etag(r) == f'"{app.revision()}"'
    assert r.json()["carp"]["passphrase_set"] is True and "passphrase" not in r.json()["carp"]
    assert "carp-secret" not in r.text
    _err(s.get(app.api("clusters/nope"), timeout=10), 404, "not_found")
    for path in ("clusters", "status", "history?limit=1000", "clusters/vpn"):
        assert "carp-secret" not in s.get(app.api(path), timeout=10).text


def test_add_bad_cluster_ip_names_the_field_and_changes_nothing(app):
    s = app.signed_in()
    rev = app.revision()
    before = app.store.list_clusters()
    r = s.post(app.api("clusters"), headers={"If-Match": f'"{rev}"'}, timeout=10,
               json={"name": "new", "cluster_ip": "198.51.100.300",
                     "edge": [{"name": "n1", "ip": "198.51.100.41"}, {"name": "n2", "ip": "198.51.100.x"}]})
    e = _err(r, 422, "invalid", "cluster_ip")
    assert {"field": "cluster_ip", "message": "cluster 'new' cluster_ip: '198.51.100.300' is not an IP address"} \
        in e["errors"]
    assert {"field": "edge.ip", "message": "cluster 'new' edge 'n2' ip: '198.51.100.x' is not an IP address"} \
        in e["errors"]
    # the same message pydpctl prints
    cli = subprocess.run([*PYDPCTL, "--db", app.store.path, "cluster", "add", "new", "--cluster-ip",
                          "198.51.100.300", "--edge", "n1=198.51.100.41", "--edge", "n2=198.51.100.x"],
                         capture_output=True, text=True, timeout=30)
    assert cli.returncode == 1 and e["message"] in cli.stderr
    assert app.revision() == rev and app.store.list_clusters() == before
    _err(s.post(app.api("clusters"), headers={"If-Match": f'"{rev}"'}, json=["x"], timeout=10), 400,
         "bad_request", "cluster")


def test_add_edit_duplicate_enable_disable_delete(app):
    s = app.signed_in()
    rev = app.revision()
    r = s.post(app.api("clusters"), headers={"If-Match": f'"{rev}"'}, timeout=10,
               json={"name": "new", "cluster_ip": "198.51.100.40", "carp": {"passphrase": "pw-new"},
                     "edge": [{"name": "n1", "ip": "198.51.100.41"}, {"name": "n2", "ip": "198.51.100.42"}]})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["revision"] == rev + 1 and body["changed"] and _etag(r) == f'"{rev + 1}"'
    assert body["result"]["name"] == "new" and "passphrase" not in body["result"]["carp"]
    r = s.patch(app.api("clusters/new"), headers={"If-Match": _etag(r)}, timeout=10,
                json={"name": "newer", "ipsec_local_termination": True, "carp": {"vhid": 77}})
    assert r.status_code == 200 and r.json()["result"]["carp"]["vhid"] == 77
    _err(s.patch(app.api("clusters/newer"), headers={"If-Match": _etag(r)}, json={"carp": {"vhid": 300}},
                 timeout=10), 422, "invalid", "carp.vhid")
    r = s.post(app.api("clusters/newer/duplicate"), headers={"If-Match": _etag(r)}, timeout=10,
               json={"new_name": "copy", "cluster_ip": "198.51.100.50"})
    assert r.status_code == 201 and r.json()["result"]["edge"] == app.store.get_cluster("newer")["edge"]
    _err(s.post(app.api("clusters/newer/duplicate"), headers={"If-Match": _etag(r)}, timeout=10,
                json={"new_name": "copy2", "cluster_ip": "198.51.100.50"}), 422, "invalid", "cluster_ip")
    _err(s.post(app.api("clusters/newer/duplicate"), headers={"If-Match": _etag(r)}, timeout=10,
                json={"new_name": "copy2"}), 400, "bad_request", "cluster_ip")
    _err(s.post(app.api("clusters/newer/duplicate"), headers={"If-Match": _etag(r)}, timeout=10,
                json={"new_name": "copy2", "cluster_ip": "198.51.100.51", "colour": 1}), 400, "bad_request",
         "colour")
    r = s.post(app.api("clusters/copy/disable"), headers={"If-Match": _etag(r)}, timeout=10)
    assert r.status_code == 200 and r.json()["result"]["enabled"] is False
    r = s.post(app.api("clusters/copy/enable"), headers={"If-Match": _etag(r)}, timeout=10)
    assert r.json()["result"]["enabled"] is True
    r = s.delete(app.api("clusters/copy"), headers={"If-Match": _etag(r)}, timeout=10)
    assert r.status_code == 200 and r.json()["result"] is None
    _err(s.delete(app.api("clusters/copy"), headers={"If-Match": _etag(r)}, timeout=10), 404, "not_found")
    assert [c["name"] for c in app.store.list_clusters()] == ["web", "Api", "vpn", "lab", "newer"]


def test_revision_rules(app):
    s = app.signed_in()
    rev = app.revision()
    _err(s.post(app.api("clusters/web/disable"), timeout=10), 428, "precondition_required", "If-Match")
    _err(s.post(app.api("clusters/web/disable"), headers={"If-Match": "yesterday"}, timeout=10), 400,
         "bad_request", "If-Match")
    e = _err(s.post(app.api("clusters/web/disable"), headers={"If-Match": f'"{rev - 1}"'}, timeout=10), 409,
             "conflict", "revision")
    assert f"since revision {rev - 1}" in e["message"] and "nothing was changed" in e["message"]
    assert app.revision() == rev and app.store.get_cluster("web")["enabled"]
    assert s.post(app.api("clusters/web/disable"), headers={"If-Match": "*"}, timeout=10).status_code == 200
    assert s.post(app.api("clusters/web/enable"), headers={"If-Match": f'W/"{rev + 1}"'}, timeout=10).status_code == 200


# ---- edges ----

def test_edges(app):
    s = app.signed_in()
    h = lambda: {"If-Match": f'"{app.revision()}"'}     # noqa: E731
    r = s.post(app.api("clusters/web/edges"), headers=h(), json={"name": "e3", "ip": "198.51.100.23", "weight": 2},
               timeout=10)
    assert r.status_code == 201 and [e["name"] for e in r.json()["result"]["edge"]] == ["e1", "e2", "e3"]
    _err(s.post(app.api("clusters/web/edges"), headers=h(), json={"name": "e4", "ip": "nope"}, timeout=10), 422,
         "invalid", "edge.ip")
    _err(s.post(app.api("clusters/web/edges"), headers=h(), json={"name": "e3", "ip": "198.51.100.24"},
                timeout=10), 422, "invalid", "edge.name")
    _err(s.post(app.api("clusters/nope/edges"), headers=h(), json={"name": "x", "ip": "198.51.100.24"},
                timeout=10), 404)
    r = s.post(app.api("clusters/web/edges/e3/drain"), headers=h(), timeout=10)
    assert {e["name"]: e["state"] for e in r.json()["result"]["edge"]}["e3"] == "draining"
    r = s.post(app.api("clusters/web/edges/e3/undrain"), headers=h(), timeout=10)
    assert {e["name"]: e["state"] for e in r.json()["result"]["edge"]}["e3"] == "active"
    r = s.put(app.api("clusters/web/edges/e3/weight"), headers=h(), json={"weight": 7}, timeout=10)
    assert {e["name"]: e["weight"] for e in r.json()["result"]["edge"]}["e3"] == 7
    _err(s.put(app.api("clusters/web/edges/e3/weight"), headers=h(), json={"weight": 0}, timeout=10), 422,
         "invalid", "edge.weight")
    _err(s.put(app.api("clusters/web/edges/e3/weight"), headers=h(), json={}, timeout=10), 400, "bad_request",
         "weight")
    r = s.patch(app.api("clusters/web/edges/e3"), headers=h(), json={"mac": "02:00:00:00:00:23"}, timeout=10)
    assert r.status_code == 200
    _err(s.post(app.api("clusters/web/edges/nope/drain"), headers=h(), timeout=10), 404, "not_found")
    r = s.delete(app.api("clusters/web/edges/e3"), headers=h(), timeout=10)
    assert [e["name"] for e in r.json()["result"]["edge"]] == ["e1", "e2"]
    e = _err(s.delete(app.api("clusters/web/edges/e2"), headers=h(), timeout=10), 422, "invalid", "edge")
    assert "needs 2 to 16 edges" in e["message"]


# ---- the appliance ----

def test_status_stats_flows_flush_without_a_data_plane(app):
    s = app.signed_in()
    st = s.get(app.api("status"), timeout=10).json()
    assert st["dataplane_up"] is False
    assert [c["name"] for c in st["clusters"]] == ["web", "Api", "vpn", "lab"]
    assert st["clusters"][0]["edges"][0] | {"packets": 0} == st["clusters"][0]["edges"][0]
    for method, path in (("GET", "stats"), ("GET", "flows?cluster=web"), ("POST", "flush")):
        _err(s.request(method, app.api(path), json={"all": True}, timeout=10), 503, "unavailable")
    _err(s.get(app.api("flows?limit=-1"), timeout=10), 400, "bad_request", "limit")
    _err(s.get(app.api("flows?colour=1"), timeout=10), 400, "bad_request", "colour")
    _err(s.post(app.api("flush"), json={"all": "yes"}, timeout=10), 400, "bad_request", "all")


def test_history_records_every_interface(app):
    s = app.signed_in()
    s.post(app.api("clusters/web/edges/e1/drain"), headers={"If-Match": f'"{app.revision()}"'}, timeout=10)
    subprocess.run([*PYDPCTL, "--db", app.store.path, "edge", "undrain", "web", "e1"], check=True,
                   capture_output=True, timeout=30)
    h = s.get(app.api("history"), params={"limit": 3}, timeout=10).json()
    assert [(x["op"], x["via"], x["user"]) for x in h] == [
        ("set_edge_state", "cli", os.environ.get("SUDO_USER") or __import__("pwd").getpwuid(os.geteuid()).pw_name),
        ("set_edge_state", "http", "admin"),
        ("add_cluster", "store", h[2]["user"])]
    assert h[0]["revision"] == app.revision() and h[1]["revision"] == app.revision() - 1
    vpn = s.get(app.api("history"), params={"cluster": "vpn"}, timeout=10).json()
    assert len(vpn) == 1 and vpn[0]["args"]["cluster"]["carp"]["passphrase"] == "***"
    _err(s.get(app.api("history"), params={"limit": "0"}, timeout=10), 400, "bad_request", "limit")
    _err(s.get(app.api("history"), params={"limit": "x"}, timeout=10), 400, "bad_request", "limit")
    out = subprocess.run([*PYDPCTL, "--db", app.store.path, "history", "--limit", "2"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    assert re.search(r"\bcli\b.*set_edge_state web/e1 state=\"active\"", out)
    assert re.search(r"\bhttp\s+admin\s+set_edge_state web/e1 state=\"draining\"", out)


def test_bad_bodies(app):
    s = app.signed_in()
    h = {"If-Match": f'"{app.revision()}"'}
    _err(s.post(app.api("clusters"), headers={**h, "Content-Type": "text/plain"}, data="x", timeout=10), 400,
         "bad_request", "body")
    _err(s.patch(app.api("clusters/web"), headers={**h, "Content-Type": "application/json"}, data="[1,", timeout=10),
         400, "bad_request", "body")
    _err(s.patch(app.api("clusters/web"), headers=h, json="x", timeout=10), 400, "bad_request", "changes")
    _err(s.get(app.api("nothing-here"), timeout=10), 404, "not_found")
    _err(s.put(app.api("clusters"), headers=h, json={}, timeout=10), 405)


def test_the_page_and_its_files_are_served_with_a_strict_policy(app):
    r = requests.get(app.url, timeout=10)
    assert r.status_code == 200 and "/static/app.js" in r.text
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    for name, ctype in (("app.js", "text/javascript"), ("app.css", "text/css")):
        r = requests.get(app.url + "static/" + name, timeout=10)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith(ctype) and len(r.content) > 1000
    assert requests.get(app.url + "static/../api.py", timeout=10).status_code == 404
    assert requests.get(app.url + "static/api.py", timeout=10).status_code == 404
    text = requests.get(app.url + "static/app.js", timeout=10).text + requests.get(app.url, timeout=10).text
    assert not re.search(r"https?://", text), "the page loads nothing from elsewhere"


# ---- the OpenAPI document against what the server serves ----

def _check(schema: dict, value, where: str = "$") -> None:
    """A small JSON-schema check (type, enum, required, properties, items, nullable, oneOf, $ref to Error)."""
    if "$ref" in schema:
        schema = api.S_ERROR
    if value is None and schema.get("nullable"):
        return
    if "oneOf" in schema:
        assert any(_ok(s, value) for s in schema["oneOf"]), where
        return
    t = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "number": (int, float), "integer": int}
    if t:
        assert isinstance(value, types[t]) and not (t in ("integer", "number") and isinstance(value, bool)), \
            f"{where}: {value!r} is not {t}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if t == "object":
        for k in schema.get("required", ()):
            assert k in value, f"{where}: {k} missing"
        for k, sub in schema.get("properties", {}).items():
            if k in value:
                _check(sub, value[k], f"{where}.{k}")
    if t == "array":
        for i, v in enumerate(value):
            _check(schema.get("items", {}), v, f"{where}[{i}]")


def _ok(schema, value) -> bool:
    try:
        _check(schema, value)
        return True
    except AssertionError:
        return False


def test_openapi_matches_the_server(app):
    s = app.signed_in()
    doc = s.get(app.api("openapi.json"), timeout=10).json()
    assert doc == openapi.document() and doc["openapi"].startswith("3.")
    documented = {(m.upper(), p) for p, ms in doc["paths"].items() for m in ms}
    served = set()
    for resource in app.server.runner.app.router.resources():
        for route in resource:
            if resource.canonical.startswith("/api/v1/") and route.method != "HEAD":
                served.add((route.method, resource.canonical))
    assert documented == served
    # every documented operation, called: its answer has the documented status and body
    calls = [(p, m) for p, ms in doc["paths"].items() for m in ms]
    calls.sort(key=lambda pm: (pm[1] == "delete", "{edge}" not in pm[0] if pm[1] == "delete" else "{edge}" in pm[0],
                               pm[0], {"get": 0, "post": 1, "put": 2, "patch": 3, "delete": 4}[pm[1]]))
    bodies = {"post /api/v1/clusters": {"name": "oa", "cluster_ip": "198.51.100.60",
                                        "edge": [{"name": "o1", "ip": "198.51.100.61"},
                                                 {"name": "o2", "ip": "198.51.100.62"}]},
              "post /api/v1/clusters/{name}/duplicate": {"new_name": "oa2", "cluster_ip": "198.51.100.63"},
              "post /api/v1/clusters/{name}/edges": {"name": "o3", "ip": "198.51.100.64"},
              "patch /api/v1/clusters/{name}": {"ipsec_local_termination": True},
              "patch /api/v1/clusters/{name}/edges/{edge}": {"weight": 3},
              "put /api/v1/clusters/{name}/edges/{edge}/weight": {"weight": 4},
              "post /api/v1/session": {"user": "admin", "password": PASSWORDS["admin"]},
              "post /api/v1/flush": {"all": True},
              "patch /api/v1/bgp": {"local_as": 64512, "router_id": "198.51.100.11",
                                    "peer": [{"address": "198.51.100.1", "as": 64500}]}}
    seen = 0
    for path, method in calls:
        if path == "/api/v1/session" and method == "delete":
            continue                          # would sign this session out; tested above
        spec = doc["paths"][path][method]
        url = app.url.rstrip("/") + path.replace("{name}", "oa").replace("{edge}", "o3")
        if path == "/api/v1/clusters/{name}" and method == "delete":
            url = url.replace("/oa", "/oa2")
        r = s.request(method.upper(), url, json=bodies.get(f"{method} {path}"), timeout=10,
                      headers={"If-Match": f'"{app.revision()}"'})
        status = str(r.status_code)
        assert status in spec["responses"], (method, path, status, r.text)
        schema = spec["responses"][status]["content"]["application/json"]["schema"]
        _check(schema, r.json(), f"{method} {path} {status}")
        if path == "/api/v1/session" and method == "post":
            s.headers["X-CSRF-Token"] = r.json()["csrf"]             # a new session: its own CSRF token
        if spec.get("x-pydp-op") or path.endswith("/session"):
            assert r.status_code < 300, (method, path, r.text)      # with a data plane only: stats, flows, flush
        seen += 1
    assert seen == len(documented) - 1


def test_the_route_table_uses_the_ops_table():
    for r in api.ROUTES:
        if r.op is not None:
            assert r.op in ops.OPS and ops.OPS[r.op].write == r.write, r.path


def test_settings_command_line_over_config_over_defaults(tmp_path):
    from control.http import settings
    d = settings(config_path=str(tmp_path / "missing.toml"))
    assert (d.listen, d.users, d.tls_cert, d.tls_key, d.explicit) == (("127.0.0.1", 8470), "/etc/pydp/http-users",
                                                                      None, None, False)
    conf = tmp_path / "control.toml"
    conf.write_text('[http]\nlisten = "192.0.2.1:8443"\nusers = "/srv/users"\ntls_cert = "c.pem"\ntls_key = "k.pem"\n')
    c = settings(config_path=str(conf))
    assert (c.listen, c.users, c.tls_cert, c.tls_key, c.explicit) == (("192.0.2.1", 8443), "/srv/users", "c.pem",
                                                                      "k.pem", True)
    o = settings(listen="", users="/u", config_path=str(conf))
    assert o.listen is None and o.users == "/u" and o.tls_cert == "c.pem"
    for text, want in (('[http]\nport = 1\n', "http.port: unknown key"), ('[web]\n', "unknown table or key 'web'"),
                       ('[http]\nlisten = 8470\n', "http.listen: must be a string"),
                       ('[http]\ntls_cert = "c"\n', "TLS needs both"), ("[http\n", "control.toml")):
        conf.write_text(text)
        with pytest.raises(ValueError, match=re.escape(want)):
            settings(config_path=str(conf))


def test_bgp_section_over_http(app):
    """GET/PATCH/DELETE /api/v1/bgp: the [bgp] section through the same operations (no passwords out; a bad
    section refused naming the key, nothing changed)."""
    s = app.signed_in("admin")
    r = s.get(app.api("bgp"), timeout=10)
    assert r.status_code == 200 and r.json() == {}
    rev = app.revision()
    bad = s.patch(app.api("bgp"), json={"local_as": 64512, "router_id": "198.51.100.11"},
                  headers={"If-Match": f'"{rev}"'}, timeout=10)
    _err(bad, 422, "invalid")
    assert "bgp.peer" in bad.json()["error"]["message"] and app.revision() == rev
    r = s.patch(app.api("bgp"), json={"local_as": 64512, "router_id": "198.51.100.11",
                                      "peer": [{"address": "198.51.100.1", "as": 64500, "password": "pw"}]},
                headers={"If-Match": f'"{rev}"'}, timeout=10)
    assert r.status_code == 200 and r.json()["changed"], r.text
    got = s.get(app.api("bgp"), timeout=10).json()
    assert got["local_as"] == 64512 and "password" not in got["peer"][0] and got["peer"][0]["password_set"]
    rev = app.revision()
    r = s.patch(app.api("clusters/web"), json={"failover": "bgp"}, headers={"If-Match": f'"{rev}"'}, timeout=10)
    assert r.status_code == 200 and r.json()["result"]["failover"] == "bgp", r.text
    assert {c["name"]: c["failover"] for c in s.get(app.api("clusters"), timeout=10).json()}["web"] == "bgp"
    rev = app.revision()
    _err(s.delete(app.api("bgp"), headers={"If-Match": f'"{rev}"'}, timeout=10), 422, "invalid")
    assert app.revision() == rev
