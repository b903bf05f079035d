"""`contrastive embed`: folder, list and shard inputs, the parquet parts, resume after a
stop or a crash, and vectors equal to /v1/embed/image's (a tiny open_clip export)."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from contrastkit.service.app import create_app
from contrastkit.service.cli import build_parser, main
from contrastkit.service.commands.embed.command import embed
from contrastkit.service.commands.embed.parquet import read_parts
from contrastkit.service.settings import Settings
from tests.helpers import wait_ready, write_tiny_clip_export

pa = pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clip_export(tmp_path_factory.mktemp("tiny") / "export")


def _image(i: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """7 images (PNG and JPEG, nested) and one file that is no image."""
    root = tmp_path / "photos"
    for i in range(7):
        path = root / ("nested" if i % 2 else "") / f"img{i}.{'jpg' if i % 3 else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        _image(i, (40 + i, 30)).save(path)
    (root / "nested" / "notes.txt").write_text("not an image\n")
    return root


def _run(export: Path, *argv: str) -> int:
    return main(["embed", *argv, "--model", str(export), "--device", "cpu", "--workers", "2"])


def _vectors(out: Path) -> dict[str, np.ndarray]:
    table = read_parts(out)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "an id was written twice"
    return dict(zip(ids, np.array(table.column("vector").to_pylist(), np.float32), strict=True))


def _summary(out: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads((out / "embed-summary.json").read_text())
    return summary


def test_folder_to_parquet_parts(export: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _run(export, str(photos), "--out", str(out), "--part-rows", "3", "--batch", "2") == 0
    assert sorted(p.name for p in out.glob("part-*")) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    table = read_parts(out)
    assert table.schema.field("id").type == pa.string()
    assert table.schema.field("vector").type == pa.list_(pa.float32())
    assert table.schema.field("source").type == pa.string()
    assert table.schema.field("metadata").type == pa.string()
    assert table.num_rows == 7
    assert "nested/img1.jpg" in table.column("id").to_pylist()
    vectors = np.array(table.column("vector").to_pylist())
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    meta = json.loads(table.column("metadata")[0].as_py())
    assert {"width", "height", "bytes"} <= set(meta) and meta["height"] == 30
    summary = _summary(out)
    assert summary["finished"] and summary["rows"] == 7 and summary["skipped"] == 1
    assert summary["skipped_by_reason"]["not a readable image"]["count"] == 1


def test_a_list_with_a_missing_file(
    export: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Relative paths against the list's folder; ids and captions from their columns; a
    missing file is counted and reported, and the job goes on."""
    listing = tmp_path / "list.csv"
    listing.write_text(
        "id,path,caption\n"
        "a,photos/img0.png,a red thing\n"
        "b,photos/gone.jpg,lost\n"
        f"c,{photos / 'nested' / 'img1.jpg'},\n"
    )
    out = tmp_path / "out"
    assert _run(export, str(listing), "--out", str(out)) == 0
    table = read_parts(out)
    assert table.column("id").to_pylist() == ["a", "c"]
    assert json.loads(table.column("metadata")[0].as_py())["caption"] == "a red thing"
    assert "caption" not in json.loads(table.column("metadata")[1].as_py())
    missing = _summary(out)["skipped_by_reason"]["missing file"]
    assert missing["count"] == 1 and "gone.jpg" in missing["example"]
    assert "skipped 1: missing file (e.g. " in capsys.readouterr().err


