"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import PlainTextResponse, Response

from service.api.deps import MetricsDep, State
from service.responses import FastJSON
from service.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> FastJSON:
    return FastJSON({"status": "ok"})


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Loading, failed, or draining"}},
    summary="Readiness: 503 until the model is loaded and warmed",
)
async def readyz(state: State) -> FastJSON:
    problems = state.store.problems if state.store is not None else {}
    if state.ready:
        assert state.encoder is not None
        body: dict[str, Any] = {"status": "ready", "model": state.encoder.model_id}
        if problems:  # the service runs; these collections are refused until repaired
            body["collections_refused"] = problems
        return FastJSON(body)
    if state.draining:
        status, reason = "draining", "shutting down"
    elif state.load_error:
        status, reason = "failed", state.load_error
    else:
        status, reason = "loading", "the model is loading"
    return FastJSON({"status": status, "reason": reason}, status_code=503)


# Documented as text/plain (Prometheus' text format), not as FastAPI's default JSON.
@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text exposition format"}},
    summary="Prometheus metrics",
)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
