"""The code -> HTTP status table (service/errors.py) is complete, and the only one."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import pytest

from contrastkit.service.domain_errors import DomainError, ErrorCode, ModelError
from contrastkit.service.errors import _CODE_OF_STATUS, STATUS, domain_error_response, http_status
from contrastkit.service.index.types import CollectionError

SERVICE = Path(__file__).resolve().parents[2] / "service"


def _trees() -> list[ast.Module]:
    return [ast.parse(p.read_text()) for p in sorted(SERVICE.rglob("*.py"))]


def _domain_error_classes(trees: list[ast.Module]) -> set[str]:
    """DomainError and every class in service/ that derives from it, at any depth."""
    found = {"DomainError"}
    classes = [n for t in trees for n in ast.walk(t) if isinstance(n, ast.ClassDef)]
    grew = True
    while grew:
        grew = False
        for c in classes:
            bases = {b.id for b in c.bases if isinstance(b, ast.Name)}
            if c.name not in found and bases & found:
                found.add(c.name)
                grew = True
    return found


def _code_parameters(trees: list[ast.Module]) -> dict[str, tuple[int, str]]:
    """Functions with a parameter annotated ErrorCode -> (its position, its name)."""
    out: dict[str, tuple[int, str]] = {}
    for t in trees:
        for f in ast.walk(t):
            # constructors are found by their class's name (an __init__ would match any)
            if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef) and f.name != "__init__":
                for i, a in enumerate(f.args.args):
                    if isinstance(a.annotation, ast.Name) and a.annotation.id == "ErrorCode":
                        out[f.name] = (i - (f.args.args[0].arg == "self"), a.arg)
    return out


def _raised_codes() -> set[str]:
    """Every string literal passed as the code of a domain error, or of a helper taking an
    ErrorCode (`bad`, `error_response`, ...), anywhere in service/."""
    trees = _trees()
    takes_code = {name: (0, "code") for name in _domain_error_classes(trees)}
    takes_code.update(_code_parameters(trees))
    codes: set[str] = set()
    for t in trees:
        for call in ast.walk(t):
            if not isinstance(call, ast.Call):
                continue
            func = call.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name not in takes_code:
                continue
            pos, kw = takes_code[name]
            args = [k.value for k in call.keywords if k.arg == kw]
            args += call.args[pos : pos + 1]
            # a code that is no literal is a variable typed ErrorCode, which mypy checks
            codes |= {a.value for a in args if isinstance(a, ast.Constant)}
    return codes


def test_every_error_code_has_a_status() -> None:
    assert set(get_args(ErrorCode)) == set(STATUS)
    assert all(400 <= s <= 599 for s in STATUS.values())


def test_every_code_raised_in_service_has_a_status() -> None:
    raised = _raised_codes()
    # the scan sees every kind of raise: a DomainError subclass, a helper, the middleware
    assert {
        "image_decode_failed",  # ImageError(...)
        "collection_not_found",  # CollectionError(...)
        "missing_capability",  # ModelError(...)
        "overloaded",  # CapacityError(...)
        "invalid_k",  # bad(...)
        "unauthorized",  # _reply(scope, receive, send, code, ...)
        "internal_error",  # error_response(...)
    } <= raised
    assert raised - set(STATUS) == set()
    assert set(STATUS) - raised == set(), "a code nothing raises: drop it from ErrorCode"


def test_statuses_for_starlettes_own_errors_agree_with_the_table() -> None:
    for status, code in _CODE_OF_STATUS.items():
        if code in STATUS:
            assert STATUS[code] == status, code  # type: ignore[index]


def test_domain_errors_carry_a_code_and_no_status() -> None:
    err = CollectionError("collection_not_found", "no collection named 'x'")
    assert isinstance(err, DomainError) and err.code == "collection_not_found"
    assert not hasattr(err, "status")
    assert str(err) == err.message == "no collection named 'x'"


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("image_too_large", 413),
        ("missing_capability", 400),
        ("model_mismatch", 409),
        ("insufficient_storage", 507),
    ],
)
def test_the_edge_answers_with_the_tables_status(code: ErrorCode, status: int) -> None:
    response = domain_error_response(DomainError(code, "a message", {"k": 1}))
    assert response.status_code == status == http_status(code)
    assert b'"error":{"code":"' + code.encode() + b'"' in response.body
    assert "retry-after" not in response.headers


def test_retry_after_becomes_the_header() -> None:
    response = domain_error_response(ModelError("model_not_ready", "loading", retry_after=5))
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
