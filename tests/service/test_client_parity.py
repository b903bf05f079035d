"""ContrastiveClient and AsyncContrastiveClient offer the same API: the same public methods,
parameters and docstrings, the async ones as coroutines. `differences` is also run on
deliberately mismatched classes, so a check that can no longer fail is caught too."""

from __future__ import annotations

import inspect

import pytest

from contrastkit.service.client import AsyncContrastiveClient, ContrastiveClient, _requests

# Named after their httpx counterparts, so these two differ in name (and docstring) only.
CLOSERS = {"close": "aclose"}


def _public_methods(cls: type) -> dict[str, object]:
    return {
        name: value
        for name, value in inspect.getmembers(cls, callable)
        if not name.startswith("_") and not inspect.isclass(value)
    }


def differences(sync_cls: type, async_cls: type) -> list[str]:
    """Every way `async_cls` is not the coroutine twin of `sync_cls` (empty: none)."""
    found: list[str] = []
    sync, aio = _public_methods(sync_cls), _public_methods(async_cls)
    renamed = {CLOSERS.get(name, name): name for name in sync}
    for name in sorted(set(renamed) ^ set(aio)):
        side = async_cls if name in aio else sync_cls
        found.append(f"{name}: only on {side.__name__}")
    for async_name in sorted(set(renamed) & set(aio)):
        name = renamed[async_name]
        s, a = sync[name], aio[async_name]
        if inspect.iscoroutinefunction(s) or not inspect.iscoroutinefunction(a):
            found.append(f"{name}: not sync on {sync_cls.__name__} and async on the other")
        # Parameters only: the return annotation of an async def is the awaited result
        # anyway, and a wrapper may well spell it as Coroutine[..., T].
        s_params = list(inspect.signature(s).parameters.values())  # type: ignore[arg-type]
        a_params = list(inspect.signature(a).parameters.values())  # type: ignore[arg-type]
        if s_params != a_params:
            found.append(f"{name}: parameters {s_params} != {a_params}")
        if name not in CLOSERS and inspect.getdoc(s) != inspect.getdoc(a):
            found.append(f"{name}: docstrings differ")
        if not inspect.getdoc(s) or not inspect.getdoc(a):
            found.append(f"{name}: no docstring")
    return found


def test_clients_are_twins() -> None:
    assert differences(ContrastiveClient, AsyncContrastiveClient) == []


def test_every_operation_is_a_method() -> None:
    methods = set(_public_methods(ContrastiveClient))
    assert set(_requests.__all__) <= methods
    assert methods - set(_requests.__all__) == set(CLOSERS)


def test_constructors_take_the_same_arguments() -> None:
    # The annotations differ by design (httpx.BaseTransport / AsyncBaseTransport, ...).
    def shape(cls: type) -> list[tuple[str, object, object]]:
        params = inspect.signature(cls).parameters.values()
        return [(p.name, p.kind, p.default) for p in params]

    assert shape(ContrastiveClient) == shape(AsyncContrastiveClient)


def test_methods_have_the_operations_signatures() -> None:
    """What inspect and help() show is the shared operation's, with `self` first."""
    for name in _requests.__all__:
        op = inspect.signature(getattr(_requests, name), eval_str=True)
        for cls in (ContrastiveClient, AsyncContrastiveClient):
            first, *rest = inspect.signature(getattr(cls, name)).parameters.values()
            assert first.name == "self" and rest == list(op.parameters.values())
            assert getattr(cls, name).__qualname__ == f"{cls.__name__}.{name}"
    bound = inspect.signature(ContrastiveClient(http=object()).get_item)  # type: ignore[arg-type]
    assert list(bound.parameters) == ["collection", "id", "include_vector"]


# -- the check itself can fail ------------------------------------------------------------


class _Sync:
    def a(self, x: int) -> int:
        """A."""
        return x

    def b(self, x: int, y: int = 1) -> int:
        """B."""
        return x + y

    def c(self) -> None:
        """C."""

    def close(self) -> None:
        """Sync close."""


class _Async:
    async def a(self, x: int) -> int:  # the same: no difference
        """A."""
        return x

    async def b(self, x: int, y: int = 2) -> int:  # another default
        """B."""
        return x + y

    def c(self) -> None:  # not a coroutine, and another docstring
        """See."""

    async def d(self) -> None:  # no sync twin
        """D."""

    async def aclose(self) -> None:  # the closer: its docstring may differ
        """Async close."""


@pytest.mark.parametrize(
    "expected",
    [
        "d: only on _Async",
        "b: parameters",
        "c: not sync on _Sync and async on the other",
        "c: docstrings differ",
    ],
)
def test_differences_are_found(expected: str) -> None:
    assert any(found.startswith(expected) for found in differences(_Sync, _Async))


def test_nothing_else_is_reported() -> None:
    assert len(differences(_Sync, _Async)) == 4


def test_a_missing_method_is_found() -> None:
    class Fewer(AsyncContrastiveClient):
        search = None  # type: ignore[assignment]  # no longer a callable: "missing"

    assert differences(ContrastiveClient, Fewer) == ["search: only on ContrastiveClient"]
