"""Request and response models of the embedding endpoints: /v1/embed/*, /v1/classify,
/v1/embeddings (OpenAI's shape) and /v1/models (they also make the OpenAPI docs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="optional; must name the loaded model if given")


class EmbedTextRequest(_Request):
    texts: list[str] = Field(..., description="texts to embed; longer than the context: truncated")


class EmbedImageRequest(_Request):
    images: list[str] = Field(
        ..., description="base64 image files (or data: URLs); never http URLs"
    )


class ClassifyRequest(_Request):
    images: list[str] = Field(..., description="base64 image files (or data: URLs)")
    labels: list[str] = Field(..., description="class names, e.g. ['cat', 'dog']")
    templates: list[str] | None = Field(
        None, description="prompt templates with '{}' for the label; default: the model's set"
    )
    top_k: int | None = Field(None, ge=1, description="keep only the k best labels per image")


class EmbeddingResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]] = Field(..., description="[n, dim], L2-normalised")


class LabelScore(BaseModel):
    label: str
    probability: float = Field(..., description="softmax over logit_scale * cosine")
    score: float = Field(..., description="cosine similarity of image and label embedding")


class ImageResult(BaseModel):
    index: int
    ranking: list[LabelScore]


class ClassifyResponse(BaseModel):
    model: str
    templates: list[str]
    results: list[ImageResult]


class OpenAITextInput(BaseModel):
    """One input as an object: a text."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(..., min_length=1, pattern=r"\S")


class OpenAIImageInput(BaseModel):
    """One input as an object: an image (a `data:` URL or base64; URLs are refused)."""

    model_config = ConfigDict(extra="forbid")
    image: str = Field(..., min_length=1)


OpenAIInputItem = OpenAITextInput | OpenAIImageInput


class OpenAIEmbeddingRequest(BaseModel):
    """OpenAI's /v1/embeddings request; images too. `input` holds strings, which are texts
    (or images with `modality: "image"`), or objects {"text": ...} / {"image": ...}."""

    model: str
    input: str | list[str | OpenAITextInput | OpenAIImageInput]
    modality: Literal["text", "image"] = Field(
        "text", description="what the strings in `input` are (objects say it themselves)"
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str = "contrastive"
    reference: str = Field(..., description="the --model reference it was loaded from")
    alias: str | None = Field(None, description="its alias, given by the admin API")
    dim: int
    capabilities: list[str]
    logit_scale: float
    context_length: int | None
    default_templates: list[str]
    preprocessing: dict[str, Any]
    device: str
    default: bool = Field(..., description="the model a request that names none gets")
    memory_bytes: int | None = Field(None, description="its parameters and buffers")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
