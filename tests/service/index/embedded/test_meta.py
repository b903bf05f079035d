"""collection.json damaged, edited or lost: the collection is refused, never served wrong.

collection.json says what the data is (dimension, model, index). Log records carry no
dimension, so an edited `dim` used to open as `ok` and serve every vector cut to the new
width; an unknown index kind was served as flat; a deleted file made the collection vanish
(404, unlisted, its name 409 on create). Each case below checks that the collection is
refused (503 collection_corrupt, listed in `problems`), that its files are left byte for
byte as they were, and that another collection in the same store keeps serving.

Layout: collection NAME holds batches "a-" and "b-" (records 1 and 2 in log.wal; with
`snapshot`, record 1 is in snapshot.bin), collection OTHER one item "o".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contrastkit.service.cli import main
from contrastkit.service.errors import http_status
from contrastkit.service.index.embedded.collection import LOG, META, SNAP
from contrastkit.service.index.embedded.meta import CHECKSUM, FORMAT_VERSION, checksum, read_meta
from contrastkit.service.index.embedded.store import CollectionStore
from contrastkit.service.index.embedded.wal import UPSERT, Record, RecordShapeError
from contrastkit.service.index.types import INDEX_KINDS, CollectionError, IndexSpec
from tests.helpers import unit_rows
from tests.service.index.embedded.test_crash import NAME, Writer

OTHER = "other"
O_VEC = unit_rows(1, 8, 99)


def _store(tmp_path: Path, snapshot: bool = False) -> Writer:
    """A closed store with NAME (records 1-2; snapshot.bin at record 1 with `snapshot`)
    and OTHER (one item)."""
    w = Writer(tmp_path / "store")
    w.batch("a-")
    if snapshot:
        w.col.snapshot()
    w.batch("b-")
    w.store.create(OTHER, "test:model", 8, IndexSpec(kind="flat"))
    w.store.get(OTHER).upsert(["o"], O_VEC, [{}])
    w.store.close()
    return w


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (sub-folders too) by its relative path -> its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _meta(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / META).read_text()))


def _write_meta(folder: Path, content: dict[str, Any]) -> None:
    (folder / META).write_text(json.dumps(content, indent=2))


def _unseal(folder: Path) -> None:
    """Rewrite collection.json as versions before the checksum wrote it (format_version 1)."""
    content = _meta(folder)
    del content[CHECKSUM]
    _write_meta(folder, {**content, "format_version": 1})


def _assert_refused(w: Writer, *words: str) -> str:
    """Reopen: NAME refused (503 collection_corrupt, the words in its reason), its files
    untouched, OTHER still served -> the reason."""
    before = _files(w.folder)
    store = w.reopen()
    assert NAME in store.problems, store.problems
    why = store.problems[NAME]
    with pytest.raises(CollectionError) as e:
        store.get(NAME)
    assert (e.value.code, http_status(e.value.code)) == ("collection_corrupt", 503)
    assert e.value.message == why
    for word in ("refused", META, "kept as they are", *words):
        assert word in why, why
    assert _files(w.folder) == before  # refused means untouched: nothing cut, moved or added
    assert [c.name for c in store.list()] == [OTHER]
    assert store.get(OTHER).search(O_VEC, 1)[0][0].id == "o"
    return why


# -- (a) the dimension ------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [4, 16])
def test_an_edited_dim_fails_the_checksum_and_is_refused(tmp_path: Path, dim: int) -> None:
    """The issue's case: no snapshot yet, dim 8 -> 4 (every vector was served cut in half)."""
    w = _store(tmp_path)
    _write_meta(w.folder, {**_meta(w.folder), "dim": dim})
    _assert_refused(w, "fails its checksum")
    w.store.close()


@pytest.mark.parametrize("dim", [4, 16])
def test_an_edited_dim_without_a_checksum_is_refused_by_the_log_records(
    tmp_path: Path, dim: int
) -> None:
    """A file of an older version (no checksum): each record's vector bytes tell."""
    w = _store(tmp_path)
    _unseal(w.folder)
    _write_meta(w.folder, {**_meta(w.folder), "dim": dim})
    why = _assert_refused(w, f"{LOG}: record 1 holds 160 bytes of vectors for 5 ids")
    assert f"(8 floats each), not 5 x {dim} floats" in why and f"says dim {dim}" in why
    w.store.close()


def test_an_edited_dim_without_a_checksum_is_refused_by_the_snapshot(tmp_path: Path) -> None:
    """The snapshot is intact: it is not set aside and rebuilt from the logs at the wrong
    width (log.prev.wal holds record 1 too, so such a rebuild was possible)."""
    w = _store(tmp_path, snapshot=True)
    _unseal(w.folder)
    _write_meta(w.folder, {**_meta(w.folder), "dim": 4})
    _assert_refused(w, f"{SNAP} (its checksum intact) holds vectors of dimension 8")
    assert not list(w.folder.glob("snapshot.damaged-*"))
    w.store.close()


