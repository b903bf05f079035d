"""Collections in Qdrant, behind the CollectionBackend interface (service.index.backend).

With a Qdrant server the service keeps no collection state of its own: any number of
replicas can serve the same collections. qdrant-client's embedded local mode (a folder, or
memory) runs the same code offline, for tests and trials; it is exact brute force, pickles
points into its SQLite file, and is meant for small collections only.

How collections map onto Qdrant (prefix "contrastive" by default):

- collection NAME is the Qdrant collection "contrastive-NAME": cosine distance over the
  unit vectors, so a score is the inner product, as FAISS's on the same vectors;
- its model id, dimension, index spec and creation time are a point of the vectorless
  collection "contrastive_collections" (a sidecar, which any Qdrant version has, rather
  than per-collection metadata, which needs Qdrant >= 1.16). `create` makes the collection
  first and then its config; `drop` removes the config first. A crash between the two
  steps leaves a collection without its config, or a config without its collection: both
  are listed in `problems` and a `drop` of the name clears them;
- item id ID is the point uuid5(ID_NAMESPACE, ID) (stable across runs and replicas; the
  namespace must never change), and the payload is {"_id": ID, "meta": METADATA,
  "_keys": [METADATA's keys]}: user keys live under "meta", so none can collide with ours;
- a filter becomes a Qdrant filter on "meta.FIELD" ("$exists" tests "_keys", which is
  exact where Qdrant's is-empty test would also count null and []). Qdrant matches an
  array by any element and service.index.filters never does, so what comes back is
  checked once more with `Filter.matches`, fetching more until k hits pass. Payload
  indexes are created for the fields filtered on (keyword, float or bool, from the value).

IndexSpec: "flat" is exact search (no HNSW graph); every other kind is Qdrant's HNSW with
`m`, `ef_construction` and `ef_search` (IVF has no Qdrant counterpart and maps to HNSW).
The compressed kinds keep their meaning: "hnsw_sq8" adds Qdrant's int8 scalar
quantisation, "ivfpq" its product quantisation (x16); Qdrant rescores with the originals.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from service.index.backend import (
    Item,
    Page,
    Where,
    as_filter,
    check_batch,
    check_page_limit,
    check_queries,
    last_occurrences,
    require_conditions,
)
from service.index.filters import Condition, Filter, is_number
from service.index.types import (
    CollectionError,
    CollectionInfo,
    Hit,
    IndexSpec,
    check_name,
    check_new,
)

log = logging.getLogger("contrastive.index")
T = TypeVar("T")

ID_NAMESPACE = uuid.UUID("7d1f5a3e-3c49-5f0b-9a64-5b0c2f6a8e11")  # never change: maps stored ids
ID_KEY, META_KEY, KEYS_KEY = "_id", "meta", "_keys"
FORMAT_VERSION = 1
# no "-" in a prefix: so no prefix's collections ("P-name") look like another prefix's
PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]{0,31}$")
PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")  # payload keys Qdrant's path syntax takes unquoted
RETRY_AFTER_S = 5
PAGE = 1000  # points per scroll or delete request of our own
URL_ENV, KEY_ENV = "CONTRASTIVE_QDRANT_URL", "CONTRASTIVE_QDRANT_API_KEY"


def point_id(id_: str) -> str:
    """The Qdrant point id of an item id (or of a collection's config point)."""
    return str(uuid.uuid5(ID_NAMESPACE, id_))


@dataclass(frozen=True)
class QdrantConfig:
    """Where the collections live: a server (`url`), else local mode in `path`, else memory.

    timeout: seconds per request (connecting included). prefix: namespaces our Qdrant
    collections, so a shared server can hold other applications' too."""

    url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    path: Path | None = None
    timeout: int = 10
    prefix: str = "contrastive"
    upsert_batch: int = 512

    def __post_init__(self) -> None:
        if self.url is not None and self.path is not None:
            raise ValueError("give a Qdrant url or a local path, not both")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"the Qdrant url must start with http:// or https://: {self.url!r}")
        if not PREFIX_RE.match(self.prefix):
            raise ValueError(f"invalid Qdrant collection prefix {self.prefix!r}")
        if self.timeout < 1 or self.upsert_batch < 1:
            raise ValueError("timeout and upsert_batch must be at least 1")

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] = os.environ, path: Path | None = None
    ) -> QdrantConfig:
        """CONTRASTIVE_QDRANT_URL and CONTRASTIVE_QDRANT_API_KEY; without a url, local mode
        in `path` (or memory)."""
        url = env.get(URL_ENV) or None
        return cls(url=url, api_key=env.get(KEY_ENV) or None, path=None if url else path)

    @property
    def where(self) -> str:
        """Where the data is, for messages (never the key)."""
        if self.url:
            return self.url
        return f"local Qdrant storage {self.path}" if self.path else "in-memory local Qdrant"

    def client(self) -> QdrantClient:
        """A client; no request is made until the first call."""
        if self.url:
            return QdrantClient(
                url=self.url, api_key=self.api_key, timeout=self.timeout, check_compatibility=False
            )
        if self.path:
            return QdrantClient(path=str(self.path))
        return QdrantClient(location=":memory:")


