"""`contrastive index migrate`: a collection rebuilt with another model from its sources,
then an alias switched; missing sources block the switch; writes between passes and an
interrupted run are caught up."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contrastkit.service.cli import main
from contrastkit.service.commands.index import migrate
from contrastkit.service.commands.index.images import read_image
from contrastkit.service.commands.index.migration import Hooks
from contrastkit.service.index.backend import CollectionBackend, CollectionHandle
from contrastkit.service.settings import Settings
from contrastkit.service.state import open_collections
from contrastkit.training.encoders import load_encoder


@pytest.fixture
def setup(tmp_path: Path, models: tuple[str, str]) -> tuple[Path, Path]:
    """8 images added to collection `photos` with the old model -> (photos, collections)."""
    photos, cols = tmp_path / "photos", tmp_path / "cols"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        arr = rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)
        Image.fromarray(arr).save(photos / f"p{i}.png")
    args = ["index", "add", "photos", str(photos), "--model", models[0]]
    assert main([*args, "--collections-dir", str(cols), "--device", "cpu"]) == 0
    return photos, cols


def _migrate(cols: Path, model: str, tmp: Path, *extra: str, hooks: Hooks | None = None) -> int:
    argv = ["photos", "--to-model", model, "--alias", "live", "--collections-dir", str(cols)]
    argv += ["--device", "cpu", "--batch", "3", "--report", str(tmp / "report.json"), *extra]
    p = argparse.ArgumentParser()
    migrate.add_arguments(p)
    return migrate.run(p.parse_args(argv), hooks)


def _store(cols: Path) -> CollectionBackend:
    return open_collections(Settings(collections_dir=str(cols)))


def _expected(model: str, files: list[Path]) -> np.ndarray:
    enc = load_encoder(model, device="cpu")
    size = enc.info.preprocess.size
    return enc.encode_images([read_image(f, 10**9, size)[1] for f in files]).numpy()


def _check_new(cols: Path, photos: Path, model: str, ids: list[str]) -> None:
    """Every id in the collection `live` names, with the new model's vectors."""
    store = _store(cols)
    try:
        assert store.aliases()["live"] != "photos"
        col = store.get(store.aliases()["live"])
        assert col.count() == len(ids)
        want = _expected(model, [photos / i for i in ids])
        for id_, vec in zip(ids, want, strict=True):
            item = col.get(id_)
            assert item is not None and item.vector is not None
            np.testing.assert_allclose(item.vector, vec, atol=1e-5)
            assert item.metadata["path"] == str(photos / id_)
            assert item.source == str(photos / id_)
        assert store.get("photos").count() >= 8  # the old collection stays
    finally:
        store.close()


IDS = [f"p{i}.png" for i in range(8)]


def test_migrate_rebuilds_with_the_new_model_and_switches_the_alias(
    setup: tuple[Path, Path], models: tuple[str, str], tmp_path: Path
) -> None:
    photos, cols = setup
    assert _migrate(cols, models[1], tmp_path) == 0
    _check_new(cols, photos, models[1], IDS)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["missing_count"] == 0 and report["switched"] is True
    argv = ["index", "search", "live", "a photo", "--model", models[1], "--device", "cpu"]
    assert main([*argv, "--collections-dir", str(cols)]) == 0  # by the alias


def test_a_missing_source_blocks_the_switch_unless_allowed(
    setup: tuple[Path, Path],
    models: tuple[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    photos, cols = setup
    store = _store(cols)
    old = store.get("photos")
    old.upsert(["nosource"], np.eye(1, old.dim, dtype=np.float32), [{"k": 1}])
    store.close()
    assert _migrate(cols, models[1], tmp_path) == 3
    err = capsys.readouterr().err
    assert "1 items could not be embedded" in err and "report.json" in err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["missing"] == [{"id": "nosource", "source": None, "reason": "no source stored"}]
    store = _store(cols)
    assert "live" not in store.aliases()
    store.close()
    assert _migrate(cols, models[1], tmp_path, "--allow-missing") == 0
    _check_new(cols, photos, models[1], IDS)


def test_an_item_added_between_passes_is_caught_up(
    setup: tuple[Path, Path], models: tuple[str, str], tmp_path: Path
) -> None:
    photos, cols = setup
    late_file = photos / "late.png"
    Image.new("RGB", (30, 30), (200, 10, 10)).save(late_file)
    vector = _expected(models[0], [late_file])

    def write(old: CollectionHandle) -> None:  # a user's write, acknowledged meanwhile
        if old.get("late") is None:
            old.upsert(["late"], vector, [{"path": str(late_file)}], [str(late_file)])

    assert _migrate(cols, models[1], tmp_path, hooks=Hooks(between_passes=write)) == 0
    store = _store(cols)
    late = store.get(store.aliases()["live"]).get("late")
    store.close()
    assert late is not None and late.vector is not None
    np.testing.assert_allclose(
        late.vector, _expected(models[1], [photos / "late.png"])[0], atol=1e-5
    )


def test_an_interrupted_migration_resumes_to_the_same_result(
    setup: tuple[Path, Path], models: tuple[str, str], tmp_path: Path
) -> None:
    photos, cols = setup
    batches = []

    def crash(pass_no: int) -> None:
        batches.append(pass_no)
        if len(batches) == 2:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        _migrate(cols, models[1], tmp_path, hooks=Hooks(after_batch=crash))
    store = _store(cols)
    assert "live" not in store.aliases()
    store.close()
    assert _migrate(cols, models[1], tmp_path) == 0
    _check_new(cols, photos, models[1], IDS)


def test_a_collection_name_needs_an_alias(
    setup: tuple[Path, Path], models: tuple[str, str]
) -> None:
    _, cols = setup
    argv = ["index", "migrate", "photos", "--to-model", models[1]]
    assert main([*argv, "--collections-dir", str(cols), "--device", "cpu"]) == 1


def test_text_sources_are_embedded_as_text_and_deletions_follow(
    setup: tuple[Path, Path], models: tuple[str, str], tmp_path: Path
) -> None:
    """A text source is embedded with the new model's text tower; an item deleted from the
    old collection between passes is not in the new one."""
    _, cols = setup
    store = _store(cols)
    old = store.get("photos")
    old.upsert(["caption"], np.eye(1, old.dim, dtype=np.float32), [{}], ["a red bicycle"])
    store.close()

    def delete(old: CollectionHandle) -> None:
        old.delete(["p0.png"])

    assert _migrate(cols, models[1], tmp_path, hooks=Hooks(between_passes=delete)) == 0
    store = _store(cols)
    new = store.get("live")
    caption = new.get("caption")
    assert new.get("p0.png") is None and new.count() == 8
    store.close()
    want = load_encoder(models[1], device="cpu").encode_texts(["a red bicycle"]).numpy()[0]
    assert caption is not None and caption.vector is not None
    np.testing.assert_allclose(caption.vector, want, atol=1e-5)


def test_progress_and_a_resumed_run_skip_what_is_done(
    setup: tuple[Path, Path],
    models: tuple[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, cols = setup

    def crash(pass_no: int) -> None:
        raise KeyboardInterrupt("killed")  # after the first batch of 3

    with pytest.raises(KeyboardInterrupt):
        _migrate(cols, models[1], tmp_path, hooks=Hooks(after_batch=crash))
    capsys.readouterr()
    assert _migrate(cols, models[1], tmp_path) == 0
    out = capsys.readouterr()
    assert "(5 items written, 0 missing)" in out.out
    assert "resuming into" in out.err and "pass 1: 5/5 items" in out.err and "ETA" in out.err
