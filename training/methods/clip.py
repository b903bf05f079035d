"""CLIP (Radford et al. 2021): an image tower and a text tower trained so that matching
image-caption pairs have the highest cosine similarity in the (global) batch.

Image tower: backbone + Linear(feat_dim, embed_dim). Text tower (encoders/nets/text_towers.py):
- "minilm" (default): the packaged all-MiniLM-L6-v2, locked (LiT: lock the text side, tune
  the image side; a pretrained text space makes small image sets useful), or trained with
  `lock_text=false`;
- "transformer": open_clip's text transformer, trained from scratch (lock_text is ignored).

Loss: symmetric cross-entropy over image-text logits scaled by a learnable temperature,
exp(logit_scale) capped at max_logit_scale (100, as CLIP) - in the forward and on the
parameter after each step. Negatives come from every rank, with gradients (losses.clip_loss).
`loss=siglip`: SigLIP's pairwise sigmoid loss instead (losses.siglip_loss), with a learnable
bias as well (init -10) and the temperature started at 10 (the paper's t' = log 10) unless
init_logit_scale is set to something else than CLIP's 1/0.07.

Captions: the data's own (pairs data), else "<template>.format(class name)" for labelled data,
with the template chosen by a hash of (dataset index, step): deterministic, so a resumed run
sees the same captions, and different for the same image in different epochs.

Multi-positive targets (`multi_positive`, on by default): class-name captions repeat within
a batch (256 images of 10 classes: ~25 per class, 3-4 copies of each of the 7 template
captions), and the plain losses call every copy but a row's own a negative, pushing
same-class captions (identical ones too) apart. Instead every pair of the global batch
whose images share a label is a positive (labelled data), or, for real captions, every
pair whose prepared captions are identical (equal token-id rows, or equal frozen
embeddings): SigLIP labels those pairs +1, the softmax loss spreads each row's target
uniformly over its positives (losses.clip_loss). With no repeats both equal the plain
losses. `multi_positive=false` restores the plain, one-positive-per-row losses.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.training.augment import ViewSpec
from contrastkit.training.encoders.templates import DEFAULT_TEMPLATES, SINGLE_TEMPLATE
from contrastkit.training.losses import clip_loss, siglip_loss
from contrastkit.training.methods import register
from contrastkit.training.methods.base import (
    ExportParts,
    Method,
    MethodContext,
    MethodParams,
    StepOutput,
    Views,
)

if TYPE_CHECKING:
    from contrastkit.training.augment import Augmenter
    from contrastkit.training.config import TrainConfig
    from contrastkit.training.data import Batch
    from contrastkit.training.encoders.nets.text_towers import TextTower
    from contrastkit.training.encoders.pretrained_clip import StartModel

TEMPLATE_SETS = {"default": DEFAULT_TEMPLATES, "single": SINGLE_TEMPLATE}
LOSSES = ("clip", "siglip")
CLIP_INIT_SCALE = 1 / 0.07  # CLIP's temperature 0.07
SIGLIP_INIT_SCALE = 10.0  # SigLIP's t' = log 10


@dataclass
class CLIPParams(MethodParams):
    """CLIP's hyper-parameters (`--set key=value`); SOURCES says where each is from."""

    embed_dim: int = 0  # 0: the text tower's width (384 for minilm: LiT without projection)
    text_tower: str = "minilm"  # minilm | transformer
    text_width: int = 256  # transformer tower only
    text_layers: int = 4
    text_heads: int = 4
    context_length: int = 32  # transformer tower; minilm keeps its own 256-token limit
    # frozen text tower; None: locked for minilm (LiT), trained for the transformer tower
    # and for a pretrained model's own tower (--init-from open_clip:...)
    lock_text: bool | None = None
    lock_image: bool = False  # frozen image tower (LiT); its new projection still trains
    image_unlocked_groups: int = 0  # pretrained model, lock_image: last N groups train
    text_unlocked_layers: int = 0  # pretrained model, lock_text: last N blocks train
    layer_decay: float = 1.0  # pretrained towers: lr x layer_decay^(blocks above)
    logit_lr_scale: float = 1.0  # lr multiplier of the temperature (and SigLIP's bias)
    loss: str = "clip"  # clip (softmax InfoNCE) | siglip (pairwise sigmoid)
    init_logit_scale: float = CLIP_INIT_SCALE
    max_logit_scale: float = 100.0
    init_logit_bias: float = -10.0  # siglip only (the paper's b)
    templates: str = "default"  # captions for labelled data: default (7) | single
    min_crop_scale: float = 0.5  # image view: random resized crop scale (min, 1)
    head_norm: str = "batch"  # unused: the image projection is linear, as in CLIP
    # pairs with the same label / the same caption are positives (see the module docstring)
    multi_positive: bool = True

    SOURCES: ClassVar[dict[str, str]] = {
        "embed_dim": "paper: LiT (Zhai et al. 2022): 0 = the locked text tower's width",
        "text_tower": "paper: LiT (a pretrained text tower; here all-MiniLM-L6-v2, packaged)",
        "text_width": "engineering: a small tower for small data (CLIP: 512)",
        "text_layers": "engineering: a small tower for small data (CLIP: 12)",
        "text_heads": "engineering: a small tower for small data (CLIP: 8)",
        "context_length": "engineering: enough for template captions (CLIP: 77)",
        "lock_text": "paper: LiT (lock the pretrained text tower, tune the image side); "
        "a pretrained open_clip model trains both towers, as open_clip's fine-tuning",
        "lock_image": "engineering: off (LiT, Zhai et al. 2022, locks it; open_clip: --lock-image)",
        "image_unlocked_groups": "open_clip: --lock-image-unlocked-groups (0: all locked)",
        "text_unlocked_layers": "open_clip: --lock-text-unlocked-layers (0: all locked)",
        "layer_decay": "engineering: off (1.0); BEiT/ELECTRA-style layer-wise lr decay, "
        "0.65-0.75 is common when fine-tuning ViTs",
        "logit_lr_scale": "engineering: 1.0 (the temperature learns at the model's lr)",
        "loss": "paper: Radford et al. 2021 (CLIP, symmetric softmax cross-entropy)",
        "init_logit_scale": "paper: CLIP (temperature 0.07, scale 1/0.07)",
        "max_logit_scale": "paper: CLIP (logit scale clipped at 100)",
        "init_logit_bias": "paper: Zhai et al. 2023 (SigLIP, b = -10)",
        "templates": "paper: CLIP's 7-template ImageNet ensemble (open_clip's 'simple' set)",
        "min_crop_scale": "engineering: a milder crop than SimCLR's 0.08 (CLIP: square crop)",
        "multi_positive": (
            "engineering: same-caption / same-label pairs as positives, in the spirit of "
            "UniCL's (Yang et al. 2022) and SupCon's (Khosla et al. 2020) multi-positive "
            "targets; not in the CLIP or SigLIP papers"
        ),
        "head_norm": "unused (CLIP's image projection is linear)",
    }


