"""/v1/admin: change the served models of a running server (contrastkit.service.runtime.lifecycle):
load another, replace one, unload one, choose the default, follow the loads.

Every route needs an admin key: one of `admin_keys`, or of `api_keys` when there are no
admin keys. A server with neither mounts `disabled_router` instead, which refuses every
admin path (403 `admin_disabled`): the admin API is never open. The API-key middleware
checks the key before anything is read (contrastkit.service.middleware); this router checks it
again, so that it holds however the middleware is set up.

Loads and replacements answer 202 with an operation to poll at once, or, given `wait`,
once the operation ends within that many seconds (200 done, 422 `model_load_failed`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.exceptions import HTTPException

from contrastkit.service.api.deps import SettingsDep, State
from contrastkit.service.api.payload import require_json_dep
from contrastkit.service.api.routes import refusing_router
from contrastkit.service.domain_errors import ModelError, RequestError
from contrastkit.service.middleware import has_key
from contrastkit.service.responses import FastJSON
from contrastkit.service.runtime.lifecycle import ModelLifecycle, ModelSpec, Operation
from contrastkit.service.schemas.admin import (
    DefaultModel,
    DefaultModelRequest,
    LoadModelRequest,
    ModelOperation,
    OperationList,
    ReplaceModelRequest,
    UnloadedModel,
)

PREFIX = "/v1/admin"


async def admin_key(request: Request, settings: SettingsDep) -> None:
    """The admin check of the API-key middleware again (which refuses first, before any
    body is read, and tells an API key from none: 403, 401): so that the admin API stays
    closed in an app assembled without that middleware."""
    if not has_key(request.scope, [k.encode() for k in settings.admin_access]):
        raise HTTPException(
            401,
            "missing or wrong admin key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def model_lifecycle(state: State) -> ModelLifecycle:
    return state.lifecycle


Lifecycle = Annotated[ModelLifecycle, Depends(model_lifecycle)]
Wait = Annotated[
    float,
    Query(
        ge=0,
        le=600,
        description="seconds to wait for the operation to end before answering 202",
    ),
]

router = APIRouter(prefix=PREFIX, tags=["admin"], dependencies=[Depends(admin_key)])
# What a server without keys mounts instead: refused, whatever is sent.
disabled_router = refusing_router(
    PREFIX,
    "admin_disabled",
    "the admin API is off: a server serves it only with keys (set admin_keys, or "
    "api_keys), and then only to requests that carry one",
)
JSON_ONLY = [Depends(require_json_dep)]
OPERATION_ANSWERS: dict[int | str, dict[str, object]] = {
    200: {"model": ModelOperation, "description": "Ended within `wait`: the model serves"},
    202: {"model": ModelOperation, "description": "Under way: poll the operation"},
}


def _spec(body: ReplaceModelRequest) -> ModelSpec:
    return ModelSpec(body.reference, body.pretrained, body.device, body.runtime, body.alias)


async def _answer(op: Operation, lifecycle: ModelLifecycle, wait: float) -> FastJSON:
    """202 while `op` runs (after `wait` seconds at most), 200 once done, 422 if it failed."""
    await lifecycle.wait(op, wait)
    if op.status == "loading":
        where = {"Location": f"{PREFIX}/operations/{op.id}"}
        return FastJSON(op.to_dict(), status_code=202, headers=where)
    if op.status == "done":
        return FastJSON(op.to_dict())
    raise ModelError(
        "model_load_failed", f"operation {op.id} {op.status}: {op.error}", detail=op.to_dict()
    )


@router.post(
    "/models",
    status_code=202,
    response_model=ModelOperation,
    responses=OPERATION_ANSWERS,
    dependencies=JSON_ONLY,
    summary="Load another model; it serves once warm",
)
async def load_model(body: LoadModelRequest, lifecycle: Lifecycle, wait: Wait = 0) -> FastJSON:
    op = await lifecycle.load(_spec(body), default=body.default)
    return await _answer(op, lifecycle, wait)


@router.put(
    "/models/{model:path}",
    status_code=202,
    response_model=ModelOperation,
    responses=OPERATION_ANSWERS,
    dependencies=JSON_ONLY,
    summary="Replace a model: the new one takes its place once warm",
)
async def replace_model(
    model: str, body: ReplaceModelRequest, lifecycle: Lifecycle, wait: Wait = 0
) -> FastJSON:
    op = await lifecycle.replace(model, _spec(body))
    return await _answer(op, lifecycle, wait)


@router.delete(
    "/models/{model:path}",
    response_model=UnloadedModel,
    summary="Unload a model (not the default); what it was sent, it still answers",
)
async def unload_model(model: str, lifecycle: Lifecycle) -> FastJSON:
    gone, queued = lifecycle.unload(model)
    return FastJSON({"unloaded": gone.name, "reference": gone.ref, "queued": queued})


@router.put(
    "/default",
    response_model=DefaultModel,
    dependencies=JSON_ONLY,
    summary="Make a served model the default",
)
async def set_default(body: DefaultModelRequest, lifecycle: Lifecycle) -> FastJSON:
    model = lifecycle.set_default(body.model)
    return FastJSON({"default": model.name, "reference": model.ref})


@router.get("/operations", response_model=OperationList, summary="Loads running and recent")
async def list_operations(lifecycle: Lifecycle) -> FastJSON:
    return FastJSON({"operations": [op.to_dict() for op in lifecycle.operations.values()]})


@router.get(
    "/operations/{operation_id}", response_model=ModelOperation, summary="One load's progress"
)
async def get_operation(operation_id: int, lifecycle: Lifecycle) -> FastJSON:
    op = lifecycle.operations.get(operation_id)
    if op is None:
        raise RequestError(
            "operation_not_found",
            f"no operation {operation_id} (the last {len(lifecycle.operations)} are kept: "
            f"GET {PREFIX}/operations)",
        )
    return FastJSON(op.to_dict())
