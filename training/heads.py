"""Heads shared by the methods: projection MLPs, BYOL's predictor, SwAV's prototypes."""

from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Sequential):
    """MLP [B, in_dim] -> [B, out_dim]: (Linear, Norm, ReLU) x (layers-1), then Linear.

    norm: "batch" (SimCLR/BYOL/SwAV default), "layer" (per-sample; what the
    distributed equivalence test needs), or "none" (MoCo v2's head). `last_norm` adds a BatchNorm
    without affine after the last layer (SimCLR v2 / SwAV style), when norm is "batch".
    `last_bias` False: no bias on the last Linear (for losses that ignore a shift of the
    output, whose gradient for it would be identically zero).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        layers: int = 2,
        norm: str = "batch",
        last_norm: bool = False,
        last_bias: bool = True,
    ) -> None:
        blocks: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers - 1):
            blocks += [
                nn.Linear(dim, hidden_dim, bias=norm == "none"),
                norm_layer(norm, hidden_dim),
            ]
            blocks.append(nn.ReLU(inplace=True))
            dim = hidden_dim
        blocks.append(nn.Linear(dim, out_dim, bias=last_bias))
        if last_norm and norm == "batch":
            blocks.append(nn.BatchNorm1d(out_dim, affine=False))
        super().__init__(*blocks)


def norm_layer(kind: str, dim: int) -> nn.Module:
    """ "batch" | "layer" | "none" -> the norm over [B, dim] (ValueError for another)."""
    if kind == "batch":
        return nn.BatchNorm1d(dim)
    if kind == "layer":
        return nn.LayerNorm(dim)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be batch, layer or none, got {kind!r}")


class Prototypes(nn.Module):
    """SwAV's K prototype vectors: [B, d] unit embeddings -> [B, K] cosine scores.

    The weight rows are kept on the unit sphere by `normalize_()`, which the method
    calls after every optimiser step (as in the SwAV paper).
    """

    def __init__(self, dim: int, n_prototypes: int) -> None:
        super().__init__()
        self.layer = nn.Linear(dim, n_prototypes, bias=False)
        self.normalize_()

    @torch.no_grad()
    def normalize_(self) -> None:
        w = self.layer.weight
        w.copy_(nn.functional.normalize(w, dim=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layer(z)
