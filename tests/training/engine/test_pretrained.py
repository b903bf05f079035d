"""Starting a run from pretrained backbone weights (`init_from`,
contrastkit.training.engine.pretrained)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from contrastkit.training.config import build_config
from contrastkit.training.encoders.base import Preprocess
from contrastkit.training.encoders.exported.format import ExportMeta, write_export
from contrastkit.training.encoders.nets.backbones import BackboneSpec, build_backbone
from contrastkit.training.engine.pretrained import load_backbone
from contrastkit.training.engine.trainer import Trainer
from contrastkit.training.methods import get_method


def _source(seed: int = 3) -> dict[str, torch.Tensor]:
    """A tiny backbone's weights, from another seed than any run's."""
    torch.manual_seed(seed)
    net, _ = build_backbone(BackboneSpec("tiny", False, 16))
    return {k: v.clone() for k, v in net.state_dict().items()}


def _trainer(tmp_path: Path, init_from: Path | None, **run: Any) -> Trainer:
    values = {
        "method": "byol", "data": "digits", "backbone": "tiny", "batch_size": 8,
        "image_size": 16, "device": "cpu", "out": str(tmp_path / "run"), "steps": 2,
        "knn_every": 0, "tensorboard": False, "progress": False, "proj_hidden": 16,
        "pred_hidden": 16, "proj_dim": 8, **run,
    }  # fmt: skip
    if init_from is not None:
        values["init_from"] = str(init_from)
    cfg, params = build_config(values, get_method("byol").Params)
    return Trainer(cfg, params)


def _assert_backbone_is(trainer: Trainer, weights: dict[str, torch.Tensor]) -> None:
    own = trainer.method.backbone.state_dict()
    assert own.keys() == weights.keys()
    for k, v in weights.items():
        torch.testing.assert_close(own[k], v, rtol=0, atol=0, msg=k)


def test_a_safetensors_file_initialises_the_backbone(tmp_path: Path) -> None:
    weights = _source()
    save_file(weights, str(tmp_path / "w.safetensors"))
    trainer = _trainer(tmp_path, tmp_path / "w.safetensors")
    _assert_backbone_is(trainer, weights)
    fresh = _trainer(tmp_path / "fresh", None)  # the same seed, no init_from
    # only the backbone came from the file: the heads are the run's own fresh ones
    torch.testing.assert_close(trainer.method.projector[0].weight, fresh.method.projector[0].weight)
    assert not torch.equal(
        trainer.method.backbone.body[0].weight, fresh.method.backbone.body[0].weight
    )
    trainer.fit()  # and it fine-tunes from there
    assert not torch.equal(trainer.method.backbone.body[0].weight, weights["body.0.weight"])


def test_a_nested_torch_checkpoint_with_ddp_prefixes_loads(tmp_path: Path) -> None:
    weights = _source()
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}}, tmp_path / "c.pt")
    _assert_backbone_is(_trainer(tmp_path, tmp_path / "c.pt"), weights)


def test_an_export_directory_initialises_the_backbone(tmp_path: Path) -> None:
    weights = _source()
    meta = ExportMeta(
        family="trained",
        architecture={"name": "tiny"},
        preprocess=Preprocess(size=16).to_dict(),
        embed_dim=128,
        capabilities=["image"],
        method="byol",
    )
    export = write_export(
        tmp_path / "export", {f"image.backbone.{k}": v for k, v in weights.items()}, meta
    )
    _assert_backbone_is(_trainer(tmp_path, export), weights)


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    other, _ = build_backbone(BackboneSpec("resnet18", True, 32))
    save_file(dict(other.state_dict()), str(tmp_path / "r.safetensors"))
    net, _ = build_backbone(BackboneSpec("tiny", False, 16))
    with pytest.raises(ValueError, match=r"none of its \d+ tensors fit this backbone"):
        load_backbone(net, tmp_path / "r.safetensors")
    bad = {k: v[:1] if v.dim() else v for k, v in _source().items()}
    save_file(bad, str(tmp_path / "b.safetensors"))
    with pytest.raises(ValueError, match="shapes differ"):
        load_backbone(net, tmp_path / "b.safetensors")


class _Code:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("this must never run",))


def test_a_checkpoint_with_code_in_it_is_never_unpickled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"state_dict": _Code()}))
    net, _ = build_backbone(BackboneSpec("tiny", False, 16))
    with pytest.raises(ValueError, match="not a readable weights file"):
        load_backbone(net, path)
    assert "this must never run" not in capsys.readouterr().out
    with pytest.raises(ValueError, match="no such file"):
        load_backbone(net, tmp_path / "missing.pt")


@pytest.mark.parametrize(
    "content",
    [b"garbage, not a safetensors file at all", b'\x08\x00\x00\x00\x00\x00\x00\x00{"a":', b""],
    ids=["garbage", "cut-header", "empty"],
)
def test_a_malformed_safetensors_file_is_refused_with_one_line(
    tmp_path: Path, content: bytes
) -> None:
    """ValueError, which the train command answers with exit 2 and one line (no traceback),
    as it does for the torch formats."""
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    net, _ = build_backbone(BackboneSpec("tiny", False, 16))
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_backbone(net, path)
