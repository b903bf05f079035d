"""Bad sample-level values in the data files: refused with one clear line, or skipped and
counted, and never sizing an allocation by what a file claims (contrastkit.training.data)."""

from __future__ import annotations

import gzip
import io
import logging
import resource
import tarfile
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from contrastkit.training.cli import main
from contrastkit.training.data import files as data_files
from contrastkit.training.data import load_data
from contrastkit.training.data import shards as data_shards
from contrastkit.training.data.base import DataError
from contrastkit.training.data.idx import read_idx
from contrastkit.training.data.loader import FileData
from contrastkit.training.data.shards import ShardSource, scan_shards, shard_paths
from contrastkit.training.engine.trainer import Trainer
from tests.training.data.test_shards import _add, _png


def write_shard(
    path: Path, n: int = 6, cls: list[str] | None = None, caption: bytes | None = None
) -> Path:
    """One shard of n samples KEY.png + KEY.txt [+ KEY.cls from `cls`]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            key = f"sample{i:05d}"
            _add(tar, f"{key}.png", _png(i))
            _add(tar, f"{key}.txt", caption if caption and i == 1 else f"picture {i}".encode())
            if cls is not None:
                _add(tar, f"{key}.cls", cls[i].encode())
    return path


def member_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """member name -> (header offset, data offset)."""
    with tarfile.open(path) as tar:
        return {m.name: (m.offset, m.offset_data) for m in tar}


# ---------------------------------------------------------------- class ids


def test_a_class_id_of_five_billion_is_refused_naming_shard_and_member(tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "s" / "a.tar", cls=["0", "1", "5000000000", "1", "0", "1"])
    with pytest.raises(DataError) as err:
        scan_shards(shard_paths(str(tmp_path / "s")))
    message = str(err.value)
    assert str(shard) in message and "sample00002.cls" in message
    assert "5000000000" in message and "\n" not in message


@pytest.mark.parametrize(
    ("value", "words"), [("-3", "class -3 is outside"), ("seven", "not an integer class")]
)
def test_negative_and_non_integer_classes_name_shard_and_member(
    tmp_path: Path, value: str, words: str
) -> None:
    shard = write_shard(tmp_path / "s" / "a.tar", cls=["0", "1", "2", value, "0", "1"])
    with pytest.raises(DataError, match=words) as err:
        load_data(f"shards:{tmp_path / 's'}", workers=0)
    assert f"shard {shard}, member sample00003.cls" in str(err.value)


def test_a_long_cls_member_is_refused_without_reading_it(tmp_path: Path) -> None:
    write_shard(tmp_path / "s" / "a.tar", cls=["0", "1", "2" * 5000, "1", "0", "1"])
    with pytest.raises(DataError, match=r"a \.cls of 5000 bytes is not a class id"):
        scan_shards(shard_paths(str(tmp_path / "s")))


def test_classes_come_from_the_ids_present_not_the_largest(tmp_path: Path) -> None:
    # A sparse id: the old code built a name for every class up to it (1,000,001 strings).
    ids = ["7", "1000000", "7", "3", "1000000", "3"]
    write_shard(tmp_path / "s" / "a.tar", cls=ids)
    tracemalloc.start()
    try:
        data = load_data(f"shards:{tmp_path / 's'}", workers=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data.classes == ["3", "7", "1000000"]
    assert isinstance(data, FileData) and data.labels is not None
    assert data.labels.tolist() == [1, 2, 1, 0, 2, 0]
    assert peak < 8 * 2**20, f"loading 6 samples traced {peak} bytes"


def test_some_samples_without_a_cls_are_warned(tmp_path: Path) -> None:
    shard = tmp_path / "s" / "a.tar"
    write_shard(shard)
    with tarfile.open(tmp_path / "s" / "b.tar", "w") as tar:
        _add(tar, "x.png", _png(9))
        _add(tar, "x.cls", b"4")
    with pytest.warns(UserWarning, match=r"only 1 of 7 samples have a \.cls"):
        data = load_data(f"shards:{tmp_path / 's'}", workers=0)
    assert data.classes is None


def test_cli_stops_with_exit_2_and_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_shard(tmp_path / "s" / "a.tar", cls=["0", "1", "5000000000", "1", "0", "1"])
    argv = ["train", "--method", "simclr", "--data", f"shards:{tmp_path / 's'}",
            "--backbone", "tiny", "--batch-size", "2", "--steps", "1", "--device", "cpu",
            "--out", str(tmp_path / "run"), "--set", "progress=false",
            "--set", "tensorboard=false", "--set", "workers=0"]  # fmt: skip
    # Address-space cap while the CLI runs: code that sizes a list by the class id fails
    # with MemoryError in a moment instead of taking the machine's memory.
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * resource.getpagesize()
    cap = used + 2 * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard < 0 else min(cap, hard), hard))
    try:
        code = main(argv)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    lines = capsys.readouterr().err.strip().splitlines()
    err = [x for x in lines if not x.startswith("INFO ")]  # the run's first log lines
    assert code == 2
    assert err == [err[-1]] and err[0].startswith("contrastive train: shard "), lines
    assert "sample00002.cls: class 5000000000 is outside" in err[0]


# ---------------------------------------------------------------- oversized members


def test_oversized_image_and_caption_members_are_skipped_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shard = write_shard(tmp_path / "s" / "a.tar", caption=b"x" * (64 * 2**10 + 1))
    big = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
        big, "PNG"
    )
    with tarfile.open(tmp_path / "s" / "b.tar", "w") as tar:
        for i in range(2):
            _add(tar, f"big{i}.png", big.getvalue())
            _add(tar, f"big{i}.txt", b"a caption")
    # The limit scaled down to the test's images: _png's are ~1.5 kB, the 64x64 ~12 kB.
    assert max(len(_png(i)) for i in range(6)) < 5000 < len(big.getvalue())
    monkeypatch.setattr(data_shards, "MAX_IMAGE_BYTES", 5000)
    with pytest.warns(UserWarning, match="shards: skipped 3 samples") as record:
        data = load_data(f"shards:{tmp_path / 's'}", workers=0)
    line = str(record[-1].message)
    assert f"1 (caption over 64 KiB, e.g. {shard}:sample00001)" in line
    assert f"2 ({data_shards.SKIP_BIG_IMAGE}, e.g. {tmp_path / 's' / 'b.tar'}:big0)" in line
    assert data.num_samples == 5 and data.has_texts
    assert data.skipped_samples() == {"caption over 64 KiB": 1, data_shards.SKIP_BIG_IMAGE: 2}


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_shard(tmp_path / "s" / "a.tar")
    source = ShardSource(scan_shards(shard_paths(str(tmp_path / "s"))))
    monkeypatch.setattr(data_files, "MAX_DECODE_PIXELS", 20 * 24 - 1)
    with pytest.raises(ValueError, match="24x20 pixels is over the 479 pixel limit"):
        source.open(0, 8)


# ---------------------------------------------------------------- truncated shards


def test_a_tar_cut_inside_a_member_is_read_up_to_the_cut_with_a_warning(tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "s" / "a.tar")
    _, data_at = member_offsets(shard)["sample00003.png"]
    raw = shard.read_bytes()
    shard.write_bytes(raw[: data_at + 40])  # inside sample 3's image
    with pytest.warns(UserWarning, match="truncated") as record:
        scan = scan_shards(shard_paths(str(tmp_path / "s")))
    line = str(record[0].message)
    assert str(shard) in line and f"at byte {data_at + 40}" in line and "kept 3" in line
    assert scan.keys == ["sample00000", "sample00001", "sample00002"]
    assert scan.skipped == {data_shards.SKIP_CUT: 1} and len(scan.truncated) == 1


def test_a_tar_cut_between_members_is_not_read_silently(tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "s" / "a.tar", cls=["0", "1", "2", "0", "1", "2"])
    header_at, _ = member_offsets(shard)["sample00004.png"]
    shard.write_bytes(shard.read_bytes()[:header_at])  # whole members, no end marker
    with pytest.warns(UserWarning, match="truncated") as record:
        data = load_data(f"shards:{tmp_path / 's'}", workers=0)
    assert any(str(shard) in str(r.message) and "read 12 members" in str(r.message)
               for r in record)  # fmt: skip
    # sample 3 may have had members past the cut: it is dropped, the rest keep labels
    assert data.num_samples == 3 and data.classes == ["0", "1", "2"]
    assert data.skipped_samples() == {data_shards.SKIP_CUT: 1}


def test_a_whole_tar_reads_without_warnings(tmp_path: Path) -> None:
    import warnings

    write_shard(tmp_path / "s" / "a.tar", cls=["0", "1", "2", "0", "1", "2"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load_data(f"shards:{tmp_path / 's'}", workers=0)
    assert data.num_samples == 6 and data.skipped_samples() == {}


# ---------------------------------------------------------------- idx headers


def idx_header(type_code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, type_code, len(dims)]) + np.array(dims, dtype=">u4").tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_an_idx_header_claiming_more_items_than_the_file_holds(tmp_path: Path, gz: bool) -> None:
    raw = idx_header(0x08, (60000, 28, 28)) + bytes(28 * 28 * 3)
    path = tmp_path / ("x-idx3-ubyte.gz" if gz else "x-idx3-ubyte")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError, match=r"header says \(60000, 28, 28\) \(47040016 bytes\)"):
        read_idx(str(path))


def test_an_idx_header_whose_size_overflows_int64_is_refused(tmp_path: Path) -> None:
    # 65536**4 elements wraps to 0 in numpy's int64 product: the old check let a bare
    # header through as a valid file of that shape.
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(idx_header(0x08, (65536, 65536, 65536, 65536)))
    with pytest.raises(DataError, match="header says"):
        read_idx(str(path))


def test_a_gzipped_idx_is_read_no_further_than_its_header_says(tmp_path: Path) -> None:
    raw = idx_header(0x08, (2, 2)) + bytes(4) + bytes(8 * 2**20)  # 8 MiB past the end
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(raw))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="the file has more than 16"):
            read_idx(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20


# ---------------------------------------------------------------- reporting


def test_the_trainer_logs_new_skips_once_after_an_epoch(caplog: pytest.LogCaptureFixture) -> None:
    counts = {"image member over 64 MiB": 2}
    data = SimpleNamespace(
        skipped_samples=lambda: dict(counts), skip_examples=dict, source_size=lambda: 1000
    )
    fake = SimpleNamespace(
        data=data, cfg=SimpleNamespace(max_skipped=0.01), epoch=0, _skipped_reported=0
    )
    with caplog.at_level(logging.WARNING, logger="contrastive.train"):
        Trainer._report_skipped(fake)  # type: ignore[arg-type]
        Trainer._report_skipped(fake)  # type: ignore[arg-type]  # nothing new: no line
        counts["unreadable image"] = 1
        Trainer._report_skipped(fake)  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records] == [
        "epoch 1: 2 samples skipped so far (2 image member over 64 MiB)",
        "epoch 1: 3 samples skipped so far (2 image member over 64 MiB, 1 unreadable image)",
    ]


def test_unreadable_images_count_in_skipped_samples(tmp_path: Path) -> None:
    write_shard(tmp_path / "s" / "a.tar")
    data = load_data(f"shards:{tmp_path / 's'}", image_size=8, workers=0)
    assert isinstance(data, FileData)
    assert isinstance(data.source, ShardSource)
    shard, offset, size = data.source.where[2]
    raw = bytearray(Path(data.source.shards[shard]).read_bytes())
    raw[offset : offset + size] = bytes(size)  # sample 2's image bytes are zeros now
    Path(data.source.shards[shard]).write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="unreadable image"):
        batches = list(data.batches(0, 6, torch.device("cpu")))
    assert len(batches) == 1 and data.skipped_samples() == {"unreadable image": 1}
    assert Image.open(io.BytesIO(_png(0))).size == (24, 20)


def test_torchvision_ids_beyond_the_numbered_class_limit_are_refused() -> None:
    from contrastkit.training.data.tv import _classes

    # Just past the limit: code without it builds 200,001 names, not billions.
    with pytest.raises(DataError, match=r"class ids 0\.\.200000 are outside 0\.\.99999"):
        _classes(object(), torch.tensor([0, 200_000]))
    with pytest.raises(DataError, match=r"class ids -1\.\.2 are outside"):
        _classes(object(), torch.tensor([-1, 2]))
    assert _classes(object(), torch.tensor([2, 0])) == ["0", "1", "2"]
