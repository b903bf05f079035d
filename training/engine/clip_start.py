"""Start a CLIP run from a whole pretrained image-text model (`--init-from open_clip:...`):
which model (contrastkit.training.encoders.pretrained_clip), and what it fixes in the run's config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from contrastkit.training.encoders.pretrained_clip import (
    StartModel,
    is_clip_start,
    load_start,
    rebuild_start,
)

if TYPE_CHECKING:
    from contrastkit.training.config import TrainConfig
    from contrastkit.training.engine.checkpoint import Checkpoint


def start_model(cfg: TrainConfig, resume: Checkpoint | None = None) -> StartModel | None:
    """The pretrained model a run fine-tunes, or None when `cfg.init_from` names none.

    A fresh run loads `cfg.init_from`; a resumed one rebuilds the architecture its
    checkpoint recorded (the checkpoint's weights follow). The model's input side is
    written into cfg.image_size (ValueError when the run asked for another), and its
    name into cfg.backbone, so the saved config says what was trained."""
    if not is_clip_start(cfg.init_from):
        return None
    assert cfg.init_from is not None
    if cfg.method != "clip":
        raise ValueError(f"--init-from {cfg.init_from} is a whole image-text model: it starts "
                         "a --method clip run (an image-only method takes backbone weights: "
                         "an export directory or a weights file)")  # fmt: skip
    if resume is None:
        start = load_start(cfg.init_from)
    elif resume.start is None:
        raise ValueError("the checkpoint does not record the pretrained model it fine-tunes")
    else:
        start = rebuild_start(resume.start)
    size = start.preprocess.size
    if cfg.image_size not in (None, size):
        raise ValueError(f"image_size {cfg.image_size}: the pretrained model takes {size} px "
                         "images; leave image_size unset")  # fmt: skip
    cfg.image_size = size
    cfg.backbone = f"open_clip:{start.description.get('name') or 'model'}"
    return start
