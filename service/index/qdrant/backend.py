"""All collections under one prefix of one Qdrant, behind the CollectionBackend interface
(contrastkit.service.index.backend); Qdrant's and httpx's errors become CollectionErrors here.

Aliases are Qdrant's own (qname(alias) -> qname(collection)): one update_collection_aliases
request deletes the old one and creates the new one, which Qdrant applies atomically.
contrastkit.service.index.aliases checks each change first, as the embedded store does; a Qdrant
alias outside this prefix is not ours and is neither listed nor touched."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import warnings
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import httpx
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from contrastkit.service.index import aliases as rules
from contrastkit.service.index.backend import Batch
from contrastkit.service.index.filters import Filter
from contrastkit.service.index.qdrant.collection import QdrantCollection
from contrastkit.service.index.qdrant.connection import QdrantConfig
from contrastkit.service.index.qdrant.filters import index_schemas
from contrastkit.service.index.qdrant.points import point_id, scroll_all
from contrastkit.service.index.qdrant.sidecar import CollectionConfig
from contrastkit.service.index.types import (
    CollectionError,
    CollectionInfo,
    IndexSpec,
    check_name,
    check_new,
)

log = logging.getLogger("contrastive.index")
T = TypeVar("T")

RETRY_AFTER_S = 5


class QdrantBackend:
    """All collections under one prefix of one Qdrant (server, local folder or memory).

    Thread-safe. Local mode is not, so its calls are serialised here; a server's are not."""

    def __init__(self, config: QdrantConfig) -> None:
        self.config = config
        self.local = config.url is None
        try:
            self.client = config.client()
        except RuntimeError as e:  # local mode: the folder is open in another process
            raise CollectionError("store_unavailable", str(e)) from e
        self._calls: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if self.local else contextlib.nullcontext()
        )
        self._lock = threading.Lock()
        self._alias_lock = threading.Lock()  # this replica's alias changes, one at a time
        self._configs_ready = False
        self._indexed: set[tuple[str, str, str]] = set()  # (collection, created_at, key)

    # -- names ------------------------------------------------------------------------------
    def qname(self, name: str) -> str:
        """The Qdrant collection of collection `name`."""
        return f"{self.config.prefix}-{name}"

    @property
    def configs(self) -> str:
        """The sidecar collection of configs: never a qname, which has '-' after the prefix."""
        return f"{self.config.prefix}_collections"

    # -- errors -----------------------------------------------------------------------------
    def run(self, op: Callable[[QdrantClient], T], name: str | None = None) -> T:
        """op(client), with Qdrant's and httpx's exceptions turned into CollectionErrors.

        name: the collection concerned, for "collection_not_found" / "collection_exists"."""
        try:
            with self._calls:
                return op(self.client)
        except ResponseHandlingException as e:
            # a 2xx body of the wrong shape: pydantic's ValidationError (or a JSON error),
            # both ValueErrors; this layer imports no pydantic (tests/test_layout.py)
            if isinstance(e.source, ValueError):
                raise self._garbled(e.source) from e
            raise self._unavailable(f"cannot be reached ({e.source or e})") from e
        except httpx.HTTPError as e:
            raise self._unavailable(f"cannot be reached ({e})") from e
        except UnexpectedResponse as e:
            raise self._answered(e, name) from e
        except (json.JSONDecodeError, UnicodeDecodeError, AssertionError) as e:
            # from a server: a 2xx body that is not JSON (qdrant-client does not wrap
            # that error), or JSON without a result (it asserts that one came)
            if self.local:
                raise
            raise self._garbled(e) from e
        except ValueError as e:  # local mode says "Collection ... not found" this way
            if self.local and name is not None and "not found" in str(e):
                raise _not_found(name) from e
            raise

    def write(self, op: Callable[[QdrantClient], models.UpdateResult], name: str | None) -> None:
        """run(op) for a write made with wait=True, which counts as done only when Qdrant
        says it is applied ("completed"). Anything else ("wait_timeout": accepted, not
        applied yet; "acknowledged") is backend_unavailable: a write Qdrant did not
        confirm is never answered as done (a retry converges: writes are idempotent)."""
        result = self.run(op, name)
        status = getattr(result, "status", None)
        if status != models.UpdateStatus.COMPLETED:
            shown = getattr(status, "value", status)
            raise self._unavailable(
                f"did not confirm the write (status {shown!r}): it may be applied later or "
                "not at all; retry it"
            )

    def _unavailable(self, why: str) -> CollectionError:
        return CollectionError(
            "backend_unavailable",
            f"the Qdrant server at {self.config.where} {why}",
            detail={"url": self.config.where},
            retry_after=RETRY_AFTER_S,
        )

    def _garbled(self, e: Exception) -> CollectionError:
        """A server whose answer is not Qdrant's REST API (a proxy's page, a truncated
        body, another service on the port): as unavailable as one that does not answer."""
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return self._unavailable(f"answered something that is not Qdrant's API ({first})")

    def _answered(self, e: UnexpectedResponse, name: str | None) -> CollectionError:
        status = e.status_code
        if status == 404 and name is not None:
            return _not_found(name)
        if status == 409 and name is not None:
            return CollectionError("collection_exists", f"collection {name!r} already exists")
        if status in (401, 403):
            return self._unavailable(f"refused the API key ({status})")
        body = e.content[:200].decode("utf-8", "replace")
        return self._unavailable(f"answered {status} {e.reason_phrase}: {body}")

    # -- the sidecar of configs ----------------------------------------------------------------
    def _ensure_configs(self) -> None:
        with self._lock:
            if self._configs_ready:
                return
            if not self.run(lambda c: c.collection_exists(self.configs)):
                try:
                    self.run(
                        lambda c: c.create_collection(self.configs, vectors_config={}),
                        self.configs,
                    )
                except CollectionError as e:  # another replica created it meanwhile
                    if e.code != "collection_exists":
                        raise
            self._configs_ready = True

    def _config(self, name: str) -> CollectionConfig | None:
        """The stored config of `name`, None if there is none; "collection_corrupt" if it is
        unreadable."""
        self._ensure_configs()
        found = self.run(lambda c: c.retrieve(self.configs, [point_id(name)], with_payload=True))
        if not found:
            return None
        try:
            return CollectionConfig.parse(found[0].payload or {})
        except ValueError as e:
            raise CollectionError("collection_corrupt", f"collection {name!r}: {e}") from e

    def _exists(self, name: str) -> bool:
        return self.run(lambda c: c.collection_exists(self.qname(name)))

    def _survey(self) -> tuple[dict[str, CollectionConfig], dict[str, str]]:
        """(the configs of collections that serve, problems: name -> why not)."""
        self._ensure_configs()
        ours = f"{self.config.prefix}-"
        present = {
            c.name[len(ours) :]
            for c in self.run(lambda c: c.get_collections()).collections
            if c.name.startswith(ours)
        }
        configs, problems = self._stored_configs()
        for name in sorted(set(configs) - present):
            problems[name] = (
                f"collection {name!r} has its config but no Qdrant collection "
                f"{self.qname(name)!r} (an interrupted drop?): drop it, then create it again"
            )
            del configs[name]
        for name in sorted(present - set(configs) - set(problems)):
            problems[name] = (
                f"the Qdrant collection {self.qname(name)!r} has no config (an interrupted "
                "create, or an import under way or cut short?): drop it, then create it again"
            )
        return configs, problems

    def _stored_configs(self) -> tuple[dict[str, CollectionConfig], dict[str, str]]:
        configs: dict[str, CollectionConfig] = {}
        problems: dict[str, str] = {}
        for r in scroll_all(self.run, self.configs):
            payload = r.payload or {}
            name = str(payload.get("name", r.id))
            try:
                configs[name] = CollectionConfig.parse(payload)
            except ValueError as e:
                problems[name] = f"collection {name!r}: {e}"
        return configs, problems

    def info_of(self, cfg: CollectionConfig) -> CollectionInfo:
        qname = self.qname(cfg.name)
        state = self.run(lambda c: c.get_collection(qname), cfg.name).status
        count = self.run(lambda c: c.count(qname, exact=True), cfg.name).count
        status = {
            models.CollectionStatus.RED: "failed",
            models.CollectionStatus.YELLOW: "optimizing",
        }
        return CollectionInfo(
            cfg.name,
            cfg.model_id,
            cfg.dim,
            count,
            cfg.spec,
            "flat" if cfg.spec.kind == "flat" else "hnsw",
            cfg.created_at,
            status.get(state, "ok"),
        )

    def ensure_indexes(self, cfg: CollectionConfig, where: Filter) -> None:
        """Payload indexes for the keys `where` tests, created once per collection.

        Built in the background on a server (wait=False): searches meanwhile are correct,
        only slower. Local mode has no payload indexes; the call is made all the same."""
        qname = self.qname(cfg.name)
        for key, schema in index_schemas(where).items():
            tag = (qname, cfg.created_at, key)
            if tag in self._indexed:
                continue
            self.run(partial(self._create_index, qname=qname, key=key, schema=schema), cfg.name)
            self._indexed.add(tag)

    def _create_index(
        self, c: QdrantClient, qname: str, key: str, schema: models.PayloadSchemaType
    ) -> None:
        try:
            with warnings.catch_warnings():
                # local mode warns that it has no payload indexes: known, and harmless
                warnings.filterwarnings("ignore", "Payload indexes have no effect", UserWarning)
                c.create_payload_index(qname, field_name=key, field_schema=schema, wait=False)
        except UnexpectedResponse as e:
            # a key indexed with another type already, say: searches stay correct
            if e.status_code is None or not 400 <= e.status_code < 500 or e.status_code == 404:
                raise
            log.warning("Qdrant collection %s: no %s index on %s (%s)", qname, schema, key, e)

    # -- the interface ------------------------------------------------------------------------
    def create(
        self, name: str, model_id: str, dim: int, spec: IndexSpec | None = None
    ) -> CollectionInfo:
        cfg = self._create_unlisted(name, model_id, dim, spec)
        self._list(cfg)
        return self.info_of(cfg)

    def create_filled(
        self, name: str, model_id: str, dim: int, spec: IndexSpec | None, batches: Iterable[Batch]
    ) -> int:
        """The Qdrant collection is filled before its config is written: until then the
        name is not listed (and a crash part-way leaves it in `problems`, never served).
        On any failure the Qdrant collection is deleted again."""
        cfg = self._create_unlisted(name, model_id, dim, spec)
        try:
            handle = QdrantCollection(self, cfg)  # its upsert checks every item (check_batch)
            written = sum(handle.upsert(*batch) for batch in batches)
            self._list(cfg)
        except BaseException:
            with contextlib.suppress(Exception):  # unreachable now: `problems` will say so
                self.run(lambda c: c.delete_collection(self.qname(name)), name)
            raise
        return written

    def _create_unlisted(
        self, name: str, model_id: str, dim: int, spec: IndexSpec | None
    ) -> CollectionConfig:
        """Step 1 of a create: the Qdrant collection, without the config that lists it."""
        spec = check_new(name, dim, spec)
        rules.check_new_collection(name, self.aliases())
        if self._config(name) is not None or self._exists(name):
            raise CollectionError("collection_exists", f"collection {name!r} already exists")
        flat = spec.kind == "flat"
        self.run(
            lambda c: c.create_collection(
                self.qname(name),
                vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
                hnsw_config=models.HnswConfigDiff(
                    m=0 if flat else spec.m, ef_construct=spec.ef_construction
                ),
                quantization_config=_quantization(spec),
            ),
            name,
        )
        return CollectionConfig(
            name, model_id, dim, spec, datetime.now(UTC).isoformat(timespec="seconds")
        )

    def _list(self, cfg: CollectionConfig) -> None:
        """Step 2 of a create: the config point, which makes the collection listed."""
        point = models.PointStruct(id=point_id(cfg.name), vector={}, payload=cfg.payload())
        self.write(lambda c: c.upsert(self.configs, points=[point], wait=True), None)

    def drop(self, name: str) -> None:
        check_name(name)
        # first: Qdrant takes an alias for its collection, and would drop that collection
        rules.check_drop(name, self.aliases())
        try:
            has_config = self._config(name) is not None
        except CollectionError as e:  # an unreadable config is dropped all the same
            has_config = e.code == "collection_corrupt"
            if not has_config:
                raise
        has_collection = self._exists(name)
        if not (has_config or has_collection):
            raise _not_found(name)
        if has_config:  # first: the name stops being listed at once
            sel = models.PointIdsList(points=[point_id(name)])
            self.write(lambda c: c.delete(self.configs, points_selector=sel, wait=True), None)
        if has_collection:
            self.run(lambda c: c.delete_collection(self.qname(name)), name)
        with self._lock:
            self._indexed = {t for t in self._indexed if t[0] != self.qname(name)}

    def list(self) -> list[CollectionInfo]:
        configs, _ = self._survey()
        out = []
        for name in sorted(configs):
            try:
                out.append(self.info_of(configs[name]))
            except CollectionError as e:  # dropped by another replica meanwhile
                if e.code != "collection_not_found":
                    raise
        return out

    def get(self, name: str) -> QdrantCollection:
        check_name(name)
        cfg = self._config(name)
        if cfg is None:  # an alias? (asked only then: a collection's name costs no request)
            target = self.aliases().get(name)
            if target is not None:
                return self.get(target)
        exists = self._exists(name)
        if cfg is None and not exists:
            raise _not_found(name)
        if cfg is None or not exists:
            why = self._survey()[1].get(name, f"collection {name!r} is incomplete")
            raise CollectionError("collection_corrupt", why)
        return QdrantCollection(self, cfg)

    # -- aliases --------------------------------------------------------------------------------
    def aliases(self) -> dict[str, str]:
        ours = f"{self.config.prefix}-"
        found = self.run(lambda c: c.get_aliases()).aliases
        return {
            a.alias_name[len(ours) :]: a.collection_name[len(ours) :]
            for a in found
            if a.alias_name.startswith(ours) and a.collection_name.startswith(ours)
        }

    def set_alias(self, alias: str, name: str) -> str | None:
        with self._alias_lock:  # checked, then changed, with no change of ours between
            now = self.aliases()
            configs, problems = self._survey()
            rules.check_set(alias, name, set(configs) | set(problems), now)
            ops: list[models.AliasOperations] = []
            if alias in now:  # in the same request: Qdrant switches it in one step
                ops.append(_delete_alias(self.qname(alias)))
            ops.append(
                models.CreateAliasOperation(
                    create_alias=models.CreateAlias(
                        collection_name=self.qname(name), alias_name=self.qname(alias)
                    )
                )
            )
            self.run(lambda c: c.update_collection_aliases(change_aliases_operations=ops), name)
            return now.get(alias)

    def remove_alias(self, alias: str) -> str:
        with self._alias_lock:
            name = rules.check_remove(alias, self.aliases())
            ops = [_delete_alias(self.qname(alias))]
            self.run(lambda c: c.update_collection_aliases(change_aliases_operations=ops))
            return name

    @property
    def problems(self) -> dict[str, str]:
        return self._survey()[1]

    def ping(self) -> None:
        self.run(lambda c: c.get_collections())

    def close(self) -> None:
        with self._calls:
            self.client.close()


def _quantization(spec: IndexSpec) -> models.QuantizationConfig | None:
    """Qdrant's counterpart of a compressed kind (None: full vectors only)."""
    if spec.kind == "hnsw_sq8":
        return models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, always_ram=True)
        )
    if spec.kind == "ivfpq":
        return models.ProductQuantization(
            product=models.ProductQuantizationConfig(
                compression=models.CompressionRatio.X16, always_ram=True
            )
        )
    return None


def _delete_alias(qalias: str) -> models.DeleteAliasOperation:
    return models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=qalias))


def _not_found(name: str) -> CollectionError:
    return CollectionError("collection_not_found", f"no collection named {name!r}")
