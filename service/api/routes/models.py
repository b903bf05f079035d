"""GET /v1/models: what is loaded, in OpenAI's list shape plus our fields."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import EncoderDep, SettingsDep
from service.schemas import ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelList, summary="The loaded model and its properties")
async def list_models(enc: EncoderDep, settings: SettingsDep) -> ModelList:
    info = enc.info
    card = ModelCard(
        id=info.model_id,
        reference=settings.model,
        dim=info.embed_dim,
        capabilities=sorted(info.capabilities),
        logit_scale=info.logit_scale,
        context_length=info.context_length,
        default_templates=list(info.default_templates),
        preprocessing=info.preprocess.to_dict(),
        device=str(enc.device),
    )
    return ModelList(data=[card])
