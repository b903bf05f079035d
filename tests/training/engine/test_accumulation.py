"""Gradient accumulation and gradient checkpointing (contrastkit.training.engine.trainer,
TrainConfig).

Accumulation sums the gradients of micro-batches before one step: for per-sample losses
(BYOL, SimSiam, DINO) that is the large batch's gradient exactly, given a backbone and heads
without batch statistics (here GroupNorm and LayerNorm); for in-batch negatives it is
not (each micro-batch is its own softmax), which the last test shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from contrastkit.training.config import ConfigError, build_config
from contrastkit.training.engine.trainer import Trainer
from contrastkit.training.methods import get_method

HEAD = {"proj_hidden": 16, "proj_dim": 8, "head_norm": "layer"}
PARAMS: dict[str, dict[str, Any]] = {
    "byol": HEAD | {"pred_hidden": 16},
    "simsiam": HEAD | {"pred_hidden": 16},
    # DINO's centre moves only after the step, so within one its loss is per-sample too
    "dino": HEAD | {"out_dim": 6, "n_small_crops": 2, "small_size": 8},
    "simclr": HEAD,
}


def _trainer(method: str, out: Path, **run: Any) -> Trainer:
    values = {
        "method": method,
        "data": "digits",
        "backbone": "tiny",
        "batch_size": 8,
        "image_size": 16,
        "device": "cpu",
        "out": str(out),
        "steps": 4,
        "knn_every": 0,
        "tensorboard": False,
        "progress": False,
        **PARAMS[method],
        **run,
    }
    cfg, params = build_config(values, get_method(method).Params)
    return Trainer(cfg, params)


def _grads(trainer: Trainer, views: Any) -> tuple[float, dict[str, torch.Tensor]]:
    trainer.optimizer.zero_grad(set_to_none=True)
    loss, _ = trainer._accumulate(views)
    grads = {n: p.grad.clone() for n, p in trainer.method.named_parameters() if p.grad is not None}
    return float(loss), grads


def _views(trainer: Trainer) -> Any:
    batch = next(iter(trainer.data.batches(0, trainer.cfg.batch_size, trainer.device)))
    return trainer.make_views(batch)


@pytest.mark.parametrize("method", ["byol", "simsiam", "dino"])
def test_accumulated_gradients_equal_the_large_batch_for_per_sample_losses(
    method: str, tmp_path: Path
) -> None:
    whole = _trainer(method, tmp_path / "a")
    parts = _trainer(method, tmp_path / "b", accumulate=4)
    views = _views(whole)
    loss1, g1 = _grads(whole, views)
    loss4, g4 = _grads(parts, views)
    assert g1.keys() == g4.keys() and len(g1) > 4
    assert loss4 == pytest.approx(loss1, rel=1e-5)
    for name in g1:
        torch.testing.assert_close(g4[name], g1[name], rtol=1e-4, atol=1e-6, msg=name)


def test_with_in_batch_negatives_accumulation_is_not_the_large_batch(tmp_path: Path) -> None:
    whole = _trainer("simclr", tmp_path / "a")
    parts = _trainer("simclr", tmp_path / "b", accumulate=2)
    views = _views(whole)
    _, g1 = _grads(whole, views)
    _, g2 = _grads(parts, views)
    worst = max(float((g2[n] - g1[n]).abs().max() / g1[n].abs().max()) for n in g1)
    assert worst > 1e-2  # fewer negatives per softmax: another gradient, as documented


@pytest.mark.parametrize("backbone", ["tiny", "resnet18"])
def test_gradient_checkpointing_gives_the_same_gradients(backbone: str, tmp_path: Path) -> None:
    plain = _trainer("byol", tmp_path / "a", backbone=backbone)
    saved = _trainer("byol", tmp_path / "b", backbone=backbone, grad_checkpointing=True)
    views = _views(plain)
    _, g1 = _grads(plain, views)
    _, g2 = _grads(saved, views)
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-4, atol=1e-6, msg=name)


def test_accumulate_must_divide_the_batch() -> None:
    with pytest.raises(ConfigError, match="divide batch_size"):
        build_config({"batch_size": 8, "accumulate": 3})
    with pytest.raises(ConfigError, match="accumulate must be >= 1"):
        build_config({"accumulate": 0})


def test_a_torchvision_backbone_refuses_checkpointing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="gradient checkpointing is not available"):
        _trainer("byol", tmp_path / "a", backbone="torchvision:resnet18", grad_checkpointing=True)
