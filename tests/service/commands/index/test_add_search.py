"""`contrastive index add|search`: in-process with a tiny open_clip export, and over HTTP."""

from __future__ import annotations

import base64
import io
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contrastkit.service.cli import main
from contrastkit.service.commands.index.images import NotAnImageError, read_image
from contrastkit.service.index.factory import open_backend
from contrastkit.training.encoders import load_encoder
from tests.helpers import free_port, serve_argv, wait_server_ready, write_tiny_clip_export

QUERY = "a photo of a red square"
IMAGES = {  # id -> colour; ids are paths relative to the folder
    "red.png": (230, 30, 20),
    "nested/green.png": (20, 210, 40),
    "nested/deeper/blue.png": (20, 40, 220),
    "nested/deeper/grey.jpg": (128, 128, 128),
}


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clip_export(tmp_path_factory.mktemp("tiny") / "export")


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for i, (id_, colour) in enumerate(IMAGES.items()):
        path = root / id_
        path.parent.mkdir(parents=True, exist_ok=True)
        ramp = np.linspace(0.3 + 0.1 * i, 1.0, 48)[None, :, None]
        arr = (np.ones((36, 48, 3)) * np.asarray(colour) * ramp).astype(np.uint8)
        Image.fromarray(arr).save(path)
    (root / "nested" / "notes.txt").write_text("not an image\n" * 100)
    return root


def _expected_ranking(export: Path, photos: Path) -> list[str]:
    """The ids by cosine similarity to QUERY, computed with the encoder directly."""
    enc = load_encoder(str(export), device="cpu")
    size = enc.info.preprocess.size
    images = [read_image(photos / id_, 10**9, size)[1] for id_ in IMAGES]
    sims = enc.encode_images(images).numpy() @ enc.encode_texts([QUERY]).numpy()[0]
    return [list(IMAGES)[i] for i in np.argsort(-sims)]


def test_an_unusable_image_is_refused_in_the_decoders_words(tmp_path: Path) -> None:
    """The CLI prints the decoder's own message: it names the file "it", not "image 0"."""
    big, truncated = tmp_path / "big.png", tmp_path / "truncated.jpg"
    Image.new("RGB", (8, 8)).save(big)
    jpeg = io.BytesIO()
    Image.effect_noise((256, 256), 64).convert("RGB").save(jpeg, "JPEG")
    truncated.write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    with pytest.raises(NotAnImageError) as e:
        read_image(big, 10, None)
    assert str(e.value) == "it is 8x8 = 64 pixels; the limit is 10"
    with pytest.raises(NotAnImageError) as e:
        read_image(truncated, 10**6, None)
    assert str(e.value).startswith("it could not be decoded (truncated or corrupt?) (")


def test_add_skips_a_file_whose_name_is_no_valid_id(tmp_path: Path) -> None:
    """A file name that is not UTF-8 reads as a lone surrogate, which the item rules (the
    API's) refuse as an id: the file is skipped, named, before anything is embedded."""
    from contrastkit.service.commands.index.add import collect

    (tmp_path / "ok.png").write_bytes(b"x")
    (tmp_path / os.fsdecode(b"bad\xff.png")).write_bytes(b"x")
    (tmp_path / ("x" * 200 + ".d")).mkdir()
    (tmp_path / ("x" * 200 + ".d") / ("y" * 60)).write_bytes(b"x")  # id of 263 characters
    warnings: list[str] = []
    assert [id_ for id_, _ in collect([str(tmp_path)], warnings.append)] == ["ok.png"]
    assert sorted(w.split(": ", 1)[1] for w in warnings) == [
        "its id is not valid Unicode (a lone surrogate)",
        "its id must be a string of 1-256 characters",
    ]


def _local(export: Path, cols: Path) -> list[str]:
    return ["--model", str(export), "--device", "cpu", "--collections-dir", str(cols)]


def _table_ids(out: str) -> list[str]:
    """The id column of `index search`'s table (after the header)."""
    return [line.split()[2] for line in out.strip().splitlines()[1:]]