# -- filters -> Qdrant ---------------------------------------------------------------------------
def payload_path(name: str) -> str | None:
    """The payload key of metadata field `name`; None when Qdrant's key syntax cannot name
    it (a '"' in the name: the filter then leaves that condition to the exact check)."""
    if PLAIN_KEY.match(name):
        return f"{META_KEY}.{name}"
    return None if '"' in name else f'{META_KEY}."{name}"'


def can_match(where: Filter) -> bool:
    """False when some condition matches nothing (an empty $in)."""
    return all(c.op != "$in" or c.value for c in where.conditions)


def to_qdrant(where: Filter) -> models.Filter:
    """The Qdrant filter of `where`: every item `where` matches passes it (it may pass more,
    e.g. arrays that hold the value, which the caller's `Filter.matches` check removes)."""
    must: list[models.Condition] = []
    must_not: list[models.Condition] = []
    for c in where.conditions:
        if c.op == "$exists":
            has_key = models.FieldCondition(key=KEYS_KEY, match=models.MatchValue(value=c.field))
            (must if c.value else must_not).append(has_key)
            continue
        path = payload_path(c.field)
        if path is not None:
            must.append(_value_condition(path, c))
    return models.Filter(must=must or None, must_not=must_not or None)


def _value_condition(path: str, c: Condition) -> models.Condition:
    if c.op == "$eq":
        return _equals(path, c.value)
    if c.op == "$in":
        return _one_of(path, c.value)
    bound = {c.op[1:]: float(c.value)}  # "$gte" -> gte
    return models.FieldCondition(key=path, range=models.Range(**bound))


def _equals(path: str, value: Any) -> models.FieldCondition:
    # Qdrant's exact match takes no floats and never equates 2 with 2.0; a closed range
    # does, as service.index.filters does
    if is_number(value):
        return models.FieldCondition(key=path, range=models.Range(gte=value, lte=value))
    return models.FieldCondition(key=path, match=models.MatchValue(value=value))


def _one_of(path: str, values: tuple[Any, ...]) -> models.Condition:
    strings = [v for v in values if isinstance(v, str)]
    conds: list[models.Condition] = []
    if strings:
        conds.append(models.FieldCondition(key=path, match=models.MatchAny(any=strings)))
    conds += [_equals(path, v) for v in values if not isinstance(v, str)]
    return conds[0] if len(conds) == 1 else models.Filter(should=conds)


def index_schemas(where: Filter) -> dict[str, models.PayloadSchemaType]:
    """Payload key -> the index type its conditions need (the first value's type wins)."""
    out: dict[str, models.PayloadSchemaType] = {}
    for c in where.conditions:
        if c.op == "$exists":
            out.setdefault(KEYS_KEY, models.PayloadSchemaType.KEYWORD)
            continue
        path = payload_path(c.field)
        values = c.value if c.op == "$in" else (c.value,)
        if path is not None and values:
            out.setdefault(path, _schema_of(values[0]))
    return out


def _schema_of(value: Any) -> models.PayloadSchemaType:
    if isinstance(value, bool):
        return models.PayloadSchemaType.BOOL
    if isinstance(value, str):
        return models.PayloadSchemaType.KEYWORD
    return models.PayloadSchemaType.FLOAT  # ints too: a float index holds both


