"""The held-out split of pairs data (`holdout`): never trained on, fixed by the seed, and
what `holdout_eval_data` evaluates; old checkpoints resume without it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from contrastkit.training.config import ConfigError, TrainConfig, build_config
from contrastkit.training.data import load_data
from contrastkit.training.data.files import holdout_rows
from contrastkit.training.data.loader import FileData
from contrastkit.training.engine.resume import CHANGEABLE, refuse_changes, with_old_defaults
from contrastkit.training.evaluate.data import holdout_eval_data, load_eval_data
from contrastkit.training.evaluate.pairs import ImageFiles

ROWS = 40
BAD = {3: "missing", 17: "missing", 25: "empty"}  # row -> what is wrong with it


def write_pairs(root: Path) -> str:
    """A JSONL of ROWS rows 'row i' (8x6 PNGs), the BAD ones unusable; its pairs: spec."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(ROWS):
        Image.new("RGB", (8, 6), (i, 0, 0)).save(root / "img" / f"{i}.png")
        image = f"img/gone{i}.png" if BAD.get(i) == "missing" else f"img/{i}.png"
        rows.append({"image": image, "caption": "" if BAD.get(i) == "empty" else f"row {i}"})
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"pairs:{root / 'pairs.jsonl'}"


def usable() -> set[str]:
    return {f"row {i}" for i in range(ROWS) if i not in BAD}


def split(spec: str, holdout: float, seed: int) -> tuple[list[str], list[str]]:
    """(training captions, held-out captions) for one (holdout, seed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the BAD rows are named, in either part
        data = load_data(spec, image_size=8, workers=0, seed=seed, holdout=holdout)
        held = holdout_eval_data(spec, holdout=holdout, seed=seed, image_size=8, limit=None)
    assert isinstance(data, FileData) and data.texts is not None
    assert held is not None and held.captions is not None
    return data.texts, held.captions


def test_held_out_rows_are_never_trained_on(tmp_path: Path) -> None:
    spec = write_pairs(tmp_path)
    for seed in (0, 1, 7):
        train, held = split(spec, 0.25, seed)
        assert not set(train) & set(held)
        assert set(train) | set(held) == usable()
        assert len(train) == len(set(train)) and len(held) == len(set(held))
        # round(0.25 * 40) = 10 rows are held out, the bad ones among them not usable
        held_rows = holdout_rows(ROWS, 0.25, seed)[1].tolist()
        assert len(held) == 10 - sum(int(row in BAD) for row in held_rows)


def test_the_split_is_fixed_by_the_seed(tmp_path: Path) -> None:
    spec = write_pairs(tmp_path)
    assert split(spec, 0.25, 3) == split(spec, 0.25, 3)
    assert set(split(spec, 0.25, 3)[1]) != set(split(spec, 0.25, 4)[1])
    # the run's `seed` chooses the rows: a fixed permutation of the row positions
    perm = torch.randperm(ROWS, generator=torch.Generator().manual_seed(3))
    assert holdout_rows(ROWS, 0.25, 3)[1].tolist() == sorted(perm[:10].tolist())


@pytest.mark.filterwarnings("ignore:pairs. skipped")
def test_held_out_eval_data_holds_images_and_captions(tmp_path: Path) -> None:
    spec = write_pairs(tmp_path)
    held = holdout_eval_data(spec, holdout=0.25, seed=0, image_size=8, limit=None)
    assert held is not None and held.captions is not None and held.bank is None
    assert isinstance(held.queries, ImageFiles)
    for path, caption in zip(held.queries.paths, held.captions, strict=True):
        assert path == str(tmp_path / "img" / f"{caption.split()[1]}.png")
    assert [held.classes[i] for i in held.query_labels.tolist()] == held.captions
    few = holdout_eval_data(spec, holdout=0.25, seed=0, image_size=8, limit=3)
    assert few is not None and few.captions is not None and len(few.captions) == 3
    assert set(few.captions) <= set(held.captions)


@pytest.mark.filterwarnings("ignore:pairs. skipped")
def test_holdout_0_trains_on_every_row(tmp_path: Path) -> None:
    spec = write_pairs(tmp_path)
    data = load_data(spec, image_size=8, workers=0, holdout=0.0)
    assert isinstance(data, FileData) and set(data.texts or []) == usable()
    assert data.num_samples == ROWS - len(BAD)
    assert holdout_eval_data(spec, holdout=0.0, seed=0, image_size=8) is None


def test_holdout_rows_sizes() -> None:
    train, held = holdout_rows(10, 0.1, 0)
    assert len(held) == 1 and sorted([*train.tolist(), *held.tolist()]) == list(range(10))
    assert len(holdout_rows(4, 0.1, 0)[1]) == 0  # round(0.4): nothing held out
    assert len(holdout_rows(3, 0.99, 0)[0]) == 1  # at least one row still trains
    assert len(holdout_rows(5, 0.0, 0)[1]) == 0


def test_labelled_sets_give_their_test_queries_and_others_none(tmp_path: Path) -> None:
    held = holdout_eval_data("digits", holdout=0.1, seed=0, image_size=8, limit=50)
    full = load_eval_data("digits", 8, 50, 0)
    assert held is not None and held.bank is None and held.captions is None
    assert held.classes == full.classes
    assert isinstance(held.queries, torch.Tensor) and isinstance(full.queries, torch.Tensor)
    assert torch.equal(held.queries, full.queries)
    assert torch.equal(held.query_labels, full.query_labels)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")  # no class subfolders: unlabelled
    assert holdout_eval_data(f"folder:{tmp_path}", holdout=0.1, seed=0, image_size=8) is None
    assert holdout_eval_data(f"shards:{tmp_path}", holdout=0.1, seed=0, image_size=8) is None


# ---------------------------------------------------------------- settings and resume


def test_settings_are_validated() -> None:
    assert TrainConfig().holdout == 0.1 and TrainConfig().max_skipped == 0.01
    for bad in ({"holdout": "1"}, {"holdout": "-0.1"}, {"max_skipped": "1.5"}):
        with pytest.raises(ConfigError):
            build_config(bad)
    assert build_config({"holdout": "0", "max_skipped": "1"})[0].holdout == 0.0


def test_old_checkpoints_resume_on_every_row_without_a_limit() -> None:
    old = {"method": "clip", "data": "pairs:x.csv", "method_params": {"multi_positive": True}}
    saved = with_old_defaults(old)
    assert saved["holdout"] == 0.0 and saved["max_skipped"] == 1.0
    new = with_old_defaults({**old, "holdout": 0.1, "max_skipped": 0.01})
    assert new["holdout"] == 0.1 and new["max_skipped"] == 0.01
    assert "max_skipped" in CHANGEABLE and "holdout" not in CHANGEABLE
    refuse_changes({"max_skipped": "0.2"}, saved)  # may change on resume
    with pytest.raises(ConfigError, match=r"holdout: 0\.0 -> 0\.1"):
        refuse_changes({"holdout": "0.1"}, saved)
