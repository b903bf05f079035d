"""The served models over the server's life: the start-up loads, then what the admin API
(contrastkit.service.api.routes.admin) asks for: load another model, replace one, unload one, make
one the default.

The set is a value (ServedModels) that each change replaces whole, on the event loop, in
one assignment: a request that resolved a model before the change keeps it and is
answered by it; a request that resolves after gets the new set. A model that leaves the
set is retired (LoadedModel.retire): its batchers finish the work they hold, then stop,
and it is freed once the last request using it has its answer.

A load or a replacement is an `Operation` that runs in the background, in the load
thread then the model thread (warm-up), like the start-up loads: the models already
served keep serving meanwhile, and /readyz shows its progress without becoming
unready. Nothing changes in the set until the new model is warm; a replacement is then
swapped in at its predecessor's place (the default stays the default). An operation
claims the names it touches (references, ids, aliases) until it ends: a second
operation on any of them is refused (`model_busy`) rather than queued, so an operator
never has two changes of one model racing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Literal

from contrastkit.service.domain_errors import ModelError, RequestError
from contrastkit.service.metrics import Metrics
from contrastkit.service.runtime.batcher import Batcher
from contrastkit.service.runtime.onnx_upgrade import cache_dir, onnx_twin, wants_onnx
from contrastkit.service.runtime.served import Pools, ServedModel, ServedModels
from contrastkit.service.settings import Settings
from contrastkit.training.encoders import Encoder, UnknownModelError, check_reference

log = logging.getLogger("contrastive.service")

OperationKind = Literal["load", "replace"]
OperationStatus = Literal["loading", "done", "failed", "cancelled"]
# Ended operations kept for GET /v1/admin/operations (the oldest go first).
KEEP_ENDED = 64


@dataclass(frozen=True)
class ModelSpec:
    """A model to load: its reference, and what may differ from the settings."""

    reference: str
    pretrained: str | None = None
    device: str | None = None  # None: the `device` setting
    runtime: str | None = None  # None: the `runtime` setting
    alias: str | None = None


@dataclass(eq=False)
class Operation:
    """One load or replacement, from its request until the new model serves (or not).

    `model` is the model being loaded, only while it loads: an ended operation holds
    names, not the model, so that keeping its record keeps no model in memory."""

    id: int
    kind: OperationKind
    reference: str
    model: ServedModel | None
    replaces: str | None = None  # the name of the model it replaces
    default: bool = False  # a load that makes the new model the default
    status: OperationStatus = "loading"
    model_id: str | None = None  # once done
    error: str | None = None
    started: float = field(default_factory=time.time)
    ended: float | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def seconds(self) -> float:
        """How long it ran (so far, while it runs)."""
        return (self.ended or time.time()) - self.started

    def progress(self) -> str:
        """What it is doing, for people (/readyz's reason)."""
        loading = self.model.loading_reason() if self.model is not None else None
        return loading or f"waiting to load {self.reference}"

    def to_dict(self) -> dict[str, Any]:
        """The operation as the admin API answers it
        (contrastkit.service.schemas.admin.ModelOperation)."""
        return {
            "id": self.id,
            "operation": self.kind,
            "status": self.status,
            "reference": self.reference,
            "model_id": self.model_id,
            "replaces": self.replaces,
            "default": self.default,
            "error": self.error,
            "seconds": round(self.seconds, 3),
        }


class ModelLifecycle:
    """Owns the set of served models (`models`) and every change to it."""

    def __init__(
        self, models: ServedModels, settings: Settings, pools: Pools, metrics: Metrics
    ) -> None:
        self.models = models
        self.settings = settings
        self.pools = pools
        self.metrics = metrics
        self.operations: dict[int, Operation] = {}
        self._ids = itertools.count(1)
        self._claims: dict[str, Operation] = {}  # name -> the operation that holds it
        # batchers of models no longer served that may still be finishing work: stopped at
        # shutdown if they still run; weak, so that they never keep a model alive
        self._retired: weakref.WeakSet[Batcher[Any]] = weakref.WeakSet()
        self._upgrades: set[asyncio.Task[None]] = set()  # runtime=auto moves to ONNX
        metrics.models_served.set_function(lambda: sum(m.loaded is not None for m in self.models))

    # -- start-up ---------------------------------------------------------------------
    async def start(self, encoder: Encoder | None = None) -> None:
        """Load and warm the start-up models in turn, the default first (`encoder`: the
        default's, built by the caller), each serving as soon as it is warm."""
        for i, model in enumerate(self.models.all):
            await model.load(self.settings, self.pools, encoder if i == 0 else None)
            self._count("startup", "ok" if model.loaded is not None else "failed", model)
            self._maybe_upgrade(model)

    # -- the admin API ------------------------------------------------------------------
    async def load(self, spec: ModelSpec, default: bool = False) -> Operation:
        """Start loading another model; it joins the set once warm (first, the default,
        when `default`). `invalid_request` for a reference that names nothing,
        `model_exists` when one of its names is served, `model_busy` when an operation
        holds one."""
        await self._check(spec)
        taken = next((n for n in _names(spec) if self.models.find(n) is not None), None)
        if taken is not None:
            raise ModelError(
                "model_exists",
                f"{taken!r} names a model this server already serves; to load it again, "
                f"replace it: PUT /v1/admin/models/{taken}",
            )
        model = _served(spec, spec.alias)
        op = self._begin("load", model, _names(spec), default=default)
        op.task = asyncio.create_task(self._run(op, None))
        return op

    async def replace(self, name: str, spec: ModelSpec) -> Operation:
        """Start loading `spec` to take the place of the model `name` names, which serves
        until the new one is warm (`model_not_found`, `model_busy`, `invalid_request`)."""
        await self._check(spec)
        old = self.models.named(name)
        alias = spec.alias or old.alias
        for n in _names(spec):
            other = self.models.find(n)
            if other is not None and other is not old:
                raise ModelError(
                    "model_exists",
                    f"{n!r} names another model this server serves ({other.name!r})",
                )
        self._refuse_unsettled(old)
        new = _served(spec, alias)
        op = self._begin("replace", new, old.names | _names(spec), replaces=old.name)
        op.task = asyncio.create_task(self._run(op, old))
        return op

    def unload(self, name: str) -> tuple[ServedModel, int]:
        """Take the model `name` names out of the set at once -> (it, the items still
        queued on it, which it finishes). Not the default (`model_is_default`)."""
        model = self.models.named(name)
        self._refuse_claimed(model.names)
        self._refuse_unsettled(model)
        if model is self.models.default:
            raise ModelError(
                "model_is_default",
                f"model {model.name!r} is the default: make another the default first "
                "(PUT /v1/admin/default), or replace it (PUT /v1/admin/models/...)",
            )
        self.models = self.models.without(model)
        queued = self._retire(model)
        self._count("unload", "ok", model)
        log.info("model %s unloaded; %d queued items finish on it", model.name, queued)
        return model, queued

    def set_default(self, name: str) -> ServedModel:
        """Make the model `name` names the default (it must be warm: `model_not_ready`)."""
        model = self.models.named(name)
        self._refuse_claimed(model.names)
        model.require()
        if model is not self.models.default:
            self.models = self.models.with_default(model)
            self._count("default", "ok", model)
            log.info("model %s is now the default", model.name)
        return model

    def in_flight(self) -> list[Operation]:
        """The operations still loading, oldest first."""
        return [op for op in self.operations.values() if op.status == "loading"]

    async def wait(self, op: Operation, timeout: float) -> None:
        """Until `op` ends or `timeout` seconds pass (the operation goes on regardless)."""
        if op.task is not None and timeout > 0:
            # asyncio.wait neither raises for the task nor cancels it at the timeout
            await asyncio.wait({op.task}, timeout=timeout)

    async def close(self) -> None:
        """At shutdown: cancel the loads still running, stop the retired batchers."""
        tasks = [op.task for op in self.in_flight() if op.task is not None]
        tasks += list(self._upgrades)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for batcher in list(self._retired):
            await batcher.stop()

    # -- what runs in the background -------------------------------------------------------
    async def _run(self, op: Operation, old: ServedModel | None) -> None:
        """Load `op.model`, then add it to the set or swap it for `old`."""
        model = op.model
        assert model is not None
        try:
            await model.load(self.settings, self.pools)
            problem = model.load_error or self._clash(model, old)
            if problem is None and old is not None and all(m is not old for m in self.models):
                problem = f"model {old.name!r} left the set during the load"
            if problem is not None:
                if model.loaded is not None:  # warm, but it cannot join: free it at once
                    model.loaded.retire()
                self._end(op, "failed", problem)
                return
            if old is None:
                self.models = self.models.added(model, op.default)
            else:
                self.models = self.models.replaced(old, model)
                queued = self._retire(old)
                log.info(
                    "model %s replaced by %s; %d queued items finish on it",
                    old.name,
                    model.name,
                    queued,
                )
            op.model_id = model.name
            self._end(op, "done")
            self._maybe_upgrade(model)
        except asyncio.CancelledError:
            if model.loaded is not None:
                model.loaded.retire()
            self._end(op, "cancelled", "the server shut down during the load")
            raise
        except Exception as e:  # a bug: the operation must still end, and free its names
            log.exception("admin operation %d failed", op.id)
            if model.loaded is not None:
                model.loaded.retire()
            self._end(op, "failed", f"{type(e).__name__}: {e}")

    def _maybe_upgrade(self, model: ServedModel) -> None:
        """runtime=auto on the CPU: move a warm torch model to onnxruntime in the background
        (contrastkit.service.runtime.onnx_upgrade)."""
        if model.loaded is None:
            return
        if not wants_onnx(model.loaded.encoder, self.settings, model.runtime):
            return
        task = asyncio.create_task(self._upgrade(model))
        self._upgrades.add(task)
        task.add_done_callback(self._upgrades.discard)

    async def _upgrade(self, model: ServedModel) -> None:
        """Trace (or find) the model's graphs, warm them, swap them in at its place.
        Any failure leaves the torch model serving, with the reason logged."""
        assert model.loaded is not None
        loop = asyncio.get_running_loop()
        try:
            twin = await loop.run_in_executor(
                self.pools.load, onnx_twin, model.loaded.encoder, cache_dir(self.settings)
            )
        except Exception as e:  # tracing has no common error type; torch keeps serving
            log.warning(
                "model %s stays on torch: no ONNX graphs (%s: %s)", model.name, type(e).__name__, e
            )
            return
        new = ServedModel(model.ref, model.pretrained, model.device, "onnx", model.alias)
        await new.load(self.settings, self.pools, twin)
        if (
            new.loaded is None
            or all(m is not model for m in self.models)
            or (model.names & self._claims.keys())
        ):  # failed to warm, or an operator changed the model meanwhile: theirs wins
            if new.loaded is not None:
                new.loaded.retire()
            log.warning(
                "model %s stays on torch: %s",
                model.name,
                new.load_error or "the model changed during the ONNX build",
            )
            return
        self.models = self.models.replaced(model, new)
        queued = self._retire(model)
        log.info(
            "model %s now runs on onnxruntime; %d queued items finish on torch", new.name, queued
        )

    def _clash(self, model: ServedModel, old: ServedModel | None) -> str | None:
        """Why a model just loaded cannot join the set: its id names another one."""
        other = self.models.find(model.name)
        if other is not None and other is not old:
            return (
                f"{model.ref} loaded as model {model.name!r}, which this server already "
                f"serves (reference {other.ref!r}); replace that one instead"
            )
        return None

    # -- bookkeeping ----------------------------------------------------------------------
    async def _check(self, spec: ModelSpec) -> None:
        """`invalid_request` unless the reference, device and runtime name something this
        server can load; in a thread (an open_clip name imports open_clip to check)."""
        s = self.settings
        device, runtime = spec.device or s.device, spec.runtime or s.runtime
        try:
            await asyncio.to_thread(_check_spec, spec.reference, device, runtime)
        except (UnknownModelError, ValueError, RuntimeError, OSError) as e:
            raise RequestError("invalid_request", f"cannot load {spec.reference!r}: {e}") from e

    def _begin(
        self,
        kind: OperationKind,
        model: ServedModel,
        claims: frozenset[str],
        replaces: str | None = None,
        default: bool = False,
    ) -> Operation:
        self._refuse_claimed(claims)
        op = Operation(next(self._ids), kind, model.ref, model, replaces, default)
        self.operations[op.id] = op
        self._claims.update(dict.fromkeys(claims, op))
        what = f"replacing {replaces} with" if replaces else "loading"
        log.info("admin operation %d: %s %s", op.id, what, model.ref)
        return op

    def _end(self, op: Operation, status: OperationStatus, error: str | None = None) -> None:
        model = op.model
        op.status, op.error, op.ended, op.model = status, error, time.time(), None
        self._claims = {n: o for n, o in self._claims.items() if o is not op}
        outcome = "ok" if status == "done" else status
        self._count(op.kind, outcome, model)
        if status == "done":
            log.info("admin operation %d: %s serves (%.1f s)", op.id, op.model_id, op.seconds)
        else:
            log.warning("admin operation %d (%s) %s: %s", op.id, op.reference, status, error)
        ended = [o for o in self.operations.values() if o.status != "loading"]
        for stale in ended[: max(0, len(ended) - KEEP_ENDED)]:
            del self.operations[stale.id]

    def _refuse_claimed(self, names: frozenset[str]) -> None:
        held = next((self._claims[n] for n in sorted(names) if n in self._claims), None)
        if held is not None:
            raise ModelError(
                "model_busy",
                f"operation {held.id} ({held.kind} {held.reference}) is under way on this "
                f"model: wait for it to end (GET /v1/admin/operations/{held.id})",
                retry_after=5,
            )

    @staticmethod
    def _refuse_unsettled(model: ServedModel) -> None:
        """A start-up model still loading cannot be changed: its load would go on."""
        if not model.settled:
            raise ModelError(
                "model_busy",
                f"model {model.ref} is still loading at start-up: wait until /readyz "
                "shows it ready or failed",
                retry_after=5,
            )

    def _retire(self, model: ServedModel) -> int:
        """Retire a model that left the set -> the items still queued on it."""
        loaded = model.loaded
        if loaded is None:
            return 0
        loaded.retire()
        self._retired.update((loaded.images.batcher, loaded.texts.batcher))
        return loaded.queued

    def _count(self, operation: str, outcome: str, model: ServedModel | None) -> None:
        self.metrics.model_operations.labels(operation, outcome).inc()
        loaded = operation in ("startup", "load", "replace") and outcome == "ok"
        if loaded and model is not None and model.load_seconds is not None:
            self.metrics.model_load_seconds.observe(model.load_seconds)


def _served(spec: ModelSpec, alias: str | None) -> ServedModel:
    """The model `spec` names, not loaded yet."""
    return ServedModel(
        spec.reference,
        pretrained=spec.pretrained,
        device=spec.device,
        runtime=spec.runtime,
        alias=alias,
    )


def _names(spec: ModelSpec) -> frozenset[str]:
    """The names a model to load claims before it has an id: reference and alias."""
    return frozenset(n for n in (spec.reference, spec.alias) if n is not None)


def _check_spec(ref: str, device: str, runtime: str) -> None:
    from contrastkit.training.encoders.exported.onnx_runtime import choose_runtime

    check_reference(ref, device)
    choose_runtime(ref, runtime, device)
