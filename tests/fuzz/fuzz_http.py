#!/usr/bin/env -S python3 -P
"""Atheris harness of the HTTP API's inputs (control/http): one request at a time through the real aiohttp
application of control.http.api.make_app (router, the middleware's sign-in, role, Origin and CSRF checks, the
handlers' query, If-Match and JSON body validation, control.ops and a real Store through StoreOnlyBackend). The
request is built in-process with aiohttp's test utilities (make_mocked_request) and handled by the application
itself: no socket, no network.

    scripts/fuzz.sh http
    python -P tests/fuzz/fuzz_http.py -runs=1 tests/fuzz/corpus/http/*

An input is a request as text (UTF-8, invalid bytes replaced):

    METHOD /path?query
    Header: value
    ...
    (empty line)
    body

In the path, the header values and the body these words are replaced, so that the fuzzer reaches past sign-in and
If-Match: @rev (the store's revision now), @sid and @csrf (the admin's session cookie value and CSRF token),
@vsid (the read-only user's session), @token and @vtoken (the admin's and the read-only user's API tokens), @pw
(the admin's password). Content-Length is set to the body's length.

Whatever the request: no 500 ("internal": a handler raised something it should not), every API error is the
documented JSON error with its kind's status, the security headers are on every response, and the store changes
only for a successful change (2xx, a write method) made with the admin's credentials, whose ETag is the new
revision. Every input starts from the same state: the store is restored when a request changed it, the sessions
and the sign-in brake are made anew.
"""

import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # -P leaves the harness's folder out
from fuzzdirs import private_dir  # noqa: E402
from aiohttp import streams, web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

with atheris.instrument_imports():
    from control import ops
    from control.http import api, auth
    from control.http.backend import StoreOnlyBackend
    from control.store import Store

logging.disable(logging.CRITICAL)      # the middleware logs what it refuses; the harness checks the responses



