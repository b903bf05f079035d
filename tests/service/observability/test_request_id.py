"""The request id (contrastkit.service.observability.request_id): the client's `X-Request-ID` when
it is usable, else a new one; answered on every response, errors included; on the log records
emitted while the request is handled."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from contrastkit.service.app import create_app
from contrastkit.service.observability import request_id
from contrastkit.service.observability.request_id import RequestIdFilter
from contrastkit.service.settings import Settings
from tests.helpers import wait_ready
from tests.service.observability.conftest import BreakableEncoder, kept_records

GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def encoder() -> BreakableEncoder:
    return BreakableEncoder()


@pytest.fixture
def client(tmp_path: Path, encoder: BreakableEncoder) -> Iterator[TestClient]:
    """Tracing off (the default), API keys on, a 1 KiB body limit; 500s answered."""
    settings = Settings(
        collections_dir=str(tmp_path), api_keys=["k"], max_body_bytes=1024, admin_keys=["a"]
    )
    app = create_app(settings, encoder=encoder)
    with TestClient(app, raise_server_exceptions=False, headers={"Authorization": "Bearer k"}) as c:
        wait_ready(c)
        yield c


def test_a_sent_id_is_answered(client: TestClient) -> None:
    r = client.get("/v1/models", headers={"X-Request-ID": "order-42/retry:1"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "order-42/retry:1"
    assert request_id.current() is None  # nothing left behind


def test_without_one_a_new_one_is_made_for_each_request(client: TestClient) -> None:
    first, second = (client.get("/healthz").headers["x-request-id"] for _ in range(2))
    assert GENERATED.fullmatch(first) and GENERATED.fullmatch(second)
    assert first != second


@pytest.mark.parametrize(
    "sent",
    [b"", b"has space", b"x" * 129, "caf\u00e9".encode("latin-1"), b"line\tbreak"],
    ids=["empty", "space", "too-long", "not-ascii", "control"],
)
def test_an_unusable_id_is_replaced(client: TestClient, sent: bytes) -> None:
    r = client.get("/healthz", headers=[(b"x-request-id", sent)])
    assert GENERATED.fullmatch(r.headers["x-request-id"])


def test_the_longest_usable_id_is_kept(client: TestClient) -> None:
    sent = "a" * 128
    assert client.get("/healthz", headers={"X-Request-ID": sent}).headers["x-request-id"] == sent


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/no/such/path", {}, 404),
        ("PUT", "/v1/models", {}, 405),
        ("POST", "/v1/embed/text", {"json": {"texts": []}}, 422),
        ("GET", "/v1/models", {"headers": {"Authorization": "Bearer wrong"}}, 401),
        ("GET", "/v1/admin/models", {}, 403),  # an API key, not an admin key
        ("POST", "/v1/embed/text", {"content": b"x" * 2048}, 413),
    ],
)
def test_errors_carry_the_id(
    client: TestClient, method: str, path: str, kwargs: dict[str, object], status: int
) -> None:
    headers = {"X-Request-ID": "err-1", **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    r = client.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == status
    assert r.headers["x-request-id"] == "err-1"


def test_a_500_carries_the_id_and_its_log_record_names_the_request(
    client: TestClient, encoder: BreakableEncoder
) -> None:
    encoder.broken = True
    with kept_records(RequestIdFilter()) as records:
        r = client.post("/v1/embed/text", json={"texts": ["x"]}, headers={"X-Request-ID": "e5"})
    assert r.status_code == 500
    assert r.headers["x-request-id"] == "e5"
    (record,) = [rec for rec in records if rec.getMessage() == "unhandled error"]
    assert record.request_id == "e5"  # type: ignore[attr-defined]


def test_records_outside_a_request_have_none() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    assert RequestIdFilter().filter(record)
    assert record.request_id is None  # type: ignore[attr-defined]
