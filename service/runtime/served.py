"""The models the service serves. A server holds one or more (`--model` repeated): the
first is the default, and a request picks another by `model` (its id or reference).

`ServedModel` is one of them over its life (loading, failed, warm); once warm it holds a
`LoadedModel`, its encoder with its own embedders (each with a batcher), made together
and never changed. `ServedModels` finds the one a request names. It is a value: the admin
API (contrastkit.service.runtime.lifecycle) changes the set by putting a new one in its place, so a
request that resolved a model keeps it, whatever happens to the set meanwhile.

All models share the one model thread (contrastkit.service.state): on one device, two threads
would only fight over it; each model batches its own requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from PIL import Image

from contrastkit.service.domain_errors import ModelError
from contrastkit.service.runtime.batcher import Batcher
from contrastkit.service.runtime.device_decode import DevicePixels
from contrastkit.service.runtime.embedding import ImageEmbedder, TextEmbedder
from contrastkit.service.runtime.zeroshot import ClassifierCache
from contrastkit.service.settings import Settings
from contrastkit.training.encoders import IMAGE, TEXT, Encoder, load_encoder, resolve_device

log = logging.getLogger("contrastive.service")

# While a model loads, a line this often says it still does: a 40 s load on a small CPU
# would otherwise look like a hang.
PROGRESS_EVERY_S = 10.0

# (the model's function, its modality, the model's id) -> a started batcher
MakeBatcher = Callable[[Callable[[list[Any]], torch.Tensor], str, str], Batcher[Any]]


@dataclass(frozen=True)
class Pools:
    """What every model shares (contrastkit.service.state owns them)."""

    model: Executor  # the one model thread
    load: Executor  # loads run here, so the models already loaded keep serving
    decode: Executor  # the image decode threads
    max_decoding: int  # images handed to the decode pool at most
    make_batcher: MakeBatcher  # a started batcher on the model thread, with metrics
    decode_threads: int = 1  # the decode pool's threads (admission estimates its rate)


@dataclass(frozen=True)
class LoadedModel:
    """A model once loaded and warm: its encoder and what embeds with it. All four are made
    together (ServedModel.load) and never change, so whoever holds one holds all of them."""

    encoder: Encoder
    images: ImageEmbedder
    texts: TextEmbedder
    classifiers: ClassifierCache  # zero-shot classifiers, made of embedded texts

    @property
    def model_id(self) -> str:
        return self.encoder.model_id

    def require(self, *capabilities: str) -> LoadedModel:
        """This model, or ModelError `missing_capability` naming the first of
        `capabilities` it lacks and what it has instead."""
        have = self.encoder.capabilities
        for capability in capabilities:
            if capability not in have:
                raise ModelError(
                    "missing_capability",
                    f"model {self.model_id!r} has no {capability!r} capability "
                    f"(it has: {', '.join(sorted(have))})",
                )
        return self

    def memory_bytes(self) -> int | None:
        """Bytes of the encoder's parameters and buffers (None: not torch)."""
        return module_bytes(self.encoder)

    @property
    def queued(self) -> int:
        """Items admitted to its batchers and not yet embedded."""
        return self.images.batcher.pending + self.texts.batcher.pending

    def retire(self) -> None:
        """It is no longer served: its batchers finish what they were sent, then stop, so
        that it is freed once the last request using it has its answer."""
        self.images.batcher.retire()
        self.texts.batcher.retire()


