"""`contrastive` answers at once: help, and the mistakes a command line can make (an
unknown method or setting, a missing file, a missing optional package), are answered
before torch is imported, and the commands that talk HTTP to a server never import it.

Each command runs in a fresh interpreter (the test process has torch loaded already),
and the test reads what it imported from its sys.modules: a measure that does not depend
on how busy the machine is, unlike a stopwatch.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from contrastkit.service.cli import BENCH
from contrastkit.training.catalog import method_names

ROOT = Path(__file__).resolve().parents[1]
# Imported only by work that needs a model: never by help, a refused command line or HTTP.
HEAVY = ("torch", "torchvision", "open_clip", "timm", "faiss", "fastapi")

# Runs `contrastive ARGV...` in this interpreter and prints what happened as one JSON line;
# PRELUDE runs first (e.g. hides an optional package, as if it were not installed).
SCRIPT = """
import contextlib, io, json, sys
{prelude}
from contrastkit.service.cli import main
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        code = main(sys.argv[1:])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
heavy = [m for m in {heavy!r} if m in sys.modules]
print(json.dumps({{"code": code, "out": out.getvalue(), "err": err.getvalue(), "heavy": heavy}}))
"""


@dataclass
class Ran:
    code: int
    out: str
    err: str
    heavy: list[str]  # the HEAVY modules it imported


def contrastive(*argv: str, prelude: str = "") -> Ran:
    """`contrastive ARGV...` in a fresh interpreter, run from the repository root."""
    env = {k: v for k, v in os.environ.items() if k not in ("CONTRASTIVE_URL", "PYTHONPATH")}
    script = SCRIPT.format(prelude=prelude, heavy=HEAVY)
    done = subprocess.run(
        [sys.executable, "-c", script, *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr  # the script itself ran to its end
    return Ran(**json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["train", "--help"],
        ["eval", "--help"],
        ["export", "--help"],
        ["demo", "--help"],
        ["plot", "--help"],
        ["serve", "--help"],
        ["embed", "--help"],
        ["bench", "--help"],
        *[["bench", name, "--help"] for name in BENCH],
        ["index", "--help"],
        ["index", "add", "--help"],  # its module takes MAX_ID_CHARS from the index, lightly
        ["index", "search", "--help"],
        ["index", "import", "--help"],
        ["index", "migrate", "--help"],
        ["index", "alias", "set", "--help"],
    ],
    ids=" ".join,
)
def test_help_imports_no_torch(argv: list[str]) -> None:
    ran = contrastive(*argv)
    assert ran.code == 0
    assert ran.heavy == []
    assert ran.out.startswith("usage: contrastive")


def test_train_help_lists_the_methods_without_importing_them() -> None:
    ran = contrastive("train", "--help")
    assert ran.heavy == []
    assert " | ".join(method_names()) in " ".join(ran.out.split())
    top = contrastive("--help")
    assert f"train a method: {', '.join(method_names())}" in " ".join(top.out.split())


def test_an_unknown_method_is_refused_before_torch() -> None:
    ran = contrastive("train", "--method", "nope")
    assert ran.code == 2
    assert ran.heavy == []
    assert ran.err == (
        f"contrastive train: unknown method 'nope'; choose one of: {', '.join(method_names())}\n"
    )


def test_a_mistyped_method_gets_the_nearest_name() -> None:
    ran = contrastive("train", "--method", "simclrr")
    assert ran.code == 2
    assert ran.heavy == []
    assert "unknown method 'simclrr' (did you mean simclr?); choose one of: " in ran.err


def test_a_mistyped_setting_gets_the_nearest_key_before_torch() -> None:
    ran = contrastive("train", "--method", "simclr", "--set", "temperatur=0.2")
    assert ran.code == 2
    assert ran.heavy == []
    assert ran.err.startswith(
        "contrastive train: unknown setting 'temperatur' (did you mean temperature?); "
        "valid settings: accumulate, backbone, "
    )


def test_a_setting_that_names_nothing_is_refused_before_torch() -> None:
    ran = contrastive("train", "--method", "simclr", "--set", "nonsense.key=1")
    assert ran.code == 2
    assert ran.heavy == []
    assert "contrastive train: unknown setting 'nonsense.key'; valid settings: " in ran.err


def test_a_setting_of_another_method_says_whose_it_is() -> None:
    ran = contrastive("train", "--method", "byol", "--set", "temperature=0.2")
    assert ran.code == 2
    assert ran.heavy == []
    assert "setting 'temperature' belongs to moco, moco-tuned, simclr, swav, not to byol" in (
        ran.err
    )


def test_a_yaml_files_keys_and_method_are_checked_before_torch(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("method: byol\nproj_hiden: 64\n")
    ran = contrastive("train", "--config", str(config))
    assert ran.code == 2
    assert ran.heavy == []
    assert "unknown setting 'proj_hiden' (did you mean proj_hidden?)" in ran.err
    missing = contrastive("train", "--config", str(tmp_path / "nowhere.yaml"))
    assert missing.code == 2
    assert missing.heavy == []
    assert "cannot read config file" in missing.err


def test_missing_init_weights_are_refused_before_torch(tmp_path: Path) -> None:
    ran = contrastive("train", "--init-from", str(tmp_path / "nowhere.safetensors"))
    assert ran.code == 2
    assert ran.heavy == []
    assert "--init-from" in ran.err and "no such file or export directory" in ran.err


def test_init_from_an_open_clip_model_is_not_taken_for_a_missing_file() -> None:
    from contrastkit.training.cli import build_training_parser
    from contrastkit.training.commands.train import OPEN_CLIP_START, check_command_line
    from contrastkit.training.encoders.pretrained_clip import PREFIX

    assert OPEN_CLIP_START == PREFIX
    argv = ["train", "--method", "clip", "--init-from", "open_clip:ViT-B-32:laion2b_s34b_b79k"]
    check_command_line(build_training_parser(argv).parse_args(argv))  # no error


def test_a_mistyped_flag_gets_the_nearest_flag_before_torch() -> None:
    ran = contrastive("train", "--methd", "simclr")
    assert ran.code == 2
    assert ran.heavy == []
    assert "unrecognized argument: --methd (did you mean --method?)" in ran.err


def test_a_list_of_settings_for_an_unknown_method_is_refused_before_torch() -> None:
    ran = contrastive("train", "--method", "dinoo", "--list-settings")
    assert ran.code == 2
    assert ran.heavy == []
    assert "unknown method 'dinoo' (did you mean dino?)" in ran.err


def test_export_without_a_checkpoint_or_the_onnx_extra_is_refused_before_torch(
    tmp_path: Path,
) -> None:
    ran = contrastive("export", str(tmp_path / "nowhere"), str(tmp_path / "out"))
    assert ran.code == 2
    assert ran.heavy == []
    assert "no checkpoint at" in ran.err
    run = tmp_path / "run"
    run.mkdir()
    no_onnx = contrastive(
        "export", str(run), str(tmp_path / "out"), "--onnx",
        prelude="sys.modules['onnxruntime'] = None  # as if not installed",
    )  # fmt: skip
    assert no_onnx.code == 2
    assert no_onnx.heavy == []
    assert "--onnx needs onnxruntime: pip install 'contrastkit[onnx]'" in no_onnx.err


def test_embed_without_pyarrow_says_so_before_torch(tmp_path: Path) -> None:
    ran = contrastive(
        "embed", str(tmp_path), "--out", str(tmp_path / "out"),
        prelude="sys.modules['pyarrow'] = sys.modules['pyarrow.parquet'] = None",
    )  # fmt: skip
    assert ran.code == 2
    assert ran.heavy == []
    assert "install contrastkit[embed]" in ran.err


def test_a_benchmarks_mistyped_flag_is_refused_before_torch() -> None:
    ran = contrastive("bench", "quality", "--metods", "simclr")
    assert ran.code == 2
    assert ran.heavy == []
    assert "unrecognized argument: --metods (did you mean --methods?)" in ran.err


@pytest.mark.parametrize("name", [n for n, row in BENCH.items() if row.flags], ids=str)
def test_a_benchmarks_light_flags_are_its_modules_flags(name: str) -> None:
    """The parser the table builds from `flags` is the one the benchmark's own module
    (its main(), the tests) builds: the same flags and defaults."""
    from_table, from_module = argparse.ArgumentParser(), argparse.ArgumentParser()
    BENCH[name].add_arguments(from_table)
    importlib.import_module(str(BENCH[name].module)).add_arguments(from_module)
    assert vars(from_table.parse_args([])) == vars(from_module.parse_args([]))
    assert from_table.format_help() == from_module.format_help()


def test_eval_with_a_bad_command_line_imports_no_torch() -> None:
    ran = contrastive("eval", "--model", "builtin")  # --data is missing
    assert ran.code == 2
    assert ran.heavy == []
    assert "the following arguments are required: --data" in ran.err


# -- over HTTP -----------------------------------------------------------------------------


class _Server(BaseHTTPRequestHandler):
    """The two routes `index search` calls, answered as the service answers them."""

    seen: ClassVar[list[str]] = []  # the requests of the running test, in order

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.seen.append(f"GET {self.path}")
        collection = {
            "name": "photos", "model_id": "builtin", "dim": 4, "count": 1,
            "index": {"type": "flat"}, "active_index": "flat",
            "created_at": "2024-01-01T00:00:00Z",
        }  # fmt: skip
        if self.path == "/v1/collections/photos":
            self._json(200, collection)
        else:
            self._json(404, {"error": {"code": "not_found", "message": self.path}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        self.seen.append(f"POST {self.path} {json.dumps(body, sort_keys=True)}")
        hit = {"id": "cat.jpg", "score": 0.875, "metadata": {"path": "/p/cat.jpg"}}
        self._json(200, {"results": [[hit]]})

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Server.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_index_search_against_a_server_imports_no_torch(server: str) -> None:
    ran = contrastive("index", "search", "photos", "a cat", "-k", "3", "--url", server)
    assert ran.code == 0, ran.err
    assert ran.heavy == []
    assert "cat.jpg" in ran.out and "0.8750" in ran.out
    assert _Server.seen[0] == "GET /v1/collections/photos"
    assert _Server.seen[1].startswith("POST /v1/collections/photos/search ")
    assert '"text": "a cat"' in _Server.seen[1] and '"k": 3' in _Server.seen[1]


def test_index_commands_that_cannot_reach_the_server_import_no_torch() -> None:
    url = "http://127.0.0.1:9"  # discard: nothing listens
    search = contrastive("index", "search", "photos", "x", "--url", url)
    assert search.code == 1
    assert search.heavy == []
    assert f"contrastive index search: cannot connect to {url}" in search.err
    aliases = contrastive("index", "alias", "ls", "--url", url)
    assert aliases.code == 1
    assert aliases.heavy == []
    assert "cannot connect" in aliases.err


def test_the_evaluate_package_gives_its_functions_on_first_use() -> None:
    """contrastkit.training.evaluate imports its modules when a name is asked for (so that `eval
    --help` reads contrastkit.training.evaluate.defaults without torch); every name still comes."""
    import contrastkit.training.evaluate as evaluate
    from contrastkit.training.evaluate.tasks import knn_task

    assert sorted(evaluate.__all__) == sorted(evaluate._EXPORTS)
    assert all(callable(getattr(evaluate, name)) for name in evaluate.__all__)
    assert evaluate.knn_task is knn_task
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = evaluate.nope
