"""`contrastkit.service.index.transfer`: a collection to a JSON Lines file and back, on FAISS and on
Qdrant's local mode, and the `contrastive index export|import` commands over it."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contrastkit.service.cli import main
from contrastkit.service.index.backend import CollectionBackend, iter_items
from contrastkit.service.index.embedded.backend import FaissBackend
from contrastkit.service.index.transfer import (
    FORMAT,
    TransferError,
    decode_vector,
    encode_vector,
    export_collection,
    import_collection,
    read_file_header,
)
from contrastkit.service.index.types import CollectionError, IndexSpec
from tests.helpers import free_port, unit_rows

pytest.importorskip("qdrant_client")
from contrastkit.service.index.qdrant.backend import QdrantBackend
from contrastkit.service.index.qdrant.connection import QdrantConfig

DIM = 16
SPEC = IndexSpec(kind="hnsw", m=12, ef_construction=40, ef_search=64)


def exact_unit(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors whose norm is exactly 1 in float32 (4 entries of +-0.5, or one of +-1):
    Qdrant's cosine distance re-normalises what it stores, which leaves these unchanged
    but can move the last bit of an arbitrary unit vector."""
    rng = np.random.default_rng(seed)
    v = np.zeros((n, DIM), np.float32)
    for row in v:
        if rng.random() < 0.2:
            row[rng.integers(DIM)] = rng.choice([-1.0, 1.0])
        else:
            row[rng.choice(DIM, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return v


def meta(i: int) -> dict[str, Any]:
    """Metadata with what must survive: any keys ours included, unicode, nesting, null."""
    return {
        "i": i,
        "name": f"fichier-{i}-ü-✓",
        "_id": "not the id",
        "meta": {"nested": [i, None, True, 0.5]},
        "none": None,
    }


def source(i: int) -> str | None:
    """Every other item has a source (a path; unicode too), the others none."""
    return f"/photos/ü-{i}.jpg" if i % 2 else None


def snapshot(backend: CollectionBackend, name: str) -> dict[str, tuple[Any, bytes, str | None]]:
    """id -> (metadata, the vector's bytes, the source): what a round trip must keep."""
    out: dict[str, tuple[Any, bytes, str | None]] = {}
    for it in iter_items(backend.get(name), 333):
        assert it.vector is not None and it.vector.dtype == np.float32
        out[it.id] = (it.metadata, it.vector.tobytes(), it.source)
    return out


def fill(backend: CollectionBackend, name: str, vectors: np.ndarray) -> None:
    backend.create(name, "test:model", DIM, SPEC)
    ids = [f"item/{i:05d}" for i in range(len(vectors))]
    n = len(vectors)
    backend.get(name).upsert(
        ids, vectors, [meta(i) for i in range(n)], [source(i) for i in range(n)]
    )


def item_lines(path: Path) -> list[str]:
    return sorted(path.read_text(encoding="utf-8").splitlines()[1:])


def test_faiss_to_file_to_qdrant_and_back_is_identical(
    faiss_backend: FaissBackend, qdrant_backend: QdrantBackend, tmp_path: Path
) -> None:
    vectors = exact_unit(2345)  # more than one import batch and one export page
    fill(faiss_backend, "photos", vectors)
    want = snapshot(faiss_backend, "photos")
    seen: list[tuple[int, int]] = []

    header = export_collection(
        faiss_backend,
        "photos",
        tmp_path / "a.jsonl",
        progress=lambda d, n: seen.append((d, n)),
        every=1000,
    )
    assert (header.name, header.model_id, header.dim, header.count) == (
        "photos",
        "test:model",
        DIM,
        2345,
    )
    assert header.index == SPEC
    assert seen == [(1000, 2345), (2000, 2345)]
    assert not list(tmp_path.glob(".*tmp*"))  # the temp file was renamed into place

    assert import_collection(qdrant_backend, "photos", tmp_path / "a.jsonl") == 2345
    info = qdrant_backend.get("photos").info()
    assert (info.model_id, info.dim, info.count, info.index) == ("test:model", DIM, 2345, SPEC)
    assert snapshot(qdrant_backend, "photos") == want
    assert sum(1 for _, _, src in want.values() if src) == 2345 // 2  # sources travel too

    export_collection(qdrant_backend, "photos", tmp_path / "b.jsonl")
    assert item_lines(tmp_path / "b.jsonl") == item_lines(tmp_path / "a.jsonl")
    assert import_collection(faiss_backend, "back", tmp_path / "b.jsonl") == 2345
    assert snapshot(faiss_backend, "back") == want
    assert faiss_backend.get("back").info().index == SPEC
    hits = faiss_backend.get("back").search(vectors[7:8], 1)[0]
    assert hits[0].id == "item/00007" and hits[0].metadata == meta(7)


def test_the_file_keeps_any_vector_bit_for_bit(
    faiss_backend: FaissBackend, qdrant_backend: QdrantBackend, tmp_path: Path
) -> None:
    """FAISS -> file -> FAISS is exact for any float32; Qdrant re-normalises what it stores,
    which can move the last bit of a vector (~1e-8)."""
    vectors = unit_rows(300, DIM, 3)
    fill(faiss_backend, "c", vectors)
    export_collection(faiss_backend, "c", tmp_path / "c.jsonl")
    import_collection(faiss_backend, "d", tmp_path / "c.jsonl")
    assert snapshot(faiss_backend, "d") == snapshot(faiss_backend, "c")
    import_collection(qdrant_backend, "q", tmp_path / "c.jsonl")
    for it in iter_items(qdrant_backend.get("q")):
        assert it.vector is not None
        np.testing.assert_allclose(it.vector, vectors[int(it.id[5:])], rtol=0, atol=1e-7)
    for v in vectors[:5]:
        assert decode_vector(encode_vector(v), DIM).tobytes() == v.tobytes()
    big_endian = base64.b64encode(vectors[0].astype(">f4").tobytes()).decode()
    assert decode_vector(big_endian, DIM).tobytes() != vectors[0].tobytes()  # "<f4" it is


def test_an_empty_collection_round_trips(faiss_backend: FaissBackend, tmp_path: Path) -> None:
    faiss_backend.create("empty", "m", DIM)
    assert export_collection(faiss_backend, "empty", tmp_path / "e.jsonl").count == 0
    assert len((tmp_path / "e.jsonl").read_text().splitlines()) == 1
    assert import_collection(faiss_backend, "empty2", tmp_path / "e.jsonl") == 0
    assert faiss_backend.get("empty2").count() == 0


def _exported(faiss_backend: FaissBackend, tmp_path: Path, n: int = 10) -> list[str]:
    fill(faiss_backend, "src", exact_unit(n))
    export_collection(faiss_backend, "src", tmp_path / "src.jsonl")
    return (tmp_path / "src.jsonl").read_text(encoding="utf-8").splitlines()


def _bad_vector(line: str) -> str:
    obj = json.loads(line)
    obj["vector"] = obj["vector"][:-8]
    return json.dumps(obj)


@pytest.mark.parametrize(
    ("corrupt", "says"),
    [
        (lambda line: line[: len(line) // 2], "not JSON"),
        (_bad_vector, "16 float32 take 88 (64 bytes)"),
        (lambda line: line.replace('"id":', '"di":'), "unknown fields ['di']"),
        (lambda line: '{"id": 5, "metadata": {}, "vector": ""}', "id must be a string"),
        (lambda line: "", "an empty line inside the file"),
        (lambda line: line[:-1] + ',"source":"a\\u0000b"}', "source contains a NUL"),
    ],
)
def test_a_corrupted_line_stops_the_import_naming_the_line(
    faiss_backend: FaissBackend,
    qdrant_backend: QdrantBackend,
    tmp_path: Path,
    corrupt: Any,
    says: str,
) -> None:
    lines = _exported(faiss_backend, tmp_path)
    lines[6] = corrupt(lines[6])  # line 7 of the file: items on lines 2-6 come before it
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(TransferError) as e:
        import_collection(qdrant_backend, "dst", bad, batch=2)
    assert e.value.line == 7
    assert str(e.value).startswith("line 7 (item 6): ") and says in str(e.value)
    assert "dst" not in qdrant_backend.problems  # all or nothing: nothing at all
    with pytest.raises(CollectionError, match="no collection named 'dst'"):
        qdrant_backend.get("dst")


def test_a_truncated_file_is_reported_incomplete(
    faiss_backend: FaissBackend, tmp_path: Path
) -> None:
    lines = _exported(faiss_backend, tmp_path)
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(lines[:-3]) + "\n\n", encoding="utf-8")  # trailing blank: fine
    with pytest.raises(TransferError) as e:
        import_collection(faiss_backend, "dst", short)
    assert e.value.line is None
    assert "ends after 7 items but its header says 10" in str(e.value)
    assert [c.name for c in faiss_backend.list()] == ["src"]  # nothing was created


@pytest.mark.parametrize(
    ("header", "says"),
    [
        ("", "the file is empty"),
        ("not json", "the header is not JSON"),
        ('{"format": "something-else", "version": 1}', f'"format": "{FORMAT}"'),
        (None, "version 2 is not supported"),
        ('{"id": "x", "metadata": {}, "vector": ""}', "not a collection export"),
        ("kind", "index kind 'annoy' is not one this version knows"),
    ],
)
def test_a_wrong_header_is_refused_before_anything_is_created(
    faiss_backend: FaissBackend, tmp_path: Path, header: str | None, says: str
) -> None:
    lines = _exported(faiss_backend, tmp_path)
    if header is None:
        header = json.dumps({**json.loads(lines[0]), "version": 2})
    elif header == "kind":
        first = json.loads(lines[0])
        header = json.dumps({**first, "index": {**first["index"], "kind": "annoy"}})
    path = tmp_path / "wrong.jsonl"
    path.write_text("\n".join([header, *lines[1:]]) + "\n", encoding="utf-8")
    with pytest.raises(TransferError) as e:
        import_collection(faiss_backend, "dst", path)
    assert e.value.line == 1 and says in str(e.value)
    assert [c.name for c in faiss_backend.list()] == ["src"]
    with pytest.raises(TransferError):
        read_file_header(path)


def test_an_existing_collection_is_refused_unless_forced(
    faiss_backend: FaissBackend, tmp_path: Path
) -> None:
    _exported(faiss_backend, tmp_path, n=10)
    fill(faiss_backend, "dst", unit_rows(25, DIM, 8))
    with pytest.raises(CollectionError) as e:
        import_collection(faiss_backend, "dst", tmp_path / "src.jsonl")
    assert e.value.code == "collection_exists" and "--force" in str(e.value)
    assert faiss_backend.get("dst").count() == 25  # untouched
    assert import_collection(faiss_backend, "dst", tmp_path / "src.jsonl", force=True) == 10
    assert snapshot(faiss_backend, "dst") == snapshot(faiss_backend, "src")  # replaced, not merged


# -- the CLI --------------------------------------------------------------------------------


def test_cli_moves_a_collection_from_faiss_to_qdrant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cols, file = tmp_path / "cols", tmp_path / "photos.jsonl"
    monkeypatch.setenv("CONTRASTIVE_DEVICE", "cpu")
    monkeypatch.delenv("CONTRASTIVE_QDRANT_URL", raising=False)
    monkeypatch.setenv("CONTRASTIVE_COLLECTIONS_BACKEND", "faiss")
    b = FaissBackend.open(cols, device="cpu")
    fill(b, "photos", exact_unit(40))
    want = snapshot(b, "photos")
    b.close()
    flags = ["--collections-dir", str(cols)]

    assert main(["index", "export", "photos", str(file), *flags]) == 0
    assert "exported 40 items of 'photos' (test:model, dim 16)" in capsys.readouterr().out
    assert main(["index", "export", "nope", str(file), *flags]) == 2
    assert "contrastive index export: no collection named 'nope'" in capsys.readouterr().err

    # Qdrant without a url: local mode in cols/qdrant
    monkeypatch.setenv("CONTRASTIVE_COLLECTIONS_BACKEND", "qdrant")
    assert main(["index", "import", "photos", str(file), *flags]) == 0
    assert "imported 40 items into 'photos'" in capsys.readouterr().out
    assert main(["index", "import", "photos", str(file), *flags]) == 2
    assert "contrastive index import: collection 'photos' already exists" in (
        capsys.readouterr().err
    )
    lines = file.read_text(encoding="utf-8").splitlines()
    lines[3] = lines[3][:20]
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["index", "import", "photos", str(file), "--force", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("contrastive index import: line 4 (item 3): not JSON")
    assert err.rstrip().endswith("; nothing was imported") and err.count("\n") == 1

    # a Qdrant server that cannot be reached: exit 1 (try again), not a data error
    monkeypatch.setenv("CONTRASTIVE_QDRANT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("CONTRASTIVE_QDRANT_TIMEOUT", "2")
    assert main(["index", "import", "other", str(file), *flags]) == 1
    assert "contrastive index import: " in capsys.readouterr().err
    monkeypatch.delenv("CONTRASTIVE_QDRANT_URL")

    q = QdrantBackend(QdrantConfig(path=cols / "qdrant"))
    try:  # the file was refused before --force dropped anything: the first import stands
        assert snapshot(q, "photos") == want
    finally:
        q.close()
    monkeypatch.setenv("CONTRASTIVE_COLLECTIONS_BACKEND", "faiss")
    b = FaissBackend.open(cols, device="cpu")
    try:
        assert snapshot(b, "photos") == want  # the source is left as it was
    finally:
        b.close()
