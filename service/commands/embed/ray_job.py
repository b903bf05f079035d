"""`contrastive embed --ray`: the same job on a Ray cluster, with Ray Data.

The driver (this process) lists the input and drops the ids already committed, exactly as
the one-machine job does; the remaining items become a Ray Dataset of plain columns, and
`map_batches` runs them through a pool of actors, one encoder each (one GPU each when the
cluster has GPUs; see contrastkit.service.commands.embed.ray_encoder). The driver takes the results
as they stream back and commits them through the same PartWriter (Job._flush), so parts,
manifest, summary, skips and resume are those of the one-machine job; only the order of
the items within and across parts may differ.

Ray is imported on first use: only `--ray` needs it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from contrastkit.service.commands.embed import CPU_ACTORS
from contrastkit.service.commands.embed.job import Job, Options, PartHook
from contrastkit.service.commands.embed.parquet import PartWriter
from contrastkit.service.commands.embed.sources import InputError, Item, Skip

if TYPE_CHECKING:
    from contrastkit.training.encoders import Encoder

NEEDS_RAY = "--ray needs Ray Data: pip install 'contrastkit[ray]'"


def import_ray() -> Any:
    """The ray module, with Ray Data loaded; InputError (one line) when it is missing."""
    try:
        import ray
        import ray.data  # the extra is ray[data] (pyarrow, pandas, ...)
    except ImportError as e:
        raise InputError(NEEDS_RAY) from e
    return ray


@contextmanager
def ray_session(address: str) -> Iterator[Any]:
    """Ray, joined or started at `address` (as ray.init takes it: "auto", "local",
    "HOST:PORT", "ray://HOST:10001") and shut down afterwards, unless this process had
    already initialised Ray (a notebook, a test): then that session is used and kept."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address)
        except (OSError, ValueError, RuntimeError) as e:  # ConnectionError is an OSError
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise InputError(f"--ray {address}: could not join a Ray cluster: {first}") from e
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


@dataclass(frozen=True)
class RayPlan:
    """The Ray side of a run: how many encoder actors (None: one per GPU of the cluster,
    else CPU_ACTORS), images per model batch (None: 256 on GPUs, else 64), and what each
    actor loads (model, pretrained, device) and how it decodes (pixel limit, decode
    threads per actor; None: the node's CPU count, at most 8; JPEGs on the device)."""

    actors: int | None
    batch: int | None
    model: str
    pretrained: str | None
    device: str | None
    max_pixels: int
    workers: int | None
    device_decode: str = "auto"  # as --device-decode, decided by each actor's device


class RayJob(Job):
    """Job.run over a Ray cluster; everything after the model call (rows, skips, parts,
    max_parts, the bar, on_part) is Job's own. `encoder` is the driver's copy, on the CPU:
    it names the model (job.json, the summary); the actors do the embedding."""

    def __init__(
        self,
        encoder: Encoder,
        writer: PartWriter,
        options: Options,
        plan: RayPlan,
        bar: Any = None,
        on_part: PartHook | None = None,
    ) -> None:
        super().__init__(encoder, writer, options, bar, on_part)
        self.plan = plan

    def run(self, items: Sequence[Item]) -> bool:
        """Embed every item on the cluster (ray_session's) -> True when all were done,
        False when max_parts stopped it."""
        if not items:
            return self._flush(final=True)
        start = time.perf_counter()
        dataset = self._dataset(import_ray(), items)
        batches = iter(dataset.iter_batches(batch_size=None, batch_format="numpy"))
        try:
            for batch in batches:
                self._take(batch)
                if not self._flush(final=False):
                    return False
            return self._flush(final=True)
        finally:
            # a --max-parts stop: end the streaming execution (and its actors) now, not
            # when the iterator happens to be collected
            getattr(batches, "close", lambda: None)()
            self.seconds += time.perf_counter() - start

    def _dataset(self, ray: Any, items: Sequence[Item]) -> Any:
        """The items (as ray_encoder.ITEM_COLUMNS) mapped through the encoder actors."""
        from contrastkit.service.commands.embed.ray_encoder import EncodeBatch, item_columns

        gpus = int(ray.cluster_resources().get("GPU", 0))
        actors = self.plan.actors or gpus or CPU_ACTORS
        batch = self.plan.batch or (256 if gpus else 64)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the command's own bar counts the items
        # one block per model batch: blocks are what Ray hands out to the actors
        blocks = max(1, math.ceil(len(items) / batch))
        rows = [item_columns(item) for item in items]
        source = ray.data.from_items(rows, override_num_blocks=blocks)
        return source.map_batches(
            EncodeBatch,
            fn_constructor_kwargs={
                "model": self.plan.model,
                "pretrained": self.plan.pretrained,
                "device": self.plan.device,
                "model_id": self.encoder.model_id,
                "max_pixels": self.plan.max_pixels,
                "workers": self.plan.workers,
                "device_decode": self.plan.device_decode,
            },
            batch_size=batch,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            # a GPU per actor where there are GPUs; else one CPU each (Ray's default)
            num_gpus=1 if gpus else None,
        )

    def _take(self, batch: dict[str, np.ndarray]) -> None:
        """One result batch (ray_encoder.RESULT_COLUMNS, b rows) -> embedded rows queued
        for the next part, skipped items to its manifest line."""
        reasons = batch["skip_reason"]
        for i in np.flatnonzero(reasons != ""):
            self.skips.append(
                Skip(str(batch["id"][i]), str(reasons[i]), str(batch["skip_detail"][i]))
            )
        good = np.flatnonzero(reasons == "")
        if len(good):
            self.rows.ids += [str(batch["id"][i]) for i in good]
            self.rows.sources += [str(batch["source"][i]) for i in good]
            self.rows.metadata += [json.loads(batch["metadata"][i]) for i in good]
            self.rows.vectors.append(np.asarray(batch["vector"][good], np.float32))
            self.embedded += len(good)
        if self.bar is not None:
            self.bar.update(len(reasons))
