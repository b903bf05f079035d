"""POST /v1/embed/text and /v1/embed/image."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from service.api.deps import State
from service.api.payload import (
    first_value,
    images_from_json,
    is_multipart,
    multipart_or_json_body,
    parse_json,
    read_form,
    require_json,
    require_json_dep,
)
from service.api.validate import check_image_count, check_texts
from service.responses import FastJSON
from service.schemas import EmbeddingResponse, EmbedImageRequest, EmbedTextRequest
from training.encoders import IMAGE, TEXT

router = APIRouter(prefix="/v1/embed", tags=["embeddings"])


def _reply(model_id: str, emb: object, dim: int) -> FastJSON:
    return FastJSON({"model": model_id, "dim": dim, "embeddings": emb})


@router.post(
    "/text",
    response_model=EmbeddingResponse,
    dependencies=[Depends(require_json_dep)],
    summary="Embed texts",
)
async def embed_text(body: EmbedTextRequest, state: State) -> FastJSON:
    enc = state.require_encoder(body.model, TEXT)
    texts = check_texts(body.texts, state.settings)
    emb = await state.embed_texts(texts)
    return _reply(enc.model_id, emb.numpy(), enc.embed_dim)


@router.post(
    "/image",
    response_model=EmbeddingResponse,
    openapi_extra=multipart_or_json_body("EmbedImageRequest"),
    summary="Embed images (multipart files, or JSON with base64 images)",
)
async def embed_image(request: Request, state: State) -> FastJSON:
    model = None
    if is_multipart(request):
        blobs, fields = await read_form(request, state.settings)
        model = first_value(fields, "model")
    else:
        require_json(request)
        body = await parse_json(request, EmbedImageRequest)
        model = body.model
        check_image_count(len(body.images), state.settings)
        blobs = images_from_json(body.images)
    enc = state.require_encoder(model, IMAGE)
    check_image_count(len(blobs), state.settings)
    emb = await state.embed_image_bytes(blobs)
    return _reply(enc.model_id, emb.numpy(), enc.embed_dim)
