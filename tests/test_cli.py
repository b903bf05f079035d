"""The `contrastive` command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from contrastkit.service.cli import build_parser, main
from contrastkit.service.commands.serve import settings_from_args


def test_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTRASTIVE_PORT", "9000")
    monkeypatch.setenv("CONTRASTIVE_MAX_WAIT_MS", "3.5")
    args = build_parser().parse_args(
        ["serve", "--model", "open_clip:ViT-B-32", "--max-batch-size", "8", "--api-key", "k"]
    )
    s = settings_from_args(args)
    assert s.model == "open_clip:ViT-B-32" and s.max_batch_size == 8 and s.api_keys == ["k"]
    assert s.port == 9000 and s.max_wait_ms == 3.5
    assert s.host == "127.0.0.1"


def test_unknown_model_fails_fast(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--model", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


def test_cuda_without_cuda_fails_fast(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert main(["serve", "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_python_dash_m_service_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "contrastkit.service", "serve", "--help"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0
    for flag in (
        "--model",
        "--pretrained",
        "--device",
        "--host",
        "--port",
        "--api-key",
        "--max-batch-size",
    ):
        assert flag in out.stdout


def test_every_command_in_the_table_has_help_and_runs_its_module() -> None:
    from contrastkit.service.cli import COMMANDS

    names = set(COMMANDS)
    assert {"serve", "index", "bench", "train", "export", "eval", "demo", "plot"} <= names
    parser = build_parser(["export", "x", "y"])  # only `export` gets its flags
    args = parser.parse_args(["export", "ckpt", "out", "--force"])
    assert args.command == "export" and args.force
    assert build_parser(["bench", "search"]).parse_args(["bench", "search"]).command == "bench"


def test_a_second_server_on_the_same_collections_folder_says_how_out_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first server's store holds the folder's lock: the second stops before uvicorn
    starts (no lifespan traceback), naming the folder and the ways out, exit 2."""
    from contrastkit.service.index.factory import open_backend

    first = open_backend("faiss", tmp_path)
    try:
        assert main(["serve", "--collections-dir", str(tmp_path), "--port", "0"]) == 2
    finally:
        first.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"another server already uses the collections folder {tmp_path.resolve()}" in err
    assert "--collections-dir OTHER_DIR" in err and "CONTRASTIVE_COLLECTIONS=false" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "usage", "error"),
    [
        (
            ["train", "--epohcs", "3"],
            "usage: contrastive train ",
            "contrastive train: error: unrecognized argument: --epohcs (did you mean --epochs?)",
        ),
        (  # the typo is named even where a positional is missing too
            ["index", "add", "--colections-dir=x"],
            "usage: contrastive index add ",
            "contrastive index add: error: unrecognized argument: --colections-dir "
            "(did you mean --collections-dir?)",
        ),
        (
            ["serve", "--zzz"],
            "usage: contrastive serve ",
            "contrastive serve: error: unrecognized argument: --zzz",
        ),
    ],
)
def test_a_mistyped_flag_shows_its_commands_usage_and_the_closest_flag(
    argv: list[str], usage: str, error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage)
    assert err.rstrip("\n").splitlines()[-1] == error


def test_abbreviations_and_values_after_a_double_dash_still_parse() -> None:
    args = build_parser(["train"]).parse_args(["train", "--epoch", "3"])  # argparse's prefix
    assert args.epochs == 3
    argv = ["index", "search", "c", "--", "--not-a-flag"]
    assert build_parser(argv).parse_args(argv).text == "--not-a-flag"
