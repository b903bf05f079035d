"""Each method's optimiser defaults are its named reference recipe, and a LARS step moves a
layer by what that reference's optimiser would move it, at batch 256 and at batch 4096.

The reference is solo-learn's CIFAR recipes (scripts/pretrain/cifar/<method>.yaml) with its
LARS (solo/utils/lars.py: eta 0.02, clip_lr, exclude_bias_n_norm), written out below from
its update rule rather than imported, and solo-learn's linear lr scaling (lr * batch / 256).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from contrastkit.training.config import TrainConfig
from contrastkit.training.engine.optim import (
    build_optimizer,
    param_groups,
    resolve_optimizer_defaults,
)
from contrastkit.training.engine.resume import with_old_defaults
from contrastkit.training.engine.schedule import scaled_lr
from contrastkit.training.methods import get_method

# method -> (optimizer, lr per 256 images, weight decay), as the yaml files state them
SOLO_LEARN_CIFAR = {
    "simclr": ("lars", 0.4, 1e-4),
    "byol": ("lars", 1.0, 1e-5),
    "barlow": ("lars", 0.3, 1e-4),
    "vicreg": ("lars", 0.3, 1e-4),
    "swav": ("lars", 0.6, 1e-6),
    "dino": ("lars", 0.3, 1e-6),
    "simsiam": ("sgd", 0.5, 1e-5),
}
ETA = 0.02  # optimizer.kwargs.eta in every one of those recipes


@pytest.mark.parametrize("method", sorted(SOLO_LEARN_CIFAR))
def test_defaults_are_the_named_recipe_and_say_so(method: str) -> None:
    cls = get_method(method)
    name, lr, wd = SOLO_LEARN_CIFAR[method]
    assert (cls.default_optimizer, cls.default_lr, cls.default_weight_decay) == (name, lr, wd)
    for key in ("optimizer", "lr", "weight_decay"):
        assert f"scripts/pretrain/cifar/{method}.yaml" in cls.DEFAULT_SOURCES[key]
    cfg = TrainConfig(method=method)
    assert resolve_optimizer_defaults(cfg, cls) == (name, lr, wd)
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay) == (name, lr, wd)  # saved with the run
    if name == "lars":
        assert (cfg.lars_eta, cfg.lars_clip) == (ETA, True)


def _layers() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.Linear(64, 16))


def _solo_learn_lars_delta(w: torch.Tensor, g: torch.Tensor, lr: float, wd: float) -> torch.Tensor:
    """solo-learn's first LARS step of a weight matrix (zero momentum buffer): -lr * d_p."""
    p_norm, g_norm = w.norm(), g.norm()
    lars_lr = ETA * p_norm / (g_norm + p_norm * wd + 1e-8)
    lars_lr = torch.clamp(lars_lr / lr, max=1.0)  # clip_lr
    return -lr * (g + wd * w) * lars_lr


@pytest.mark.parametrize("method", [m for m, r in SOLO_LEARN_CIFAR.items() if r[0] == "lars"])
@pytest.mark.parametrize("batch", [256, 4096])
def test_a_lars_step_moves_each_layer_as_the_reference(method: str, batch: int) -> None:
    cfg = TrainConfig(method=method, batch_size=batch)
    name, base_lr, wd = resolve_optimizer_defaults(cfg, get_method(method))
    lr = scaled_lr(base_lr, batch, cfg.lr_scaling)
    assert lr == pytest.approx(base_lr * batch / 256)
    net = _layers()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    # one layer with a large gradient (its trust ratio binds at any batch), one with a
    # small one (plain SGD's step is the smaller at batch 256: lr scaling shows there)
    scales = {"0.weight": 1.0, "2.weight": 1e-3}
    for n, p in net.named_parameters():
        p.grad = torch.randn_like(p) * scales.get(n, 0.1)
    opt = build_optimizer(
        name, param_groups(net, wd, set()), lr, cfg.momentum, cfg.lars_eta, cfg.lars_clip
    )
    opt.step()
    for n, p in net.named_parameters():
        delta = p.detach() - before[n]
        # biases and norms: plain SGD, no decay (exclude_bias_n_norm)
        lars = p.ndim > 1
        want = _solo_learn_lars_delta(before[n], p.grad, lr, wd) if lars else -lr * p.grad
        # delta = after - before: float32 rounding of the weights, ~1e-7 absolute
        torch.testing.assert_close(delta, want, rtol=1e-4, atol=2e-7)
    # the layer sizes in words: the large-gradient layer moves ~eta of its norm whatever
    # the batch; the small-gradient layer moves lr * |g| / |w| until that reaches eta
    rel = {n: ((dict(net.named_parameters())[n] - before[n]).norm() / before[n].norm()).item()
           for n in scales}  # fmt: skip
    assert rel["0.weight"] == pytest.approx(ETA, rel=0.01)
    sgd_rel = (
        lr
        * (dict(net.named_parameters())["2.weight"].grad.norm() / before["2.weight"].norm()).item()
    )
    assert rel["2.weight"] == pytest.approx(min(sgd_rel, ETA), rel=0.01)


def test_a_checkpoint_with_unset_defaults_resumes_with_the_old_ones(tmp_path: Path) -> None:
    """Configs saved before the recipes left lr / weight_decay None: they keep theirs."""
    old = {"method": "simsiam", "lr": None, "weight_decay": None, "optimizer": None}
    saved = with_old_defaults(old)
    assert (saved["lr"], saved["weight_decay"]) == (0.05, 1e-4)
    explicit = with_old_defaults({"method": "simclr", "weight_decay": 3e-4})
    assert explicit["weight_decay"] == 3e-4
    assert with_old_defaults({"method": "simclr", "weight_decay": None})["weight_decay"] == 1e-5
