"""bench pipelines' SmallGlyphAugmenter: the --quick views of 8x8 digits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from training.augment import Augmenter, ViewSpec, byol_views, multicrop_views, simclr_view
from training.bench.pipelines import (
    GLYPH_SCALE,
    GLYPH_SMALL_SCALE,
    BenchSettings,
    SmallGlyphAugmenter,
    build_trainer,
)


def test_glyph_views_keep_most_of_the_glyph_unmirrored(monkeypatch: pytest.MonkeyPatch) -> None:
    specs: list[ViewSpec] = []

    def record(self: Augmenter, images: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
        specs.append(spec)
        return images.float()

    monkeypatch.setattr(Augmenter, "__call__", record)
    glyphs = SmallGlyphAugmenter("cpu")
    images = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    for spec in [simclr_view(32), *byol_views(32), *multicrop_views(32)]:
        glyphs(images, spec)
    big, small = specs[:5], specs[5:]
    assert all(s.scale == GLYPH_SCALE and s.size == 32 for s in big)
    assert all(s.scale == GLYPH_SMALL_SCALE and s.size < 32 for s in small)
    assert all(s.hflip_p == 0 and s.solarize_p == 0 and s.gray_p == 0 for s in specs)
    assert all(s.jitter[2:] == (0.0, 0.0) for s in specs)  # no saturation, hue: grey data


def test_views_are_real_images_of_the_right_shape() -> None:
    views = SmallGlyphAugmenter("cpu", seed=3)(
        torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8), simclr_view(32)
    )
    assert views.shape == (4, 3, 32, 32) and torch.isfinite(views).all()


@pytest.mark.parametrize("glyph_views", [True, False])
def test_build_trainer_installs_the_glyph_views_only_when_asked(
    tmp_path: Path, glyph_views: bool
) -> None:
    s = BenchSettings(data="digits", backbone="tiny", batch_size=8, device="cpu",
                      glyph_views=glyph_views)  # fmt: skip
    trainer: Any = build_trainer(s, "simclr", tmp_path / "run")
    assert isinstance(trainer.augment, SmallGlyphAugmenter) == glyph_views
    assert trainer.knn.augment is trainer.augment