# -- the collection's config --------------------------------------------------------------------
@dataclass(frozen=True)
class _Config:
    name: str
    model_id: str
    dim: int
    spec: IndexSpec
    created_at: str

    def payload(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "model_id": self.model_id,
            "dim": self.dim,
            "index": self.spec.to_dict(),
            "created_at": self.created_at,
        }

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> _Config:
        """A stored config -> _Config; ValueError saying what is wrong with it."""
        version = payload.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"its config has format_version {version!r}, not {FORMAT_VERSION}")
        try:
            return cls(
                str(payload["name"]),
                str(payload["model_id"]),
                int(payload["dim"]),
                IndexSpec.from_dict(dict(payload["index"])),
                str(payload["created_at"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"its config is unreadable ({type(e).__name__}: {e})") from e

    @property
    def search_params(self) -> models.SearchParams:
        return models.SearchParams(hnsw_ef=self.spec.ef_search, exact=self.spec.kind == "flat")


def _payload(id_: str, meta: dict[str, Any]) -> dict[str, Any]:
    return {ID_KEY: id_, META_KEY: meta, KEYS_KEY: list(meta)}


def _item(payload: dict[str, Any] | None, vector: Any = None) -> Item:
    p = payload or {}
    vec = None if vector is None else np.asarray(vector, np.float32)
    return Item(str(p.get(ID_KEY, "")), dict(p.get(META_KEY) or {}), vec)


def scroll_all(
    run: Callable[[Callable[[QdrantClient], Any]], Any],
    qname: str,
    qfilter: models.Filter | None = None,
) -> Iterator[models.Record]:
    """Every point of Qdrant collection `qname` matching `qfilter`, a page per request.

    run: how one client call is made (the backend's `run`, which maps its errors)."""
    offset: models.ExtendedPointId | None = None
    while True:
        records, offset = run(
            partial(
                QdrantClient.scroll,
                collection_name=qname,
                scroll_filter=qfilter,
                limit=PAGE,
                offset=offset,
                with_payload=True,
            )
        )
        yield from records
        if offset is None:
            return


# -- the collection -----------------------------------------------------------------------------
class QdrantCollection:
    """One collection in Qdrant behind the CollectionHandle interface."""

    def __init__(self, backend: QdrantBackend, config: _Config) -> None:
        self._b = backend
        self._cfg = config
        self.name, self.model_id, self.dim = config.name, config.model_id, config.dim
        self.qname = backend.qname(config.name)

    def _run(self, op: Callable[[QdrantClient], T]) -> T:
        return self._b.run(op, self.name)

    # -- writes ---------------------------------------------------------------------------
    def upsert(self, ids: list[str], vectors: np.ndarray, metadata: list[dict[str, Any]]) -> int:
        vecs = check_batch(ids, vectors, metadata, self.dim)
        keep = last_occurrences(ids)
        # one request per upsert_batch points: a failure part-way leaves the earlier
        # batches written, and a retry of the same upsert converges (it is idempotent)
        step = self._b.config.upsert_batch
        for start in range(0, len(keep), step):
            rows = keep[start : start + step]
            batch = models.Batch(
                ids=[point_id(ids[i]) for i in rows],
                vectors=vecs[rows].tolist(),
                payloads=[_payload(ids[i], metadata[i]) for i in rows],
            )
            self._run(
                partial(QdrantClient.upsert, collection_name=self.qname, points=batch, wait=True)
            )
        return len(keep)

    def delete(self, ids: list[str]) -> int:
        pids = [point_id(i) for i in dict.fromkeys(ids)]
        present: list[models.ExtendedPointId] = []
        for start in range(0, len(pids), PAGE):
            chunk = pids[start : start + PAGE]
            found = self._run(
                partial(
                    QdrantClient.retrieve,
                    collection_name=self.qname,
                    ids=chunk,
                    with_payload=False,
                    with_vectors=False,
                )
            )
            present += [r.id for r in found]
        self._delete_points(present)
        return len(present)

    def delete_where(self, where: Where) -> int:
        f = require_conditions(as_filter(where))
        if not can_match(f):
            return 0
        self._b.ensure_indexes(self._cfg, f)
        # not one transaction: an item written to match while this runs may stay
        doomed = [r.id for r in self._scan(to_qdrant(f)) if f.matches(_item(r.payload).metadata)]
        self._delete_points(doomed)
        return len(doomed)

    def _delete_points(self, pids: list[models.ExtendedPointId]) -> None:
        for start in range(0, len(pids), PAGE):
            sel = models.PointIdsList(points=pids[start : start + PAGE])
            self._run(
                partial(
                    QdrantClient.delete, collection_name=self.qname, points_selector=sel, wait=True
                )
            )

    def _scan(self, qfilter: models.Filter) -> Iterator[models.Record]:
        return scroll_all(partial(self._b.run, name=self.name), self.qname, qfilter)

    # -- reads ----------------------------------------------------------------------------
    def get(self, id_: str) -> Item | None:
        found = self._run(
            lambda c: c.retrieve(self.qname, [point_id(id_)], with_payload=True, with_vectors=True)
        )
        return _item(found[0].payload, found[0].vector) if found else None

    def scroll(self, cursor: str | None = None, limit: int = 100, vectors: bool = False) -> Page:
        check_page_limit(limit)
        offset = _cursor(cursor)
        records, nxt = self._run(
            lambda c: c.scroll(
                self.qname, limit=limit, offset=offset, with_payload=True, with_vectors=vectors
            )
        )
        items = [_item(r.payload, r.vector if vectors else None) for r in records]
        return Page(items, None if nxt is None else str(nxt))

    def search(self, queries: np.ndarray, k: int, where: Where = None) -> list[list[Hit]]:
        """queries float32 [q, dim] -> for each, up to k hits, best first.

        With a filter, each query asks for k points, then 4x more while fewer than k of
        those that came back pass `Filter.matches` and Qdrant had more to give."""
        q = check_queries(queries, k, self.dim)
        f = as_filter(where)
        out: list[list[Hit]] = [[] for _ in range(len(q))]
        if not can_match(f):
            return out
        if f:
            self._b.ensure_indexes(self._cfg, f)
        qfilter = to_qdrant(f) if f else None
        pending, limit = list(range(len(q))), k
        while pending:
            answers = self._query(q[pending], limit, qfilter)
            still = []
            for qi, points in zip(pending, answers, strict=True):
                hits = [_hit(p) for p in points]
                hits = [h for h in hits if f.matches(h.metadata)] if f else hits
                if len(hits) >= k or len(points) < limit:
                    out[qi] = hits[:k]
                else:
                    still.append(qi)
            pending, limit = still, limit * 4
        return out

    def _query(
        self, queries: np.ndarray, limit: int, qfilter: models.Filter | None
    ) -> list[list[models.ScoredPoint]]:
        requests = [
            models.QueryRequest(
                query=row.tolist(),
                filter=qfilter,
                limit=limit,
                params=None if self._b.local else self._cfg.search_params,  # local: exact
                with_payload=True,
            )
            for row in queries
        ]
        answers = self._run(lambda c: c.query_batch_points(self.qname, requests=requests))
        return [a.points for a in answers]

    def count(self) -> int:
        return self._run(lambda c: c.count(self.qname, exact=True)).count

    def info(self) -> CollectionInfo:
        return self._b.info_of(self._cfg)


def _hit(p: models.ScoredPoint) -> Hit:
    item = _item(p.payload)
    return Hit(item.id, float(p.score), item.metadata)


def _cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        return str(uuid.UUID(cursor))
    except ValueError:
        raise CollectionError(
            "invalid_request", f"{cursor!r} is not a scroll cursor of this collection"
        ) from None


# -- the backend --------------------------------------------------------------------------------
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
            raise self._unavailable(f"cannot be reached ({e.source or e})") from e
        except httpx.HTTPError as e:
            raise self._unavailable(f"cannot be reached ({e})") from e
        except UnexpectedResponse as e:
            raise self._answered(e, name) from e
        except ValueError as e:  # local mode says "Collection ... not found" this way
            if self.local and name is not None and "not found" in str(e):
                raise _not_found(name) from e
            raise

    def _unavailable(self, why: str) -> CollectionError:
        return CollectionError(
            "backend_unavailable",
            f"the Qdrant server at {self.config.where} {why}",
            detail={"url": self.config.where},
            retry_after=RETRY_AFTER_S,
        )

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

    def _config(self, name: str) -> _Config | None:
        """The stored config of `name`, None if there is none; "collection_corrupt" if it is
        unreadable."""
        self._ensure_configs()
        found = self.run(lambda c: c.retrieve(self.configs, [point_id(name)], with_payload=True))
        if not found:
            return None
        try:
            return _Config.parse(found[0].payload or {})
        except ValueError as e:
            raise CollectionError("collection_corrupt", f"collection {name!r}: {e}") from e

    def _exists(self, name: str) -> bool:
        return self.run(lambda c: c.collection_exists(self.qname(name)))

    def _survey(self) -> tuple[dict[str, _Config], dict[str, str]]:
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
                "create?): drop it, then create it again"
            )
        return configs, problems

    def _stored_configs(self) -> tuple[dict[str, _Config], dict[str, str]]:
        configs: dict[str, _Config] = {}
        problems: dict[str, str] = {}
        for r in scroll_all(self.run, self.configs):
            payload = r.payload or {}
            name = str(payload.get("name", r.id))
            try:
                configs[name] = _Config.parse(payload)
            except ValueError as e:
                problems[name] = f"collection {name!r}: {e}"
        return configs, problems

    def info_of(self, cfg: _Config) -> CollectionInfo:
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

    def ensure_indexes(self, cfg: _Config, where: Filter) -> None:
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
        spec = check_new(name, dim, spec)
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
        cfg = _Config(name, model_id, dim, spec, datetime.now(UTC).isoformat(timespec="seconds"))
        point = models.PointStruct(id=point_id(name), vector={}, payload=cfg.payload())
        self.run(lambda c: c.upsert(self.configs, points=[point], wait=True))
        return self.info_of(cfg)

    def drop(self, name: str) -> None:
        check_name(name)
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
            self.run(lambda c: c.delete(self.configs, points_selector=sel, wait=True))
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
        exists = self._exists(name)
        if cfg is None and not exists:
            raise _not_found(name)
        if cfg is None or not exists:
            why = self._survey()[1].get(name, f"collection {name!r} is incomplete")
            raise CollectionError("collection_corrupt", why)
        return QdrantCollection(self, cfg)

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


def _not_found(name: str) -> CollectionError:
    return CollectionError("collection_not_found", f"no collection named {name!r}")
