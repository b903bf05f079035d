"""Several models in one server (`--model` repeated): requests choose by `model`, the
first is the default, /v1/models and /readyz list each, collections stay in their space."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from contrastkit.service.app import create_app
from contrastkit.service.commands.serve import add_arguments, settings_from_args
from contrastkit.service.runtime.served import LoadedModel, module_bytes
from contrastkit.service.settings import Settings
from tests.helpers import FakeEncoder, wait_ready, wait_until


class OtherEncoder(FakeEncoder):
    """Another 8-d space: another id, other projections, texts negated."""

    def __init__(self) -> None:
        super().__init__()
        self.info = dataclasses.replace(self.info, model_id="fake:other")
        self.proj = torch.randn(3, 8, generator=torch.Generator().manual_seed(7))
        self.head = torch.nn.Linear(8, 8)  # a module, so its memory can be counted

    def _text_forward(self, texts: list[str]) -> torch.Tensor:
        return -super()._text_forward(texts)


def _client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gate: threading.Event | None = None
) -> TestClient:
    def load(ref: str, *_: object) -> FakeEncoder:
        assert ref == "other-ref"
        if gate is not None:
            gate.wait(30)
        return OtherEncoder()

    monkeypatch.setattr("contrastkit.service.runtime.served.load_encoder", load)
    s = Settings(model="fake", models=["other-ref"], collections_dir=str(tmp_path / "c"))
    return TestClient(create_app(s, encoder=FakeEncoder()))


@pytest.fixture
def two(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    with _client(tmp_path, monkeypatch) as client:
        wait_ready(client)
        yield client


def _embed(client: TestClient, model: str | None) -> tuple[str, np.ndarray]:
    body: dict[str, object] = {"texts": ["a cat"]} | ({"model": model} if model else {})
    r = client.post("/v1/embed/text", json=body)
    assert r.status_code == 200, r.json()
    return r.json()["model"], np.array(r.json()["embeddings"][0])


def test_requests_choose_a_model_by_id_or_reference_and_default_to_the_first(
    two: TestClient,
) -> None:
    default_id, default = _embed(two, None)
    assert default_id == "fake:test"
    for name in ("fake:other", "other-ref"):
        model_id, other = _embed(two, name)
        assert model_id == "fake:other"
        np.testing.assert_allclose(other, -default, atol=1e-6)  # the other space indeed
    r = two.post("/v1/embeddings", json={"input": "a cat", "model": "other-ref"})
    assert r.status_code == 200 and r.json()["model"] == "fake:other"
    r = two.post("/v1/embed/text", json={"texts": ["a cat"], "model": "gpt-9"})
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "model_not_found"
    assert "'fake:test'" in err["message"] and "'fake:other'" in err["message"]


def test_models_and_readyz_list_every_model(two: TestClient) -> None:
    cards = two.get("/v1/models").json()["data"]
    assert [(c["id"], c["reference"], c["default"]) for c in cards] == [
        ("fake:test", "fake", True),
        ("fake:other", "other-ref", False),
    ]
    assert cards[1]["memory_bytes"] == (8 * 8 + 8) * 4  # the Linear's weight and bias
    ready = two.get("/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == "fake:test"
    assert [(m["reference"], m["status"], m["device"]) for m in ready["models"]] == [
        ("fake", "ready", "cpu"),
        ("other-ref", "ready", "cpu"),
    ]


def test_collections_embed_with_the_model_of_their_space(two: TestClient) -> None:
    r = two.post("/v1/collections", json={"name": "theirs", "model_id": "other-ref"})
    assert r.status_code == 201, r.json()
    assert (r.json()["model_id"], r.json()["dim"]) == ("fake:other", 8)
    r = two.post("/v1/collections/theirs/items", json={"items": [{"id": "cat", "text": "a cat"}]})
    assert r.status_code == 200, r.json()
    stored = np.array(
        two.get("/v1/collections/theirs/items/cat?include_vector=true").json()["vector"]
    )
    _, other = _embed(two, "fake:other")
    np.testing.assert_allclose(stored, other / np.linalg.norm(other), atol=1e-5)
    r = two.post("/v1/collections", json={"name": "x", "model_id": "nobody"})
    assert r.status_code == 422 and "not a loaded model" in r.json()["error"]["message"]


def test_the_default_serves_while_another_model_still_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    with _client(tmp_path, monkeypatch, gate) as client:
        try:
            wait_until(
                lambda: client.get("/readyz").json()["models"][0]["status"] == "ready",
                120,
                "the default model ready",
            )
            ready = client.get("/readyz")
            assert ready.status_code == 503
            rows = ready.json()["models"]
            assert [m["status"] for m in rows] == ["ready", "loading"]
            assert "loading model other-ref" in rows[1]["reason"]
            assert _embed(client, None)[0] == "fake:test"  # the default already serves
            r = client.post("/v1/embed/text", json={"texts": ["x"], "model": "other-ref"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
        finally:
            gate.set()
        wait_ready(client)


def test_model_repeated_on_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    s = settings_from_args(p.parse_args(["--model", "builtin", "--model", "/exports/run1"]))
    assert (s.model, s.models, s.model_refs) == (
        "builtin",
        ["/exports/run1"],
        ["builtin", "/exports/run1"],
    )
    monkeypatch.setenv("CONTRASTIVE_MODELS", "a, b")
    assert Settings().model_refs == ["builtin", "a", "b"]


def test_module_bytes_counts_shared_tensors_once() -> None:
    class Holder:
        def __init__(self) -> None:
            self.a = torch.nn.Linear(4, 4, bias=False)
            self.b = self.a  # the same weights under two names
            self.c = "not a module"

    assert module_bytes(Holder()) == 16 * 4
    assert module_bytes(object()) is None


def test_a_loaded_model_is_one_frozen_value(two: TestClient) -> None:
    """A model's encoder and embedders are made together, once it is warm: none of them is
    optional, and none can be replaced on its own."""
    fields = dataclasses.fields(LoadedModel)
    assert [f.name for f in fields] == ["encoder", "images", "texts", "classifiers"]
    assert not any("None" in str(f.type) for f in fields)
    for served in two.app.state.service.models:  # type: ignore[attr-defined]
        loaded = served.require()
        with pytest.raises(dataclasses.FrozenInstanceError):
            loaded.encoder = FakeEncoder()  # type: ignore[misc]
