"""EMA ("momentum") updates of a target network from its online twin."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def make_target(online: nn.Module) -> nn.Module:
    """A frozen deep copy of `online`: the EMA target (BYOL) or key encoder (MoCo)."""
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def update_momentum(online: nn.Module, target: nn.Module, tau: float) -> None:
    """target <- tau * target + (1 - tau) * online, for parameters and float buffers.

    Uses the fused `_foreach` kernels: one launch for all tensors instead of one per
    tensor, which matters for ResNets with ~60 parameter tensors on a GPU.
    """
    t_params: list[torch.Tensor] = list(target.parameters())
    o_params = [p.detach() for p in online.parameters()]
    if len(t_params) != len(o_params):
        raise ValueError("online and target networks differ in structure")
    if t_params:
        torch._foreach_lerp_(t_params, o_params, 1.0 - tau)
    # BatchNorm running statistics follow the online network the same way.
    for tb, ob in zip(target.buffers(), online.buffers(), strict=True):
        if tb.dtype.is_floating_point:
            tb.lerp_(ob, 1.0 - tau)
        else:
            tb.copy_(ob)


def cosine_momentum(base: float, final: float, progress: float) -> float:
    """BYOL's schedule: tau = final - (final - base) * (cos(pi * progress) + 1) / 2."""
    progress = min(max(progress, 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2
