"""One log format for every program (control/logs.py): JSON under systemd or into a pipe, text on a terminal."""

from __future__ import annotations

import io
import json
import logging
import os
import pty

from control import logs


def test_format_under_systemd_is_json():
    master, slave = pty.openpty()
    try:
        with os.fdopen(os.dup(slave), "w") as tty:
            assert tty.isatty()
            assert logs.default_format(tty, env={}) == "text"                       # a terminal
            assert logs.default_format(tty, env={"JOURNAL_STREAM": "8:1234"}) == "json"   # the journal
            assert logs.default_format(tty, env={"INVOCATION_ID": "0f" * 16}) == "json"   # any unit
    finally:
        os.close(master)
        os.close(slave)
    r, w = os.pipe()
    with os.fdopen(w, "w") as pipe:
        assert logs.default_format(pipe, env={}) == "json"
    os.close(r)


def test_same_fields_for_events_and_library_lines():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    old = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        logs.event("dataplane_started", pid=1, ports=["p0"])
        logging.getLogger("pyroute2").warning("a library says %s", "hello")
    finally:
        root.handlers[:], level = old
        root.setLevel(level)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert list(first)[:3] == ["ts", "level", "event"] and first["event"] == "dataplane_started"
    assert first["ports"] == ["p0"] and first["ts"].endswith("Z")
    assert second["event"] == "log" and second["logger"] == "pyroute2" and second["message"] == "a library says hello"
    assert second["level"] == "warning"
