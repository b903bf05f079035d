"""Value types and errors of the collection store (no FAISS, no I/O here)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from contrastkit.service.domain_errors import DomainError

IndexKind = Literal["auto", "flat", "ivf", "hnsw", "ivfpq", "hnsw_sq8"]
INDEX_KINDS: tuple[str, ...] = get_args(IndexKind)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")  # \Z: no final line break
MAX_ID_CHARS = 256
MAX_DIM = 65_536  # the largest collection dimension (real embedding models: 32 to 4096)


class CollectionError(DomainError):
    """A store error: a stable code and a message (contrastkit.service.errors gives it a status)."""


def check_name(name: str) -> str:
    """Collection names become folder names: letters, digits, '_', '.', '-'; no '..'."""
    if not NAME_RE.match(name) or ".." in name:
        raise CollectionError(
            "invalid_name",
            f"invalid collection name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit",
        )
    return name


def check_new(name: str, dim: int, spec: IndexSpec | None) -> IndexSpec:
    """Validate a collection to be created; its index spec (the default when None)."""
    check_name(name)
    if dim < 1:
        raise CollectionError("invalid_dimension", "dim must be positive")
    if dim > MAX_DIM:  # before anything sized by it is allocated
        raise CollectionError("invalid_dimension", f"dim {dim} is too large: at most {MAX_DIM}")
    spec = spec or IndexSpec()
    if spec.kind == "ivfpq" and spec.pq_m is not None and dim % spec.pq_m:
        raise CollectionError(
            "invalid_dimension",
            f"pq_m {spec.pq_m} must divide the dimension {dim} (each sub-vector is a slice)",
        )
    return spec


@dataclass
class IndexSpec:
    """Which FAISS index a collection uses, and its parameters.

    kind "auto": exact (flat) search until `auto_threshold` vectors, then HNSW.
    IVF: `nlist` lists (default: ~4*sqrt(n) when trained), `nprobe` searched.
    HNSW: `m` links per node, `ef_construction`, `ef_search`.
    Compressed, for collections that outgrow memory (exact until enough vectors to train):
    "ivfpq": IVF over product-quantised codes, `pq_m` bytes per vector (default: dim/8
    rounded to a divisor of dim; 384-d: 48 bytes instead of 1,536); "hnsw_sq8": HNSW over
    8-bit scalar codes (4x smaller). Both give `refine` x k candidates, ranked again by the
    exact inner product with the stored vectors, so scores are exact.
    """

    kind: IndexKind = "auto"
    auto_threshold: int = 50_000
    nlist: int | None = None
    nprobe: int = 32
    m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    pq_m: int | None = None
    refine: int = 16  # compressed kinds: exact re-ranking of refine * k candidates (0: none)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexSpec:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Hit:
    id: str
    score: float  # inner product of unit vectors = cosine similarity
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str | None = None  # where the item came from, when it was stored with one


@dataclass
class CollectionInfo:
    name: str
    model_id: str
    dim: int
    count: int
    index: IndexSpec
    active_index: str  # "flat", "ivf" or "hnsw": what serves searches now
    created_at: str
    # "ok"; "rebuilt_from_log" (recovered from the previous snapshot and the logs); or
    # "disk_full": opened read-only, writes answer 507 until the disk has space again
    status: str = "ok"
    log_records: int = 0  # records in the log since the last snapshot

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["index"] = self.index.to_dict()
        return d