@dataclass
class ServedModel:
    """One model over its life: loading, then warm (`loaded`) or failed (`load_error`)."""

    ref: str  # the --model reference: builtin, open_clip:ARCH, an export directory
    pretrained: str | None = None  # open_clip weights (the first model's --pretrained)
    device: str | None = None  # None: the `device` setting (the admin API may name one)
    runtime: str | None = None  # None: the `runtime` setting
    alias: str | None = None  # one more name requests may use (the admin API's `alias`)
    loaded: LoadedModel | None = None  # set once warm
    load_error: str | None = None
    # time.monotonic() when load() began, until it ends (/readyz says how long it has been)
    loading_since: float | None = None
    load_seconds: float | None = None

    @property
    def name(self) -> str:
        """Its id once loaded, its reference until then: how answers name it."""
        return self.loaded.model_id if self.loaded is not None else self.ref

    def answers_to(self, name: str) -> bool:
        """Whether a request's `model` names this one (its reference, id or alias)."""
        return name in self.names

    @property
    def names(self) -> frozenset[str]:
        """Every name a request may use for it: reference, id (once loaded), alias."""
        return frozenset(n for n in (self.ref, self.name, self.alias) if n is not None)

    @property
    def settled(self) -> bool:
        """Its load has ended, warm or failed."""
        return self.loaded is not None or self.load_error is not None

    @property
    def loading_for(self) -> float | None:
        """Seconds the model has been loading, or None when it is not loading."""
        return None if self.loading_since is None else time.monotonic() - self.loading_since

    def loading_reason(self) -> str | None:
        """`loading model REF (N s)` while loading, else None (/readyz's 503 reason)."""
        took = self.loading_for
        return None if took is None else f"loading model {self.ref} ({took:.0f} s)"

    def require(self, *capabilities: str) -> LoadedModel:
        """The loaded model, or ModelError `model_not_ready` (retry in a few seconds); then
        `missing_capability` unless it has every one of `capabilities`."""
        if self.loaded is None:
            msg = self.load_error or self.loading_reason() or f"model {self.ref} is still loading"
            raise ModelError("model_not_ready", msg, retry_after=5)
        return self.loaded.require(*capabilities)

    # -- loading --------------------------------------------------------------------
    async def load(self, s: Settings, pools: Pools, encoder: Encoder | None = None) -> None:
        """Load (unless given) the encoder in the load thread, warm it on the model thread,
        then start its batchers.
        A failure is kept in `load_error` (readiness reports it), never raised."""
        loop = asyncio.get_running_loop()
        self.loading_since = time.monotonic()
        given = encoder is not None  # one built by the caller: no load to report
        device, runtime = self.device or s.device, self.runtime or s.runtime
        if not given:
            log.info("loading model %s on %s…", self.ref, _device_name(device))
        progress = asyncio.create_task(self._log_progress())
        try:
            if encoder is None:
                encoder = await loop.run_in_executor(
                    pools.load, load_encoder, self.ref, self.pretrained, device, runtime
                )
            await loop.run_in_executor(pools.model, _warm_up, encoder)
        except Exception as e:
            self.load_error = f"{type(e).__name__}: {e}"
            log.error("model %r failed to load: %s", self.ref, self.load_error)
            return
        finally:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
            self.load_seconds = self.loading_for
            self.loading_since = None
        if not given:  # the time includes the warm-up forwards: it is the time to ready
            log.info("model %s loaded in %.1f s", self.ref, self.load_seconds or 0.0)
        self._start(encoder, s, pools)

    def _start(self, encoder: Encoder, s: Settings, pools: Pools) -> None:
        on_device = s.device_decode == "on" or (
            s.device_decode == "auto" and encoder.device.type == "cuda"
        )
        images = ImageEmbedder(
            encoder,
            pools.make_batcher(
                _image_batch(encoder, on_device, s.max_image_pixels), IMAGE, encoder.model_id
            ),
            pools.decode,
            s.max_image_pixels,
            pools.max_decoding,
            device_decode=on_device,
            decode_workers=pools.decode_threads,
        )
        if on_device:
            log.info("JPEG uploads to %s are decoded on %s", encoder.model_id, encoder.device)
        texts = TextEmbedder(pools.make_batcher(encoder.encode_texts, TEXT, encoder.model_id))
        classifiers = ClassifierCache(texts, s.classifier_cache)
        self.loaded = LoadedModel(encoder, images, texts, classifiers)
        log.info("model ready: %s (%d-d, %s)", encoder.model_id, encoder.embed_dim, encoder.device)

    async def _log_progress(self) -> None:
        """Every PROGRESS_EVERY_S until cancelled: the model is still loading, for how long."""
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            log.info("%s…", self.loading_reason())

    async def stop(self) -> None:
        if self.loaded is not None:
            await self.loaded.images.batcher.stop()
            await self.loaded.texts.batcher.stop()


