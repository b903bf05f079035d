"""The migrations a server runs (POST /v1/admin/migrations): a collection rebuilt in the
space of another served model, in a thread of its own, while the old collection keeps
serving searches and writes; then an alias switched to the new one.

The work is `contrastive index migrate`'s (contrastkit.service.commands.index.migration): passes
that bring the new collection level with the old one, then a last pass and the switch
with the old collection's writes held at the gate (contrastkit.service.index.gate), so that no write
acknowledged by the old collection is missing from the new one. A migration cancelled,
failed, or cut short by a stop leaves the old collection as it was and the new one
partly filled: starting it again resumes (items already there are skipped).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from contrastkit.service.commands.index.migration import (
    LAST_PASS,
    Hooks,
    Migration,
    Plan,
    check_spaces,
    plan,
)
from contrastkit.service.commands.index.reembed import Reembedder
from contrastkit.service.domain_errors import RequestError
from contrastkit.service.index.gate import WriteGate

if TYPE_CHECKING:
    from contrastkit.service.index.backend import CollectionBackend
    from contrastkit.training.encoders import Encoder

log = logging.getLogger("contrastive.service")
State = Literal["running", "switched", "built", "failed", "cancelled"]
SHOWN_MISSING = 100  # missing items listed in a status (all are counted)


class CancelledError(Exception):
    """Raised between batches of a migration asked to stop."""


@dataclass
class MigrationRequest:
    """What POST /v1/admin/migrations asks: the collection (or alias), the served model,
    the alias to switch, the new collection's name, and whether to switch despite
    missing items."""

    collection: str
    alias: str | None = None
    new_name: str | None = None
    allow_missing: bool = False
    batch: int = 32


@dataclass
class Status:
    """One migration's progress: the JSON of GET /v1/admin/migrations/{name} and of the
    `migration` field of GET /v1/collections/{name}."""

    collection: str
    new: str
    alias: str
    model: str
    state: State = "running"
    pass_no: int = 1
    done: int = 0
    total: int = 0
    written: int = 0
    missing_count: int = 0
    missing: list[dict[str, Any]] = field(default_factory=list)
    previous: str | None = None
    error: str | None = None
    held_seconds: float | None = None  # how long the last pass held the old one's writes
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        d["pass"] = "last" if self.pass_no == LAST_PASS else self.pass_no
        del d["pass_no"]
        return d


@dataclass
class _Run:
    status: Status
    job: Migration
    request: MigrationRequest
    stop: threading.Event
    thread: threading.Thread | None = None


class Migrations:
    """Every migration this server has run since it started, by old collection name."""

    def __init__(self, gate: WriteGate) -> None:
        self.gate = gate
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()

    def start(
        self, store: CollectionBackend, encoder: Encoder, max_pixels: int, req: MigrationRequest
    ) -> Status:
        """Check the request (the errors `contrastive index migrate` gives, as 4xx) and
        start the migration in a thread -> its status, `running`."""
        p = _checked_plan(store, req, encoder)
        with self._lock:
            for other in self._runs.values():
                busy = {other.status.collection, other.status.new, other.status.alias}
                if other.status.state == "running" and busy & {p.old, p.new, p.alias}:
                    raise RequestError(
                        "migration_running",
                        f"migration of {other.status.collection!r} into "
                        f"{other.status.new!r} is under way: wait for it, or cancel it",
                    )
            status, stop = Status(p.old, p.new, p.alias, encoder.model_id), threading.Event()
            hooks = Hooks(after_batch=lambda _: _check_stop(stop), progress=_progress(status))
            job = Migration(store, Reembedder(encoder, max_pixels), p, req.batch, hooks)
            run = self._runs[p.old] = _Run(status, job, req, stop)
        # daemon: a process that exits without close() is like a kill (resumable), and
        # must not wait for a migration to finish first
        run.thread = threading.Thread(
            target=self._run, args=(run,), name=f"migrate-{p.old}", daemon=True
        )
        run.thread.start()
        return run.status

    def about(self, name: str) -> Status | None:
        """The latest migration from or into collection `name` (or switching alias
        `name`), else None."""
        found = [r.status for r in self._list()]
        mine = [s for s in found if name in (s.collection, s.new, s.alias)]
        return max(mine, key=lambda s: s.started_at) if mine else None

    def all(self) -> list[Status]:
        return sorted((r.status for r in self._list()), key=lambda s: s.started_at)

    def _list(self) -> list[_Run]:
        with self._lock:  # a copy: another thread may start one meanwhile
            return list(self._runs.values())

    def cancel(self, name: str) -> Status:
        """Ask the latest migration from, into or switching `name` to stop after its
        current batch (one that has ended is left as it is) -> its status."""
        status = self.about(name)
        if status is None:
            raise RequestError("migration_not_found", f"no migration of {name!r} on this server")
        self._runs[status.collection].stop.set()
        return status

    def close(self, timeout: float = 60.0) -> None:
        """Stop every running migration (after its batch) and wait for it: the store closes
        next. What was written stays; starting the migration again resumes."""
        for run in self._list():
            run.stop.set()
        for run in self._list():
            if run.thread is not None:
                run.thread.join(timeout)

    def _run(self, run: _Run) -> None:
        s, job = run.status, run.job
        try:
            out = job.finish(job.build(), run.request.allow_missing, self._held(s))
        except CancelledError:
            s.state = "cancelled"
        except Exception as e:
            log.exception("migration of %r into %r failed", s.collection, s.new)
            s.state, s.error = "failed", f"{type(e).__name__}: {e}"
        else:
            s.written, s.previous = out.written, out.previous
            s.missing_count = len(out.missing)
            s.missing = [m.to_json() for m in out.missing[:SHOWN_MISSING]]
            s.state = "switched" if out.switched else "built"
            log.info("migration of %r into %r: %s", s.collection, s.new, s.state)
        s.finished_at = time.time()

    def _held(self, s: Status) -> Callable[[str], AbstractContextManager[object]]:
        """The gate's `alone`, timed into `s.held_seconds` (how long writes waited)."""

        @contextmanager
        def hold(name: str) -> Iterator[None]:
            start = time.monotonic()
            try:
                with self.gate.alone(name):
                    yield
            finally:
                s.held_seconds = round(time.monotonic() - start, 3)

        return hold


def _checked_plan(store: CollectionBackend, req: MigrationRequest, encoder: Encoder) -> Plan:
    """The plan, or RequestError `migration_refused` with what to send instead."""
    try:
        p = plan(store, req.collection, req.alias, req.new_name, encoder.model_id)
        check_spaces(store, p, encoder.model_id)
    except ValueError as e:
        raise RequestError("migration_refused", str(e)) from None
    return p


def _check_stop(stop: threading.Event) -> None:
    if stop.is_set():
        raise CancelledError


def _progress(s: Status) -> Any:
    def report(pass_no: int, done: int, total: int) -> None:
        s.pass_no, s.done, s.total = pass_no, done, total

    return report
