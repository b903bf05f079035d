"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import PlainTextResponse, Response

from contrastkit.service.api.deps import MetricsDep, State
from contrastkit.service.index.types import CollectionError
from contrastkit.service.middleware import has_key
from contrastkit.service.responses import FastJSON
from contrastkit.service.schemas.status import Health, Readiness
from contrastkit.service.state import ServiceState

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
async def readyz(state: State, request: Request) -> FastJSON:
    if state.ready:
        unreachable, problems = await _check_store(state)
        if unreachable is not None:  # a replica that cannot serve collections is not ready
            return FastJSON(
                {"status": "backend_unavailable", "reason": unreachable}, status_code=503
            )
        body: dict[str, Any] = {
            "status": "ready",
            "model": state.models.default.require().model_id,
            "models": _models(state),
        }
        if problems:  # the service runs; these collections are refused until repaired
            body["collections_refused_count"] = len(problems)
            # names and reasons (file paths, sizes) only to a caller with an API key:
            # /readyz is open to probes, which need the status, not the details
            if _may_see_details(state, request):
                body["collections_refused"] = problems
        return FastJSON(body)
    if state.draining:
        status, reason = "draining", "shutting down"
    elif state.load_error:
        status, reason = "failed", state.load_error
    else:
        status, reason = "loading", state.loading_reason() or "the model is loading"
    body = {"status": status, "reason": reason, "models": _models(state)}
    took = state.loading_for
    if status == "loading" and took is not None:  # a load that seems stuck shows it here
        body["loading_seconds"] = round(took, 1)
    return FastJSON(body, status_code=503)


def _may_see_details(state: ServiceState, request: Request) -> bool:
    """Without API keys everyone may; with them, a caller with one of them."""
    s = state.settings
    keys = [k.encode() for k in [*s.request_keys, *s.admin_access]]
    return not keys or has_key(request.scope, keys)


def _models(state: ServiceState) -> list[dict[str, Any]]:
    """Each model's readiness, device and memory (ModelReadiness), then the admin API's
    loads under way: they do not make the server unready (what it serves, it serves)."""
    out = []
    for m in state.models:
        loaded = m.loaded
        row: dict[str, Any] = {"reference": m.ref, "id": loaded.model_id if loaded else None}
        if m.alias is not None:
            row["alias"] = m.alias
        if loaded is not None:
            device, memory = str(loaded.encoder.device), loaded.memory_bytes()
            row |= {"status": "ready", "device": device, "memory_bytes": memory}
            row["load_seconds"] = None if m.load_seconds is None else round(m.load_seconds, 1)
        elif m.load_error:
            row |= {"status": "failed", "reason": m.load_error}
        elif m.loading_since is not None:
            row |= {"status": "loading", "reason": m.loading_reason()}
        else:
            row |= {"status": "waiting", "reason": "loads after the models before it"}
        out.append(row)
    for op in state.lifecycle.in_flight():
        out.append(
            {
                "reference": op.reference,
                "id": None,
                "status": "loading",
                "reason": op.progress(),
                "operation": op.id,
                "replaces": op.replaces,
            }
        )
    return out


async def _check_store(state: ServiceState) -> tuple[str | None, dict[str, str]]:
    """(why the collection backend cannot be reached (a Qdrant server down, stalled or
    answering garbage), or None; the collections it refuses: name -> why).

    Both in a thread, not in the index pool (a probe must not wait behind writes) and
    never on the event loop: for Qdrant each is a request, and one to a stalled server
    held every route, /healthz included, until its timeout."""
    store = state.store
    if store is None:
        return None, {}

    def check() -> dict[str, str]:
        store.ping()
        return dict(store.problems)

    try:
        return None, await asyncio.to_thread(check)
    except CollectionError as e:
        return e.message, {}


# Documented as text/plain (Prometheus' text format), not as FastAPI's default JSON.
@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text exposition format"}},
    summary="Prometheus metrics",
)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
