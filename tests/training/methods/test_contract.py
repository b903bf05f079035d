"""The Method contract (contrastkit.training.methods.base) is all the engine and export need: a toy
method written only against it trains, resumes exactly and exports; its declarations
(DEFAULT_SOURCES, Params' SOURCES, allows_sync_bn, export_parts) are what the engine,
`--list-settings` and export read."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.training.augment import ViewSpec
from contrastkit.training.commands.train import list_settings
from contrastkit.training.config import build_config
from contrastkit.training.encoders import load_encoder
from contrastkit.training.engine.checkpoint import load_checkpoint
from contrastkit.training.engine.trainer import Trainer
from contrastkit.training.export.build import export_checkpoint
from contrastkit.training.methods import (
    METHODS,
    MethodContext,
    MomentumMethod,
    MomentumParams,
    StepOutput,
    Views,
    get_method,
)

if TYPE_CHECKING:
    from contrastkit.training.augment import Augmenter
    from contrastkit.training.data import Batch

NAME = "toy-contract"


@dataclass
class ToyParams(MomentumParams):
    proj_dim: int = 16
    base_momentum: float = 0.9
    final_momentum: float = 1.0

    SOURCES: ClassVar[dict[str, str]] = {"proj_dim": "toy: small"}


class Toy(MomentumMethod[ToyParams]):
    """BYOL without a predictor: the online projection of one view follows the EMA
    target's projection of the other. Uses nothing of the engine."""

    name = NAME
    Params = ToyParams
    default_lr = 0.05
    default_weight_decay = 0.0
    default_optimizer = "sgd"
    DEFAULT_SOURCES: ClassVar[dict[str, str]] = {"lr": "toy: small steps"}

    def __init__(self, backbone: nn.Module, feat_dim: int, params: ToyParams, ctx: MethodContext):
        super().__init__(backbone, feat_dim, params, ctx)
        self.projector = nn.Sequential(nn.Linear(feat_dim, params.proj_dim))
        self.target_backbone = _frozen_copy(backbone)
        self.target_projector = _frozen_copy(self.projector)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.target_backbone), (self.projector, self.target_projector)]

    def make_views(self, batch: Batch, augment: Augmenter) -> Views:
        spec = ViewSpec(self.ctx.image_size, scale=(0.5, 1.0), jitter_p=0.0, gray_p=0.0)
        return Views(crops=[augment(batch.images, spec), augment(batch.images, spec)])

    def loss(self, views: Views) -> StepOutput:
        x1, x2 = views.crops
        online = self.projector(self.backbone(torch.cat([x1, x2])))
        with torch.no_grad():
            target = self.target_projector(self.target_backbone(torch.cat([x2, x1])))
        cos = F.cosine_similarity(online.float(), target.float(), dim=1)
        return StepOutput(loss=(2 - 2 * cos).mean(), logs={"cos": cos.mean().detach()})


def _frozen_copy(module: nn.Module) -> nn.Module:
    import copy

    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


@pytest.fixture
def toy() -> Iterator[type[Toy]]:
    """Toy in the registry for one test (the registry is global)."""
    METHODS[NAME] = Toy
    yield Toy
    del METHODS[NAME]


def _trainer(out: Path, steps: int, resume: Any = None, **extra: Any) -> Trainer:
    values = {
        "method": NAME, "data": "digits", "backbone": "tiny", "batch_size": 32,
        "image_size": 16, "out": str(out), "device": "cpu", "steps": steps,
        "knn_every": 0, "tensorboard": False, "progress": False, "deterministic": True,
        **extra,
    }  # fmt: skip
    cfg, params = build_config(values, ToyParams)
    return Trainer(cfg, params, resume=resume)