_dir = private_dir("http", "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
DB = os.path.join(_dir, "pydp.db")
TEMPLATE = os.path.join(_dir, "template.db")
USERS = os.path.join(_dir, "http-users")
PASSWORD = "admin-password-1"
SECURITY_HEADERS = ("X-Content-Type-Options", "Referrer-Policy", "X-Frame-Options", "Content-Security-Policy")


def _setup():
    store = Store(TEMPLATE)
    store.add_cluster({"name": "web", "cluster_ip": "198.51.100.10", "carp": {"passphrase": "carp-secret"},
                       "edge": [{"name": "e1", "ip": "198.51.100.21"}, {"name": "e2", "ip": "198.51.100.22"}]})
    store.add_cluster({"name": "lab", "cluster_ip": "2001:db8::50", "mode": "standalone", "enabled": False,
                       "edge": [{"name": "only", "ip": "2001:db8::51"}]})
    store.close()
    auth.set_entry(USERS, "admin", "admin", auth.hash_password(PASSWORD, n=1 << 4))
    auth.set_entry(USERS, "viewer", "read-only", auth.hash_password("viewer-password-1", n=1 << 4))
    token, secret = auth.new_token()
    auth.set_entry(USERS, "robot", "admin", secret)
    vtoken, secret = auth.new_token()
    auth.set_entry(USERS, "monitor", "read-only", secret)
    os.chmod(USERS, 0o600)
    return token, vtoken


TOKEN, VTOKEN = _setup()
shutil.copyfile(TEMPLATE, DB)
BASE_REVISION = Store(DB).revision()
LOOP = asyncio.new_event_loop()
asyncio.set_event_loop(LOOP)
BACKEND = StoreOnlyBackend(Store(DB))
APP = api.make_app(BACKEND, users_file=USERS)
APP.freeze()
ADMIN = auth.Session("s" * 43, "admin", "admin", "c" * 32, 0.0)
VIEWER = auth.Session("v" * 43, "viewer", "read-only", "w" * 32, 0.0)
WORDS = {"@rev": lambda: str(BACKEND.store.revision()), "@csrf": lambda: ADMIN.csrf, "@vsid": lambda: VIEWER.id,
         "@sid": lambda: ADMIN.id, "@vtoken": lambda: VTOKEN, "@token": lambda: TOKEN, "@pw": lambda: PASSWORD}


def _reset() -> None:
    st = APP[api.STATE]
    st.sessions = auth.Sessions()
    for s in (ADMIN, VIEWER):
        s.expires = float("inf")
        st.sessions._by_id[s.id] = s
    st.brake = auth.SignInBrake()
    if BACKEND.store.revision() != BASE_REVISION:
        BACKEND.store.close()
        shutil.copyfile(TEMPLATE, DB)
        BACKEND.store = Store(DB)


def _words(text: str) -> str:
    if "@" in text:
        for w in sorted(WORDS, key=len, reverse=True):
            if w in text:
                text = text.replace(w, WORDS[w]())
    return text


def _parse(data: bytes):
    """(method, target, headers, body) of the input, or None when no HTTP parser would pass it on."""
    text = data.decode("utf-8", "replace")
    head, _, body = text.partition("\n\n")
    lines = head.split("\n")
    parts = lines[0].strip("\r").split(" ")
    if len(parts) != 2 or not parts[0].isalpha() or not parts[0].isupper() or not parts[1].startswith("/"):
        return None
    method, target = parts[0], _words(parts[1])
    if any(ord(ch) < 0x21 or ord(ch) == 0x7f for ch in target):
        return None
    headers = CIMultiDict()
    for line in lines[1:]:
        name, sep, value = line.strip("\r").partition(":")
        if not sep or not name or not all(ch.isalnum() or ch in "-_" for ch in name) or not name.isascii():
            return None
        value = _words(value.strip(" \t"))
        if any(ord(ch) < 0x20 and ch != "\t" or ord(ch) == 0x7f for ch in value):
            return None
        if name.lower() in ("content-length", "transfer-encoding", "expect", "connection", "upgrade"):
            continue                    # framing is the HTTP parser's, not the application's
        headers.add(name, value)
    raw = _words(body).encode()
    if raw:
        headers["Content-Length"] = str(len(raw))
    return method, target, headers, raw


async def _handle(method: str, target: str, headers: CIMultiDict, body: bytes) -> web.StreamResponse:
    proto = type("Proto", (), {"_reading_paused": False, "pause_reading": lambda s, **kw: None,
                               "resume_reading": lambda s, **kw: None})()
    payload = streams.StreamReader(proto, 2 ** 16, loop=LOOP) if body else streams.EMPTY_PAYLOAD
    if body:
        payload.feed_data(body)
        payload.feed_eof()
    req = make_mocked_request(method, target, headers=headers, app=APP, payload=payload, loop=LOOP,
                              client_max_size=api.MAX_BODY)
    return await APP._handle(req)


def _admin(headers: CIMultiDict) -> bool:
    authz = headers.get("Authorization", "")
    if authz.lower().startswith("bearer "):
        return authz[7:].strip() == TOKEN
    return ADMIN.id in headers.get("Cookie", "") and headers.get("X-CSRF-Token") == ADMIN.csrf


def one(data: bytes) -> None:
    _reset()
    parsed = _parse(data)
    if parsed is None:
        return
    method, target, headers, body = parsed
    before = BACKEND.store.revision()
    try:
        resp = LOOP.run_until_complete(_handle(method, target, headers, body))
    except web.HTTPException as e:
        if e.status >= 500 or target.startswith(api.API):
            raise AssertionError(f"{method} {target}: {e.status} raised past the middleware") from None
        return
    except ValueError:
        if make_ok(method, target, headers):
            raise
        return                                  # a target yarl (the URL parser) refuses: aiohttp answers 400
    after = BACKEND.store.revision()
    status = resp.status
    if status >= 500 and status != 503:
        raise AssertionError(f"{method} {target}: {status} {getattr(resp, 'text', '')}")
    for h in SECURITY_HEADERS:
        if h not in resp.headers:
            raise AssertionError(f"{method} {target}: no {h} header")
    path = target.partition("?")[0]
    if path.startswith(api.API) and status >= 400:
        doc = json.loads(resp.body)
        e = doc.get("error") if isinstance(doc, dict) else None
        if not isinstance(e, dict) or set(e) != {"kind", "message", "field", "errors"} or e["kind"] not in ops.KINDS:
            raise AssertionError(f"{method} {target}: {status} error body {resp.body[:200]!r}")
        if e["kind"] != "not_found" and status not in (405, 413) and ops.HTTP_STATUS[e["kind"]] != status:
            raise AssertionError(f"{method} {target}: {status} with kind {e['kind']}")
    if after != before:
        if not 200 <= status < 300 or method in ("GET", "HEAD") or not _admin(headers):
            raise AssertionError(f"{method} {target}: the store changed ({before} -> {after}) with {status} "
                                 f"{resp.body[:200]!r}")
        if resp.headers.get("ETag") != f'"{after}"' and "/session" not in path:
            raise AssertionError(f"{method} {target}: ETag {resp.headers.get('ETag')} after revision {after}")


def make_ok(method: str, target: str, headers: CIMultiDict) -> bool:
    """Whether aiohttp's mocked request takes these (a ValueError from it is the URL parser's refusal)."""
    try:
        make_mocked_request(method, target, headers=headers, app=APP, loop=LOOP)
    except ValueError:
        return False
    return True


def main() -> None:
    atheris.Setup(sys.argv, lambda data: one(bytes(data)))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
