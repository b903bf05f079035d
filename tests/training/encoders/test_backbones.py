"""Backbones: every family builds, has the feature size it reports, and adapts to 32x32."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from contrastkit.training.encoders.nets.backbones import BackboneSpec, build_backbone


@pytest.mark.parametrize(
    ("name", "cifar", "dim"),
    [("tiny", False, 128), ("resnet18", True, 512), ("torchvision:resnet18", True, 512)],
)
def test_backbones_report_their_feature_size(name: str, cifar: bool, dim: int) -> None:
    net, feat_dim = build_backbone(BackboneSpec(name, cifar))
    assert feat_dim == dim
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, dim)


def test_cifar_stem_keeps_32x32_resolution_through_the_stem() -> None:
    plain, _ = build_backbone(BackboneSpec("resnet18", False))
    cifar, _ = build_backbone(BackboneSpec("resnet18", True))
    x = torch.randn(1, 3, 32, 32)
    # ImageNet stem: 7x7/2 conv + 3x3/2 pool -> 8x8; the CIFAR stem keeps 32x32.
    assert plain.maxpool(plain.act1(plain.bn1(plain.conv1(x)))).shape[-1] == 8
    assert cifar.maxpool(cifar.act1(cifar.bn1(cifar.conv1(x)))).shape[-1] == 32
    assert isinstance(cifar.maxpool, nn.Identity) and cifar.conv1.kernel_size == (3, 3)


def test_open_clip_vision_tower_is_built_for_the_training_size() -> None:
    net, dim = build_backbone(BackboneSpec("open_clip:ViT-B-32", image_size=64))
    assert dim == 512 and net(torch.randn(1, 3, 64, 64)).shape == (1, 512)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (BackboneSpec("no_such_net"), "unknown backbone"),
        (BackboneSpec("torchvision:nope"), "unknown torchvision model"),
        (BackboneSpec("open_clip:nope"), "unknown open_clip architecture"),
        (BackboneSpec("timm:vit_tiny_patch16_224", True), "cifar_stem applies to ResNet"),
    ],
)
def test_bad_backbones_raise_clear_errors(spec: BackboneSpec, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_backbone(spec)
