"""`contrastive index import`: all or nothing, by the item rules the API applies.

Each hostile input of issue 24 (item 4) is here: a vector off unit length, a zero vector,
NaN metadata, an id holding NUL, a header `dim` of 10^9, an import that dies half-way;
and one item refused by the API, by import and by a copy between backends alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contrastkit.service.cli import main
from contrastkit.service.index import transfer
from contrastkit.service.index.backend import (
    Batch,
    CollectionBackend,
    Item,
    Page,
    copy_collection,
)
from contrastkit.service.index.factory import open_backend
from contrastkit.service.index.items import ItemError
from contrastkit.service.index.transfer import TransferError, encode_vector, import_collection
from contrastkit.service.index.types import CollectionError, CollectionInfo, IndexSpec
from contrastkit.service.settings import Settings
from tests.helpers import unit_rows

DIM = 8  # the FakeEncoder's, for the API's side of the comparison
ROOT = Path(__file__).resolve().parents[4]
GOOD = unit_rows(3, DIM, seed=1)


def header(count: int, dim: int = DIM) -> dict[str, Any]:
    return {
        "format": "contrastive-collection",
        "version": 1,
        "name": "photos",
        "model_id": "fake:test",
        "dim": dim,
        "index": IndexSpec(kind="flat").to_dict(),
        "count": count,
    }


def line(id_: str, vector: np.ndarray, metadata: Any = None) -> str:
    """An item line as `export` writes it, except that json.dumps lets NaN through."""
    body = {"id": id_, "metadata": {} if metadata is None else metadata}
    return json.dumps({**body, "vector": encode_vector(np.asarray(vector, np.float32))})


def write(path: Path, lines: list[str], dim: int = DIM) -> Path:
    path.write_text("\n".join([json.dumps(header(len(lines), dim)), *lines]) + "\n")
    return path


def run_import(
    path: Path, capsys: pytest.CaptureFixture[str], *flags: str, backend: str = "faiss"
) -> tuple[int, str]:
    """`contrastive index import photos PATH` -> (exit status, stderr)."""
    os.environ["CONTRASTIVE_COLLECTIONS_BACKEND"] = backend  # restored by `env` below
    status = main(["index", "import", "photos", str(path), *flags])
    return status, capsys.readouterr().err


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTRASTIVE_DEVICE", "cpu")
    monkeypatch.setenv("CONTRASTIVE_COLLECTIONS_BACKEND", "faiss")
    monkeypatch.delenv("CONTRASTIVE_QDRANT_URL", raising=False)


@pytest.fixture
def cols(tmp_path: Path) -> Path:
    return tmp_path / "collections"  # CONTRASTIVE_COLLECTIONS_DIR (tests/conftest.py)


def opened(cols: Path, kind: str = "faiss") -> CollectionBackend:
    if kind == "qdrant":
        from contrastkit.service.state import open_collections

        return open_collections(Settings(collections_backend="qdrant", collections_dir=str(cols)))
    return open_backend("faiss", cols, device="cpu")


def nothing_served(cols: Path, kind: str = "faiss") -> None:
    """No collection "photos" is listed, refused or served, and no staging folder is left."""
    b = opened(cols, kind)
    try:
        assert [c.name for c in b.list()] == []
        assert b.problems == {}
        with pytest.raises(CollectionError) as e:
            b.get("photos")
        assert e.value.code == "collection_not_found"
    finally:
        b.close()
    assert not list(cols.glob(".staging-*"))


# -- vectors off unit length are scaled, as the API does --------------------------------------
def test_a_vector_off_unit_length_is_stored_at_unit_length(
    tmp_path: Path, cols: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stored as given, [200, 200, 0...] scored 282.84 against itself; scores are cosines."""
    long = np.zeros(DIM, np.float32)
    long[:2] = 200.0  # norm 282.84
    path = write(tmp_path / "f.jsonl", [line("long", long), line("unit", GOOD[0])])
    assert run_import(path, capsys) == (0, "")
    b = opened(cols)
    try:
        col = b.get("photos")
        stored = col.get("long")
        assert stored is not None and stored.vector is not None
        np.testing.assert_allclose(stored.vector, long / np.linalg.norm(long), atol=1e-7)
        unit = col.get("unit")
        assert unit is not None and unit.vector is not None
        assert unit.vector.tobytes() == GOOD[0].tobytes()  # unit already: bit for bit
        hit = col.search(stored.vector[None, :], 1)[0][0]
        assert hit.id == "long" and hit.score == pytest.approx(1.0, abs=1e-5)
    finally:
        b.close()


