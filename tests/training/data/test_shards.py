"""`--data shards:...`: webdataset-style tar shards read in place
(contrastkit.training.data.shards)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contrastkit.training.data import load_data
from contrastkit.training.data.base import DataError
from contrastkit.training.data.files import decode
from contrastkit.training.data.shards import ShardSource, scan_shards, shard_paths


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_shards(folder: Path, per_shard: int = 6, shards: int = 2, cls: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for s in range(shards):
        with tarfile.open(folder / f"train-{s:04d}.tar", "w") as tar:
            for _ in range(per_shard):
                key = f"sample{n:05d}"
                _add(tar, f"{key}.png", _png(n))
                _add(tar, f"{key}.txt", f"a picture number {n}\n".encode())
                if cls:
                    _add(tar, f"{key}.cls", str(n % 3).encode())
                n += 1
            _add(tar, "orphan.txt", b"a caption without an image")


def test_a_sample_reads_back_the_exact_image_its_caption_and_class(tmp_path: Path) -> None:
    _write_shards(tmp_path / "s")
    scan = scan_shards(shard_paths(str(tmp_path / "s")))
    assert len(scan.where) == 12 and scan.without_image == 2
    assert scan.texts is not None and scan.texts[7] == "a picture number 7"
    assert scan.labels is not None and scan.labels.tolist() == [i % 3 for i in range(12)]
    source = ShardSource(scan)
    for i in (0, 7, 11):
        got = np.asarray(source.open(i, 32).convert("RGB"))
        want = np.asarray(Image.open(io.BytesIO(_png(i))).convert("RGB"))
        np.testing.assert_array_equal(got, want)
    assert source.name(7).endswith("train-0001.tar:sample00007")


def test_load_data_batches_follow_the_data_contract_and_resume_exactly(tmp_path: Path) -> None:
    _write_shards(tmp_path / "s")
    data = load_data(f"shards:{tmp_path / 's'}", image_size=16, seed=5, workers=0)
    assert data.num_samples == 12 and data.has_texts and data.classes == ["0", "1", "2"]
    cpu = torch.device("cpu")
    full = list(data.batches(0, 4, cpu))
    assert len(full) == 3
    resumed = list(data.batches(0, 4, cpu, start_step=1))
    assert len(resumed) == 2
    for a, b in zip(full[1:], resumed, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.index, b.index)
    first = full[0]
    assert first.labels is not None and first.texts is not None
    i = int(first.index[0])
    assert first.texts[0] == f"a picture number {i}" and int(first.labels[0]) == i % 3
    want = decode(Image.open(io.BytesIO(_png(i))), 18, 18)  # load size round(16 * 8 / 7)
    assert torch.equal(first.images[0], want)
    # the order is the seeded permutation of every sample, not the shard order
    assert sorted(torch.cat([b.index for b in full]).tolist()) == list(range(12))
    assert torch.cat([b.index for b in full]).tolist() != list(range(12))


def test_a_glob_works_and_partial_captions_or_classes_mean_none(tmp_path: Path) -> None:
    _write_shards(tmp_path / "s", cls=False)
    with tarfile.open(tmp_path / "s" / "train-0002.tar", "w") as tar:
        _add(tar, "x.jpg", _jpeg())
    scan = scan_shards(shard_paths(str(tmp_path / "s" / "train-*.tar")))
    assert len(scan.where) == 13 and scan.labels is None and scan.texts is None


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buf, "JPEG")
    return buf.getvalue()


def test_bad_shards_are_refused_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no \.tar shards found"):
        shard_paths(str(tmp_path))
    (tmp_path / "a.tar.gz").write_bytes(b"")
    with pytest.raises(DataError, match="uncompressed"):
        shard_paths(str(tmp_path / "*.tar*"))
    (tmp_path / "broken.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(DataError, match="not a readable tar file"):
        scan_shards([str(tmp_path / "broken.tar")])
    with tarfile.open(tmp_path / "c.tar", "w") as tar:
        _add(tar, "k.png", _png(0))
        _add(tar, "k.cls", b"cat")
    with pytest.raises(DataError, match="not an integer"):
        scan_shards([str(tmp_path / "c.tar")])


def test_a_run_trains_on_shards_and_checkpoints(tmp_path: Path) -> None:
    from contrastkit.training.config import build_config
    from contrastkit.training.engine.trainer import Trainer
    from contrastkit.training.methods import get_method

    _write_shards(tmp_path / "s", per_shard=8)
    values = {
        "method": "simclr", "data": f"shards:{tmp_path / 's'}", "backbone": "tiny",
        "batch_size": 4, "image_size": 16, "device": "cpu", "out": str(tmp_path / "run"),
        "epochs": 1, "knn_every": 0, "tensorboard": False, "progress": False, "workers": 0,
        "proj_hidden": 16, "proj_dim": 8,
    }  # fmt: skip
    cfg, params = build_config(values, get_method("simclr").Params)
    result = Trainer(cfg, params).fit()
    assert result.epochs == 1 and (tmp_path / "run" / "last.pt").exists()
