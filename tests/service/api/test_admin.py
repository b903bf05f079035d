"""The admin API (/v1/admin): models loaded, replaced and unloaded in a running server.

Loads go through a stand-in for `load_encoder` (`Loader`): `fake-NAME` loads an 8-d
fake model with id `fake:NAME` at once (or when the test lets it), `broken-...` fails.
"""

from __future__ import annotations

import dataclasses
import gc
import re
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from contrastkit.service.app import create_app
from contrastkit.service.middleware import ApiKeyMiddleware
from contrastkit.service.runtime.batcher import Batcher
from contrastkit.service.settings import Settings
from contrastkit.service.state import ServiceState
from contrastkit.training.encoders import check_reference
from tests.helpers import FakeEncoder, image_bytes, unit_rows, wait_ready, wait_until

BOSS = {"Authorization": "Bearer boss"}  # the admin key
USER = {"Authorization": "Bearer user"}  # an API key


class NamedEncoder(FakeEncoder):
    """A fake model with an id of its own. Each text batch takes the first of `gates`, if
    any is left, and waits until it opens (`entered` says that one waited)."""

    def __init__(self, model_id: str) -> None:
        super().__init__()
        self.info = dataclasses.replace(self.info, model_id=model_id)
        self.gates: list[threading.Event] = []
        self.entered = threading.Event()

    def _text_forward(self, texts: list[str]) -> torch.Tensor:
        if self.gates:
            gate = self.gates.pop(0)
            self.entered.set()
            gate.wait(60)
        return super()._text_forward(texts)


class WarmUpFails(NamedEncoder):
    """Loads, then fails its first forward (the warm-up): a device error, say."""

    def _image_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


class Loader:
    """load_encoder for these tests. Loads wait while `hold` is clear; `made` keeps weak
    references to what it loaded (a strong one would keep unloaded models alive).
    `fake-NAME@TAG` loads model id `fake:NAME` too (two references, one id);
    `broken-warm-up...` loads a model whose warm-up fails, other `broken...` fail."""

    def __init__(self) -> None:
        self.hold = threading.Event()
        self.hold.set()
        self.made: list[weakref.ref[NamedEncoder]] = []

    def __call__(self, ref: str, *_: object) -> NamedEncoder:
        self.hold.wait(60)
        if ref.startswith("broken-warm-up"):
            failing = WarmUpFails("fake:" + ref)
            self.made.append(weakref.ref(failing))
            return failing
        if ref.startswith("broken"):
            raise RuntimeError("the weights are corrupt")
        encoder = NamedEncoder("fake:" + ref.removeprefix("fake-").split("@")[0])
        self.made.append(weakref.ref(encoder))
        return encoder


def _check(ref: str, device: str | None = None) -> None:
    """check_reference, which takes the loader's references too."""
    if not ref.startswith(("fake-", "broken")):
        check_reference(ref, device)


@pytest.fixture
def loader(monkeypatch: pytest.MonkeyPatch) -> Loader:
    stand_in = Loader()
    monkeypatch.setattr("contrastkit.service.runtime.served.load_encoder", stand_in)
    monkeypatch.setattr("contrastkit.service.runtime.lifecycle.check_reference", _check)
    return stand_in


@pytest.fixture
def admin(fake_app_factory: Any, loader: Loader, tmp_path: Path) -> TestClient:
    """A server with an API key ('user') and an admin key ('boss')."""
    settings = Settings(api_keys=["user"], admin_keys=["boss"], collections_dir=str(tmp_path))
    return fake_app_factory(settings)  # type: ignore[no-any-return]


def _state(client: TestClient) -> ServiceState:
    return client.app.state.service  # type: ignore[attr-defined,no-any-return]


def _until(done: Callable[[], bool], timeout: float = 60.0) -> None:
    wait_until(done, timeout)


def _load(client: TestClient, ref: str, **more: Any) -> dict[str, Any]:
    """Load `ref` and wait for it: its operation, done."""
    r = client.post("/v1/admin/models?wait=30", json={"reference": ref, **more}, headers=BOSS)
    assert r.status_code == 200, r.json()
    assert r.json()["status"] == "done"
    return r.json()  # type: ignore[no-any-return]


