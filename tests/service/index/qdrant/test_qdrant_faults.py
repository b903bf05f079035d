"""The API over a Qdrant server that misbehaves (tests/service/index/qdrant/fake_qdrant.py):
one that stalls, drops the connection mid-request, or answers garbage or errors. Each is
a 503 `backend_unavailable` with Retry-After, naming the server, within the configured
timeout (the client's: 1 s where the fault is a stall, which is seen as its timeout; a
minute elsewhere, so that a busy machine never turns an answer into a timeout); never a
500. A write
that Qdrant did not confirm is never acknowledged, and the service serves again as soon
as the server does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("qdrant_client")
from fastapi.testclient import TestClient

from contrastkit.service.settings import Settings
from tests.helpers import unit_rows
from tests.service.index.qdrant.fake_qdrant import APPLIED, FAULTS, FakeQdrant, on

MakeClient = Callable[..., TestClient]
QNAME = "contrastive-c"
WRITE = ("PUT", rf"^/collections/{QNAME}/points\b")
SEARCH = ("POST", rf"^/collections/{QNAME}/points/query/batch")
SCROLL_CONFIGS = ("POST", r"^/collections/contrastive_collections/points/scroll")
READ_FAULTS = [f for f in FAULTS if f not in ("apply-and-drop", "wait-timeout")]  # writes' only
VECTOR = unit_rows(1, 8, seed=4)[0].tolist()  # FakeEncoder's space: 8-d
ADD = {"items": [{"id": "cat", "vector": VECTOR, "metadata": {"k": 1}}]}
QUERY = {"queries": [{"vector": VECTOR}], "k": 1}


@pytest.fixture
def fake() -> Iterator[FakeQdrant]:
    server = FakeQdrant()
    server.seed("c", "fake:test", 8)
    yield server
    server.close()


def _client(make: MakeClient, fake: FakeQdrant, timeout: int) -> TestClient:
    s = Settings(collections_backend="qdrant", qdrant_url=fake.url, qdrant_timeout=timeout)
    return make(s)


@pytest.fixture
def client(
    fake_app_factory: MakeClient, fake: FakeQdrant, request: pytest.FixtureRequest
) -> TestClient:
    """The client's timeout expires only where the test waits for it: a stall."""
    callspec = getattr(request.node, "callspec", None)
    stall = callspec is not None and callspec.params.get("fault") == "stall"
    return _client(fake_app_factory, fake, timeout=1 if stall else 60)


def _unavailable(r: Any, fake: FakeQdrant) -> str:
    """Assert a 503 backend_unavailable naming the server, with Retry-After -> message."""
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "backend_unavailable", err
    assert fake.url in err["message"] and "\n" not in err["message"]
    assert int(r.headers["retry-after"]) > 0
    return str(err["message"])


def test_the_fake_serves_the_routes_the_faults_break(client: TestClient) -> None:
    r = client.post("/v1/collections/c/items", json=ADD)
    assert r.status_code == 200 and r.json() == {"upserted": 1, "count": 1}
    hits = client.post("/v1/collections/c/search", json=QUERY).json()["results"][0]
    assert [h["id"] for h in hits] == ["cat"]


@pytest.mark.parametrize("fault", FAULTS)
def test_a_write_qdrant_does_not_confirm_is_503_and_not_acknowledged(
    client: TestClient, fake: FakeQdrant, fault: str
) -> None:
    """Qdrant may have applied it (its answer lost or garbled: APPLIED) or not: either
    way the client is not told it is done, and its retry (idempotent) converges."""
    fake.fault = on(*WRITE, fault)
    message = _unavailable(client.post("/v1/collections/c/items", json=ADD), fake)
    if fault == "stall":
        assert "timed out" in message
    if fault == "wait-timeout":
        assert "did not confirm the write" in message
    # not answered as done, whether it landed (an answer lost or garbled) or not
    assert len(fake.points[QNAME]) == (1 if fault in APPLIED else 0)
    fake.fault = None  # the server is back: so is the service, and a retry converges
    r = client.post("/v1/collections/c/items", json=ADD)
    assert r.status_code == 200 and r.json() == {"upserted": 1, "count": 1}


