"""The one-way data flow: training never imports service; service imports only
training.models, training.export and the benchmarks' environment record (plus its CLI
dispatching to training's)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALLOWED_FROM_SERVICE = ("training.models", "training.export", "training.benchinfo")


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_training_never_imports_service() -> None:
    bad = [
        (str(p.relative_to(ROOT)), m)
        for p in (ROOT / "training").rglob("*.py")
        for m in _imports(p)
        if m == "service" or m.startswith("service.")
    ]
    assert bad == []


def test_service_imports_only_models_and_export_from_training() -> None:
    bad = []
    for p in (ROOT / "service").rglob("*.py"):
        if p.name == "cli.py":
            continue
        for m in _imports(p):
            if (m == "training" or m.startswith("training.")) and not m.startswith(
                ALLOWED_FROM_SERVICE
            ):
                bad.append((str(p.relative_to(ROOT)), m))
    assert bad == []