@dataclass(frozen=True)
class ServedModels:
    """Every model a server serves, the default first: what a request's `model` picks from.

    `unloaded`: each name of a model the admin API unloaded or replaced (reference, id,
    alias) -> what became of it, so that a request or a collection naming it is told.
    The methods that change the set return a new one (contrastkit.service.runtime.lifecycle).
    """

    all: tuple[ServedModel, ...]
    unloaded: Mapping[str, str] = field(default_factory=dict)

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self.all)

    def __len__(self) -> int:
        return len(self.all)

    @property
    def default(self) -> ServedModel:
        """What a request that names no model gets: the first."""
        return self.all[0]

    def named(self, name: str | None) -> ServedModel:
        """The model a request names (by id or reference; None: the default), or
        ModelError `model_not_found` listing what is served."""
        if name is None:
            return self.default
        found = self.find(name)
        if found is not None:
            return found
        served = ", ".join(repr(n) for n in self.names())
        why = self.unloaded.get(name) or f"model {name!r} is not loaded here"
        raise ModelError(
            "model_not_found",
            f"{why}; this server serves {served} "
            "(omit 'model' for the first, or see GET /v1/models)",
        )

    def find(self, name: str) -> ServedModel | None:
        """The model `name` names (id, reference or alias), else None."""
        return next((m for m in self.all if m.answers_to(name)), None)

    def resolve(self, name: str | None, *capabilities: str) -> LoadedModel:
        """The model a request names, loaded, with `capabilities`: `model_not_found`,
        then `model_not_ready`, then `missing_capability`."""
        return self.named(name).require(*capabilities)

    def in_space(self, model_id: str) -> LoadedModel | None:
        """The loaded model whose id is `model_id` (a collection's space), else None."""
        for model in self.all:
            if model.loaded is not None and model.loaded.model_id == model_id:
                return model.loaded
        return None

    def names(self) -> list[str]:
        """Each model's name: the ids of those loaded, the references of the others."""
        return [m.name for m in self.all]

    # -- changes: each returns a new set --------------------------------------------------
    def added(self, model: ServedModel, default: bool = False) -> ServedModels:
        """With `model` too: first (the default) when `default`, else last."""
        others = self.all
        return self._with((model, *others) if default else (*others, model), model)

    def replaced(self, old: ServedModel, new: ServedModel) -> ServedModels:
        """With `new` in `old`'s place (the default stays the default); the names of `old`
        that `new` does not take over are recorded as replaced."""
        place = next(i for i, m in enumerate(self.all) if m is old)  # by identity
        found = self._with((*self.all[:place], new, *self.all[place + 1 :]), new)
        note = f"model {old.name!r} was replaced by {new.name!r}"
        return found._gone(old.names - new.names, note)

    def without(self, model: ServedModel) -> ServedModels:
        """Without `model`, whose names are recorded as unloaded."""
        rest = tuple(m for m in self.all if m is not model)
        note = f"model {model.name!r} was unloaded from this server"
        return replace(self, all=rest)._gone(model.names, note)

    def with_default(self, model: ServedModel) -> ServedModels:
        """`model` first (the default), the others in their order."""
        return replace(self, all=(model, *(m for m in self.all if m is not model)))

    def gone(self, name: str) -> str | None:
        """What became of a model no longer served under `name` (None: not unloaded)."""
        return None if self.find(name) is not None else self.unloaded.get(name)

    def _with(self, models: tuple[ServedModel, ...], arrived: ServedModel) -> ServedModels:
        """`models`, with `arrived`'s names no longer recorded as unloaded."""
        kept = {n: v for n, v in self.unloaded.items() if n not in arrived.names}
        return ServedModels(models, kept)

    def _gone(self, names: frozenset[str], note: str) -> ServedModels:
        return ServedModels(self.all, {**self.unloaded, **dict.fromkeys(sorted(names), note)})


def module_bytes(obj: object) -> int | None:
    """Parameter + buffer bytes of the torch modules an object holds as attributes (each
    tensor counted once), or None when it holds none (an onnxruntime session)."""
    seen: set[int] = set()
    total, found = 0, False
    for value in getattr(obj, "__dict__", {}).values():
        if not isinstance(value, torch.nn.Module):
            continue
        found = True
        for t in [*value.parameters(), *value.buffers()]:
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total if found else None


def _device_name(device: str) -> str:
    """The device a load on `device` will use, for the log ("auto" resolved)."""
    try:
        return str(resolve_device(device))
    except (ValueError, RuntimeError):  # the load itself reports a bad device
        return device


def _image_batch(
    encoder: Encoder, on_device: bool, max_pixels: int
) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    """The image batcher's function: prepared uint8 [3, S, S] items -> [n, d]; with
    device decoding, some items are JPEG files that it decodes first (DevicePixels)."""
    if on_device:
        return DevicePixels(encoder, max_pixels)

    def run(items: list[torch.Tensor]) -> torch.Tensor:
        return encoder.encode_image_tensors(torch.stack(items))

    return run


def _warm_up(encoder: Encoder) -> None:
    """One forward per modality, so the first request pays no lazy initialisation."""
    size = encoder.info.preprocess.size
    encoder.encode_images([Image.new("RGB", (size, size), (127, 127, 127))])
    if TEXT in encoder.capabilities:
        encoder.encode_texts(["warm up"])
