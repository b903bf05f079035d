"""Log formats (contrastkit.service.observability.logs): `json` writes one JSON object a line with
the request id, also for uvicorn's own records in a real server; `text` keeps its lines."""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from contrastkit.service.observability import logs
from contrastkit.service.observability.request_id import RequestIdFilter
from tests.helpers import free_port, wait_server_ready

SERVER = Path(__file__).resolve().parents[1] / "slow_server.py"


def _record(msg: str = "hello %s", args: tuple[object, ...] = ("world",)) -> logging.LogRecord:
    return logging.LogRecord("contrastive.test", logging.WARNING, __file__, 7, msg, args, None)


def test_a_json_line_has_the_fields_and_only_set_ids() -> None:
    record = _record()
    record.request_id = "r-9"
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry.pop("time").endswith("+00:00")
    assert entry == {
        "level": "WARNING",
        "logger": "contrastive.test",
        "message": "hello world",
        "request_id": "r-9",
    }


def test_a_json_line_carries_the_exception_text_on_one_line() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    exception = json.loads(line)["exception"]
    assert exception.startswith("Traceback") and "ValueError: bad\nvalue" in exception


def test_text_lines_add_the_request_id_after_the_message() -> None:
    record = _record()
    assert logs.TextFormatter().format(record) == "WARNING contrastive.test: hello world"
    record.request_id = "abc"
    assert logs.TextFormatter().format(record) == (
        "WARNING contrastive.test: hello world [request_id=abc]"
    )


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, put back as it was afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configure_puts_one_handler_with_the_filters_on_the_root(
    root_logger: logging.Logger,
) -> None:
    logs.configure("warning", "json", tracing=True)
    (handler,) = root_logger.handlers
    assert root_logger.level == logging.WARNING
    assert isinstance(handler.formatter, logs.JsonFormatter)
    kinds = {type(f).__name__ for f in handler.filters}
    assert kinds == {"RequestIdFilter", "TraceIdsFilter"}

    stream = io.StringIO()
    handler.setStream(stream)  # type: ignore[attr-defined]
    logging.getLogger("contrastive.test").warning("to %s", "json")
    assert json.loads(stream.getvalue())["message"] == "to json"


def test_handlers_filter_what_propagates_to_them() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(RequestIdFilter())
    parent, child = logging.getLogger("obs-test"), logging.getLogger("obs-test.child")
    parent.addHandler(handler)
    try:
        child.warning("from a child")
    finally:
        parent.removeHandler(handler)
    assert "request_id" not in json.loads(out.getvalue())  # outside a request: left out


@pytest.mark.slow
def test_a_server_with_json_logs_writes_only_json_lines_with_request_ids(
    tmp_path: Path,
) -> None:
    """A real uvicorn server (tests/service/slow_server.py): its own records, uvicorn's
    and the access log's, all JSON; the access log line names the request."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out = tmp_path / "server.log"
    cmd = [sys.executable, str(SERVER), f"--port={port}", f"--collections-dir={tmp_path}"]
    cmd += ["--log-format=json", "--access-log=true", "--drain-seconds=0"]
    with out.open("wb") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=f)
    try:
        wait_server_ready(url, proc, out.read_text)
        r = httpx.post(
            f"{url}/v1/embed/text",
            json={"texts": ["x"]},
            headers={"X-Request-ID": "json-1"},
            timeout=60,
        )
        assert r.status_code == 200 and r.headers["x-request-id"] == "json-1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    entries = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    loggers = {e["logger"] for e in entries}
    assert {"uvicorn.error", "uvicorn.access", "contrastive.service"} <= loggers
    (access,) = [
        e for e in entries if e["logger"] == "uvicorn.access" and "/v1/embed/text" in e["message"]
    ]
    assert access["request_id"] == "json-1"
    assert entries[-1]["message"] == "stopped cleanly"
