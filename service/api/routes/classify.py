"""POST /v1/classify: zero-shot classification with prompt templates."""

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
from contrastkit.service.api.openapi_docs import CLASSIFY_FORM, json_or_multipart
from contrastkit.service.api.payload import (
    first_value,
    is_multipart,
    list_field,
    read_form,
    read_json,
)
from contrastkit.service.api.request_checks import (
    bad,
    check_classify_size,
    check_image_count,
    check_labels,
    check_templates,
)
from contrastkit.service.responses import FastJSON, finite_output
from contrastkit.service.runtime.embedding import ImageSource
from contrastkit.service.runtime.zeroshot import probabilities
from contrastkit.service.schemas.embeddings import ClassifyRequest, ClassifyResponse
from contrastkit.service.settings import Settings
from contrastkit.training.encoders import IMAGE, TEXT

router = APIRouter(prefix="/v1", tags=["classify"], dependencies=[Depends(watch_disconnect)])
Sent = tuple[ClassifyRequest, Sequence[ImageSource]]  # the fields, and the images


async def _read(request: Request, s: Settings) -> Sent:
    if is_multipart(request):
        form = await read_form(request, s.max_images, s.max_labels + s.max_templates + 16)
        top_k = first_value(form.fields, "top_k")
        try:
            body = ClassifyRequest(
                images=[],
                labels=list_field(form.fields, "labels") or [],
                templates=list_field(form.fields, "templates"),
                top_k=int(top_k) if top_k else None,
                model=first_value(form.fields, "model"),
            )
        except ValueError as e:
            raise bad("invalid_request", f"invalid form field: {e}") from e
        return body, form.blobs
    body = await read_json(request, ClassifyRequest)
    check_image_count(len(body.images), s)
    return body, body.images  # base64: decoded after admission, in the decode pool


async def to_classify(
    request: Request, models: ModelsDep, settings: SettingsDep
) -> ModelRequest[Sent]:
    """The request's fields and images, and the model it names, with images and texts
    (labels are embedded as texts)."""
    precheck(models, IMAGE, TEXT)
    body, blobs = await _read(request, settings)
    return ModelRequest((body, blobs), models.resolve(body.model, IMAGE, TEXT))


ToClassify = Annotated[ModelRequest[Sent], Depends(to_classify)]


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    openapi_extra=json_or_multipart(ClassifyRequest, CLASSIFY_FORM),
    summary="Rank labels for each image (zero-shot, template ensemble)",
)
async def classify(req: ToClassify, settings: SettingsDep) -> FastJSON:
    (body, blobs), model = req.sent, req.model
    enc = model.encoder
    labels = check_labels(body.labels, settings)
    templates = check_templates(
        body.templates if body.templates is not None else list(enc.info.default_templates),
        settings,
    )
    check_classify_size(len(labels), len(templates), settings)
    check_image_count(len(blobs), settings)
    weights = await model.classifiers.get(enc.model_id, labels, templates)
    probs, scores = probabilities(await model.images(blobs), weights, enc.logit_scale)
    finite_output(scores, enc.model_id)  # NaN in an image or label embedding: no ranking
    finite_output(probs, enc.model_id)
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