def _check(p: CLIPParams) -> None:
    checks = [
        (p.embed_dim >= 0, "embed_dim must be >= 0"),
        (min(p.text_width, p.text_layers, p.text_heads) >= 1, "text tower sizes must be >= 1"),
        (p.context_length >= 2, "context_length must be >= 2"),
        (1 <= p.init_logit_scale <= p.max_logit_scale, "need 1 <= init_logit_scale <= max"),
        (p.templates in TEMPLATE_SETS, f"templates must be one of {sorted(TEMPLATE_SETS)}"),
        (p.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}, got {p.loss!r}"),
        (0 < p.min_crop_scale <= 1, "min_crop_scale must be in (0, 1]"),
        (0 < p.layer_decay <= 1, "layer_decay must be in (0, 1]"),
        (p.logit_lr_scale >= 0, "logit_lr_scale must be >= 0"),
        (min(p.image_unlocked_groups, p.text_unlocked_layers) >= 0, "unlocked counts >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"clip: {message}")


def clip_view(size: int, min_scale: float = 0.5) -> ViewSpec:
    """CLIP's image view: a milder random resized crop and a flip, no colour changes
    (colour is often named in captions; CLIP itself used only a random square crop)."""
    return ViewSpec(size, scale=(min_scale, 1.0), jitter_p=0.0, gray_p=0.0)


def template_index(index: torch.Tensor, step: int, n_templates: int) -> torch.Tensor:
    """int64 [B] dataset indices -> int64 [B] template choices in [0, n_templates).

    A fixed integer hash of (index, step), computed where `index` lives (no host sync).
    """
    h = index.long() * 0x9E3779B1 + (step + 1) * 0x85EBCA6B
    h = h ^ (h >> 15)
    return h.remainder(n_templates)


# Two primes below 2^31: an element reduced modulo one (< 2^31) times a weight (< 2^31)
# is < 2^62, and sums of up to 2^31 such residues fit int64, so nothing overflows.
_HASH_PRIMES = (2_147_483_647, 2_147_483_629)
_HASH_CHUNK = 4096  # weights are drawn per chunk of positions, each from its own seed
_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_hash_weights: dict[tuple[int, str, str], torch.Tensor] = {}


def _weights(prime: int, name: str, n: int, device: torch.device) -> torch.Tensor:
    """int64 [n] random weights in [1, prime) for element positions 0..n-1 of `name`.

    Weight k depends only on (prime, name, k), not on n: captions padded to different
    lengths (a trained MiniLM pads to each batch's longest) hash alike, since padding
    elements are zero, and every rank and step uses the same weights.
    """
    cache_key = (prime, name, str(device))
    have = _hash_weights.get(cache_key, torch.empty(0, dtype=torch.int64, device=device))
    if have.numel() >= n:
        return have[:n]
    chunks = [have]
    seed = prime * 1_000_003 + zlib.crc32(name.encode()) * 65_537  # stable across processes
    for c in range(have.numel() // _HASH_CHUNK, -(-n // _HASH_CHUNK)):
        g = torch.Generator().manual_seed(seed + c)
        chunks.append(torch.randint(1, prime, (_HASH_CHUNK,), generator=g).to(device))
    table = torch.cat(chunks)
    _hash_weights[cache_key] = table
    return table[:n]


def _row_ints(x: torch.Tensor) -> torch.Tensor:
    """[B, ...] -> int64 [B, F]: integer elements as they are, float elements as their
    bit patterns (so equal means bitwise equal, as cached embeddings of one caption are)."""
    if x.is_floating_point() or x.dtype == torch.bool:
        x = x.contiguous().view(_INT_OF_SIZE[x.element_size()])
    return x.reshape(x.shape[0], -1).long()


def caption_keys(texts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Prepared captions ({name: [B, ...]}, see TextTower.prepare) -> int64 [B] keys.

    Rows with identical contents in every tensor get equal keys. A key is two random
    linear hashes of the rows' elements, modulo two primes near 2^31: two rows that
    differ collide with probability about 2^-62 (token ids and float32 bit patterns are
    < 2^32 apart, so no difference vanishes modulo both primes). Order of the dict does
    not matter. Runs where the captions are, with no host sync.
    """
    if not texts:
        raise ValueError("no prepared caption tensors")
    key: torch.Tensor | None = None
    for prime in _HASH_PRIMES:
        h: torch.Tensor | int = 0
        for name, x in texts.items():
            rows = _row_ints(x) % prime  # [B, F], residues in [0, prime)
            w = _weights(prime, name, rows.shape[1], x.device)
            h = h + (rows * w % prime).sum(dim=1)
        assert isinstance(h, torch.Tensor)
        h = h % prime  # [B], < 2^31
        key = h if key is None else key * prime + h  # < 2^62
    assert key is not None
    return key


@register
class CLIP(Method[CLIPParams]):
    name = "clip"
    Params = CLIPParams
    # AdamW as CLIP; 5e-4 per 256 images (CLIP's own 5e-4 was for batch 32k, but with
    # the linear rule that is far too small for the batches of 256-1024 used here)
    default_lr = 5e-4
    default_weight_decay = 0.2  # CLIP / open_clip
    default_optimizer = "adamw"
    DEFAULT_SOURCES: ClassVar[dict[str, str]] = {
        "optimizer": "paper: CLIP (Radford et al. 2021, sec. 2.5: AdamW, beta2 0.98, eps 1e-6)"
        "; SigLIP's paper also trains with AdamW",
        "lr": "paper: CLIP's 5e-4, read per 256 images (CLIP's is for batch 32768, far too "
        "small for batches of 256-1024 under the linear rule); SigLIP's paper: 1e-3",
        "weight_decay": "paper: CLIP (0.2, decoupled; open_clip's default); SigLIP's: 1e-4",
    }
    needs_text = True
    # Fine-tuning a pretrained model (--init-from open_clip:...): WiSE-FT's end-to-end
    # recipe (Wortsman et al. 2022: AdamW, lr 3e-5 at batch 512, weight decay 0.1)
    FINETUNE = ("adamw", 1.5e-5, 0.1)
    FINETUNE_SOURCES: ClassVar[dict[str, str]] = {
        "optimizer": "paper: WiSE-FT (Wortsman et al. 2022) fine-tunes CLIP with AdamW",
        "lr": "paper: WiSE-FT's 3e-5 at batch 512, i.e. 1.5e-5 per 256 images",
        "weight_decay": "paper: WiSE-FT (0.1)",
    }

    @classmethod
    def optimizer_defaults(
        cls, cfg: TrainConfig
    ) -> tuple[tuple[str, float, float], dict[str, str]]:
        """From scratch: CLIP's recipe; from a pretrained model: WiSE-FT's fine-tuning."""
        from contrastkit.training.encoders.pretrained_clip import is_clip_start

        if is_clip_start(cfg.init_from):
            return cls.FINETUNE, dict(cls.FINETUNE_SOURCES)
        return super().optimizer_defaults(cfg)

    def __init__(
        self, backbone: nn.Module, feat_dim: int, params: CLIPParams, ctx: MethodContext
    ) -> None:
        _check(params)
        super().__init__(backbone, feat_dim, params, ctx)
        p = params
        self.image_proj: nn.Module
        self.start: StartModel | None = None
        if ctx.start is not None:
            self._adopt(ctx.start)
        else:
            self._build_fresh(feat_dim)
        if p.lock_image and ctx.start is None:
            self.backbone.requires_grad_(False)
        self.templates = TEMPLATE_SETS[p.templates]
        self.view = clip_view(ctx.image_size, p.min_crop_scale)
        self.steps_done = 0  # host counter for the caption choice (in get_extra_state)
        # all (class, template) captions, prepared once on the device: labelled batches
        # then need no host work at all (row = label * n_templates + template)
        self._caption_table: dict[str, torch.Tensor] | None = None

    def _build_fresh(self, feat_dim: int) -> None:
        """Towers trained from scratch (or from backbone weights): our text tower, a new
        linear image projection, a new temperature (and SigLIP bias)."""
        # imported here: MiniLM's tokenizer stack costs ~2 s, which listing methods
        # (`contrastive train --help`) should not pay
        from contrastkit.training.encoders.nets.text_towers import build_text_tower

        p = self.params
        self.text: TextTower = build_text_tower(
            p.text_tower,
            p.embed_dim,
            lock=p.lock_text is not False,  # None: minilm's default, locked
            width=p.text_width,
            layers=p.text_layers,
            heads=p.text_heads,
            context_length=p.context_length,
        )
        self.embed_dim = self.text.out_dim
        self.image_proj = nn.Linear(feat_dim, self.embed_dim, bias=False)
        init = p.init_logit_scale
        if p.loss == "siglip" and init == CLIP_INIT_SCALE:  # not set: the paper's start
            init = SIGLIP_INIT_SCALE
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init)))
        # SigLIP's bias; absent (None) for the softmax loss, so CLIP checkpoints keep their keys
        self.logit_bias = (
            nn.Parameter(torch.tensor(p.init_logit_bias)) if p.loss == "siglip" else None
        )

    def _adopt(self, start: StartModel) -> None:
        """Fine-tune a whole pretrained open_clip model: its image tower is the backbone
        (projection included), its text modules the text tower, its temperature and bias
        ours - the same parameters, so the model itself is what trains."""
        from contrastkit.training.encoders.nets.text_towers import OpenCLIPTextTower

        p, model = self.params, start.model
        self.embed_dim = start.embed_dim
        self.image_proj = nn.Identity()  # open_clip's image tower ends in its projection
        self.text = OpenCLIPTextTower(model, start.tokenizer, self.embed_dim,
                                      start.context_length)  # fmt: skip
        self.logit_scale = model.logit_scale  # type: ignore[assignment]
        bias = getattr(model, "logit_bias", None)
        if p.loss == "siglip" and bias is None:  # a CLIP model fine-tuned with SigLIP's loss
            bias = nn.Parameter(torch.tensor(p.init_logit_bias))
            model.logit_bias = bias  # the exported model then carries it
            start.description["model_cfg"]["init_logit_bias"] = p.init_logit_bias
        # a SigLIP model fine-tuned with the softmax loss keeps its (unused) bias
        self.logit_bias = bias if p.loss == "siglip" else None
        self.start = start
        if p.lock_image:
            model.lock_image_tower(unlocked_groups=p.image_unlocked_groups,  # type: ignore[operator]
                                   freeze_bn_stats=True)  # fmt: skip
        if p.lock_text:
            model.lock_text_tower(unlocked_layers=p.text_unlocked_layers)  # type: ignore[operator]

    def lr_scales(self) -> dict[str, float]:
        """Layer-wise lr decay over a pretrained model's towers (`layer_decay`) and the
        temperature's own multiplier (`logit_lr_scale`); names as named_parameters()."""
        from contrastkit.training.methods.layer_decay import count_blocks, layer_decay_scales

        p = self.params
        names = [n for n, _ in self.named_parameters()]
        scales: dict[str, float] = {}
        if p.layer_decay != 1.0 and self.ctx.start is not None:
            towers = {"backbone.": count_blocks(self.backbone), "text.": count_blocks(self.text)}
            scales = layer_decay_scales(names, towers, p.layer_decay)
        if p.logit_lr_scale != 1.0:
            scales |= {n: p.logit_lr_scale for n in ("logit_scale", "logit_bias") if n in names}
        return scales

    # -- towers (public: evaluation and export use them) -----------------------------------
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised float images [n, 3, h, w] -> [n, embed_dim] (not normalised)."""
        out: torch.Tensor = self.image_proj(self.backbone(images))
        return out

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """n captions -> [n, embed_dim] (not normalised)."""
        return self.text(self.text.prepare(texts, self.logit_scale.device))  # type: ignore[no-any-return]

    # -- views ---------------------------------------------------------------------------
    def make_views(self, batch: Batch, augment: Augmenter) -> Views:
        """One image view [B,3,S,S] + the prepared captions (see TextTower.prepare)."""
        image = augment(batch.images, self.view)
        if batch.texts is not None:
            texts = self.text.prepare(batch.texts, image.device)
        else:
            rows = self._caption_rows(batch)
            table = self._table(image.device)
            texts = {k: v[rows] for k, v in table.items()}
        # labels name the captions' classes: same label, interchangeable captions
        groups = batch.labels if batch.texts is None and self.params.multi_positive else None
        return Views(crops=[image], n_global=1, texts=texts, caption_groups=groups)

    def captions(self, batch: Batch) -> list[str]:
        """The captions `make_views` uses for a batch (host strings; for logs and tests)."""
        if batch.texts is not None:
            return list(batch.texts)
        rows = self._caption_rows(batch).tolist()
        return [self._all_captions()[r] for r in rows]

    def _caption_rows(self, batch: Batch) -> torch.Tensor:
        if batch.labels is None or self.ctx.classes is None:
            raise ValueError(
                "clip needs captions: use image-caption pairs (pairs:FILE) or a labelled "
                "data set, whose class names become captions"
            )
        t = template_index(batch.index, self.steps_done, len(self.templates))
        return batch.labels.long() * len(self.templates) + t

    def _all_captions(self) -> list[str]:
        """Row label * n_templates + t -> templates[t] with the class name filled in."""
        assert self.ctx.classes is not None
        names = [c.replace("_", " ") for c in self.ctx.classes]
        return [t.format(name) for name in names for t in self.templates]

    def _table(self, device: torch.device) -> dict[str, torch.Tensor]:
        table = self._caption_table
        if table is None or next(iter(table.values())).device != device:
            table = self.text.prepare(self._all_captions(), device)
            self._caption_table = table
        return table

    # -- loss ------------------------------------------------------------------------------
    def scale(self) -> torch.Tensor:
        """The logit multiplier exp(logit_scale), capped at max_logit_scale (scalar)."""
        return self.logit_scale.exp().clamp(max=self.params.max_logit_scale)

    def loss(self, views: Views) -> StepOutput:
        if views.texts is None:
            raise ValueError("clip: views carry no captions")
        image = self.encode_image(views.crops[0])
        text: torch.Tensor = self.text(views.texts)
        scale = self.scale()
        groups = self.positive_groups(views)
        if self.logit_bias is not None:
            loss = siglip_loss(image, text, scale, self.logit_bias, groups)
        else:
            loss = clip_loss(image, text, scale, groups)
        with torch.no_grad():
            pos = F.cosine_similarity(image.float(), text.float(), dim=1).mean()
        return StepOutput(loss, {"logit_scale": scale.detach(), "pos_sim": pos})

    def positive_groups(self, views: Views) -> torch.Tensor | None:
        """int64 [B] ids for the loss's multi-positive targets (equal ids: positive pair),
        or None when multi_positive is off (plain one-positive losses).

        Labelled data: the labels (make_views puts them in `caption_groups`). Real
        captions: a hash of each prepared caption row (`caption_keys`), so identical
        captions get one id, the same on every rank.
        """
        if not self.params.multi_positive:
            return None
        if views.caption_groups is not None:
            return views.caption_groups
        assert views.texts is not None
        return caption_keys(views.texts)

    # -- hooks -----------------------------------------------------------------------------
    def on_after_step(self, step: int) -> None:
        """Clamp the parameter too (as open_clip), so it cannot drift far past the cap
        where its gradient is zero; `step` is the 0-based index of the step just taken."""
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, math.log(self.params.max_logit_scale))
        self.steps_done = step + 1

    def no_weight_decay(self) -> set[str]:
        """The temperature (and SigLIP's bias) and the text transformer's position
        embedding (as open_clip)."""
        names = {"logit_scale", "logit_bias"}
        return names | {n for n, _ in self.named_parameters() if n.endswith("positional_embedding")}

    def export_parts(self) -> ExportParts:
        """Both towers: the image embedding is image_proj(backbone(x)); the logit
        multiplier as training capped it, and the templates it trained with."""
        return ExportParts(
            backbone=self.backbone,
            head=self.image_proj,
            text=self.text,
            logit_scale=float(self.scale().detach()),
            templates=tuple(self.templates),
            prefixes=("backbone.", "image_proj.", "text.", "logit_scale"),
        )

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor([self.steps_done], dtype=torch.int64)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.steps_done = int(state[0])