def test_tar_shards_with_captions(export: Path, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    for s in range(2):
        with tarfile.open(shards / f"shard-{s}.tar", "w") as tar:
            for k in range(3):
                _add_member(tar, f"{k:04d}.jpg", _jpeg(_image(10 * s + k)))
                _add_member(tar, f"{k:04d}.txt", f"caption {s} {k}".encode())
    out = tmp_path / "out"
    assert _run(export, str(shards), "--out", str(out)) == 0
    table = read_parts(out)
    assert table.column("id").to_pylist()[:2] == ["shard-0.tar/0000", "shard-0.tar/0001"]
    assert table.num_rows == 6
    assert json.loads(table.column("metadata")[4].as_py())["caption"] == "caption 1 1"
    assert table.column("source")[0].as_py().endswith("shard-0.tar:0000")


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG")
    return buf.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


class CrashError(Exception):
    """A kill, as far as the job can tell: it stops between two parts."""


def test_stopped_and_crashed_jobs_resume_to_the_same_set(
    export: Path, photos: Path, tmp_path: Path
) -> None:
    """A straight run, and one stopped by --max-parts then crashed by a hook and restarted
    twice, end with the same ids and vectors, none twice, and the same summary counts."""
    flags = ["--part-rows", "2", "--batch", "2"]
    straight = tmp_path / "straight"
    assert _run(export, str(photos), "--out", str(straight), *flags) == 0

    out = tmp_path / "resumed"
    assert _run(export, str(photos), "--out", str(out), *flags, "--max-parts", "1") == 0
    assert not _summary(out)["finished"] and _summary(out)["rows"] == 2

    def crash(name: str | None) -> None:
        raise CrashError(name)

    args = build_parser(["embed"]).parse_args(
        ["embed", str(photos), "--out", str(out), "--model", str(export), *flags]
    )
    with pytest.raises(CrashError):
        embed(args, on_part=crash)  # dies right after part 1 is committed
    (out / "part-00002.parquet.tmp").write_bytes(b"half a part")  # as a kill mid-write leaves
    assert _run(export, str(photos), "--out", str(out), *flags) == 0

    got, want = _vectors(out), _vectors(straight)
    assert sorted(got) == sorted(want)
    for id_, v in want.items():
        np.testing.assert_allclose(got[id_], v, atol=1e-6)
    assert _summary(out)["skipped"] == _summary(straight)["skipped"] == 1
    assert not list(out.glob("*.tmp"))
    again = _summary(out)["rows"]
    assert _run(export, str(photos), "--out", str(out), *flags) == 0  # nothing left to do
    assert _summary(out)["rows"] == again and _summary(out)["this_run"]["embedded"] == 0


def test_a_torn_manifest_line_is_dropped(export: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _run(export, str(photos), "--out", str(out), "--part-rows", "4") == 0
    manifest = out / "manifest.jsonl"
    first, second = manifest.read_text().splitlines()
    manifest.write_text(first + "\n" + second[: len(second) // 2])  # a kill mid-append
    assert _run(export, str(photos), "--out", str(out), "--part-rows", "4") == 0
    assert len(_vectors(out)) == 7
    assert len(manifest.read_text().splitlines()) == 2


def test_another_model_is_refused_in_the_same_folder(
    export: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    (out).mkdir()
    (out / "job.json").write_text(json.dumps({"model_id": "other", "embed_dim": 3}))
    assert _run(export, str(photos), "--out", str(out)) == 2
    assert "holds embeddings of 'other'" in capsys.readouterr().err


def test_without_pyarrow_it_says_which_extra(
    export: Path,
    photos: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if not installed
    assert _run(export, str(photos), "--out", str(tmp_path / "out")) == 2
    assert "install contrastkit[embed]" in capsys.readouterr().err


@pytest.mark.parametrize("device_decode", ["off", "on"])
def test_vectors_equal_the_apis(
    export: Path, photos: Path, tmp_path: Path, device_decode: str
) -> None:
    """Exactly the service's preprocessing: /v1/embed/image on the same files gives the
    same vectors to 1e-6, with the device decoder (here on the CPU: torchvision's
    decode_jpeg; nvJPEG on CUDA) as without."""
    out = tmp_path / "out"
    argv = ["--out", str(out), "--device-decode", device_decode, "--batch", "3"]
    assert _run(export, str(photos), *argv) == 0
    got = _vectors(out)
    settings = Settings(
        model=str(export), device="cpu", runtime="torch", auto_onnx=False,
        collections_dir=str(tmp_path / "collections"), device_decode=device_decode,
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        ids = sorted(got)
        files = [("files", (Path(i).name, (photos / i).read_bytes())) for i in ids]
        r = client.post("/v1/embed/image", files=files)
    assert r.status_code == 200, r.text
    served = np.array(r.json()["embeddings"], np.float32)
    np.testing.assert_allclose(np.stack([got[i] for i in ids]), served, atol=1e-6)


def test_a_jpeg_that_no_decoder_reads_is_skipped_on_the_device_path(
    export: Path, photos: Path, tmp_path: Path
) -> None:
    """A file with a JPEG's header and end marker but garbage between: the header check
    sends it to the device decoder, which refuses it, and so does PIL: one skip, counted,
    and the rest of its batch embedded."""
    good = (photos / "nested" / "img1.jpg").read_bytes()
    (photos / "broken.jpg").write_bytes(good[:200] + bytes(range(256)) * 2 + b"\xff\xd9")
    out = tmp_path / "out"
    assert _run(export, str(photos), "--out", str(out), "--device-decode", "on") == 0
    assert sorted(_vectors(out)) == sorted(str(p.relative_to(photos)) for p in photos.rglob("img*"))
    summary = _summary(out)
    assert summary["rows"] == 7 and summary["skipped"] == 2  # broken.jpg and notes.txt
    assert summary["skipped_by_reason"]["not a readable image"]["count"] == 2


def test_also_into_a_collection(export: Path, photos: Path, tmp_path: Path) -> None:
    """--collection: each part's rows are upserted in-process (the machinery of `index
    add`) with the vectors written to the parquet parts, and the source as `path`."""
    from contrastkit.service.index.factory import open_backend

    out, cols = tmp_path / "out", tmp_path / "collections"
    argv = [str(photos), "--out", str(out), "--collection", "photos"]
    assert _run(export, *argv, "--collections-dir", str(cols), "--part-rows", "3") == 0
    written = _vectors(out)
    store = open_backend("faiss", cols)
    try:
        col = store.get("photos")
        assert col.count() == 7
        item = col.get("nested/img1.jpg")
        assert item is not None and item.metadata["path"].endswith("img1.jpg")
        np.testing.assert_allclose(item.vector, written["nested/img1.jpg"], atol=1e-6)
    finally:
        store.close()


def test_bench_embed_reports_the_ratio(
    export: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "embed", "--images", str(photos), "--model", str(export)]
    assert main([*argv, "--device", "cpu", "--out", str(tmp_path / "results")]) == 0
    assert "ratio: " in capsys.readouterr().out
    result = json.loads(next((tmp_path / "results").glob("embed-*.json")).read_text())
    assert result["images"] == 7 and result["ratio"] > 0


def test_ray_actors_decode_on_the_device_as_one_machine_does(
    export: Path, photos: Path, tmp_path: Path
) -> None:
    """The Ray actor's batch function (no Ray needed to call it) with --device-decode on
    gives the one-machine job's vectors with it on, and the same skips."""
    import pyarrow as pa

    from contrastkit.service.commands.embed.ray_encoder import EncodeBatch, item_columns
    from contrastkit.service.commands.embed.sources import list_input
    from contrastkit.training.encoders import load_encoder

    (photos / "broken.jpg").write_bytes(
        (photos / "nested" / "img1.jpg").read_bytes()[:200] + bytes(512) + b"\xff\xd9"
    )
    out = tmp_path / "out"
    assert _run(export, str(photos), "--out", str(out), "--device-decode", "on") == 0
    want = _vectors(out)
    items = [i for i in list_input(str(photos), "folder", {}).items]
    model_id = load_encoder(str(export), device="cpu").model_id
    actor = EncodeBatch(str(export), None, "cpu", model_id, 10**8, 2, device_decode="on")
    got = actor(pa.Table.from_pylist([item_columns(i) for i in items]))
    by_id = dict(zip(got["id"], got["vector"], strict=True))
    skipped = {i for i, why in zip(got["id"], got["skip_reason"], strict=True) if why}
    assert skipped == {"broken.jpg", "nested/notes.txt"}
    assert set(by_id) - skipped == set(want)
    for id_, vector in want.items():
        np.testing.assert_allclose(by_id[id_], vector, atol=1e-6)
