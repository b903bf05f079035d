"""The work of `contrastive index migrate`: a collection rebuilt in another model's space
from its items' sources, then an alias switched to it (service/commands/index/migrate.py
is the command line).

Passes: each reads the old collection as it is now and brings the new one level with it,
skipping items the new one holds with the same source and metadata (so a rerun after a
kill resumes), embedding new or changed ones, deleting ids the old one no longer has.
The first pass does the bulk; catch-up passes repeat until one finds nothing to do, so a
write acknowledged by the old collection while the bulk ran is in the new one before the
alias switches. The old collection is only read, and stays.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contrastkit.service.commands.index.reembed import Missing, Reembedder

if TYPE_CHECKING:
    from contrastkit.service.index.backend import CollectionBackend, CollectionHandle, Item

MAX_CATCH_UP = 5  # catch-up passes before giving up on a collection that never settles
LAST_PASS = 0  # the pass number of the last pass, the one before the switch


@dataclass
class Plan:
    """What to migrate: collection `old` into `new`, then alias `alias` -> `new`."""

    old: str
    new: str
    alias: str


@dataclass
class Hooks:
    """Called after each batch (with the pass number) and between passes (with the old
    collection): tests interrupt, or write as a user would, here; a server cancels a
    migration by raising from `after_batch`. `progress(pass_no, done, total)` follows
    each pass (default: a line on stderr at most once a second)."""

    after_batch: Callable[[int], None] = lambda pass_no: None
    between_passes: Callable[[CollectionHandle], None] = lambda old: None
    progress: Callable[[int, int, int], None] | None = None


@dataclass
class Outcome:
    """How a migration ended: items written, what could not be embedded, the switch."""

    written: int = 0
    missing: list[Missing] = field(default_factory=list)
    switched: bool = False
    previous: str | None = None  # where the alias pointed before (None: a new alias)


def model_tag(model_id: str) -> str:
    """A short tag for a collection name: the model id's last part, made name-safe
    ("export:open_clip:tiny-clip:3fa2c9d01b7e" -> "3fa2c9d01b7e")."""
    last = model_id.rstrip(":").rsplit(":", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", last).strip("-.")[:24] or "model"


def plan(
    store: CollectionBackend, name: str, alias: str | None, new: str | None, model_id: str
) -> Plan:
    """Check the names -> the Plan; CollectionError/ValueError with what to pass instead."""
    from contrastkit.service.index.types import check_name

    aliases = store.aliases()
    collections = {c.name for c in store.list()}
    if name in aliases:  # migrating again: the alias users already use switches
        if alias not in (None, name):
            raise ValueError(f"{name!r} is an alias: it is the one switched (drop --alias)")
        old, alias = aliases[name], name
    elif name in collections:
        if alias is None:
            raise ValueError(
                f"{name!r} is a collection, and an alias may not shadow a collection name: "
                f"pass --alias ALIAS (e.g. {name}-live) and point NAME's users at ALIAS"
            )
        old = name
    else:
        store.get(name)  # raises collection_not_found in the backend's words
        old = name
    assert alias is not None
    new = check_name(new or f"{old}-{model_tag(model_id)}")
    if alias in collections:
        raise ValueError(f"--alias {alias!r} is a collection's name; choose another")
    if aliases.get(alias, old) not in (old, new):
        raise ValueError(f"alias {alias!r} points to {aliases[alias]!r}, not {old!r}")
    if new == old:
        raise ValueError("--new-name must differ from the collection migrated")
    return Plan(old, new, alias)


def check_spaces(store: CollectionBackend, p: Plan, model_id: str) -> None:
    """ValueError unless the old collection holds another model's vectors and the new one
    is missing or holds `model_id`'s (a stopped migration's, to resume)."""
    from contrastkit.service.index.types import CollectionError

    if store.get(p.old).model_id == model_id:
        raise ValueError(f"{p.old!r} already holds {model_id!r} embeddings")
    try:
        there = store.get(p.new).model_id
    except CollectionError as e:
        if e.code != "collection_not_found":
            raise
        return
    if there != model_id:
        raise ValueError(f"{p.new!r} exists and holds {there!r}: choose another new name")


def open_new(store: CollectionBackend, p: Plan, model_id: str, dim: int) -> CollectionHandle:
    """The new collection (check_spaces first): created with the old one's index spec,
    or the one a stopped migration left, resumed."""
    from contrastkit.service.index.types import CollectionError

    try:
        col = store.get(p.new)
    except CollectionError as e:
        if e.code != "collection_not_found":
            raise
        store.create(p.new, model_id, dim, store.get(p.old).info().index)
        return store.get(p.new)
    print(f"resuming into {p.new!r} ({col.count()} items there)", file=sys.stderr)
    return col


class Migration:
    """One collection into another model's space, by passes (see the module's doc)."""

    def __init__(
        self,
        store: CollectionBackend,
        reembedder: Reembedder,
        plan: Plan,
        batch: int = 32,
        hooks: Hooks | None = None,
    ) -> None:
        self.store, self.reembedder, self.plan = store, reembedder, plan
        self.batch, self.hooks = batch, hooks or Hooks()

    def build(self) -> Outcome:
        """Bring the new collection level with the old one; the alias is not touched."""
        enc = self.reembedder.encoder
        check_spaces(self.store, self.plan, enc.model_id)
        new = open_new(self.store, self.plan, enc.model_id, enc.embed_dim)
        out = Outcome()
        for pass_no in range(1, MAX_CATCH_UP + 2):
            if pass_no > 1:
                self.hooks.between_passes(self.store.get(self.plan.old))
            written, out.missing = self.sync(new, pass_no)
            out.written += written
            if pass_no > 1 and written == 0:
                return out
        raise RuntimeError(f"{self.plan.old!r} kept changing: {MAX_CATCH_UP} catch-up passes")

    def finish(
        self,
        out: Outcome,
        allow_missing: bool,
        hold: Callable[[str], AbstractContextManager[object]] = lambda name: nullcontext(),
    ) -> Outcome:
        """A last pass and the switch, inside `hold(old)` (a server holds the old
        collection's writes there: none can land between this pass and the switch); the
        alias is not switched when items are missing, unless `allow_missing`."""
        with hold(self.plan.old):
            new = self.store.get(self.plan.new)
            written, out.missing = self.sync(new, LAST_PASS)
            out.written += written
            if out.missing and not allow_missing:
                return out
            out.previous = self.store.set_alias(self.plan.alias, self.plan.new)
            out.switched = True
        return out

    def sync(self, new: CollectionHandle, pass_no: int) -> tuple[int, list[Missing]]:
        """One pass -> (items written or deleted in `new`, items that could not be embedded)."""
        from contrastkit.service.index.backend import iter_items

        have = {it.id: (it.source, it.metadata) for it in iter_items(new, vectors=False)}
        old = list(iter_items(self.store.get(self.plan.old), vectors=False))
        todo = [it for it in old if have.get(it.id) != (it.source, it.metadata)]
        gone = set(have) - {it.id for it in old}
        changed = new.delete(sorted(gone)) if gone else 0
        missing: list[Missing] = []
        label = "last pass" if pass_no == LAST_PASS else f"pass {pass_no}"
        report = self.hooks.progress or Progress(label, len(todo)).report
        report(pass_no, 0, len(todo))
        for start in range(0, len(todo), self.batch):
            chunk = todo[start : start + self.batch]
            changed += self._store(new, chunk, have, missing)
            report(pass_no, start + len(chunk), len(todo))
            self.hooks.after_batch(pass_no)
        return changed, missing

    def _store(
        self,
        new: CollectionHandle,
        chunk: list[Item],
        have: dict[str, Any],
        missing: list[Missing],
    ) -> int:
        """Embed and upsert one batch -> items written; a stale copy of an item that can no
        longer be embedded is removed from `new` (it must not outlive its change)."""
        done, lost = self.reembedder.embed(chunk)
        missing.extend(lost)
        stale = [m.id for m in lost if m.id in have]
        written = new.delete(stale) if stale else 0
        if done is not None:
            written += new.upsert(done.ids, done.vectors, done.metadata, done.sources)
        return written


class Progress:
    """'DONE/TOTAL items, RATE/s, ETA' on stderr, at most once a second and at the end."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, total, 0
        self.start = self.last = time.monotonic()

    def report(self, pass_no: int, done: int, total: int) -> None:
        """A Hooks.progress: `done` of `total` items of pass `pass_no` are through."""
        if done:
            self.update(done - self.done)

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last < 1.0 and self.done < self.total:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        print(
            f"contrastive index migrate: {self.label}: {self.done}/{self.total} items, "
            f"{rate:.1f}/s, ETA {eta:.0f} s",
            file=sys.stderr,
            flush=True,
        )


def missing_lines(missing: list[dict[str, Any]], total: int, shown: int = 20) -> list[str]:
    """What stderr says of the items that could not be embedded (Missing.to_json()s): the
    first `shown` of `total`, one per line."""
    lines = [f"missing: {m['id']!r} ({m['source']!r}): {m['reason']}" for m in missing[:shown]]
    if total > shown:
        lines.append(f"missing: ... and {total - shown} more")
    return lines


def summary(
    p: Plan, written: int, missing: int, previous: str | None, held_s: float | None = None
) -> str:
    """The line a switched migration ends with (`held_s`: how long writes were held)."""
    was = f"was {previous!r}" if previous else "new alias"
    held = f"; writes held {held_s} s" if held_s is not None else ""
    return (
        f"migrated {p.old!r} into {p.new!r} ({written} items written, {missing} missing); "
        f"alias {p.alias!r} -> {p.new!r} ({was}){held}; roll back: contrastive index alias "
        f"set {p.alias} {p.old}"
    )


def write_report(path: Path, p: Plan, model_id: str, out: Outcome) -> None:
    """The items that could not be embedded, as JSON: {"old", "new", "alias", "model",
    "missing_count", "missing": [{"id", "source", "reason"}], "switched"}."""
    body = {
        "old": p.old,
        "new": p.new,
        "alias": p.alias,
        "model": model_id,
        "missing_count": len(out.missing),
        "missing": [m.to_json() for m in out.missing],
        "switched": out.switched,
    }
    path.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n")
