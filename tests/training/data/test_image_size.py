"""image_size None follows the data (contrastkit.training.data.size): the size each data kind gets,
the run's first lines that say it, the far-below warning, and the int in checkpoints."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from contrastkit.training.config import ConfigError, TrainConfig, build_config
from contrastkit.training.data import load_data
from contrastkit.training.data.arrays import ArrayData
from contrastkit.training.data.size import (
    FAR_BELOW,
    PHOTO_SIZE,
    default_image_size,
    image_size_of,
    recipe_line,
    resolve_image_size,
    size_warning,
)
from contrastkit.training.engine.checkpoint import load_checkpoint
from contrastkit.training.engine.trainer import Trainer
from contrastkit.training.methods import get_method

LOGGER = "contrastive.train"


def write_photos(folder: Path, size: tuple[int, int], n: int = 4) -> Path:
    """`n` solid PNGs of (width, height) in two class folders; returns `folder`."""
    for i in range(n):
        path = folder / f"class{i % 2}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (40 * i, 90, 200)).save(path)
    return folder


def trainer(data: str, out: Path, **run: Any) -> Trainer:
    """A CPU Trainer on `data` with the toy backbone; nothing trains until fit()."""
    values = {
        "method": "simclr", "data": data, "backbone": "tiny", "batch_size": 2,
        "device": "cpu", "out": str(out), "steps": 1, "knn_every": 0, "workers": 0,
        "tensorboard": False, "progress": False, "proj_hidden": 16, "proj_dim": 8, **run,
    }  # fmt: skip
    cfg, params = build_config(values, get_method("simclr").Params)
    return Trainer(cfg, params)


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


# ---------------------------------------------------------------- resolution


@pytest.mark.parametrize(
    ("spec", "size", "why"),
    [
        ("digits", 32, "8x8"),
        ("fashion-mnist", 28, "native"),
        ("mnist:/nowhere", 28, "native"),
        ("torchvision:CIFAR10", 32, "CIFAR10's native"),
        ("torchvision:STL10", 96, "STL10's native"),
        ("torchvision:Flowers102", PHOTO_SIZE, "photos"),
        ("pairs:/nowhere/pairs.csv", PHOTO_SIZE, "captioned"),
        ("shards:/nowhere", PHOTO_SIZE, "shards"),
    ],
)
def test_each_data_kind_gets_its_size(spec: str, size: int, why: str) -> None:
    choice = default_image_size(spec)  # decided from the spec alone: nothing is read
    assert (choice.size, choice.from_data) == (size, True)
    assert why in choice.reason


def test_a_photo_folder_trains_at_224_and_an_explicit_size_wins(tmp_path: Path) -> None:
    folder = write_photos(tmp_path / "photos", (200, 300))
    cfg, _ = build_config({"data": f"folder:{folder}"})
    assert cfg.image_size is None  # the default is "follow the data"
    assert resolve_image_size(cfg).size == PHOTO_SIZE
    cfg, _ = build_config({"data": f"folder:{folder}", "image_size": "64"})
    choice = resolve_image_size(cfg)
    assert (choice.size, choice.from_data) == (64, False)
    assert choice.line() == "image size 64 px: set by image_size"


def test_unresolved_size_is_a_clear_error_and_none_passes_validation() -> None:
    cfg, _ = build_config({"image_size": "none"})
    with pytest.raises(ConfigError, match="not resolved yet"):
        image_size_of(cfg)
    with pytest.raises(ConfigError, match="at least 8"):
        build_config({"image_size": 4})


def test_the_recipe_follows_the_size() -> None:
    small = recipe_line(TrainConfig(backbone="resnet18", image_size=32))
    assert "CIFAR 3x3 stem" in small and "s = 0.5" in small and "blur off" in small
    large = recipe_line(TrainConfig(backbone="resnet18", image_size=PHOTO_SIZE))
    assert "standard 7x7 stem" in large and "s = 1" in large and "blur on" in large
    forced = recipe_line(TrainConfig(backbone="resnet18", image_size=32, cifar_stem=False))
    assert "standard 7x7 stem + max-pool (set by cifar_stem)" in forced


# ---------------------------------------------------------------- the run's first lines


def test_first_lines_name_the_size_the_reason_and_the_recipe(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = write_photos(tmp_path / "photos", (200, 300))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        run = trainer(f"folder:{folder}", tmp_path / "run")
    assert run.cfg.image_size == PHOTO_SIZE == run.image_size  # written into the config
    first, second = lines(caplog)[:2]
    assert first == (
        "image size 224 px: photo folder (the ImageNet recipes' size); set image_size to change"
    )
    assert second.startswith("recipe at 224 px: ") and "blur on" in second


# ---------------------------------------------------------------- far below the images' own


def test_a_size_far_below_large_photos_warns_and_224_does_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 1000 px shorter sides: 224 is below 1000 / 4 too, but 224 px is the photo recipe
    folder = write_photos(tmp_path / "photos", (1200, 1000))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        trainer(f"folder:{folder}", tmp_path / "small", image_size=32)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    assert "image size 32 px is far below the images' own 1000 px" in warned[0]
    assert "image_size=224" in warned[0]  # how to change it
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        trainer(f"folder:{folder}", tmp_path / "photo")
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_the_threshold_is_a_quarter_of_the_shorter_side(tmp_path: Path) -> None:
    folder = write_photos(tmp_path / "photos", (300, 200))
    data = load_data(f"folder:{folder}", image_size=32, workers=0)
    assert size_warning(data, 200 // FAR_BELOW) is None  # exactly a quarter: fine
    assert size_warning(data, 200 // FAR_BELOW - 1) is not None


def test_array_sets_compare_with_their_native_size() -> None:
    stl_like = ArrayData(torch.zeros(4, 3, 96, 96, dtype=torch.uint8), None, None)
    assert size_warning(stl_like, 16) is not None  # 16 < 96 / 4
    assert size_warning(stl_like, 32) is None
    digits_like = ArrayData(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), None, None)
    assert size_warning(digits_like, 32) is None  # upsampled: never "far below"


def test_unreadable_files_never_fail_the_check(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(b"not a png")
    data = load_data(f"folder:{tmp_path}", image_size=32, workers=0)
    assert size_warning(data, 8) is None


# ---------------------------------------------------------------- checkpoints and resume


def test_checkpoint_holds_the_resolved_int_and_resume_keeps_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from contrastkit.training.cli import build_training_parser
    from contrastkit.training.commands.train import resolve

    out = tmp_path / "run"
    trainer("digits", out, batch_size=16).fit()
    assert load_checkpoint(out).config["image_size"] == 32
    assert json.loads((out / "config.json").read_text())["image_size"] == 32
    args = build_training_parser().parse_args(["train", "--out", str(out), "--resume"])
    cfg, params, checkpoint = resolve(args)
    assert cfg.image_size == 32
    caplog.clear()  # the first run's lines, when an earlier test left the level at INFO
    with caplog.at_level(logging.INFO, logger=LOGGER):
        Trainer(cfg, params, resume=checkpoint)
    assert lines(caplog)[0] == "image size 32 px: the resumed run's own (its checkpoint's)"
