"""POST /v1/classify: zero-shot classification with prompt templates."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.api.deps import State
from service.api.payload import (
    first_value,
    images_from_json,
    is_multipart,
    list_field,
    multipart_or_json_body,
    parse_json,
    read_form,
    require_json,
)
from service.api.validate import check_image_count, check_labels, check_templates
from service.errors import ApiError
from service.responses import FastJSON
from service.runtime.zeroshot import probabilities
from service.schemas import ClassifyRequest, ClassifyResponse
from training.encoders import IMAGE, TEXT

router = APIRouter(prefix="/v1", tags=["classify"])


async def _read(request: Request, state: State) -> tuple[ClassifyRequest, list[bytes]]:
    if is_multipart(request):
        blobs, fields = await read_form(request, state.settings)
        top_k = first_value(fields, "top_k")
        try:
            body = ClassifyRequest(
                images=[],
                labels=list_field(fields, "labels") or [],
                templates=list_field(fields, "templates"),
                top_k=int(top_k) if top_k else None,
                model=first_value(fields, "model"),
            )
        except ValueError as e:
            raise ApiError(422, "invalid_request", f"invalid form field: {e}") from e
        return body, blobs
    require_json(request)
    body = await parse_json(request, ClassifyRequest)
    check_image_count(len(body.images), state.settings)
    return body, images_from_json(body.images)


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    openapi_extra=multipart_or_json_body("ClassifyRequest"),
    summary="Rank labels for each image (zero-shot, template ensemble)",
)
async def classify(request: Request, state: State) -> FastJSON:
    body, blobs = await _read(request, state)
    enc = state.require_encoder(body.model, IMAGE)
    state.require_encoder(capability=TEXT)
    s = state.settings
    labels = check_labels(body.labels, s)
    templates = check_templates(
        body.templates if body.templates is not None else list(enc.info.default_templates), s
    )
    check_image_count(len(blobs), s)
    assert state.classifiers is not None
    weights = await state.classifiers.get(enc.model_id, labels, templates)
    images = await state.embed_image_bytes(blobs)
    probs, scores = probabilities(images, weights, enc.logit_scale)
    k = min(body.top_k or len(labels), len(labels))
    results = []
    for i in range(len(blobs)):
        order = probs[i].argsort(descending=True)[:k].tolist()
        ranking = [
            {"label": labels[j], "probability": float(probs[i, j]), "score": float(scores[i, j])}
            for j in order
        ]
        results.append({"index": i, "ranking": ranking})
    return FastJSON({"model": enc.model_id, "templates": templates, "results": results})
