"""The OpenAPI document against the server's answers: schemathesis fuzzes every operation
with `--checks all` (status codes, content types, response schemas, headers, Allow on 405,
negative data refused) against a real uvicorn server. Schema-valid requests must be
accepted too, but for the few rules no JSON Schema can express (INEXPRESSIBLE: bytes that
are no image, a vector of another collection's dimension, ...), each named by the error
code it is refused with: a refusal for any other reason means the document is looser than
the server. Those of the item and search operations go to a collection that exists, so
that their bodies are read rather than answered 404.

About 25 cases per operation, a few hundred in all: enough to catch an undocumented status,
a response off its schema or a 5xx, bounded to a few minutes on 2 busy cores.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from contrastkit.service.app import create_app
from contrastkit.service.settings import Settings
from tests.helpers import FakeEncoder

pytestmark = pytest.mark.slow


def _serve(app: object) -> tuple[uvicorn.Server, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))  # type: ignore[arg-type]
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                return server, base
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError("the server did not become ready")


_folder = Path(__import__("tempfile").mkdtemp(prefix="schemathesis-"))
APP = create_app(Settings(collections_dir=str(_folder)), encoder=FakeEncoder())
schema = schemathesis.openapi.from_dict(APP.openapi())
# Schema-valid item and search requests go to this collection (in the fake model's space),
# so that their bodies are read rather than answered 404 for a made-up name.
COLLECTION = "fuzzed"


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    server, base = _serve(APP)
    httpx.post(f"{base}/v1/collections", json={"name": COLLECTION}).raise_for_status()
    yield base
    server.should_exit = True


# What the document cannot say, and the only refusals of schema-valid requests allowed: by
# operation, the rules no JSON Schema expresses, each named by its error code (and, where the
# code also covers what the document does state, words of its message or the body's type).
@dataclass(frozen=True)
class Rule:
    code: str
    words: str = ""
    media: str = ""  # only for bodies of this media type

    def refused(self, code: str, message: str, media: str) -> bool:
        """Whether this rule is the one that refused the request."""
        return code == self.code and self.words in message and media.startswith(self.media)


IMAGES = (Rule("image_decode_failed"), Rule("image_too_large"))  # bytes that are no image
MULTIPART = "multipart/form-data"
INEXPRESSIBLE: dict[str, tuple[Rule, ...]] = {
    "/v1/embed/image": IMAGES,
    # ivfpq's pq_m divides the dimension, which may be the loaded model's
    "/v1/collections": (Rule("invalid_dimension", " must divide "),),
    # labels x templates <= max_classify_texts: a product of two lengths
    "/v1/classify": (*IMAGES, Rule("too_many_items", " templates = ")),
    # token ids: inside the encoding's vocabulary, and decoding to text the checks take
    "/v1/embeddings": (
        *IMAGES,
        Rule("invalid_tokens"),
        Rule("tokens_not_supported"),
        *(Rule(code, "decoded from") for code in ("empty_text", "invalid_text", "text_too_long")),
    ),
    # a vector's length is its collection's dimension; one id and one metadata object per file
    "/v1/collections/{name}/items": (
        *IMAGES,
        Rule("wrong_dimension"),
        Rule("invalid_request", " ids for ", MULTIPART),
        Rule("invalid_metadata", " objects for ", MULTIPART),
        # a source's limit is in UTF-8 bytes, and a lone surrogate has no UTF-8 at all
        Rule("invalid_source", " bytes of UTF-8"),
        Rule("invalid_source", "lone surrogate"),
    ),
    # texts and files together are at most max_queries: a sum of two lengths
    "/v1/collections/{name}/search": (
        *IMAGES,
        Rule("wrong_dimension"),
        Rule("too_many_items", " queries in one request", MULTIPART),
    ),
}
# What positive_data_acceptance takes for "accepted": not a refusal of the request's form.
NOT_REFUSED = {401, 403, 404, 409, 429}


def positive_data_is_accepted(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    """positive_data_acceptance (ST202), but for the rules in INEXPRESSIBLE: a schema-valid
    request is refused (4xx) only by one of them, named by its error code."""
    status = response.status_code
    if not _positive(case):
        return
    if status < 400 or status >= 500 or status in NOT_REFUSED:
        return
    code, message = response.json()["error"]["code"], response.json()["error"]["message"]
    rules = INEXPRESSIBLE.get(case.operation.path, ())
    if not any(r.refused(code, message, case.media_type or "") for r in rules):
        raise AssertionError(
            f"a schema-valid request was refused ({status} {code}: {message}): "
            "the document is looser than the server"
        )


def _positive(case: schemathesis.Case) -> bool:
    """Whether every part of the request is schema-valid (the coverage phase marks a case
    positive whose body alone it made invalid)."""
    meta = case.meta
    return (
        meta is not None
        and meta.generation.mode.is_positive
        and all(c.mode.is_positive for c in meta.components.values())
    )


def _in_the_collection(case: schemathesis.Case) -> None:
    """Positive cases of the item and search operations name the existing collection."""
    if (
        _positive(case)
        and case.operation.path.startswith("/v1/collections/{name}/")
        and case.path_parameters is not None
    ):
        case.path_parameters["name"] = COLLECTION


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_operation_keeps_to_the_document(case: schemathesis.Case, base_url: str) -> None:
    _in_the_collection(case)
    case.call_and_validate(
        base_url=base_url,
        timeout=30,
        excluded_checks=[positive_data_acceptance],
        additional_checks=[positive_data_is_accepted],
    )


# The admin API is in the document only on a server with keys: fuzzed here, with its key,
# on a server of its own whose loads all fail at once (nothing is downloaded or kept).
# "Schema-valid data is accepted" is left out for loads and replacements: no JSON Schema
# says "a reference this server can load", so a made-up one is (rightly) refused with 422.
ADMIN_KEY = "fuzz-admin-key"
ADMIN_APP = create_app(Settings(admin_keys=[ADMIN_KEY], collections=False), encoder=FakeEncoder())
admin_schema = schemathesis.openapi.from_dict(ADMIN_APP.openapi()).include(path_regex="^/v1/admin/")
LOADS = {"/v1/admin/models", "/v1/admin/models/{model}"}


def _load_nothing(ref: str, *_: object) -> object:
    raise RuntimeError(f"this server loads no model ({ref!r})")


@pytest.fixture(scope="module")
def admin_url() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("contrastkit.service.runtime.served.load_encoder", _load_nothing)
        server, base = _serve(ADMIN_APP)
        yield base
        server.should_exit = True


@admin_schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_admin_operation_keeps_to_the_document(
    case: schemathesis.Case, admin_url: str
) -> None:
    excluded = [positive_data_acceptance] if case.operation.path in LOADS else []
    case.call_and_validate(
        base_url=admin_url,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=30,
        excluded_checks=excluded,
    )