def test_a_record_of_another_width_is_not_decoded(tmp_path: Path) -> None:
    """5 ids x 8 floats read at dim 4 used to give 10 rows of 4: ids 0-4 got the halves
    of vectors 0-2. Now the record is refused."""
    rec = Record(UPSERT, 7, [f"i{i}" for i in range(5)], [{}] * 5, unit_rows(5, 8, 1))
    payload = rec.encode()[8:]  # after the length and the CRC
    whole = Record.decode(payload, 8).vectors
    assert whole is not None and whole.shape == (5, 8)
    with pytest.raises(RecordShapeError, match="record 7 holds 160 bytes of vectors for 5 ids"):
        Record.decode(payload, 4)


# -- (b) the index kind -----------------------------------------------------------------------
def test_an_unknown_index_kind_is_refused_naming_it_and_the_known_ones(tmp_path: Path) -> None:
    """Even under a checksum that holds (a newer version's file): served as flat before."""
    w = _store(tmp_path)
    content = _meta(w.folder)
    del content[CHECKSUM]
    content["index"]["kind"] = "diskann"
    _write_meta(w.folder, {**content, CHECKSUM: checksum(content)})
    why = _assert_refused(w, "unknown index kind 'diskann'")
    assert all(kind in why for kind in INDEX_KINDS)
    w.store.close()


def test_an_edited_index_kind_fails_the_checksum(tmp_path: Path) -> None:
    w = _store(tmp_path)
    content = _meta(w.folder)
    content["index"]["kind"] = "hnsw"  # a known kind: only the checksum tells
    _write_meta(w.folder, content)
    _assert_refused(w, "fails its checksum")
    w.store.close()


# -- the seal itself --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda m: m.pop(CHECKSUM), f'has no "{CHECKSUM}"'),
        (lambda m: m.update(format_version=3), "format_version 3; this version reads 1 and 2"),
        (lambda m: m.update(model_id="other:model"), "fails its checksum"),
        (lambda m: m.update(sha256="0" * 64), "fails its checksum"),
        (lambda m: m.pop("model_id"), "fails its checksum"),
    ],
    ids=["checksum-removed", "newer-version", "model-id", "checksum-edited", "field-removed"],
)
def test_a_sealed_file_edited_is_refused(tmp_path: Path, edit: Any, words: str) -> None:
    w = _store(tmp_path)
    content = _meta(w.folder)
    edit(content)
    _write_meta(w.folder, content)
    _assert_refused(w, words)
    w.store.close()


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""], ids=["garbage", "list", "empty"])
def test_an_unreadable_file_is_refused(tmp_path: Path, text: str) -> None:
    w = _store(tmp_path)
    (w.folder / META).write_text(text)
    _assert_refused(w, META)
    w.store.close()


def test_a_renamed_folder_is_refused(tmp_path: Path) -> None:
    """The store finds and deletes a collection by its folder: the two must agree."""
    w = _store(tmp_path)
    (w.root / OTHER).rename(w.root / "renamed")
    store = CollectionStore(w.root)
    assert "names the collection 'other', but its folder is 'renamed'" in store.problems["renamed"]
    assert store.get(NAME).count == 10
    store.close()


def test_a_sealed_file_reformatted_still_opens(tmp_path: Path) -> None:
    """The checksum is over the values, not the bytes: indentation and key order are free."""
    w = _store(tmp_path)
    content = _meta(w.folder)
    (w.folder / META).write_text(json.dumps(dict(reversed(content.items()))))
    w.reopen()
    assert (w.store.problems, w.col.status) == ({}, "ok")
    w.check()
    w.store.close()


def test_create_writes_a_sealed_file(tmp_path: Path) -> None:
    w = _store(tmp_path)
    content = _meta(w.folder)
    digest = content.pop(CHECKSUM)
    assert content["format_version"] == FORMAT_VERSION and digest == checksum(content)
    assert read_meta(w.folder).sealed