def _embed(client: TestClient, model: str | None = None, text: str = "a cat") -> tuple[int, Any]:
    body: dict[str, Any] = {"texts": [text]} | ({"model": model} if model else {})
    r = client.post("/v1/embed/text", json=body, headers=USER)
    return r.status_code, r.json()


# -- who may --------------------------------------------------------------------------------
def test_the_admin_api_is_off_on_a_server_without_keys(fake_app_factory: Any) -> None:
    client = fake_app_factory(Settings(collections=False))
    for method, path in [
        ("POST", "/v1/admin/models"),
        ("DELETE", "/v1/admin/models/fake:test"),
        ("GET", "/v1/admin/operations"),
    ]:
        r = client.request(method, path, json={"reference": "builtin"})
        assert r.status_code == 403, (method, path)
        assert r.json()["error"]["code"] == "admin_disabled"
        assert "api_keys" in r.json()["error"]["message"]
    assert not any(p.startswith("/v1/admin") for p in client.get("/openapi.json").json()["paths"])


def test_admin_routes_take_only_an_admin_key(admin: TestClient) -> None:
    r = admin.get("/v1/admin/operations")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"
    r = admin.get("/v1/admin/operations", headers=USER)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert admin.get("/v1/admin/operations", headers=BOSS).status_code == 200
    # an admin key is an API key too
    assert admin.post("/v1/embed/text", json={"texts": ["x"]}, headers=BOSS).status_code == 200
    # refused before the body is read: no 422 tells a stranger what the route wants
    for body in (b'{"nonsense": 1}', b"{", b"\xff"):
        json_body = {"content-type": "application/json"}
        assert admin.post("/v1/admin/models", content=body, headers=json_body).status_code == 401
        r = admin.post("/v1/admin/models", content=body, headers=json_body | USER)
        assert r.status_code == 403


