"""POST /v1/embeddings: OpenAI-compatible embeddings, so OpenAI clients work as is.

Texts as OpenAI sends them; images too, in the shapes other embedding servers accept:
strings with `"modality": "image"` (each a `data:image/...;base64,...` URL or plain
base64), or input objects `{"image": ...}` / `{"text": ...}`, mixed in one request. Texts
may also come as token ids, as OpenAI takes them (contrastkit.service.api.token_ids says how they
are read). The vectors come back in input order; texts and images of one model share its space.
"""

from __future__ import annotations

import base64
from typing import Annotated, cast

import numpy as np
from fastapi import APIRouter, Depends

from contrastkit.service.api.deps import ModelRequest, ModelsDep, SettingsDep, watch_disconnect
from contrastkit.service.api.json_route import OrjsonRoute
from contrastkit.service.api.payload import require_json_dep
from contrastkit.service.api.request_checks import bad, check_count, check_image_count, check_text
from contrastkit.service.api.token_ids import (
    check_token_arrays,
    decode_token_arrays,
    encoding_name,
    token_arrays,
)
from contrastkit.service.responses import FastJSON, finite_output
from contrastkit.service.runtime.served import LoadedModel
from contrastkit.service.schemas.embeddings import (
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    OpenAIImageInput,
    OpenAITextInput,
)
from contrastkit.service.settings import Settings
from contrastkit.training.encoders import IMAGE, TEXT

router = APIRouter(
    prefix="/v1",
    tags=["openai"],
    dependencies=[Depends(watch_disconnect)],
    route_class=OrjsonRoute,
)
Inputs = list[tuple[str, str]]  # (TEXT or IMAGE, the text or the image's base64)
Sent = tuple[OpenAIEmbeddingRequest, Inputs]  # the body, and its inputs checked


async def to_embed(
    body: OpenAIEmbeddingRequest, models: ModelsDep, settings: SettingsDep
) -> ModelRequest[Sent]:
    """The JSON body (its schema is the route's) with its inputs checked, then the model
    it names, with a tower for each kind of input (a mixed request needs both).

    Token ids are decoded after the model is found: a request for a model that is not
    here is answered 404 whatever its ids."""
    arrays = token_arrays(body.input)
    if arrays is None:
        inputs = _inputs(body, settings)
        kinds = dict.fromkeys(kind for kind, _ in inputs)
        return ModelRequest((body, inputs), models.resolve(body.model, *kinds))
    check_token_arrays(arrays, settings)
    model = models.resolve(body.model, TEXT)
    if body.modality == "image":
        raise bad("invalid_request", "token ids are text: send them without modality 'image'")
    encoding = encoding_name(body.token_encoding, body.model)
    texts = await decode_token_arrays(arrays, encoding, settings)
    return ModelRequest((body, [(TEXT, t) for t in texts]), model)


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
    arrays = token_arrays(body.input)
    if arrays is not None:  # the ids sent: what OpenAI counts
        tokens = sum(len(ids) for _, ids in arrays)
    else:  # approximated by whitespace words of the texts: informational here
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
    # Token ids never come here: to_embed takes them apart first.
    raw = cast(
        list[str | OpenAITextInput | OpenAIImageInput],
        [body.input] if isinstance(body.input, str) else body.input,
    )
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
