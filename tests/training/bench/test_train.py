"""`contrastive bench train`: the JSON it writes, and the pieces its figures rest on."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from contrastkit.training.bench import train as bench
from contrastkit.training.bench.pipelines import BenchSettings, build_trainer, step_on_views
from contrastkit.training.bench.report import comparisons
from contrastkit.training.bench.time_to_knn import time_to_target
from contrastkit.training.data import load_knn_data
from tests.training.bench.runner import run_bench


def _numpy_knn_top1(k: int = 200, t: float = 0.1) -> float:
    """Weighted kNN on digits' raw pixels, written independently (numpy, float64, a
    Python loop over the queries): the reference for the bench's raw-pixel figure."""
    loaded = load_knn_data("digits")
    assert loaded is not None
    bank, queries = loaded
    xb = bank.images.flatten(1).double().numpy()
    xq = queries.images.flatten(1).double().numpy()
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    labels = bank.labels.numpy()
    right = 0
    for q, truth in zip(xq, queries.labels.numpy(), strict=True):
        sims = xb @ q
        top = np.argsort(-sims, kind="stable")[:k]
        votes = np.zeros(len(bank.classes))
        for i in top:
            votes[labels[i]] += math.exp(sims[i] / t)
        right += int(np.argmax(votes) == truth)
    return right / len(xq)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """One in-process --quick run (moco and clip against simclr, one kNN epoch)."""
    path = tmp_path_factory.mktemp("bench") / "train.json"
    # One thread: two OpenMP threads on a 2-core machine that runs anything else stall
    # at every barrier (steps 30x slower), which would only make this test slow.
    flags = "--quick --device cpu --methods moco,clip --batch-size 32 --knn-epochs 1 --threads 1"
    return run_bench(bench, flags, path)


def test_quick_run_records_the_environment_and_settings(quick: tuple[dict[str, Any], str]) -> None:
    result, _ = quick
    assert result["benchmark"] == "train"
    for key in ("date", "device", "device_name", "torch", "cuda", "git_commit", "python"):
        assert key in result
    assert result["device"] == "cpu" and result["torch"] == torch.__version__
    s = result["settings"]
    assert (s["backbone"], s["data"], s["batch_size"], s["quick"]) == ("tiny", "digits", 32, True)
    assert s["methods"] == ["moco", "clip"] and s["threads"] == 1


def test_quick_run_figures_are_positive_and_follow_from_the_step_times(
    quick: tuple[dict[str, Any], str],
) -> None:
    result, _ = quick
    b, s = 32, result["settings"]
    a = result["step_only"]
    assert a["timed_steps"] == s["rounds"] * s["iters"]
    assert a["img_per_s"] == pytest.approx(b / a["median_step_s"]) and a["img_per_s"] > 0
    for name in ("end_to_end", "peer"):
        fig = result[name]
        assert fig["timed_steps"] == s["rounds"] * s["e2e_iters"]
        assert fig["seconds"] > 0
        assert fig["img_per_s"] == pytest.approx(b * fig["timed_steps"] / fig["seconds"])
    assert result["peer"]["workers"] == 1
    assert set(result["methods"]) == {"simclr", "moco", "clip"}
    assert result["methods"]["simclr"] == {k: a[k] for k in result["methods"]["simclr"]}
    assert all(m["median_step_s"] > 0 for m in result["methods"].values())


def test_quick_run_ratios_are_figure_over_reference_from_the_same_run(
    quick: tuple[dict[str, Any], str],
) -> None:
    result, printed = quick
    by_name = {c["name"]: c for c in result["comparisons"]}
    expected = {
        "end_to_end/step_only": (
            result["end_to_end"]["img_per_s"],
            result["step_only"]["img_per_s"],
        ),
        "end_to_end/peer": (result["end_to_end"]["img_per_s"], result["peer"]["img_per_s"]),
        "knn/raw_pixels": (result["knn"]["final_top1"], result["knn"]["raw_pixel_top1"]),
    }
    simclr = result["methods"]["simclr"]["median_step_s"]
    for m in ("moco", "clip"):
        expected[f"{m}/simclr step time"] = (result["methods"][m]["median_step_s"], simclr)
    assert set(by_name) == set(expected)
    for name, (figure, reference) in expected.items():
        c = by_name[name]
        assert (c["figure"], c["reference"]) == (figure, reference)
        assert c["ratio"] == pytest.approx(figure / reference) and c["ratio"] > 0
    assert by_name["end_to_end/step_only"]["meets_target"] == (
        by_name["end_to_end/step_only"]["ratio"] >= 0.8
    )
    assert by_name["moco/simclr step time"]["target"] == "<= 1.3"
    assert by_name["clip/simclr step time"]["target"] is None
    assert "| (a) simclr step only |" in printed and "| (d) moco step |" in printed


