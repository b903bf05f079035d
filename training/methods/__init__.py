"""Method registry. Each module in this package registers its class with `@register`;
modules are discovered automatically, so a sixth method is one new file."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, TypeVar

from training.methods.base import (
    ExportParts,
    Method,
    MethodContext,
    MethodParams,
    MomentumMethod,
    MomentumParams,
    StepOutput,
    Views,
)

__all__ = [
    "METHODS",
    "ExportParts",
    "Method",
    "MethodContext",
    "MethodParams",
    "MomentumMethod",
    "MomentumParams",
    "StepOutput",
    "Views",
    "get_method",
    "method_names",
    "register",
]

METHODS: dict[str, type[Method[Any]]] = {}
M = TypeVar("M", bound=type[Method[Any]])


def register(cls: M) -> M:
    """Class decorator: make `cls` available as `--method cls.name`."""
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"method {cls.name!r} registered twice")
    METHODS[cls.name] = cls
    return cls


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


def method_names() -> list[str]:
    """Every registered method's `--method` name, sorted."""
    _discover()
    return sorted(METHODS)


def get_method(name: str) -> type[Method[Any]]:
    """Method name -> class; ValueError naming the choices when unknown."""
    _discover()
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}"
        ) from None
