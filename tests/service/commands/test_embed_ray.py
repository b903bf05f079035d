"""`contrastive embed --ray`: the job on Ray Data, on a local cluster with room for two
encoder actors (one CPU each), against the one-machine job on the same folder: the same
ids, vectors, sources and metadata; unreadable files skipped; resume; and the one-line
errors without Ray or without a cluster.

The two error tests come first: they need Ray not initialised in this process, and the
cluster fixture (module-scoped) initialises it from the first test that asks for it on.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from contrastkit.service.cli import main
from contrastkit.service.commands.embed.parquet import read_parts
from tests.helpers import write_tiny_clip_export

pytestmark = pytest.mark.slow  # two Ray runs of two actors each: 40-60 s on 2 busy cores

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytest.importorskip("pyarrow")

RAY = ["--ray", "--actors", "2"]  # --ray alone: the session the fixture started


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny open_clip export of test_embed.py: it loads in a few seconds, where the
    builtin model takes several times that in each actor."""
    return write_tiny_clip_export(tmp_path_factory.mktemp("tiny") / "export")


@pytest.fixture(scope="module")
def embed(export: Path) -> Callable[..., int]:
    """embed(photos, out, *flags) -> the exit status of `contrastive embed`."""

    def run(photos: Path, out: Path, *flags: str) -> int:
        argv = [str(photos), "--out", str(out), "--device", "cpu", "--workers", "2", *flags]
        return main(["embed", *argv, "--model", str(export)])

    return run


def _table(out: Path) -> dict[str, tuple[np.ndarray, str, str]]:
    """id -> (vector, source, metadata) of every committed part."""
    t = read_parts(out)
    ids = t.column("id").to_pylist()
    vectors = np.array(t.column("vector").to_pylist(), np.float32)
    sources, metadata = t.column("source").to_pylist(), t.column("metadata").to_pylist()
    return dict(zip(ids, zip(vectors, sources, metadata, strict=True), strict=True))


def _summary(out: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads((out / "embed-summary.json").read_text())
    return summary


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """9 small images (PNG and JPEG, some nested) and a .jpg that is no image."""
    root = tmp_path_factory.mktemp("ray") / "photos"
    for i in range(9):
        rng = np.random.default_rng(i)
        pixels = rng.integers(0, 255, (30, 40 + i, 3), dtype=np.uint8)
        path = root / ("nested" if i % 2 else "") / f"img{i}.{'jpg' if i % 3 else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    return root


def test_without_ray_it_says_which_extra(
    embed: Callable[..., int],
    photos: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "ray.data", None)
    assert embed(photos, tmp_path / "out", "--ray") == 2
    err = capsys.readouterr().err.strip()
    assert err == "contrastive embed: --ray needs Ray Data: pip install 'contrastkit[ray]'"


def test_actors_without_ray_is_refused(
    embed: Callable[..., int], photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert embed(photos, tmp_path / "out", "--actors", "2") == 2
    assert capsys.readouterr().err.strip() == "contrastive embed: --actors needs --ray"


def test_a_bad_address_is_one_line(
    embed: Callable[..., int], photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if ray.is_initialized():
        pytest.skip("Ray is initialised in this process: the command would use that session")
    assert embed(photos, tmp_path / "out", "--ray", "not-an-address") == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("contrastive embed: --ray not-an-address: could not join a Ray")
    assert "Invalid address format" in last
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A local Ray instance for this module: two CPUs, so two one-CPU encoder actors.

    Its workers run at the tests' priority: Ray starts them at nice 15 by default
    (RAY_worker_niceness), and beside other busy processes on a 2-core machine the two
    actors then got a few percent of a core and the job ran past pytest's timeout."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_worker_niceness", "0")  # read by the raylet that ray.init starts
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@dataclass
class Runs:
    """The one-machine output, and a Ray output made by a run stopped by --max-parts 1
    (its summary kept) and a second run that resumes it."""

    here: Path
    there: Path
    stopped: dict[str, Any]


@pytest.fixture(scope="module")
def runs(
    cluster: None,
    embed: Callable[..., int],
    photos: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Runs:
    # one stopped-and-resumed Ray job serves every test below: each Ray run starts two
    # actors, each importing torch and loading the model, which is most of its time
    here, there = tmp_path_factory.mktemp("here"), tmp_path_factory.mktemp("there")
    flags = ["--part-rows", "2", "--batch", "2"]
    assert embed(photos, here, *flags) == 0
    assert embed(photos, there, *flags, *RAY, "--max-parts", "1") == 0
    stopped = _summary(there)
    assert embed(photos, there, *flags, *RAY) == 0
    return Runs(here, there, stopped)


def test_ray_gives_the_one_machine_vectors(runs: Runs) -> None:
    want, got = _table(runs.here), _table(runs.there)
    assert len(got) == 9
    assert sorted(got) == sorted(want)  # the same ids (the order in the parts may differ)
    for id_, (vector, source, metadata) in want.items():
        np.testing.assert_allclose(got[id_][0], vector, atol=1e-6)
        assert got[id_][1:] == (source, metadata)
    assert {p.name for p in runs.there.iterdir()} == {p.name for p in runs.here.iterdir()}
    job = json.loads((runs.there / "job.json").read_text())
    assert job == json.loads((runs.here / "job.json").read_text())


def test_an_unreadable_file_is_skipped(runs: Runs) -> None:
    summary = _summary(runs.there)
    assert summary["finished"] and summary["rows"] == 9 and summary["skipped"] == 1
    unreadable = summary["skipped_by_reason"]["not a readable image"]
    assert unreadable["count"] == 1 and "broken.jpg" in unreadable["example"]
    assert summary["skipped_by_reason"] == _summary(runs.here)["skipped_by_reason"]


def test_a_stopped_ray_job_resumes(runs: Runs) -> None:
    """--max-parts 1 stops after one part of 2 rows; the rerun embeds the other 7 and
    writes none twice."""
    assert not runs.stopped["finished"]
    assert runs.stopped["rows"] == 2 and runs.stopped["parts"] == 1
    summary = _summary(runs.there)
    assert summary["finished"] and summary["this_run"]["embedded"] == 7
    ids = read_parts(runs.there).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 9  # every image once
    assert not list(runs.there.glob("*.tmp"))
