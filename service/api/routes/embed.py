"""POST /v1/embed/text and /v1/embed/image."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from service.api.deps import ModelHandleDep, SettingsDep
from service.api.openapi_docs import IMAGE_FORM, json_or_multipart
from service.api.payload import (
    first_value,
    images_from_json,
    is_multipart,
    read_form,
    read_json,
    require_json_dep,
)
from service.api.validate import check_image_count, check_texts
from service.responses import FastJSON, finite_output
from service.schemas.embeddings import EmbeddingResponse, EmbedImageRequest, EmbedTextRequest
from service.settings import Settings
from training.encoders import IMAGE, TEXT

router = APIRouter(prefix="/v1/embed", tags=["embeddings"])


def _reply(model_id: str, emb: object, dim: int) -> FastJSON:
    return FastJSON({"model": model_id, "dim": dim, "embeddings": finite_output(emb, model_id)})


@router.post(
    "/text",
    response_model=EmbeddingResponse,
    dependencies=[Depends(require_json_dep)],
    summary="Embed texts",
)
async def embed_text(
    body: EmbedTextRequest, model: ModelHandleDep, settings: SettingsDep
) -> FastJSON:
    chosen = model.select(body.model)
    enc = chosen.require(TEXT)
    texts = check_texts(body.texts, settings)
    emb = await chosen.text_embedder()(texts)
    return _reply(enc.model_id, emb.numpy(), enc.embed_dim)


async def _read_images(request: Request, s: Settings) -> tuple[list[bytes], str | None]:
    """-> (image file bytes, the model named, if any), from multipart or JSON."""
    if is_multipart(request):
        form = await read_form(request, s.max_images, s.max_labels + s.max_templates + 16)
        return form.blobs, first_value(form.fields, "model")
    body = await read_json(request, EmbedImageRequest)
    check_image_count(len(body.images), s)  # before decoding any of them
    return images_from_json(body.images), body.model


@router.post(
    "/image",
    response_model=EmbeddingResponse,
    openapi_extra=json_or_multipart(EmbedImageRequest, IMAGE_FORM),
    summary="Embed images (multipart files, or JSON with base64 images)",
)
async def embed_image(request: Request, model: ModelHandleDep, settings: SettingsDep) -> FastJSON:
    model.precheck(IMAGE)  # before reading the body: a model without images refuses at once
    blobs, name = await _read_images(request, settings)
    chosen = model.select(name)
    enc = chosen.require(IMAGE)
    check_image_count(len(blobs), settings)
    emb = await chosen.image_embedder()(blobs)
    return _reply(enc.model_id, emb.numpy(), enc.embed_dim)
