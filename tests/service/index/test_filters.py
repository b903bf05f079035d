"""The metadata filter language: parsing, errors that name the operator, evaluation."""

from __future__ import annotations

import random
from typing import Any

import pytest

from contrastkit.service.index.filters import Condition, Filter, parse_filter
from contrastkit.service.index.types import CollectionError

ITEMS: list[dict[str, Any]] = [
    {"label": "cat", "year": 2001, "ok": True},
    {"label": "dog", "year": 2010.0, "ok": False},
    {"label": "cat", "year": 1999},
    {"label": 1, "year": "2005"},
    {"label": True},
    {},
]


def labels_matching(where: Any) -> list[int]:
    f = parse_filter(where)
    return [i for i, m in enumerate(ITEMS) if f.matches(m)]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (None, [0, 1, 2, 3, 4, 5]),
        ({}, [0, 1, 2, 3, 4, 5]),
        ({"label": "cat"}, [0, 2]),
        ({"label": {"$eq": "cat"}}, [0, 2]),
        ({"label": 1}, [3]),  # true is not 1
        ({"label": True}, [4]),  # and 1 is not true
        ({"year": 2010}, [1]),  # 2010 equals 2010.0
        ({"label": {"$in": ["dog", 1]}}, [1, 3]),
        ({"label": {"$in": []}}, []),
        ({"year": {"$gte": 2000, "$lt": 2010}}, [0]),  # "2005" is a string: no range match
        ({"year": {"$gt": 1999}}, [0, 1]),
        ({"year": {"$lte": 1999}}, [2]),
        ({"ok": {"$exists": True}}, [0, 1]),
        ({"year": {"$exists": False}}, [4, 5]),
        ({"label": "cat", "year": {"$lt": 2000}}, [2]),
    ],
)
def test_conditions_select_the_expected_items(where: Any, expected: list[int]) -> None:
    assert labels_matching(where) == expected


@pytest.mark.parametrize(
    ("where", "named"),
    [
        ({"year": {"$between": [1, 2]}}, "'$between'"),
        ({"$or": [{"a": 1}]}, "'$or'"),
        ({"year": {"$gt": "2000"}}, "year.$gt"),
        ({"year": {"$gt": True}}, "year.$gt"),
        ({"year": {"$gt": float("inf")}}, "year.$gt"),
        ({"label": {"$in": "cat"}}, "label.$in"),
        ({"label": {"$in": [["cat"]]}}, "label.$in"),
        ({"label": {"$exists": 1}}, "label.$exists"),
        ({"label": None}, "$exists"),
        ({"label": [1, 2]}, "label.$eq"),
        ({"label": {}}, "'label'"),
        ({"": 1}, "non-empty"),
        ([1, 2], "JSON object"),
        ({"x": {"$in": list(range(2000))}}, "limit"),
    ],
)
def test_a_wrong_filter_is_refused_naming_what_is_wrong(where: Any, named: str) -> None:
    with pytest.raises(CollectionError) as err:
        parse_filter(where)
    assert err.value.code == "invalid_filter"
    assert named in err.value.message


def test_fields_lists_each_tested_field_once() -> None:
    f = parse_filter({"year": {"$gte": 1, "$lt": 3}, "label": "x"})
    assert f.fields == ["year", "label"]
    assert bool(f) and not bool(Filter())


def _reference_eq(x: Any, v: Any) -> bool:
    both_numbers = type(x) in (int, float) and type(v) in (int, float)
    return bool(x == v) if both_numbers else (type(x) is type(v) and x == v)


def _reference(where: dict[str, dict[str, Any]], meta: dict[str, Any]) -> bool:
    """An independent reading of the documented semantics, written out longhand."""
    for field, ops in where.items():
        for op, v in ops.items():
            present = field in meta
            x = meta.get(field)
            if op == "$exists":
                ok = present == v
            elif op == "$eq":
                ok = present and _reference_eq(x, v)
            else:
                num = present and type(x) in (int, float)
                ok = num and {"$gt": x > v, "$gte": x >= v, "$lt": x < v, "$lte": x <= v}[op]  # type: ignore[operator]
            if not ok:
                return False
    return True


def test_random_filters_agree_with_a_longhand_reference() -> None:
    rng = random.Random(7)
    values: list[Any] = [0, 1, 2, 2.0, 3.5, True, False, "a", "b"]
    metas = [{f: rng.choice(values) for f in ("x", "y") if rng.random() < 0.8} for _ in range(200)]
    ops = ["$eq", "$gt", "$gte", "$lt", "$lte", "$exists"]
    for _ in range(300):
        where: dict[str, dict[str, Any]] = {}
        for field in rng.sample(["x", "y"], rng.randint(1, 2)):
            op = rng.choice(ops)
            if op == "$exists":
                v: Any = rng.random() < 0.5
            elif op == "$eq":
                v = rng.choice(values)
            else:
                v = rng.choice([0, 1, 2, 3.5])
            where[field] = {op: v}
        f = parse_filter(where)
        for m in metas:
            assert f.matches(m) == _reference(where, m), (where, m)


def test_condition_is_a_plain_value() -> None:
    assert parse_filter({"a": {"$in": [1, "b"]}}).conditions == (Condition("a", "$in", (1, "b")),)
