"""The one-way data flow, as the README's "Architecture" section draws it.

- `training.encoders` is the model library: it imports nothing else of `training`.
- `service` imports only `training.encoders` from `training`; its command table
  (`service/cli.py`) builds on `training.cli`, which names the training commands and
  imports them only when they run.
- `training` never imports `service`.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = "training.encoders"


def _imports(path: Path) -> list[str]:
    """Every absolute module name `path` imports, at any depth (lazy imports too)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _violations(folder: str, bad: Callable[[Path, str], bool]) -> list[tuple[str, str]]:
    return [
        (str(p.relative_to(ROOT)), m)
        for p in (ROOT / folder).rglob("*.py")
        for m in _imports(p)
        if bad(p, m)
    ]


def test_training_never_imports_service() -> None:
    assert _violations("training", lambda p, m: _within(m, "service")) == []


def test_the_encoder_library_stands_alone() -> None:
    def bad(p: Path, m: str) -> bool:
        return _within(m, "service") or (_within(m, "training") and not _within(m, LIBRARY))

    assert _violations("training/encoders", bad) == []


def test_service_imports_only_the_encoder_library_from_training() -> None:
    def bad(p: Path, m: str) -> bool:
        if p == ROOT / "service" / "cli.py" and m == "training":
            return False  # `from training import cli`: the command table
        return _within(m, "training") and not _within(m, LIBRARY)

    assert _violations("service", bad) == []


def test_the_checker_sees_lazy_imports(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from training.engine import Trainer\n    import service.app\n")
    assert _imports(f) == ["training.engine", "service.app"]
