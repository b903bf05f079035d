"""Method registry. Each module in this package registers its class with `@register`;
modules are discovered automatically, so a new method is one new file, plus its row in
contrastkit.training.catalog (the names and setting keys the command line checks without importing
torch; a test says when the two differ)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, TypeVar

from contrastkit.training.catalog import unknown_method
from contrastkit.training.methods.base import (
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
    """Method name -> class; ValueError (a ConfigError) naming the closest name and every
    choice when unknown."""
    _discover()
    try:
        return METHODS[name]
    except KeyError:
        raise unknown_method(name, METHODS) from None
