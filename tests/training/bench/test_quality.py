"""`contrastive bench quality` (the GPU form, run on the CPU defaults: digits, tiny): the
JSON and the table of a short run, and its pieces. --quick: test_quality_quick.py."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from contrastkit.service.cli import build_parser
from contrastkit.training.bench import quality
from contrastkit.training.config import TrainConfig
from contrastkit.training.data import LabelledArrays
from contrastkit.training.engine.resume import BEFORE_SETTINGS_EXISTED

METHODS = ("simclr", "moco")  # two of the fastest steps on the CPU
EPOCHS = 2


def _run(flags: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    quality.add_arguments(parser)
    args = parser.parse_args(flags)
    # One thread: two OpenMP threads on a 2-core machine that runs anything else stall
    # at every barrier, which would only make this test slow.
    threads = torch.get_num_threads()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = quality.run(args)
    finally:
        torch.set_num_threads(threads)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """One in-process run on the CPU defaults: two methods, and the LARS comparison for one."""
    path = tmp_path_factory.mktemp("bench") / "quality.json"
    flags = ["--device", "cpu", "--methods", ",".join(METHODS), "--epochs"]
    flags += [str(EPOCHS), "--lars-methods", "simclr", "--threads", "1", "--json", str(path)]
    flags += ["--time-limit", "0"]  # every epoch, however loaded the machine
    code, printed = _run(flags)
    assert code == 0, printed
    return json.loads(path.read_text()), printed


def _is_fraction(value: Any) -> bool:
    return isinstance(value, float) and 0.0 <= value <= 1.0


def _check_row(row: dict[str, Any], method: str) -> None:
    assert "error" not in row and "skipped" not in row
    assert row["method"] == method
    assert _is_fraction(row["untrained_top1"]) and _is_fraction(row["final_top1"])
    for probe in ("untrained_probe", "linear_probe"):
        assert _is_fraction(row[probe]["top1"]) and row[probe]["l2"] > 0
    probes = row["linear_probe"]["top1"], row["untrained_probe"]["top1"]
    assert row["probe_above_untrained"] == (probes[0] > probes[1])
    assert row["epochs_done"] == EPOCHS and row["stopped"] == "done"
    assert [r["epoch"] for r in row["per_epoch"]] == list(range(1, EPOCHS + 1))
    assert all(_is_fraction(r["top1"]) for r in row["per_epoch"])
    assert row["final_top1"] == row["per_epoch"][-1]["top1"]
    assert row["above_untrained"] == (row["final_top1"] > row["untrained_top1"])
    assert row["seconds"] > 0 and row["images_per_second"] > 0


@pytest.mark.slow
def test_short_run_records_every_method_with_real_figures(
    short: tuple[dict[str, Any], str],
) -> None:
    result, _ = short
    assert result["benchmark"] == "quality"
    for key in ("date", "device", "device_name", "torch", "git_commit", "python"):
        assert key in result
    s = result["settings"]
    assert (s["data"], s["backbone"], s["epochs"]) == ("digits", "tiny", EPOCHS)
    assert s["methods"] == list(METHODS)
    assert _is_fraction(result["raw_pixel_top1"])
    assert list(result["methods"]) == list(METHODS)
    for method in METHODS:
        _check_row(result["methods"][method], method)
    below = [m for m in METHODS if not result["methods"][m]["above_untrained"]]
    assert result["below_untrained"] == below


@pytest.mark.slow
def test_short_run_compares_old_and_clipped_lars(short: tuple[dict[str, Any], str]) -> None:
    result, _ = short
    lars = result["lars"]["simclr"]
    assert list(lars) == ["old", "clipped"]
    assert lars["old"]["settings"] == {
        "optimizer": "lars",
        "lars_eta": BEFORE_SETTINGS_EXISTED["lars_eta"],
        "lars_clip": False,
    }
    assert lars["clipped"]["settings"] == {  # today's defaults (solo-learn's LARS)
        "optimizer": "lars",
        "lars_eta": TrainConfig.lars_eta,
        "lars_clip": TrainConfig.lars_clip,
    }
    assert (TrainConfig.lars_eta, TrainConfig.lars_clip) == (0.02, True)
    for row in lars.values():
        assert row["batch_size"] == result["settings"]["lars_batch"] == 256
        _check_row(row, "simclr")


@pytest.mark.slow
def test_short_run_prints_the_tables(short: tuple[dict[str, Any], str]) -> None:
    _, printed = short
    assert "| method | untrained kNN | final kNN | untrained probe | linear probe |" in printed
    for method in METHODS:
        assert f"\n| {method} | 0." in printed
    assert "| simclr | 256 | old: eta 0.02, no clip |" in printed
    assert "| simclr | 256 | clipped: eta 0.02, LARC clip |" in printed


def test_methods_come_from_the_registry() -> None:
    names = quality.registered_methods()
    assert {"simclr", "moco", "byol", "swav", "clip"} <= set(names)
    assert names == sorted(names)


def test_text_methods_skip_only_without_class_names() -> None:
    def data(classes: list[str]) -> quality.Data:
        arrays = LabelledArrays(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), torch.zeros(1), classes)
        return arrays, arrays

    assert quality.skip_reason("clip", data([])) is not None
    assert quality.skip_reason("clip", data(["zero", "one"])) is None
    assert quality.skip_reason("simclr", data([])) is None


def test_tables_show_skipped_failed_and_below_untrained_rows() -> None:
    row = {"untrained_top1": 0.5, "final_top1": 0.4, "linear_probe": {"top1": 0.9},
           "epochs_done": 3.0, "seconds": 12.0, "above_untrained": False}  # fmt: skip
    table = quality.quality_table(
        {"a": row, "b": {"skipped": "needs captions"}, "c": {"error": "NonFiniteError: x"}}
    )
    assert "| a | 0.5000 | 0.4000 | n/a | 0.9000 | 3 | 12 | **no** |" in table
    assert "| b | skipped: needs captions |" in table
    assert "| c | failed: NonFiniteError: x |" in table


def test_unknown_method_is_a_command_line_error(tmp_path: Path) -> None:
    code, _ = _run(["--device", "cpu", "--methods", "nope", "--json", str(tmp_path / "q")])
    assert code == 2


def test_wired_into_the_bench_table() -> None:
    args = build_parser(["bench", "quality", "--quick"]).parse_args(["bench", "quality", "--quick"])
    assert args.quick and args.methods is None  # None: every registered method


def test_a_signal_ends_the_whole_bench(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The Trainer turns SIGTERM into a clean stop of one run; the bench must not go on to
    the next method (a `timeout` would then time-box nothing)."""
    ran: list[str] = []

    def train_one(plan: quality.Plan, method: str, data: quality.Data, **_: Any) -> dict[str, Any]:
        ran.append(method)
        return {"method": method, "stopped": "signal", "above_untrained": None}

    monkeypatch.setattr(quality, "train_one", train_one)
    plan = quality.Plan(
        bench=quality.BenchSettings(data="digits", backbone="tiny", batch_size=8),
        methods=["simclr", "moco"], epochs=1, lars_methods=["byol"], lars_batch=8,
        time_limit=None,
    )  # fmt: skip
    arrays = LabelledArrays(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), torch.zeros(1), ["a"])
    result: dict[str, Any] = {"methods": {}, "lars": {}, "notes": [], "below_untrained": []}
    assert not quality.train_all(plan, (arrays, arrays), result, tmp_path / "q.json")
    assert ran == ["simclr"] and json.loads((tmp_path / "q.json").read_text())["methods"]


def test_defaults_for_the_cpu() -> None:
    parser = argparse.ArgumentParser()
    quality.add_arguments(parser)
    plan = quality.plan_from_args(parser.parse_args([]), torch.device("cpu"))
    assert (plan.bench.data, plan.bench.backbone, plan.epochs) == ("digits", "tiny", 3)
    assert (plan.bench.batch_size, plan.bench.image_size) == (64, 32)
    assert plan.lars_methods == ["byol", "simclr"] and plan.lars_batch == 256
    assert plan.methods == quality.registered_methods() and plan.time_limit is None
