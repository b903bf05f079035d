"""The output folder of `contrastive embed`: numbered parquet parts and the manifest that
makes a job resumable.

    OUT/job.json            the model the vectors come from (a restart must use the same)
    OUT/part-00000.parquet  id: string, vector: list<float32> (unit L2), source: string,
                            metadata: string (a JSON object: width, height, bytes, caption)
    OUT/manifest.jsonl      one line per committed part: its file, ids, and skipped items
    OUT/embed-summary.json  written at the end (contrastkit.service.commands.embed.report)

A part is written to a temporary name, fsynced and renamed into place; only then is its
manifest line appended. So a kill at any moment leaves each part either counted (its line
is there) or not (a restart writes it again, under the same number, over any file that
made it into place without its line). A line cut short by a kill is dropped on reopening.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contrastkit.service.commands.embed.sources import InputError, Skip

MANIFEST = "manifest.jsonl"
JOB = "job.json"


def pyarrow_parquet() -> Any:
    """pyarrow.parquet, imported on first use: only this command needs it."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise InputError(
            "parquet needs pyarrow: install contrastkit[embed] (pip install 'contrastkit[embed]')"
        ) from e
    return pq


@dataclass
class Rows:
    """Embedded items waiting for their part: ids, sources, metadata, and [n, d] vectors."""

    ids: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    metadata: list[dict[str, Any]] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)  # float32 [b, d] blocks

    def __len__(self) -> int:
        return len(self.ids)

    def matrix(self) -> np.ndarray:
        """float32 [n, d]."""
        return np.concatenate(self.vectors) if self.vectors else np.zeros((0, 0), np.float32)

    def split(self, n: int) -> tuple[Rows, Rows]:
        """(the first n rows, the rest)."""
        m = self.matrix()
        head = Rows(self.ids[:n], self.sources[:n], self.metadata[:n], [m[:n]])
        return head, Rows(self.ids[n:], self.sources[n:], self.metadata[n:], [m[n:]])


class PartWriter:
    """Writes numbered parts into `folder` and remembers which ids are done. `sink`, when
    given, gets each part's rows before the part is counted (a collection to fill): a kill
    between the two sends the part again, which an upsert by id takes as a no-op."""

    def __init__(
        self,
        folder: Path,
        model_id: str,
        embed_dim: int,
        sink: Callable[[Rows], None] | None = None,
    ) -> None:
        self.folder, self.sink = folder, sink
        folder.mkdir(parents=True, exist_ok=True)
        self._check_job(model_id, embed_dim)
        self.parts: list[dict[str, Any]] = _read_manifest(folder / MANIFEST)
        self.done: set[str] = {i for p in self.parts for i in p["ids"]}
        self.done.update(s[0] for p in self.parts for s in p["skipped"])
        for tmp in folder.glob("*.tmp"):  # left by a kill mid-write
            tmp.unlink()

    def _check_job(self, model_id: str, embed_dim: int) -> None:
        """Refuse to mix vectors of two models in one output folder."""
        path = self.folder / JOB
        job = {"model_id": model_id, "embed_dim": embed_dim}
        if path.exists():
            old = json.loads(path.read_text())
            if old != job:
                raise InputError(
                    f"{self.folder} holds embeddings of {old['model_id']!r} "
                    f"(dim {old['embed_dim']}), not of {model_id!r}: use another --out"
                )
        else:
            write_atomic(path, json.dumps(job).encode())

    def commit(self, rows: Rows, skipped: list[Skip]) -> str | None:
        """Write `rows` as the next part, then count it (and `skipped`) as done -> the
        part's file name (None when it has no rows: only skips were recorded)."""
        number = len(self.parts)
        name = f"part-{number:05d}.parquet" if len(rows) else None
        if name is not None:
            write_atomic(self.folder / name, _parquet_bytes(rows))
        if self.sink is not None and len(rows):
            self.sink(rows)
        entry = {
            "part": number,
            "file": name,
            "ids": rows.ids,
            "skipped": [[s.id, s.reason, s.detail] for s in skipped],
        }
        with open(self.folder / MANIFEST, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.parts.append(entry)
        self.done.update(rows.ids)
        self.done.update(s.id for s in skipped)
        return name

    @property
    def rows(self) -> int:
        """Rows in every committed part."""
        return sum(len(p["ids"]) for p in self.parts)

    def skipped(self) -> list[Skip]:
        """Every skip recorded in the manifest, earlier runs' included."""
        return [Skip(*s) for p in self.parts for s in p["skipped"]]


def _parquet_bytes(rows: Rows) -> bytes:
    """Rows -> one parquet file's bytes (the schema in the module docstring)."""
    import pyarrow as pa

    pq = pyarrow_parquet()
    matrix = rows.matrix().astype(np.float32, copy=False)
    n, d = matrix.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    vectors = pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1)))
    table = pa.table(
        {
            "id": pa.array(rows.ids, pa.string()),
            "vector": vectors,
            "source": pa.array(rows.sources, pa.string()),
            "metadata": pa.array([json.dumps(m) for m in rows.metadata], pa.string()),
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to path.tmp, fsync, rename over `path`: readers see all or nothing."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_manifest(path: Path) -> list[dict[str, Any]]:
    """The committed parts; a last line cut short by a kill is dropped (and cut from the
    file, so that the next line appended starts on a line of its own)."""
    if not path.exists():
        return []
    parts: list[dict[str, Any]] = []
    good = 0
    with open(path, "rb") as f:
        for line in f:
            try:
                parts.append(json.loads(line))
            except ValueError:
                break
            if not line.endswith(b"\n"):
                parts.pop()
                break
            good += len(line)
    if good != path.stat().st_size:
        os.truncate(path, good)
    return parts


def read_parts(folder: Path) -> Any:
    """Every committed part of an output folder as one pyarrow Table (for tests, checks)."""
    import pyarrow as pa

    pq = pyarrow_parquet()
    files = [p["file"] for p in _read_manifest(folder / MANIFEST) if p["file"]]
    tables = [pq.read_table(folder / f) for f in files]
    return pa.concat_tables(tables) if tables else None
