"""GET /v1/models: what is loaded, in OpenAI's list shape plus our fields."""

from __future__ import annotations

from fastapi import APIRouter

from contrastkit.service.api.deps import DefaultModel, ModelsDep
from contrastkit.service.runtime.served import LoadedModel, ServedModel
from contrastkit.service.schemas.embeddings import ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelList, summary="The loaded models and their properties")
async def list_models(default: DefaultModel, models: ModelsDep) -> ModelList:
    # `default`: 503 model_not_ready until the default model is warm
    cards = [_card(m, m.loaded, m.loaded is default) for m in models if m.loaded is not None]
    return ModelList(data=cards)


def _card(served: ServedModel, model: LoadedModel, default: bool) -> ModelCard:
    enc = model.encoder
    info = enc.info
    return ModelCard(
        id=info.model_id,
        reference=served.ref,
        alias=served.alias,
        dim=info.embed_dim,
        capabilities=sorted(info.capabilities),
        logit_scale=info.logit_scale,
        context_length=info.context_length,
        default_templates=list(info.default_templates),
        preprocessing=info.preprocess.to_dict(),
        device=str(enc.device),
        runtime=getattr(enc, "runtime", "torch"),
        default=default,
        memory_bytes=model.memory_bytes(),
    )
