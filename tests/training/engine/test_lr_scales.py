"""Per-parameter lr multipliers: layer-wise lr decay over real open_clip towers
(contrastkit.training.methods.layer_decay) and the trainer applying a method's `lr_scales()`."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
from torch import nn

from contrastkit.training.config import build_config
from contrastkit.training.engine.trainer import Trainer
from contrastkit.training.methods import get_method
from contrastkit.training.methods.layer_decay import count_blocks, layer_decay_scales
from contrastkit.training.methods.simclr import SimCLR

VISION_LAYERS, TEXT_LAYERS = 3, 2  # unequal, so a count from the wrong tower shows


def _clip() -> open_clip.CLIP:
    """A small CLIP with random weights: open_clip's own parameter names."""
    return open_clip.CLIP(
        embed_dim=32,
        vision_cfg={"image_size": 32, "patch_size": 8, "width": 64, "layers": VISION_LAYERS,
                    "head_width": 32},
        text_cfg={"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2,
                  "layers": TEXT_LAYERS},
    )  # fmt: skip


class _Holder(nn.Module):
    """As a method holds them: the vision tower as `backbone`, beside a head of its own."""

    def __init__(self, clip: open_clip.CLIP) -> None:
        super().__init__()
        self.backbone = clip.visual
        self.head = nn.Linear(32, 8)


def test_count_blocks_of_open_clip_towers() -> None:
    clip = _clip()
    assert count_blocks(clip.visual) == VISION_LAYERS
    assert count_blocks(clip.visual.transformer) == VISION_LAYERS
    assert count_blocks(clip) == TEXT_LAYERS  # a CLIP model's .transformer is its text's
    with pytest.raises(ValueError, match="resblocks"):
        count_blocks(nn.Linear(2, 2))


def test_layer_decay_over_a_vision_backbone() -> None:
    holder, decay, blocks = _Holder(_clip()), 0.5, VISION_LAYERS
    names = [n for n, _ in holder.named_parameters()]
    scales = layer_decay_scales(names, {"backbone.": count_blocks(holder.backbone)}, decay)
    assert set(scales) == {n for n in names if n.startswith("backbone.")}  # not the head
    stem = ["conv1.weight", "class_embedding", "positional_embedding", "ln_pre.weight"]
    for name in stem:
        assert scales[f"backbone.{name}"] == decay ** (blocks + 1), name
    block = "backbone.transformer.resblocks.{}.attn.in_proj_weight"
    assert scales[block.format(blocks - 1)] == decay
    assert scales[block.format(0)] == decay**blocks
    for name in ["ln_post.weight", "ln_post.bias", "proj"]:
        assert scales[f"backbone.{name}"] == 1.0, name


def test_layer_decay_over_both_towers_of_a_clip_model() -> None:
    """ "visual." and, for the text tower's top-level names, ""; the longest prefix wins."""
    clip, decay = _clip(), 0.8
    names = [n for n, _ in clip.named_parameters()]
    scales = layer_decay_scales(names, {"visual.": VISION_LAYERS, "": TEXT_LAYERS}, decay)
    assert set(scales) == set(names)
    assert scales["visual.conv1.weight"] == pytest.approx(decay ** (VISION_LAYERS + 1))
    assert scales["token_embedding.weight"] == pytest.approx(decay ** (TEXT_LAYERS + 1))
    assert scales["positional_embedding"] == pytest.approx(decay ** (TEXT_LAYERS + 1))
    assert scales["transformer.resblocks.1.mlp.c_fc.weight"] == pytest.approx(decay)
    for name in ["visual.proj", "ln_final.weight", "text_projection", "logit_scale"]:
        assert scales[name] == 1.0, name


def test_layer_decay_one_leaves_every_lr_alone() -> None:
    names = [n for n, _ in _clip().named_parameters()]
    scales = layer_decay_scales(names, {"visual.": VISION_LAYERS, "": TEXT_LAYERS}, 1.0)
    assert set(scales.values()) == {1.0}


def test_layer_decay_refuses_bad_decays_and_block_counts() -> None:
    with pytest.raises(ValueError, match="decay"):
        layer_decay_scales(["a.conv1.weight"], {"a.": 2}, 0.0)
    with pytest.raises(ValueError, match="block 2 of a tower of 2"):
        layer_decay_scales(["a.transformer.resblocks.2.ln_1.weight"], {"a.": 2}, 0.5)


def test_the_trainer_scales_each_group_by_the_methods_lr_scales(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_for_the_backbone(self: SimCLR) -> dict[str, float]:
        return {n: 0.5 for n, _ in self.named_parameters() if n.startswith("backbone.")}

    monkeypatch.setattr(SimCLR, "lr_scales", half_for_the_backbone)
    values = {
        **{"method": "simclr", "data": "digits", "backbone": "tiny", "device": "cpu"},
        **{"batch_size": 8, "image_size": 16, "steps": 4, "warmup_epochs": 0},
        **{"out": str(tmp_path), "knn_every": 0, "tensorboard": False, "progress": False},
    }
    trainer = Trainer(*build_config(values, get_method("simclr").Params))
    lr = trainer._set_lr()
    assert lr > 0  # no warmup: a zero lr would prove nothing
    by_id = {id(p): n for n, p in trainer.method.named_parameters()}
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            assert by_id[id(p)].startswith("backbone.") == (group["lr_scale"] == 0.5)
        assert group["lr"] == pytest.approx(lr * group["lr_scale"])
    assert {g["lr_scale"] for g in trainer.optimizer.param_groups} == {1.0, 0.5}
