"""The embedding routes with a declared body read it with orjson (the image and collection
routes read theirs with contrastkit.service.api.payload.read_json, orjson too), and answer what
orjson refuses or would round exactly as the standard library's reading did."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from contrastkit.service.api.json_route import OrjsonRequest


def _read(body: bytes) -> Any:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    return asyncio.run(OrjsonRequest(scope, receive).json())


@pytest.mark.parametrize(
    "body",
    [
        b'{"input": ["a photo of a cat", "\\u00e9t\\u00e9"], "model": "m"}',
        b'{"input": [[1, 2, 3], [18446744073709551615]]}',  # the largest 64-bit integer
        b'{"input": [[123456789012345678901234567890]]}',  # beyond 64 bits: kept exact
        b'{"texts": ["a\\ud800b"]}',  # a lone surrogate: orjson refuses, json reads it
        b'{"x": NaN, "y": -Infinity}',
        b'{"images": ["iVBORw0KGgo1234567890123456789012345"]}',  # digits inside a string
    ],
)
def test_a_body_reads_as_the_standard_library_reads_it(body: bytes) -> None:
    got, want = _read(body), json.loads(body)
    assert json.dumps(got) == json.dumps(want)  # NaN != NaN: compare the text
    assert type(got) is type(want)


def test_a_body_that_is_not_json_raises_what_fastapi_answers_422() -> None:
    with pytest.raises(json.JSONDecodeError):
        _read(b"{not json")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embeddings", {"input": ["a cat"]}),
        ("/v1/embed/text", {"texts": ["a cat"]}),
    ],
)
def test_the_embedding_routes_use_it(
    builtin_client: TestClient, monkeypatch: pytest.MonkeyPatch, path: str, body: Any
) -> None:
    read = OrjsonRequest.json
    calls: list[str] = []

    async def counted(self: OrjsonRequest) -> Any:
        calls.append(self.url.path)
        return await read(self)

    monkeypatch.setattr(OrjsonRequest, "json", counted)
    r = builtin_client.post(path, json=body)
    assert r.status_code in (200, 422), r.text
    assert calls == [path]