# -- files of older versions ------------------------------------------------------------------
@pytest.mark.parametrize("snapshot", [False, True])
def test_a_file_without_a_checksum_still_opens_and_repair_seals_it(
    tmp_path: Path, snapshot: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """Backward compatible: what older versions wrote opens `ok`, untouched; a repair
    checks it against the data and seals it."""
    w = _store(tmp_path, snapshot)
    _unseal(w.folder)
    unsealed = (w.folder / META).read_bytes()
    w.reopen()
    assert (w.store.problems, w.col.status) == ({}, "ok")
    w.check()
    assert (w.folder / META).read_bytes() == unsealed  # an open writes no metadata
    w.store.close()
    code, out, err = _repair(w.root, capsys)
    assert code == 0, err
    assert "checked against the snapshot and the logs, and sealed with one" in out
    assert read_meta(w.folder).sealed
    w.reopen()
    assert (w.store.problems, w.col.status) == ({}, "ok")
    w.check()
    w.store.close()


# -- (c) a lost collection.json ---------------------------------------------------------------
@pytest.mark.parametrize("snapshot", [False, True])
def test_a_missing_file_is_refused_not_forgotten(tmp_path: Path, snapshot: bool) -> None:
    w = _store(tmp_path, snapshot)
    (w.folder / META).unlink()
    held = "snapshot.bin, log.wal, log.prev.wal" if snapshot else "log.wal"
    _assert_refused(w, f"{META} is missing (the folder holds {held})")
    before = _files(w.folder)
    with pytest.raises(CollectionError) as e:
        w.store.create(NAME, "test:model", 8)
    assert (e.value.code, http_status(e.value.code)) == ("collection_exists", 409)
    assert "its folder holds a refused collection" in e.value.message
    assert f"{META} is missing" in e.value.message
    assert _files(w.folder) == before  # not overwritten by a new collection
    w.store.delete(NAME)  # deleting it is how an operator gives the name up
    assert not w.folder.exists() and NAME not in w.store.problems
    w.store.create(NAME, "test:model", 8)
    assert w.store.get(NAME).count == 0
    w.store.close()


def test_an_interrupted_delete_is_not_brought_back(tmp_path: Path) -> None:
    """A delete renames the folder to .deleted-... first: a crash in the rmtree after it
    leaves collection.json there. That folder is no collection (it used to be opened
    under the name inside its collection.json: the deleted collection, back)."""
    w = _store(tmp_path)
    w.folder.rename(w.root / f".deleted-{NAME}-0123abcd")
    store = CollectionStore(w.root)
    assert store.problems == {}
    assert [c.name for c in store.list()] == [OTHER]
    store.close()


def test_a_folder_with_no_collection_answers_409_saying_so(tmp_path: Path) -> None:
    store = CollectionStore(tmp_path)
    (tmp_path / "stray").mkdir()
    assert store.problems == {}
    with pytest.raises(CollectionError) as e:
        store.create("stray", "test:model", 8)
    assert e.value.code == "collection_exists"
    assert "a folder of that name, holding no collection" in e.value.message
    store.close()


# -- contrastive index repair -----------------------------------------------------------------
def _repair(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["index", "repair", NAME, "--dir", str(root)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_repair_of_a_missing_file_explains_and_then_seals_one_written_by_hand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = _store(tmp_path, snapshot=True)
    original = read_meta(w.folder)
    (w.folder / META).unlink()
    before = _files(w.folder)
    code, out, err = _repair(w.root, capsys)
    assert code == 1
    assert f"{META} is missing" in err and f"cannot rebuild {META} from the other files" in err
    assert "hold 8-d vectors" in err and "Nothing was changed" in err
    assert f"{SNAP}: up to record 1, 5 items of dimension 8" in out
    assert "log.wal: 1 valid records (record 2); vectors of dimension 8" in out
    assert _files(w.folder) == before
    # the operator writes the template with what only they know
    (line,) = [line for line in err.splitlines() if line.startswith("  {")]
    template = json.loads(line)
    assert (template["name"], template["dim"], template["format_version"]) == (NAME, 8, 1)
    _write_meta(w.folder, {**template, "model_id": "test:model", "created_at": original.created_at})
    code, out, err = _repair(w.root, capsys)
    assert code == 0, err
    assert "sealed with one" in out
    meta = read_meta(w.folder)
    assert (meta.sealed, meta.model_id, meta.dim) == (True, "test:model", 8)
    w.reopen()
    assert (w.store.problems, w.col.status) == ({}, "ok")
    w.check()
    w.store.close()


def test_repair_of_an_edited_file_changes_nothing_and_says_what_the_data_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = _store(tmp_path)
    _write_meta(w.folder, {**_meta(w.folder), "dim": 4})
    before = _files(w.folder)
    code, out, err = _repair(w.root, capsys)
    assert code == 1
    assert "fails its checksum" in err and f"The repair leaves {META} as it is" in err
    assert "Restore collection.json from a backup" in err and "hold 8-d vectors" in err
    assert "log.wal: 2 valid records (records 1-2); vectors of dimension 8" in out
    assert _files(w.folder) == before


def test_repair_of_a_dim_the_records_contradict_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = _store(tmp_path)
    _unseal(w.folder)
    _write_meta(w.folder, {**_meta(w.folder), "dim": 4})
    before = _files(w.folder)
    code, _, err = _repair(w.root, capsys)
    assert code == 1
    assert "record 1 holds 160 bytes of vectors for 5 ids" in err and "says dim 4" in err
    assert _files(w.folder) == before
    assert not read_meta(w.folder).sealed  # not sealed over data it contradicts


def test_repair_of_a_folder_holding_nothing_is_no_collection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    CollectionStore(tmp_path).close()
    (tmp_path / NAME).mkdir()
    code, _, err = _repair(tmp_path, capsys)
    assert code == 1 and f"no collection named {NAME!r}" in err


def test_the_vectors_served_are_the_ones_written(tmp_path: Path) -> None:
    """The control: an untouched store serves every vector whole (what (a) broke)."""
    w = _store(tmp_path)
    w.reopen()
    got = w.col.get("a-0")
    assert got is not None and got[0].shape == (8,)
    np.testing.assert_array_equal(got[0], w.truth["a-0"][0])
    w.store.close()
