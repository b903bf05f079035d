"""The Qdrant backend's own choices, in local mode: stored layout, id mapping, filter
translation, payload indexes, interrupted creates and drops, configuration."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("qdrant_client")
from qdrant_client import models

from contrastkit.service.index.embedded.backend import FaissBackend
from contrastkit.service.index.factory import open_backend
from contrastkit.service.index.filters import parse_filter
from contrastkit.service.index.qdrant.backend import QdrantBackend
from contrastkit.service.index.qdrant.connection import QdrantConfig
from contrastkit.service.index.qdrant.filters import index_schemas, to_qdrant
from contrastkit.service.index.qdrant.points import point_id
from contrastkit.service.index.types import CollectionError
from contrastkit.service.settings import Settings
from contrastkit.service.state import open_collections

F = models.FieldCondition
KW, FLOAT, BOOL = (
    models.PayloadSchemaType.KEYWORD,
    models.PayloadSchemaType.FLOAT,
    models.PayloadSchemaType.BOOL,
)


def test_item_ids_map_to_fixed_uuids() -> None:
    # stored points are found by these: the mapping must never change
    assert point_id("cat") == "2745169d-974c-55a7-ba1e-559675a4c929"
    assert point_id("") == "768eb1cb-34e0-5efe-a213-01ef9af3b08f"
    assert point_id("cat") != point_id("Cat")


def test_points_keep_the_id_and_metadata_apart_from_ours(qdrant_backend: QdrantBackend) -> None:
    qdrant_backend.create("c", "m", 3)
    vec = np.array([[3.0, 4.0, 0.0]], np.float32) / 5
    qdrant_backend.get("c").upsert(["a/b"], vec, [{"_id": "x", "k": 1}])
    (rec,) = qdrant_backend.client.retrieve("contrastive-c", [point_id("a/b")], with_vectors=True)
    assert rec.payload == {"_id": "a/b", "meta": {"_id": "x", "k": 1}, "_keys": ["_id", "k"]}
    assert rec.vector == pytest.approx([0.6, 0.8, 0.0])
    (cfg,) = qdrant_backend.client.retrieve("contrastive_collections", [point_id("c")])
    assert cfg.payload is not None
    assert (cfg.payload["model_id"], cfg.payload["dim"], cfg.payload["name"]) == ("m", 3, "c")
    params = qdrant_backend.client.get_collection("contrastive-c").config.params.vectors
    assert isinstance(params, models.VectorParams)
    assert params.distance == models.Distance.COSINE


@pytest.mark.parametrize(
    ("where", "must", "must_not"),
    [
        ({"label": "cat"}, [F(key="meta.label", match=models.MatchValue(value="cat"))], None),
        ({"ok": False}, [F(key="meta.ok", match=models.MatchValue(value=False))], None),
        # numbers by value: 2 also matches 2.0, which Qdrant's exact match would not
        ({"n": 2}, [F(key="meta.n", range=models.Range(gte=2, lte=2))], None),
        (
            {"y": {"$gte": 1, "$lt": 5.5}},
            [
                F(key="meta.y", range=models.Range(gte=1)),
                F(key="meta.y", range=models.Range(lt=5.5)),
            ],
            None,
        ),
        ({"a.b": "x"}, [F(key='meta."a.b"', match=models.MatchValue(value="x"))], None),
        ({"c": {"$exists": True}}, [F(key="_keys", match=models.MatchValue(value="c"))], None),
        ({"c": {"$exists": False}}, None, [F(key="_keys", match=models.MatchValue(value="c"))]),
        ({'q"x': 1}, None, None),  # no Qdrant path names it: left to the exact check
        (
            {"t": {"$in": ["a", "b", 3, True]}},
            [
                models.Filter(
                    should=[
                        F(key="meta.t", match=models.MatchAny(any=["a", "b"])),
                        F(key="meta.t", range=models.Range(gte=3, lte=3)),
                        F(key="meta.t", match=models.MatchValue(value=True)),
                    ]
                )
            ],
            None,
        ),
    ],
)
def test_filters_translate_to_qdrant(where: Any, must: Any, must_not: Any) -> None:
    assert to_qdrant(parse_filter(where)) == models.Filter(must=must, must_not=must_not)


def test_payload_index_types_follow_the_values() -> None:
    where = {"s": {"$in": ["a"]}, "n": 1.5, "r": {"$lt": 3}, "b": True, "e": {"$exists": False}}
    assert index_schemas(parse_filter(where)) == {
        "meta.s": KW,
        "meta.n": FLOAT,
        "meta.r": FLOAT,
        "meta.b": BOOL,
        "_keys": KW,
    }


def test_filtered_fields_get_payload_indexes_once(
    qdrant_backend: QdrantBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str, Any]] = []
    real = qdrant_backend.client.create_payload_index

    def spy(collection_name: str, field_name: str, field_schema: Any, **kw: Any) -> Any:
        calls.append((collection_name, field_name, field_schema))
        return real(collection_name, field_name=field_name, field_schema=field_schema, **kw)

    monkeypatch.setattr(qdrant_backend.client, "create_payload_index", spy)
    qdrant_backend.create("c", "m", 3)
    h = qdrant_backend.get("c")
    h.upsert(["a"], np.eye(3, dtype=np.float32)[:1], [{"label": "x", "year": 2000}])
    where = {"label": "x", "year": {"$gte": 1999}, "cap": {"$exists": False}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # local mode's known warnings are silenced, no others
        assert [x.id for x in h.search(np.eye(3, dtype=np.float32)[:1], 1, where)[0]] == ["a"]
    again = qdrant_backend.get("c")  # a new handle: the backend's cache still holds
    again.search(np.eye(3, dtype=np.float32)[:1], 1, where)  # cached: no new calls
    assert calls == [
        ("contrastive-c", "meta.label", KW),
        ("contrastive-c", "meta.year", FLOAT),
        ("contrastive-c", "_keys", KW),
    ]
    qdrant_backend.drop("c")  # a new collection of the same name is indexed afresh
    qdrant_backend.create("c", "m", 3)
    qdrant_backend.get("c").delete_where({"label": "x"})
    assert calls[-1] == ("contrastive-c", "meta.label", KW)


def test_a_collection_without_its_config_is_a_problem_until_dropped(
    qdrant_backend: QdrantBackend,
) -> None:
    qdrant_backend.create("good", "m", 3)
    qdrant_backend.client.create_collection(  # what a create cut short leaves
        "contrastive-half",
        vectors_config=models.VectorParams(size=3, distance=models.Distance.COSINE),
    )
    assert [c.name for c in qdrant_backend.list()] == ["good"]
    assert "interrupted create" in qdrant_backend.problems["half"]
    with pytest.raises(CollectionError) as err:
        qdrant_backend.get("half")
    assert err.value.code == "collection_corrupt"
    with pytest.raises(CollectionError) as err:
        qdrant_backend.create("half", "m", 3)
    assert err.value.code == "collection_exists"
    qdrant_backend.drop("half")
    assert qdrant_backend.problems == {}
    qdrant_backend.create("half", "m", 3)
    assert [c.name for c in qdrant_backend.list()] == ["good", "half"]


def test_a_config_without_its_collection_is_a_problem_until_dropped(
    qdrant_backend: QdrantBackend,
) -> None:
    qdrant_backend.create("c", "m", 3)
    qdrant_backend.client.delete_collection("contrastive-c")  # what a drop cut short leaves
    assert qdrant_backend.list() == []
    assert "interrupted drop" in qdrant_backend.problems["c"]
    with pytest.raises(CollectionError) as err:
        qdrant_backend.get("c")
    assert err.value.code == "collection_corrupt"
    qdrant_backend.drop("c")
    assert qdrant_backend.problems == {}


def test_an_unreadable_config_is_a_problem(qdrant_backend: QdrantBackend) -> None:
    qdrant_backend.create("c", "m", 3)
    qdrant_backend.client.set_payload(
        "contrastive_collections", {"format_version": 99}, [point_id("c")]
    )
    assert "format_version 99" in qdrant_backend.problems["c"]
    with pytest.raises(CollectionError) as err:
        qdrant_backend.get("c")
    assert err.value.code == "collection_corrupt"
    qdrant_backend.drop("c")
    assert qdrant_backend.problems == {} and qdrant_backend.list() == []


def test_a_collection_dropped_elsewhere_answers_not_found(qdrant_backend: QdrantBackend) -> None:
    qdrant_backend.create("c", "m", 3)
    h = qdrant_backend.get("c")
    qdrant_backend.drop("c")  # e.g. by another replica, after this one opened its handle
    for call in (h.count, lambda: h.get("x"), lambda: h.search(np.eye(3, dtype=np.float32), 1)):
        with pytest.raises(CollectionError) as err:
            call()
        assert err.value.code == "collection_not_found"


def test_a_bad_scroll_cursor_is_refused(qdrant_backend: QdrantBackend) -> None:
    qdrant_backend.create("c", "m", 3)
    with pytest.raises(CollectionError) as err:
        qdrant_backend.get("c").scroll("id17", 5)
    assert err.value.code == "invalid_request"


def test_a_local_folder_open_elsewhere_is_store_unavailable(qdrant_backend: QdrantBackend) -> None:
    with pytest.raises(CollectionError) as err:
        QdrantBackend(qdrant_backend.config)
    assert err.value.code == "store_unavailable"


def test_prefixes_keep_collections_apart(tmp_path: Path) -> None:
    first = QdrantBackend(QdrantConfig(path=tmp_path / "q", prefix="app1"))
    first.create("c", "m", 3)
    first.close()
    second = QdrantBackend(QdrantConfig(path=tmp_path / "q", prefix="app2"))
    assert second.list() == [] and second.problems == {}
    second.create("c", "other", 4)
    second.close()
    first = QdrantBackend(QdrantConfig(path=tmp_path / "q", prefix="app1"))
    assert [(c.name, c.model_id) for c in first.list()] == [("c", "m")]
    first.close()


def test_config_checks() -> None:
    cfg = QdrantConfig(url="https://q.example:6333", api_key="s3")
    assert (cfg.url, cfg.api_key, cfg.where) == ("https://q.example:6333", "s3", cfg.url)
    assert "s3" not in repr(cfg)
    local = QdrantConfig(path=Path("/data/q"))
    assert (local.url, local.path, local.where) == (
        None,
        Path("/data/q"),
        "local Qdrant storage /data/q",
    )
    for bad in ({"url": "q.example:6333"}, {"prefix": "a/b"}, {"prefix": "app-1"}, {"timeout": 0}):
        with pytest.raises(ValueError):
            QdrantConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        QdrantConfig(url="http://x", path=Path("/y"))


def test_open_backend(tmp_path: Path) -> None:
    b = open_backend("qdrant", tmp_path, QdrantConfig(path=tmp_path / "q"))
    assert isinstance(b, QdrantBackend)
    b.close()
    with pytest.raises(ValueError, match="QdrantConfig"):  # nothing is read from the environment
        open_backend("qdrant", tmp_path)
    f = open_backend("faiss", tmp_path / "f")
    assert isinstance(f, FaissBackend)
    f.close()


def test_every_qdrant_setting_reaches_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's Settings own the Qdrant variables: url, key, timeout and prefix all
    arrive (the removed environment reader ignored the last two)."""
    monkeypatch.setenv("CONTRASTIVE_QDRANT_URL", "https://q.example:6333")
    monkeypatch.setenv("CONTRASTIVE_QDRANT_API_KEY", "s3")
    monkeypatch.setenv("CONTRASTIVE_QDRANT_TIMEOUT", "3")
    monkeypatch.setenv("CONTRASTIVE_QDRANT_PREFIX", "app1")
    s = Settings(collections_backend="qdrant", collections_dir=str(tmp_path), device="cpu")
    b = open_collections(s)  # makes no request yet
    assert isinstance(b, QdrantBackend)
    assert b.config == QdrantConfig(
        url="https://q.example:6333", api_key="s3", timeout=3, prefix="app1"
    )
    b.close()
    local = open_collections(
        Settings(
            collections_backend="qdrant",
            qdrant_url=None,
            collections_dir=str(tmp_path),
            device="cpu",
        )
    )
    assert isinstance(local, QdrantBackend) and local.config.path == tmp_path / "qdrant"
    local.close()
