"""`contrastive plot` and `contrastive demo` (training/demo): the figures' numbers
against closed forms, the PNGs they write, and the demo end to end (slow)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from contrastkit.training.commands import demo as demo_cli
from contrastkit.training.commands import plot as plot_cli
from contrastkit.training.demo.analysis import anchor_similarities, median_anchor
from contrastkit.training.demo.curves import series
from contrastkit.training.demo.embeddings import block_stats
from contrastkit.training.demo.pairs import pair_rows
from contrastkit.training.demo.pipeline import MAX_EPOCHS, MIN_STEPS, OVERHEAD, choose_steps
from contrastkit.training.demo.style import DPI
from contrastkit.training.demo.temperature import temperature_data
from tests.training.references import nt_xent_reference


def _args(module: object, argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    module.add_arguments(p)  # type: ignore[attr-defined]
    return p.parse_args(argv)


def _write_metrics(run: Path) -> None:
    run.mkdir(parents=True)
    lines = [
        {"step": s, "kind": "train", "loss": 6.0 - 0.1 * s, "lr": 0.02 * s} for s in range(1, 11)
    ]
    lines[3]["loss"] = None  # a non-finite window is stored as null
    lines += [
        {"step": 5, "kind": "knn", "knn_top1": 0.5},
        {"step": 10, "kind": "knn", "knn_top1": 0.7},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    cfg = {"method": "simclr", "backbone": "tiny", "data": "digits"}
    (run / "config.json").write_text(json.dumps(cfg))


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()  # decodes the whole file: a truncated PNG fails here
        return im.size


def test_plot_writes_the_curves_png_of_a_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _write_metrics(run)
    assert plot_cli.run(_args(plot_cli, [str(run), "--out", str(tmp_path / "fig")])) == 0
    png = tmp_path / "fig" / plot_cli.FILE
    assert png.stat().st_size > 30_000  # three panels of lines and text, not a blank canvas
    assert _png_size(png) == (round(15 * DPI), round(4.6 * DPI))  # figsize at the saved dpi


def test_plot_reports_a_folder_without_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert plot_cli.run(_args(plot_cli, [str(tmp_path)])) == 2
    assert "metrics.jsonl" in capsys.readouterr().err


def test_series_skips_null_values_and_other_kinds(tmp_path: Path) -> None:
    _write_metrics(tmp_path / "run")
    from contrastkit.training.engine.metrics import read_metrics

    steps, loss = series(read_metrics(tmp_path / "run"), "train", "loss")
    assert steps == [1, 2, 3, 5, 6, 7, 8, 9, 10]
    assert loss == pytest.approx([6.0 - 0.1 * s for s in steps])
    assert series(read_metrics(tmp_path / "run"), "knn", "knn_top1") == ([5, 10], [0.5, 0.7])


def test_temperature_figure_numbers_match_the_closed_form() -> None:
    gen = torch.Generator().manual_seed(0)
    sims = torch.rand(31, generator=gen, dtype=torch.float64) * 2 - 1
    pos = 7
    z = [torch.randn(6, 5, generator=gen) for _ in range(4)]
    data = temperature_data(sims, pos, (z[0], z[1]), (z[2], z[3]), 0.5, taus=(0.1, 1.0))
    for tau in (0.1, 1.0):
        expo = [math.exp(s / tau) for s in sims.tolist()]
        assert data.probs[tau].tolist() == pytest.approx([e / sum(expo) for e in expo], rel=1e-9)
        # gradient of -log p_pos w.r.t. each negative's similarity, by autograd
        s = sims.clone().requires_grad_(True)
        (-torch.log_softmax(s / tau, 0)[pos]).backward()
        assert s.grad is not None
        grad = torch.cat([s.grad[:pos], s.grad[pos + 1 :]])
        assert data.neg_weights[tau].tolist() == pytest.approx((grad / grad.mean()).tolist())
        neg = sorted(expo[:pos] + expo[pos + 1 :], reverse=True)
        assert data.hard[tau] == pytest.approx(sum(neg[:2]) / sum(neg))  # 5% of 30 -> 2
    assert data.hard[0.1] > data.hard[1.0]  # a lower τ concentrates the push
    for i in (0, 12, 29):
        tau = data.curve_taus[i]
        assert data.loss_before[i] == pytest.approx(nt_xent_reference(z[0], z[1], tau), rel=1e-5)
        assert data.loss_after[i] == pytest.approx(nt_xent_reference(z[2], z[3], tau), rel=1e-5)


def test_pair_rows_and_anchor_similarities_against_brute_force() -> None:
    gen = torch.Generator().manual_seed(1)
    z1 = F.normalize(torch.randn(12, 4, generator=gen), dim=1)
    z2 = F.normalize(torch.randn(12, 4, generator=gen), dim=1)
    labels = torch.tensor([3, 3, 1, 0, 1, 2, 0, 2, 3, 1, 0, 2])
    rows = pair_rows(z1, z2, labels, rows=3, tau=0.5)
    assert [r.index for r in rows] == [0, 2, 3]  # first image of classes 3, 1, 0
    for row in rows:
        i = row.index
        views = {(j, v): (z1 if v == 1 else z2)[j] for j in range(12) for v in (1, 2)}
        negs = {k: float(z1[i] @ e) for k, e in views.items() if k[0] != i}
        kinds = [t[3] for t in row.tiles]
        assert kinds == ["positive", "hardest negative", "negative", "negative"]
        assert row.tiles[0][2] == pytest.approx(float(z1[i] @ z2[i]), abs=1e-6)
        assert row.tiles[1][:2] == max(negs, key=negs.__getitem__)
        assert all(
            t[0] != i and t[2] == pytest.approx(negs[t[:2]], abs=1e-6) for t in row.tiles[1:]
        )
        sims, pos = anchor_similarities(z1, z2, i)
        assert len(sims) == 23 and float(sims[pos]) == pytest.approx(row.tiles[0][2])
        logits = [float(z1[i] @ e) / 0.5 for k, e in views.items() if k != (i, 1)]
        expected = -float(z1[i] @ z2[i]) / 0.5 + math.log(sum(math.exp(x) for x in logits))
        assert row.loss == pytest.approx(expected, rel=1e-5)
    per_anchor = sorted(
        (-torch.log_softmax(anchor_similarities(z1, z2, i)[0] / 0.5, 0)[11 + i].item(), i)
        for i in range(12)
    )
    assert median_anchor(z1, z2, 0.5) == per_anchor[6][1]


def test_block_stats_within_and_between_class_means() -> None:
    sim = torch.tensor([[1.0, 0.8, 0.1], [0.8, 1.0, 0.3], [0.1, 0.3, 1.0]])
    stats = block_stats(sim, torch.tensor([0, 0, 1]))
    assert stats.within == pytest.approx(0.8)  # the diagonal is not a pair
    assert stats.between == pytest.approx(0.2)
    assert stats.gap == pytest.approx(0.6)


def test_choose_steps_fills_the_budget_with_steps_and_knn_evaluations() -> None:
    # 10 steps an epoch of 0.5 s each (x OVERHEAD), a 2 s kNN after each epoch and at the end
    for steps in (30, 47, 200):
        cost = steps * 0.5 * OVERHEAD + 2.0 * (steps / 10 + 1)
        assert choose_steps(cost + 1e-6, 0.5, 2.0, 10) == steps
        assert choose_steps(cost - 0.01, 0.5, 2.0, 10) == steps - 1
    assert choose_steps(1.0, 0.5, 2.0, 10) == MIN_STEPS  # never fewer than the minimum
    assert choose_steps(1e9, 0.5, 2.0, 10) == MAX_EPOCHS * 10  # nor more than MAX_EPOCHS


def test_the_before_model_is_the_runs_initial_model(tmp_path: Path) -> None:
    from contrastkit.training.demo.model import backbone_spec, build_method
    from contrastkit.training.demo.pipeline import planned_config
    from contrastkit.training.engine.trainer import Trainer

    cfg, params = planned_config("digits", tmp_path / "run", seed=3)
    trainer = Trainer(cfg, params)
    mine = build_method(cfg, params, backbone_spec(cfg)).state_dict()
    theirs = trainer.method.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


@pytest.mark.slow
def test_demo_end_to_end_on_digits(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    # a fixed step count: the time budget alone trains fewer steps on a busier machine (20
    # at load 6, where kNN had not yet risen above the random network's)
    argv = ["--out", str(out), "--seconds", "40", "--steps", "60"]
    assert demo_cli.run(_args(demo_cli, argv)) == 0
    summary = json.loads((out / "summary.json").read_text())
    for name in summary["figures"].values():
        width, height = _png_size(out / name)
        assert width > 500 and height > 400 and (out / name).stat().st_size > 30_000
    knn = summary["knn"]
    assert knn["after"] > knn["before"]
    # the demo's "after" is the run's own final online kNN (same evaluation, same weights)
    last = [r for r in map(json.loads, (out / "run/metrics.jsonl").read_text().splitlines())
            if r["kind"] == "knn"][-1]  # fmt: skip
    assert last["knn_top1"] == pytest.approx(knn["after"], abs=1e-6)
    assert summary["steps"] >= MIN_STEPS and (out / "run/last.pt").is_file()
    text = (out / "summary.md").read_text()
    assert f"{knn['before']:.3f}" in text and f"{knn['after']:.3f}" in text
    nt = summary["nt_xent"]
    assert nt["after"]["0.5"] < nt["before"]["0.5"]  # trained at τ = 0.5: the loss fell there


def test_demo_refuses_steps_below_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--out", str(tmp_path / "demo"), "--steps", "0"]
    assert demo_cli.run(_args(demo_cli, argv)) == 2
    assert capsys.readouterr().err == "contrastive demo: --steps must be at least 1, not 0\n"
    assert not (tmp_path / "demo").exists()  # refused before anything was written
