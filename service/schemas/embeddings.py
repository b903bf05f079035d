"""Request and response models of the embedding endpoints: /v1/embed/*, /v1/classify,
/v1/embeddings (OpenAI's shape) and /v1/models (they also make the OpenAPI docs)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    Strict,
    WithJsonSchema,
)


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


def integral(value: Any) -> Any:
    """7.0 -> 7: JSON Schema counts a number with a zero fraction as an integer."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# A token id: a JSON integer (strict otherwise: not "7", 7.5 or true). The schema states
# the bound the checks enforce; pydantic does not, so that a bad id gets the checks'
# message (which names the id and its place) rather than one error per branch of `input`.
TokenId = Annotated[
    int,
    Strict(),
    BeforeValidator(integral),
    WithJsonSchema({"type": "integer", "minimum": 0}),
]


class TokenIds(RootModel[list[TokenId]]):
    """One text as token ids, the way OpenAI's API takes it and LangChain's
    OpenAIEmbeddings sends it: ids of a tiktoken encoding (see `token_encoding`), decoded
    to the text they stand for before it is embedded."""

    # Stated, not enforced here: an empty array gets the checks' `empty_text`.
    model_config = ConfigDict(json_schema_extra={"minItems": 1})


# What `input` may be: strings, objects, or OpenAI's token-id arrays (never mixed).
OpenAIInput = str | list[str | OpenAITextInput | OpenAIImageInput] | TokenIds | list[TokenIds]


class OpenAIEmbeddingRequest(BaseModel):
    """OpenAI's /v1/embeddings request; images too. `input` holds strings, which are texts
    (or images with `modality: "image"`), or objects {"text": ...} / {"image": ...}, or
    token ids as OpenAI takes them: one array of ids (one text) or an array of such arrays.
    """

    model: str
    input: OpenAIInput = Field(
        ...,
        description='a text; a list of texts (or of images, with `modality: "image"`) or of '
        '{"text": ...} / {"image": ...} objects; or token ids: one array of ids (one text), '
        "or a list of such arrays",
    )
    modality: Literal["text", "image"] = Field(
        "text", description="what the strings in `input` are (objects say it themselves)"
    )
    token_encoding: str | None = Field(
        None,
        max_length=64,
        description="only read when `input` holds token ids: the tiktoken encoding that "
        "made them. Default: the one tiktoken maps `model` to, else cl100k_base (what "
        "LangChain's OpenAIEmbeddings uses for a model tiktoken does not know, and the "
        "encoding of OpenAI's embedding models). Needs the server's `openai` extra.",
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
    runtime: str = Field(
        "torch",
        description="what runs it: torch, or onnxruntime (runtime=auto moves a CPU model "
        "there once its graphs are traced)",
    )
    default: bool = Field(..., description="the model a request that names none gets")
    memory_bytes: int | None = Field(None, description="its parameters and buffers")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
