"""A Qdrant server: unreachable (always tested), and real (only with CONTRASTIVE_QDRANT_URL).

To run the integration tests against a server, e.g. one started with
`docker run -p 6333:6333 qdrant/qdrant`:

    CONTRASTIVE_QDRANT_URL=http://localhost:6333 python -m pytest -q \\
        tests/service/index/qdrant/test_qdrant_server.py \\
        tests/service/index/test_backend_contract.py

They work under a random collection prefix and drop what they create. The contract suite
then runs its every test on the server too (its "qdrant-server" cases).
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

pytest.importorskip("qdrant_client")

from contrastkit.service.errors import STATUS
from contrastkit.service.index.qdrant.backend import QdrantBackend
from contrastkit.service.index.qdrant.connection import QdrantConfig
from contrastkit.service.index.qdrant.sidecar import CollectionConfig
from contrastkit.service.index.types import CollectionError, IndexSpec

URL = os.environ.get("CONTRASTIVE_QDRANT_URL")
DEAD = "http://127.0.0.1:9"  # the discard port: nothing listens there
needs_server = pytest.mark.skipif(
    not URL, reason="CONTRASTIVE_QDRANT_URL is not set: no Qdrant server to test against"
)


def _calls(b: QdrantBackend) -> list[Callable[[], Any]]:
    return [b.ping, b.list, lambda: b.problems, lambda: b.create("c", "m", 3), lambda: b.get("c")]


def test_an_unreachable_server_is_backend_unavailable_naming_the_url() -> None:
    b = QdrantBackend(QdrantConfig(url=DEAD, timeout=1))  # makes no request yet
    for call in _calls(b):
        with pytest.raises(CollectionError) as err:
            call()
        assert err.value.code == "backend_unavailable"
        assert DEAD in err.value.message
        assert err.value.retry_after is not None
        assert not isinstance(err.value.__cause__, CollectionError)  # raised from Qdrant's
    assert STATUS["backend_unavailable"] == 503
    b.close()


def test_a_handle_whose_server_went_away_is_backend_unavailable(tmp_path: Any) -> None:
    """The same handle code, pointed at a dead server after it was opened."""
    local = QdrantBackend(QdrantConfig(path=tmp_path / "q"))
    local.create("c", "m", 3)
    handle = local.get("c")
    dead = QdrantBackend(QdrantConfig(url=DEAD, timeout=1))
    handle._b = dead  # the handle now talks to the dead server
    vec = np.eye(3, dtype=np.float32)[:1]
    for call in (
        handle.count,
        lambda: handle.upsert(["a"], vec, [{}]),
        lambda: handle.search(vec, 1, {"k": "v"}),
        lambda: handle.scroll(None, 5),
    ):
        with pytest.raises(CollectionError) as err:
            call()
        assert err.value.code == "backend_unavailable" and DEAD in err.value.message
    local.close()


@pytest.fixture
def answering() -> Iterator[Callable[[int], str]]:
    """answering(status) -> the url of a local HTTP server that answers every request with
    that status and a Qdrant-shaped error body."""
    servers: list[ThreadingHTTPServer] = []

    def start(status: int) -> str:
        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = json.dumps({"status": {"error": f"status {status}"}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = _answer  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("status", "says"), [(401, "refused the API key"), (500, "answered 500"), (502, "answered 502")]
)
def test_a_server_answering_errors_is_backend_unavailable(
    answering: Callable[[int], str], status: int, says: str
) -> None:
    url = answering(status)
    b = QdrantBackend(QdrantConfig(url=url, timeout=60))
    for call in _calls(b):
        with pytest.raises(CollectionError) as err:
            call()
        assert err.value.code == "backend_unavailable"
        assert url in err.value.message and says in err.value.message
    b.close()


def test_a_server_answering_404_for_a_collection_is_not_found(
    answering: Callable[[int], str],
) -> None:
    b = QdrantBackend(QdrantConfig(url=answering(404), timeout=60))
    b._configs_ready = True  # skip the sidecar check: every path answers 404 here
    with pytest.raises(CollectionError) as err:
        b.info_of(CollectionConfig("gone", "m", 3, IndexSpec(), "2025-01-01T00:00:00+00:00"))
    assert err.value.code == "collection_not_found" and "'gone'" in err.value.message
    b.close()


# -- a real server ---------------------------------------------------------------------------------
@pytest.fixture
def replicas() -> Iterator[tuple[QdrantBackend, QdrantBackend]]:
    """Two backends on one server and prefix: two replicas of a stateless service."""
    assert URL
    cfg = QdrantConfig(
        url=URL,
        api_key=os.environ.get("CONTRASTIVE_QDRANT_API_KEY"),
        prefix=f"ctest{uuid.uuid4().hex[:8]}",
    )
    a, b = QdrantBackend(cfg), QdrantBackend(cfg)
    yield a, b
    for name in [c.name for c in a.list()] + list(a.problems):
        a.drop(name)
    a.client.delete_collection(a.configs)
    a.close()
    b.close()


@needs_server
def test_replicas_share_collections(replicas: tuple[QdrantBackend, QdrantBackend]) -> None:
    a, b = replicas
    a.ping()
    a.create("shared", "model-x", 8)
    assert [c.name for c in b.list()] == ["shared"]
    vecs = np.eye(8, dtype=np.float32)
    a.get("shared").upsert([f"i{j}" for j in range(8)], vecs, [{"j": j} for j in range(8)])
    hits = b.get("shared").search(vecs[3:4], 2, {"j": {"$gte": 3}})[0]
    assert hits[0].id == "i3" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert b.get("shared").count() == 8
    b.drop("shared")
    with pytest.raises(CollectionError) as err:
        a.get("shared")
    assert err.value.code == "collection_not_found"


@needs_server
def test_a_wrong_api_key_is_backend_unavailable(
    replicas: tuple[QdrantBackend, QdrantBackend],
) -> None:
    if not os.environ.get("CONTRASTIVE_QDRANT_API_KEY"):
        pytest.skip("the server takes no API key")
    assert URL
    wrong = QdrantBackend(QdrantConfig(url=URL, api_key="wrong", prefix=replicas[0].config.prefix))
    with pytest.raises(CollectionError) as err:
        wrong.list()
    assert err.value.code == "backend_unavailable" and "API key" in err.value.message
