"""What each Ray actor of `contrastive embed --ray` runs: one encoder, and per batch the
same decode (job.prepare) and encode (encoder.encode_image_tensors) as the one-machine job.

Items travel as plain columns (`item_columns`, `item_of`), so that a worker needs only
this package and the input files, which it reads at the same paths as the driver (a
shared filesystem or an object-store mount).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrastkit.service.commands.embed.job import Decoded, decode_on_device, decoded, prepare
from contrastkit.service.commands.embed.sources import Item, Skip

# the columns of an item (input) and of a result (output); "" where a value is absent, so
# that every column has one type (no nulls: offsets stay integers); caption keeps None
ITEM_COLUMNS = ("id", "source", "path", "shard", "offset", "size", "caption")
RESULT_COLUMNS = ("id", "vector", "source", "metadata", "skip_reason", "skip_detail")


def item_columns(item: Item) -> dict[str, Any]:
    """An Item -> one row of the input dataset (str/int values; caption str or None)."""
    shard, offset, size = item.where if item.where is not None else ("", -1, -1)
    return {
        "id": item.id,
        "source": item.source,
        "path": str(item.path) if item.path is not None else "",
        "shard": shard,
        "offset": offset,
        "size": size,
        "caption": item.caption,
    }


def item_of(row: dict[str, Any]) -> Item:
    """The inverse of item_columns."""
    where = (row["shard"], int(row["offset"]), int(row["size"])) if row["shard"] else None
    return Item(
        id=row["id"],
        source=row["source"],
        path=Path(row["path"]) if row["path"] else None,
        where=where,
        caption=row["caption"],
    )


class EncodeBatch:
    """The callable class of `map_batches`: Ray builds one per actor, so each actor (each
    GPU, when the cluster has them) loads the model once and keeps it."""

    def __init__(
        self,
        model: str,
        pretrained: str | None,
        device: str | None,
        model_id: str,
        max_pixels: int,
        workers: int | None,
        device_decode: str = "auto",
    ) -> None:
        from contrastkit.training.encoders import load_encoder

        self.encoder = load_encoder(model, pretrained, device)
        if self.encoder.model_id != model_id:
            # a worker whose copy of the model differs from the driver's would mix two
            # models' vectors in one output folder
            raise ValueError(
                f"this worker loaded {self.encoder.model_id!r}, the driver {model_id!r}: "
                "every node must see the same model files"
            )
        self.max_pixels = max_pixels
        # as on one machine: plain JPEGs decoded on this actor's GPU (auto), batched
        cuda = self.encoder.device.type == "cuda"
        self.device_decode = device_decode == "on" or (device_decode == "auto" and cuda)
        # decode threads in this actor (PIL releases the GIL), as --workers on one machine
        self.workers = workers or min(8, os.cpu_count() or 1)

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        """A pyarrow Table of b items (ITEM_COLUMNS) -> RESULT_COLUMNS: b ids, float32
        [b, d] unit vectors (zeros for a skipped item), sources, metadata JSON, and the
        skip reason and detail ("" for an embedded item)."""
        items = [item_of(row) for row in batch.to_pylist()]
        results = [r for _, r in decoded(items, self._prepare, self.workers, len(items))]
        return self.columns(items, results)

    def _prepare(self, item: Item) -> Decoded | Skip:
        return prepare(item, self.encoder, self.max_pixels, self.device_decode)

    def columns(
        self, items: Sequence[Item], results: Sequence[Decoded | Skip]
    ) -> dict[str, np.ndarray]:
        """The output columns of one batch (see __call__); one model call for the batch."""
        results = self._on_device(items, results)
        vectors = np.zeros((len(items), self.encoder.embed_dim), np.float32)
        good = [i for i, r in enumerate(results) if isinstance(r, Decoded)]
        if good:
            pixels = torch.stack([_pixels(results[i]) for i in good])
            encoded = self.encoder.encode_image_tensors(pixels).numpy().astype(np.float32)
            vectors[good] = encoded
        skips = [r if isinstance(r, Skip) else None for r in results]
        return {
            "id": _strings(item.id for item in items),
            "vector": vectors,
            "source": _strings(item.source for item in items),
            "metadata": _strings(
                json.dumps(r.metadata) if isinstance(r, Decoded) else "" for r in results
            ),
            "skip_reason": _strings(s.reason if s else "" for s in skips),
            "skip_detail": _strings(s.detail if s else "" for s in skips),
        }

    def _on_device(
        self, items: Sequence[Item], results: Sequence[Decoded | Skip]
    ) -> list[Decoded | Skip]:
        """The results with their JPEG files decoded on the device (job.decode_on_device),
        a file that no decoder reads turned into its Skip, in place."""
        good = [i for i, r in enumerate(results) if isinstance(r, Decoded)]
        pairs = [(items[i], _decoded(results[i])) for i in good]
        kept, skips = decode_on_device(self.encoder, self.max_pixels, pairs)
        out = list(results)
        done = {item.id: d for item, d in kept} | {s.id: s for s in skips}
        for i in good:
            out[i] = done[items[i].id]
        return out


def _decoded(result: Decoded | Skip) -> Decoded:
    assert isinstance(result, Decoded)
    return result


def _pixels(result: Decoded | Skip) -> torch.Tensor:
    assert isinstance(result, Decoded)
    return result.pixels


def _strings(values: Any) -> np.ndarray:
    """A 1-d numpy array of Python strings (Ray Data stores it as an Arrow string column)."""
    return np.array(list(values), dtype=object)
