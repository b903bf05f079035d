"""contrastkit.training.data: spec parsing, every source, and the batch order contract."""

from __future__ import annotations

import gzip
import json
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from contrastkit.training.data import (
    Batch,
    DataError,
    DataSpec,
    TrainData,
    load_data,
    load_knn_data,
    parse_spec,
)
from contrastkit.training.data.arrays import ArrayData
from contrastkit.training.data.files import decode, load_size
from contrastkit.training.data.idx import parse_idx, read_idx
from contrastkit.training.data.loader import FileData, PathSource

CPU = torch.device("cpu")
FASHION = Path("/usr/share/datasets/fashion-mnist")
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


# ---------------------------------------------------------------- helpers


def coded_images(n: int) -> torch.Tensor:
    """uint8 [n, 1, 2, 2] whose pixels spell the row number (low byte, high byte)."""
    out = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    for i in range(n):
        out[i, 0, 0, 0], out[i, 0, 0, 1] = i % 256, i // 256
    return out


def decoded_row(images: torch.Tensor) -> list[int]:
    return [int(img[0, 0, 0]) + 256 * int(img[0, 0, 1]) for img in images]


def expected_order(n: int, seed: int, epoch: int, b: int, world: int, rank: int) -> list[list[int]]:
    """The contract, written as loops over one Python list."""
    gen = torch.Generator()
    gen.manual_seed(seed * 1000003 + epoch)
    perm = torch.randperm(n, generator=gen).tolist()
    out = []
    step = 0
    while (step + 1) * b * world <= n:
        start = step * b * world + rank * b
        out.append(perm[start : start + b])
        step += 1
    return out


def write_png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (20, 14)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def idx_bytes(array: np.ndarray, type_code: int, big_endian_dtype: str) -> bytes:
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(big_endian_dtype).tobytes()


def all_batches(data: TrainData, epoch: int, b: int, **kw: Any) -> list[Batch]:
    return list(data.batches(epoch, b, CPU, **kw))


# ---------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("digits", DataSpec("digits")),
        ("fashion-mnist", DataSpec("fashion-mnist", "/usr/share/datasets/fashion-mnist")),
        ("fashion-mnist:/data/fm", DataSpec("fashion-mnist", "/data/fm")),
        ("mnist:/data/mnist", DataSpec("mnist", "/data/mnist")),
        ("folder:/photos/a:b", DataSpec("folder", "/photos/a:b")),
        ("pairs:caps.jsonl", DataSpec("pairs", "caps.jsonl")),
        ("torchvision:CIFAR10", DataSpec("torchvision", None, "CIFAR10")),
        ("torchvision:STL10:/tmp/stl", DataSpec("torchvision", "/tmp/stl", "STL10")),
    ],
)
def test_specs_parse(spec: str, expected: DataSpec) -> None:
    assert parse_spec(spec) == expected


@pytest.mark.parametrize("spec", ["cifar", "digits:x", "mnist", "folder:", "torchvision:", ""])
def test_bad_spec_lists_the_forms(spec: str) -> None:
    with pytest.raises(DataError) as err:
        load_data(spec)
    for form in ("digits", "fashion-mnist[:DIR]", "folder:DIR", "pairs:FILE", "torchvision:NAME"):
        assert form in str(err.value)


# ---------------------------------------------------------------- digits and idx


def test_digits_split_shapes_labels_and_values() -> None:
    from sklearn.datasets import load_digits

    ref = load_digits()
    data = load_data("digits")
    knn = load_knn_data("digits")
    assert knn is not None
    bank, queries = knn
    assert data.classes == [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
    ]
    assert isinstance(data, ArrayData) and data.channels == 1 and not data.has_texts
    assert (len(bank.labels), len(queries.labels)) == (1438, 359) == (data.num_samples, 359)
    assert bank.images.shape == (1438, 1, 8, 8) and bank.images.dtype == torch.uint8
    torch.testing.assert_close(data.images, bank.images)
    # Every digit lands in exactly one side; pixels are value * 255 / 16 rounded.
    lookup = {ref.images[i].tobytes(): i for i in range(len(ref.images))}
    seen = set()
    for part in (bank, queries):
        for img, label in zip(part.images, part.labels, strict=True):
            scaled = img[0].numpy().astype(np.float64) * 16 / 255
            i = lookup[np.round(scaled).astype(ref.images.dtype).tobytes()]
            assert ref.target[i] == int(label) and i not in seen
            seen.add(i)
    assert len(seen) == 1797
    assert int(bank.images.max()) == 255 and set(ref.images.ravel().tolist()) >= {16.0}


