"""Optimisers: SGD, AdamW and LARS, with biases and norm weights kept out of weight decay."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from contrastkit.training.config import TrainConfig
    from contrastkit.training.methods.base import Method


def param_groups(
    model: nn.Module,
    weight_decay: float,
    no_decay: set[str],
    lr_scales: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Split trainable parameters into groups by (decayed or exempt, lr multiplier).

    Biases and 1-D parameters (norm scales) are exempt from weight decay and from LARS's
    trust ratio, as in SimCLR/BYOL; so are names in `no_decay`. `lr_scales` maps parameter
    names (as in `named_parameters()`) to a multiplier on the scheduled lr (default 1.0);
    each group carries it as "lr_scale" (see `apply_lr`).

    The order is fixed, because an optimizer's checkpointed state is matched to its
    groups by position: first the decayed and the exempt group at scale 1.0 (always both,
    even when empty: without `lr_scales` these are the two groups of every earlier
    version), then, by decreasing multiplier, the non-empty decayed and exempt groups of
    every other multiplier.
    """
    scales = lr_scales or {}
    _check_scales(model, scales)
    buckets: dict[tuple[float, bool], list[nn.Parameter]] = {(1.0, True): [], (1.0, False): []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decayed = p.ndim > 1 and name not in no_decay
        buckets.setdefault((float(scales.get(name, 1.0)), decayed), []).append(p)
    extra = sorted((k for k in buckets if k[0] != 1.0), key=lambda k: (-k[0], not k[1]))
    return [_group(buckets[k], k, weight_decay) for k in [(1.0, True), (1.0, False), *extra]]


def _group(params: list[nn.Parameter], key: tuple[float, bool], wd: float) -> dict[str, Any]:
    """One optimizer group; key: (lr multiplier, decayed). Exempt groups skip LARS too."""
    scale, decayed = key
    return {
        "params": params,
        "weight_decay": wd if decayed else 0.0,
        "lars": decayed,
        "lr_scale": scale,
    }


def _check_scales(model: nn.Module, scales: Mapping[str, float]) -> None:
    """Refuse multipliers for names the model lacks (a misspelt prefix would otherwise
    train everything at the full lr, silently) and negative ones."""
    unknown = sorted(set(scales) - {name for name, _ in model.named_parameters()})
    if unknown:
        raise ValueError(f"lr_scales name parameters the model lacks: {unknown[:5]}")
    negative = sorted(name for name, s in scales.items() if s < 0)
    if negative:
        raise ValueError(f"lr_scales must be non-negative; negative for {negative[:5]}")


def apply_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to the scheduled `lr` times the group's "lr_scale".

    Groups without one (restored from a checkpoint written before multipliers existed:
    loading replaces the group dicts by the saved ones) train at the scheduled lr."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (You et al. 2017), LARC-clipped.

    Per tensor of a group with lars=True (when both norms are positive):
        local_lr = eta * ||w|| / (||g|| + wd * ||w||)      (the paper's eq. 6)
        clip=False (LARS):  g <- (g + wd * w) * local_lr
        clip=True  (LARC):  g <- (g + wd * w) * min(local_lr / lr, 1)
    then buf <- momentum * buf + g; w <- w - lr * buf. With clipping a layer's own rate is
    min(local_lr, lr): one step (before momentum) moves it by at most about eta * ||w||,
    and never faster than plain SGD would. This is solo-learn's LARS (solo/utils/lars.py,
    with `clip_lr` and `exclude_bias_n_norm`) and NVIDIA apex's LARC; the defaults, eta
    0.02 with clipping, are what every solo-learn CIFAR and ImageNet-100 recipe sets.
    Norms come from fused `_foreach` kernels.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.02,
        clip: bool = True,
    ) -> None:
        if eta <= 0:
            raise ValueError(f"LARS eta must be positive, got {eta}")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta}
        defaults |= {"lars": True, "clip": clip}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads: list[torch.Tensor] = [p.grad for p in params if p.grad is not None]
            # the raw gradient's norm: the trust ratio's denominator adds wd * ||w|| itself
            g_norm = torch.stack(torch._foreach_norm(grads)) if group["lars"] else None
            if group["weight_decay"]:
                grads = list(torch._foreach_add(grads, params, alpha=group["weight_decay"]))
            if g_norm is not None:
                w_norm = torch.stack(torch._foreach_norm(params))
                grads = list(torch._foreach_mul(grads, list(self._trust(group, w_norm, g_norm))))
            bufs = [self._buffer(p) for p in params]
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, grads)
            torch._foreach_add_(params, bufs, alpha=-group["lr"])

    @staticmethod
    def _trust(group: dict[str, Any], w_norm: torch.Tensor, g_norm: torch.Tensor) -> Any:
        """The factor on each tensor's gradient; w_norm, g_norm (the raw gradients'):
        (n_tensors,)."""
        local = group["eta"] * w_norm / (g_norm + group["weight_decay"] * w_norm)
        if group["clip"] and group["lr"] > 0:  # lr is 0 only at a schedule's very end
            local = torch.clamp(local / group["lr"], max=1.0)
        return torch.where((w_norm > 0) & (g_norm > 0), local, 1.0).unbind()

    def _buffer(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buf: torch.Tensor = state["momentum_buffer"]
        return buf


def build_optimizer(
    name: str,
    groups: list[dict[str, Any]],
    lr: float,
    momentum: float,
    lars_eta: float = 0.02,
    lars_clip: bool = True,
) -> torch.optim.Optimizer:
    """ "sgd" | "lars" | "adamw" -> optimiser over `groups` (from `param_groups`)."""
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, eta=lars_eta, clip=lars_clip)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)
    raise ValueError(f"optimizer must be sgd, lars or adamw, got {name!r}")


def resolve_optimizer_defaults(
    cfg: TrainConfig, method_cls: type[Method[Any]]
) -> tuple[str, float, float]:
    """Fill the run's unset optimizer / lr (per 256 images) / weight_decay with the
    method's defaults, in `cfg` itself, and return (optimizer, lr, weight_decay).

    Written into the config, the values reach every checkpoint: a resumed run keeps what
    it trained with when a method's default changes later."""
    (name, lr, wd), _ = method_cls.optimizer_defaults(cfg)
    cfg.lr = lr if cfg.lr is None else cfg.lr
    cfg.weight_decay = wd if cfg.weight_decay is None else cfg.weight_decay
    cfg.optimizer = cfg.optimizer or name
    return cfg.optimizer, cfg.lr, cfg.weight_decay


def optimizer_line(
    cfg: TrainConfig, method_cls: type[Method[Any]], peak: float, batch: int, unset: list[str]
) -> str:
    """The run's optimiser in one log line, and where its defaults come from: `unset`
    names the settings the run took from the method (cfg holds them resolved)."""
    name = str(cfg.optimizer)
    lars = f" (eta {cfg.lars_eta:g}, {'clipped' if cfg.lars_clip else 'unclipped'})"
    text = (
        f"optimiser: {name}{lars if name == 'lars' else ''}, lr {cfg.lr:g} per 256 images "
        f"-> {peak:g} at batch {batch} ({cfg.lr_scaling}), weight decay {cfg.weight_decay:g}"
    )
    known = method_cls.optimizer_defaults(cfg)[1]
    sources = {known.get(k, "the method's default") for k in unset}
    if sources:
        text += f"; defaults from {'; '.join(sorted(sources))}"
    return text
