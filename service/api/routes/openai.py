"""POST /v1/embeddings: OpenAI-compatible embeddings, so OpenAI clients work as is.

Texts as OpenAI sends them; images too, in the shapes other embedding servers accept:
strings with `"modality": "image"` (each a `data:image/...;base64,...` URL or plain
base64), or input objects `{"image": ...}` / `{"text": ...}`, mixed in one request. The
vectors come back in input order; texts and images of one model share its space.
"""

from __future__ import annotations

import base64
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends

from service.api.deps import ModelRequest, ModelsDep, SettingsDep, watch_disconnect
from service.api.payload import require_json_dep
from service.api.request_checks import bad, check_count, check_image_count, check_text
from service.responses import FastJSON, finite_output
from service.runtime.served import LoadedModel
from service.schemas.embeddings import (
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    OpenAIImageInput,
    OpenAITextInput,
)
from service.settings import Settings
from training.encoders import IMAGE, TEXT

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(watch_disconnect)])
Inputs = list[tuple[str, str]]  # (TEXT or IMAGE, the text or the image's base64)
Sent = tuple[OpenAIEmbeddingRequest, Inputs]  # the body, and its inputs checked


async def to_embed(
    body: OpenAIEmbeddingRequest, models: ModelsDep, settings: SettingsDep
) -> ModelRequest[Sent]:
    """The JSON body (its schema is the route's) with its inputs checked, then the model
    it names, with a tower for each kind of input (a mixed request needs both)."""
    inputs = _inputs(body, settings)
    kinds = dict.fromkeys(kind for kind, _ in inputs)
    return ModelRequest((body, inputs), models.resolve(body.model, *kinds))


ToEmbed = Annotated[ModelRequest[Sent], Depends(to_embed)]


@router.post(
    "/embeddings",
    response_model=OpenAIEmbeddingResponse,
    dependencies=[Depends(require_json_dep)],
    summary="OpenAI-compatible embeddings (texts, and images as data: URLs or base64)",
)
async def embeddings(req: ToEmbed) -> FastJSON:
    (body, inputs), enc = req.sent, req.model.encoder
    if body.dimensions is not None and body.dimensions != enc.embed_dim:
        raise bad(
            "unsupported_dimensions",
            f"this model embeds into {enc.embed_dim} dimensions; "
            f"omit 'dimensions' or send {enc.embed_dim}",
        )
    emb = finite_output(await _embed(req.model, inputs), enc.model_id)
    if body.encoding_format == "base64":
        # OpenAI's base64 form: the little-endian float32 bytes of each vector.
        data = [base64.b64encode(row.astype("<f4").tobytes()).decode() for row in emb]
    else:
        data = list(emb)
    # Approximate token usage by whitespace words of the texts: informational here.
    tokens = sum(len(v.split()) for kind, v in inputs if kind == TEXT)
    return FastJSON(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": d} for i, d in enumerate(data)
            ],
            "model": enc.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def _inputs(body: OpenAIEmbeddingRequest, s: Settings) -> Inputs:
    """The request's inputs as (kind, value), checked: counts, and each text."""
    raw = [body.input] if isinstance(body.input, str) else body.input
    check_count(len(raw), s.max_texts, "input", "'input' is empty: send at least one input")
    strings = IMAGE if body.modality == "image" else TEXT
    inputs: Inputs = []
    for item in raw:
        if isinstance(item, OpenAITextInput):
            inputs.append((TEXT, item.text))
        elif isinstance(item, OpenAIImageInput):
            inputs.append((IMAGE, item.image))
        else:
            inputs.append((strings, item))
    for i, (kind, value) in enumerate(inputs):
        if kind == TEXT:
            check_text(value, s, f"input[{i}]")
    images = sum(kind == IMAGE for kind, _ in inputs)
    if images:
        check_image_count(images, s)
    return inputs


async def _embed(model: LoadedModel, inputs: Inputs) -> np.ndarray:
    """-> float32 [n, dim] in input order: texts in one batch, images in another. Images
    go first: their base64 is decoded in the decode pool after admission, and a bad one
    fails the request before the texts are embedded."""
    out = np.empty((len(inputs), model.encoder.embed_dim), np.float32)
    texts = [i for i, (kind, _) in enumerate(inputs) if kind == TEXT]
    images = [i for i, (kind, _) in enumerate(inputs) if kind == IMAGE]
    if images:
        out[images] = (await model.images([inputs[i][1] for i in images], images)).numpy()
    if texts:
        out[texts] = (await model.texts([inputs[i][1] for i in texts])).numpy()
    return out
