"""Image backbones for training: [B, 3, H, W] normalised floats -> [B, feat_dim] features.

Names (`--set backbone=...`):
    resnet18, resnet50, timm:NAME    timm models without their classifier
    torchvision:NAME                 torchvision models, classifier replaced by Identity
    open_clip:ARCH                   an open_clip vision tower (random init)
    tiny                             a 3-layer GroupNorm conv net for tests and smoke runs

`cifar_stem` swaps a ResNet's 7x7/2 conv and max-pool for one 3x3/1 conv, the standard
change for 32x32 inputs (SimCLR appendix B.9): without it a 32x32 image is 1x1 after
the stem's 16x down-sampling... and kNN accuracy drops by ~10 points.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential


@dataclass(frozen=True)
class BackboneSpec:
    """How to rebuild a backbone (stored in checkpoints and used by export)."""

    name: str
    cifar_stem: bool = False
    image_size: int | None = None  # open_clip towers are built for this input size


class TinyConvNet(nn.Module):
    """Three conv blocks with GroupNorm: per-sample, so it behaves the same on any batch split."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                nn.GroupNorm(8, cout),
                nn.ReLU(inplace=True),
            ]

        self.body = nn.Sequential(
            *block(3, w, 1), *block(w, 2 * w, 2), *block(2 * w, 4 * w, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.feat_dim = 4 * w
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's and open_clip's switch, for this net too (tests use it on the CPU)."""
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            # one segment per conv block: only the block inputs are kept for backward
            return checkpoint_sequential(self.body, 3, x, use_reentrant=False)
        return self.body(x)


def enable_grad_checkpointing(net: nn.Module) -> None:
    """Recompute the backbone's activations during backward instead of keeping them
    (memory for about a third more compute), through the model's own switch: timm and
    open_clip models have one, and so does TinyConvNet; ValueError for the others."""
    switch = getattr(net, "set_grad_checkpointing", None)
    if not callable(switch):
        raise ValueError(
            f"gradient checkpointing is not available for {type(net).__name__} backbones; "
            "use a timm, open_clip or tiny backbone"
        )
    switch(True)


def build_backbone(spec: BackboneSpec) -> tuple[nn.Module, int]:
    """BackboneSpec -> (module, feature dimension). ValueError for an unknown name."""
    name = spec.name
    if name == "tiny":
        net = TinyConvNet()
        return net, net.feat_dim
    if name.startswith("open_clip:"):
        import open_clip

        arch = name.split(":", 1)[1]
        if arch not in open_clip.list_models():
            raise ValueError(f"unknown open_clip architecture {arch!r}")
        size = spec.image_size
        visual = open_clip.create_model(arch, force_image_size=size).visual
        return visual, int(visual.output_dim)
    if name.startswith("torchvision:"):
        return _torchvision(name.split(":", 1)[1], spec.cifar_stem)
    return _timm(name.removeprefix("timm:"), spec.cifar_stem)


def _timm(name: str, cifar_stem: bool) -> tuple[nn.Module, int]:
    import timm

    if not timm.is_model(name):
        raise ValueError(f"unknown backbone {name!r}: not a timm model (see timm.list_models())")
    net = timm.create_model(name, num_classes=0, pretrained=False)
    if cifar_stem:
        _cifar_stem(net)
    return net, int(net.num_features)  # type: ignore[arg-type]


def _torchvision(name: str, cifar_stem: bool) -> tuple[nn.Module, int]:
    import torchvision

    builders = torchvision.models.list_models(module=torchvision.models)
    if name not in builders:
        raise ValueError(f"unknown torchvision model {name!r}")
    net = torchvision.models.get_model(name, weights=None)
    head_name = "fc" if hasattr(net, "fc") else "classifier"
    head = getattr(net, head_name)
    linear = (
        head
        if isinstance(head, nn.Linear)
        else next(m for m in head.modules() if isinstance(m, nn.Linear))
    )
    setattr(net, head_name, nn.Identity())
    if cifar_stem:
        _cifar_stem(net)
    return net, int(linear.in_features)


def _cifar_stem(net: nn.Module) -> None:
    """Replace a ResNet's conv1 (7x7, stride 2) + maxpool with a 3x3 stride-1 conv."""
    conv1 = getattr(net, "conv1", None)
    if not isinstance(conv1, nn.Conv2d) or not hasattr(net, "maxpool"):
        raise ValueError("cifar_stem applies to ResNet-style backbones (conv1 + maxpool) only")
    net.conv1 = nn.Conv2d(3, conv1.out_channels, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