# -- hostile items: exit 2, one line naming the item, nothing created -------------------------
ZERO = np.zeros(DIM, np.float32)
HOSTILE: dict[str, tuple[str, str]] = {  # case -> (the item's line, what stderr says)
    "zero vector": (line("z", ZERO), "vector is all zeros: it has no direction"),
    "NaN metadata": (
        line("n", GOOD[1], {"score": float("nan")}),
        "metadata.score is nan: JSON numbers must be finite",
    ),
    "infinite metadata": (
        line("n", GOOD[1], {"deep": [1, {"x": float("inf")}]}),
        "metadata.deep[1].x is inf: JSON numbers must be finite",
    ),
    "NUL in the id": (line("a\x00b", GOOD[1]), "id contains a NUL character (U+0000)"),
    "NaN in the vector": (
        line("v", np.full(DIM, np.nan, np.float32)),
        "vector contains NaN or infinity",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_item_is_refused_in_one_line_and_nothing_is_created(
    tmp_path: Path, cols: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    bad, says = HOSTILE[case]
    path = write(tmp_path / "f.jsonl", [line("a", GOOD[0]), bad, line("c", GOOD[2])])
    status, err = run_import(path, capsys)
    assert status == 2
    assert err == f"contrastive index import: line 3 (item 2): {says}; nothing was imported\n"
    nothing_served(cols)


def test_a_bad_file_leaves_the_collection_it_would_replace_as_it_was(
    tmp_path: Path, cols: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--force drops the old collection only once the whole file has passed."""
    good = write(tmp_path / "good.jsonl", [line("a", GOOD[0]), line("b", GOOD[1])])
    assert run_import(good, capsys)[0] == 0
    bad = write(tmp_path / "bad.jsonl", [line("x", GOOD[2]), line("y", ZERO)])
    status, err = run_import(bad, capsys, "--force")
    assert status == 2 and "line 3 (item 2): vector is all zeros" in err
    b = opened(cols)
    try:
        assert sorted(it.id for it in b.get("photos").scroll(limit=10).items) == ["a", "b"]
    finally:
        b.close()


# -- the header's dim ------------------------------------------------------------------------
def test_a_header_dim_of_a_billion_is_refused_before_anything_is_sized_by_it(
    tmp_path: Path, cols: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "huge.jsonl"
    path.write_text(json.dumps(header(1, dim=10**9)) + "\n" + line("a", GOOD[0]) + "\n")
    status, err = run_import(path, capsys)
    assert status == 2
    assert err == (
        'contrastive index import: line 1: the header\'s "dim" 1000000000 is too large: '
        "at most 65536; nothing was imported\n"
    )
    assert not cols.exists()  # refused before the backend was even opened
    b = opened(cols)
    try:  # and in Python: refused having allocated next to nothing (4 GB per vector)
        tracemalloc.start()
        with pytest.raises(TransferError, match="too large"):
            import_collection(b, "photos", path)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 1 << 20
        assert b.list() == []
    finally:
        b.close()


def test_a_line_longer_than_an_item_can_be_is_refused_unread(
    tmp_path: Path, cols: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line is read at most to its limit (the vector's base64 and ITEM_JSON_MAX_BYTES),
    so a file of one endless line cannot exhaust memory."""
    monkeypatch.setattr(transfer, "ITEM_JSON_MAX_BYTES", 200)
    path = write(tmp_path / "f.jsonl", [line("a", GOOD[0]), line("b", GOOD[1], {"t": "x" * 300})])
    status, err = run_import(path, capsys)
    assert status == 2
    assert err.startswith("contrastive index import: line 3 (item 2): the line is longer than ")
    nothing_served(cols)


# -- failures while writing ------------------------------------------------------------------
KILL_HALF_WAY = """
import os, signal, sys
from pathlib import Path
from contrastkit.service.index.transfer import import_collection
from contrastkit.service.settings import Settings
from contrastkit.service.state import open_collections

kind, cols, path = sys.argv[1:]
backend = open_collections(Settings(collections_backend=kind, collections_dir=cols))

def die(done: int, expected: int) -> None:  # called while writing, 20 of 60 items stored
    os.kill(os.getpid(), signal.SIGKILL)

import_collection(backend, "photos", Path(path), batch=10, progress=die, every=20)
"""


@pytest.mark.parametrize("kind", ["faiss", "qdrant"])
def test_an_import_killed_half_way_leaves_no_served_collection(
    tmp_path: Path, cols: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    if kind == "qdrant":
        pytest.importorskip("qdrant_client")
    vectors = unit_rows(60, DIM, seed=2)
    path = write(tmp_path / "f.jsonl", [line(f"i{i}", v) for i, v in enumerate(vectors)])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", KILL_HALF_WAY, kind, str(cols), str(path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr  # killed, as planned, while writing
    if kind == "faiss":
        staged = list(cols.glob(".staging-photos-*"))
        assert len(staged) == 1 and (staged[0] / "collection.json").is_file()
        assert not (cols / "photos").exists()
        nothing_served(cols)  # the next open removes the staging folder
    else:  # Qdrant: the points were written, the config that lists them never was
        b = opened(cols, kind)
        try:
            assert [c.name for c in b.list()] == []
            with pytest.raises(CollectionError) as e:
                b.get("photos")
            assert e.value.code in ("collection_corrupt", "collection_not_found")
            why = b.problems.get("photos")  # listed if local mode kept the points
            if why is not None:
                assert "import under way or cut short" in why
                b.drop("photos")  # how the user clears it, as the message says
        finally:
            b.close()
    assert run_import(path, capsys, backend=kind) == (0, "")  # and a rerun just works


class FailsHalfWay:
    """A backend whose storage fails after the first batch: `create_filled` gets batches
    that raise "insufficient_storage" (a full disk) once one is stored."""

    def __init__(self, inner: CollectionBackend) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def create_filled(
        self, name: str, model_id: str, dim: int, spec: IndexSpec | None, batches: Any
    ) -> int:
        def failing() -> Iterator[Batch]:
            for i, b in enumerate(batches):
                if i == 1:
                    raise CollectionError("insufficient_storage", "the disk is full")
                yield b

        return self.inner.create_filled(name, model_id, dim, spec, failing())


@pytest.mark.parametrize("kind", ["faiss", "qdrant"])
def test_a_storage_failure_half_way_leaves_no_collection(
    tmp_path: Path, cols: Path, kind: str
) -> None:
    if kind == "qdrant":
        pytest.importorskip("qdrant_client")
    vectors = unit_rows(30, DIM, seed=3)
    path = write(tmp_path / "f.jsonl", [line(f"i{i}", v) for i, v in enumerate(vectors)])
    b = opened(cols, kind)
    try:
        with pytest.raises(TransferError) as e:
            import_collection(FailsHalfWay(b), "photos", path, batch=10)  # type: ignore[arg-type]
        assert str(e.value) == "could not store the items (the disk is full)"
        assert isinstance(e.value.__cause__, CollectionError)
        assert [c.name for c in b.list()] == [] and b.problems == {}
    finally:
        b.close()
    nothing_served(cols, kind)


# -- one rule on every path ------------------------------------------------------------------
class OneItemSource:
    """A source backend holding one item as it is, rules or not (what an older version
    may have stored): what copy_collection reads."""

    def __init__(self, item: Item) -> None:
        self.item = item

    def get(self, name: str) -> OneItemSource:
        return self

    def info(self) -> CollectionInfo:
        return CollectionInfo("c", "fake:test", DIM, 1, IndexSpec(kind="flat"), "flat", "now")

    def scroll(self, cursor: str | None = None, limit: int = 100, vectors: bool = False) -> Page:
        return Page([self.item], None)


SAME: dict[str, tuple[str, Any, Any, str, str]] = {
    # case -> (id, metadata, vector, the error code, the reason every path gives)
    "NUL in the id": ("a\x00b", {}, GOOD[0], "invalid_id", "contains a NUL character (U+0000)"),
    "NaN metadata": (
        "a",
        {"s": float("nan")},
        GOOD[0],
        "invalid_metadata",
        "is nan: JSON numbers must be finite",
    ),
    "integer beyond 64 bits": (
        "a",
        {"s": 2**70},
        GOOD[0],
        "invalid_metadata",
        f"is an integer beyond 64 bits (from {-(2**63)} to {2**64 - 1}): send it as a string",
    ),
    "zero vector": ("a", {}, ZERO, "invalid_vector", "is all zeros: it has no direction"),
}


@pytest.mark.parametrize("case", list(SAME))
def test_the_api_import_and_a_copy_refuse_an_item_alike(
    tmp_path: Path, cols: Path, fake_app_factory: Any, case: str
) -> None:
    id_, metadata, vector, code, reason = SAME[case]
    # the API
    client = fake_app_factory(Settings(collections_dir=str(tmp_path / "api")))
    assert client.post("/v1/collections", json={"name": "c"}).status_code == 201
    item = {"id": id_, "vector": [float(x) for x in vector], "metadata": metadata}
    body = json.dumps({"items": [item]}).encode()  # NaN as JSON's NaN, which the API reads
    r = client.post(
        "/v1/collections/c/items", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    api = r.json()["error"]
    assert api["code"] == code and api["message"].endswith(" " + reason)

    b = opened(cols)
    try:
        # import
        path = write(tmp_path / "f.jsonl", [line(id_, vector, metadata)])
        with pytest.raises(TransferError) as imp:
            import_collection(b, "photos", path)
        cause = imp.value.__cause__
        assert isinstance(cause, ItemError) and (cause.code, cause.reason) == (code, reason)
        assert str(imp.value).startswith("line 2 (item 1): ") and str(imp.value).endswith(reason)
        # a copy between backends (and any upsert: `index add`, Python callers)
        source = OneItemSource(Item(id_, metadata, np.asarray(vector, np.float32)))
        with pytest.raises(ItemError) as copy:
            copy_collection(source, b, "c")  # type: ignore[arg-type]
        assert (copy.value.code, copy.value.reason) == (code, reason)
        assert b.list() == [] and b.problems == {}
    finally:
        b.close()
