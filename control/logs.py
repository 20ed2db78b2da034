"""Structured logs of pydp-control: one line per event, JSON (default) or key=value text.

``event("name", level, **fields)`` writes an event with its fields; the event names are the ones listed in
docs/operations.md.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
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


def setup_logging(fmt: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
