"""What the service answers about itself and about failures: the error body of every 4xx
and 5xx, /healthz and /readyz (they also make the OpenAPI docs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorInfo(BaseModel):
    code: str = Field(..., description="stable, machine-readable, e.g. 'image_decode_failed'")
    message: str = Field(..., description="for people: what went wrong and what to change")
    detail: Any = Field(None, description="optional context, e.g. the fields that failed")


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx answer."""

    error: ErrorInfo


class Health(BaseModel):
    status: Literal["ok"]


class ModelReadiness(BaseModel):
    reference: str = Field(..., description="the --model reference")
    id: str | None = Field(None, description="its model id, once loaded")
    status: Literal["ready", "loading", "failed", "waiting"]
    reason: str | None = Field(None, description="why not ready")
    device: str | None = None
    memory_bytes: int | None = Field(None, description="its parameters and buffers")
    load_seconds: float | None = Field(None, description="how long its load took")
    alias: str | None = Field(None, description="its alias, given by the admin API")
    operation: int | None = Field(
        None, description="a load of the admin API under way: its operation's id"
    )
    replaces: str | None = Field(None, description="that load replaces this model")


class Readiness(BaseModel):
    """200 when ready (status "ready"); 503 while loading, failed or draining, or when the
    collection backend (a Qdrant server) cannot be reached."""

    status: Literal["ready", "loading", "failed", "draining", "backend_unavailable"]
    model: str | None = Field(None, description="the loaded model's id, when ready")
    reason: str | None = Field(None, description="why not ready")
    loading_seconds: float | None = Field(
        None, description="while loading: how long the model has been loading"
    )
    collections_refused: dict[str, str] | None = Field(
        None,
        description="collections that failed to open or were refused since, and why (the "
        "others serve); when API keys are set, only to a request that sends one",
    )
    collections_refused_count: int | None = Field(
        None, description="how many collections are refused (to every caller)"
    )
    models: list[ModelReadiness] | None = Field(
        None,
        description="each model served, the default first, then the admin API's loads "
        "under way (those never make the server unready)",
    )