def test_the_admin_routes_check_the_key_themselves_too(loader: Loader, tmp_path: Path) -> None:
    """Without the API-key middleware (an app assembled otherwise), still no way in."""
    app = create_app(Settings(admin_keys=["boss"], collections=False), encoder=FakeEncoder())
    app.user_middleware = [m for m in app.user_middleware if m.cls is not ApiKeyMiddleware]
    with TestClient(app) as client:
        wait_ready(client)
        r = client.post("/v1/admin/models", json={"reference": "fake-b"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert client.post(
            "/v1/admin/models", json={"reference": "fake-b"}, headers=BOSS
        ).is_success


def test_admin_keys_alone_protect_the_admin_api_only(fake_app_factory: Any, loader: Loader) -> None:
    client = fake_app_factory(Settings(admin_keys=["boss"], collections=False))
    assert client.post("/v1/embed/text", json={"texts": ["x"]}).status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic boss"}):
        r = client.post("/v1/admin/models", json={"reference": "fake-b"}, headers=headers)
        assert r.status_code == 401, headers
    assert client.post("/v1/admin/models", json={"reference": "fake-b"}, headers=BOSS).is_success
    doc = client.get("/openapi.json").json()
    assert doc["paths"]["/v1/admin/models"]["post"]["security"] == [{"bearer": []}]
    assert "401" in doc["paths"]["/v1/admin/models"]["post"]["responses"]
    assert {} in doc["paths"]["/v1/embed/text"]["post"]["security"]  # optional there


def test_api_keys_alone_open_the_admin_api_to_them(fake_app_factory: Any, loader: Loader) -> None:
    client = fake_app_factory(Settings(api_keys=["user"], collections=False))
    assert client.get("/v1/admin/operations", headers=USER).status_code == 200
    assert client.get("/v1/admin/operations").status_code == 401


# -- load -----------------------------------------------------------------------------------
def test_a_loaded_model_serves_and_is_listed(admin: TestClient, loader: Loader) -> None:
    loader.hold.clear()  # the load waits: its progress shows meanwhile
    r = admin.post("/v1/admin/models", json={"reference": "fake-b", "alias": "b"}, headers=BOSS)
    assert r.status_code == 202, r.json()
    op = r.json()
    assert (op["operation"], op["status"], op["reference"]) == ("load", "loading", "fake-b")
    assert r.headers["location"] == f"/v1/admin/operations/{op['id']}"
    ready = admin.get("/readyz")
    assert ready.status_code == 200  # a load never takes the server out of service
    row = ready.json()["models"][-1]
    assert (row["status"], row["operation"], row["reference"]) == ("loading", op["id"], "fake-b")
    assert "fake-b" in row["reason"]
    assert _embed(admin, "b")[0] == 404  # not served until warm
    loader.hold.set()
    _until(lambda: admin.get(r.headers["location"], headers=BOSS).json()["status"] == "done")
    done = admin.get(r.headers["location"], headers=BOSS).json()
    assert done["model_id"] == "fake:b" and done["error"] is None

    for name in ("b", "fake-b", "fake:b"):
        status, body = _embed(admin, name)
        assert status == 200 and body["model"] == "fake:b"
    assert _embed(admin)[1]["model"] == "fake:test"  # the default is unchanged
    cards = admin.get("/v1/models", headers=USER).json()["data"]
    assert [(c["id"], c["reference"], c["alias"], c["default"]) for c in cards] == [
        ("fake:test", "builtin", None, True),
        ("fake:b", "fake-b", "b", False),
    ]
    rows = admin.get("/readyz").json()["models"]
    assert [(m["id"], m["status"], m.get("alias")) for m in rows] == [
        ("fake:test", "ready", None),
        ("fake:b", "ready", "b"),
    ]


def test_a_load_can_make_the_new_model_the_default(admin: TestClient, loader: Loader) -> None:
    _load(admin, "fake-b", default=True)
    assert _embed(admin)[1]["model"] == "fake:b"
    assert admin.get("/readyz").json()["model"] == "fake:b"
    assert [c["default"] for c in admin.get("/v1/models", headers=USER).json()["data"]] == [
        True,
        False,
    ]


def test_refused_loads(admin: TestClient, loader: Loader) -> None:
    def load(body: dict[str, Any]) -> tuple[int, str, str]:
        r = admin.post("/v1/admin/models", json=body, headers=BOSS)
        return r.status_code, r.json()["error"]["code"], r.json()["error"]["message"]

    status, code, message = load({"reference": "no-such-model"})
    assert (status, code) == (422, "invalid_request") and "no-such-model" in message
    assert load({"reference": "fake-b", "device": "quantum:0"})[:2] == (422, "invalid_request")
    assert load({"reference": "fake-b", "runtime": "onnx"})[:2] == (422, "invalid_request")
    assert load({"reference": "fake-b", "extra": 1})[:2] == (422, "invalid_request")
    assert load({"reference": ""})[:2] == (422, "invalid_request")
    assert load({"reference": "a" * 5000})[:2] == (422, "invalid_request")
    assert load({"reference": "/tmp/\x00"})[:2] == (422, "invalid_request")
    r = admin.post("/v1/admin/models", content=b"{", headers=BOSS | {"content-type": "text/plain"})
    assert r.status_code == 415
    # a name served already
    status, code, message = load({"reference": "builtin"})
    assert (status, code) == (409, "model_exists") and "PUT /v1/admin/models/builtin" in message
    assert load({"reference": "fake-c", "alias": "fake:test"})[:2] == (409, "model_exists")


def test_a_failed_load_changes_nothing(admin: TestClient, loader: Loader) -> None:
    r = admin.post("/v1/admin/models?wait=30", json={"reference": "broken-1"}, headers=BOSS)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "model_load_failed" and "the weights are corrupt" in err["message"]
    assert err["detail"]["status"] == "failed"
    assert admin.get("/readyz").status_code == 200
    assert len(admin.get("/v1/models", headers=USER).json()["data"]) == 1
    ops = admin.get("/v1/admin/operations", headers=BOSS).json()["operations"]
    assert [(o["reference"], o["status"]) for o in ops] == [("broken-1", "failed")]
    # a model id served already: loaded, then refused, and freed
    r = admin.post("/v1/admin/models?wait=30", json={"reference": "fake-test"}, headers=BOSS)
    assert r.status_code == 422 and "already serves" in r.json()["error"]["message"]
    _until(lambda: _gone(loader.made[-1]))
    r = admin.get("/v1/admin/operations/999", headers=BOSS)
    assert r.status_code == 404 and r.json()["error"]["code"] == "operation_not_found"


# -- replace --------------------------------------------------------------------------------
def test_a_replacement_answers_what_was_sent_before_it_on_the_old_model(
    fake_app_factory: Any, loader: Loader, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Requests queued on the old model, and those sent while the new one loads, are
    answered by the old one, even those still queued at the swap; later ones by the new
    one; none is dropped or fails; then the old model is freed."""
    # batches of 2: the swap comes while the old model still has requests queued
    s = Settings(admin_keys=["boss"], max_batch_size=2, collections_dir=str(tmp_path))
    admin = fake_app_factory(s)
    _load(admin, "fake-old", alias="m")
    old = _state(admin).models.named("m").require()
    encoder = old.encoder
    assert isinstance(encoder, NamedEncoder)
    # weak: the test must not be what keeps the old model alive
    texts, images = weakref.ref(old.texts.batcher), weakref.ref(old.images.batcher)
    del old
    first, second = threading.Event(), threading.Event()
    encoder.gates = [first, second]
    model_thread = _state(admin).model_pool
    pool = ThreadPoolExecutor(8)  # not `with`: a request never answered fails, not hangs
    try:
        with caplog.at_level("INFO", logger="contrastive.service"):
            sent: list[Future[tuple[int, Any]]] = []
            for i in range(3):
                sent.append(pool.submit(_embed, admin, "m", f"before {i}"))
            assert encoder.entered.wait(60)  # one batch holds the model thread; two wait
            _until(lambda: _pending(texts) == 3)
            r = admin.put("/v1/admin/models/m", json={"reference": "fake-new"}, headers=BOSS)
            assert r.status_code == 202 and r.json()["replaces"] == "fake:old"
            # the new model's warm-up waits for the model thread, first in its queue (a
            # private attribute, read only to know when); the old model still serves
            _until(lambda: model_thread._work_queue.qsize() == 1)
            for i in range(3):
                sent.append(pool.submit(_embed, admin, "m", f"during {i}"))
            _until(lambda: _pending(texts) == 6)
            first.set()  # the first batch ends; the warm-up runs; the next batch (2) waits
            location = r.headers["location"]
            _until(lambda: admin.get(location, headers=BOSS).json()["status"] == "done")
            # swapped with more to answer than the batch holding the model thread: some of
            # them were still queued (4 or 5: the first batch took 1 or 2 of the first 3)
            (note,) = [m for m in caplog.messages if "replaced by fake:new" in m]
            found = re.search(r"(\d+) queued items finish on it", note)
            assert found is not None and int(found.group(1)) > s.max_batch_size, note
            second.set()
            answers = [f.result(timeout=60) for f in sent]
    finally:
        first.set()
        second.set()
        pool.shutdown(wait=False, cancel_futures=True)
    assert [(status, body["model"]) for status, body in answers] == [(200, "fake:old")] * 6
    status, body = _embed(admin, "m")
    assert (status, body["model"]) == (200, "fake:new")
    # the old model's batchers finish, then stop; and nothing keeps it in memory
    _until(lambda: not _running(texts) and not _running(images))
    held = weakref.ref(encoder)
    del encoder
    _until(lambda: _gone(held) and _gone(texts) and _gone(images))


def _pending(batcher: weakref.ref[Batcher[Any]]) -> int:
    alive = batcher()
    return 0 if alive is None else alive.pending


def _running(batcher: weakref.ref[Batcher[Any]]) -> bool:
    alive = batcher()
    return alive is not None and alive.running


def _gone(ref: weakref.ref[Any]) -> bool:
    gc.collect()
    return ref() is None


def test_replacing_the_default_keeps_it_the_default(admin: TestClient, loader: Loader) -> None:
    r = admin.put("/v1/admin/models/fake:test?wait=30", json={"reference": "fake-v2"}, headers=BOSS)
    assert r.status_code == 200 and r.json()["model_id"] == "fake:v2"
    assert _embed(admin)[1]["model"] == "fake:v2"
    ready = admin.get("/readyz").json()
    assert ready["model"] == "fake:v2" and [m["reference"] for m in ready["models"]] == ["fake-v2"]
    status, body = _embed(admin, "fake:test")
    assert status == 404 and "was replaced by 'fake:v2'" in body["error"]["message"]
    # the same reference again: a reload under the same id
    r = admin.put("/v1/admin/models/fake:v2?wait=30", json={"reference": "fake-v2"}, headers=BOSS)
    assert r.status_code == 200 and _embed(admin)[1]["model"] == "fake:v2"


def test_a_failed_start_up_model_can_be_replaced(loader: Loader, tmp_path: Path) -> None:
    s = Settings(admin_keys=["boss"], models=["broken-at-start"], collections_dir=str(tmp_path))
    with TestClient(create_app(s, encoder=FakeEncoder())) as client:
        _until(lambda: client.get("/readyz").json()["status"] == "failed")
        r = client.put(
            "/v1/admin/models/broken-at-start?wait=30", json={"reference": "fake-ok"}, headers=BOSS
        )
        assert r.status_code == 200, r.json()
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert [m["id"] for m in ready.json()["models"]] == ["fake:test", "fake:ok"]


# -- unload ---------------------------------------------------------------------------------
def test_an_unloaded_models_requests_and_collections_are_told(
    admin: TestClient, loader: Loader
) -> None:
    _load(admin, "fake-b")
    r = admin.post("/v1/collections", json={"name": "theirs", "model_id": "fake:b"}, headers=USER)
    assert r.status_code == 201, r.json()
    items = [{"id": "cat", "text": "a cat"}, {"id": "v", "vector": unit_rows(1, 8)[0].tolist()}]
    r = admin.post("/v1/collections/theirs/items", json={"items": items}, headers=USER)
    assert r.status_code == 200, r.json()

    r = admin.delete("/v1/admin/models/fake:b", headers=BOSS)
    assert r.status_code == 200
    assert r.json() == {"unloaded": "fake:b", "reference": "fake-b", "queued": 0}
    status, body = _embed(admin, "fake-b")
    assert status == 404 and body["error"]["code"] == "model_not_found"
    assert "'fake:b' was unloaded" in body["error"]["message"]
    search = "/v1/collections/theirs/search"
    for query in ({"text": "a cat"}, {"image": "aGVsbG8="}):
        r = admin.post(search, json={"queries": [query]}, headers=USER)
        assert r.status_code == 409, query
        err = r.json()["error"]
        assert err["code"] == "model_unloaded" and "'fake:b'" in err["message"]
    r = admin.post(
        "/v1/collections/theirs/items", json={"items": [{"id": "x", "text": "x"}]}, headers=USER
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_unloaded"
    # what needs no model still works
    vector = unit_rows(1, 8, seed=1)[0].tolist()
    for query in ({"vector": vector}, {"id": "cat"}):
        r = admin.post(search, json={"queries": [query], "k": 2}, headers=USER)
        assert r.status_code == 200, r.json()
    r = admin.post(
        "/v1/collections/theirs/items",
        json={"items": [{"id": "w", "vector": vector}]},
        headers=USER,
    )
    assert r.status_code == 200
    assert [c["id"] for c in admin.get("/v1/models", headers=USER).json()["data"]] == ["fake:test"]
    assert [m["id"] for m in admin.get("/readyz").json()["models"]] == ["fake:test"]
    assert admin.delete("/v1/admin/models/fake:b", headers=BOSS).status_code == 404
    # loaded again, the collection takes texts again
    _load(admin, "fake-b")
    r = admin.post(search, json={"queries": [{"text": "a cat"}], "k": 1}, headers=USER)
    assert r.status_code == 200 and r.json()["results"][0][0]["id"] == "cat"


def test_the_default_is_unloaded_only_once_another_is(admin: TestClient, loader: Loader) -> None:
    r = admin.delete("/v1/admin/models/fake:test", headers=BOSS)
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_is_default"
    _load(admin, "fake-b")
    r = admin.put("/v1/admin/default", json={"model": "fake-b"}, headers=BOSS)
    assert r.status_code == 200 and r.json() == {"default": "fake:b", "reference": "fake-b"}
    assert _embed(admin)[1]["model"] == "fake:b"
    assert admin.delete("/v1/admin/models/fake:test", headers=BOSS).status_code == 200
    assert [c["id"] for c in admin.get("/v1/models", headers=USER).json()["data"]] == ["fake:b"]
    r = admin.put("/v1/admin/default", json={"model": "nobody"}, headers=BOSS)
    assert r.status_code == 404


# -- one operation at a time per model ---------------------------------------------------------
def test_a_second_operation_on_a_model_is_refused_while_one_runs(
    admin: TestClient, loader: Loader
) -> None:
    _load(admin, "fake-b")
    loader.hold.clear()
    r = admin.put("/v1/admin/models/fake-b", json={"reference": "fake-c"}, headers=BOSS)
    assert r.status_code == 202
    op = r.json()["id"]
    refused = [
        admin.put("/v1/admin/models/fake:b", json={"reference": "fake-d"}, headers=BOSS),
        admin.delete("/v1/admin/models/fake:b", headers=BOSS),
        admin.put("/v1/admin/default", json={"model": "fake:b"}, headers=BOSS),
        admin.post("/v1/admin/models", json={"reference": "fake-c"}, headers=BOSS),
    ]
    for r in refused:
        assert r.status_code == 409, r.json()
        assert r.json()["error"]["code"] == "model_busy"
        assert f"operation {op}" in r.json()["error"]["message"]
        assert r.headers["retry-after"] == "5"
    # other models are free meanwhile; their loads wait their turn in the load thread
    other = admin.post("/v1/admin/models", json={"reference": "fake-e"}, headers=BOSS)
    assert other.status_code == 202
    assert _embed(admin, "fake:b")[1]["model"] == "fake:b"  # still served
    loader.hold.set()
    for location in (r.headers["location"] for r in (other,)):
        _until(lambda loc=location: admin.get(loc, headers=BOSS).json()["status"] == "done")
    _until(lambda: admin.get(f"/v1/admin/operations/{op}", headers=BOSS).json()["status"] == "done")
    assert [c["id"] for c in admin.get("/v1/models", headers=USER).json()["data"]] == [
        "fake:test",
        "fake:c",
        "fake:e",
    ]


def test_concurrent_loads_of_one_reference_start_one_operation(
    admin: TestClient, loader: Loader
) -> None:
    loader.hold.clear()
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(
                lambda _: (
                    admin.post(
                        "/v1/admin/models", json={"reference": "fake-b"}, headers=BOSS
                    ).status_code
                ),
                range(4),
            )
        )
    loader.hold.set()
    assert sorted(answers) == [202, 409, 409, 409]


# -- what it leaves behind --------------------------------------------------------------------
def test_operations_are_counted_and_logged(
    admin: TestClient, loader: Loader, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="contrastive.service"):
        _load(admin, "fake-b")
        admin.put("/v1/admin/models/fake-b?wait=30", json={"reference": "fake-c"}, headers=BOSS)
        admin.delete("/v1/admin/models/fake-c", headers=BOSS)
        admin.post("/v1/admin/models?wait=30", json={"reference": "broken"}, headers=BOSS)
    text = admin.get("/metrics", headers=USER).text
    for line in (
        'contrastive_model_operations_total{operation="startup",outcome="ok"} 1.0',
        'contrastive_model_operations_total{operation="load",outcome="ok"} 1.0',
        'contrastive_model_operations_total{operation="load",outcome="failed"} 1.0',
        'contrastive_model_operations_total{operation="replace",outcome="ok"} 1.0',
        'contrastive_model_operations_total{operation="unload",outcome="ok"} 1.0',
        "contrastive_models_served 1.0",
        "contrastive_model_load_seconds_count 3.0",
    ):
        assert line in text, line
    logged = caplog.text
    assert "replaced by fake:c" in logged and "model fake:c unloaded" in logged
    assert "broken" in logged and "failed" in logged


def test_a_load_under_way_at_shutdown_is_cancelled(loader: Loader, tmp_path: Path) -> None:
    s = Settings(admin_keys=["boss"], collections_dir=str(tmp_path))
    loader.hold.clear()
    try:
        with TestClient(create_app(s, encoder=FakeEncoder())) as client:
            wait_ready(client)
            r = client.post("/v1/admin/models", json={"reference": "fake-b"}, headers=BOSS)
            assert r.status_code == 202
            lifecycle = _state(client).lifecycle
    finally:
        loader.hold.set()
    (op,) = lifecycle.operations.values()
    assert (op.status, op.error) == ("cancelled", "the server shut down during the load")
    assert [m.ref for m in lifecycle.models] == ["builtin"]


# -- attacks: changes racing requests and each other ------------------------------------------
def _hammer(
    client: TestClient, names: list[str | None], stop: threading.Event, seen: list[Any]
) -> None:
    """Text requests to each of `names` in turn until `stop`; appends (name, status,
    model id or error code) to `seen`."""
    while not stop.is_set():
        for name in names:
            status, body = _embed(client, name)
            seen.append((name, status, body.get("model") or body["error"]["code"]))


def test_requests_to_a_loading_model_are_404_while_the_others_serve(
    admin: TestClient, loader: Loader
) -> None:
    """Until the new model is warm it is not served (404 model_not_found, as documented);
    the others answer throughout; then the new one answers."""
    _load(admin, "fake-b")
    loader.hold.clear()
    r = admin.post("/v1/admin/models", json={"reference": "fake-c"}, headers=BOSS)
    assert r.status_code == 202
    stop, seen = threading.Event(), []
    with ThreadPoolExecutor(1) as pool:
        traffic = pool.submit(_hammer, admin, [None, "fake:b", "fake-c"], stop, seen)
        _until(lambda: ("fake-c", 404, "model_not_found") in seen)  # asked while it loads
        loader.hold.set()
        location = r.headers["location"]
        _until(lambda: admin.get(location, headers=BOSS).json()["status"] == "done")
        _until(lambda: ("fake-c", 200, "fake:c") in seen)
        stop.set()
        traffic.result(timeout=60)
    for name, status, model in seen:
        if name == "fake-c":
            assert (status, model) in ((404, "model_not_found"), (200, "fake:c")), (name, status)
        else:
            assert (status, model) == (200, name or "fake:test"), (name, status, model)


def test_two_references_to_one_model_id_loading_at_once_serve_it_once(
    admin: TestClient, loader: Loader
) -> None:
    """Different references claim different names, so both loads start; both load model
    id fake:b. The first warm joins; the other is refused once its id is known, and the
    copy it loaded is freed."""
    loader.hold.clear()
    first = admin.post("/v1/admin/models", json={"reference": "fake-b@1"}, headers=BOSS)
    second = admin.post("/v1/admin/models", json={"reference": "fake-b@2"}, headers=BOSS)
    assert (first.status_code, second.status_code) == (202, 202)
    loader.hold.set()
    ends = []
    for r in (first, second):
        location = r.headers["location"]
        _until(lambda loc=location: admin.get(loc, headers=BOSS).json()["status"] != "loading")
        ends.append(admin.get(location, headers=BOSS).json())
    assert sorted(e["status"] for e in ends) == ["done", "failed"]
    (failed,) = [e for e in ends if e["status"] == "failed"]
    assert "already serves" in failed["error"]
    ids = [c["id"] for c in admin.get("/v1/models", headers=USER).json()["data"]]
    assert ids == ["fake:test", "fake:b"]
    _until(lambda: _alive(loader) == 1)  # the refused copy is freed


def _alive(loader: Loader) -> int:
    """How many of the models the loader made are still in memory."""
    gc.collect()
    return sum(ref() is not None for ref in loader.made)


def test_an_unload_lets_the_requests_queued_on_the_model_finish_on_it(
    fake_app_factory: Any, loader: Loader, tmp_path: Path
) -> None:
    """Requests already queued on a model when it is unloaded are answered by it (none
    fails); later ones get 404 naming the unload; then the model is freed."""
    s = Settings(admin_keys=["boss"], max_batch_size=1, collections_dir=str(tmp_path))
    admin = fake_app_factory(s)
    _load(admin, "fake-b")
    encoder = _state(admin).models.named("fake:b").require().encoder
    assert isinstance(encoder, NamedEncoder)
    gate = threading.Event()
    encoder.gates = [gate]  # the first batch holds the model thread; the rest queue
    texts = weakref.ref(_state(admin).models.named("fake:b").require().texts.batcher)
    pool = ThreadPoolExecutor(4)  # not `with`: a request never answered fails, not hangs
    try:
        sent = [pool.submit(_embed, admin, "fake:b", f"queued {i}") for i in range(3)]
        assert encoder.entered.wait(60)
        _until(lambda: _pending(texts) == 3)
        r = admin.delete("/v1/admin/models/fake:b", headers=BOSS)
        assert r.status_code == 200 and r.json()["queued"] == 3
        status, body = _embed(admin, "fake:b")
        assert status == 404 and "'fake:b' was unloaded" in body["error"]["message"]
        gate.set()
        answers = [f.result(timeout=60) for f in sent]
    finally:
        gate.set()
        pool.shutdown(wait=False, cancel_futures=True)
    assert [(status, body["model"]) for status, body in answers] == [(200, "fake:b")] * 3
    held = weakref.ref(encoder)
    del encoder
    _until(lambda: _gone(held) and _gone(texts))


@pytest.mark.parametrize("reference", ["broken-weights", "broken-warm-up"])
def test_a_load_that_fails_while_others_serve_fails_alone(
    admin: TestClient, loader: Loader, reference: str
) -> None:
    """The load fails in the load thread (unreadable weights) or in its warm-up on the
    shared model thread (a device error): 422 model_load_failed naming why, and the
    served models answer every request meanwhile and after."""
    _load(admin, "fake-b")
    stop, seen = threading.Event(), []
    with ThreadPoolExecutor(1) as pool:
        traffic = pool.submit(_hammer, admin, [None, "fake:b"], stop, seen)
        _until(lambda: len(seen) > 0)
        r = admin.post("/v1/admin/models?wait=30", json={"reference": reference}, headers=BOSS)
        stop.set()
        traffic.result(timeout=60)
    assert r.status_code == 422, r.json()
    err = r.json()["error"]
    assert err["code"] == "model_load_failed" and "\n" not in err["message"]
    assert "corrupt" in err["message"] or "illegal memory access" in err["message"]
    assert seen and all(status == 200 for _, status, _ in seen), seen
    assert [c["id"] for c in admin.get("/v1/models", headers=USER).json()["data"]] == [
        "fake:test",
        "fake:b",
    ]
    assert admin.get("/readyz").status_code == 200
    assert _embed(admin, "fake:b")[0] == 200
    _until(lambda: _alive(loader) == 1)  # a model that failed its warm-up is freed


def test_an_unload_while_a_requests_images_decode_answers_it_on_the_model(
    fake_app_factory: Any, loader: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request has the model and its images are in the decode pool (admitted to the
    batcher, not yet queued) when the model is unloaded: it is still answered by it."""
    import contrastkit.service.runtime.embedding as embedding

    decoding, resume = threading.Event(), threading.Event()
    real = embedding.decode_image

    def slow_decode(*args: Any, **kwargs: Any) -> Any:
        decoding.set()
        assert resume.wait(60)
        return real(*args, **kwargs)

    admin = fake_app_factory(Settings(admin_keys=["boss"], collections_dir=str(tmp_path)))
    _load(admin, "fake-b")
    monkeypatch.setattr(embedding, "decode_image", slow_decode)
    png = image_bytes(Image.new("RGB", (20, 20), "red"))
    files = [("files", ("x.png", png, "image/png"))]
    with ThreadPoolExecutor(1) as pool:
        sent = pool.submit(
            lambda: admin.post(
                "/v1/embed/image", data={"model": "fake:b"}, files=files, headers=BOSS
            )
        )
        assert decoding.wait(60)
        r = admin.delete("/v1/admin/models/fake:b", headers=BOSS)
        assert r.status_code == 200
        resume.set()
        answer = sent.result(timeout=60)
    assert answer.status_code == 200, answer.json()
    assert answer.json()["model"] == "fake:b"
