"""Request and response models of the admin API, /v1/admin (they also make the OpenAPI
docs): load, replace and unload models, choose the default, follow the operations."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# What a path or name may hold: anything but NUL (the file system refuses it).
NO_NUL = r"^[^\x00]+$"


class ReplaceModelRequest(BaseModel):
    """A model to load, as `--model` and the settings would name it."""

    model_config = ConfigDict(extra="forbid")
    reference: str = Field(
        ...,
        min_length=1,
        max_length=4096,
        pattern=NO_NUL,
        description="builtin, open_clip:ARCH, open_clip:hf-hub:ORG/NAME or an export "
        "directory on the server (as for --model)",
    )
    pretrained: str | None = Field(
        None, min_length=1, pattern=NO_NUL, description="open_clip pretrained tag or file"
    )
    alias: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        pattern=NO_NUL,
        description="one more name requests may give as `model`; a replacement keeps its "
        "predecessor's unless it names another",
    )
    device: str | None = Field(None, description="default: the server's `device` setting")
    runtime: Literal["torch", "onnx", "auto"] | None = Field(
        None, description="default: the server's `runtime` setting"
    )


class LoadModelRequest(ReplaceModelRequest):
    default: bool = Field(
        False, description="once warm, it becomes the default (the model of requests naming none)"
    )


class ModelOperation(BaseModel):
    """A load or a replacement: 202 while it runs, then `done` or `failed`."""

    id: int = Field(..., description="GET /v1/admin/operations/{id} follows it")
    operation: Literal["load", "replace"]
    status: Literal["loading", "done", "failed", "cancelled"]
    reference: str = Field(..., description="the reference being loaded")
    model_id: str | None = Field(None, description="the new model's id, once done")
    replaces: str | None = Field(None, description="the model it replaces (replace only)")
    default: bool = Field(..., description="whether it becomes the default when warm")
    error: str | None = Field(None, description="why it failed")
    seconds: float = Field(..., description="how long it ran (so far)")


class OperationList(BaseModel):
    operations: list[ModelOperation] = Field(..., description="running and recent, oldest first")


class UnloadedModel(BaseModel):
    unloaded: str = Field(..., description="the model's id (its reference if it never loaded)")
    reference: str
    queued: int = Field(..., description="items already queued on it, which it still answers")


class DefaultModelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., min_length=1, description="a served model: id, reference or alias")


class DefaultModel(BaseModel):
    default: str = Field(..., description="the default model's id")
    reference: str
