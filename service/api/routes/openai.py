"""POST /v1/embeddings: OpenAI-compatible text embeddings, so OpenAI clients work as is."""

from __future__ import annotations

import base64

import numpy as np
from fastapi import APIRouter, Depends

from service.api.deps import SettingsDep, TextEmbedderDep, TextEncoderDep, require_model
from service.api.payload import require_json_dep
from service.api.validate import bad, check_texts
from service.responses import FastJSON, finite_output
from service.schemas import OpenAIEmbeddingRequest, OpenAIEmbeddingResponse

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post(
    "/embeddings",
    response_model=OpenAIEmbeddingResponse,
    dependencies=[Depends(require_json_dep)],
    summary="OpenAI-compatible embeddings (text)",
)
async def embeddings(
    body: OpenAIEmbeddingRequest, enc: TextEncoderDep, embed: TextEmbedderDep, settings: SettingsDep
) -> FastJSON:
    require_model(enc, settings, body.model)
    texts = check_texts(
        [body.input] if isinstance(body.input, str) else body.input, settings, "input"
    )
    if body.dimensions is not None and body.dimensions != enc.embed_dim:
        raise bad(
            "unsupported_dimensions",
            f"this model embeds into {enc.embed_dim} dimensions; "
            f"omit 'dimensions' or send {enc.embed_dim}",
        )
    emb = finite_output(await embed(texts), enc.model_id).astype(np.float32, copy=False)
    if body.encoding_format == "base64":
        # OpenAI's base64 form: the little-endian float32 bytes of each vector.
        data = [base64.b64encode(row.astype("<f4").tobytes()).decode() for row in emb]
    else:
        data = list(emb)
    # Approximate token usage by whitespace words: the field is informational here.
    tokens = sum(len(t.split()) for t in texts)
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