def test_add_skips_non_images_and_resumes(
    export: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cols = tmp_path / "cols"
    argv = ["index", "add", "pics", str(photos), "--batch", "3", *_local(export, cols)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "warning" in err and "notes.txt" in err and "not an image" in err
    assert "added 4 items" in out and "1 not images" in out

    store = open_backend("faiss", cols)
    try:
        col = store.get("pics")
        assert col.count() == 4
        assert col.model_id == load_encoder(str(export), device="cpu").model_id
        for id_ in IMAGES:
            got = col.get(id_)
            assert got is not None, id_
            path = photos / id_
            assert got.metadata == {"path": os.path.abspath(path), "bytes": path.stat().st_size}
            assert got.source == os.path.abspath(path)  # what it can be embedded again from
            assert np.linalg.norm(got.vector) == pytest.approx(1.0, abs=1e-5)
    finally:
        store.close()

    # A rerun adds nothing: every id is there already.
    assert main(argv) == 0
    out, _ = capsys.readouterr()
    assert "added 0 items" in out and "4 already present" in out

    # A new file resumes: only it is added; a single file's id is its absolute path.
    extra = tmp_path / "extra.png"
    Image.new("RGB", (20, 20), (250, 250, 0)).save(extra)
    assert main(["index", "add", "pics", str(photos), str(extra), *_local(export, cols)]) == 0
    out, _ = capsys.readouterr()
    assert "added 1 items" in out and "holds 5 items" in out
    store = open_backend("faiss", cols)
    try:
        assert store.get("pics").get(str(extra.absolute())) is not None
    finally:
        store.close()


def test_search_prints_ranked_table(
    export: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cols = tmp_path / "cols"
    assert main(["index", "add", "pics", str(photos), *_local(export, cols)]) == 0
    capsys.readouterr()
    expected = _expected_ranking(export, photos)

    assert main(["index", "search", "pics", QUERY, "-k", "3", *_local(export, cols)]) == 0
    out, _ = capsys.readouterr()
    lines = out.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "id", "metadata"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3"]
    assert _table_ids(out) == expected[:3]
    scores = [float(line.split()[1]) for line in lines[1:]]
    assert scores == sorted(scores, reverse=True)
    assert '"bytes":' in lines[1] and '"path":' in lines[1]

    green = os.path.abspath(photos / "nested/green.png")
    where = f'{{"path": "{green}"}}'
    assert main(["index", "search", "pics", QUERY, "--where", where, *_local(export, cols)]) == 0
    assert _table_ids(capsys.readouterr().out) == ["nested/green.png"]


def test_errors_exit_1_with_a_message(
    export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cols = tmp_path / "cols"
    assert main(["index", "search", "missing", "x", *_local(export, cols)]) == 1
    assert "no collection named 'missing'" in capsys.readouterr().err
    assert main(["index", "search", "missing", "x", "--where", "[1]", *_local(export, cols)]) == 1
    assert "--where must be a JSON object" in capsys.readouterr().err
    assert main(["index", "add", "pics", str(tmp_path / "nowhere"), *_local(export, cols)]) == 1
    assert "no such file or folder" in capsys.readouterr().err


# -- over HTTP ------------------------------------------------------------------------------


@pytest.mark.slow
def test_add_and_search_over_http(
    export: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = serve_argv(port, tmp_path / "server-cols", model=str(export))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_server_ready(url, proc, lambda: proc.stderr.read().decode() if proc.stderr else "")

        add = ["index", "add", "pics", str(photos), "--url", url, "--batch", "3"]
        assert main(add) == 1  # no such collection, and no --create
        assert "collection_not_found" in capsys.readouterr().err

        assert main([*add, "--create"]) == 0
        out, err = capsys.readouterr()
        assert "notes.txt" in err and "added 4 items" in out and "holds 4 items" in out
        assert main(add) == 0  # resumable over HTTP too
        out, _ = capsys.readouterr()
        assert "added 0 items" in out and "4 already present" in out

        assert main(["index", "search", "pics", QUERY, "-k", "2", "--url", url]) == 0
        assert _table_ids(capsys.readouterr().out) == _expected_ranking(export, photos)[:2]

        from contrastkit.service.client import ContrastiveClient

        with ContrastiveClient(url) as client:
            assert client.get_item("pics", "red.png").source == str((photos / "red.png").absolute())
        # an alias, set over HTTP (the server holds the folder), serves search
        assert main(["index", "alias", "set", "live", "pics", "--url", url]) == 0
        assert "'live' -> 'pics'" in capsys.readouterr().out
        assert main(["index", "search", "live", QUERY, "-k", "2", "--url", url]) == 0
        assert _table_ids(capsys.readouterr().out) == _expected_ranking(export, photos)[:2]
        assert main(["index", "alias", "ls", "--url", url]) == 0
        assert "live  -> pics" in capsys.readouterr().out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_thumbnails_are_stored_as_small_jpegs_of_each_image(
    export: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cols = tmp_path / "cols"
    add = ["index", "add", "--thumbnails", "--thumbnail-size", "32", "pics", str(photos)]
    assert main([*add, *_local(export, cols)]) == 0
    store = open_backend("faiss", cols)
    try:
        col = store.get("pics")
        for id_ in IMAGES:
            got = col.get(id_)
            assert got is not None
            url = got.metadata["thumbnail"]
            assert url.startswith("data:image/jpeg;base64,")
            thumb = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
            assert thumb.format == "JPEG" and thumb.size == (32, 24)  # 48x36 kept in shape
            source = np.asarray(Image.open(photos / id_).convert("RGB"), np.float32)
            mean_error = np.abs(np.asarray(thumb, np.float32).mean((0, 1)) - source.mean((0, 1)))
            assert mean_error.max() < 8, (id_, mean_error)
    finally:
        store.close()

    assert main(["index", "search", "pics", QUERY, "-k", "1", *_local(export, cols)]) == 0
    out = capsys.readouterr().out
    assert '"thumbnail": "<' in out and "base64" not in out  # the table stays readable

    bad = ["index", "add", "pics", str(photos), "--thumbnails", "--thumbnail-size", "4"]
    assert main([*bad, *_local(export, cols)]) == 1
    assert "between 16 and 512" in capsys.readouterr().err


def test_add_stores_sources_on_qdrant_and_alias_commands_work_in_process(
    export: Path,
    photos: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`index add` in-process into Qdrant's local mode keeps each file's path as its
    source; `index alias set|ls|rm` work on the same backend."""
    pytest.importorskip("qdrant_client")
    from contrastkit.service.index.factory import QdrantConfig

    monkeypatch.setenv("CONTRASTIVE_COLLECTIONS_BACKEND", "qdrant")
    cols = tmp_path / "cols"
    assert main(["index", "add", "pics", str(photos), *_local(export, cols)]) == 0
    dirs = ["--collections-dir", str(cols), "--local"]
    assert main(["index", "alias", "set", "live", "pics", *dirs]) == 0
    assert main(["index", "alias", "set", "pics", "live", *dirs]) == 1
    assert "'pics' is the name of a collection" in capsys.readouterr().err
    store = open_backend("qdrant", cols, QdrantConfig(path=cols / "qdrant"))
    try:
        assert store.aliases() == {"live": "pics"}
        col = store.get("live")
        for id_ in IMAGES:
            assert col.get(id_).source == os.path.abspath(photos / id_)  # type: ignore[union-attr]
    finally:
        store.close()
    assert main(["index", "alias", "ls", *dirs]) == 0
    assert "live  -> pics" in capsys.readouterr().out
    assert main(["index", "alias", "rm", "live", *dirs]) == 0
    assert main(["index", "alias", "rm", "live", *dirs]) == 1
    assert "no alias named 'live'" in capsys.readouterr().err