@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_real_files() -> None:
    data = load_data("fashion-mnist")
    knn = load_knn_data("fashion-mnist")
    assert knn is not None
    bank, queries = knn
    assert data.num_samples == 60000 and len(queries.labels) == 10000
    assert bank.images.shape == (60000, 1, 28, 28) and queries.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(bank.labels).tolist() == [6000] * 10
    assert torch.bincount(queries.labels).tolist() == [1000] * 10
    assert data.classes is not None and data.classes[0] == "T-shirt/top"
    assert data.classes[9] == "Ankle boot"
    assert 0 < float(queries.images.float().mean()) < 255


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_plain_and_gzip(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(0)
    sets = {
        "train": (rng.integers(0, 256, (7, 3, 4)), rng.integers(0, 10, 7)),
        "t10k": (rng.integers(0, 256, (3, 3, 4)), rng.integers(0, 10, 3)),
    }
    for prefix, (images, labels) in sets.items():
        for kind, arr, ndim in (("images", images, 3), ("labels", labels, 1)):
            raw = idx_bytes(arr, 0x08, "u1")
            name = tmp_path / f"{prefix}-{kind}-idx{ndim}-ubyte"
            if gz:
                Path(f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                name.write_bytes(raw)
    knn = load_knn_data(f"mnist:{tmp_path}")
    assert knn is not None
    for part, (images, labels) in zip(knn, sets.values(), strict=True):
        assert part.images.shape == (len(labels), 1, 3, 4)
        assert part.images[:, 0].tolist() == images.tolist()
        assert part.labels.tolist() == labels.tolist()
        assert part.classes[3] == "three"
    assert load_data(f"mnist:{tmp_path}").num_samples == 7


def test_idx_other_types_and_corrupt_files(tmp_path: Path) -> None:
    values = np.array([[-2, 300], [7, -32768]])
    np.testing.assert_array_equal(parse_idx(idx_bytes(values, 0x0B, ">i2")), values)
    floats = np.array([1.5, -0.25])
    np.testing.assert_array_equal(parse_idx(idx_bytes(floats, 0x0D, ">f4")), floats)
    with pytest.raises(DataError, match="bad magic"):
        parse_idx(b"\x01\x02\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(DataError, match="header says"):
        parse_idx(idx_bytes(np.zeros(4), 0x08, "u1")[:-1])
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_data(f"mnist:{tmp_path}")
    bad = tmp_path / "broken.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(str(bad))


# ---------------------------------------------------------------- files


def test_decode_centre_crop_is_exact() -> None:
    size = load_size(28)
    assert size == 32
    # 2L x L: outer quarters black, middle half white -> the centre crop is all white.
    arr = np.zeros((size, 2 * size, 3), dtype=np.uint8)
    arr[:, size // 2 : size // 2 + size] = 255
    out = decode(Image.fromarray(arr), size, size)
    assert out.shape == (3, size, size) and out.dtype == torch.uint8 and int(out.min()) == 255
    # Already the load size: pixels pass through untouched.
    noise = np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        decode(Image.fromarray(noise), size, size).permute(1, 2, 0), noise
    )
    # kNN crop: a smaller centre window of the same resize.
    small = decode(Image.fromarray(noise), size, 28)
    np.testing.assert_array_equal(small.permute(1, 2, 0), noise[2:30, 2:30])


def make_class_folder(root: Path, per_class: int = 5) -> None:
    for c, colour in enumerate(COLOURS):
        for i in range(per_class):
            write_png(root / f"class{c}" / f"sub/{i}.png", colour, size=(20 + i, 14))


def assert_colours_match_labels(images: torch.Tensor, labels: torch.Tensor) -> None:
    for img, label in zip(images, labels, strict=True):
        assert img[:, 5, 5].tolist() == list(COLOURS[int(label)])


def test_folder_with_classes(tmp_path: Path) -> None:
    make_class_folder(tmp_path)
    data = load_data(f"folder:{tmp_path}", image_size=14, workers=0)
    assert data.classes == ["class0", "class1", "class2"] and data.channels == 3
    assert data.num_samples == 12  # 80% of 15; the rest are kNN queries
    (batch,) = all_batches(data, 0, 12)
    assert batch.images.shape == (12, 3, 16, 16) and batch.labels is not None
    assert_colours_match_labels(batch.images, batch.labels)
    knn = load_knn_data(f"folder:{tmp_path}", image_size=14, workers=0)
    assert knn is not None
    bank, queries = knn
    assert bank.images.shape == (12, 3, 14, 14) and queries.images.shape == (3, 3, 14, 14)
    assert_colours_match_labels(bank.images, bank.labels)
    assert_colours_match_labels(queries.images, queries.labels)


def test_unlabelled_folder(tmp_path: Path) -> None:
    for i in range(6):
        write_png(tmp_path / f"{i}.jpg" if i % 2 else tmp_path / f"deep/{i}.PNG", COLOURS[0])
    (tmp_path / "notes.txt").write_text("not an image")
    # Images beside the subfolder: not a class layout, so everything counts, unlabelled.
    data = load_data(f"folder:{tmp_path}", workers=0)
    assert data.num_samples == 6 and data.classes is None
    assert load_knn_data(f"folder:{tmp_path}") is None
    (batch,) = all_batches(data, 0, 6)
    assert batch.labels is None and sorted(batch.index.tolist()) == list(range(6))
    (tmp_path / "deep" / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_data(f"folder:{tmp_path / 'deep' / 'empty'}")


def test_train_val_layout(tmp_path: Path) -> None:
    make_class_folder(tmp_path / "train", per_class=4)
    alone = load_knn_data(f"folder:{tmp_path}", workers=0)  # train/ only: 80/20 inside it
    assert alone is not None and alone[0].classes == ["class0", "class1", "class2"]
    assert (len(alone[0].labels), len(alone[1].labels)) == (10, 2)
    for c in (0, 2):
        write_png(tmp_path / "val" / f"class{c}" / "q.png", COLOURS[c])
    data = load_data(f"folder:{tmp_path}", workers=0)
    assert data.num_samples == 12  # all of train/
    knn = load_knn_data(f"folder:{tmp_path}", image_size=8, workers=0)
    assert knn is not None
    bank, queries = knn
    assert len(bank.labels) == 12 and queries.labels.tolist() == [0, 2]
    assert_colours_match_labels(queries.images, queries.labels)
    write_png(tmp_path / "val" / "stranger" / "x.png", COLOURS[1])
    with pytest.raises(DataError, match="stranger"):
        load_knn_data(f"folder:{tmp_path}", workers=0)


def test_corrupt_image_is_skipped_and_counted(tmp_path: Path) -> None:
    for i in range(4):
        write_png(tmp_path / f"{i}.png", COLOURS[i % 3])
    (tmp_path / "2.png").write_bytes(b"\x89PNG but not really")
    data = load_data(f"folder:{tmp_path}", workers=0)
    assert isinstance(data, FileData)
    with pytest.warns(UserWarning, match="unreadable image .*2.png"):
        (batch,) = all_batches(data, 0, 4)
    assert data.skipped == 1 and 2 not in batch.index.tolist()
    assert batch.images.shape[0] == 4  # the next readable image took its place
    for img, i in zip(batch.images, batch.index.tolist(), strict=True):
        assert img[:, 0, 0].tolist() == list(COLOURS[i % 3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        all_batches(data, 1, 4)  # already reported: no second warning
    assert data.skipped == 1


def write_pair_images(root: Path, n: int) -> list[str]:
    names = []
    for i in range(n):
        write_png(root / "img" / f"{i}.png", (i * 40, 0, 0))
        names.append(f"img/{i}.png")
    return names


def check_pairs(data: TrainData, n: int) -> None:
    assert data.has_texts and data.classes is None and data.num_samples == n
    for batch in all_batches(data, 3, 2):
        assert batch.texts is not None and batch.labels is None
        for img, text, i in zip(batch.images, batch.texts, batch.index.tolist(), strict=True):
            assert text == f"a red square number {i}" and int(img[0, 0, 0]) == i * 40


def test_pairs_csv_and_jsonl(tmp_path: Path) -> None:
    names = write_pair_images(tmp_path, 5)
    names[4] = str(tmp_path / names[4])  # absolute paths work too
    lines = ["filepath,title"] + [f"{p},a red square number {i}" for i, p in enumerate(names)]
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    check_pairs(load_data(f"pairs:{tmp_path / 'pairs.csv'}", workers=0), 5)
    rows = [
        json.dumps({"image": p, "caption": f"a red square number {i}"}) for i, p in enumerate(names)
    ]
    (tmp_path / "pairs.jsonl").write_text("\n".join(rows) + "\n\n")
    check_pairs(load_data(f"pairs:{tmp_path / 'pairs.jsonl'}", workers=0), 5)
    assert load_knn_data(f"pairs:{tmp_path / 'pairs.jsonl'}") is None


def test_pairs_errors(tmp_path: Path) -> None:
    names = write_pair_images(tmp_path, 2)
    bad_col = tmp_path / "bad.csv"
    bad_col.write_text("image,label\n" + "".join(f"{p},x\n" for p in names))
    with pytest.raises(DataError, match=r"caption.*found \['image', 'label'\]"):
        load_data(f"pairs:{bad_col}")
    missing = tmp_path / "missing.jsonl"
    rows = [{"image": p, "caption": "c"} for p in ["gone1.png", "gone2.png", "gone3.png"]]
    missing.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError, match=r"none of its 3 rows is usable: 3 \(missing file.*gone1"):
        load_data(f"pairs:{missing}")
    empty = tmp_path / "empty.csv"
    empty.write_text("image,caption\n")
    with pytest.raises(DataError, match="no image-caption pairs"):
        load_data(f"pairs:{empty}")
    with pytest.raises(DataError, match="does not exist"):
        load_data(f"pairs:{tmp_path / 'nope.csv'}")


# ---------------------------------------------------------------- torchvision


def test_torchvision_download_failure_is_a_data_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets

    class Offline:
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            raise RuntimeError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(DataError, match=r"torchvision:CIFAR10 into .*nets.*internet access"):
        load_data(f"torchvision:CIFAR10:{tmp_path / 'nets'}")
    with pytest.raises(DataError, match="no data set 'NoSuchSet'"):
        load_data("torchvision:NoSuchSet")


def test_torchvision_array_and_file_sets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torchvision.datasets

    class FakeArrays:  # CIFAR-like: HWC uint8 numpy + a list of targets
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            n = 10 if train else 4
            self.data = np.stack([np.full((5, 6, 3), i, np.uint8) for i in range(n)])
            self.targets = [i % 2 for i in range(n)]
            self.classes = ["cat", "dog"]

        def __len__(self) -> int:
            return len(self.targets)

    class FakeFiles:  # only PIL images through __getitem__, labels in `labels`
        def __init__(self, root: str, split: str = "train", download: bool = False) -> None:
            self.labels = [0, 1, 1] if split == "train" else [1]

        def __len__(self) -> int:
            return len(self.labels)

        def __getitem__(self, i: int) -> tuple[Image.Image, int]:
            return Image.new("RGB", (9, 7), COLOURS[self.labels[i]]), self.labels[i]

    monkeypatch.setattr(torchvision.datasets, "FakeArrays", FakeArrays, raising=False)
    monkeypatch.setattr(torchvision.datasets, "FakeFiles", FakeFiles, raising=False)
    arrays = load_data(f"torchvision:FakeArrays:{tmp_path}")
    assert isinstance(arrays, ArrayData) and arrays.classes == ["cat", "dog"]
    assert arrays.images.shape == (10, 3, 5, 6) and arrays.images[7].unique().tolist() == [7]
    knn = load_knn_data(f"torchvision:FakeFiles:{tmp_path}", image_size=7, workers=0)
    assert knn is not None and knn[1].labels.tolist() == [1] and knn[0].classes == ["0", "1"]
    assert_colours_match_labels(knn[0].images, knn[0].labels)
    files = load_data(f"torchvision:FakeFiles:{tmp_path}", image_size=7, workers=0)
    (batch,) = all_batches(files, 0, 3)
    assert batch.labels is not None and batch.images.shape == (3, 3, 8, 8)
    assert_colours_match_labels(batch.images, batch.labels)


# ---------------------------------------------------------------- batch order


@pytest.mark.parametrize("world", [1, 2, 3])
def test_order_follows_the_contract(world: int) -> None:
    data = ArrayData(coded_images(50), torch.arange(50) % 7, None, seed=5)
    assert data.steps_per_epoch(4, world) == 50 // (4 * world)
    for rank in range(world):
        batches = list(data.batches(2, 4, CPU, rank=rank, world_size=world))
        assert [b.index.tolist() for b in batches] == expected_order(50, 5, 2, 4, world, rank)
        for b in batches:
            assert decoded_row(b.images) == b.index.tolist()
            assert b.labels is not None and b.labels.tolist() == [i % 7 for i in b.index.tolist()]


def test_order_determinism_epochs_ranks_resume_and_drop_last() -> None:
    data = ArrayData(coded_images(103), None, None, seed=1)
    first = [b.index.tolist() for b in all_batches(data, 0, 8)]
    assert first == [b.index.tolist() for b in all_batches(data, 0, 8)]
    assert first != [b.index.tolist() for b in all_batches(data, 1, 8)]
    assert len(first) == 12 == data.steps_per_epoch(8)  # 103 // 8, last 7 dropped
    other_seed = ArrayData(coded_images(103), None, None, seed=2)
    assert first != [b.index.tolist() for b in all_batches(other_seed, 0, 8)]
    # Two ranks of 4 concatenate to one process's batch of 8.
    r0 = all_batches(data, 0, 4, rank=0, world_size=2)
    r1 = all_batches(data, 0, 4, rank=1, world_size=2)
    assert len(r0) == len(r1) == 12
    for a, b, whole in zip(r0, r1, first, strict=True):
        assert torch.cat([a.index, b.index]).tolist() == whole
        assert decoded_row(torch.cat([a.images, b.images])) == whole
    # Resume: start_step k yields exactly the batches from k on.
    assert [b.index.tolist() for b in all_batches(data, 0, 8, start_step=5)] == first[5:]
    assert all_batches(data, 0, 8, start_step=12) == []
    with pytest.raises(DataError, match="larger than the data set"):
        all_batches(data, 0, 52, world_size=2)
    with pytest.raises(DataError, match="larger than the data set"):
        data.steps_per_epoch(104)


def test_file_sets_share_the_order(tmp_path: Path) -> None:
    for i in range(9):
        write_png(tmp_path / f"{i}.png", (i, 0, 0), size=(4, 4))
    files = FileData(
        PathSource([str(tmp_path / f"{i}.png") for i in range(9)]), size=4, seed=3, workers=2
    )
    arrays = ArrayData(coded_images(9), None, None, seed=3)
    for kw in ({}, {"start_step": 1}, {"rank": 1, "world_size": 2}):
        want = [b.index.tolist() for b in all_batches(arrays, 4, 2, **kw)]
        got = all_batches(files, 4, 2, **kw)  # decoded in 2 worker processes
        assert [b.index.tolist() for b in got] == want
        for b in got:
            assert b.images[:, 0, 0, 0].tolist() == b.index.tolist()
