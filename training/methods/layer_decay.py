"""Layer-wise lr decay (LLRD) over open_clip transformer towers, as lr multipliers.

Fine-tuning a pretrained tower, the blocks near the input hold the most general features
and should move least: with L residual blocks, a parameter's layer id is 0 for the stem
(embeddings, conv1, ln_pre), i + 1 for block i and L + 1 for what follows the blocks
(ln_post, proj, ln_final, text_projection), and its multiplier on the scheduled lr is
decay ** (L + 1 - layer_id), as in BEiT / ELECTRA fine-tuning. The result is what a
method's `lr_scales()` returns (see contrastkit.training.engine.optim.param_groups).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from torch import nn

# Parameters of an open_clip VisionTransformer / TextTransformer that come before the
# blocks. By name, not by position: named_parameters() lists a module's own parameters
# first, so open_clip's `proj` and `text_projection` (after the blocks) come out before
# `conv1` and the blocks. Anything else outside the blocks counts as after them: a head
# this list does not know gets the full lr, as BEiT's rule does for unknown names.
STEM_NAMES = frozenset(
    {
        "conv1",
        "class_embedding",
        "positional_embedding",
        "ln_pre",
        "token_embedding",
        "cls_emb",
    }
)

_BLOCK = re.compile(r"(?:^|\.)resblocks\.(\d+)(?:\.|$)")


def layer_decay_scales(
    names: Iterable[str], towers: Mapping[str, int], decay: float
) -> dict[str, float]:
    """{name: decay ** (L + 1 - layer_id)} for the names under a prefix of `towers`.

    towers: {name prefix: the tower's number of residual blocks L}, e.g. {"backbone.": 12,
        "text.model.": 12}; a name under several prefixes belongs to the longest (so ""
        may stand for a CLIP model's text tower beside "visual."). Names under no prefix
        are left out: they train at the full lr.
    decay: in (0, 1]; 1.0 gives every name 1.0.
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"layer decay must be in (0, 1], got {decay}")
    by_length = sorted(towers.items(), key=lambda item: len(item[0]), reverse=True)
    scales: dict[str, float] = {}
    for name in names:
        prefix = next((p for p, _ in by_length if name.startswith(p)), None)
        if prefix is None:
            continue
        blocks = towers[prefix]
        scales[name] = decay ** (blocks + 1 - layer_id(name[len(prefix) :], blocks))
    return scales


def layer_id(rest: str, blocks: int) -> int:
    """The layer id of a parameter named `rest` within a tower of `blocks` residual
    blocks: 0 for the stem, i + 1 for `...resblocks.{i}.`, blocks + 1 after the blocks."""
    match = _BLOCK.search(rest)
    if match is not None:
        index = int(match.group(1))
        if index >= blocks:
            raise ValueError(f"{rest!r} is in block {index} of a tower of {blocks} blocks")
        return index + 1
    return 0 if rest.split(".", 1)[0] in STEM_NAMES else blocks + 1


def count_blocks(module: nn.Module) -> int:
    """The number of residual blocks of an open_clip tower: `.transformer.resblocks` of a
    VisionTransformer, a TextTransformer or a CLIP model (its text tower), or the
    `.resblocks` of a bare open_clip Transformer."""
    inner = getattr(module, "transformer", module)
    blocks = getattr(inner, "resblocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"{type(module).__name__} has no transformer.resblocks to count")
    return len(blocks)