@pytest.mark.parametrize("fault", ["wait-timeout", "drop", "no-result"])
def test_a_delete_qdrant_does_not_confirm_is_503(
    client: TestClient, fake: FakeQdrant, fault: str
) -> None:
    assert client.post("/v1/collections/c/items", json=ADD).status_code == 200
    fake.fault = on("POST", rf"^/collections/{QNAME}/points/delete", fault)
    _unavailable(client.post("/v1/collections/c/items/delete", json={"ids": ["cat"]}), fake)
    fake.fault = None
    r = client.post("/v1/collections/c/items/delete", json={"ids": ["cat"]})
    assert r.status_code == 200 and r.json()["count"] == 0


@pytest.mark.parametrize("fault", READ_FAULTS)
def test_a_search_qdrant_does_not_answer_properly_is_503(
    client: TestClient, fake: FakeQdrant, fault: str
) -> None:
    assert client.post("/v1/collections/c/items", json=ADD).status_code == 200
    fake.fault = on(*SEARCH, fault)
    _unavailable(client.post("/v1/collections/c/search", json=QUERY), fake)
    fake.fault = None
    assert client.post("/v1/collections/c/search", json=QUERY).status_code == 200


@pytest.mark.parametrize("fault", ["stall", "drop", "not-json", "no-result"])
def test_a_server_failing_every_request_is_503_everywhere_and_unready(
    client: TestClient, fake: FakeQdrant, fault: str
) -> None:
    fake.fault = lambda method, path: fault
    for method, path, body in [
        ("GET", "/v1/collections", None),
        ("GET", "/v1/collections/c", None),
        ("POST", "/v1/collections/c/items", ADD),
        ("POST", "/v1/collections/c/search", QUERY),
        ("POST", "/v1/collections", {"name": "d"}),
        ("DELETE", "/v1/collections/c", None),
    ]:
        _unavailable(client.request(method, path, json=body), fake)
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "backend_unavailable"
    assert client.post("/v1/embed/text", json={"texts": ["no collection needed"]}).is_success


@pytest.mark.parametrize("fault", ["not-json", "wrong-shape", "no-result", "error-500"])
def test_readyz_over_a_garbled_config_listing_is_503_not_500(
    client: TestClient, fake: FakeQdrant, fault: str
) -> None:
    """The ping answers; listing the collections' configs (the refused collections that
    /readyz reports) does not."""
    fake.fault = on(*SCROLL_CONFIGS, fault)
    ready = client.get("/readyz")
    assert ready.status_code == 503, ready.text
    assert ready.json()["status"] == "backend_unavailable" and fake.url in ready.json()["reason"]


def test_a_stalled_readiness_check_holds_no_other_request(
    fake_app_factory: MakeClient, fake: FakeQdrant
) -> None:
    """/readyz asks Qdrant which collections it refuses; that request stalls (under a long
    client timeout). Meanwhile /healthz and a text embedding are answered: the question
    was not asked from the event loop."""
    client = _client(fake_app_factory, fake, timeout=600)
    fake.fault = on(*SCROLL_CONFIGS, "stall")
    ready: list[Any] = []
    probe = threading.Thread(target=lambda: ready.append(client.get("/readyz")), daemon=True)
    probe.start()
    assert fake.stalled.wait(120)
    others: list[int] = []

    def meanwhile() -> None:
        others.append(client.get("/healthz").status_code)
        others.append(client.post("/v1/embed/text", json={"texts": ["x"]}).status_code)

    side = threading.Thread(target=meanwhile, daemon=True)
    side.start()
    side.join(120)  # generous: blocked behind the stall, these would wait its 600 s
    held = side.is_alive()
    fake.close()  # ends the stall: the probe's request fails, /readyz answers
    probe.join(120)
    assert not held and others == [200, 200]
    assert ready and ready[0].status_code == 503
