"""Service settings: environment (CONTRASTIVE_*) first, then CLI flags override."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service. Env: CONTRASTIVE_<NAME>; CLI: --<name-with-dashes>."""

    model_config = SettingsConfigDict(env_prefix="CONTRASTIVE_", extra="ignore")

    model: str = Field(
        "builtin",
        description="builtin, open_clip:ARCH, open_clip:hf-hub:ORG/NAME (downloads from the "
        "Hugging Face Hub when online), or an export directory",
    )
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="more models served beside `model` (comma-separated; on the CLI, repeat "
        "--model); a request picks one by its id or reference in `model`",
    )
    pretrained: str | None = Field(None, description="open_clip pretrained tag or local file")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    runtime: Literal["torch", "onnx", "auto"] = Field(
        "auto",
        description="torch; onnx: an export directory's ONNX graphs (export --onnx) run "
        "by onnxruntime on the CPU; auto: onnx when the device is the CPU and the export "
        "has them (onnxruntime measured 1.2-2.1x faster than torch on 1 CPU thread, "
        "bench onnx), else torch",
    )
    auto_onnx: bool = Field(
        True,
        description="with runtime auto on the CPU, a model served by torch moves to "
        "onnxruntime once its graphs are traced in the background (once per weights: "
        "kept in onnx_cache_dir); vectors stay torch's to 1e-4",
    )
    onnx_cache_dir: str = Field(
        "",
        description="where traced ONNX graphs are kept; empty: "
        "$XDG_CACHE_HOME/contrastive/onnx (~/.cache/contrastive/onnx)",
    )
    device_decode: Literal["auto", "on", "off"] = Field(
        "auto",
        description="decode plain JPEG uploads on the model's device in batches "
        "(torchvision decode_jpeg, nvJPEG on CUDA); auto: on when the model is on CUDA",
    )
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated keys; when set, Bearer auth is required"
    )
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        repr=False,
        description="comma-separated keys of the admin API (/v1/admin: load, replace and "
        "unload models), which also work as API keys; without them the admin API takes the "
        "api_keys, and with neither it is off (403)",
    )
    # batching
    max_batch_size: int = Field(64, ge=1, description="most items the model sees at once")
    max_wait_ms: float = Field(2.0, ge=0, description="how long a batch waits to fill up")
    max_queue: int = Field(2048, ge=1, description="items waiting before 503 + Retry-After")
    max_queue_wait_ms: float = Field(
        3000.0,
        gt=0,
        description="a request is refused (503 + Retry-After) when the work queued before "
        "it would take longer than this at the measured service rate",
    )
    always_admit_requests: int = Field(
        32,
        ge=0,
        description="requests a model admits for each modality whatever their estimated "
        "wait (their items still within max_queue): up to this many clients that each wait "
        "for their answer before sending again queue rather than get 503s",
    )
    # limits on one request
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="larger bodies get 413")
    max_image_pixels: int = Field(40_000_000, ge=1, description="larger images get 413")
    max_images: int = Field(64, ge=1, description="images in one request")
    max_texts: int = Field(2048, ge=1, description="texts in one request")
    max_text_chars: int = Field(100_000, ge=1, description="characters in one text")
    max_labels: int = Field(1000, ge=1, description="labels in one classify request")
    max_templates: int = Field(100, ge=1, description="templates in one classify request")
    # half of max_queue by default: other clients' texts still fit beside the largest one
    max_classify_texts: int = Field(
        1024, ge=1, description="labels x templates (texts to embed) in one classify request"
    )
    classifier_cache: int = Field(256, ge=0, description="zero-shot label sets kept in memory")
    log_level: str = Field("info", description="uvicorn log level")
    access_log: bool = Field(
        False,
        description="log every request (uvicorn's access log; costs CPU at high request rates)",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="text: one readable line per record; json: one JSON object per line "
        "(time, level, logger, message, request_id, exception) for log collectors",
    )
    tracing: bool = Field(
        False,
        description="OpenTelemetry spans of requests, batcher queue waits, batches, model "
        "calls and collection calls, exported by OTLP to OTEL_EXPORTER_OTLP_ENDPOINT (the "
        "otel extra: pip install 'contrastkit[otel]')",
    )
    keep_alive_seconds: float = Field(
        75.0,
        gt=0,
        description="how long an idle keep-alive connection is kept open: longer than "
        "clients and load balancers keep theirs (httpx 5 s, aiohttp 15 s, nginx and AWS "
        "ALB 60 s), so that the client closes an idle connection, never the server just "
        "as the client sends on it (the request would fail without an answer)",
    )
    # shutdown (SIGTERM): /readyz 503 at once, keep serving `drain_seconds` so load
    # balancers stop sending, stop accepting, wait for in-flight requests, flush, exit 0
    drain_seconds: float = Field(
        2.0, ge=0, description="after SIGTERM, keep serving (with /readyz 503) this long"
    )
    graceful_timeout: float = Field(
        30.0, ge=0, description="then wait at most this long for in-flight requests"
    )
    # collections (similarity search)
    collections: bool = Field(
        True, description="serve /v1/collections (false: a stateless replica, embeddings only)"
    )
    collections_backend: Literal["faiss", "qdrant"] = Field(
        "faiss",
        description="faiss: the embedded store in collections_dir (one writer process); "
        "qdrant: a Qdrant server at qdrant_url (any number of replicas), or without a url "
        "qdrant-client's local mode in collections_dir/qdrant",
    )
    collections_dir: str = Field("collections", description="where collections are stored")
    qdrant_url: str | None = Field(None, description="the Qdrant server (http[s]://host:6333)")
    qdrant_api_key: str | None = Field(None, repr=False, description="Qdrant's api-key")
    qdrant_timeout: int = Field(10, ge=1, description="seconds per Qdrant request")
    qdrant_prefix: str = Field(
        "contrastive", description="prefix of our collection names in Qdrant (a shared server)"
    )
    snapshot_every: int = Field(
        20_000, ge=1, description="log records after which a snapshot falls due (also by bytes)"
    )
    max_items: int = Field(1024, ge=1, description="items in one add request")
    max_k: int = Field(1000, ge=1, description="largest k in a search")
    max_queries: int = Field(256, ge=1, description="queries in one search request")
    max_duplicate_scan: int = Field(
        200_000, ge=2, description="items one near-duplicate scan compares, at most"
    )

    @field_validator("api_keys", "admin_keys", "models", mode="before")
    @classmethod
    def _split_keys(cls, v: object) -> object:
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    @property
    def admin_access(self) -> list[str]:
        """The keys the admin API takes: `admin_keys`, else `api_keys`; none: it is off."""
        return self.admin_keys or self.api_keys

    @property
    def request_keys(self) -> list[str]:
        """The keys the other protected routes take (none: they need no key): the API
        keys, and the admin keys beside them."""
        return [*self.api_keys, *self.admin_keys] if self.api_keys else []

    @property
    def model_refs(self) -> list[str]:
        """Every model to serve, the default first (repeats dropped)."""
        return list(dict.fromkeys([self.model, *self.models]))


@lru_cache
def get_settings() -> Settings:
    return Settings()
