"""`contrastive bench migrate` on two tiny CLIP exports and a few images: it runs the
commands it times, and reports the rates and their ratio."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contrastkit.service.cli import main
from tests.helpers import old_and_new_exports


def test_bench_migrate_times_both_ways_and_reports_the_ratio(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = old_and_new_exports(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(images / f"{i}.png")
    argv = ["bench", "migrate", "--images", str(images), "--from-model", str(old)]
    assert main([*argv, "--to-model", str(new), "--batch", "4", "--out", str(tmp_path / "r")]) == 0
    (result,) = (tmp_path / "r").glob("migrate-*.json")
    body = json.loads(result.read_text())
    assert body["items"] == 6
    assert body["rebuild_by_hand_items_per_s"] > 0 and body["migrate_items_per_s"] > 0
    want = body["migrate_items_per_s"] / body["rebuild_by_hand_items_per_s"]
    assert body["ratio"] == pytest.approx(want, rel=0.02)
    assert "ratio:" in capsys.readouterr().out
