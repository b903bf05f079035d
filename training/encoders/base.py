"""The one Encoder interface that every model family implements.

Every embedding leaves an encoder L2-normalised, float32, on the CPU, so callers never
care which device or dtype computed it.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from PIL import Image

from contrastkit.training.encoders import preprocess as pp

IMAGE = "image"
TEXT = "text"


class MissingCapabilityError(RuntimeError):
    """The encoder cannot embed this modality (e.g. text with an image-only encoder)."""

    def __init__(self, capability: str, model_id: str) -> None:
        super().__init__(f"model {model_id!r} has no {capability!r} capability")
        self.capability = capability
        self.model_id = model_id


@dataclass(frozen=True)
class Preprocess:
    """How a PIL image becomes the model's input tensor.

    `mean`/`std` apply to pixel values scaled to [0, 1].
    """

    size: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"  # resize the shorter side to `size`, then centre-crop

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(
            size=int(d.get("size", 224)),
            mean=tuple(d.get("mean", cls.mean)),  # type: ignore[arg-type]
            std=tuple(d.get("std", cls.std)),  # type: ignore[arg-type]
            interpolation=str(d.get("interpolation", "bicubic")),
            resize_mode=str(d.get("resize_mode", "shortest")),
        )


@dataclass
class EncoderInfo:
    """What the service reports about an encoder in /v1/models."""

    model_id: str
    embed_dim: int
    capabilities: frozenset[str]
    logit_scale: float
    preprocess: Preprocess
    context_length: int | None = None
    default_templates: tuple[str, ...] = field(default_factory=tuple)


class Encoder(ABC):
    """Embeds images and texts into one L2-normalised space.

    Subclasses set `info` and implement `_image_forward` (and `_text_forward` when they
    have the text capability). Images go through `preprocess_image` (CPU, thread-safe,
    no model state) and then `encode_image_tensors`, so a server can decode and
    preprocess in many threads while the model runs in one.
    """

    info: EncoderInfo
    device: torch.device
    image_chunk_cpu: int = 16
    image_chunk_gpu: int = 512

    # -- properties of the contract -------------------------------------------------
    @property
    def model_id(self) -> str:
        return self.info.model_id

    @property
    def embed_dim(self) -> int:
        return self.info.embed_dim

    @property
    def capabilities(self) -> frozenset[str]:
        return self.info.capabilities

    @property
    def logit_scale(self) -> float:
        return self.info.logit_scale

    # -- images ---------------------------------------------------------------------
    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        """PIL image (any mode) -> uint8 [3, S, S], resized and cropped for the model.

        CPU only and thread-safe; normalisation happens in `encode_image_tensors`.
        """
        return pp.to_pixels(image, self.info.preprocess)

    def encode_image_tensors(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [n, 3, S, S] from `preprocess_image` -> [n, d] unit float32 CPU embeddings.

        Runs in chunks of `image_chunk` images: on a CPU, depthwise-conv networks get
        slower per image past a few images a batch (activations leave the cache).
        """
        self.require(IMAGE)
        outs = []
        with self._grad_mode(), self._autocast():
            for chunk in pixels.split(self._image_chunk()):
                x = pp.normalize(chunk.to(self.device, non_blocking=True), self.info.preprocess)
                outs.append(self._image_forward(x))
        return _normalise(torch.cat(outs))

    def _image_chunk(self) -> int:
        return self.image_chunk_gpu if self.device.type == "cuda" else self.image_chunk_cpu

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """list of PIL images -> [n, d] embeddings."""
        if not images:
            return torch.empty(0, self.embed_dim)
        return self.encode_image_tensors(torch.stack([self.preprocess_image(i) for i in images]))

    # -- texts ----------------------------------------------------------------------
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """list of n strings -> [n, d] embeddings; texts past the context are truncated."""
        self.require(TEXT)
        if not texts:
            return torch.empty(0, self.embed_dim)
        with self._grad_mode(), self._autocast():
            out = self._text_forward(list(texts))
        return _normalise(out)

    def require(self, capability: str) -> None:
        if capability not in self.capabilities:
            raise MissingCapabilityError(capability, self.model_id)

    # -- for subclasses -------------------------------------------------------------
    @abstractmethod
    def _image_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """[n, 3, S, S] on self.device -> [n, d] unnormalised."""

    def _text_forward(self, texts: list[str]) -> torch.Tensor:
        """n strings -> [n, d] unnormalised."""
        raise MissingCapabilityError(TEXT, self.model_id)

    def _grad_mode(self) -> contextlib.AbstractContextManager[Any]:
        # inference_mode is the fastest; an encoder over a live training model overrides
        # it with no_grad, because tensors a model caches under inference_mode (MiniLM's
        # caption bank) cannot be updated in place by the training steps that follow.
        return torch.inference_mode()

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        # bf16 on CUDA roughly doubles throughput; on the CPU fp32 is both exact and fast.
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def _normalise(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return torch.nn.functional.normalize(x, dim=-1).cpu()


def resolve_device(device: str | None) -> torch.device:
    """`None`/"auto" -> CUDA when present, else CPU; anything else is taken as given."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def batched(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
