"""A server that gives no answer: both clients raise one ServiceUnreachableError whose
message names the URL and what happened, chained from httpx's error."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from contrastkit.service.client import (
    AsyncContrastiveClient,
    ContrastiveClient,
    ContrastiveError,
    ServiceUnreachableError,
)


@pytest.fixture
def closed_url() -> str:
    """A local port that nothing listens on (bound, then let go): connects are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A port that takes connections (into its backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def _refused(url: str) -> str:
    return f"cannot connect to {url}: connection refused (is `contrastive serve` running there?)"


def test_sync_client_on_a_closed_port_says_where_and_what(closed_url: str) -> None:
    with ContrastiveClient(closed_url) as client, pytest.raises(ServiceUnreachableError) as info:
        client.embed_texts(["a cat"])
    assert str(info.value) == _refused(closed_url)
    assert isinstance(info.value, ContrastiveError)
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert info.value.reason == "connection refused"
    assert info.value.url == f"{closed_url}/v1/embed/text"


def test_async_client_on_a_closed_port_says_the_same(closed_url: str) -> None:
    async def run() -> ServiceUnreachableError:
        async with AsyncContrastiveClient(closed_url) as client:
            with pytest.raises(ServiceUnreachableError) as info:
                await client.ready()
        return info.value

    error = asyncio.run(run())
    assert str(error) == _refused(closed_url)
    assert isinstance(error.__cause__, httpx.ConnectError)


def test_a_timeout_names_the_request_the_phase_and_the_limit(silent_url: str) -> None:
    client = ContrastiveClient(silent_url, timeout=0.2)
    with client, pytest.raises(ServiceUnreachableError) as info:
        client.embed_texts(["a cat"])
    message = str(info.value)
    assert message.startswith(f"POST {silent_url}/v1/embed/text: no answer in time ")
    assert "(read timeout after 0.2 s)" in message and "timeout=" in message
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)


def test_async_timeout_too(silent_url: str) -> None:
    async def run() -> ServiceUnreachableError:
        async with AsyncContrastiveClient(silent_url, timeout=0.2) as client:
            with pytest.raises(ServiceUnreachableError) as info:
                await client.models()
        return info.value

    error = asyncio.run(run())
    assert str(error).startswith(f"GET {silent_url}/v1/models: no answer in time (read timeout")


def test_a_connection_broken_before_the_answer_says_so() -> None:
    def drop(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("Server disconnected", request=request)

    client = ContrastiveClient("http://svc:8000", transport=httpx.MockTransport(drop))
    with client, pytest.raises(ServiceUnreachableError) as info:
        client.ready()
    assert str(info.value) == (
        "GET http://svc:8000/readyz: the connection broke before the answer (Server "
        "disconnected); did the server stop or restart? The request may have run."
    )


def test_the_client_imports_without_torch_or_the_web_framework() -> None:
    """A script that only calls the service must not pay for torch (seconds, gigabytes)."""
    code = (
        "import sys, contrastkit.service.client; "
        "heavy = ('torch', 'contrastkit.training', 'fastapi', 'faiss'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
