"""POST /v1/embed/text and /v1/embed/image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from contrastkit.service.api.deps import (
    ModelRequest,
    ModelsDep,
    SettingsDep,
    precheck,
    watch_disconnect,
)
from contrastkit.service.api.json_route import OrjsonRoute
from contrastkit.service.api.openapi_docs import IMAGE_FORM, json_or_multipart
from contrastkit.service.api.payload import (
    first_value,
    is_multipart,
    read_form,
    read_json,
    require_json_dep,
)
from contrastkit.service.api.request_checks import check_image_count, check_texts
from contrastkit.service.responses import FastJSON, finite_output
from contrastkit.service.runtime.embedding import ImageSource
from contrastkit.service.runtime.served import LoadedModel
from contrastkit.service.schemas.embeddings import (
    EmbeddingResponse,
    EmbedImageRequest,
    EmbedTextRequest,
)
from contrastkit.service.settings import Settings
from contrastkit.training.encoders import IMAGE, TEXT

router = APIRouter(
    prefix="/v1/embed",
    tags=["embeddings"],
    dependencies=[Depends(watch_disconnect)],
    route_class=OrjsonRoute,
)


def _reply(model: LoadedModel, emb: object) -> FastJSON:
    model_id, dim = model.model_id, model.encoder.embed_dim
    return FastJSON({"model": model_id, "dim": dim, "embeddings": finite_output(emb, model_id)})


async def texts_to_embed(
    body: EmbedTextRequest, models: ModelsDep
) -> ModelRequest[EmbedTextRequest]:
    """The JSON body (its schema is the route's), and the model it names, with texts."""
    return ModelRequest(body, models.resolve(body.model, TEXT))


TextsToEmbed = Annotated[ModelRequest[EmbedTextRequest], Depends(texts_to_embed)]


@router.post(
    "/text",
    response_model=EmbeddingResponse,
    dependencies=[Depends(require_json_dep)],
    summary="Embed texts",
)
async def embed_text(req: TextsToEmbed, settings: SettingsDep) -> FastJSON:
    texts = check_texts(req.sent.texts, settings)
    emb = await req.model.texts(texts)
    return _reply(req.model, emb.numpy())


async def _read_images(request: Request, s: Settings) -> tuple[Sequence[ImageSource], str | None]:
    """-> (the images: file bytes, or base64 from JSON, decoded after admission in the
    decode pool; the model named, if any), from multipart or JSON."""
    if is_multipart(request):
        form = await read_form(request, s.max_images, s.max_labels + s.max_templates + 16)
        return form.blobs, first_value(form.fields, "model")
    body = await read_json(request, EmbedImageRequest)
    check_image_count(len(body.images), s)
    return body.images, body.model


async def images_to_embed(
    request: Request, models: ModelsDep, settings: SettingsDep
) -> ModelRequest[Sequence[ImageSource]]:
    """The images sent, and the model the request names, with images."""
    precheck(models, IMAGE)  # before reading the body: a model without images refuses at once
    blobs, name = await _read_images(request, settings)
    return ModelRequest(blobs, models.resolve(name, IMAGE))


ImagesToEmbed = Annotated[ModelRequest[Sequence[ImageSource]], Depends(images_to_embed)]


@router.post(
    "/image",
    response_model=EmbeddingResponse,
    openapi_extra=json_or_multipart(EmbedImageRequest, IMAGE_FORM),
    summary="Embed images (multipart files, or JSON with base64 images)",
)
async def embed_image(req: ImagesToEmbed, settings: SettingsDep) -> FastJSON:
    check_image_count(len(req.sent), settings)
    emb = await req.model.images(req.sent)
    return _reply(req.model, emb.numpy())
