"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from service.api.deps import MetricsDep, State
from service.responses import FastJSON

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> FastJSON:
    return FastJSON({"status": "ok"})


@router.get("/readyz", summary="Readiness: 503 until the model is loaded and warmed")
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


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
