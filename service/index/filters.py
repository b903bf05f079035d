"""The metadata filter of a search or a delete: parsed once, evaluated or translated.

A filter is a JSON object of field: condition, all of which must hold (AND):

    {"label": "cat"}                          equality (shorthand of {"$eq": "cat"})
    {"label": {"$in": ["cat", "dog"]}}        one of the values
    {"year": {"$gte": 2000, "$lt": 2010}}     numeric range ($gt, $gte, $lt, $lte)
    {"caption": {"$exists": true}}            the field is present (false: absent)

Values compared are JSON scalars: strings, numbers, booleans. Equality is by JSON type
(true never equals 1) and numbers compare by value (2 equals 2.0); a range matches
numbers only. Every backend gets the same parsed `Filter`: the embedded store evaluates
`Filter.matches`, and the Qdrant backend translates its conditions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from contrastkit.service.index.types import CollectionError

Operator = Literal["$eq", "$in", "$gt", "$gte", "$lt", "$lte", "$exists"]
RANGE_OPS: tuple[Operator, ...] = ("$gt", "$gte", "$lt", "$lte")
OPERATORS: tuple[Operator, ...] = ("$eq", "$in", *RANGE_OPS, "$exists")
MAX_IN_VALUES = 1024
MAX_CONDITIONS = 64
Scalar = str | int | float | bool


@dataclass(frozen=True)
class Condition:
    """One test of one metadata field."""

    field: str
    op: Operator
    value: Any  # Scalar for $eq and ranges, tuple[Scalar, ...] for $in, bool for $exists

    def matches(self, meta: Mapping[str, Any]) -> bool:
        if self.op == "$exists":
            return (self.field in meta) is self.value
        if self.field not in meta:
            return False
        got = meta[self.field]
        if self.op == "$eq":
            return same_scalar(got, self.value)
        if self.op == "$in":
            return any(same_scalar(got, v) for v in self.value)
        return is_number(got) and _compare(self.op, got, self.value)


@dataclass(frozen=True)
class Filter:
    """Conditions that must all hold; an empty filter matches everything."""

    conditions: tuple[Condition, ...] = ()

    def matches(self, meta: Mapping[str, Any]) -> bool:
        return all(c.matches(meta) for c in self.conditions)

    @property
    def fields(self) -> list[str]:
        """The fields it tests, each once, in order (backends index these)."""
        return list(dict.fromkeys(c.field for c in self.conditions))

    def __bool__(self) -> bool:
        return bool(self.conditions)


def parse_filter(where: Any) -> Filter:
    """A JSON value from a request -> Filter; CollectionError("invalid_filter") naming the
    field and operator when it has the wrong shape."""
    if where is None:
        return Filter()
    if not isinstance(where, dict):
        raise _bad("the filter must be a JSON object of field: value or field: {operator: value}")
    conditions: list[Condition] = []
    for field, spec in where.items():
        conditions.extend(_parse_field(field, spec))
    if len(conditions) > MAX_CONDITIONS:
        raise _bad(f"the filter has {len(conditions)} conditions; the limit is {MAX_CONDITIONS}")
    return Filter(tuple(conditions))


def _parse_field(field: Any, spec: Any) -> list[Condition]:
    if not isinstance(field, str) or not field:
        raise _bad("filter field names must be non-empty strings")
    if field.startswith("$"):
        raise _bad(
            f"unknown operator {field!r} at the top of the filter: fields are ANDed; "
            f"operators ({', '.join(OPERATORS)}) go inside a field's object"
        )
    if not isinstance(spec, dict):
        return [Condition(field, "$eq", _scalar(spec, field, "$eq"))]
    if not spec:
        raise _bad(f"filter field {field!r} has an empty object: give an operator")
    return [_parse_op(field, op, value) for op, value in spec.items()]


def _parse_op(field: str, op: Any, value: Any) -> Condition:
    if op not in OPERATORS:
        raise _bad(
            f"unknown operator {op!r} on filter field {field!r}; supported: {', '.join(OPERATORS)}"
        )
    if op == "$exists":
        if not isinstance(value, bool):
            raise _bad(f"{field}.$exists takes true or false, not {value!r}")
        return Condition(field, op, value)
    if op == "$in":
        return Condition(field, op, _in_values(value, field))
    if op in RANGE_OPS:
        if not is_number(value) or not math.isfinite(value):
            raise _bad(f"{field}.{op} takes a finite number, not {value!r}")
        return Condition(field, op, value)
    return Condition(field, op, _scalar(value, field, op))


def _in_values(value: Any, field: str) -> tuple[Scalar, ...]:
    if not isinstance(value, list):
        raise _bad(f"{field}.$in takes a list of values, not {type(value).__name__}")
    if len(value) > MAX_IN_VALUES:
        raise _bad(f"{field}.$in has {len(value)} values; the limit is {MAX_IN_VALUES}")
    return tuple(_scalar(v, field, "$in") for v in value)


def _scalar(value: Any, field: str, op: str) -> Scalar:
    if isinstance(value, str | bool) or (is_number(value) and math.isfinite(value)):
        return value  # type: ignore[no-any-return]
    hint = ' (to test that a field is absent use {"$exists": false})' if value is None else ""
    raise _bad(
        f"filter {field}.{op} compares with a string, a finite number or a boolean, "
        f"not {value!r}{hint}"
    )


def is_number(v: Any) -> bool:
    """int or float, and not bool (JSON's true is not 1)."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def same_scalar(a: Any, b: Any) -> bool:
    """JSON equality of scalars: numbers by value, otherwise same type and value."""
    if is_number(a) and is_number(b):
        return bool(a == b)
    return type(a) is type(b) and a == b


def _compare(op: Operator, got: float, bound: float) -> bool:
    if op == "$gt":
        return got > bound
    if op == "$gte":
        return got >= bound
    if op == "$lt":
        return got < bound
    return got <= bound


def _bad(message: str) -> CollectionError:
    return CollectionError("invalid_filter", message)
