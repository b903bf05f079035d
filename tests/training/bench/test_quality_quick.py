"""`contrastive bench quality --quick`: the criteria on made-up numbers, the flags, the
table, and (only where lightly's environment exists) two steps of the peer runner."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from contrastkit.training.bench import criteria, flags, quality, quality_quick
from contrastkit.training.bench.checkout_path import checkout_path

N = 10_000


def _args(flags: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    quality.add_arguments(parser)
    return parser.parse_args(flags)


def test_standard_error_of_an_accuracy() -> None:
    assert criteria.knn_se(0.8, N) == pytest.approx(math.sqrt(0.8 * 0.2 / N))  # 0.004
    assert criteria.knn_se(1.0, N) == 0.0
    with pytest.raises(ValueError):
        criteria.knn_se(1.2, N)
    # the SE of a difference adds the two variances
    se = math.hypot(criteria.knn_se(0.8, N), criteria.knn_se(0.7, N))
    assert criteria.margin_se(0.8, 0.7, N) == pytest.approx(0.1 / se)
    assert criteria.margin_se(1.0, 1.0, N) == 0.0


def test_beats_untrained_uses_the_best_seed_and_three_se() -> None:
    seeds = [0.70, 0.72, 0.71]  # best 0.72; 3 SE of the difference is ~0.019
    ok = criteria.verdicts(0.745, seeds, N, loss=None, peer_loss=None, peer_acc=None)
    assert ok["beats_untrained"] == "PASS" and ok["untrained_margin_se"] > 3
    # above the mean (0.71) by 5 SE, but not 3 SE above the best seed: a failure
    close = criteria.verdicts(0.73, seeds, N, loss=None, peer_loss=None, peer_acc=None)
    assert close["beats_untrained"] == "FAIL" and close["overall"] == "FAIL"
    # no peer: (b) and (c) are n/a and do not fail the row
    assert (ok["loss_vs_peer"], ok["knn_vs_peer"], ok["overall"]) == ("n/a", "n/a", "PASS")


def test_loss_tolerance_is_relative_with_an_absolute_floor() -> None:
    assert criteria.loss_close(5.4, 5.0) and not criteria.loss_close(5.6, 5.0)  # 10%
    assert criteria.loss_close(-0.86, -0.90) and not criteria.loss_close(-0.80, -0.90)
    assert criteria.loss_close(0.04, 0.0)  # 0.05 absolute near zero
    assert not criteria.loss_close(math.nan, 1.0)


def test_knn_against_the_peer_allows_two_se_below_and_anything_above() -> None:
    seeds = [0.6]
    row = dict(loss=5.0, peer_loss=5.1)
    assert criteria.verdicts(0.80, seeds, N, peer_acc=0.81, **row)["knn_vs_peer"] == "PASS"
    assert criteria.verdicts(0.90, seeds, N, peer_acc=0.81, **row)["knn_vs_peer"] == "PASS"
    low = criteria.verdicts(0.79, seeds, N, peer_acc=0.81, **row)  # ~3.5 SE below
    assert low["knn_vs_peer"] == "FAIL" and low["overall"] == "FAIL"
    bad_loss = criteria.verdicts(0.81, seeds, N, loss=9.0, peer_loss=5.0, peer_acc=0.81)
    assert bad_loss["loss_vs_peer"] == "FAIL" and bad_loss["overall"] == "FAIL"


def test_a_failed_run_fails_every_criterion() -> None:
    v = criteria.verdicts(None, [0.6], N, loss=None, peer_loss=None, peer_acc=0.8)
    assert v["overall"] == "FAIL" and v["beats_untrained"] == "FAIL"


def test_window_means_take_the_last_steps_of_every_epoch() -> None:
    losses = [float(i) for i in range(10)]  # 2 epochs of 4, then a partial one of 2
    assert criteria.window_means(losses, 4, 2) == [2.5, 6.5, 8.5]
    assert criteria.window_means([1.0, math.nan, 3.0], 3, 3) == [2.0]


def test_quick_flags_and_defaults() -> None:
    s, epochs = quality_quick.quick_settings(_args(["--quick"]), ["simclr"])
    assert (s.data, s.backbone, s.image_size, s.batch_size, epochs) == (
        "fashion-mnist", "tiny", 16, 256, 3,
    )  # fmt: skip
    s, epochs = quality_quick.quick_settings(_args(["--quick", "--epochs", "1"]), ["byol"])
    assert epochs == 1 and s.methods == ["byol"]
    with pytest.raises(ValueError):
        quality_quick.quick_settings(_args(["--quick", "--epochs", "0"]), ["byol"])
    args = _args(["--quick", "--no-peer", "--peer-python", "/x/python"])
    assert args.no_peer and args.peer_python == "/x/python"


def test_unknown_method_is_a_command_line_error(tmp_path: Path) -> None:
    code = quality.run(_args(["--quick", "--methods", "nope", "--json", str(tmp_path / "q")]))
    assert code == 2


def test_peer_is_na_without_the_method_or_the_environment(tmp_path: Path) -> None:
    s, _ = quality_quick.quick_settings(_args(["--quick"]), ["clip"])
    assert "n/a" in quality_quick.peer(s, 1, "clip", "/nonexistent/python", tmp_path)
    found = quality_quick.peer(s, 1, "simclr", "/nonexistent/python", tmp_path)
    assert "peer-lightly-env.sh" in found["n/a"]


def _row(knn: float, loss: float, peer: dict[str, Any]) -> dict[str, Any]:
    ours = {"knn_top1": knn, "losses": [loss] * 4, "steps_per_epoch": 2, "steps": 4,
            "epochs_done": 2, "seconds": 10.0}  # fmt: skip
    return {"ours": ours, "peer": peer}


def test_judge_and_table_on_made_up_runs() -> None:
    peer = {"knn_top1": 0.80, "losses": [5.0] * 4, "steps_per_epoch": 2, "seconds": 20.0}
    rows = {
        "good": _row(0.80, 5.1, dict(peer)),
        "broken": _row(0.61, 9.0, dict(peer)),
        "clip": _row(0.75, 3.0, {"n/a": "lightly has no implementation of this method"}),
    }
    for row in rows.values():
        row["verdicts"] = quality_quick.judge(row, [0.60, 0.61, 0.59], N)
    assert rows["good"]["verdicts"]["overall"] == "PASS"
    assert rows["good"]["ours"]["epoch_loss"] == [5.1, 5.1]
    v = rows["broken"]["verdicts"]
    assert (v["beats_untrained"], v["loss_vs_peer"], v["knn_vs_peer"]) == ("FAIL",) * 3
    assert rows["clip"]["verdicts"]["overall"] == "PASS"
    text = quality_quick.table(
        {"raw_pixel_top1": 0.82, "untrained": {"top1": [0.60, 0.61, 0.59]}, "methods": rows}
    )
    assert "| good | 2 | 4 | 5.1000 | 5.0000 | 0.8000 | 0.8000 | 0.6100 | 0.8200 |" in text
    assert "| **FAIL** |" in text and "| clip | 2 | 4 | 3.0000 | n/a | 0.7500 | n/a |" in text


def test_a_signal_ends_the_whole_benchmark(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A `timeout` stops the Trainer cleanly; the benchmark must stop too, not go on."""
    ran: list[str] = []

    def run_method(s: Any, epochs: int, method: str, *_: Any) -> dict[str, Any]:
        ran.append(method)
        return {"ours": {"stopped": "signal"}, "peer": {"n/a": "interrupted"}}

    monkeypatch.setattr(quality_quick, "run_method", run_method)
    monkeypatch.setattr(quality_quick, "raw_pixel_knn", lambda *a: {"top1": 0.8})
    monkeypatch.setattr(quality_quick, "untrained_knn", lambda *a: [0.7, 0.71, 0.72])
    path = tmp_path / "q.json"
    args = _args(["--quick", "--json", str(path), "--data", "digits"])
    assert quality_quick.run(args, ["simclr", "byol"]) == 130
    assert ran == ["simclr"] and json.loads(path.read_text())["interrupted"] == "simclr"


@pytest.mark.slow
@pytest.mark.skipif(
    not Path(flags.PEER_PYTHON).exists(),
    reason=f"no lightly environment at {flags.PEER_PYTHON}: scripts/peer-lightly-env.sh",
)
def test_peer_runner_takes_two_steps(tmp_path: Path) -> None:
    out = tmp_path / "peer.json"
    cmd = [flags.PEER_PYTHON, "-m", "contrastkit.training.bench.peer_lightly",
           "--method", "simclr", "--steps", "2", "--workers", "0", "--threads", "1",
           "--out", str(out)]  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(checkout_path(tmp_path / "import-path"))}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["steps"] == 2 and all(math.isfinite(x) for x in result["losses"])
    assert 0.0 <= result["knn_top1"] <= 1.0 and result["steps_per_epoch"] == 234
    assert result["recipe"]["optimizer"] in ("sgd", "lars", "adamw")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
