#!/usr/bin/env -S python3 -P
"""Atheris harness of the RPC frame decoder (control/rpc.py) as the server runs it on one frame's payload:
decode (msgpack, no extension types), validate_request against the daemon's method names, and the error reply
that goes back. Whatever the bytes, the outcome is a valid request or an RpcError with a known type, and the
reply (whatever id and message it carries) encodes into one frame. Anything else is a bug.

    scripts/fuzz.sh rpc
    python -P tests/fuzz/fuzz_rpc.py -runs=1 tests/fuzz/corpus/rpc/*
"""

import sys

import atheris

with atheris.instrument_imports():
    from control import rpc

METHODS = {"status", "store", "flows", "metrics", "reload"}


def one(payload: bytes) -> None:
    req_id = None
    try:
        msg = rpc.decode(payload)
        if isinstance(msg, dict) and rpc._valid_id(msg.get("id")):
            req_id = msg["id"]
        req_id, method, params = rpc.validate_request(msg, METHODS)
    except rpc.RpcError as exc:
        if exc.type not in rpc.ERROR_TYPES:
            raise AssertionError(f"unknown error type {exc.type!r}") from None
        reply = rpc.frame(rpc.make_error(req_id, exc.type, exc.message))
    else:
        if method not in METHODS or not isinstance(params, dict) or not rpc.plain(params):
            raise AssertionError(f"accepted {method!r} {params!r}")
        reply = rpc.frame(rpc.make_reply(req_id, {"echo": params}))
    back = rpc.decode(reply[4:])
    if back.get("id") != req_id:
        raise AssertionError(f"the reply carries id {back.get('id')!r}, not {req_id!r}")


def main() -> None:
    atheris.Setup(sys.argv, lambda data: one(bytes(data)))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
