"""VICReg (Bardes et al. 2022): variance-invariance-covariance regularisation.

    x -> view 1, view 2 -> backbone -> expander -> z1, z2 -> vicreg_terms(z1, z2)
    loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance

Invariance pulls the two views' embeddings together (MSE); the variance hinge keeps each
dimension's standard deviation above `gamma` (no collapse); the covariance term
decorrelates the dimensions. No negatives, no momentum encoder, no stop-gradient, no
normalisation of the embeddings. Variance and covariance span the global batch under DDP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from torch import nn

from contrastkit.training.heads import ProjectionHead
from contrastkit.training.losses import vicreg_terms
from contrastkit.training.methods import register
from contrastkit.training.methods.base import (
    MethodContext,
    MethodParams,
    StepOutput,
    Views,
    solo_learn_sources,
)
from contrastkit.training.methods.twoview import TwoViewMethod

if TYPE_CHECKING:
    pass


@dataclass
class VICRegParams(MethodParams):
    """VICReg's hyper-parameters (`--set key=value`); SOURCES says where each is from."""

    # The paper's expander is 3 layers of 8192; 3 x 2048 (solo-learn's CIFAR size) for the
    # same reason as Barlow Twins: at 8192 the head outweighs a small backbone ten times
    # over, and the [D, D] covariance costs D^2 per sample.
    proj_hidden: int = 2048
    proj_dim: int = 2048
    proj_layers: int = 3
    # The paper's weights (lambda, mu, nu) = (25, 25, 1), gamma 1 and eps 1e-4.
    sim_coeff: float = 25.0
    std_coeff: float = 25.0
    cov_coeff: float = 1.0
    gamma: float = 1.0
    eps: float = 1e-4
    head_norm: str = "batch"

    SOURCES: ClassVar[dict[str, str]] = {
        "proj_hidden": "solo-learn CIFAR recipe (2048; paper: 8192, heavier than the backbone)",
        "proj_dim": "solo-learn CIFAR recipe (2048; paper: 8192)",
        "proj_layers": "paper: Bardes et al. 2022 (VICReg, 3-layer expander)",
        "sim_coeff": "paper: VICReg (lambda = 25)",
        "std_coeff": "paper: VICReg (mu = 25)",
        "cov_coeff": "paper: VICReg (nu = 1)",
        "gamma": "paper: VICReg (gamma = 1, the target std)",
        "eps": "paper: VICReg (epsilon = 1e-4 in the std)",
        "head_norm": "paper: VICReg (BatchNorm in the expander's hidden layers)",
    }


@register
class VICReg(TwoViewMethod[VICRegParams]):
    """VICReg with a `proj_layers`-layer MLP expander (Linear, norm, ReLU blocks).

    Optimiser defaults: solo-learn's CIFAR recipe (scripts/pretrain/cifar/vicreg.yaml):
    LARS (contrastkit.training.engine.optim: eta 0.02, LARC-clipped, biases and norms exempt), lr
    0.3 per 256 images, weight decay 1e-4. The paper uses LARS with a base lr of 0.2 per 256, weight
    decay 1e-6, batch 2048 and 1000 ImageNet epochs.
    """

    name = "vicreg"
    Params = VICRegParams
    default_optimizer, default_lr, default_weight_decay = "lars", 0.3, 1e-4
    DEFAULT_SOURCES = solo_learn_sources("vicreg.yaml", "lars", 0.3, 1e-4)

    def __init__(
        self, backbone: nn.Module, feat_dim: int, params: VICRegParams, ctx: MethodContext
    ) -> None:
        super().__init__(backbone, feat_dim, params, ctx)
        for key in ("sim_coeff", "std_coeff", "cov_coeff"):
            if getattr(params, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(params, key)}")
        # The loss is invariant to one shift of every embedding (MSE of differences, centred
        # statistics), so a last-layer bias would get a zero gradient: none, as in the
        # paper's code.
        dims = (params.proj_hidden, params.proj_dim, params.proj_layers, params.head_norm)
        self.projector = ProjectionHead(feat_dim, *dims, last_bias=False)

    def loss(self, views: Views) -> StepOutput:
        """The weighted VICReg loss; logs the three unweighted terms.

        Each view is its own forward pass (BatchNorm statistics per view), as in the
        reference implementation.
        """
        p = self.params
        z1, z2 = self.project(views.crops[0]), self.project(views.crops[1])
        invariance, variance, covariance = vicreg_terms(z1, z2, p.gamma, p.eps)
        loss = p.sim_coeff * invariance + p.std_coeff * variance + p.cov_coeff * covariance
        logs = {"invariance": invariance, "variance": variance, "covariance": covariance}
        return StepOutput(loss=loss, logs={k: v.detach() for k, v in logs.items()})
