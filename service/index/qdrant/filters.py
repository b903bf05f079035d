"""Our filter language (contrastkit.service.index.filters) as Qdrant filters, and the payload
indexes they need. A Qdrant filter may pass more than ours (Qdrant matches an array by any element):
the collection checks what comes back with `Filter.matches`."""

from __future__ import annotations

import re
from typing import Any

from qdrant_client import models

from contrastkit.service.index.filters import Condition, Filter, is_number
from contrastkit.service.index.qdrant.points import KEYS_KEY, META_KEY

PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")  # payload keys Qdrant's path syntax takes unquoted


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
    # does, as contrastkit.service.index.filters does
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
