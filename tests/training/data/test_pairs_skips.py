"""Pairs files with bad rows: missing images and empty captions are skipped and counted by
reason, and past `max_skipped` a run stops with one line (contrastkit.training.data.files,
contrastkit.training.data.skips, the trainer's per-epoch check and the CLI)."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from PIL import Image

from contrastkit.training.cli import main
from contrastkit.training.data import load_data
from contrastkit.training.data.base import DataError
from contrastkit.training.data.files import SKIP_EMPTY_CAPTION, SKIP_MISSING_FILE
from contrastkit.training.data.loader import UNREADABLE, FileData
from contrastkit.training.data.skips import fraction_to_allow, skip_limit
from contrastkit.training.evaluate.data import load_eval_data
from contrastkit.training.evaluate.pairs import read_pair_spec


def write_images(root: Path, n: int) -> list[str]:
    """n tiny PNGs root/img/i.png (8x6, a distinct red each); their relative paths."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (8, 6), (i * 9 % 256, 0, 0)).save(root / "img" / f"{i}.png")
    return [f"img/{i}.png" for i in range(n)]


def write_jsonl(path: Path, rows: Sequence[Mapping[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def mixed_rows(root: Path) -> list[dict[str, object]]:
    """6 good rows, 2 with a missing image (rows 1 and 4), 3 with an empty caption
    ('', whitespace, JSON null: rows 2, 6, 8)."""
    names = write_images(root, 9)
    rows: list[dict[str, object]] = [
        {"image": p, "caption": f"row {i}"} for i, p in enumerate(names)
    ]
    rows[1]["image"], rows[4]["image"] = "img/gone1.png", "img/gone4.png"
    rows[2]["caption"], rows[6]["caption"], rows[8]["caption"] = "", "  \t", None
    extra: list[dict[str, object]] = [
        {"image": "img/0.png", "caption": "row 9"},
        {"image": "img/3.png", "caption": "x"},
    ]
    return [*rows, *extra]


# ---------------------------------------------------------------- skipped and counted


def test_missing_images_and_empty_captions_are_skipped_and_counted(tmp_path: Path) -> None:
    spec = f"pairs:{write_jsonl(tmp_path / 'pairs.jsonl', mixed_rows(tmp_path))}"
    with pytest.warns(UserWarning, match="pairs: skipped 5 of the 11 rows") as record:
        data = load_data(spec, image_size=8, workers=0)
    line = str(record[0].message)
    assert f"2 (missing file, e.g. {tmp_path / 'img' / 'gone1.png'})" in line
    assert f"3 (empty caption, e.g. {tmp_path / 'pairs.jsonl'}:3)" in line  # the file's line 3
    assert isinstance(data, FileData) and data.num_samples == 6
    assert data.texts == ["row 0", "row 3", "row 5", "row 7", "row 9", "x"]
    assert data.skipped_samples() == {SKIP_MISSING_FILE: 2, SKIP_EMPTY_CAPTION: 3}
    assert data.skip_examples()[SKIP_MISSING_FILE] == str(tmp_path / "img" / "gone1.png")
    assert data.source_size() == 11


def test_csv_rows_with_an_empty_cell_are_skipped(tmp_path: Path) -> None:
    names = write_images(tmp_path, 3)
    lines = ["image,caption", f"{names[0]},a", ",b", f"{names[1]},", f"{names[2]},c"]
    (tmp_path / "p.csv").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="skipped 2 of the 4 rows") as record:
        data = load_data(f"pairs:{tmp_path / 'p.csv'}", workers=0)
    assert f"e.g. {tmp_path / 'p.csv'}:3 (no path)" in str(record[0].message)
    assert data.skipped_samples() == {SKIP_MISSING_FILE: 1, SKIP_EMPTY_CAPTION: 1}
    assert isinstance(data, FileData) and data.texts == ["a", "c"]


def test_a_clean_file_loads_without_warnings(tmp_path: Path) -> None:
    rows = [{"image": p, "caption": f"c{i}"} for i, p in enumerate(write_images(tmp_path, 4))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load_data(f"pairs:{write_jsonl(tmp_path / 'p.jsonl', rows)}", workers=0)
    assert data.num_samples == 4 and data.skipped_samples() == {}


def test_a_file_without_a_usable_row_is_an_error(tmp_path: Path) -> None:
    names = write_images(tmp_path, 2)
    rows = [{"image": "gone.png", "caption": "a"}, {"image": names[0], "caption": " "}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_data(f"pairs:{path}", workers=0)
    message = str(err.value)
    assert message.startswith(f"{path}: none of its 2 rows is usable: ")
    assert "1 (missing file, e.g." in message and "1 (empty caption, e.g." in message
    assert f"relative paths resolve against {tmp_path}" in message and "\n" not in message


@pytest.mark.parametrize(
    ("name", "text"),
    [("p.csv:3", "image,caption\nimg/0.png,a\nimg/1.png\n"),  # a short row: no caption cell
     ("p.jsonl:2", '{"image": "img/0.png", "caption": "a"}\n{"image": "img/1.png"}\n')],
)  # fmt: skip
def test_a_row_without_the_caption_column_is_a_malformed_file(
    tmp_path: Path, name: str, text: str
) -> None:
    write_images(tmp_path, 2)
    (tmp_path / name.partition(":")[0]).write_text(text)
    with pytest.raises(DataError, match=rf"{name}: the row lacks 'image' or 'caption'"):
        load_data(f"pairs:{tmp_path / name.partition(':')[0]}", workers=0)


def test_eval_reads_the_usable_rows_and_says_how_many_were_skipped(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", mixed_rows(tmp_path))
    with pytest.warns(UserWarning, match="pairs: skipped 5 of the 11 rows"):
        paths, captions = read_pair_spec(str(path))
    assert len(paths) == len(captions) == 6 and all(Path(p).is_file() for p in paths)
    with pytest.warns(UserWarning, match="skipped 5"):
        data = load_eval_data(f"pairs:{path}", image_size=8)
    assert data.captions is not None and len(data.queries) == 6


# ---------------------------------------------------------------- the limit


def test_the_limit_is_a_fraction_but_never_below_ten() -> None:
    assert skip_limit(100, 0.01) == 10 and skip_limit(5000, 0.01) == 50
    assert skip_limit(100, 0.29) == 29  # not 28: 0.29 * 100 is 28.999... in floats
    assert fraction_to_allow(12, 20) == 0.6 and fraction_to_allow(29, 100) == 0.29
    assert fraction_to_allow(1, 3) == 0.34 and fraction_to_allow(5, 5) == 1.0
    for size in range(1, 400):
        for skipped in range(11, size + 1):  # the suggestion always allows what stopped
            fraction = fraction_to_allow(skipped, size)
            assert skipped <= skip_limit(size, fraction)
            assert fraction == 0.01 or skipped > skip_limit(size, fraction - 0.01)


def test_load_data_stops_past_max_skipped_with_one_line(tmp_path: Path) -> None:
    names = write_images(tmp_path, 8)
    rows = [{"image": p, "caption": "c"} for p in names]
    rows += [{"image": f"gone{i}.png", "caption": "c"} for i in range(12)]
    spec = f"pairs:{write_jsonl(tmp_path / 'p.jsonl', rows)}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # past the limit: the error alone, no warning first
        with pytest.raises(DataError) as err:
            load_data(spec, workers=0, max_skipped=0.5)
    assert str(err.value) == (
        f"12 of 20 samples were skipped: 12 (missing file, e.g. {tmp_path / 'gone0.png'}); "
        "that is more than max_skipped=0.5 of the data set allows; fix or remove those "
        "samples, or raise the limit with --set max_skipped=0.6"
    )
    with pytest.warns(UserWarning, match="skipped 12 of the 20 rows"):
        assert load_data(spec, workers=0, max_skipped=0.6).num_samples == 8


def test_ten_skipped_samples_never_stop_a_run(tmp_path: Path) -> None:
    rows = [{"image": p, "caption": "c"} for p in write_images(tmp_path, 2)]
    rows += [{"image": f"gone{i}.png", "caption": "c"} for i in range(10)]
    with pytest.warns(UserWarning, match="skipped 10"):
        data = load_data(f"pairs:{write_jsonl(tmp_path / 'p.jsonl', rows)}", max_skipped=0.0)
    assert data.num_samples == 2


def train_argv(tmp_path: Path, spec: str, *sets: str) -> list[str]:
    argv = ["train", "--method", "simclr", "--data", spec, "--backbone", "tiny",
            "--batch-size", "4", "--device", "cpu", "--out", str(tmp_path / "run")]  # fmt: skip
    for setting in ("progress=false", "tensorboard=false", "workers=0", "image_size=16", *sets):
        argv += ["--set", setting]
    return argv


def test_cli_stops_at_load_with_exit_2_and_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"image": p, "caption": "c"} for p in write_images(tmp_path, 8)]
    rows += [{"image": f"gone{i}.png", "caption": "c"} for i in range(12)]
    spec = f"pairs:{write_jsonl(tmp_path / 'p.jsonl', rows)}"
    code = main([*train_argv(tmp_path, spec), "--steps", "1"])
    lines = capsys.readouterr().err.strip().splitlines()
    err = [x for x in lines if not x.startswith("INFO ")]  # the run's first log lines
    assert code == 2 and len(err) == 1, lines
    # the default holdout (0.1) keeps 2 of the 20 rows out of training: 18 remain
    found = re.match(r"contrastive train: (\d+) of 18 samples were skipped: ", err[0])
    assert found is not None, err[0]
    skipped = int(found[1])
    assert f": {skipped} (missing file, e.g. {tmp_path / 'gone'}" in err[0]
    assert err[0].endswith(f"--set max_skipped={fraction_to_allow(skipped, 18):g}")
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.filterwarnings("ignore:skipping unreadable image")
def test_cli_stops_after_an_epoch_of_unreadable_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = write_images(tmp_path, 24)
    for i in range(0, 22, 2):  # 11 files that exist but are not images
        (tmp_path / names[i]).write_bytes(b"not a png")
    rows = [{"image": p, "caption": f"c{i}"} for i, p in enumerate(names)]
    spec = f"pairs:{write_jsonl(tmp_path / 'p.jsonl', rows)}"
    code = main([*train_argv(tmp_path, spec, "holdout=0"), "--steps", "6"])  # one epoch
    lines = capsys.readouterr().err.strip().splitlines()
    err = [x for x in lines if x.startswith("contrastive train:")]
    assert code == 2 and len(err) == 1 and lines[-1] == err[0], lines
    assert err[0].startswith(
        f"contrastive train: 11 of 24 samples were skipped: 11 ({UNREADABLE}, e.g. {tmp_path}"
    )
    assert err[0].endswith("--set max_skipped=0.46")