def test_a_toy_method_trains_resumes_exactly_and_exports(
    toy: type[Toy], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = _trainer(tmp_path / "whole", 4, checkpoint_every_steps=2)
    start = {k: v.clone() for k, v in whole.method.state_dict().items()}
    result = whole.fit()
    assert result.stopped == "done" and result.loss is not None and result.steps == 4
    trained = whole.method.state_dict()
    first = next(k for k in trained if k.startswith("backbone."))
    assert not torch.equal(trained[first], start[first])
    # the engine applied the EMA: the target moved, and is not the online network
    moved = trained["target_projector.0.weight"]
    assert not torch.equal(moved, start["target_projector.0.weight"])
    assert not torch.equal(moved, trained["projector.0.weight"])

    real_step = Trainer._train_step

    def crash_at_step_3(self: Trainer, batch: Any) -> Any:
        if self.step == 3:
            raise RuntimeError("simulated crash")
        return real_step(self, batch)

    broken = tmp_path / "broken"
    monkeypatch.setattr(Trainer, "_train_step", crash_at_step_3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _trainer(broken, 4, checkpoint_every_steps=2).fit()
    monkeypatch.setattr(Trainer, "_train_step", real_step)
    ckpt = load_checkpoint(broken)
    assert ckpt.step == 2 and ckpt.method == NAME
    _trainer(broken, 4, resume=ckpt, checkpoint_every_steps=2).fit()
    for key, value in load_checkpoint(broken).model.items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0, msg=key)

    # export: the backbone alone, or with the projector; each checked for parity on write
    plain = export_checkpoint(tmp_path / "whole", tmp_path / "export")
    with_head = export_checkpoint(tmp_path / "whole", tmp_path / "head", projector=True)
    image = torch.rand(2, 3, 16, 16)
    want = whole.method.eval().backbone(image)
    got = load_encoder(str(plain), device="cpu")._image_forward(image)
    torch.testing.assert_close(F.normalize(got, dim=1), F.normalize(want, dim=1), atol=1e-5, rtol=0)
    encoder = load_encoder(str(with_head), device="cpu")
    assert encoder.embed_dim == 16 and encoder.capabilities == frozenset({"image"})


def test_the_engine_and_cli_read_the_declarations(toy: type[Toy]) -> None:
    assert get_method(NAME) is Toy
    listing = list_settings(NAME)
    assert "proj_dim = 16" in listing and "# toy: small" in listing
    assert "lr = 0.05" in listing and "# toy: small steps" in listing
    ctx = MethodContext(torch.device("cpu"), 16, 1, 1, 4)
    toy_method = Toy(nn.Linear(3, 8), 8, ToyParams(), ctx)
    assert toy_method.allows_sync_bn  # the default
    parts = toy_method.export_parts()
    assert parts.projector is toy_method.projector and parts.head is None and parts.text is None


@pytest.mark.parametrize(("shuffle_bn", "allowed"), [(True, False), (False, True)])
def test_moco_declares_that_shuffled_bn_replaces_sync_bn(shuffle_bn: bool, allowed: bool) -> None:
    moco = get_method("moco")
    params = moco.Params(queue_size=0, proj_hidden=8, shuffle_bn=shuffle_bn)  # type: ignore[call-arg]
    ctx = MethodContext(torch.device("cpu"), 16, 1, 1, 4)
    assert moco(nn.Linear(3, 8), 8, params, ctx).allows_sync_bn is allowed


def test_clip_overrides_export_parts_with_both_towers() -> None:
    clip = get_method("clip")
    params = clip.Params(text_tower="transformer", text_width=32, text_layers=1,  # type: ignore[call-arg]
                         text_heads=2, context_length=8)  # fmt: skip
    ctx = MethodContext(torch.device("cpu"), 16, 1, 1, 4)
    method = clip(nn.Linear(3, 8), 8, params, ctx)
    parts = method.export_parts()
    assert parts.head is method.image_proj and parts.text is method.text  # type: ignore[attr-defined]
    assert parts.logit_scale == pytest.approx(1 / 0.07) and len(parts.templates) == 7
    assert "logit_scale" in parts.prefixes and parts.projector is None