def test_quick_run_knn_curve_and_raw_pixel_reference(quick: tuple[dict[str, Any], str]) -> None:
    knn = quick[0]["knn"]
    assert (knn["bank"], knn["queries"], knn["k"], knn["t"]) == (1438, 359, 200, 0.1)
    assert [r["epoch"] for r in knn["per_epoch"]] == [1]
    record = knn["per_epoch"][0]
    assert 0 < record["train_seconds"] <= record["wall_seconds"]
    assert 0.1 < record["top1"] <= 1.0 and knn["final_top1"] == record["top1"]
    assert 0.1 < knn["untrained_top1"] <= 1.0
    # float32 torch vs float64 numpy may break a near-tie differently: one query at most
    assert knn["raw_pixel_top1"] == pytest.approx(_numpy_knn_top1(), abs=1.01 / 359)
    assert knn["reached_target"] == (record["top1"] >= 0.847)


def test_time_to_target_is_the_first_epoch_at_or_past_it() -> None:
    records = [
        {"epoch": e, "top1": a, "train_seconds": 10.0 * e, "wall_seconds": 11.0 * e}
        for e, a in [(1, 0.70), (2, 0.85), (3, 0.84), (4, 0.90)]
    ]
    assert time_to_target(records, 0.85) == records[1]
    assert time_to_target(records, 0.80)["epoch"] == 2  # type: ignore[index]
    assert time_to_target(records, 0.95) is None


def test_comparisons_of_a_hand_made_result() -> None:
    result = {
        "step_only": {"img_per_s": 1000.0},
        "end_to_end": {"img_per_s": 750.0},
        "peer": {"img_per_s": 250.0, "workers": 3},
        "methods": {"simclr": {"median_step_s": 0.2}, "byol": {"median_step_s": 0.25}},
    }
    got = {c["name"]: (c["ratio"], c["meets_target"]) for c in comparisons(result)}
    assert got["end_to_end/step_only"] == (pytest.approx(0.75), False)
    assert got["end_to_end/peer"] == (pytest.approx(3.0), None)
    assert got["byol/simclr step time"] == (pytest.approx(1.25), True)


def test_step_on_views_is_the_engine_step_on_those_views(tmp_path: Path) -> None:
    """The stop-gap for 'step on given views' changes the weights exactly as the engine's
    own _train_step does when make_views would have produced the same views."""
    s = BenchSettings(data="digits", backbone="tiny", batch_size=16, device="cpu")
    engine = build_trainer(s, "byol", tmp_path / "a")  # BYOL: EMA and a predictor too
    given = build_trainer(s, "byol", tmp_path / "b")
    batch = next(iter(engine.data.batches(0, 16, engine.device)))
    before = {k: v.clone() for k, v in engine.method.state_dict().items()}
    views = given.method.make_views(batch, given.augment)  # same seed: the same views
    engine._train_step(batch)
    engine.step += 1
    step_on_views(given, views)
    assert given.step == engine.step == 1
    after, other = engine.method.state_dict(), given.method.state_dict()
    for name, value in after.items():
        assert torch.equal(value, other[name]), name
    assert not torch.equal(after["backbone.body.0.weight"], before["backbone.body.0.weight"])


def test_peer_views_are_normalised_rgb_of_the_image() -> None:
    """A flat grey 1-channel image stays flat under any crop, flip or grayscale (jitter
    off), so every output pixel is exactly (v/255 - mean) / std of its channel: the
    image was widened to RGB, scaled and normalised as our own views are."""
    from contrastkit.training.augment import IMAGENET_MEAN, IMAGENET_STD, ViewSpec
    from contrastkit.training.bench.peer import PeerDataset, peer_transform

    spec = ViewSpec(16, jitter=(0.0, 0.0, 0.0, 0.0))
    images = torch.full((2, 1, 28, 28), 128, dtype=torch.uint8)
    v1, v2 = PeerDataset(images, peer_transform(spec))[1]
    assert v1.shape == v2.shape == (3, 16, 16) and v1.dtype == torch.float32
    for c in range(3):
        want = (128 / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(v1[c], torch.full((16, 16), want), atol=1e-5)
    with pytest.raises(ValueError, match="crop, flip, jitter and grayscale only"):
        peer_transform(ViewSpec(16, blur_p=0.5))
