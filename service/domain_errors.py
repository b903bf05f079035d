"""The service's errors without HTTP: a stable code, a message, nothing about statuses.

The runtime (images, batchers), the collection store and the request checks raise these;
`contrastkit.service.errors` is the one place that turns a code into an HTTP status, and
`contrastive index` prints the message as it is. No third-party import here: the CLI and
the store import this module without loading the web stack.
"""

from __future__ import annotations

from typing import Any, Literal

# Every code a DomainError may carry. The HTTP table (contrastkit.service.errors.STATUS) has an
# entry for each: tests/service/test_errors.py checks that, and that every code raised in service/
# is listed here. Clients key on these strings: never rename one.
ErrorCode = Literal[
    # image bytes (contrastkit.service.runtime.images)
    "image_decode_failed",
    "image_too_large",
    "url_not_supported",
    "invalid_base64",
    # the loaded model
    "model_not_ready",
    "model_not_found",
    "missing_capability",
    "model_mismatch",
    "unsupported_dimensions",
    "model_output_invalid",
    # changing the served models (the admin API: contrastkit.service.runtime.lifecycle)
    "model_unloaded",
    "model_busy",
    "model_exists",
    "model_is_default",
    "model_load_failed",
    "operation_not_found",
    # capacity: retry later
    "overloaded",
    "out_of_memory",
    "client_closed_request",
    # collections (contrastkit.service.index)
    "invalid_name",
    "invalid_dimension",
    "collection_exists",
    "collection_not_found",
    "collection_corrupt",
    "item_not_found",
    "alias_not_found",
    "alias_conflict",
    "collection_aliased",
    "insufficient_storage",
    "storage_error",
    "store_unavailable",
    "backend_unavailable",
    "collections_disabled",
    # a write through an alias switched while it was read (retry it), and migrations
    "alias_switched",
    "migration_running",
    "migration_refused",
    "migration_not_found",
    "scan_too_large",
    # request contents
    "unsupported_media_type",
    "invalid_json",
    "invalid_request",
    "empty_input",
    "too_many_items",
    "empty_text",
    "text_too_long",
    "invalid_text",
    "tokens_not_supported",
    "invalid_tokens",
    "too_many_labels",
    "duplicate_labels",
    "too_many_templates",
    "invalid_template",
    "wrong_dimension",
    "invalid_k",
    "invalid_id",
    "invalid_metadata",
    "invalid_source",
    "invalid_vector",
    "invalid_filter",
    # the edge itself (middleware, unknown paths, bugs)
    "unauthorized",
    "forbidden",
    "admin_disabled",
    "payload_too_large",
    "not_found",
    "internal_error",
]


class DomainError(Exception):
    """Something the service refuses or cannot do right now.

    `code` is what clients (and the HTTP table) key on, `message` is for people, `detail`
    is optional machine-readable context, and `retry_after` (seconds) says that the same
    request may succeed later.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        detail: Any = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.detail = detail
        self.retry_after = retry_after


class RequestError(DomainError):
    """The request's contents are refused: a bad field, body, media type or path."""


class ModelError(DomainError):
    """The loaded model cannot serve this: not loaded yet, another model, a capability
    it lacks, or a vector space other than the one asked for."""


class CapacityError(DomainError):
    """The server is full or the device out of memory for now: always retryable."""
