"""How `contrastive serve` logs: readable lines (`text`) or one JSON object a line (`json`),
each record with the id of the request it was emitted for
(contrastkit.service.observability.request_id) and, when tracing is on, the ids of the trace and
span it was emitted in.

The standard library's logging and orjson: no logging package to install.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from contrastkit.service.observability.request_id import RequestIdFilter

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    """`LEVEL logger: message`, then `[request_id=...]` when the record has one."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        if request_id is None:
            return line
        first, newline, rest = line.partition("\n")  # after the message, not the traceback
        return f"{first} [request_id={request_id}]{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: time (UTC, ISO 8601), level, logger,
    message; request_id, trace_id and span_id when set; exception (the traceback's text)
    when there is one. Newlines inside the message or traceback stay escaped, so a log
    collector reading line by line always gets whole records."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "trace_id", "span_id"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to sys.stderr as it is at each record: a caller that replaces sys.stderr
    (a test's capture, a notebook, a later command in the same process) would otherwise
    leave this handler writing to a closed stream, failing on every line."""

    def __init__(self) -> None:
        super().__init__()
        self._chosen: Any = None  # a stream set with setStream wins over sys.stderr

    def setStream(self, stream: Any) -> Any:  # noqa: N802 (logging's name)
        self._chosen = stream
        return super().setStream(stream)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = self._chosen if self._chosen is not None else sys.stderr
        super().emit(record)


def handler(log_format: LogFormat, extra: list[logging.Filter] | None = None) -> logging.Handler:
    """A stderr handler that writes `log_format`, with the request id filter and `extra`."""
    out = _CurrentStderr()
    out.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    out.addFilter(RequestIdFilter())
    for f in extra or []:
        out.addFilter(f)
    return out


def configure(level: str, log_format: LogFormat, tracing: bool = False) -> None:
    """The root logger writes `log_format` at `level` to stderr (what logging.basicConfig
    did, with our formatters). With `tracing`, records carry the current trace and span ids
    (the otel extra must be installed: contrastkit.service.observability.tracing checks it
    first)."""
    extra: list[logging.Filter] = []
    if tracing:
        from contrastkit.service.observability.tracing import TraceIdsFilter

        extra.append(TraceIdsFilter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler(log_format, extra))
    root.setLevel(level.upper())
