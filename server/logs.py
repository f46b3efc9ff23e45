"""Logging: text on a terminal, JSON lines for a log pipeline, and each request's fields.

Every log line of a worker process (`--workers N`, N > 1) carries its `worker` index, and
every log line written while a request is being served carries that request's id, caller,
method and host (a contextvar set by the RPC loop, read by `RequestFields`), so a log
pipeline can follow one request. The access line (one per RPC, at INFO) adds its status
and duration. The standard `logging` module throughout; a small JSON formatter of ours
rather than one more dependency.
"""

from __future__ import annotations

import contextvars
import datetime
import itertools
import json
import logging
import re
import secrets
import sys
from collections.abc import Sequence
from typing import Any

REQUEST_ID_KEY = "x-request-id"
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
TRACEPARENT_KEY = "traceparent"
TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
# `forwarded`: a call another worker received and forwarded to this one (server.forwarding)
FIELDS = ("worker", "request_id", "caller", "forwarded", "method", "host", "status", "duration")

# The fields of the request being served in this task (and the tasks it starts).
current: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "scout_request", default=None
)


_PROCESS = secrets.token_hex(8)  # ids unique across processes and restarts...
_SERIAL = itertools.count()  # ...and within this one: no system call per request


def supplied_request_id(metadata: Sequence[Any] | None) -> str | None:
    """The caller's x-request-id if it is sane (bounded, plain); without one, the trace id
    of a valid W3C `traceparent`, so scout's lines join the caller's trace."""
    traced = None
    for key, value in metadata or ():
        if not isinstance(value, str):
            continue
        if key == REQUEST_ID_KEY and REQUEST_ID.fullmatch(value):
            return value
        if key == TRACEPARENT_KEY and traced is None:
            traced = trace_id(value)
    return traced


def trace_id(traceparent: str) -> str | None:
    """The trace id of a W3C Trace Context `traceparent` (version-traceid-parentid-flags),
    or None when it is not one: the spec's invalid values (version ff, an all-zero id,
    more fields after version 00) are refused, as a tracer would refuse them."""
    match = TRACEPARENT.fullmatch(traceparent.strip())
    if match is None:
        return None
    version, trace, parent, _, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or not int(trace, 16) or not int(parent, 16):
        return None
    return trace


def new_request_id() -> str:
    """A fresh id, unique across processes and restarts: hex digits only (never a `:`)."""
    return f"{_PROCESS}{next(_SERIAL):016x}"


def owned_request_id(caller: str, supplied: str) -> str:
    """A caller's own id as scout records it when callers are configured: `NAME:ID`, so no
    caller can take an id another caller (or scout) used; caller names have no `:`."""
    return f"{caller}:{supplied}"


class RequestFields(logging.Filter):
    """Adds the worker's index, and the current request's fields while serving it, to every
    record."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        if self.worker is not None:
            record.worker = self.worker
        fields = current.get()
        if fields:
            for key, value in fields.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the request's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None and value != "":
                line[key] = value
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


# Characters a terminal or a log reader may take as a line break or a control sequence.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_PLAIN = re.compile(r"[A-Za-z0-9._:@/+-]+")


def escaped(text: str) -> str:
    """text on one line: each control character as \\xNN or \\uNNNN."""
    return _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)


def field_value(value: object) -> str:
    """A field of the text format: plain as is, anything else quoted and escaped, so a
    caller's value cannot end the line nor pass for another field."""
    text = str(value)
    return text if _PLAIN.fullmatch(text) else json.dumps(text)


class TextFormatter(logging.Formatter):
    """The classic line, with the request's id and fields after the message.

    Messages and fields can carry callers' values (a host name, a command), so the
    message is escaped to one line and each field is quoted unless plain: no caller can
    forge a log line. A traceback, scout's own, keeps its lines.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        raw = record.message
        record.message = escaped(raw)
        try:
            return super().formatMessage(record)
        finally:
            record.message = raw

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = [
            f"{k}={field_value(value)}"
            for k in FIELDS
            if (value := getattr(record, k, None)) is not None and value != ""
        ]
        return f"{text} [{' '.join(extra)}]" if extra else text


def resolved_format(fmt: str | None) -> str:
    """`fmt`, or when None: text on a terminal, json otherwise."""
    if fmt is None:
        return "text" if sys.stderr.isatty() else "json"
    return fmt


def setup(level: str, fmt: str | None, worker: int | None = None) -> None:
    """Configure the root logger: `fmt` text or json (None: see resolved_format); a worker
    process gives its index, which then marks each of its lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if resolved_format(fmt) == "json" else TextFormatter())
    handler.addFilter(RequestFields(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
