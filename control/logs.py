"""Structured logs of the pydp programs (pydp-control, pydp-dataplane, pydp-carp): one line per event.

Every line has the same fields: ``ts`` (UTC, ms), ``level``, ``event`` and the event's own fields; a line that is
not an event (a library's message) is the event ``log`` with ``logger`` and ``message``. The format is JSON under
systemd (``JOURNAL_STREAM`` or ``INVOCATION_ID`` set) or when stderr is not a terminal, ``ts level event key=value``
text on a terminal; ``--log-format json|text`` chooses. ``event("name", level, **fields)`` writes an event; the
event names are the ones listed in docs/operations.md.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import sys
from typing import Any

log = logging.getLogger("pydp.control")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ms), level, event, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
        }
        fields = getattr(record, "fields", None)
        if fields is not None:
            out["event"] = record.msg
            out.update(fields)
        else:
            out["event"] = "log"
            out["logger"] = record.name
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """ts level event key=value ..."""

    def format(self, record: logging.LogRecord) -> str:
        ts = _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(timespec="milliseconds")
        ts = ts.replace("+00:00", "Z")
        fields = getattr(record, "fields", None)
        if fields is not None:
            parts = [ts, record.levelname.lower(), record.msg]
            for k, v in fields.items():
                v = v if isinstance(v, str) and v and " " not in v and "=" not in v else json.dumps(v, default=str)
                parts.append(f"{k}={v}")
            text = " ".join(parts)
        else:
            text = f"{ts} {record.levelname.lower()} {record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def event(name: str, level: int = logging.INFO, /, **fields) -> None:
    """A structured log line: the event name and its fields."""
    log.log(level, name, extra={"fields": fields})


def default_format(stream=None, env=os.environ) -> str:
    """json under systemd (its journal or any unit) or into a pipe or file; text on a terminal."""
    stream = sys.stderr if stream is None else stream
    if env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"):
        return "json"
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def add_log_options(ap, level: str = "info") -> None:
    """--log-format and --log-level, the same on every program."""
    ap.add_argument("--log-format", choices=("auto", "json", "text"), default="auto",
                    help="json: one object per line; text: ts level event key=value; auto (default): json under "
                         "systemd or into a pipe, text on a terminal")
    ap.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=level)


def setup_logging(fmt: str = "auto", level: int = logging.INFO, program: str | None = None) -> None:
    """Logs of this process to stderr in the chosen format (auto: default_format()). program: for the record."""
    if fmt == "auto":
        fmt = default_format()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
